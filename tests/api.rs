//! The HTTP API: authorisation, approval gates, signed links, policy, companies and errors.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use steward_tests::api::{ApiEnv, send};
use steward_tests::wait_for;

const T: Duration = Duration::from_secs(30);

fn workflows() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/workflows"
    ))
}

async fn start(api: &ApiEnv, who: &str, workflow: &str, inputs: Value) -> Result<String> {
    let (status, body) = api.post(who, "/v1/runs", json!({"workflow": workflow, "company": "contoso", "inputs": inputs, "ticket": {"psa": "autotask", "id": "T1001", "title": "<script>alert(1)</script> leaver"}})).await?;
    anyhow::ensure!(status == 201, "start {workflow}: {status} {body}");
    Ok(body["run"].as_str().context("run id")?.to_owned())
}

async fn status_of(api: &ApiEnv, run: &str) -> Result<Value> {
    let (s, body) = api.get("admin", &format!("/v1/runs/{run}")).await?;
    anyhow::ensure!(s == 200, "{s} {body}");
    Ok(body)
}

async fn wait_status(api: &ApiEnv, run: &str, want: &str) -> Result<Value> {
    wait_for(&format!("run {run} to be {want}"), T, || async {
        let body = status_of(api, run).await?;
        Ok((body["summary"]["status"] == want).then_some(body))
    })
    .await
}

async fn wait_gate(api: &ApiEnv, run: &str, gate: &str) -> Result<Value> {
    wait_for("the gate to open", T, || async {
        let (s, body) = api
            .get("admin", &format!("/v1/approvals/{run}/{gate}"))
            .await?;
        Ok((s == 200 && body["state"] == "awaiting_approval").then_some(body))
    })
    .await
}

/// Makes contoso's approvers `approvers`.
async fn set_approvers(api: &ApiEnv, approvers: &[&str]) -> Result<()> {
    let (s, mut record) = api.get("admin", "/v1/companies/contoso").await?;
    anyhow::ensure!(s == 200, "{s} {record}");
    record["company"]["approvers"] = json!(approvers);
    let (s, body) = send(
        api.req("admin", reqwest::Method::PUT, "/v1/companies/contoso")
            .json(&record["company"]),
    )
    .await?;
    anyhow::ensure!(s == 200, "{s} {body}");
    Ok(())
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// An error's message (empty if there is none).
fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

/// `who` decides `run`'s gate `gate` (`decision`: `{"decision": …, "comment": …}`): (status, body).
async fn decide(
    api: &ApiEnv,
    who: &str,
    run: &str,
    gate: &str,
    decision: Value,
) -> Result<(u16, Value)> {
    api.post(who, &format!("/v1/approvals/{run}/{gate}"), decision)
        .await
}

/// `who` approves `run`'s gate `approval`: (status, body).
async fn approve(api: &ApiEnv, who: &str, run: &str) -> Result<(u16, Value)> {
    decide(api, who, run, "approval", json!({"decision": "approve"})).await
}

/// `who` asks for signed links to decide `run`'s gate `approval` (`body`: for whom): (status,
/// body).
async fn ask_links(api: &ApiEnv, who: &str, run: &str, body: Value) -> Result<(u16, Value)> {
    api.post(who, &format!("/v1/approvals/{run}/approval/links"), body)
        .await
}

/// Adds a technician of contoso (approvers must be technicians).
async fn add_technician(api: &ApiEnv, email: &str) -> Result<String> {
    let (s, body) = api
        .post(
            "admin",
            "/v1/technicians",
            json!({"email": email, "name": email, "role": "technician", "companies": ["contoso"]}),
        )
        .await?;
    anyhow::ensure!(s == 201, "{s} {body}");
    Ok(body["id"].as_str().context("id")?.to_owned())
}

/// Disables (or enables) the technician with this email.
async fn set_disabled(api: &ApiEnv, email: &str, disabled: bool) -> Result<()> {
    let auth = steward_engine::auth::Auth::for_store(&api.env.store);
    let tech = auth
        .technician_by_email(email)
        .await?
        .context("no such technician")?;
    let (s, body) = send(
        api.req(
            "admin",
            reqwest::Method::PATCH,
            &format!("/v1/technicians/{}", tech.id),
        )
        .json(&json!({ "disabled": disabled })),
    )
    .await?;
    anyhow::ensure!(s == 200, "{s} {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_do_what() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let run = start(&api, "tech", "simple", json!({})).await?;

    let (s, body) = api.get("", "/v1/runs").await?;
    assert_eq!((s, code(&body)), (401, "unauthorized"), "no token: {body}");
    let (s, _) = send(
        api.http
            .get(format!("{}/v1/runs", api.base))
            .bearer_auth("stw_not-a-real-token"),
    )
    .await?;
    assert_eq!(s, 401, "an unknown token");
    let (s, _) = send(
        api.http
            .get(format!("{}/v1/runs", api.base))
            .header("authorization", "Basic abc"),
    )
    .await?;
    assert_eq!(s, 401, "not a bearer token");

    // Another company's technician sees none of contoso's runs.
    let (s, body) = api.get("outsider", &format!("/v1/runs/{run}")).await?;
    assert_eq!((s, code(&body)), (403, "forbidden"), "{body}");
    assert!(message(&body).contains("may not act on this company"));
    let (s, body) = api.get("outsider", "/v1/runs").await?;
    assert_eq!(s, 200);
    assert_eq!(body["runs"].as_array().unwrap().len(), 0, "{body}");
    let (s, body) = api.get("tech", "/v1/runs?company=contoso").await?;
    assert_eq!((s, body["runs"].as_array().map(Vec::len)), (200, Some(1)));
    let (s, _) = api
        .post(
            "outsider",
            "/v1/runs",
            json!({"workflow": "simple", "company": "contoso"}),
        )
        .await?;
    assert_eq!(s, 403);

    // Technicians may not administer.
    let (s, body) = api.post("tech", "/v1/companies", json!({})).await?;
    assert_eq!((s, code(&body)), (403, "forbidden"), "{body}");
    let (s, _) = api
        .post(
            "tech",
            "/v1/technicians",
            json!({"email": "x@msp.example", "name": "x", "role": "admin", "companies": "all"}),
        )
        .await?;
    assert_eq!(s, 403, "a technician cannot make an admin");
    let (s, _) = api.get("tech", "/v1/technicians").await?;
    assert_eq!(s, 403);

    // A revoked token and a disabled technician are refused.
    let (s, me) = api.get("tech", "/v1/technicians/me").await?;
    assert_eq!(s, 200);
    let id = me["id"].as_str().unwrap();
    let (s, made) = api
        .post(
            "tech",
            &format!("/v1/technicians/{id}/tokens"),
            json!({"name": "laptop"}),
        )
        .await?;
    assert_eq!(s, 201, "a technician makes their own token: {made}");
    let laptop = made["token"].as_str().unwrap().to_owned();
    let (s, _) = send(
        api.http
            .get(format!("{}/v1/technicians/me", api.base))
            .bearer_auth(&laptop),
    )
    .await?;
    assert_eq!(s, 200);
    let (s, _) = send(api.req(
        "tech",
        reqwest::Method::DELETE,
        &format!("/v1/tokens/{}", made["info"]["id"].as_str().unwrap()),
    ))
    .await?;
    assert_eq!(s, 204);
    let (s, body) = send(
        api.http
            .get(format!("{}/v1/technicians/me", api.base))
            .bearer_auth(&laptop),
    )
    .await?;
    assert_eq!(s, 401, "revoked: {body}");
    assert!(message(&body).contains("revoked"));
    let (s, _) = send(api.req(
        "outsider",
        reqwest::Method::DELETE,
        &format!("/v1/tokens/{}", made["info"]["id"].as_str().unwrap()),
    ))
    .await?;
    assert_eq!(s, 403, "nobody revokes someone else's token but an admin");
    let (s, _) = send(
        api.req(
            "admin",
            reqwest::Method::PATCH,
            &format!("/v1/technicians/{id}"),
        )
        .json(&json!({"disabled": true})),
    )
    .await?;
    assert_eq!(s, 200);
    let (s, _) = api.get("tech", "/v1/runs").await?;
    assert_eq!(s, 401, "a disabled technician's token stops working");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_needs_two_other_approvers() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    // alice asks; alice cannot approve her own request, so the quorum of 2 needs bob and carol.
    add_technician(&api, "carol@msp.example").await?;
    set_approvers(
        &api,
        &["alice@msp.example", "bob@msp.example", "carol@msp.example"],
    )
    .await?;
    let run = start(
        &api,
        "alice",
        "gated",
        json!({"user": "jane", "password": "hunter2"}),
    )
    .await?;
    let gate = wait_gate(&api, &run, "approval").await?;
    assert_eq!(gate["quorum"], 2);
    assert_eq!(
        gate["approvers"],
        json!(["alice@msp.example", "bob@msp.example", "carol@msp.example"])
    );
    assert_eq!(gate["ticket"]["id"], "T1001");
    assert_eq!(
        gate["message"], "Delete jane's mailbox?",
        "the gate's message is a template, filled in from the run"
    );
    let unlocked = &gate["unlocks"][0];
    assert_eq!(unlocked["step"], "apply");
    assert_eq!(unlocked["params"]["key"], "apply:jane");
    assert_eq!(
        unlocked["params"]["value"], "[secret]",
        "secret inputs never reach approvers"
    );

    let (s, inbox) = api.get("bob", "/v1/approvals").await?;
    assert_eq!(s, 200);
    assert_eq!(
        inbox["approvals"][0]["reference"],
        format!("{run}/approval")
    );
    assert_eq!(inbox["approvals"][0]["message"], "Delete jane's mailbox?");
    let (s, view) = api.get("alice", &format!("/v1/runs/{run}")).await?;
    assert_eq!(s, 200);
    assert_eq!(
        view["plan"][2]["description"], "apply the change for jane",
        "step descriptions are filled in from the run: {view}"
    );
    let (_, offered) = api.get("alice", "/v1/workflows").await?;
    let gated = offered
        .as_array()
        .and_then(|all| all.iter().find(|w| w["name"] == "gated"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        gated["steps"][2]["description"], "apply the change for ${{ inputs.user }}",
        "without a run, as written"
    );
    let (s, empty) = api.get("tech", "/v1/approvals").await?;
    assert_eq!((s, &empty["approvals"]), (200, &json!([])));

    let vote = |who: &'static str, decision: &'static str| {
        decide(
            &api,
            who,
            &run,
            "approval",
            json!({"decision": decision, "comment": "ok"}),
        )
    };
    let (s, body) = vote("alice", "approve").await?;
    assert_eq!(
        (s, code(&body)),
        (403, "forbidden"),
        "self-approval: {body}"
    );
    assert!(message(&body).contains("asked for this run"));
    let (s, body) = vote("tech", "approve").await?;
    assert_eq!(s, 403, "not an approver: {body}");
    let (s, body) = decide(&api, "bob", &run, "approval", json!({"decision": "maybe"})).await?;
    assert_eq!(
        (s, body["error"]["field"].as_str()),
        (422, Some("decision")),
        "{body}"
    );

    // Quorum 2 with alice unable to vote: bob alone is not enough.
    let (s, body) = vote("bob", "approve").await?;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["gate"]["state"], "awaiting_approval");
    assert_eq!(body["gate"]["approvals"].as_array().unwrap().len(), 1);
    let (s, again) = vote("bob", "approve").await?;
    assert_eq!(
        (s, again["gate"]["approvals"].as_array().unwrap().len()),
        (200, 1),
        "a repeated decision changes nothing"
    );

    // The admin approves through the API? Not an approver either.
    let (s, _) = vote("admin", "approve").await?;
    assert_eq!(s, 403);

    // bob rejects after approving: the run ends and `prepare` is undone.
    let (s, body) = vote("bob", "reject").await?;
    assert_eq!(s, 200, "{body}");
    let done = wait_status(&api, &run, "rolled_back").await?;
    assert_eq!(
        done["summary"]["status_detail"]["cause"]["kind"],
        "rejected"
    );
    assert_eq!(
        done["summary"]["status_detail"]["cause"]["by"],
        "bob@msp.example"
    );
    let history = serde_json::to_string(&done["history"])?;
    assert!(history.contains("approval_decided") && !history.contains("hunter2"));
    let ledger = api.env.ledger().await?;
    assert_eq!(ledger.undone.len(), 1, "{ledger:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_two_lets_the_run_go_on() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let run = start(&api, "tech", "gated", json!({"user": "jane"})).await?;
    wait_gate(&api, &run, "approval").await?;
    for who in ["alice", "bob"] {
        let (s, body) = approve(&api, who, &run).await?;
        assert_eq!(s, 200, "{body}");
    }
    let done = wait_status(&api, &run, "completed").await?;
    let approval = done["run"]["state"]["steps"]["approval"].clone();
    assert_eq!(
        approval["output"]["approved_by"],
        json!(["alice@msp.example", "bob@msp.example"])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_gate_escalates_to_the_next_approvers() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let run = start(&api, "tech", "expiring", json!({})).await?;
    let escalated = wait_for("the gate to escalate", T, || async {
        let (s, g) = api
            .get("admin", &format!("/v1/approvals/{run}/approval"))
            .await?;
        anyhow::ensure!(s == 200, "{s} {g}");
        Ok((g["stage"] == 1).then_some(g))
    })
    .await?;
    assert_eq!(escalated["approvers"], json!(["admin@msp.example"]));
    let (s, _) = approve(&api, "alice", &run).await?;
    assert_eq!(s, 403, "the first approvers no longer decide");
    let (s, inbox) = api.get("admin", "/v1/approvals").await?;
    assert_eq!(
        (s, &inbox["approvals"][0]["gate"]),
        (200, &json!("approval"))
    );
    let (s, body) = approve(&api, "admin", &run).await?;
    assert_eq!(s, 200, "{body}");
    wait_status(&api, &run, "completed").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_links_work_once_and_only_as_issued() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let run = start(&api, "tech", "gated", json!({"user": "jane"})).await?;
    wait_gate(&api, &run, "approval").await?;
    let (s, links) = ask_links(&api, "alice", &run, json!({})).await?;
    assert_eq!(s, 200, "{links}");
    let approve = links["approve_url"].as_str().unwrap().to_owned();
    let (s, _) = ask_links(&api, "alice", &run, json!({"approver": "bob@msp.example"})).await?;
    assert_eq!(s, 403, "only admins make links for others");

    // Opening a link records nothing; the page escapes the ticket's text.
    let (s, view) = send(api.http.get(&approve).header("accept", "application/json")).await?;
    assert_eq!(
        (s, &view["recorded"], &view["decision"]),
        (200, &json!(false), &json!("approve")),
        "{view}"
    );
    let html = api
        .http
        .get(&approve)
        .header("accept", "text/html")
        .send()
        .await?
        .text()
        .await?;
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !html.contains("<script>"),
        "{html}"
    );
    assert!(
        html.contains("<p>Delete jane&#39;s mailbox?</p>"),
        "the gate's message is filled in on the link page: {html}"
    );
    let (s, used) = send(api.http.post(&approve).header("accept", "application/json")).await?;
    assert_eq!((s, &used["recorded"]), (200, &json!(true)), "{used}");
    assert_eq!(used["gate"]["approvals"][0]["via"], "link");
    let (s, body) = send(api.http.post(&approve)).await?;
    assert_eq!((s, code(&body)), (410, "gone"), "a used link: {body}");

    // A forged link (the decision flipped), another installation's, and an expired one.
    let token = approve.rsplit('/').next().unwrap();
    let (payload, sig) = token.split_once('.').unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claim: Value = serde_json::from_slice(&b64.decode(payload)?)?;
    claim["approve"] = json!(false);
    claim["nonce"] = json!("fresh");
    let forged = format!("{}.{sig}", b64.encode(serde_json::to_vec(&claim)?));
    let (s, body) = send(api.http.post(format!("{}/v1/links/{forged}", api.base))).await?;
    assert_eq!((s, code(&body)), (403, "forbidden"), "{body}");
    let foreign = steward_engine::links::LinkSigner::new(vec![9; 32])
        .unwrap()
        .sign(&serde_json::from_value(claim.clone())?);
    let (s, _) = send(api.http.post(format!("{}/v1/links/{foreign}", api.base))).await?;
    assert_eq!(s, 403, "signed by another installation");
    let key: String = api
        .env
        .store
        .db()
        .query(
            redis::cmd("HGET")
                .arg(api.env.store.keys().meta())
                .arg("link-key"),
        )
        .await?;
    let ours = steward_engine::links::LinkSigner::new(
        steward_engine::links::LinkSigner::decode_key(&key).unwrap(),
    )
    .unwrap();
    claim["exp"] = json!(1_000);
    let expired = ours.sign(&serde_json::from_value(claim.clone())?);
    let (s, body) = send(api.http.get(format!("{}/v1/links/{expired}", api.base))).await?;
    assert_eq!((s, code(&body)), (410, "gone"), "{body}");
    let (s, _) = send(api.http.get(format!("{}/v1/links/not-a-link", api.base))).await?;
    assert_eq!(s, 400);

    // bob approves by link; a link for the decided gate is refused.
    let (s, bob_links) = ask_links(&api, "bob", &run, json!({})).await?;
    assert_eq!(s, 200, "{bob_links}");
    let (s, bob_spare) = ask_links(&api, "bob", &run, json!({})).await?;
    assert_eq!(s, 200, "{bob_spare}");
    let (s, _) = send(api.http.post(bob_links["approve_url"].as_str().unwrap())).await?;
    assert_eq!(s, 200);
    wait_status(&api, &run, "completed").await?;
    let (s, body) = send(api.http.post(bob_spare["reject_url"].as_str().unwrap())).await?;
    assert_eq!((s, code(&body)), (409, "conflict"), "{body}");
    // Reusing the link after the gate closed says why: the link, not the gate.
    let (s, body) = send(api.http.post(bob_links["approve_url"].as_str().unwrap())).await?;
    assert_eq!((s, code(&body)), (410, "gone"), "{body}");
    assert!(message(&body).contains("already been used"), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_refuses_gates_or_pauses() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let company = |profile: &str| {
        json!({
            "id": "contoso", "name": "contoso (sample)", "tenant_id": "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10",
            "identity_provider": "entra_id", "mailbox_provider": "exchange_online",
            "approvers": ["alice@msp.example", "bob@msp.example"],
            "permissions": {"profile": profile}, "defaults": {"usage_location": "GB", "upn_domain": "example.com"}
        })
    };
    let put = |profile: &'static str| {
        let api = &api;
        let body = company(profile);
        async move {
            send(
                api.req("admin", reqwest::Method::PUT, "/v1/companies/contoso")
                    .json(&body),
            )
            .await
        }
    };

    // Helpdesk: directory roles are disabled, so the plan is refused, naming everything.
    let (s, body) = put("helpdesk").await?;
    assert_eq!(s, 200, "{body}");
    let (s, body) = api.post("tech", "/v1/runs", json!({"workflow": "privileged", "company": "contoso", "inputs": {"user": "jane@example.com"}})).await?;
    assert_eq!((s, code(&body)), (422, "policy_refused"), "{body}");
    assert_eq!(
        body["error"]["details"][0],
        json!({"step": "make_admin", "op": "role.assign", "group": "directory_roles", "company": "contoso", "reason": "the `directory_roles` permission group is disabled for company `contoso`; an admin can enable it in the company's permissions"})
    );

    // IT admin: allowed, but role assignment always needs approval: the policy inserts a gate.
    let (s, body) = put("it_admin").await?;
    assert_eq!(s, 200, "{body}");
    let (s, body) = api.post("tech", "/v1/runs", json!({"workflow": "privileged", "company": "contoso", "inputs": {"user": "jane@example.com"}})).await?;
    assert_eq!(s, 201, "{body}");
    let run = body["run"].as_str().unwrap().to_owned();
    let gate = wait_gate(&api, &run, "policy_approval").await?;
    assert!(
        gate["message"]
            .as_str()
            .unwrap()
            .contains("make_admin (`role.assign` always needs approval)"),
        "{gate}"
    );
    // The approver sees the routed plan `steward plan` shows.
    assert_eq!(gate["unlocks"][0]["system"], "graph");
    assert_eq!(
        gate["unlocks"][0]["actions"][0]["system"], "graph",
        "{gate}"
    );
    assert_eq!(
        gate["unlocks"][0]["params"]["user"], "${{ steps.create.output.id }}",
        "not known yet, shown as written"
    );
    let (s, body) = decide(
        &api,
        "alice",
        &run,
        "policy_approval",
        json!({"decision": "reject", "comment": "no"}),
    )
    .await?;
    assert_eq!(s, 200, "{body}");
    wait_status(&api, &run, "rolled_back").await?;

    // A policy changed while a run waits at a gate pauses the next step instead of running it.
    let (s, body) = put("full_automation").await?;
    assert_eq!(s, 200, "{body}");
    let run = start(&api, "tech", "gated", json!({"user": "jane"})).await?;
    wait_gate(&api, &run, "approval").await?;
    let (s, body) = put("read_only").await?;
    assert_eq!(s, 200, "{body}");
    for who in ["alice", "bob"] {
        let (s, body) = approve(&api, who, &run).await?;
        assert_eq!(s, 200, "{who}: {body}");
    }
    let paused = wait_status(&api, &run, "paused").await?;
    assert_eq!(
        paused["summary"]["status_detail"]["reason"]["kind"],
        "policy_blocked"
    );
    assert!(
        paused["summary"]["status_detail"]["reason"]["reason"]
            .as_str()
            .unwrap()
            .contains("read-only for company `contoso`")
    );
    assert_eq!(
        api.env.ledger().await?.applied.len(),
        1,
        "the blocked step did not run"
    );
    let blocks = |body: &Value| {
        body["history"].as_array().map_or(0, |h| {
            h.iter()
                .filter(|e| e["event"]["type"] == "step_blocked")
                .count()
        })
    };
    assert_eq!(blocks(&paused), 1, "{paused}");
    // Resumed under the same policy, the step is dispatched again and blocked again: the run
    // did resume (it is not merely still paused from before).
    let (s, body) = api
        .post("tech", &format!("/v1/runs/{run}/resume"), json!({}))
        .await?;
    assert_eq!((s, &body["status"]), (200, &json!("running")), "{body}");
    let again = wait_for("the resumed step to be blocked again", T, || async {
        let body = status_of(&api, &run).await?;
        Ok((body["summary"]["status"] == "paused" && blocks(&body) == 2).then_some(body))
    })
    .await?;
    assert_eq!(
        again["summary"]["status_detail"]["reason"]["kind"],
        "policy_blocked"
    );
    assert_eq!(
        api.env.ledger().await?.applied.len(),
        1,
        "the blocked step still did not run"
    );
    let (s, body) = put("full_automation").await?;
    assert_eq!(s, 200, "{body}");
    let (s, body) = api
        .post("tech", &format!("/v1/runs/{run}/resume"), json!({}))
        .await?;
    assert_eq!(s, 200, "{body}");
    wait_status(&api, &run, "completed").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companies_import_all_or_nothing() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let csv = |body: &str| {
        api.req("admin", reqwest::Method::POST, "/v1/companies/import")
            .header("content-type", "text/csv")
            .body(body.to_owned())
    };
    let good = "id,name,tenant_id,identity_provider,mailbox_provider,approvers,permission_profile\n\
                fabrikam,Fabrikam,2c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f,entra_id,exchange_online,lead@msp.example,helpdesk\n\
                northwind,Northwind,3c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f,entra_id,exchange_online,,it_admin\n";
    // lead is not a technician yet: the row and the column say so, and nothing is imported.
    let (s, body) = send(csv(good)).await?;
    assert_eq!((s, code(&body)), (422, "validation_failed"), "{body}");
    assert_eq!(
        (
            &body["error"]["details"][0]["row"],
            &body["error"]["details"][0]["column"]
        ),
        (&json!(2), &json!("approvers")),
        "{body}"
    );
    assert!(
        body["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("`lead@msp.example` is not a technician"),
        "{body}"
    );
    let (s, list) = api.get("admin", "/v1/companies").await?;
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(1)), "{list}");
    add_technician(&api, "lead@msp.example").await?;
    let (s, report) = send(csv(good)).await?;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["created"], json!(["fabrikam", "northwind"]));
    let (s, again) = send(csv(good)).await?;
    assert_eq!(
        (s, &again["unchanged"]),
        (200, &json!(["fabrikam", "northwind"])),
        "re-importing changes nothing: {again}"
    );

    let hostile = "id,name,identity_provider,mailbox_provider,favourite_colour\n\
                   evil,=cmd|' /C calc'!A0,entra_id,exchange_online,red\n";
    let (s, body) = send(csv(hostile)).await?;
    assert_eq!((s, code(&body)), (422, "validation_failed"), "{body}");
    assert!(message(&body).contains("nothing was imported"));
    let bad = "id,name,identity_provider,mailbox_provider\nnewco,New Co,entra_cloud,exchange_online\nbadco,=HYPERLINK(\"x\"),entra_id,exchange_online\nnewco,Dup,entra_id,exchange_online\n";
    let (s, body) = send(csv(bad)).await?;
    assert_eq!(s, 422, "{body}");
    let rows: Vec<(u64, String)> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap_or(0),
                e["column"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        rows.contains(&(2, "identity_provider".to_owned())),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(3, "name".to_owned())),
        "formula injection: {rows:?}"
    );
    assert!(
        rows.iter().any(|(r, c)| *r == 4 && c == "id"),
        "duplicate id: {rows:?}"
    );
    let (s, list) = api.get("admin", "/v1/companies").await?;
    assert_eq!(s, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["company"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["contoso", "fabrikam", "northwind"],
        "nothing from the bad files was written"
    );

    let huge = format!(
        "id,name,identity_provider,mailbox_provider\n{}",
        "x,y,entra_id,exchange_online\n".repeat(400_000)
    );
    assert!(huge.len() > 10_000_000);
    let (s, body) = send(csv(&huge)).await?;
    assert_eq!((s, code(&body)), (413, "payload_too_large"), "{body}");
    let (s, _) = send(
        api.req("admin", reqwest::Method::POST, "/v1/companies/import")
            .header("content-type", "application/json")
            .body("{}"),
    )
    .await?;
    assert_eq!(s, 415);
    let (s, _) = send(
        api.req("tech", reqwest::Method::POST, "/v1/companies/import")
            .header("content-type", "text/csv")
            .body(good),
    )
    .await?;
    assert_eq!(s, 403, "only admins import");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let raw = |body: &str| {
        api.req("tech", reqwest::Method::POST, "/v1/runs")
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    let (s, body) = send(raw("{not json")).await?;
    assert_eq!((s, code(&body)), (400, "bad_request"), "{body}");
    let (s, body) = send(raw(
        r#"{"workflow": "simple", "company": "contoso", "colour": "red"}"#,
    ))
    .await?;
    assert_eq!(s, 422, "{body}");
    assert!(message(&body).contains("unknown field `colour`"), "{body}");
    let (s, body) = send(raw(r#"{"workflow": "simple", "company": "Contoso Ltd"}"#)).await?;
    assert_eq!(
        (s, body["error"]["field"].as_str()),
        (422, Some("company")),
        "{body}"
    );
    let (s, body) = send(raw(r#"{"workflow": "nope", "company": "contoso"}"#)).await?;
    assert_eq!(
        (s, body["error"]["field"].as_str()),
        (422, Some("workflow")),
        "{body}"
    );
    assert!(body["error"]["fix"].as_str().unwrap().contains("simple"));
    let (s, body) = send(raw(
        r#"{"workflow": "gated", "company": "contoso", "inputs": {"usr": "x"}}"#,
    ))
    .await?;
    assert_eq!(s, 422, "{body}");
    assert!(body.to_string().contains("inputs.user"), "{body}");
    let (s, body) = send(raw(&format!(
        r#"{{"workflow": "simple", "company": "contoso", "inputs": {{"x": "{}"}}}}"#,
        "a".repeat(2_000_000)
    )))
    .await?;
    assert_eq!((s, code(&body)), (413, "payload_too_large"), "{body}");
    let (s, body) = api.get("tech", "/v1/runs/run_nope").await?;
    assert_eq!(s, 400, "{body}");
    let (s, body) = api
        .get("tech", "/v1/runs/run_01ARZ3NDEKTSV4RRFFQ69G5FAV")
        .await?;
    assert_eq!((s, code(&body)), (404, "not_found"), "{body}");
    let (s, body) = api.get("tech", "/v1/nowhere").await?;
    assert_eq!((s, code(&body)), (404, "not_found"), "{body}");
    let (s, body) = send(api.req("tech", reqwest::Method::DELETE, "/v1/runs")).await?;
    assert_eq!((s, code(&body)), (405, "method_not_allowed"), "{body}");
    let (s, body) = api.get("tech", "/v1/runs?limit=0").await?;
    assert_eq!(
        (s, body["error"]["field"].as_str()),
        (422, Some("limit")),
        "{body}"
    );
    let (s, body) = api.get("tech", "/v1/runs?status=happy").await?;
    assert_eq!(s, 422, "{body}");
    let (s, _) = api.get("", "/healthz").await?;
    assert_eq!(s, 200);
    let (s, _) = api.get("", "/readyz").await?;
    assert_eq!(s, 200);
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("steward_http_requests_total{") && metrics.contains("steward_redis_up 1"),
        "{metrics}"
    );
    Ok(())
}

#[test]
fn the_checked_in_openapi_document_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/openapi.json");
    let fresh = steward_engine::api::openapi_json();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == fresh,
        "schemas/openapi.json is out of date; run `UPDATE_SCHEMAS=1 cargo test --test api` (or `steward schema`) and commit it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_filters_and_pages() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(start(&api, "tech", "simple", json!({})).await?);
    }
    let gated = start(&api, "tech", "gated", json!({"user": "x"})).await?;
    for r in &runs {
        wait_status(&api, r, "completed").await?;
    }
    wait_gate(&api, &gated, "approval").await?;
    let (s, page) = api.get("tech", "/v1/runs?limit=2").await?;
    assert_eq!((s, page["runs"].as_array().unwrap().len()), (200, 2));
    assert_eq!(page["runs"][0]["run"], gated, "newest first");
    let cursor = page["next_cursor"]
        .as_str()
        .context("a next page")?
        .to_owned();
    let (s, next) = api
        .get("tech", &format!("/v1/runs?limit=10&cursor={cursor}"))
        .await?;
    assert_eq!((s, next["runs"].as_array().unwrap().len()), (200, 4));
    assert!(next.get("next_cursor").is_none() || next["next_cursor"].is_null());
    let (s, waiting) = api.get("tech", "/v1/runs?status=running").await?;
    assert_eq!(s, 200, "{waiting}");
    assert_eq!(
        waiting["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run"].clone())
            .collect::<Vec<_>>(),
        vec![json!(gated)]
    );
    let (s, simple) = api
        .get("tech", "/v1/runs?workflow=simple&status=completed")
        .await?;
    assert_eq!((s, simple["runs"].as_array().unwrap().len()), (200, 5));
    Ok(())
}

/// Every page of a listing, following `next_cursor` to the end: the runs' ids in order.
async fn every_page(api: &ApiEnv, who: &str, query: &str) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..2_000 {
        let path = match &cursor {
            Some(c) => format!("/v1/runs?{query}&cursor={c}"),
            None => format!("/v1/runs?{query}"),
        };
        let (s, page) = api.get(who, &path).await?;
        anyhow::ensure!(s == 200, "{path}: {s} {page}");
        for r in page["runs"].as_array().context("runs")? {
            ids.push(r["run"].as_str().context("run id")?.to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(ids),
        }
    }
    anyhow::bail!("{query}: the cursor never ran out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_pages_through_sparse_filters_without_losing_runs() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let keys = api.env.store.keys().clone();
    let contoso: steward_schemas::CompanyId = "contoso".parse()?;
    // The runs of each shard, newest first: (creation time in µs, run id), as the indexes order
    // them.
    let indexes = || async {
        let mut shards: Vec<Vec<(i64, String)>> = Vec::new();
        for shard in keys.all_shards() {
            let entries: Vec<(String, i64)> = api
                .env
                .store
                .db()
                .query(
                    redis::cmd("ZREVRANGE")
                        .arg(keys.runs_of_company(shard, &contoso))
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES"),
                )
                .await?;
            shards.push(entries.into_iter().map(|(id, at)| (at, id)).collect());
        }
        anyhow::Ok(shards)
    };
    // Runs scheduled far ahead stay as they are: only the listing is under test. One in nine
    // is of workflow `expiring`, the rest `simple`.
    let mut expiring = std::collections::HashSet::new();
    let mut made = 0;
    let (shards, unread) = loop {
        for _ in 0..80 {
            let workflow = if made % 9 == 4 { "expiring" } else { "simple" };
            let (s, body) = api
                .post(
                    "tech",
                    "/v1/runs",
                    json!({"workflow": workflow, "company": "contoso", "start_at": "2099-01-01T00:00:00Z"}),
                )
                .await?;
            assert_eq!(s, 201, "{body}");
            if workflow == "expiring" {
                expiring.insert(body["run"].as_str().context("run id")?.to_owned());
            }
            made += 1;
        }
        // A round that reads each shard's index 50 runs at a time and goes on below the oldest
        // run it read would never read the runs that a shard holds between its 50th run and
        // that oldest one. Make sure there are some, and put the filter's matches there.
        let shards = indexes().await?;
        let oldest_read = shards
            .iter()
            .flat_map(|s| s.iter().take(50))
            .min()
            .cloned()
            .context("no runs")?;
        let unread: Vec<(i64, String)> = shards
            .iter()
            .flat_map(|s| s.iter().skip(50))
            .filter(|e| **e > oldest_read)
            .cloned()
            .collect();
        if !unread.is_empty() {
            break (shards, unread);
        }
        anyhow::ensure!(made < 800, "the shards never held unread runs");
    };
    let mut all: Vec<(i64, String)> = shards.into_iter().flatten().collect();
    all.sort_by(|a, b| b.cmp(a));
    assert_eq!(all.len(), made);

    // A sparse subset: those runs, and the oldest of all, are cancelled.
    let mut cancelled = unread;
    cancelled.push(all.last().cloned().context("no runs")?);
    for (_, run) in &cancelled {
        let (s, body) = api
            .post("tech", &format!("/v1/runs/{run}/cancel"), json!({}))
            .await?;
        assert_eq!((s, &body["status"]), (200, &json!("cancelled")), "{body}");
    }
    cancelled.sort_by(|a, b| b.cmp(a));
    let cancelled: Vec<String> = cancelled.into_iter().map(|(_, id)| id).collect();
    // A status within a company scope (the company's index, filtered by status), and the
    // status's own index.
    assert_eq!(
        every_page(&api, "tech", "company=contoso&status=cancelled&limit=2").await?,
        cancelled
    );
    assert_eq!(
        every_page(&api, "tech", "status=cancelled&limit=1").await?,
        cancelled
    );
    assert_eq!(
        every_page(&api, "admin", "status=cancelled&limit=3").await?,
        cancelled
    );
    // A workflow (all runs' index, filtered by workflow), and everything.
    let want: Vec<String> = all
        .iter()
        .filter(|(_, id)| expiring.contains(id))
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(
        every_page(&api, "admin", "workflow=expiring&limit=2").await?,
        want
    );
    let want: Vec<String> = all.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(every_page(&api, "tech", "limit=7").await?, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_answer_to_who_may_decide() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;

    // An admin who asked for a run cannot make links for its approvers (and vote through them).
    let run = start(&api, "admin", "gated", json!({"user": "jane"})).await?;
    wait_gate(&api, &run, "approval").await?;
    let (s, body) = ask_links(&api, "admin", &run, json!({"approver": "bob@msp.example"})).await?;
    assert_eq!((s, code(&body)), (403, "forbidden"), "{body}");
    assert!(message(&body).contains("asked for this run"), "{body}");

    // A link an admin made for bob stops working while bob is disabled, and records who made it.
    let run = start(&api, "tech", "gated", json!({"user": "jane"})).await?;
    wait_gate(&api, &run, "approval").await?;
    let (s, made) = ask_links(&api, "admin", &run, json!({"approver": "bob@msp.example"})).await?;
    assert_eq!(s, 200, "{made}");
    let approve = made["approve_url"]
        .as_str()
        .context("approve_url")?
        .to_owned();
    let (s, techs) = api.get("admin", "/v1/technicians").await?;
    assert_eq!(s, 200, "{techs}");
    let bob = techs
        .as_array()
        .context("technicians")?
        .iter()
        .find(|t| t["email"] == "bob@msp.example")
        .and_then(|t| t["id"].as_str())
        .context("bob")?
        .to_owned();
    let set_disabled = |disabled: bool| {
        let api = &api;
        let path = format!("/v1/technicians/{bob}");
        async move {
            send(
                api.req("admin", reqwest::Method::PATCH, &path)
                    .json(&json!({ "disabled": disabled })),
            )
            .await
        }
    };
    let (s, body) = set_disabled(true).await?;
    assert_eq!(s, 200, "{body}");
    let (s, body) = send(api.http.get(&approve).header("accept", "application/json")).await?;
    assert_eq!((s, code(&body)), (403, "forbidden"), "{body}");
    let (s, body) = send(api.http.post(&approve).header("accept", "application/json")).await?;
    assert_eq!((s, code(&body)), (403, "forbidden"), "{body}");
    assert!(message(&body).contains("disabled"), "{body}");
    let (s, body) = set_disabled(false).await?;
    assert_eq!(s, 200, "{body}");
    let (s, used) = send(api.http.post(&approve).header("accept", "application/json")).await?;
    assert_eq!((s, &used["recorded"]), (200, &json!(true)), "{used}");
    assert_eq!(
        used["gate"]["approvals"][0]["via"], "link (issued by admin@msp.example)",
        "{used}"
    );

    // alice asked for this run: her own link is refused when used, and stays unused (nothing
    // was recorded), so opening it again does not claim it was used.
    add_technician(&api, "carol@msp.example").await?;
    set_approvers(
        &api,
        &["alice@msp.example", "bob@msp.example", "carol@msp.example"],
    )
    .await?;
    let run = start(&api, "alice", "gated", json!({"user": "jane"})).await?;
    wait_gate(&api, &run, "approval").await?;
    let (s, made) = ask_links(&api, "alice", &run, json!({})).await?;
    assert_eq!(s, 200, "{made}");
    let approve = made["approve_url"]
        .as_str()
        .context("approve_url")?
        .to_owned();
    // The page's form posts back to the page's own address (public_url may have a path).
    let (s, html) = send(api.http.get(&approve).header("accept", "text/html")).await?;
    let html = html.as_str().unwrap_or_default().to_owned();
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains("<form method=\"post\">") && !html.contains("action="),
        "{html}"
    );
    let (s, body) = send(api.http.post(&approve).header("accept", "application/json")).await?;
    assert_eq!((s, code(&body)), (403, "forbidden"), "{body}");
    let (s, view) = send(api.http.get(&approve).header("accept", "application/json")).await?;
    assert_eq!((s, &view["recorded"]), (200, &json!(false)), "{view}");
    let body = status_of(&api, &run).await?;
    let gate = &body["run"]["state"]["steps"]["approval"];
    assert_eq!(gate["state"], "awaiting_approval", "{gate}");
    assert!(
        !serde_json::to_string(&body["history"])?.contains("approval_decided"),
        "nothing was recorded: {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_label_only_standard_methods() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    for made_up in ["BREW", "PROPFIND", "X-SCAN-1"] {
        let (s, body) = send(api.req(
            "tech",
            reqwest::Method::from_bytes(made_up.as_bytes())?,
            "/v1/runs",
        ))
        .await?;
        assert_eq!(s, 405, "{made_up}: {body}");
    }
    let (s, _) = api.get("tech", "/v1/runs").await?;
    assert_eq!(s, 200);
    let (s, metrics) = send(api.http.get(format!("{}/metrics", api.base))).await?;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert_eq!(s, 200, "{metrics}");
    assert!(
        metrics.contains("method=\"other\",route=\"/v1/runs\",status=\"405\"} 3")
            && metrics.contains("method=\"GET\",route=\"/v1/runs\",status=\"200\"} 1"),
        "{metrics}"
    );
    for made_up in ["BREW", "PROPFIND", "X-SCAN-1"] {
        assert!(!metrics.contains(made_up), "{made_up}: {metrics}");
    }
    // The served OpenAPI document is the checked-in one (built once, with the routes).
    let (s, served) = api.get("", "/v1/openapi.json").await?;
    assert_eq!(s, 200);
    let expected: Value = serde_json::from_str(&steward_engine::api::openapi_json())?;
    assert!(served == expected, "the served OpenAPI document differs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_import_is_a_conflict_to_retry() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    // The import script compares versions as Lua prints them, and Lua prints numbers from 10^14
    // up in exponent form: stored at such a version, contoso looks changed to every attempt of
    // the import, as when other writers keep changing it.
    let key = format!("{}:{{co}}:company:contoso", api.env.namespace);
    let db = api.env.store.db();
    let stored: String = db.query(redis::cmd("GET").arg(&key)).await?;
    let mut record: Value = serde_json::from_str(&stored)?;
    record["version"] = json!(100_000_000_000_000_u64);
    db.query::<()>(redis::cmd("SET").arg(&key).arg(record.to_string()))
        .await?;
    let csv = "id,name,tenant_id,identity_provider,mailbox_provider,approvers,permission_profile\n\
               contoso,Contoso Renamed,8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10,entra_id,exchange_online,alice@msp.example,full_automation\n";
    let (s, body) = send(
        api.req("admin", reqwest::Method::POST, "/v1/companies/import")
            .header("content-type", "text/csv")
            .body(csv),
    )
    .await?;
    assert_eq!((s, code(&body)), (409, "conflict"), "{body}");
    assert!(message(&body).contains("try again"), "{body}");
    let (s, company) = api.get("admin", "/v1/companies/contoso").await?;
    assert_eq!(
        (s, &company["company"]["name"]),
        (200, &json!("contoso (sample)")),
        "nothing was imported: {company}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_change_never_undoes_a_disable() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let auth = steward_engine::auth::Auth::for_store(&api.env.store);
    let tech = auth
        .technician_by_email("tech@msp.example")
        .await?
        .context("tech")?;
    let path = format!("/v1/technicians/{}", tech.id);
    let runtime = tokio::runtime::Handle::current();
    let mut edits = 0;
    // A rename whose edit runs while another admin disables the technician (after the rename
    // read the record, before it writes it back).
    let renamed = auth
        .update_technician(tech.id, |t| {
            edits += 1;
            if edits == 1 {
                let (s, body) = tokio::task::block_in_place(|| {
                    runtime.block_on(send(
                        api.req("admin", reqwest::Method::PATCH, &path)
                            .json(&json!({"disabled": true})),
                    ))
                })
                .expect("the disable is sent");
                assert_eq!(s, 200, "{body}");
            }
            t.name = "Renamed".to_owned();
        })
        .await?;
    assert_eq!(
        edits, 2,
        "the rename was applied again to the changed record"
    );
    assert!(renamed.disabled && renamed.name == "Renamed", "{renamed:?}");
    let (s, body) = api.get("tech", "/v1/runs").await?;
    assert_eq!(s, 401, "still disabled: {body}");

    // Through the API: a rename keeps the disable, and a bad name names the field.
    let (s, body) = send(
        api.req("admin", reqwest::Method::PATCH, &path)
            .json(&json!({"name": "  Tech  "})),
    )
    .await?;
    assert_eq!(
        (s, &body["name"], &body["disabled"]),
        (200, &json!("Tech"), &json!(true)),
        "{body}"
    );
    let (s, body) = send(
        api.req("admin", reqwest::Method::PATCH, &path)
            .json(&json!({"name": "a\u{7}b"})),
    )
    .await?;
    assert_eq!(
        (s, body["error"]["field"].as_str()),
        (422, Some("name")),
        "{body}"
    );
    Ok(())
}

/// Every status, step state and history entry of a run view has its sentence; the cancel reason
/// and decision comments are in them; the actions offered are the ones the run can take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_view_speaks_in_sentences() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let no_rust = |v: &Value| {
        let t = v.as_str().unwrap_or_default().to_owned();
        assert!(
            !t.is_empty() && !t.contains('{') && !t.contains("Some(") && !t.contains("None"),
            "{t}"
        );
        t
    };
    // At the gate: the approvers other than the requester may decide; the run can be paused
    // or cancelled; nothing is offered that the machine would refuse.
    let rejected = start(&api, "tech", "gated", json!({"user": "jane"})).await?;
    wait_gate(&api, &rejected, "approval").await?;
    let view = status_of(&api, &rejected).await?;
    let actions: Vec<(&str, &str)> = view["actions"]
        .as_array()
        .context("actions")?
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap_or(""),
                a["step"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("cancel", ""),
            ("cancel_with_rollback", ""),
            ("pause", ""),
            ("approve", "approval"),
            ("reject", "approval"),
            ("skip_step", "apply")
        ],
        "{view}"
    );
    for i in [3, 4] {
        assert_eq!(
            view["actions"][i]["by"],
            json!(["alice@msp.example", "bob@msp.example"]),
            "{view}"
        );
    }
    let gate = view["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == "approval"))
        .context("the gate's step")?;
    let text = no_rust(&gate["text"]);
    assert!(
        text.contains("for 2 approvals from alice@msp.example or bob@msp.example"),
        "{text}"
    );

    let (s, body) = decide(
        &api,
        "alice",
        &rejected,
        "approval",
        json!({"decision": "reject", "comment": "wrong department"}),
    )
    .await?;
    assert_eq!(s, 200, "{body}");
    let view = wait_status(&api, &rejected, "rolled_back").await?;
    let status = no_rust(&view["summary"]["status_text"]);
    assert_eq!(
        status,
        "rolled back: rejected by alice@msp.example at gate `approval` \u{2014} \u{201c}wrong department\u{201d}"
    );
    let history = view["history"].as_array().context("history")?;
    for h in history {
        no_rust(&h["text"]);
    }
    assert!(
        history.iter().any(|h| h["text"]
            == "rejected at gate `approval` by alice@msp.example (via api) \u{2014} \u{201c}wrong department\u{201d}; the run is now rolling back"),
        "{history:?}"
    );
    for s in view["steps"].as_array().context("steps")? {
        no_rust(&s["text"]);
    }
    assert_eq!(
        view["actions"],
        json!([]),
        "an ended run is offered nothing"
    );

    // The cancel reason shows with the status and in the timeline.
    let cancelled = start(&api, "tech", "gated", json!({"user": "joe"})).await?;
    wait_gate(&api, &cancelled, "approval").await?;
    let (s, body) = api
        .post(
            "tech",
            &format!("/v1/runs/{cancelled}/cancel"),
            json!({"reason": "duplicate ticket"}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    let view = wait_status(&api, &cancelled, "cancelled").await?;
    let status = no_rust(&view["summary"]["status_text"]);
    assert!(
        status.starts_with("cancelled by tech@msp.example at ")
            && status.ends_with(" \u{2014} \u{201c}duplicate ticket\u{201d}"),
        "{status}"
    );
    assert!(
        view["history"]
            .as_array()
            .context("history")?
            .iter()
            .any(|h| h["text"].as_str().is_some_and(|t| t.starts_with(
                "cancelled by tech@msp.example \u{2014} \u{201c}duplicate ticket\u{201d}"
            ))),
        "{view}"
    );
    Ok(())
}

/// Holds (`on`) or releases the cause that makes the `undoable` workflow's undo of `second`
/// fail.
async fn hold_undo(api: &ApiEnv, on: bool) -> Result<()> {
    let key = steward_workers::testing::ledger_blocks_key(&api.env.namespace);
    let cmd = if on { "SADD" } else { "SREM" };
    api.env
        .store
        .db()
        .query::<i64>(redis::cmd(cmd).arg(key).arg("hold"))
        .await?;
    Ok(())
}

fn actions_of(view: &Value) -> Vec<String> {
    view["actions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| match x["step"].as_str() {
                    Some(step) => format!("{} {step}", x["action"].as_str().unwrap_or("?")),
                    None => x["action"].as_str().unwrap_or("?").to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollback_is_finished_by_retrying_its_undo() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    hold_undo(&api, true).await?;
    let run = start(&api, "tech", "undoable", json!({})).await?;
    let ended = wait_status(&api, &run, "rollback_failed").await?;
    assert_eq!(
        ended["summary"]["status_detail"]["failed"],
        json!(["second"])
    );
    assert_eq!(ended["summary"]["status_detail"]["left"], json!(["first"]));
    // The fixes offered are the ones that can be carried out: no "retry this step".
    assert_eq!(
        actions_of(&ended),
        ["retry_undo second", "resolve_undo second"]
    );
    let retry = |who: &'static str, step: &'static str| {
        let path = format!("/v1/runs/{run}/steps/{step}/retry-undo");
        let api = &api;
        async move { api.post(who, &path, json!({})).await }
    };
    let (s, body) = api
        .post(
            "tech",
            &format!("/v1/runs/{run}/steps/last/retry"),
            json!({}),
        )
        .await?;
    assert_eq!((s, code(&body)), (409, "conflict"), "{body}");
    assert!(message(&body).contains("retry-undo"), "{body}");
    let (s, body) = retry("outsider", "second").await?;
    assert_eq!((s, code(&body)), (403, "forbidden"), "{body}");
    let (s, body) = retry("tech", "first").await?;
    assert_eq!((s, code(&body)), (409, "conflict"), "{body}");
    assert!(
        message(&body).contains("waits for the undo of `second`"),
        "{body}"
    );

    // Retried while its cause is still there: it fails again, and the run ends the same way.
    let before = status_of(&api, &run).await?;
    let (s, body) = retry("tech", "second").await?;
    assert_eq!(
        (s, body["status"].as_str()),
        (200, Some("rolling_back")),
        "{body}"
    );
    wait_for("the retried undo to fail again", T, || async {
        let view = status_of(&api, &run).await?;
        Ok((view["summary"]["status"] == "rollback_failed"
            && view["history"].as_array().map(Vec::len)
                > before["history"].as_array().map(Vec::len).map(|n| n + 1))
        .then_some(()))
    })
    .await?;

    // The technician clears the cause and retries: both undos run, newest first.
    hold_undo(&api, false).await?;
    let (s, body) = retry("tech", "second").await?;
    assert_eq!(s, 200, "{body}");
    let done = wait_status(&api, &run, "rolled_back").await?;
    assert!(actions_of(&done).is_empty(), "{done}");
    let ledger = api.env.ledger().await?;
    assert_eq!(ledger.undone.len(), 2, "{ledger:?}");
    assert_eq!(ledger.in_place, 0, "{ledger:?}");
    let retries: Vec<&Value> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "retry_undo_requested")
        .collect();
    assert_eq!(retries.len(), 2);
    assert_eq!(retries[1]["event"]["by"], "tech@msp.example");
    let (s, body) = retry("tech", "second").await?;
    assert_eq!((s, code(&body)), (409, "conflict"), "{body}");
    assert!(message(&body).contains("nothing is left to undo"), "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_undo_is_resolved_by_hand_with_a_comment() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    hold_undo(&api, true).await?;
    let run = start(&api, "tech", "undoable", json!({})).await?;
    wait_status(&api, &run, "rollback_failed").await?;
    let path = format!("/v1/runs/{run}/steps/second/resolve-undo");
    for (body, why) in [
        (json!({}), "no comment"),
        (json!({"comment": "   "}), "an empty comment"),
        (json!({"comment": "x".repeat(2001)}), "a long comment"),
    ] {
        let (s, b) = api.post("tech", &path, body).await?;
        assert_eq!(
            (s, b["error"]["field"].as_str()),
            (422, Some("comment")),
            "{why}: {b}"
        );
    }
    let (s, b) = api
        .post("outsider", &path, json!({"comment": "done"}))
        .await?;
    assert_eq!(s, 403, "{b}");
    let (s, b) = api
        .post(
            "alice",
            &path,
            json!({"comment": "removed entry `second` by hand in the ledger"}),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    // The undo behind it (of `first`) runs through the workers, and the run ends rolled back.
    let done = wait_status(&api, &run, "rolled_back").await?;
    assert_eq!(
        done["summary"]["status_detail"]["resolved"],
        json!(["second"])
    );
    let undo = &done["run"]["state"]["steps"]["second"]["undo"];
    assert_eq!(undo["state"], "resolved");
    assert_eq!(undo["by"], "alice@msp.example");
    assert_eq!(undo["via"], "api");
    assert_eq!(
        undo["comment"],
        "removed entry `second` by hand in the ledger"
    );
    assert!(undo["at"].is_string(), "{undo}");
    let entry = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["type"] == "undo_resolved")
        .context("the resolution in the history")?;
    assert_eq!(entry["event"]["by"], "alice@msp.example");
    assert_eq!(entry["status"], "rolling_back");
    let ledger = api.env.ledger().await?;
    assert_eq!(
        ledger.undone.len(),
        1,
        "only `first` was undone by Steward: {ledger:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_are_enabled_technicians_when_a_company_is_saved() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let company = |approvers: Value| {
        json!({"id": "northwind", "name": "Northwind", "tenant_id": "3c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f",
               "identity_provider": "entra_id", "mailbox_provider": "exchange_online", "approvers": approvers})
    };
    // Every problem at once: a bad setting, an approver nobody knows.
    let mut bad = company(json!(["alice@msp.example", " Ghost@MSP.example "]));
    bad["tenant_id"] = json!("nope");
    let (s, body) = api.post("admin", "/v1/companies", bad).await?;
    assert_eq!((s, code(&body)), (422, "validation_failed"), "{body}");
    let details = serde_json::to_string(&body["error"]["details"])?;
    assert!(
        details.contains("tenant_id")
            && details.contains("`ghost@msp.example` is not a technician")
            && details.contains("steward technicians add --email ghost@msp.example"),
        "{details}"
    );
    let (s, body) = api.get("admin", "/v1/companies/northwind").await?;
    assert_eq!(s, 404, "nothing was saved: {body}");

    // A disabled technician is no approver either, when a company is replaced.
    set_disabled(&api, "bob@msp.example", true).await?;
    let (s, mut record) = api.get("admin", "/v1/companies/contoso").await?;
    assert_eq!(s, 200);
    record["company"]["name"] = json!("Contoso (renamed)");
    let (s, body) = send(
        api.req("admin", reqwest::Method::PUT, "/v1/companies/contoso")
            .json(&record["company"]),
    )
    .await?;
    assert_eq!((s, code(&body)), (422, "validation_failed"), "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "approvers");
    assert!(
        body["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("`bob@msp.example` is disabled"),
        "{body}"
    );
    set_disabled(&api, "bob@msp.example", false).await?;
    let (s, body) = send(
        api.req("admin", reqwest::Method::PUT, "/v1/companies/contoso")
            .json(&record["company"]),
    )
    .await?;
    assert_eq!(s, 200, "enabled again, bob approves: {body}");
    let (s, body) = api
        .post(
            "admin",
            "/v1/companies",
            company(json!(["alice@msp.example"])),
        )
        .await?;
    assert_eq!(s, 201, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_gate_nobody_could_decide_is_refused_when_planned() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    // gated needs two approvals from contoso's approvers (alice, bob): alice asked, so only bob
    // could give one.
    let (s, body) = api
        .post(
            "alice",
            "/v1/runs",
            json!({"workflow": "gated", "company": "contoso", "inputs": {"user": "jane"}}),
        )
        .await?;
    assert_eq!((s, code(&body)), (422, "validation_failed"), "{body}");
    let said = message(&body);
    assert!(
        said.contains("gate `approval` would have nobody able to decide")
            && said.contains("needs 2 approvals and only 1")
            && said.contains("alice@msp.example asked for this run"),
        "{said}"
    );
    assert!(
        body["error"]["fix"]
            .as_str()
            .unwrap()
            .contains("have another technician start the run"),
        "{body}"
    );
    assert_eq!(body["error"]["details"][0]["step"], "approval");
    assert_eq!(body["error"]["details"][0]["field"], "gate.approvers");
    // bob disabled: nobody but alice is left, whoever asks.
    set_disabled(&api, "bob@msp.example", true).await?;
    let (s, body) = api
        .post(
            "tech",
            "/v1/runs",
            json!({"workflow": "gated", "company": "contoso", "inputs": {"user": "jane"}}),
        )
        .await?;
    assert_eq!(s, 422, "{body}");
    assert!(
        message(&body).contains("bob@msp.example is disabled"),
        "{body}"
    );
    // A workflow's named approver who is not a technician.
    let (s, body) = api
        .post(
            "tech",
            "/v1/runs",
            json!({"workflow": "named", "company": "contoso"}),
        )
        .await?;
    assert_eq!(s, 422, "{body}");
    assert!(
        message(&body).contains("ghost@msp.example is not a technician")
            && body["error"]["fix"]
                .as_str()
                .unwrap()
                .contains("name enabled technicians in the workflow's gate `approval`"),
        "{body}"
    );
    let (s, page) = api.get("admin", "/v1/runs").await?;
    assert_eq!(
        (s, page["runs"].as_array().map(Vec::len)),
        (200, Some(0)),
        "nothing started: {page}"
    );
    set_disabled(&api, "bob@msp.example", false).await?;
    start(&api, "tech", "gated", json!({"user": "jane"})).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_whose_approvers_went_away_goes_to_the_admins() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    // Planned while alice and bob approve; the run then waits (its first step failed).
    let run = start(&api, "tech", "held", json!({})).await?;
    wait_status(&api, &run, "paused").await?;
    set_disabled(&api, "alice@msp.example", true).await?;
    set_disabled(&api, "bob@msp.example", true).await?;
    let (s, body) = api
        .post(
            "tech",
            &format!("/v1/runs/{run}/steps/prepare/skip"),
            json!({}),
        )
        .await?;
    assert_eq!(s, 200, "{body}");
    // The gate opens with nobody named able to decide: the admins decide, not nobody.
    let gate = wait_gate(&api, &run, "approval").await?;
    assert_eq!(gate["approvers"], json!(["admin@msp.example"]), "{gate}");
    assert_eq!(gate["to_admins"], "approvers", "{gate}");
    assert_eq!(
        gate["unavailable"].as_array().map(Vec::len),
        Some(2),
        "{gate}"
    );
    // The approval page says why the admin is asked.
    let (s, links) = ask_links(&api, "admin", &run, json!({})).await?;
    assert_eq!(s, 200, "{links}");
    let page = api
        .http
        .get(links["approve_url"].as_str().context("approve_url")?)
        .header("accept", "text/html")
        .send()
        .await?
        .text()
        .await?;
    assert!(
        page.contains("This gate came to the admins")
            && page.contains("alice@msp.example is disabled"),
        "{page}"
    );
    let view = status_of(&api, &run).await?;
    let opened = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["type"] == "gate_opened")
        .context("the gate's opening in the history")?;
    assert_eq!(
        opened["event"]["unavailable"],
        json!([
            {"email": "alice@msp.example", "reason": "disabled"},
            {"email": "bob@msp.example", "reason": "disabled"}
        ]),
        "{opened}"
    );
    assert_eq!(opened["event"]["admins"], json!(["admin@msp.example"]));
    let step = &view["run"]["state"]["steps"]["approval"];
    assert_eq!(step["to_admins"], "approvers", "{step}");
    assert!(
        actions_of(&view).contains(&"approve approval".to_owned()),
        "{view}"
    );
    let (s, inbox) = api.get("admin", "/v1/approvals").await?;
    assert_eq!(
        (s, &inbox["approvals"][0]["reference"]),
        (200, &json!(format!("{run}/approval"))),
        "{inbox}"
    );
    let (s, body) = approve(&api, "admin", &run).await?;
    assert_eq!(s, 200, "{body}");
    wait_status(&api, &run, "completed").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_company_with_runs_in_flight_is_deleted_only_when_forced() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let delete = |path: String| send(api.req("admin", reqwest::Method::DELETE, &path));
    let run = start(&api, "tech", "gated", json!({"user": "jane"})).await?;
    wait_gate(&api, &run, "approval").await?;
    let ended = start(&api, "tech", "simple", json!({})).await?;
    wait_status(&api, &ended, "completed").await?;

    let (s, body) = delete("/v1/companies/contoso".to_owned()).await?;
    assert_eq!((s, code(&body)), (409, "conflict"), "{body}");
    let said = message(&body);
    assert!(
        said.contains("1 run in flight and 1 gate open")
            && said.contains(&format!("{run} (running, gate approval open)"))
            && !said.contains(&ended),
        "{said}"
    );
    assert!(
        body["error"]["fix"]
            .as_str()
            .unwrap()
            .contains("force=true"),
        "{body}"
    );
    assert_eq!(body["error"]["details"][0]["run"], json!(run));
    assert_eq!(
        body["error"]["details"][0]["open_gates"],
        json!(["approval"])
    );
    let (s, _) = api.get("admin", "/v1/companies/contoso").await?;
    assert_eq!(s, 200, "still there");
    let (s, body) = delete("/v1/companies/contoso?force=maybe".to_owned()).await?;
    assert!(s == 400 && message(&body).contains("force"), "{s} {body}");
    let (s, body) = send(api.req(
        "tech",
        reqwest::Method::DELETE,
        "/v1/companies/contoso?force=true",
    ))
    .await?;
    assert_eq!(s, 403, "admins only: {body}");

    let (s, body) = delete("/v1/companies/contoso?force=true".to_owned()).await?;
    assert_eq!(s, 204, "{body}");
    let (s, _) = api.get("admin", "/v1/companies/contoso").await?;
    assert_eq!(s, 404);
    // Recorded: who, when, what was in flight.
    let log = steward_engine::companies::Companies::for_store(&api.env.store).log_key();
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = api
        .env
        .store
        .db()
        .query(redis::cmd("XRANGE").arg(&log).arg("-").arg("+"))
        .await?;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0].1;
    assert_eq!(entry["company"], "contoso");
    assert_eq!(entry["by"], "admin@msp.example");
    assert_eq!(entry["forced"], "true");
    assert!(!entry["at"].is_empty());
    let in_flight: Value = serde_json::from_str(&entry["in_flight"])?;
    assert_eq!(in_flight[0]["run"], json!(run), "{in_flight}");

    // A company without runs in flight goes without force, and without a record.
    let (s, body) = api
        .post(
            "admin",
            "/v1/companies",
            json!({"id": "northwind", "name": "Northwind", "tenant_id": "3c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f",
                   "identity_provider": "entra_id", "mailbox_provider": "exchange_online"}),
        )
        .await?;
    assert_eq!(s, 201, "{body}");
    let (s, body) = delete("/v1/companies/northwind".to_owned()).await?;
    assert_eq!(s, 204, "{body}");
    let (s, _) = delete("/v1/companies/northwind".to_owned()).await?;
    assert_eq!(s, 404);
    let n: u64 = api
        .env
        .store
        .db()
        .query(redis::cmd("XLEN").arg(&log))
        .await?;
    assert_eq!(n, 1);
    Ok(())
}
