//! The routed dispatcher: a workflow's abstract op (`user.create`) carried out, for the step's
//! company, as the concrete actions [`steward_core::routing::route`] gives — each dispatched to
//! the cloud executor (the Microsoft 365 ops) or the on-prem executor (the templates through
//! the RMM).
//!
//! # One naming scheme
//! - **Catalogue names** (`user.create`, `mailbox.grant_access`, …) are what workflows write;
//!   in the registry they are this dispatcher.
//! - **Concrete on-prem actions** are the template names routing emits (`ad.new_user`,
//!   `adsync.start_delta`, `exchange_server.enable_mailbox`): registered as internal ops (they
//!   are also the targets of on-prem rollbacks).
//! - **Concrete cloud actions** (`graph.create_user`, `exchange_online.set_forwarding`, …) are
//!   carried out by the Microsoft 365 implementation of the abstract op the route came from
//!   ([`cloud_impl`]); those implementations keep their own names for their inverses
//!   (`user.restore`, `mailbox.clear_forwarding`), and an undo named by a catalogue name runs the
//!   cloud implementation directly (only cloud ops name their inverse so).
//!
//! # Progress
//! A route with several actions (hybrid: AD change → delta sync → wait until Entra ID has it →
//! cloud op) keeps how far it got under the step (`{ns}:routed:{run}/{step}`): each action's
//! rollback once it is done. A pending action (an RMM job out, a sync not yet visible) makes the
//! step pending; when it is checked again, the actions already done are not repeated. A sync
//! that answers "AAD is busy" is a retry later (diagnosis), not a failure.
//!
//! The rollback of a route with more than one change is one internal op, [`UNDO_OP`], that
//! runs each change's inverse, last first.
//!
//! # Conditions
//! Routing marks some actions conditional on facts only the directory knows (is this group
//! synchronised from AD? mail-enabled?). Here they are decided from the step's inputs —
//! `group_source: ad | cloud` and `mail_enabled: true|false` when given — else by the identity
//! provider: in `hybrid` a group is taken to be synchronised from AD, in `hybrid_no_sync` it is
//! changed in both directories, in the cloud a group is taken to be a security or Microsoft 365
//! group. A directory lookup is not made yet.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use steward_core::routing::{self, Action, Condition, Target};
use steward_schemas::{Company, IdentityProvider as Idp, OpSpec, Phase, Rollback};

use super::{OnPrem, Progress, no_settings, not_configured, output_of, rollback_of};
use crate::m365::SecretSink;
use crate::op::{BoxFuture, Op, OpContext, OpError, OpOutcome};
use crate::powershell;

/// The internal op that undoes a routed step's several changes.
pub const UNDO_OP: &str = "routed.undo";

/// Its spec.
pub static UNDO_SPEC: OpSpec = OpSpec {
    name: UNDO_OP,
    summary: "undo a routed step's changes, last first",
    access: steward_schemas::OpAccess::Write,
    group: steward_schemas::PermissionGroup::Users,
    approval: steward_schemas::ApprovalRule::Policy,
    system: steward_schemas::System::Directory,
    reversibility: steward_schemas::Reversibility::NotNeeded,
    inputs: &[],
    outputs: None,
    internal: true,
};

/// What a routed step has done so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Done {
    /// Per action index: its output and rollback.
    actions: BTreeMap<usize, DoneAction>,
    /// Per action index: the attempt and the step's poll count when the action was first
    /// tried, so a cloud action that waits (Exchange Online provisioning a mailbox) counts its
    /// own checks, not the RMM polls of the actions before it.
    #[serde(default)]
    began: BTreeMap<usize, (u32, u32)>,
}

impl Done {
    /// `cx` as action `i` should see it: its polls counted from its own first try. Records
    /// that first try; returns whether the record changed (to be saved).
    fn context_for(&mut self, i: usize, cx: &OpContext) -> (OpContext, bool) {
        let attempt = cx.attempt.get();
        let (changed, start) = match self.began.get(&i) {
            Some((a, p)) if *a == attempt && *p <= cx.polls => (false, *p),
            _ => {
                self.began.insert(i, (attempt, cx.polls));
                (true, cx.polls)
            }
        };
        let mut acx = cx.clone();
        acx.polls = cx.polls - start;
        (acx, changed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DoneAction {
    action: String,
    output: Value,
    rollback: Rollback,
}

/// The cloud implementation of abstract op `op`'s cloud action `action`.
pub fn cloud_impl(op: &str, action: &str) -> &'static str {
    match action {
        "graph.wait_for_user" => "directory_sync.wait_for_user",
        "graph.copy_group_memberships" => "group.copy_memberships",
        "graph.set_usage_location" => "user.set_usage_location",
        _ => match op {
            "mailbox.revoke_access" => "mailbox.revoke_access",
            other => routing::ROUTED_OPS
                .iter()
                .find(|o| **o == other)
                .copied()
                .unwrap_or("unknown"),
        },
    }
}

/// The dispatcher of one abstract op.
pub(crate) struct Routed {
    pub(crate) spec: &'static OpSpec,
    pub(crate) cloud: Arc<BTreeMap<&'static str, Arc<dyn Op>>>,
    pub(crate) onprem: Option<OnPrem>,
    pub(crate) secrets: Option<Arc<dyn SecretSink>>,
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("op", &self.spec.name)
            .finish()
    }
}

fn text<'a>(input: &'a Value, k: &str) -> Option<&'a str> {
    input
        .get(k)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

fn need<'a>(input: &'a Value, k: &str) -> Result<&'a str, OpError> {
    text(input, k).ok_or_else(|| OpError::bad_input(k, "is missing; set it under `with:`"))
}

/// A sAMAccountName from a UPN: its local part, without the characters AD refuses, at most
/// 20 characters.
pub fn sam_from_upn(upn: &str) -> String {
    upn.split('@')
        .next()
        .unwrap_or(upn)
        .chars()
        .filter(|c| !"\"/\\[]:;|=,+*?<>@ ".contains(*c))
        .take(20)
        .collect()
}

/// A random password of 20 characters from every class (CSPRNG).
fn generate_password() -> String {
    const SETS: [&[u8]; 4] = [
        b"ABCDEFGHJKLMNPQRSTUVWXYZ",
        b"abcdefghijkmnopqrstuvwxyz",
        b"23456789",
        b"!#%+-=?@^_",
    ];
    let mut rng = rand::rng();
    let mut out: Vec<u8> = SETS
        .iter()
        .map(|s| s[rng.random_range(0..s.len())])
        .collect();
    let all: Vec<u8> = SETS.concat();
    while out.len() < 20 {
        out.push(all[rng.random_range(0..all.len())]);
    }
    for i in (1..out.len()).rev() {
        let j = rng.random_range(0..=i);
        out.swap(i, j);
    }
    String::from_utf8(out).expect("ASCII")
}

/// Graph-style attribute names to `ad.set_user`'s.
fn ad_attribute(k: &str) -> Option<&'static str> {
    Some(match k {
        "givenName" | "given_name" => "given_name",
        "surname" => "surname",
        "displayName" | "display_name" => "display_name",
        "jobTitle" | "job_title" | "title" => "title",
        "department" => "department",
        "companyName" | "company" => "company",
        "officeLocation" | "office" => "office",
        "businessPhones" | "office_phone" => "office_phone",
        "mobilePhone" | "mobile_phone" => "mobile_phone",
        "employeeId" | "employee_id" => "employee_id",
        "streetAddress" | "street_address" => "street_address",
        "city" => "city",
        "state" => "state",
        "postalCode" | "postal_code" => "postal_code",
        _ => return None,
    })
}

impl Routed {
    fn key(&self, cx: &OpContext) -> Option<String> {
        self.onprem
            .as_ref()
            .map(|o| format!("{}:routed:{}", o.namespace, cx.idempotency_key()))
    }

    async fn load(&self, cx: &OpContext) -> Result<Done, OpError> {
        let (Some(o), Some(k)) = (&self.onprem, self.key(cx)) else {
            return Ok(Done::default());
        };
        let mut conn = o.redis.clone();
        let s: Option<String> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .map_err(super::redis_err)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default())
    }

    async fn save(&self, cx: &OpContext, done: &Done) -> Result<(), OpError> {
        let (Some(o), Some(k)) = (&self.onprem, self.key(cx)) else {
            return Ok(());
        };
        let mut conn = o.redis.clone();
        redis::cmd("SET")
            .arg(k)
            .arg(serde_json::to_string(done).unwrap_or_default())
            .arg("EX")
            .arg(40 * 24 * 3600)
            .query_async::<()>(&mut conn)
            .await
            .map_err(super::redis_err)
    }

    /// Whether `a` applies to this step.
    fn applies(&self, company: &Company, a: &Action, input: &Value) -> bool {
        let source = text(input, "group_source");
        let mail = input.get("mail_enabled").and_then(Value::as_bool);
        match &a.when {
            None => true,
            Some(Condition::Input { name, equals }) => text(input, name) == Some(*equals),
            Some(Condition::GroupSyncedFromAd) => match source {
                Some(s) => s == "ad",
                None => company.identity_provider == Idp::Hybrid,
            },
            Some(Condition::GroupInAd) => source.is_none_or(|s| s == "ad"),
            Some(Condition::GroupCloudMailEnabled) => {
                source.is_none_or(|s| s == "cloud")
                    && company.identity_provider != Idp::Hybrid
                    && mail == Some(true)
            }
            Some(Condition::GroupCloudNotMailEnabled) => match source {
                Some(s) => s == "cloud" && mail != Some(true),
                None => company.identity_provider != Idp::Hybrid && mail != Some(true),
            },
        }
    }

    /// The template inputs for on-prem `action` of abstract op `op`.
    async fn onprem_inputs(
        &self,
        cx: &OpContext,
        company: &Company,
        a: &Action,
        input: &Value,
    ) -> Result<Map<String, Value>, OpError> {
        let op = self.spec.name;
        let user = || need(input, "user");
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_owned(), v);
        };
        match a.action {
            "ad.new_user" => {
                let upn = need(input, "user_principal_name")?;
                let sam = text(input, "sam_account_name")
                    .map(str::to_owned)
                    .unwrap_or_else(|| sam_from_upn(upn));
                let path = text(input, "ou")
                    .map(str::to_owned)
                    .or_else(|| company.defaults.ou.clone())
                    .ok_or_else(|| {
                        OpError::bad_input(
                            "ou",
                            "is needed to create the user in Active Directory; set it, or the company's default OU (defaults.ou)",
                        )
                    })?;
                let password = match text(input, "password") {
                    Some(p) => p.to_owned(),
                    None => {
                        let Some(sink) = &self.secrets else {
                            return Err(OpError::bad_input(
                                "password",
                                "is needed for Active Directory (this worker cannot deliver a generated one); pass it as a secret input",
                            ));
                        };
                        sink.keep(
                            &cx.idempotency_key(),
                            &format!("initial password of {upn}"),
                            crate::m365::Secret::new(generate_password()),
                        )
                        .await
                        .map_err(|e| OpError::retryable(e.to_string()))?
                        .secret
                        .expose()
                        .to_owned()
                    }
                };
                put("sam_account_name", json!(sam));
                put("user_principal_name", json!(upn));
                put("path", json!(path));
                put("password", json!(password));
                let display = need(input, "display_name")?;
                put("name", json!(display));
                put("display_name", json!(display));
                for (from, to) in [
                    ("given_name", "given_name"),
                    ("surname", "surname"),
                    ("job_title", "title"),
                    ("department", "department"),
                    ("mail", "mail"),
                    ("manager", "manager"),
                ] {
                    if let Some(v) = text(input, from) {
                        put(to, json!(v));
                    }
                }
            }
            "ad.set_user" => {
                put("identity", json!(user()?));
                let mut attrs = Map::new();
                if let Some(Value::Object(given)) = input.get("attributes") {
                    for (k, v) in given {
                        let name = ad_attribute(k).ok_or_else(|| {
                            OpError::bad_input(
                                &format!("attributes.{k}"),
                                "is not an attribute Steward changes in Active Directory; use one of given_name, surname, display_name, job_title, department, company, office, mobile_phone, employee_id, street_address, city, state, postal_code",
                            )
                        })?;
                        attrs.insert(name.to_owned(), v.clone());
                    }
                }
                if !attrs.is_empty() {
                    put("attributes", Value::Object(attrs));
                }
            }
            "ad.set_enabled" => {
                put("identity", json!(user()?));
                put("enabled", json!(op == "user.enable"));
            }
            "ad.set_manager" => {
                put("identity", json!(user()?));
                put(
                    "manager",
                    input.get("manager").cloned().unwrap_or(Value::Null),
                );
            }
            "ad.remove_user" | "ad.get_user" | "ad.unlock" | "ad.list_groups" => {
                put("identity", json!(user()?));
            }
            "ad.reset_password" => {
                put("identity", json!(user()?));
                put("password", json!(need(input, "password")?));
            }
            "ad.add_group_member" | "ad.remove_group_member" => {
                put("group", json!(need(input, "group")?));
                put("member", json!(user()?));
            }
            "ad.copy_groups" => {
                // The catalogue's name is `template`; `template_user` is accepted too.
                let template = text(input, "template")
                    .or_else(|| text(input, "template_user"))
                    .ok_or_else(|| {
                        OpError::bad_input("template", "is missing; set it under `with:`")
                    })?;
                put("template", json!(template));
                put("member", json!(user()?));
            }
            "ad.move_object" => {
                put("identity", json!(user()?));
                put("target_path", json!(need(input, "ou")?));
            }
            "adsync.start_delta" => {}
            "exchange_server.enable_remote_mailbox" => {
                put("identity", json!(user()?));
                if let Some(r) = text(input, "remote_routing_address") {
                    put("remote_routing_address", json!(r));
                }
            }
            "exchange_server.new_mailbox" => {
                // A cloud-only user's mailbox on Exchange Server: New-Mailbox makes its AD
                // account (another account than the Entra ID user, with its own password,
                // handed over through a one-time link like the user's).
                let upn = user()?;
                let display = text(input, "display_name").unwrap_or(upn);
                let password = match text(input, "password") {
                    Some(p) => p.to_owned(),
                    None => {
                        let Some(sink) = &self.secrets else {
                            return Err(OpError::bad_input(
                                "password",
                                "is needed for the mailbox's AD account (this worker cannot deliver a generated one); pass it as a secret input",
                            ));
                        };
                        sink.keep(
                            &cx.idempotency_key(),
                            &format!("initial password of the mailbox account {upn}"),
                            crate::m365::Secret::new(generate_password()),
                        )
                        .await
                        .map_err(|e| OpError::retryable(e.to_string()))?
                        .secret
                        .expose()
                        .to_owned()
                    }
                };
                put("name", json!(display));
                put("display_name", json!(display));
                put("user_principal_name", json!(upn));
                put("alias", json!(sam_from_upn(upn)));
                put("password", json!(password));
                for (from, to) in [("given_name", "first_name"), ("surname", "last_name")] {
                    if let Some(v) = text(input, from) {
                        put(to, json!(v));
                    }
                }
                if let Some(ou) = text(input, "ou")
                    .map(str::to_owned)
                    .or_else(|| company.defaults.ou.clone())
                {
                    put("organizational_unit", json!(ou));
                }
            }
            "exchange_server.enable_mailbox"
            | "exchange_server.remove_mobile_devices"
            | "exchange_server.set_remote_mailbox"
            | "exchange_server.set_mailbox_type"
            | "exchange_server.set_hidden_from_gal" => {
                put("identity", json!(user()?));
            }
            "exchange_server.set_forwarding" => {
                put("identity", json!(user()?));
                put("forwarding_smtp_address", json!(need(input, "to")?));
                put(
                    "deliver_to_mailbox_and_forward",
                    json!(
                        input
                            .get("keep_copy")
                            .and_then(Value::as_bool)
                            .unwrap_or(true)
                    ),
                );
            }
            "exchange_server.set_auto_reply" => {
                put("identity", json!(user()?));
                let msg = need(input, "message")?;
                put("state", json!("Enabled"));
                put("internal_message", json!(msg));
                put("external_message", json!(msg));
            }
            "exchange_server.add_mailbox_permission"
            | "exchange_server.remove_mailbox_permission"
            | "exchange_server.add_send_as"
            | "exchange_server.remove_send_as"
            | "exchange_server.set_send_on_behalf" => {
                put("identity", json!(need(input, "mailbox")?));
                put("user", json!(need(input, "trustee")?));
            }
            other => {
                return Err(OpError::terminal(format!(
                    "`{op}` routes to `{other}`, which Steward cannot carry out yet"
                )));
            }
        }
        // Routing's fixed arguments (`type: Shared`, `hidden: true`, `change: add`).
        for (k, v) in &a.args {
            m.insert(k.clone(), v.clone());
        }
        Ok(m)
    }

    async fn run_cloud(
        &self,
        cx: &OpContext,
        name: &str,
        input: Value,
    ) -> Result<OpOutcome, OpError> {
        match self.cloud.get(name) {
            Some(op) => op.run(cx, input).await,
            None => Err(OpError::terminal(format!(
                "no cloud implementation `{name}` in this worker; deploy a worker that has it, then retry the step"
            ))),
        }
    }

    async fn dispatch(&self, cx: &OpContext, input: Value) -> Result<OpOutcome, OpError> {
        let op = self.spec.name;
        if cx.phase == Phase::Undo {
            // Only cloud ops name a catalogue op as their inverse.
            return self.run_cloud(cx, op, input).await;
        }
        // Without the company's settings (a caller that has none), the cloud implementation
        // runs as it is.
        let Some(company) = cx.settings.as_deref() else {
            return self.run_cloud(cx, op, input).await;
        };
        let mut route = routing::route(company, op).map_err(|e| OpError::Terminal {
            message: e.to_string(),
            code: Some("not_routable".to_owned()),
        })?;
        // A synced user's cloud-only attributes are set once Entra ID has it: the usage
        // location (licences need it), from the step or the company's default.
        let usage = text(&input, "usage_location")
            .map(str::to_owned)
            .or_else(|| company.defaults.usage_location.clone());
        if op == "user.create" && company.identity_provider == Idp::Hybrid && usage.is_some() {
            route.actions.push(Action {
                action: "graph.set_usage_location",
                target: Target::Graph,
                when: None,
                args: Map::new(),
                why: "a synced user's usage location is cloud-only; licences need it",
            });
        }
        let actions: Vec<(usize, &Action)> = route
            .actions
            .iter()
            .enumerate()
            .filter(|(_, a)| self.applies(company, a, &input))
            .collect();
        // One cloud action: the cloud op, as it is (its outcome and rollback unchanged).
        if let [(_, a)] = actions.as_slice()
            && matches!(a.target, Target::Graph | Target::ExchangeOnline)
        {
            let mut input = input.clone();
            if let Value::Object(m) = &mut input {
                for (k, v) in &a.args {
                    m.entry(k.clone()).or_insert(v.clone());
                }
            }
            return self.run_cloud(cx, cloud_impl(op, a.action), input).await;
        }
        if actions.is_empty() {
            return Ok(OpOutcome::done(json!({
                "actions": [],
                "note": route.note.unwrap_or_else(|| "nothing to do for this company".to_owned()),
            })));
        }
        let mut done = self.load(cx).await?;
        for (i, a) in &actions {
            if done.actions.contains_key(i) {
                continue;
            }
            let finished = match &a.target {
                Target::Rmm { .. } => {
                    let Some(onprem) = &self.onprem else {
                        return Err(not_configured());
                    };
                    if cx.settings.is_none() {
                        return Err(no_settings(cx));
                    }
                    let inputs = self.onprem_inputs(cx, company, a, &input).await?;
                    let progress = match onprem
                        .step(cx, company, a.action, &inputs, &i.to_string())
                        .await
                    {
                        // "AAD is busy": a sync cycle is running. Not a failure, and not an
                        // attempt used up: the step waits (no worker held) and starts its own
                        // cycle when checked again. Several steps of one run that each sync
                        // (offboarding's groups, address list, OU) would otherwise burn their
                        // retries on each other's cycles.
                        Err(OpError::Retryable {
                            message,
                            code: Some(code),
                            retry_after,
                        }) if code == "sync_busy" && a.action == "adsync.start_delta" => {
                            Progress::Waiting {
                                check_after: retry_after
                                    .unwrap_or(std::time::Duration::from_secs(60)),
                                note: message,
                            }
                        }
                        other => other?,
                    };
                    match progress {
                        Progress::Waiting { check_after, note } => {
                            return Ok(OpOutcome::Pending {
                                check_after,
                                note: Some(format!(
                                    "{} ({} of {}): {note}",
                                    a.action,
                                    i + 1,
                                    route.actions.len()
                                )),
                            });
                        }
                        Progress::Done { outcome, prepared } => DoneAction {
                            action: a.action.to_owned(),
                            output: output_of(&outcome),
                            rollback: rollback_of(prepared.template, &prepared, &outcome),
                        },
                    }
                }
                Target::Graph | Target::ExchangeOnline => {
                    let mut cin = input.clone();
                    if let Value::Object(m) = &mut cin {
                        for (k, v) in &a.args {
                            m.insert(k.clone(), v.clone());
                        }
                        // The AD-only inputs of a user created in both directories.
                        if a.action == "graph.create_user" {
                            m.remove("ou");
                            m.remove("sam_account_name");
                        }
                        if a.action == "graph.set_usage_location" {
                            if let Some(upn) = m.get("user_principal_name").cloned() {
                                m.insert("user".to_owned(), upn);
                            }
                            if let Some(u) = &usage {
                                m.insert("usage_location".to_owned(), json!(u));
                            }
                            m.retain(|k, _| k == "user" || k == "usage_location");
                        }
                        // The wait after a sync looks the user up by UPN.
                        if a.action == "graph.wait_for_user"
                            && !m.contains_key("user")
                            && let Some(upn) = m.get("user_principal_name").cloned()
                        {
                            m.insert("user".to_owned(), upn);
                        }
                    }
                    let (acx, first) = done.context_for(*i, cx);
                    if first {
                        self.save(cx, &done).await?;
                    }
                    match self.run_cloud(&acx, cloud_impl(op, a.action), cin).await? {
                        OpOutcome::Pending { check_after, note } => {
                            return Ok(OpOutcome::Pending {
                                check_after,
                                note: Some(format!(
                                    "{} ({} of {}): {}",
                                    a.action,
                                    i + 1,
                                    route.actions.len(),
                                    note.unwrap_or_default()
                                )),
                            });
                        }
                        OpOutcome::Succeeded { output, rollback } => DoneAction {
                            action: a.action.to_owned(),
                            output,
                            rollback,
                        },
                    }
                }
                Target::Steward => {
                    return Err(OpError::terminal(format!(
                        "`{op}` routed to Steward itself (a bug)"
                    )));
                }
            };
            done.actions.insert(*i, finished);
            self.save(cx, &done).await?;
        }
        let mut outcome = finish(op, &done);
        // A user made in AD with a generated password: that password was kept under this step's
        // key when the script's inputs were made; keeping again gives the same one back with its
        // one-time link, which the step's output carries as the cloud user's does.
        if let OpOutcome::Succeeded { output, .. } = &mut outcome
            && op == "user.create"
            && output.get("delivery").is_none()
            && text(&input, "password").is_none()
            && done.actions.values().any(|d| d.action == "ad.new_user")
            && let Some(sink) = &self.secrets
        {
            let upn = text(&input, "user_principal_name").unwrap_or_default();
            let kept = sink
                .keep(
                    &cx.idempotency_key(),
                    &format!("initial password of {upn}"),
                    crate::m365::Secret::new(generate_password()),
                )
                .await
                .map_err(|e| OpError::retryable(e.to_string()))?;
            output["delivery"] = json!({"kind": "one_time_secret", "reference": kept.reference});
        }
        Ok(outcome)
    }
}

/// The step's output and rollback from its finished actions.
fn finish(op: &str, done: &Done) -> OpOutcome {
    let mut outputs = Vec::new();
    let mut undo = Vec::new();
    let mut irreversible = Vec::new();
    for d in done.actions.values() {
        outputs.push(json!({"action": d.action, "output": d.output}));
        match &d.rollback {
            Rollback::Nothing => {}
            Rollback::Inverse { op, input, prior } => {
                undo.push(json!({"op": op, "input": input, "prior": prior}));
            }
            Rollback::Irreversible { reason, .. } => {
                irreversible.push(format!("{}: {reason}", d.action));
            }
        }
    }
    undo.reverse();
    let mut output = json!({"actions": outputs});
    // The user's id and UPN, as later steps refer to them, from whichever directory has it.
    if op == "user.create" {
        let cloud = done
            .actions
            .values()
            .find(|d| d.action == "graph.create_user" || d.action == "graph.wait_for_user");
        let ad = done.actions.values().find(|d| d.action == "ad.new_user");
        if let Some(c) = cloud {
            for k in ["id", "user_principal_name", "delivery"] {
                if let Some(v) = c.output.get(k) {
                    output[k] = v.clone();
                }
            }
        }
        if let Some(a) = ad {
            let r = &a.output["result"];
            if output.get("id").is_none() {
                output["id"] = r["object_guid"].clone();
            }
            if output.get("user_principal_name").is_none() {
                output["user_principal_name"] = r["user_principal_name"].clone();
            }
            output["ad_object_guid"] = r["object_guid"].clone();
        }
    }
    let rollback = match (undo.len(), irreversible.is_empty()) {
        (0, true) => Rollback::Nothing,
        (0, false) => Rollback::Irreversible {
            reason: irreversible.join("; "),
            prior: Value::Null,
        },
        _ => Rollback::Inverse {
            op: UNDO_OP.to_owned(),
            input: json!({"undo": undo, "irreversible": irreversible}),
            prior: Value::Null,
        },
    };
    OpOutcome::Succeeded { output, rollback }
}

impl Op for Routed {
    fn spec(&self) -> &OpSpec {
        self.spec
    }

    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(self.dispatch(cx, input))
    }
}

/// The undo of a routed step: each change's inverse, in the order given (last change first).
pub(crate) struct RoutedUndo {
    pub(crate) spec: &'static OpSpec,
    pub(crate) cloud: Arc<BTreeMap<&'static str, Arc<dyn Op>>>,
    pub(crate) onprem: Option<OnPrem>,
}

impl std::fmt::Debug for RoutedUndo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedUndo").finish()
    }
}

impl Op for RoutedUndo {
    fn spec(&self) -> &OpSpec {
        self.spec
    }

    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            let items = input["undo"].as_array().cloned().unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                let name = item["op"].as_str().unwrap_or_default();
                let args = item["input"].clone();
                if powershell::template(name).is_some() {
                    let Some(onprem) = &self.onprem else {
                        return Err(not_configured());
                    };
                    let Some(company) = cx.settings.as_deref() else {
                        return Err(no_settings(cx));
                    };
                    let Value::Object(m) = args else {
                        return Err(OpError::terminal(
                            "a routed undo's input is not a map (a bug)",
                        ));
                    };
                    match onprem
                        .step_inline(cx, company, name, &m, &format!("u{i}"))
                        .await?
                    {
                        Progress::Done { .. } => {}
                        Progress::Waiting { check_after, note } => {
                            return Err(OpError::Retryable {
                                message: format!("the undo `{name}` is still waiting: {note}"),
                                code: None,
                                retry_after: Some(check_after),
                            });
                        }
                    }
                } else {
                    match self.cloud.get(name) {
                        Some(op) => match op.run(cx, args).await? {
                            OpOutcome::Succeeded { .. } => {}
                            OpOutcome::Pending { check_after, .. } => {
                                return Err(OpError::Retryable {
                                    message: format!("the undo `{name}` is not finished yet"),
                                    code: None,
                                    retry_after: Some(check_after),
                                });
                            }
                        },
                        None => {
                            return Err(OpError::terminal(format!(
                                "no implementation of the inverse `{name}` in this worker"
                            )));
                        }
                    }
                }
            }
            Ok(OpOutcome::done(json!({"undone": items.len()})))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_schemas::{Attempt, Phase, RunId, StepId};

    fn cx(attempt: u32, polls: u32) -> OpContext {
        OpContext {
            run_id: RunId::from_ulid(Default::default()),
            company: "fabrikam".parse().unwrap(),
            step: StepId::parse("mailbox").unwrap(),
            phase: Phase::Run,
            attempt: Attempt::new(attempt).unwrap(),
            polls,
            seq: 1,
            services: Default::default(),
            settings: None,
        }
    }

    /// The hybrid mailbox: Enable-RemoteMailbox and the delta sync (RMM jobs) took 23 polls of
    /// the step; the cloud wait after them still has all its checks, counted from its first try.
    #[test]
    fn a_later_action_counts_its_own_polls() {
        let mut done = Done::default();
        let (first, changed) = done.context_for(2, &cx(1, 23));
        assert_eq!((first.polls, changed), (0, true));
        let (again, changed) = done.context_for(2, &cx(1, 30));
        assert_eq!((again.polls, changed), (7, false));
        // A new attempt (polls start again from 0) starts the count again.
        let (retry, changed) = done.context_for(2, &cx(2, 0));
        assert_eq!((retry.polls, changed), (0, true));
        let (retry, _) = done.context_for(2, &cx(2, 4));
        assert_eq!(retry.polls, 4);
        // The record survives a save and load (old records without it read as empty).
        let text = serde_json::to_string(&done).unwrap();
        let back: Done = serde_json::from_str(&text).unwrap();
        assert_eq!(back.began.get(&2), Some(&(2, 0)));
        let old: Done = serde_json::from_str(r#"{"actions":{}}"#).unwrap();
        assert!(old.began.is_empty());
    }
}
