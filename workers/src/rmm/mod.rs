//! The RMM: how Steward runs a PowerShell script on a client's machine.
//!
//! [`Rmm`] is the seam: find a device by its hostname, start a quick job of Steward's runner
//! component on it with a few variables, and read the job's status and output. Datto RMM is
//! the implementation ([`datto::Datto`]); the runner jobs that the component fetches its script
//! from, and posts its result to, are in [`jobs`].
//!
//! # The runner protocol
//! The quick job carries only three variables: `steward_url`, `steward_job_id` and
//! `steward_job_token` (one-time, bound to that job, expiring). The component (`deploy/rmm/
//! StewardRunner.ps1`) fetches the script with `GET {steward_url}/v1/runner/jobs/{id}`, runs it,
//! and posts stdout, stderr and the structured result to `…/result`. The step waits durably
//! (a `Pending` op, woken by the callback; the RMM's job status is the fallback when the
//! callback never comes).
//!
//! # Other RMMs behind the same trait
//! - **NinjaOne** (public API v2): OAuth2 `POST https://{region}/ws/oauth/token`
//!   (client credentials, scopes `monitoring management control`); [`Rmm::device`] is
//!   `GET /v2/devices?df=...` filtered by `systemName`; [`Rmm::quick_job`] is
//!   `POST /v2/device/{id}/script/run` with `{"type":"SCRIPT","id":<Steward runner script id>,
//!   "parameters":"<url> <job id> <token>","runAs":"SYSTEM"}`. NinjaOne returns no output, so
//!   [`Rmm::job_result`] reads `GET /v2/device/{id}/activities` (the script's activity and its
//!   status) and the result comes by the runner callback. Whether client-credentials tokens may
//!   run scripts is disputed (domain.md §5.2): verify on the tenant before enabling it.
//! - **ConnectWise Automate** (REST v1): `POST /cwa/api/v1/apitoken` (username, password,
//!   optional 2FA; header `clientID` on every request), refreshed by `POST …/apitoken/refresh`;
//!   [`Rmm::device`] is `GET /cwa/api/v1/Computers?condition=ComputerName='HOST'`;
//!   [`Rmm::quick_job`] is `POST /cwa/api/v1/Computers/{id}/CommandExecute` with command 2
//!   (shell) running the runner component with its three values; [`Rmm::job_result`] is
//!   `GET …/CommandExecute/{cmdId}` (`Status` Success/Failed, `Output`).
//!
//! Each maps its own job states onto [`Deployment`]; everything above the trait (the runner
//! protocol, the durable wait, diagnosis) is the same.

pub mod datto;
pub mod jobs;

use std::time::Duration;

use crate::op::BoxFuture;

/// A machine as the RMM knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The RMM's id for it.
    pub uid: String,
    /// Its hostname.
    pub hostname: String,
    /// Whether its agent is online now.
    pub online: bool,
}

/// A started job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    /// The RMM's id for it.
    pub uid: String,
}

/// Where a job is, in the RMM's words (Datto's `jobDeploymentStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// Not started yet (the agent has not picked it up).
    Pending,
    /// Running on the device.
    Running,
    /// Ran, and the component succeeded.
    Success,
    /// Ran with warnings.
    Warning,
    /// Ran, and the component failed.
    Failure,
    /// Never ran: the device stayed offline past the job's expiry.
    Expired,
    /// Withdrawn.
    Retired,
}

impl Deployment {
    /// Datto's word for it.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Pending" => Self::Pending,
            "Running" => Self::Running,
            "Success" => Self::Success,
            "Warning" => Self::Warning,
            "Failure" => Self::Failure,
            "Expired" => Self::Expired,
            "Retired" => Self::Retired,
            _ => return None,
        })
    }

    /// As Datto writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Success => "Success",
            Self::Warning => "Warning",
            Self::Failure => "Failure",
            Self::Expired => "Expired",
            Self::Retired => "Retired",
        }
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::Running)
    }

    /// Whether it ran (so its output is worth reading).
    pub fn ran(self) -> bool {
        matches!(self, Self::Success | Self::Warning | Self::Failure)
    }
}

/// A job's state on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    /// Where it is.
    pub deployment: Deployment,
    /// The component's own status (`Success` or `Failure`), once it ran.
    pub component_success: Option<bool>,
}

/// Why an RMM call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The account's rate limit was reached (429, or Steward's own shared budget is spent).
    #[error("the RMM's rate limit is reached; try again in {} s", retry_after.as_secs().max(1))]
    Throttled {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The RMM blocked this account for a while after repeated 429s (Datto answers 403). Not a
    /// permission problem: it lifts by itself.
    #[error(
        "the RMM has blocked API access for a while after repeated rate-limit answers; Steward waits {} s before calling it again",
        retry_after.as_secs().max(1)
    )]
    Blocked {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The API key or secret was refused.
    #[error(
        "the RMM refused Steward's API credentials ({0}); fix: generate a new API key and secret for the RMM user and update Steward's RMM settings"
    )]
    Credentials(String),
    /// No device has that hostname.
    #[error(
        "no device named `{hostname}` in the RMM; fix: set the company's hostname exactly as the RMM shows the device"
    )]
    NoDevice {
        /// The hostname looked up.
        hostname: String,
    },
    /// Several devices have that hostname.
    #[error(
        "{count} devices are named `{hostname}` in the RMM; fix: rename the duplicates, or remove the stale one"
    )]
    AmbiguousDevice {
        /// The hostname looked up.
        hostname: String,
        /// How many.
        count: usize,
    },
    /// The RMM answered with an error.
    #[error("the RMM answered {status}: {message}")]
    Service {
        /// The HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The RMM could not be reached.
    #[error("cannot reach the RMM: {0}")]
    Transport(String),
    /// Redis (the shared rate budget) could not be reached.
    #[error("cannot reach Redis for the RMM's shared rate budget: {0}")]
    Redis(String),
}

impl Error {
    /// Whether another try may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Throttled { .. } | Self::Blocked { .. } | Self::Transport(_) | Self::Redis(_) => {
                true
            }
            Self::Service { status, .. } => *status >= 500 || *status == 429,
            Self::Credentials(_) | Self::NoDevice { .. } | Self::AmbiguousDevice { .. } => false,
        }
    }

    /// How long the RMM asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after } | Self::Blocked { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A quick job's variables, in order. Its `Debug` hides the values of secret-named variables.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Variables(pub Vec<(String, String)>);

impl std::fmt::Debug for Variables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| {
                if k.contains("token") || k.contains("secret") || k.contains("password") {
                    (k.as_str(), "[redacted]")
                } else {
                    (k.as_str(), v.as_str())
                }
            }))
            .finish()
    }
}

/// An RMM platform: what Steward needs from it to run a script on a client's machine.
pub trait Rmm: Send + Sync + std::fmt::Debug + 'static {
    /// The platform's name (`datto`).
    fn name(&self) -> &'static str;

    /// The device called `hostname` (exact, case-insensitive; a short name matches its FQDN).
    fn device<'a>(&'a self, hostname: &'a str) -> BoxFuture<'a, Result<Device, Error>>;

    /// Starts Steward's runner component on `device` with `variables`.
    fn quick_job<'a>(
        &'a self,
        device: &'a Device,
        job_name: &'a str,
        variables: &'a Variables,
    ) -> BoxFuture<'a, Result<JobRef, Error>>;

    /// [`Rmm::quick_job`] for one attempt of a step, `correlation` being
    /// `<run>/<step>/<attempt>`: a platform that can carry it sends it along (Datto: the
    /// `X-Steward-Correlation` request header, which the sandbox's effect ledger reads and a
    /// real Datto ignores); by default the correlation is dropped.
    fn quick_job_for<'a>(
        &'a self,
        device: &'a Device,
        job_name: &'a str,
        variables: &'a Variables,
        correlation: &'a str,
    ) -> BoxFuture<'a, Result<JobRef, Error>> {
        let _ = correlation;
        self.quick_job(device, job_name, variables)
    }

    /// Where `job` is on `device`.
    fn job_status<'a>(
        &'a self,
        job: &'a JobRef,
        device: &'a Device,
    ) -> BoxFuture<'a, Result<JobStatus, Error>>;

    /// The job's standard output on `device` (empty before it ran).
    fn job_stdout<'a>(
        &'a self,
        job: &'a JobRef,
        device: &'a Device,
    ) -> BoxFuture<'a, Result<String, Error>>;

    /// How many API requests this client sent (for the figures).
    fn requests(&self) -> u64;
}
