//! The cloud ops: Microsoft Graph and Exchange Online changes, registered under the catalog's
//! names (and a few of their own, mostly inverses).
//!
//! Every op follows the same shape:
//! 1. resolve what it acts on (the user, the group, the SKU, the mailbox);
//! 2. read the current state, and record it as the step's *prior state* with [`prior`] (the
//!    first attempt's reading wins, so a retry after a lost answer still knows what was there
//!    before the step changed anything);
//! 3. act only if the current state is not the desired one (so a repeat changes nothing);
//! 4. report the prior state and the inverse that restores it (or why it cannot be undone).
//!
//! Throttling is not a failure: a request the tenant's gate held back (or that Graph answered
//! 429) makes a running step *pending* (checked again after the wait, without using up an
//! attempt); other retryable errors use up an attempt; terminal errors keep the service's code.
//!
//! Where an op runs for a company whose users are synced from on-premises AD, Graph refuses to
//! change what AD masters; those ops say so and name the on-premises op to use instead. Routing
//! ops to Graph or to the AD runner by the company's identity provider is the planner's job.

pub mod prior;

mod devices;
mod groups;
mod licences;
mod mailbox;
mod roles;
mod security;
mod users;

use std::time::Duration;

use serde_json::{Map, Value};
use steward_schemas::{OpSpec, Phase};

use crate::m365::M365;
use crate::m365::call::Call;
use crate::m365::error::{Error, Service};
use crate::op::{BoxFuture, Op, OpContext, OpError, OpOutcome};
use crate::registry::Registry;

/// Why a cloud op stopped: a connector error (classified) or an op-level one.
#[derive(Debug)]
pub(crate) enum Fail {
    M365(Error),
    Op(OpError),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Self::M365(e)
    }
}

impl From<OpError> for Fail {
    fn from(e: OpError) -> Self {
        Self::Op(e)
    }
}

pub(crate) type OpResult = Result<OpOutcome, Fail>;

/// What an op's body gets: the connectors, the job, and its call context.
pub(crate) struct Ctx<'a> {
    pub(crate) m: &'a M365,
    pub(crate) cx: &'a OpContext,
    pub(crate) call: Call,
}

impl Ctx<'_> {
    /// Records `observed` as the step's prior state unless an earlier attempt did; returns the
    /// recorded one.
    pub(crate) async fn prior(&self, observed: Value) -> Result<Value, Fail> {
        Ok(self
            .m
            .prior
            .first(&self.cx.idempotency_key(), observed)
            .await?)
    }
}

impl Ctx<'_> {
    /// Whether an earlier attempt of this step finished its change (see [`Ctx::mark_done`]).
    pub(crate) async fn was_done(&self) -> Result<bool, Fail> {
        Ok(self
            .m
            .prior
            .get(&format!("{}#done", self.cx.idempotency_key()))
            .await?
            .is_some())
    }

    /// Records that this step's change is made: for changes whose effect cannot be read back
    /// exactly (a password reset, revoking sessions), so a repeat does not make them again.
    pub(crate) async fn mark_done(&self) -> Result<(), Fail> {
        self.m
            .prior
            .first(
                &format!("{}#done", self.cx.idempotency_key()),
                Value::Bool(true),
            )
            .await?;
        Ok(())
    }
}

type Body = for<'a> fn(&'a Ctx<'a>, &'a Value) -> BoxFuture<'a, OpResult>;

/// A cloud op: a spec and a body.
pub(crate) struct CloudOp {
    spec: &'static OpSpec,
    m: Option<M365>,
    body: Body,
}

impl std::fmt::Debug for CloudOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudOp")
            .field("op", &self.spec.name)
            .field("configured", &self.m.is_some())
            .finish()
    }
}

impl Op for CloudOp {
    fn spec(&self) -> &OpSpec {
        self.spec
    }

    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            let Some(m) = &self.m else {
                return Err(OpError::terminal(
                    "this worker has no Microsoft 365 settings (start it with --sandbox URL, or configure the Microsoft 365 connection); then retry the step",
                ));
            };
            let call = m.call_for(cx).await.map_err(OpError::from)?;
            let ctx = Ctx { m, cx, call };
            match (self.body)(&ctx, &input).await {
                Ok(outcome) => Ok(outcome),
                Err(Fail::Op(e)) => Err(e),
                Err(Fail::M365(e)) => settle(cx, e),
            }
        })
    }
}

/// How long a step waits, at most, for a throttled tenant before checking again.
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(300);

/// How often a step waiting for a tenant's new consent checks again.
const RECONSENT_CHECK: Duration = Duration::from_secs(15 * 60);

/// A running step whose tenant Microsoft refused for good (consent withdrawn, refresh token
/// expired or revoked) waits for a new consent, saying so, instead of failing or burning its
/// retries: it checks again every [`RECONSENT_CHECK`] (its `max_wait` still applies) and goes on
/// once the tenant is connected again.
fn reconsent_wait(cx: &OpContext, e: &Error) -> Option<OpOutcome> {
    let Error::Token(t) = e else { return None };
    if !t.needs_reconsent() || cx.phase != Phase::Run {
        return None;
    }
    Some(OpOutcome::Pending {
        check_after: RECONSENT_CHECK,
        note: Some(format!(
            "waiting for company {}'s tenant to be connected again ({}): {t}; an administrator of the tenant must consent: steward tenants connect {}",
            cx.company,
            t.code().unwrap_or_else(|| "reconsent_needed".to_owned()),
            cx.company
        )),
    })
}

/// A connector error as the step's outcome: a throttled request makes a running step pending
/// (no attempt used up), as does a tenant that needs consent again; everything else is a
/// failure, retryable or terminal.
fn settle(cx: &OpContext, e: Error) -> Result<OpOutcome, OpError> {
    // A refused certificate credential is not a consent problem: the run pauses with the fix
    // (upload or set a current certificate, or mend the clock), and resumes once it is done.
    if let Error::Token(t) = &e
        && matches!(
            t.code().as_deref(),
            Some("AADSTS700027" | "AADSTS700021" | "AADSTS700023" | "AADSTS700024")
        )
    {
        return Err(OpError::NeedsTechnician {
            message: e.to_string(),
            code: t.code(),
        });
    }
    if let Some(wait) = reconsent_wait(cx, &e) {
        return Ok(wait);
    }
    let throttled = match &e {
        Error::Throttled { .. } => true,
        Error::Service(s) => s.status == 429,
        _ => false,
    };
    if throttled && cx.phase == Phase::Run {
        let wait = e
            .retry_after()
            .unwrap_or(Duration::from_secs(5))
            .clamp(Duration::from_secs(1), MAX_THROTTLE_WAIT);
        let service = match &e {
            Error::Throttled { service, .. } => *service,
            Error::Service(s) => s.service,
            _ => Service::Graph,
        };
        return Ok(OpOutcome::Pending {
            check_after: wait,
            note: Some(format!(
                "{service} is throttling the tenant; checking again in {} s",
                wait.as_secs().max(1)
            )),
        });
    }
    if let Some(diagnosed) = permission_missing(cx, &e) {
        return Err(diagnosed);
    }
    Err(e.into())
}

/// Graph's 403 `Authorization_RequestDenied`: no attempt succeeds until the tenant grants the
/// permission, so the run pauses with the fix (which permission, and re-consent) instead of
/// failing as an unexplained 403.
fn permission_missing(cx: &OpContext, e: &Error) -> Option<OpError> {
    let s = e.service_error()?;
    if s.service != Service::Graph || s.status != 403 {
        return None;
    }
    let company = cx.company.to_string();
    let d = crate::diagnosis::diagnose(&crate::diagnosis::Evidence {
        text: &s.message,
        category: Some(&s.code),
        system: Some(crate::diagnosis::GRAPH),
        target: Some(&s.request),
        company: Some(&company),
        ..Default::default()
    })?;
    Some(OpError::NeedsTechnician {
        message: format!("{e}. {d}"),
        code: Some(d.code.to_owned()),
    })
}

/// The catalog's spec for `name`.
///
/// # Panics
/// When the catalog has no such op (a programming error, caught by the registry test).
fn catalog(name: &str) -> &'static OpSpec {
    crate::catalog::CATALOG
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("op `{name}` is not in the catalog"))
}

/// Every cloud op: its spec and body.
fn all() -> Vec<(&'static OpSpec, Body)> {
    let mut v = Vec::new();
    users::ops(&mut v);
    licences::ops(&mut v);
    groups::ops(&mut v);
    security::ops(&mut v);
    mailbox::ops(&mut v);
    devices::ops(&mut v);
    roles::ops(&mut v);
    v
}

/// The names of the ops this module implements.
pub fn names() -> Vec<&'static str> {
    all().into_iter().map(|(s, _)| s.name).collect()
}

/// Registers every cloud op. Without `m`, the ops are listed as implemented but fail with a
/// clear message when run (the worker was started without Microsoft 365 settings).
pub fn register(r: &mut Registry, m: Option<M365>) {
    for (spec, body) in all() {
        r.register(CloudOp {
            spec,
            m: m.clone(),
            body,
        });
    }
}

// ---- shared helpers -------------------------------------------------------------------------

/// A required text input.
pub(crate) fn text<'a>(input: &'a Value, field: &str) -> Result<&'a str, Fail> {
    match input.get(field) {
        None | Some(Value::Null) => {
            Err(OpError::bad_input(field, "is missing; set it under `with:`").into())
        }
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
        Some(Value::String(_)) => Err(OpError::bad_input(field, "is empty").into()),
        Some(v) => Err(OpError::bad_input(field, &format!("expected text, got {v}")).into()),
    }
}

/// An optional text input.
pub(crate) fn opt_text<'a>(input: &'a Value, field: &str) -> Result<Option<&'a str>, Fail> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => text(input, field).map(Some),
    }
}

/// Percent-encodes one path segment (a UPN may hold `#`, as guests' `#EXT#` do, or `/`).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@' | b'\'') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An OData string literal (single quotes doubled).
pub(crate) fn odata_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether `s` is shaped like a GUID.
pub(crate) fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The user properties ops read.
pub(crate) const USER_SELECT: &str = "id,userPrincipalName,displayName,accountEnabled,onPremisesSyncEnabled,usageLocation,assignedLicenses,mail";

/// A user, by UPN or object id.
pub(crate) async fn find_user(c: &Ctx<'_>, key: &str) -> Result<Option<Value>, Fail> {
    Ok(c.m
        .graph
        .get_opt(
            &c.call,
            &format!("/users/{}?$select={USER_SELECT}", seg(key)),
        )
        .await?)
}

/// A user that must exist; the error names the input.
pub(crate) async fn user(c: &Ctx<'_>, input: &Value, field: &str) -> Result<Value, Fail> {
    let key = text(input, field)?;
    find_user(c, key).await?.ok_or_else(|| {
        Fail::Op(OpError::Terminal {
            message: format!(
                "input `{field}`: no user `{key}` in the tenant; check the UPN or object id"
            ),
            code: Some("Request_ResourceNotFound".to_owned()),
        })
    })
}

/// A string field of a Graph object.
pub(crate) fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Whether a Graph user is synced from on-premises AD.
pub(crate) fn synced(u: &Value) -> bool {
    u.get("onPremisesSyncEnabled") == Some(&Value::Bool(true))
}

/// The terminal error for a change AD masters.
pub(crate) fn synced_refusal(u: &Value, what: &str, instead: &str) -> Fail {
    Fail::Op(OpError::Terminal {
        message: format!(
            "{} is synced from on-premises Active Directory, so {what} must be changed there ({instead}); Entra Connect would undo a cloud change",
            s(u, "userPrincipalName")
        ),
        code: Some("synced_from_on_premises".to_owned()),
    })
}

/// Succeeded, with the rollback given.
pub(crate) fn done(output: Value, rollback: steward_schemas::Rollback) -> OpResult {
    Ok(OpOutcome::Succeeded { output, rollback })
}

/// The inverse `op` with `input`.
pub(crate) fn inverse(op: &str, input: Value, prior: Value) -> steward_schemas::Rollback {
    steward_schemas::Rollback::Inverse {
        op: op.to_owned(),
        input,
        prior,
    }
}

/// Cannot be undone.
pub(crate) fn irreversible(reason: &str, prior: Value) -> steward_schemas::Rollback {
    steward_schemas::Rollback::Irreversible {
        reason: reason.to_owned(),
        prior,
    }
}

/// Waits for Exchange Online to provision a recipient: pending while it may still come
/// (about 20 minutes of checks), terminal after.
pub(crate) fn not_provisioned(c: &Ctx<'_>, who: &str, e: Error) -> OpResult {
    const CHECKS: u32 = 20;
    if c.cx.phase == Phase::Run && c.cx.polls < CHECKS {
        return Ok(OpOutcome::Pending {
            check_after: Duration::from_secs(60),
            note: Some(format!(
                "Exchange Online has no mailbox for {who} yet (it appears some minutes after a licence with Exchange is assigned); check {} of {CHECKS}",
                c.cx.polls + 1
            )),
        });
    }
    Err(Fail::M365(e))
}

/// Parameters for a cmdlet, from pairs.
pub(crate) fn params(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A static spec for an op the catalog does not have.
pub(crate) const fn own(
    name: &'static str,
    summary: &'static str,
    group: steward_schemas::PermissionGroup,
    system: steward_schemas::System,
    reversibility: steward_schemas::Reversibility,
    inputs: &'static [steward_schemas::OpField],
    internal: bool,
) -> OpSpec {
    OpSpec {
        name,
        summary,
        access: steward_schemas::OpAccess::Write,
        group,
        approval: steward_schemas::ApprovalRule::Policy,
        system,
        reversibility,
        inputs,
        outputs: None,
        internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cloud_op_has_one_spec_and_catalog_names_keep_the_catalog_spec() {
        let mut names = names();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "an op is registered twice");
        for (spec, _) in all() {
            if let Some(c) = crate::catalog::CATALOG.iter().find(|c| c.name == spec.name) {
                assert!(
                    std::ptr::eq(c, spec),
                    "{} must use the catalog's spec",
                    spec.name
                );
            } else {
                assert_eq!(
                    spec.access,
                    steward_schemas::OpAccess::Write,
                    "{}",
                    spec.name
                );
            }
        }
        let mut r = Registry::builtin();
        assert!(r.get("user.create").is_some());
        r = Registry::new();
        register(&mut r, None);
        assert_eq!(r.specs().len(), n);
    }

    #[test]
    fn a_tenant_that_needs_consent_again_makes_a_running_step_wait() {
        let mut cx = OpContext {
            run_id: steward_schemas::RunId::from_ulid(Default::default()),
            company: "contoso".parse().unwrap(),
            step: steward_schemas::StepId::parse("create").unwrap(),
            phase: Phase::Run,
            attempt: steward_schemas::Attempt::FIRST,
            polls: 0,
            seq: 1,
            services: Default::default(),
            settings: None,
        };
        let refused =
            || Error::Token(crate::m365::token::TokenError::NoRefreshToken { tenant: "t".into() });
        match settle(&cx, refused()) {
            Ok(OpOutcome::Pending { check_after, note }) => {
                assert_eq!(check_after, RECONSENT_CHECK);
                let note = note.unwrap();
                assert!(note.contains("steward tenants connect contoso"), "{note}");
            }
            other => panic!("{other:?}"),
        }
        cx.phase = Phase::Undo;
        assert!(settle(&cx, refused()).is_err(), "an undo fails as before");
        cx.phase = Phase::Run;
        let transient = Error::Token(crate::m365::token::TokenError::Transient {
            tenant: "t".into(),
            what: "HTTP 503".into(),
            code: None,
            retry_after: None,
        });
        assert!(
            settle(&cx, transient).is_err(),
            "a transient failure is retried"
        );
    }

    #[test]
    fn path_segments_and_literals_are_escaped() {
        assert_eq!(seg("a#EXT#@b.com"), "a%23EXT%23@b.com");
        assert_eq!(seg("x/y z"), "x%2Fy%20z");
        assert_eq!(odata_str("O'Brien"), "'O''Brien'");
        assert!(is_guid("8a6f1c2e-3b4d-4e5f-9a0b-1c2d3e4f5a6b"));
        assert!(!is_guid("megan@contoso.com"));
    }
}
