//! Every cloud op against the sandbox over real HTTP: forward, forward again (the sandbox's
//! effect ledger shows one change), inverse, inverse again (one change); request bodies checked
//! against Microsoft's Graph v1.0 CSDL through a recording proxy; secrets kept out of outputs
//! and rollback records; and the faults: 429 with Retry-After, 503, a connection reset after
//! the change was applied, expired and revoked tokens.

mod m365_support;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use steward_schemas::{Attempt, CompanyId, Phase, Rollback, RunId, StepId};
use steward_workers::m365::MemorySink;
use steward_workers::{OpContext, OpError, OpOutcome, Registry};

use m365_support::proxy::Proxy;
use m365_support::*;

/// A sandbox, a recording proxy in front of it, and the cloud ops wired to the proxy.
struct World {
    sb: steward_sandbox::RunningSandbox,
    proxy: Proxy,
    sink: MemorySink,
    reg: Registry,
    run: RunId,
    outputs: std::sync::Mutex<Vec<String>>,
}

impl World {
    async fn new() -> Result<Self> {
        let sb = sandbox().await?;
        let proxy = Proxy::start(&sb.base_url).await?;
        let creds = credentials();
        let sink = MemorySink::new();
        let reg = Registry::with_m365(m365_at(&proxy.base_url, &creds, None, &sink));
        Ok(Self {
            sb,
            proxy,
            sink,
            reg,
            run: RunId::from_ulid(ulid::Ulid::new()),
            outputs: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn cx(&self, company: &str, step: &str, phase: Phase, attempt: u32) -> OpContext {
        OpContext {
            run_id: self.run,
            company: company.parse::<CompanyId>().expect("company id"),
            step: StepId::parse(step).expect("step id"),
            phase,
            attempt: Attempt::new(attempt).expect("attempt"),
            polls: 0,
            seq: attempt,
            services: Default::default(),
            settings: None,
        }
    }

    async fn op(&self, name: &str, cx: &OpContext, input: &Value) -> Result<OpOutcome, OpError> {
        let op = self
            .reg
            .get(name)
            .unwrap_or_else(|| panic!("no op {name}"))
            .clone();
        let out = op.run(cx, input.clone()).await;
        if let Ok(o) = &out {
            self.outputs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{o:?}"));
        }
        out
    }

    async fn ok(&self, name: &str, cx: &OpContext, input: &Value) -> Result<(Value, Rollback)> {
        match self.op(name, cx, input).await {
            Ok(OpOutcome::Succeeded { output, rollback }) => Ok((output, rollback)),
            other => bail!("{name} {input}: expected success, got {other:?}"),
        }
    }

    /// Ledger entries of this world's run for `step` (`s` or `s/undo`).
    async fn changes(&self, step: &str) -> Result<Vec<Value>> {
        let v = admin(&self.sb, "GET", &format!("/ledger?run={}", self.run), None).await?;
        Ok(v["entries"]
            .as_array()
            .context("entries")?
            .iter()
            .filter(|e| e["step"] == json!(step))
            .cloned()
            .collect())
    }

    /// Forward, forward again, inverse, inverse again, on `company`; checks the ledger at each
    /// turn. Returns the first forward's output and rollback.
    async fn round_trip(
        &self,
        company: &str,
        step: &str,
        op: &str,
        input: Value,
        forward_changes: usize,
    ) -> Result<(Value, Rollback)> {
        let (out, rollback) = self
            .ok(op, &self.cx(company, step, Phase::Run, 1), &input)
            .await?;
        let n = self.changes(step).await?.len();
        assert_eq!(
            n,
            forward_changes,
            "{op}: changes made by the first run: {:#?}",
            self.changes(step).await?
        );
        let (_, again) = self
            .ok(op, &self.cx(company, step, Phase::Run, 2), &input)
            .await?;
        assert_eq!(again, rollback, "{op}: a repeat reports the same rollback");
        assert_eq!(
            self.changes(step).await?.len(),
            n,
            "{op}: the repeat changed something"
        );
        if let Rollback::Inverse {
            op: inv,
            input: inv_input,
            ..
        } = &rollback
        {
            let undo = format!("{step}/undo");
            self.ok(inv, &self.cx(company, step, Phase::Undo, 1), inv_input)
                .await?;
            let m = self.changes(&undo).await?.len();
            assert!(m >= 1, "{op}: its inverse {inv} changed nothing");
            self.ok(inv, &self.cx(company, step, Phase::Undo, 2), inv_input)
                .await?;
            assert_eq!(
                self.changes(&undo).await?.len(),
                m,
                "{op}: the inverse repeated changed something"
            );
        }
        Ok((out, rollback))
    }

    /// No duplicate in the ledger; every Graph body matches the CSDL; no kept secret appears in
    /// any output or rollback record.
    async fn check(&self, graph_bodies: bool) -> Result<()> {
        let v = admin(&self.sb, "GET", "/ledger", None).await?;
        assert_eq!(
            v["duplicates"],
            json!(0),
            "a change was applied twice: {v:#}"
        );
        let csdl = csdl::Csdl::load()?;
        let mut checked = 0;
        for seen in self.proxy.seen() {
            let Some(path) = seen.path.strip_prefix("/graph/v1.0") else {
                continue;
            };
            let Some(body) = &seen.body else { continue };
            csdl.check(&seen.method, path, body)?;
            checked += 1;
        }
        assert_eq!(checked > 0, graph_bodies, "Graph bodies checked: {checked}");
        let outputs = self
            .outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n");
        let ledger = v.to_string();
        for key in self.sink.keys() {
            if let Some((_, secret)) = self.sink.read(&key) {
                assert!(
                    !outputs.contains(secret.expose()),
                    "a secret reached an output or rollback record"
                );
                assert!(
                    !ledger.contains(secret.expose()),
                    "a secret reached the sandbox's ledger"
                );
            }
        }
        Ok(())
    }
}

fn inverse_of(r: &Rollback) -> (&str, &Value) {
    match r {
        Rollback::Inverse { op, input, .. } => (op, input),
        other => panic!("expected an inverse, got {other:?}"),
    }
}

#[tokio::test]
async fn user_ops_round_trip() -> Result<()> {
    let w = World::new().await?;
    // Create: one change, the inverse deletes; the password went to the sink only.
    let (out, rb) = w
        .round_trip(
            "contoso",
            "create",
            "user.create",
            json!({"user_principal_name": "new.starter@contoso.com", "display_name": "New Starter",
                   "given_name": "New", "surname": "Starter", "job_title": "Analyst",
                   "department": "Finance", "usage_location": "GB"}),
            1,
        )
        .await?;
    assert_eq!(out["user_principal_name"], "new.starter@contoso.com");
    assert_eq!(out["delivery"]["kind"], "one_time_secret");
    assert_eq!(inverse_of(&rb).0, "user.delete");
    let (label, password) = w
        .sink
        .read(&format!("{}/create", w.run))
        .context("the password was kept")?;
    assert_eq!(label, "initial password of new.starter@contoso.com");
    assert_eq!(password.expose().len(), 16);
    // Creating an existing UPN in another run is a conflict, not a second user.
    let other = World {
        run: RunId::from_ulid(ulid::Ulid::new()),
        ..w
    };
    let w = other;
    match w
        .op(
            "user.create",
            &w.cx("contoso", "create_again", Phase::Run, 1),
            &json!({"user_principal_name": "megan.bowen@contoso.com", "display_name": "Megan"}),
        )
        .await
    {
        Err(OpError::Terminal {
            code: Some(c),
            message,
        }) => {
            assert_eq!(c, "ObjectConflict");
            assert!(message.contains("already exists"), "{message}");
        }
        other => bail!("expected a conflict, got {other:?}"),
    }

    let (_, rb) = w
        .round_trip(
            "contoso",
            "update",
            "user.update",
            json!({"user": "adele.vance@contoso.com", "attributes": {"jobTitle": "Leaver", "department": "Gone"}}),
            1,
        )
        .await?;
    assert_eq!(
        inverse_of(&rb).1["attributes"],
        json!({"jobTitle": "Retail Manager", "department": "Retail"})
    );
    w.round_trip(
        "contoso",
        "disable",
        "user.disable",
        json!({"user": "adele.vance@contoso.com"}),
        1,
    )
    .await?;
    w.round_trip(
        "contoso",
        "enable",
        "user.enable",
        json!({"user": "adele.vance@contoso.com"}),
        0,
    )
    .await?;
    let (_, rb) = w
        .round_trip(
            "contoso",
            "manager",
            "user.set_manager",
            json!({"user": "megan.bowen@contoso.com", "manager": "adele.vance@contoso.com"}),
            1,
        )
        .await?;
    assert_eq!(inverse_of(&rb).0, "user.clear_manager");
    let (_, rb) = w
        .round_trip(
            "contoso",
            "clear_manager",
            "user.clear_manager",
            json!({"user": "adele.vance@contoso.com"}),
            1,
        )
        .await?;
    assert_eq!(inverse_of(&rb).0, "user.set_manager");
    w.round_trip(
        "contoso",
        "location",
        "user.set_usage_location",
        json!({"user": "megan.bowen@contoso.com", "usage_location": "us"}),
        1,
    )
    .await?;
    let (out, rb) = w
        .round_trip(
            "contoso",
            "delete",
            "user.delete",
            json!({"user": "adele.vance@contoso.com"}),
            1,
        )
        .await?;
    assert_eq!(inverse_of(&rb).0, "user.restore");
    assert_eq!(inverse_of(&rb).1["user"], out["id"]);

    // Reads change nothing.
    let (me, _) = w
        .ok(
            "user.get",
            &w.cx("contoso", "get", Phase::Run, 1),
            &json!({"user": "megan.bowen@contoso.com"}),
        )
        .await?;
    assert_eq!(me["usage_location"], "GB");
    let (found, _) = w
        .ok(
            "directory_sync.wait_for_user",
            &w.cx("contoso", "wait", Phase::Run, 1),
            &json!({"user": "megan.bowen@contoso.com"}),
        )
        .await?;
    assert_eq!(found["id"], me["id"]);
    assert!(matches!(
        w.op(
            "directory_sync.wait_for_user",
            &w.cx("contoso", "wait2", Phase::Run, 1),
            &json!({"user": "not.yet@contoso.com"})
        )
        .await,
        Ok(OpOutcome::Pending { .. })
    ));
    w.check(true).await
}

#[tokio::test]
async fn licence_and_group_ops_round_trip() -> Result<()> {
    let w = World::new().await?;
    let (out, rb) = w
        .round_trip(
            "contoso",
            "assign",
            "license.assign",
            json!({"user": "megan.bowen@contoso.com", "sku": "O365_BUSINESS_ESSENTIALS"}),
            1,
        )
        .await?;
    assert_eq!(out["sku"], "O365_BUSINESS_ESSENTIALS");
    assert_eq!(inverse_of(&rb).0, "license.remove");
    // Take the only seat again, then nobody else can have one: terminal, naming the SKU.
    w.ok(
        "license.assign",
        &w.cx("contoso", "assign_again", Phase::Run, 1),
        &json!({"user": "megan.bowen@contoso.com", "sku": "O365_BUSINESS_ESSENTIALS"}),
    )
    .await?;
    match w
        .op(
            "license.assign",
            &w.cx("contoso", "no_seat", Phase::Run, 1),
            &json!({"user": "adele.vance@contoso.com", "sku": "O365_BUSINESS_ESSENTIALS"}),
        )
        .await
    {
        Err(OpError::Terminal {
            code: Some(c),
            message,
        }) => {
            assert_eq!(c, "no_free_seat");
            assert!(
                message.contains("O365_BUSINESS_ESSENTIALS") && message.contains("1 of 1"),
                "{message}"
            );
        }
        other => bail!("expected no seat, got {other:?}"),
    }
    assert!(w.changes("no_seat").await?.is_empty());
    match w
        .op(
            "license.assign",
            &w.cx("contoso", "bad_sku", Phase::Run, 1),
            &json!({"user": "megan.bowen@contoso.com", "sku": "NOPE"}),
        )
        .await
    {
        Err(OpError::Terminal { message, .. }) => assert!(
            message.contains("input `sku`") && message.contains("SPB"),
            "{message}"
        ),
        other => bail!("expected a bad sku, got {other:?}"),
    }
    let (_, rb) = w
        .round_trip(
            "contoso",
            "unlicense",
            "license.remove",
            json!({"user": "adele.vance@contoso.com", "sku": "SPB"}),
            1,
        )
        .await?;
    assert_eq!(inverse_of(&rb).0, "license.restore");

    // Security group (Graph), distribution list (Exchange), Microsoft 365 group (Graph).
    let (out, rb) = w
        .round_trip(
            "contoso",
            "join_sec",
            "group.add_member",
            json!({"user": "megan.bowen@contoso.com", "group": "Retail Team"}),
            1,
        )
        .await?;
    assert_eq!(out["via"], "graph");
    assert_eq!(inverse_of(&rb).0, "group.remove_member");
    let (out, _) = w
        .round_trip(
            "contoso",
            "join_dl",
            "group.add_member",
            json!({"user": "megan.bowen@contoso.com", "group": "Sales DL"}),
            1,
        )
        .await?;
    assert_eq!(out["via"], "exchange_online");
    assert_eq!(w.changes("join_dl").await?[0]["service"], "exchange_online");
    let (_, rb) = w
        .round_trip(
            "contoso",
            "leave_m365",
            "group.remove_member",
            json!({"user": "adele.vance@contoso.com", "group": "All Staff"}),
            1,
        )
        .await?;
    assert_eq!(inverse_of(&rb).0, "group.add_member");
    // A dynamic group is skipped, with the reason, not failed.
    let (out, rb) = w
        .ok(
            "group.add_member",
            &w.cx("contoso", "join_dynamic", Phase::Run, 1),
            &json!({"user": "megan.bowen@contoso.com", "group": "All Users (dynamic)"}),
        )
        .await?;
    assert_eq!(out["skipped"], true);
    assert!(
        out["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("dynamic"),
        "{out}"
    );
    assert_eq!(rb, Rollback::Nothing);
    // Copy memberships from a template: adele is in All Staff (Microsoft 365), Retail Team
    // (security) and Sales DL (distribution): two through Graph's $batch, one through Exchange.
    let (out, rb) = w
        .round_trip(
            "contoso",
            "copy",
            "group.copy_memberships",
            json!({"user": "info@contoso.com", "template": "adele.vance@contoso.com"}),
            3,
        )
        .await?;
    assert_eq!(out["added"].as_array().map(Vec::len), Some(3), "{out}");
    assert_eq!(inverse_of(&rb).0, "group.remove_memberships");
    let (groups, _) = w
        .ok(
            "group.list_memberships",
            &w.cx("contoso", "list", Phase::Run, 1),
            &json!({"user": "adele.vance@contoso.com"}),
        )
        .await?;
    assert!(
        groups["groups"].as_array().is_some_and(|g| g.len() >= 2),
        "{groups}"
    );
    w.check(true).await
}

#[tokio::test]
async fn security_and_device_ops_round_trip() -> Result<()> {
    let w = World::new().await?;
    let (_, rb) = w
        .round_trip(
            "contoso",
            "revoke",
            "user.revoke_sessions",
            json!({"user": "adele.vance@contoso.com"}),
            1,
        )
        .await?;
    assert!(matches!(rb, Rollback::Irreversible { .. }));
    let (out, rb) = w
        .round_trip(
            "contoso",
            "reset",
            "user.reset_password",
            json!({"user": "adele.vance@contoso.com", "password_ref": "generate"}),
            1,
        )
        .await?;
    assert_eq!(out["delivery"]["kind"], "one_time_secret");
    assert!(matches!(rb, Rollback::Irreversible { .. }));
    let (out, rb) = w
        .round_trip(
            "contoso",
            "mfa",
            "mfa.remove_methods",
            json!({"user": "adele.vance@contoso.com"}),
            2,
        )
        .await?;
    assert_eq!(out["removed"].as_array().map(Vec::len), Some(2), "{out}");
    match rb {
        Rollback::Irreversible { prior, .. } => assert_eq!(
            prior["methods"].as_array().map(Vec::len),
            Some(3),
            "{prior}"
        ),
        other => bail!("{other:?}"),
    }
    let (out, rb) = w
        .round_trip(
            "contoso",
            "role",
            "role.assign",
            json!({"user": "adele.vance@contoso.com", "role": "User Administrator"}),
            1,
        )
        .await?;
    assert_eq!(out["role"], "User Administrator");
    assert_eq!(inverse_of(&rb).0, "role.remove");
    w.round_trip(
        "contoso",
        "unrole",
        "role.remove",
        json!({"user": "megan.bowen@contoso.com", "role": "User Administrator"}),
        1,
    )
    .await?;
    let (devices, _) = w
        .ok(
            "device.list",
            &w.cx("contoso", "devices", Phase::Run, 1),
            &json!({"user": "adele.vance@contoso.com"}),
        )
        .await?;
    let device = devices["devices"][0]["id"]
        .as_str()
        .context("a device")?
        .to_owned();
    w.round_trip(
        "contoso",
        "retire",
        "device.retire",
        json!({"device": device}),
        1,
    )
    .await?;
    admin(&w.sb, "POST", "/reset", None).await?;
    w.round_trip(
        "contoso",
        "wipe",
        "device.wipe",
        json!({"device": device}),
        1,
    )
    .await?;
    w.check(true).await
}

#[tokio::test]
async fn mailbox_ops_round_trip() -> Result<()> {
    let w = World::new().await?;
    let adele = "adele.vance@contoso.com";
    let (_, rb) = w
        .round_trip(
            "contoso",
            "shared",
            "mailbox.convert_to_shared",
            json!({"user": adele}),
            1,
        )
        .await?;
    assert_eq!(
        inverse_of(&rb),
        (
            "mailbox.restore_settings",
            &json!({"user": adele, "settings": {"Type": "Regular"}})
        )
    );
    w.round_trip(
        "contoso",
        "forward",
        "mailbox.set_forwarding",
        json!({"user": adele, "to": "megan.bowen@contoso.com", "keep_copy": true}),
        1,
    )
    .await?;
    w.round_trip(
        "contoso",
        "forward_out",
        "mailbox.set_forwarding",
        json!({"user": "megan.bowen@contoso.com", "to": "someone@example.org"}),
        1,
    )
    .await?;
    w.round_trip(
        "contoso",
        "unforward",
        "mailbox.clear_forwarding",
        json!({"user": "megan.bowen@contoso.com"}),
        0,
    )
    .await?;
    for (i, rights) in ["full_access", "send_as", "send_on_behalf"]
        .iter()
        .enumerate()
    {
        let (_, rb) = w
            .round_trip(
                "contoso",
                &format!("grant{i}"),
                "mailbox.grant_access",
                json!({"mailbox": "info@contoso.com", "trustee": "megan.bowen@contoso.com", "rights": rights}),
                1,
            )
            .await?;
        assert_eq!(inverse_of(&rb).0, "mailbox.revoke_access");
    }
    w.round_trip(
        "contoso",
        "hide",
        "mailbox.hide_from_gal",
        json!({"user": adele}),
        1,
    )
    .await?;
    let (_, rb) = w
        .round_trip(
            "contoso",
            "ooo",
            "mailbox.set_auto_reply",
            json!({"user": adele, "message": "Adele has left; please write to Megan."}),
            1,
        )
        .await?;
    assert_eq!(inverse_of(&rb).0, "mailbox.restore_auto_reply");
    let (out, rb) = w
        .round_trip(
            "contoso",
            "phones",
            "mobile_device.remove",
            json!({"user": adele}),
            1,
        )
        .await?;
    assert_eq!(out["removed"].as_array().map(Vec::len), Some(1), "{out}");
    assert!(matches!(rb, Rollback::Irreversible { .. }));
    w.check(false).await
}

/// Faults: a 429 with a short Retry-After is waited out; a long one makes the step pending
/// (no attempt used); 503 is retried; a reset after the change was applied is retried by the
/// next attempt without applying it twice, and the rollback still knows it was this step's
/// change; an expired token is replaced; a revoked delegated token is terminal with its code.
#[tokio::test]
async fn faults_do_not_apply_changes_twice() -> Result<()> {
    let w = World::new().await?;
    let sb = &w.sb;
    let megan_id = w
        .ok(
            "user.get",
            &w.cx("contoso", "get", Phase::Run, 1),
            &json!({"user": "megan.bowen@contoso.com"}),
        )
        .await?
        .0["id"]
        .as_str()
        .context("id")?
        .to_owned();

    fault(
        sb,
        json!({"method": "POST", "path": format!("/graph/v1.0/users/{megan_id}/assignLicense"),
                     "sequence": [{"status": 429, "retry_after": 1}]}),
    )
    .await?;
    w.ok(
        "license.assign",
        &w.cx("contoso", "assign", Phase::Run, 1),
        &json!({"user": "megan.bowen@contoso.com", "sku": "O365_BUSINESS_ESSENTIALS"}),
    )
    .await?;
    assert_eq!(w.changes("assign").await?.len(), 1);

    fault(
        sb,
        json!({"method": "PATCH", "path": "/graph/v1.0/users/*",
                     "sequence": [{"status": 429, "retry_after": 120}]}),
    )
    .await?;
    match w
        .op(
            "user.disable",
            &w.cx("contoso", "disable", Phase::Run, 1),
            &json!({"user": "adele.vance@contoso.com"}),
        )
        .await
    {
        Ok(OpOutcome::Pending { check_after, note }) => {
            assert_eq!(check_after, std::time::Duration::from_secs(120));
            assert!(note.unwrap_or_default().contains("throttling"));
        }
        other => bail!("expected pending, got {other:?}"),
    }
    assert!(w.changes("disable").await?.is_empty());

    let fresh = World::new().await?;
    let w = fresh;
    let sb = &w.sb;
    fault(
        sb,
        json!({"method": "PATCH", "path": "/graph/v1.0/users/*",
                     "sequence": [{"status": 503, "retry_after": 1}]}),
    )
    .await?;
    w.ok(
        "user.disable",
        &w.cx("contoso", "disable", Phase::Run, 1),
        &json!({"user": "adele.vance@contoso.com"}),
    )
    .await?;
    assert_eq!(w.changes("disable").await?.len(), 1);

    // Reset after the change: attempt 1 fails retryably, attempt 2 finds it made.
    fault(
        sb,
        json!({"method": "POST", "path": "/graph/v1.0/groups/*/members/$ref",
                     "sequence": [{"reset_after": true}]}),
    )
    .await?;
    let input = json!({"user": "megan.bowen@contoso.com", "group": "Retail Team"});
    match w
        .op(
            "group.add_member",
            &w.cx("contoso", "join", Phase::Run, 1),
            &input,
        )
        .await
    {
        Err(OpError::Retryable { .. }) => {}
        other => bail!("expected a retryable failure, got {other:?}"),
    }
    assert_eq!(w.changes("join").await?.len(), 1, "applied once");
    let (_, rb) = w
        .ok(
            "group.add_member",
            &w.cx("contoso", "join", Phase::Run, 2),
            &input,
        )
        .await?;
    assert_eq!(
        inverse_of(&rb).0,
        "group.remove_member",
        "the step knows the change was its own"
    );
    assert_eq!(w.changes("join").await?.len(), 1, "not applied twice");

    fault(
        sb,
        json!({"method": "POST", "path": "/graph/v1.0/users", "sequence": [{"reset_after": true}]}),
    )
    .await?;
    let input =
        json!({"user_principal_name": "reset.case@contoso.com", "display_name": "Reset Case"});
    assert!(matches!(
        w.op(
            "user.create",
            &w.cx("contoso", "create", Phase::Run, 1),
            &input
        )
        .await,
        Err(OpError::Retryable { .. })
    ));
    let (out, rb) = w
        .ok(
            "user.create",
            &w.cx("contoso", "create", Phase::Run, 2),
            &input,
        )
        .await?;
    assert_eq!(out["user_principal_name"], "reset.case@contoso.com");
    assert_eq!(inverse_of(&rb).0, "user.delete");
    assert_eq!(w.changes("create").await?.len(), 1);
    assert_eq!(
        w.sink.len(),
        1,
        "one password, the one the user was created with"
    );

    // Expired access token: the clock moves two hours; the op gets a new token and goes on.
    advance(sb, 2 * 3600).await?;
    w.ok(
        "user.enable",
        &w.cx("contoso", "enable", Phase::Run, 1),
        &json!({"user": "adele.vance@contoso.com"}),
    )
    .await?;
    assert_eq!(w.changes("enable").await?.len(), 1);

    // Revoked delegated token: a synced user's password reset needs it; the step waits for the
    // tenant's new consent, saying why (no attempt used up).
    admin(sb, "POST", "/tokens/revoke", Some(json!({}))).await?;
    let synced = w
        .op(
            "user.reset_password",
            &w.cx("fabrikam", "reset", Phase::Run, 1),
            &json!({"user": "bob.smith@fabrikam.com"}),
        )
        .await;
    match synced {
        Ok(OpOutcome::Pending {
            note: Some(note), ..
        }) => {
            assert!(note.contains("AADSTS50173"), "{note}");
            assert!(note.contains("steward tenants connect fabrikam"), "{note}");
        }
        other => bail!("expected the step to wait for consent, got {other:?}"),
    }
    // A company without a connection.
    match w
        .op(
            "user.get",
            &w.cx("tailspin", "get", Phase::Run, 1),
            &json!({"user": "x@y.com"}),
        )
        .await
    {
        Err(OpError::Terminal { message, .. }) => assert!(
            message.contains("steward tenants connect tailspin"),
            "{message}"
        ),
        other => bail!("expected not connected, got {other:?}"),
    }
    w.check(true).await
}

/// The CSDL checker itself refuses invented properties, missing required parameters, absolute
/// batch URLs, batch bodies without a content type, and requests it has no rule for.
#[test]
fn the_csdl_checker_catches_what_graph_would_refuse() -> Result<()> {
    let csdl = csdl::Csdl::load()?;
    csdl.check(
        "PATCH",
        "/users/x",
        &json!({"jobTitle": "a", "usageLocation": "GB"}),
    )?;
    assert!(
        csdl.check("PATCH", "/users/x", &json!({"favouriteColour": "blue"}))
            .is_err()
    );
    assert!(
        csdl.check(
            "POST",
            "/users",
            &json!({"passwordProfile": {"pasword": "x"}})
        )
        .is_err(),
        "complex types are checked too"
    );
    assert!(
        csdl.check(
            "POST",
            "/users/x/assignLicense",
            &json!({"addLicenses": []})
        )
        .is_err()
    );
    assert!(
        csdl.check(
            "POST",
            "/$batch",
            &json!({"requests": [{"id": "1", "method": "PATCH", "url": "https://graph.microsoft.com/v1.0/users/x", "body": {}}]})
        )
        .is_err()
    );
    assert!(
        csdl.check(
            "POST",
            "/$batch",
            &json!({"requests": [{"id": "1", "method": "PATCH", "url": "/users/x", "body": {"jobTitle": "a"}}]})
        )
        .is_err()
    );
    assert!(
        csdl.check("POST", "/users/x/somethingNew", &json!({}))
            .is_err()
    );
    Ok(())
}

/// Offboarding's device options: every Intune device of the leaver retired, or wiped, in one
/// step (`GET /users/{id}/managedDevices`, then `POST …/managedDevices/{id}/retire` or `/wipe`
/// for each), once however often the step runs; a user with no device: nothing sent.
#[tokio::test]
async fn a_leavers_devices_are_retired_or_wiped_all_at_once() -> Result<()> {
    let w = World::new().await?;
    let adele = "adele.vance@contoso.com";
    let list = |step: &'static str| {
        let w = &w;
        async move {
            let (v, _) = w
                .ok(
                    "device.list",
                    &w.cx("contoso", step, Phase::Run, 1),
                    &json!({"user": adele}),
                )
                .await?;
            anyhow::Ok(v["devices"].as_array().cloned().unwrap_or_default())
        }
    };
    let before = list("list1").await?;
    assert!(
        !before.is_empty() && before.iter().all(|d| d["management_state"] == "managed"),
        "{before:?}"
    );
    let (out, rb) = w
        .round_trip(
            "contoso",
            "retire_all",
            "device.retire_all",
            json!({"user": adele}),
            before.len(),
        )
        .await?;
    assert_eq!(
        out["devices"].as_array().map(Vec::len),
        Some(before.len()),
        "{out}"
    );
    assert!(matches!(rb, Rollback::Irreversible { .. }), "{rb:?}");
    let after = list("list2").await?;
    assert!(
        after
            .iter()
            .all(|d| d["management_state"] == "retirePending"),
        "{after:?}"
    );
    admin(&w.sb, "POST", "/reset", None).await?;
    w.round_trip(
        "contoso",
        "wipe_all",
        "device.wipe_all",
        json!({"user": adele}),
        before.len(),
    )
    .await?;
    let wiped = list("list3").await?;
    assert!(
        wiped.iter().all(|d| d["management_state"] == "wipePending"),
        "{wiped:?}"
    );
    // Megan has no managed device: nothing to send, and the step succeeds.
    let (out, _) = w
        .round_trip(
            "contoso",
            "none",
            "device.retire_all",
            json!({"user": "megan.bowen@contoso.com"}),
            0,
        )
        .await?;
    assert_eq!(out["devices"], json!([]), "{out}");
    w.check(true).await
}
