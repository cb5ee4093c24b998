//! Diagnosis: known failure signatures → the cause, the fix a technician should apply, and
//! whether another attempt can succeed.
//!
//! On-prem failures are mostly configuration (a runner without delegation, WinRM off, a missing
//! module) that no retry will mend: burning the step's retries on them only delays the
//! technician. So a failure is matched against this table first; a [`Disposition::Pause`]
//! diagnosis pauses the run for a technician with the fix in its history (and later the ticket
//! note), a [`Disposition::Retry`] one waits and tries again (a sync cycle already running, a
//! mailbox Exchange Online has not provisioned yet, an offline device).
//!
//! The table is pure: it reads the script's output and error, its result category, the RMM's
//! job status and where the script ran. Each signature says whether its message text was
//! confirmed from a real source ([`Signature::source`]); the ones that were not are marked.

use std::fmt;
use std::time::Duration;

/// What went wrong, as the step saw it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    /// The error text: the script's reason, stderr, stdout, or a service's error message.
    pub text: &'a str,
    /// The script's result category (`sync_busy`, `winrm_unreachable`, …), or the runner's.
    pub category: Option<&'a str>,
    /// The RMM job's deployment status (Datto `jobDeploymentStatus`: `Expired`, `Failure`, …).
    pub rmm_status: Option<&'a str>,
    /// Whether the RMM says the device is online.
    pub device_online: Option<bool>,
    /// Where the action ran.
    pub system: Option<&'a str>,
    /// The runner, when the script reached its target by PowerShell remoting.
    pub runner: Option<&'a str>,
    /// The machine the script acted on; for a cloud service's refusal, the request
    /// (`POST /v1.0/users/…/assignLicense`).
    pub target: Option<&'a str>,
    /// The company the step acts for.
    pub company: Option<&'a str>,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Another attempt may succeed after this long.
    Retry {
        /// How long to wait first.
        after: Duration,
    },
    /// No attempt will succeed until a technician applies the fix: pause the run.
    Pause,
}

/// A known failure, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// A stable code (`double_hop`).
    pub code: &'static str,
    /// What is wrong, as a sentence.
    pub cause: String,
    /// What the technician should do, as sentences (PowerShell to run where useful).
    pub fix: String,
    /// Retry or pause.
    pub disposition: Disposition,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Fix: {}", self.cause, self.fix)?;
        match self.disposition {
            Disposition::Retry { after } => {
                write!(f, " Steward tries again in {} s.", after.as_secs())
            }
            Disposition::Pause => f.write_str(" The run is paused until a technician resumes it."),
        }
    }
}

/// One entry of the table.
#[derive(Debug)]
pub struct Signature {
    /// The code.
    pub code: &'static str,
    /// Where its message text comes from; `unconfirmed` when it could not be checked.
    pub source: &'static str,
    matches: fn(&Evidence<'_>, &str) -> bool,
    explain: fn(&Evidence<'_>) -> (String, String),
    disposition: Disposition,
}

fn has(text: &str, needles: &[&str]) -> bool {
    needles
        .iter()
        .any(|n| text.contains(&n.to_ascii_lowercase()))
}

fn cat(e: &Evidence<'_>, names: &[&str]) -> bool {
    e.category.is_some_and(|c| names.contains(&c))
}

fn or<'a>(v: Option<&'a str>, default: &'a str) -> &'a str {
    v.unwrap_or(default)
}

const PAUSE: Disposition = Disposition::Pause;

/// [`Evidence::system`] of a Microsoft Graph answer.
pub const GRAPH: &str = "Microsoft Graph";

/// The table, in the order it is tried (specific before general).
pub static SIGNATURES: &[Signature] = &[
    Signature {
        code: "graph_permission_missing",
        source: "Microsoft Graph error code Authorization_RequestDenied (\"Insufficient privileges to complete the operation.\"); permissions from the Graph v1.0 reference's Permissions tables",
        matches: |e, _| {
            e.system == Some(GRAPH) && e.category == Some("Authorization_RequestDenied")
        },
        explain: |e| {
            let request = or(e.target, "the request");
            let company = or(e.company, "COMPANY");
            match e.target.and_then(crate::m365::permissions::needed) {
                Some((kind, permission)) => (
                    format!(
                        "Microsoft Graph refused {request} for lack of privileges: the tenant's consent to Steward's app does not include the {kind} permission {permission} (or, if it does, the user is an administrator whom only a privileged role may change)."
                    ),
                    format!(
                        "Grant {permission} ({kind} permission of Microsoft Graph) to Steward's app registration, then have an administrator of the tenant re-consent (steward tenants connect {company}) and resume the run."
                    ),
                ),
                None => (
                    format!(
                        "Microsoft Graph refused {request} for lack of privileges: the tenant's consent to Steward's app lacks a permission this request needs."
                    ),
                    format!(
                        "Check the Microsoft Graph permissions of Steward's app registration against the documented list, then have an administrator of the tenant re-consent (steward tenants connect {company}) and resume the run."
                    ),
                ),
            }
        },
        disposition: PAUSE,
    },
    Signature {
        code: "double_hop",
        source: "product seed 000 (Troubleshooting: \"The supplied credential is invalid\" on Exchange Runner)",
        matches: |e, t| {
            e.runner.is_some()
                && (cat(e, &["double_hop"])
                    || (t.contains("supplied credential") && t.contains("is invalid"))
                    || (t.contains("access is denied")
                        && !t.contains("connecting to remote server")))
        },
        explain: |e| {
            let target = or(e.target, "EXCHANGE-SERVER");
            let runner = or(e.runner, "the runner");
            (
                format!(
                    "Kerberos double hop: {runner} reached {target} by PowerShell remoting, but Windows would not pass the service account's credential on from {target} to Active Directory. The credential itself is valid."
                ),
                format!(
                    "Configure resource-based Kerberos constrained delegation. On a domain controller, as a Domain Admin: `$ExchangeServer = Get-ADComputer -Identity \"{target}\"; Get-ADDomainController -Filter * | ForEach-Object {{ Set-ADComputer -Identity $_.Name -PrincipalsAllowedToDelegateToAccount $ExchangeServer }}`. Then on {runner} run `klist purge -li 0x3e7` as administrator (or restart it, or wait 15 minutes). Check as the service account (`runas /user:DOMAIN\\service_account powershell`): `Invoke-Command -ComputerName \"{target}\" -ScriptBlock {{ Add-PSSnapin Microsoft.Exchange.Management.PowerShell.SnapIn; Get-ExchangeServer | Select-Object Name }}` must list the server."
                ),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "tls_trust",
        source: "product seed 000 (SSL/TLS Certificate Trust Error)",
        matches: |_, t| {
            has(
                t,
                &[
                    "could not establish trust relationship for the ssl/tls secure channel",
                    "the remote certificate is invalid",
                    "could not create ssl/tls secure channel",
                ],
            )
        },
        explain: |e| {
            let host = or(e.runner.or(e.target), "the machine running the script");
            (
                format!(
                    "{host} cannot establish TLS trust with Steward: its root certificates are out of date, TLS 1.2 is off, its clock is wrong, or a proxy intercepts HTTPS."
                ),
                format!(
                    "On {host}: update the root certificates (`certutil -generateSSTFromWU roots.sst` then `certutil -addstore -f Root roots.sst`, or install Windows updates); check TLS 1.2 is enabled under HKLM:\\SYSTEM\\CurrentControlSet\\Control\\SecurityProviders\\SCHANNEL\\Protocols\\TLS 1.2; check the clock; exempt Steward's address from HTTPS inspection. Then `[Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12; Invoke-WebRequest -Uri <Steward URL> -UseBasicParsing` must answer 401 Unauthorized."
                ),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "steward_unreachable",
        source: "product seed 000 (No Internet Access / Firewall Blocking: \"Unable to connect to the remote server\"); the name-resolution text is .NET's WebException message, unconfirmed here",
        matches: |e, t| {
            cat(e, &["script_fetch_failed"])
                || has(
                    t,
                    &[
                        "unable to connect to the remote server",
                        "the remote name could not be resolved",
                    ],
                )
        },
        explain: |e| {
            let host = or(e.runner.or(e.target), "the machine running the script");
            (
                format!(
                    "{host} cannot reach Steward over HTTPS to fetch its script or report its result."
                ),
                format!(
                    "Allow outbound HTTPS (port 443) from {host} to Steward's address in the firewall and any proxy. Then `Invoke-WebRequest -Uri <Steward URL> -UseBasicParsing` on {host} must answer 401 Unauthorized, not a connection error or a timeout."
                ),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "winrm_access_denied",
        source: "PowerShell remoting's \"Connecting to remote server … failed with the following error message : Access is denied\" (unconfirmed here)",
        matches: |e, t| {
            e.runner.is_some()
                && t.contains("connecting to remote server")
                && t.contains("access is denied")
        },
        explain: |e| {
            let target = or(e.target, "the target");
            (
                format!(
                    "The service account may not open a PowerShell remoting session on {target}."
                ),
                format!(
                    "On {target}, add the service account to the Remote Management Users group (or grant WinRM access by Group Policy); a Domain Admin needs nothing. Check from {} as the service account: `Invoke-Command -ComputerName \"{target}\" -ScriptBlock {{ hostname }}`.",
                    or(e.runner, "the runner")
                ),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "winrm_unreachable",
        source: "PowerShell's PSRemotingTransportException text (\"WinRM cannot complete the operation…\"), as the sandbox reproduces it; not confirmed against a live system here",
        matches: |e, t| {
            cat(e, &["winrm_unreachable"])
                || has(
                    t,
                    &[
                        "winrm cannot complete the operation",
                        "the winrm client cannot process the request",
                        "winrm cannot process the request",
                        "pSRemotingTransportException",
                    ],
                )
        },
        explain: |e| {
            let target = or(e.target, "the target");
            let runner = or(e.runner, "the runner");
            (
                format!("{runner} cannot reach {target} by PowerShell remoting (WinRM)."),
                format!(
                    "On {target}: run `Enable-PSRemoting -Force`, and let the service account in (Remote Management Users). Open TCP 5985 (HTTP) or 5986 (HTTPS) from {runner} to {target}. Check the hostname in the company's settings. Test from {runner}: `Invoke-Command -ComputerName \"{target}\" -ScriptBlock {{ hostname }}`."
                ),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "ad_module_missing",
        source: "PowerShell's Import-Module and CommandNotFoundException texts (seen in public issue threads)",
        matches: |e, t| {
            has(
                t,
                &["the specified module 'activedirectory' was not loaded"],
            ) || (t.contains("is not recognized as the name of a cmdlet")
                && t.contains("-ad")
                && !t.contains("adsync"))
                || (cat(e, &["module_missing"]) && t.contains("activedirectory"))
        },
        explain: |e| {
            let host = or(e.target, "the AD runner");
            (
                format!("{host} has no Active Directory PowerShell module (RSAT AD tools)."),
                format!(
                    "On {host}, as administrator: `Install-WindowsFeature -Name RSAT-AD-PowerShell` (Windows Server) or `Add-WindowsCapability -Online -Name Rsat.ActiveDirectory.DS-LDS.Tools~~~~0.0.1.0` (Windows 10/11). `Import-Module ActiveDirectory; Get-ADUser -Filter * -ResultSetSize 1` must then work. Or set ad_runner to a domain controller."
                ),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "adsync_module_missing",
        source: "PowerShell's Import-Module text for the ADSync module (the module name is Entra Connect's; unconfirmed against a live system)",
        matches: |_, t| {
            has(t, &["the specified module 'adsync' was not loaded"])
                || (t.contains("is not recognized as the name of a cmdlet") && t.contains("adsync"))
        },
        explain: |e| {
            let host = or(e.target, "the Entra Connect server");
            (
                format!("{host} has no ADSync module: it is not the Entra Connect server, or Entra Connect is not installed there."),
                "Set entra_connect_server to the machine where Entra Connect (Azure AD Connect) runs, exactly as the RMM or the AD runner knows it.".to_owned(),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "exchange_shell_missing",
        source: "Steward's own Exchange template message",
        matches: |_, t| t.contains("exchange management shell is not installed"),
        explain: |e| {
            (
                format!("{} has no Exchange Management Shell.", or(e.target, "The machine")),
                "Set exchange_server to the Exchange server; if it has no RMM agent, set exchange_runner to a machine that has one and can reach it by PowerShell remoting.".to_owned(),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "device_offline",
        source: "Datto RMM job statuses (jobDeploymentStatus Expired) and device online flag, per domain.md §5.1",
        matches: |e, _| {
            e.device_online == Some(false)
                || e.rmm_status
                    .is_some_and(|s| s.eq_ignore_ascii_case("expired"))
                || cat(e, &["device_offline"])
        },
        explain: |e| {
            let device = or(e.runner.or(e.target), "The device");
            (
                format!("{device} is offline in the RMM, so the job did not run."),
                format!(
                    "Bring {device} online (power, network, RMM agent service). Steward tries again; if it stays offline, check the device name in the company's settings matches the RMM."
                ),
            )
        },
        disposition: Disposition::Retry {
            after: Duration::from_secs(300),
        },
    },
    Signature {
        code: "sync_busy",
        source: "Start-ADSyncSyncCycle's \"System.InvalidOperationException: Connector: … - AAD is busy.\" (domain.md §4.4, easy365manager) and Get-ADSyncScheduler's SyncCycleInProgress",
        matches: |e, t| {
            cat(e, &["sync_busy"])
                || has(
                    t,
                    &[
                        "aad is busy",
                        "synccycleinprogress is true",
                        "sync cycle is already running",
                    ],
                )
        },
        explain: |e| {
            (
                format!(
                    "A sync cycle is already running on {}.",
                    or(e.target, "the Entra Connect server")
                ),
                "Nothing to fix: the delta sync starts again when the running cycle ends."
                    .to_owned(),
            )
        },
        disposition: Disposition::Retry {
            after: Duration::from_secs(60),
        },
    },
    Signature {
        code: "invalid_usage_location",
        source: "Graph assignLicense error \"License assignment cannot be done for user with invalid usage location.\" (CIPP #783, Partner-Center-DotNet-Samples #131)",
        matches: |_, t| t.contains("invalid usage location"),
        explain: |_| {
            (
                "Microsoft refuses a licence for a user without a usage location.".to_owned(),
                "Set the user's usage location (a two-letter country code) before the licence: set the company's defaults.usage_location, or pass usage_location to the create step. For synced users it may come from AD (msExchUsageLocation) or be set in the cloud.".to_owned(),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "recipient_not_provisioned",
        source: "Exchange Online ManagementObjectNotFoundException \"The operation couldn't be performed because object '…' couldn't be found on '…'.\" (domain.md §4.2)",
        matches: |e, t| {
            e.system == Some("exchange_online")
                && (has(
                    t,
                    &["couldn't be found on", "managementobjectnotfoundexception"],
                ) || cat(e, &["not_found"]))
        },
        explain: |_| {
            (
                "Exchange Online has not provisioned the mailbox yet: it appears minutes after the user gets a licence (and, in hybrid, after the sync).".to_owned(),
                "Nothing to fix yet: Steward tries again. If it never appears, check the user has a licence with Exchange Online and, in hybrid, was mail-enabled on-prem (Enable-RemoteMailbox) and synced.".to_owned(),
            )
        },
        disposition: Disposition::Retry {
            after: Duration::from_secs(300),
        },
    },
    Signature {
        code: "password_policy",
        source: "AD's \"The password does not meet the length, complexity, or history requirement of the domain.\" (domain.md §4.3 marks the exact text unverified)",
        matches: |e, t| {
            cat(e, &["password_policy"])
                || t.contains("does not meet the length, complexity, or history requirement")
        },
        explain: |_| {
            (
                "The domain refused the password: too short, not complex enough, or used before.".to_owned(),
                "Use a longer password with upper- and lower-case letters, digits and symbols, as the domain's password policy requires (`Get-ADDefaultDomainPasswordPolicy` shows it); then resume the run.".to_owned(),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "already_exists",
        source: "New-ADUser (\"The specified account already exists\", \"…a name that is already in use\": domain.md §4.3, ansible community.windows #344) and Graph \"Another object with the same value for property userPrincipalName already exists.\" (microsoft-graph-docs #1508)",
        matches: |e, t| {
            cat(e, &["already_exists"])
                || has(
                    t,
                    &[
                        "the specified account already exists",
                        "with a name that is already in use",
                        "already exists",
                        "is already mail-enabled",
                        "objectconflict",
                    ],
                )
        },
        explain: |_| {
            (
                "An object with that name, sAMAccountName or UPN already exists.".to_owned(),
                "Check whether it is the same person (a returning employee, a half-finished earlier run) or a clash: reuse or remove the existing account, or give the new user another username, then resume.".to_owned(),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "object_not_found",
        source: "Get-ADUser \"Cannot find an object with identity: '…' under: '…'.\" (as the sandbox reproduces it) and Graph Request_ResourceNotFound",
        matches: |e, t| {
            cat(e, &["not_found"])
                || has(
                    t,
                    &[
                        "cannot find an object with identity",
                        "directory object not found",
                        "request_resourcenotfound",
                        "does not exist or one of its queried reference-property objects are not present",
                        "couldn't be found",
                    ],
                )
        },
        explain: |_| {
            (
                "The user, group or mailbox named in the step does not exist where the step looked.".to_owned(),
                "Check the name, UPN or group in the ticket and the step's inputs (and, in hybrid, that the object has synced); correct the input and resume.".to_owned(),
            )
        },
        disposition: PAUSE,
    },
    Signature {
        code: "insufficient_rights",
        source: "AD \"Insufficient access rights to perform the operation\" and Windows \"Access is denied\" (unconfirmed exact texts)",
        matches: |_, t| {
            has(
                t,
                &[
                    "insufficient access rights",
                    "access is denied",
                    "is not authorized",
                    "unauthorizedaccessexception",
                ],
            )
        },
        explain: |_| {
            (
                "The service account lacks the permission this change needs.".to_owned(),
                "Delegate the permission to the service account (on the users' OU for AD changes; the Recipient Management role for Exchange; membership of ADSyncOperators on the Entra Connect server for syncs), then resume.".to_owned(),
            )
        },
        disposition: PAUSE,
    },
];

/// The first signature that matches `e`, explained; `None` for an unknown failure (the step's
/// own retry policy decides).
pub fn diagnose(e: &Evidence<'_>) -> Option<Diagnosis> {
    let text = e.text.to_ascii_lowercase();
    SIGNATURES.iter().find(|s| (s.matches)(e, &text)).map(|s| {
        let (cause, fix) = (s.explain)(e);
        Diagnosis {
            code: s.code,
            cause,
            fix,
            disposition: s.disposition,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: Evidence<'_>) -> Option<&'static str> {
        diagnose(&e).map(|d| d.code)
    }

    fn text(t: &str) -> Evidence<'_> {
        Evidence {
            text: t,
            ..Evidence::default()
        }
    }

    fn via_runner(t: &str) -> Evidence<'_> {
        Evidence {
            text: t,
            runner: Some("RUNNER01"),
            target: Some("EXCH01"),
            system: Some("rmm"),
            ..Evidence::default()
        }
    }

    #[test]
    fn realistic_messages_get_their_cause_and_fix() {
        // The double hop, as the seed quotes it and as the sandbox's agent reports it.
        let seed = "Active Directory operation failed on . The supplied credential for 'CONTOSO\\svc_steward' is invalid.";
        let d = diagnose(&via_runner(seed)).expect("diagnosed");
        assert_eq!(d.code, "double_hop");
        assert_eq!(d.disposition, Disposition::Pause);
        assert!(
            d.fix.contains("Get-ADComputer -Identity \"EXCH01\"")
                && d.fix.contains("PrincipalsAllowedToDelegateToAccount")
                && d.fix.contains("klist purge -li 0x3e7"),
            "{}",
            d.fix
        );
        assert!(d.cause.contains("RUNNER01") && d.cause.contains("EXCH01"));
        let sandbox = "Connecting to remote server EXCH01 failed with the following error message : The supplied credential is invalid. For more information, see the about_Remote_Troubleshooting Help topic.";
        assert_eq!(code(via_runner(sandbox)), Some("double_hop"));
        // Without a runner there is no second hop: a bad credential is a rights problem.
        assert_ne!(code(text(seed)), Some("double_hop"));

        assert_eq!(
            code(via_runner(
                "Exception calling \"GetResponse\" with \"0\" argument(s): \"The underlying connection was closed: Could not establish trust relationship for the SSL/TLS secure channel.\""
            )),
            Some("tls_trust")
        );
        assert_eq!(
            code(via_runner(
                "Invoke-WebRequest : Unable to connect to the remote server"
            )),
            Some("steward_unreachable")
        );
        assert_eq!(
            code(Evidence {
                category: Some("script_fetch_failed"),
                ..text("Fetching the script failed with HTTP 503.")
            }),
            Some("steward_unreachable")
        );
        let winrm = "Connecting to remote server AADC01 failed with the following error message : WinRM cannot complete the operation. Verify that the specified computer name is valid, that the computer is accessible over the network, and that a firewall exception for the WinRM service is enabled and allows access from this computer.";
        let d = diagnose(&Evidence {
            target: Some("AADC01"),
            ..via_runner(winrm)
        })
        .expect("diagnosed");
        assert_eq!(d.code, "winrm_unreachable");
        assert!(
            d.fix.contains("Enable-PSRemoting -Force")
                && d.fix.contains("5985")
                && d.fix.contains("AADC01"),
            "{}",
            d.fix
        );
        assert_eq!(
            code(via_runner(
                "Connecting to remote server EXCH01 failed with the following error message : Access is denied. For more information, see the about_Remote_Troubleshooting Help topic."
            )),
            Some("winrm_access_denied")
        );
        assert_eq!(
            code(text(
                "Import-Module : The specified module 'ActiveDirectory' was not loaded because no valid module file was found in any module directory."
            )),
            Some("ad_module_missing")
        );
        assert_eq!(
            code(text(
                "The term 'Get-ADUser' is not recognized as the name of a cmdlet, function, script file, or operable program."
            )),
            Some("ad_module_missing")
        );
        assert_eq!(
            code(text(
                "The term 'Get-ADSyncScheduler' is not recognized as the name of a cmdlet, function, script file, or operable program."
            )),
            Some("adsync_module_missing")
        );
        assert_eq!(
            code(Evidence {
                rmm_status: Some("Expired"),
                ..text("")
            }),
            Some("device_offline")
        );
        assert_eq!(
            code(Evidence {
                device_online: Some(false),
                ..text("")
            }),
            Some("device_offline")
        );
        let busy = diagnose(&text("Start-ADSyncSyncCycle : System.InvalidOperationException: Connector: contoso.onmicrosoft.com - AAD is busy.")).expect("d");
        assert_eq!(
            (busy.code, busy.disposition),
            (
                "sync_busy",
                Disposition::Retry {
                    after: Duration::from_secs(60)
                }
            )
        );
        assert_eq!(
            code(Evidence {
                category: Some("sync_busy"),
                ..text(
                    "A sync cycle is already running (SyncCycleInProgress is True); start the delta sync again when it ends."
                )
            }),
            Some("sync_busy")
        );
        let exo = "Ex6F9304|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|The operation couldn't be performed because object 'jane@contoso.com' couldn't be found on 'AM0PR01A001DC01.EURPRD01.PROD.OUTLOOK.COM'.";
        let d = diagnose(&Evidence {
            system: Some("exchange_online"),
            ..text(exo)
        })
        .expect("d");
        assert_eq!(d.code, "recipient_not_provisioned");
        assert!(matches!(d.disposition, Disposition::Retry { .. }));
        // The same words on-prem mean a wrong name: terminal.
        assert_eq!(
            code(Evidence {
                system: Some("rmm"),
                ..text(
                    "Enable-RemoteMailbox : The operation couldn't be performed because object 'jdoe' couldn't be found on 'DC01.contoso.local'."
                )
            }),
            Some("object_not_found")
        );
        assert_eq!(
            code(text(
                "License assignment cannot be done for user with invalid usage location."
            )),
            Some("invalid_usage_location")
        );
        assert_eq!(
            code(text("New-ADUser : The specified account already exists")),
            Some("already_exists")
        );
        assert_eq!(
            code(text(
                "New-ADUser : An attempt was made to add an object to the directory with a name that is already in use"
            )),
            Some("already_exists")
        );
        assert_eq!(
            code(text(
                "Another object with the same value for property userPrincipalName already exists."
            )),
            Some("already_exists")
        );
        assert_eq!(
            code(text(
                "Get-ADUser : Cannot find an object with identity: 'jdoe' under: 'DC=contoso,DC=local'."
            )),
            Some("object_not_found")
        );
        assert_eq!(
            code(text(
                "Resource 'jane@contoso.com' does not exist or one of its queried reference-property objects are not present."
            )),
            Some("object_not_found")
        );
        assert_eq!(
            code(text(
                "Set-ADAccountPassword : The password does not meet the length, complexity, or history requirement of the domain."
            )),
            Some("password_policy")
        );
        assert_eq!(
            code(text(
                "Set-ADUser : Insufficient access rights to perform the operation"
            )),
            Some("insufficient_rights")
        );
        assert_eq!(
            code(text(
                "The Exchange Management Shell is not installed on this machine: run Exchange scripts on the Exchange server"
            )),
            Some("exchange_shell_missing")
        );
        let graph = Evidence {
            text: "Insufficient privileges to complete the operation.",
            category: Some("Authorization_RequestDenied"),
            system: Some(GRAPH),
            target: Some("POST /graph/v1.0/users/u-1/assignLicense"),
            company: Some("contoso"),
            ..Evidence::default()
        };
        let d = diagnose(&graph).expect("graph");
        assert_eq!(d.code, "graph_permission_missing");
        assert_eq!(d.disposition, Disposition::Pause);
        assert!(
            d.fix
                .starts_with("Grant LicenseAssignment.ReadWrite.All (application permission")
                && d.fix.contains("steward tenants connect contoso"),
            "{}",
            d.fix
        );
        // The same words from elsewhere (an AD script) are not Graph's refusal.
        assert_ne!(
            code(text("Insufficient privileges to complete the operation.")),
            Some("graph_permission_missing")
        );
        // Unknown failures are left to the step's retry policy.
        assert_eq!(code(text("The server returned 502 Bad Gateway")), None);
    }

    #[test]
    fn every_diagnosis_reads_as_sentences_and_terminal_ones_pause() {
        let retryable = ["device_offline", "sync_busy", "recipient_not_provisioned"];
        for s in SIGNATURES {
            let e = Evidence {
                runner: Some("RUNNER01"),
                target: Some("EXCH01"),
                ..Evidence::default()
            };
            let (cause, fix) = (s.explain)(&e);
            assert!(
                cause.ends_with('.') && fix.ends_with('.'),
                "{}: {cause} / {fix}",
                s.code
            );
            assert!(
                !cause.contains("Some(") && !fix.contains("Some("),
                "{}",
                s.code
            );
            assert!(!s.source.is_empty());
            assert_eq!(
                matches!(s.disposition, Disposition::Retry { .. }),
                retryable.contains(&s.code),
                "{}",
                s.code
            );
        }
        let d = diagnose(&Evidence {
            rmm_status: Some("Expired"),
            runner: Some("RUNNER01"),
            ..Evidence::default()
        })
        .expect("d");
        assert_eq!(
            d.to_string(),
            "RUNNER01 is offline in the RMM, so the job did not run. Fix: Bring RUNNER01 online (power, network, RMM agent service). Steward tries again; if it stays offline, check the device name in the company's settings matches the RMM. Steward tries again in 300 s."
        );
        let mut codes: Vec<_> = SIGNATURES.iter().map(|s| s.code).collect();
        codes.sort_unstable();
        let n = codes.len();
        codes.dedup();
        assert_eq!(codes.len(), n, "codes are unique");
    }
}
