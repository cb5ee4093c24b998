//! The lifecycle workflows (`workflows/onboarding.yaml`, `workflows/offboarding.yaml`) for every
//! provider combination: each is planned through the API (`POST /v1/plans`, what `steward plan`
//! calls) for one company of each of the 12 identity × mailbox combinations, and every step routes
//! (or is left out by its `when:` for that company), with the mailbox made in the right system.
//! Then each combination end to end (`combos!`): a new-starter ticket and a leaver ticket in the
//! sandbox's Autotask send their signed webhooks to Steward's API, whose rules start the runs;
//! every gate is approved through the signed link in the ticket's note; the directories,
//! mailboxes, licences and the offboarding's order are checked in the sandbox, and no note holds
//! a secret. The three combinations that cannot work start nothing and say why on the ticket.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use steward_schemas::{Company, IdentityProvider, MailboxProvider};
use steward_tests::api::ApiEnv;

/// A company of the given providers, with what routing needs for them (runners, servers, OU).
fn company(idp: IdentityProvider, mbx: MailboxProvider) -> Result<Company> {
    let id = format!("{}-{}", idp.name(), mbx.name()).replace('_', "-");
    let mut v = json!({
        "id": id, "name": id,
        "tenant_id": "2c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f",
        "identity_provider": idp.name(), "mailbox_provider": mbx.name(),
        "rmm": {"provider": "datto", "site": "s1"},
        "defaults": {"usage_location": "GB", "ou": "OU=Staff,DC=example,DC=local", "upn_domain": "example.com"},
        "approvers": ["alice@msp.example"],
        "permissions": {"profile": "full_automation"},
    });
    if idp == IdentityProvider::EntraId {
        v["defaults"]
            .as_object_mut()
            .context("defaults")?
            .remove("ou");
    } else {
        v["ad_runner"] = json!("RUNNER01");
    }
    if idp == IdentityProvider::Hybrid {
        v["entra_connect_server"] = json!("AADC01");
    }
    if mbx != MailboxProvider::ExchangeOnline {
        v["exchange_server"] = json!("EXCH01");
        v["exchange_runner"] = json!("RUNNER01");
    }
    Ok(serde_json::from_value(v)?)
}

fn has_cloud(idp: IdentityProvider, mbx: MailboxProvider) -> bool {
    idp != IdentityProvider::OnPremAd || mbx != MailboxProvider::ExchangeServer
}

fn step<'a>(plan: &'a Value, id: &str) -> Result<&'a Value> {
    plan["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .find(|s| s["step"] == id)
        .with_context(|| format!("no step {id} in {plan}"))
}

fn actions(step: &Value) -> Vec<String> {
    step["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{}@{}",
                a["action"].as_str().unwrap_or(""),
                a["system"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_lifecycle_workflows_plan_for_all_twelve_provider_combinations() -> Result<()> {
    let flows = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    let api = ApiEnv::start(&flows).await?;
    let onboarding = json!({
        "given_name": "Jane", "surname": "Doe", "display_name": "Jane Doe",
        "user_principal_name": "jane.doe@example.com", "job_title": "Account manager",
        "department": "Sales", "manager": "bob@example.com", "template_user": "bob@example.com",
        "groups": ["Sales", "All staff"], "start_date": "2027-01-04",
    });
    let offboarding = json!({
        "user": "jane.doe@example.com", "manager": "bob@example.com",
        "forward_to": "bob@example.com", "auto_reply": "Jane has left; please write to Bob.",
        "license_sku": "SPE_E3", "groups": ["Sales"], "disabled_ou": "OU=Disabled,DC=example,DC=local",
    });
    let mut combos = 0;
    for idp in IdentityProvider::ALL {
        for mbx in MailboxProvider::ALL {
            let c = company(idp, mbx)?;
            let id = c.id.to_string();
            steward_engine::companies::ensure(&api.env.companies(), c)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let cloud = has_cloud(idp, mbx);
            if refused(idp, mbx) {
                // Refused when planned, with the fix (`refused_up_front` below runs them).
                for (flow, inputs) in [("onboarding", &onboarding), ("offboarding", &offboarding)] {
                    let (status, plan) = api
                        .post(
                            "admin",
                            "/v1/plans",
                            json!({"workflow": flow, "company": id, "inputs": inputs}),
                        )
                        .await?;
                    assert_eq!(status, 200, "{flow} for {id}: {plan}");
                    assert_eq!(plan["routable"], false, "{flow} for {id}: {plan}");
                }
                combos += 1;
                continue;
            }
            for (flow, inputs) in [("onboarding", &onboarding), ("offboarding", &offboarding)] {
                let (status, plan) = api
                    .post(
                        "admin",
                        "/v1/plans",
                        json!({"workflow": flow, "company": id, "inputs": inputs}),
                    )
                    .await?;
                assert_eq!(status, 200, "{flow} for {id}: {plan}");
                let problems: Vec<String> = plan["steps"]
                    .as_array()
                    .context("steps")?
                    .iter()
                    .filter(|s| !s["problem"].is_null())
                    .map(|s| format!("{}: {}", s["step"], s["problem"]))
                    .collect();
                assert!(
                    problems.is_empty() && plan["routable"] == true,
                    "{flow} for {id} has routing problems: {problems:#?}"
                );
                // A company without a tenant leaves the cloud-only steps out; the others route them.
                let licence = step(
                    &plan,
                    if flow == "onboarding" {
                        "license"
                    } else {
                        "remove_license"
                    },
                )?;
                assert_eq!(
                    actions(licence).is_empty(),
                    !cloud,
                    "{flow} for {id}: {licence}"
                );
            }
            // The mailbox is made in the right system.
            let (_, plan) = api
                .post(
                    "admin",
                    "/v1/plans",
                    json!({"workflow": "onboarding", "company": id, "inputs": onboarding}),
                )
                .await?;
            let mailbox = actions(step(&plan, "mailbox")?);
            let want: Vec<&str> = match mbx {
                MailboxProvider::ExchangeOnline => {
                    vec!["exchange_online.wait_for_mailbox@exchange_online"]
                }
                MailboxProvider::ExchangeServer if idp == IdentityProvider::EntraId => {
                    vec!["exchange_server.new_mailbox@rmm"]
                }
                MailboxProvider::ExchangeServer => vec!["exchange_server.enable_mailbox@rmm"],
                MailboxProvider::ExchangeHybrid if idp == IdentityProvider::Hybrid => vec![
                    "exchange_server.enable_remote_mailbox@rmm",
                    "adsync.start_delta@rmm",
                    "exchange_online.wait_for_mailbox@exchange_online",
                ],
                MailboxProvider::ExchangeHybrid => vec![
                    "exchange_server.enable_remote_mailbox@rmm",
                    "exchange_online.wait_for_mailbox@exchange_online",
                ],
            };
            assert_eq!(mailbox, want, "the mailbox for {id}");
            // The user is created where the identity lives.
            let create = actions(step(&plan, "create_user")?);
            let first = create.first().cloned().unwrap_or_default();
            match idp {
                IdentityProvider::EntraId => assert_eq!(first, "graph.create_user@graph", "{id}"),
                _ => assert_eq!(first, "ad.new_user@rmm", "{id}"),
            }
            combos += 1;
        }
    }
    assert_eq!(combos, 12);
    Ok(())
}

mod m365_support;
mod onprem_support;

use std::time::Duration;

use onprem_support::{World, company as world_company};
use steward_schemas::RunStatus;

const ONBOARDING: &str = include_str!("../workflows/onboarding.yaml");
const OFFBOARDING: &str = include_str!("../workflows/offboarding.yaml");

/// Starts `yaml` for `company` with `inputs` (the run carrying the company's settings, as a run
/// started through the API does) and approves its gate.
async fn start_approved(
    w: &World,
    yaml: &str,
    company: &str,
    inputs: Value,
) -> Result<steward_schemas::RunId> {
    let record = w
        .env
        .companies()
        .get(&company.parse()?)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?
        .context("the company")?;
    let settings = match serde_json::to_value(&record.company)? {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let plan = std::sync::Arc::new(steward_core::Plan::load(
        "lifecycle.yaml",
        yaml,
        Some(&steward_workers::Registry::builtin()),
    )?);
    let run = w
        .env
        .store
        .create_run(steward_engine::store::NewRun {
            plan,
            company: company.parse()?,
            company_settings: settings,
            inputs: inputs.as_object().cloned().unwrap_or_default(),
            requested_by: "test".to_owned(),
            start_at: None,
            ticket: None,
        })
        .await?;
    w.approve(run).await?;
    Ok(run)
}

/// Waits for `run` to complete with nothing failed.
async fn completed(w: &World, run: steward_schemas::RunId) -> Result<()> {
    let status = w.end(run).await?;
    assert!(
        matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
        "{status:?}\n{}",
        w.history(run).await?
    );
    Ok(())
}

/// Runs `yaml` for `company` with `inputs`, approves its gate, and waits for it to complete.
async fn run_approved(w: &World, yaml: &str, company: &str, inputs: Value) -> Result<()> {
    let run = start_approved(w, yaml, company, inputs).await?;
    completed(w, run).await
}

/// On premises only (identity `on_prem_ad`, mailbox `exchange_server`): the user is made in AD
/// and given a mailbox on the Exchange server through the RMM, with a listed group and a
/// manager; offboarding disables the account, removes the group and moves the account to the
/// leavers' OU last. The cloud-only items are left out (the company has no tenant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_premises_only_onboarding_and_offboarding_through_the_rmm() -> Result<()> {
    let w = World::start(
        vec![world_company(
            "northwind",
            json!({
                "identity_provider": "on_prem_ad",
                "mailbox_provider": "exchange_server",
                "ad_runner": "NW-RUNNER01",
                "exchange_server": "NW-EXCH01",
                "exchange_runner": "NW-RUNNER01",
                "rmm": {"provider": "datto", "site": "northwind"},
                "defaults": {"ou": "OU=Users,OU=Northwind,DC=northwind,DC=local"},
            }),
        )],
        Duration::from_secs(5),
    )
    .await?;
    // Northwind's runner reaches the Exchange server by PowerShell remoting; its Kerberos
    // delegation is set up (the fixture starts without it, for the double-hop test).
    w.admin(
        "POST",
        "/companies/northwind/faults",
        Some(json!({"double_hop_misconfigured": false})),
    )
    .await?;
    let upn = "janet.leverling@northwindtraders.com";
    run_approved(
        &w,
        ONBOARDING,
        "northwind",
        json!({
            "given_name": "Janet", "surname": "Leverling", "display_name": "Janet Leverling",
            "user_principal_name": upn, "job_title": "Sales Representative",
            "department": "Sales", "manager": "nancy.davolio@northwindtraders.com",
            "groups": ["NW-Staff"],
        }),
    )
    .await?;
    let user = w
        .ad_user("northwind", "janet.leverling")
        .await?
        .context("Janet is in AD")?;
    assert_eq!(user["deleted"], false, "{user}");
    assert_eq!(user["enabled"], true, "{user}");
    assert_eq!(
        user["mailbox"]["database"], "MDB01",
        "a mailbox on the server: {user}"
    );
    assert!(user["remote_mailbox"].is_null(), "{user}");
    assert!(!user["manager"].is_null(), "the manager is set: {user}");
    let guid = user["object_guid"].clone();
    let staff = w.ad_group("northwind", "NW-Staff").await?;
    assert!(
        staff["members"]
            .as_array()
            .is_some_and(|m| m.contains(&guid)),
        "{staff}"
    );
    let changes = w.changes("northwind").await?;
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("exchange_server.enable_mailbox ")),
        "{changes:#?}"
    );
    let before = changes.len();

    // Offboarding with the account items chosen (`lifecycle_on_prem_ad_exchange_server` below
    // chooses the mailbox items too).
    run_approved(
        &w,
        OFFBOARDING,
        "northwind",
        json!({
            "user": upn, "groups": ["NW-Staff"],
            "convert_to_shared": false, "hide_from_gal": false, "remove_mobile_devices": false,
            "disabled_ou": "OU=Leavers,OU=Northwind,DC=northwind,DC=local",
        }),
    )
    .await?;
    let user = w
        .ad_user("northwind", "janet.leverling")
        .await?
        .context("Janet is still in AD")?;
    assert_eq!(user["enabled"], false, "{user}");
    assert_eq!(
        user["parent"], "OU=Leavers,OU=Northwind,DC=northwind,DC=local",
        "{user}"
    );
    let staff = w.ad_group("northwind", "NW-Staff").await?;
    assert!(
        staff["members"]
            .as_array()
            .is_some_and(|m| !m.contains(&guid)),
        "{staff}"
    );
    let changes = w.changes("northwind").await?;
    let done: Vec<&str> = changes[before..]
        .iter()
        .map(|c| c.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        done,
        ["ad.set_enabled", "ad.remove_group_member", "ad.move_object"],
        "{changes:#?}"
    );
    Ok(())
}

/// A world whose worker has the Microsoft 365 ops (against the sandbox) and the RMM.
async fn cloud_world(companies: Vec<Company>) -> Result<World> {
    let mut w = World::start(companies, Duration::from_secs(5)).await?;
    let m = m365_support::m365_shared(&w.sb.base_url, &w.env, &w.sink);
    let registry =
        steward_workers::Registry::connected(Some(m), Some(w.onprem(Duration::from_secs(5))));
    w.start_worker_with(registry).await?;
    Ok(w)
}

/// The steps of `run` that changed something in the sandbox, in the order of their first change.
async fn changed_steps(w: &World, run: steward_schemas::RunId) -> Result<Vec<String>> {
    let ledger = w.admin("GET", &format!("/ledger?run={run}"), None).await?;
    let mut steps: Vec<String> = Vec::new();
    for e in ledger["entries"].as_array().context("entries")? {
        let s = e["step"].as_str().unwrap_or_default().to_owned();
        if !s.is_empty() && !steps.contains(&s) {
            steps.push(s);
        }
    }
    Ok(steps)
}

/// Cloud only (identity `entra_id`, mailbox `exchange_online`): the user is created in Entra ID,
/// licensed, and the mailbox step waits (durably) until Exchange Online has provisioned the
/// mailbox the licence gives; offboarding then does every item, in the order that avoids the
/// known failures (sign-in blocked first, the mailbox shared before the licence goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_only_onboarding_waits_for_the_mailbox_and_offboarding_keeps_the_order() -> Result<()>
{
    let w = cloud_world(vec![world_company(
        "contoso",
        json!({
            "identity_provider": "entra_id",
            "mailbox_provider": "exchange_online",
            "tenant_id": "8a6f1c2e-3b4d-4e5f-9a0b-1c2d3e4f5a6b",
            "defaults": {"usage_location": "GB"},
        }),
    )])
    .await?;
    let upn = "jane.doe@contoso.com";
    let run = start_approved(
        &w,
        ONBOARDING,
        "contoso",
        json!({
            "given_name": "Jane", "surname": "Doe", "display_name": "Jane Doe",
            "user_principal_name": upn, "manager": "megan.bowen@contoso.com",
            "license_sku": "SPB",
        }),
    )
    .await?;
    // The mailbox step waits for Exchange Online, holding no worker.
    let store = &w.env.store;
    let seq = steward_tests::wait_for(
        "the wait for the mailbox",
        onprem_support::T,
        || async move {
            let snap = store.load(run).await?.context("run")?;
            Ok(match &snap.doc.state.steps["mailbox"].state {
                steward_schemas::StepState::Polling { .. } => {
                    Some(snap.doc.state.steps["mailbox"].seq)
                }
                _ => None,
            })
        },
    )
    .await?;
    // Exchange Online provisions it (sandbox time); the next check finds it.
    w.admin("POST", "/clock/advance", Some(json!({"seconds": 900})))
        .await?;
    steward_engine::runner::wake(
        store,
        &steward_workers::rmm::jobs::Binding {
            run: run.to_string(),
            step: "mailbox".to_owned(),
            seq,
            phase: "run".to_owned(),
        },
    )
    .await?;
    completed(&w, run).await?;
    let world = w.admin("GET", "/world/contoso", None).await?;
    let text = world.to_string();
    assert!(text.contains(upn), "Jane is in Entra ID");
    let snap = store.load(run).await?.context("run")?;
    let steward_schemas::StepState::Succeeded { output, .. } =
        &snap.doc.state.steps["mailbox"].state
    else {
        panic!("the mailbox step did not succeed");
    };
    assert_eq!(output["mailbox"], upn, "{output}");

    // Offboarding with every item chosen.
    let run = start_approved(
        &w,
        OFFBOARDING,
        "contoso",
        json!({
            "user": upn, "manager": "megan.bowen@contoso.com",
            "forward_to": "megan.bowen@contoso.com", "auto_reply": "Jane has left; please write to Megan.",
            "license_sku": "SPB",
        }),
    )
    .await?;
    completed(&w, run).await?;
    let steps = changed_steps(&w, run).await?;
    let at = |s: &str| {
        steps
            .iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("{s} changed nothing: {steps:?}"))
    };
    assert_eq!(at("block_sign_in"), 0, "{steps:?}");
    assert!(at("revoke_sessions") < at("convert_to_shared"), "{steps:?}");
    for later in [
        "manager_access",
        "forwarding",
        "auto_reply",
        "hide_from_gal",
    ] {
        assert!(at("convert_to_shared") < at(later), "{steps:?}");
        assert!(at(later) < at("remove_license"), "{steps:?}");
    }
    Ok(())
}

/// Lets `run`, started by `ticket`, go to its end: each of its gates (the workflow's, and the
/// one the company's policy adds before the devices are retired) is approved through the signed
/// link in the note Steward writes for it on the ticket; whenever a step waits (for Entra
/// Connect, for Exchange Online to provision a mailbox, for a running sync cycle to end), the
/// sandbox's clock moves on and the step is checked again at once.
async fn drive(w: &World, run: steward_schemas::RunId, ticket: i64) -> Result<()> {
    let store = &w.env.store;
    // The gates approved.
    let approved = std::sync::Mutex::new(std::collections::HashSet::new());
    let approved = &approved;
    steward_tests::wait_for("the run to end", Duration::from_secs(45), || async move {
        let snap = store.load(run).await?.context("run")?;
        if snap.doc.state.status.is_terminal() {
            return Ok(Some(()));
        }
        for (step, s) in &snap.doc.state.steps {
            if let steward_schemas::StepState::AwaitingApproval { .. } = &s.state {
                let key = (step.to_string(), s.seq);
                let done = approved
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .contains(&key);
                if !done && w.approve_from_note(ticket, run, step.as_str()).await? {
                    approved
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .insert(key);
                }
            }
            if let steward_schemas::StepState::Polling { .. } = &s.state {
                w.admin("POST", "/clock/advance", Some(json!({"seconds": 900})))
                    .await?;
                steward_engine::runner::wake(
                    store,
                    &steward_workers::rmm::jobs::Binding {
                        run: run.to_string(),
                        step: step.to_string(),
                        seq: s.seq,
                        phase: "run".to_owned(),
                    },
                )
                .await?;
            }
        }
        Ok(None)
    })
    .await
    .with_context(|| {
        let store = w.env.store.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
                .and_then(|rt| rt.block_on(store.load(run)).ok().flatten())
                .map(|s| serde_json::to_string(&s.doc.state.steps).unwrap_or_default())
                .unwrap_or_default()
        })
        .join()
        .unwrap_or_default()
    })
}

/// The sandbox's built-in world with northwind's tenant given what a cloud-only company needs
/// (its domain, the partner's consent, licences): for identity `entra_id` with mailboxes on
/// northwind's Exchange Server, which has no Entra Connect to synchronise its forest.
fn northwind_with_a_tenant() -> Result<tempfile::NamedTempFile> {
    let msp = include_str!("../sandbox/fixtures/msp.yaml");
    let at = "      initial_domain: northwindtraders.onmicrosoft.com\n";
    anyhow::ensure!(msp.contains(at), "msp.yaml changed: northwind's tenant");
    let text = msp.replace(
        at,
        &format!(
            "{at}      domains: [northwindtraders.com]\n      consented_apps: [5e7a9f3c-1b2d-4c8e-9f00-a1b2c3d4e5f6]\n      mailbox_provisioning_delay_seconds: 300\n      skus:\n        - sku_id: cdd28e44-67e3-425e-be4c-737fab2899d3\n          part_number: O365_BUSINESS\n          seats: 5\n          exchange: false\n"
        ),
    );
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(f)
}

/// The sandbox's built-in world with fabrikam as a `hybrid_no_sync` company really is: AD and a
/// tenant with nothing synchronising them. The built-in fabrikam has Entra Connect, whose
/// half-hourly scheduled cycle exports every AD user and soft-matches a cloud user of the same
/// UPN, so a user made in both directories became synced (and cloud changes to it refused) as
/// soon as the sandbox's clock passed a cycle. Here there is no Entra Connect; the staff are
/// in AD (not exported) and have cloud accounts of their own, licensed in the tenant.
fn fabrikam_without_entra_connect() -> Result<tempfile::NamedTempFile> {
    let msp = include_str!("../sandbox/fixtures/msp.yaml");
    let (before, rest) = msp
        .split_once("  - id: fabrikam\n")
        .context("msp.yaml changed: fabrikam")?;
    let (fabrikam, after) = rest
        .split_once("\n  - id: northwind\n")
        .context("msp.yaml changed: the company after fabrikam")?;
    // Each edit, and how often it applies.
    let edits: [(&str, &str, usize); 4] = [
        (
            "    entra_connect:\n      server: AADC01\n      sync_duration_seconds: 120\n      interval_minutes: 30\n",
            "",
            1,
        ),
        // Bob and Chris: in AD, not exported, their licences on their cloud accounts.
        (
            "          licenses: [SPB]\n          usage_location: US\n",
            "          usage_location: US\n          synced: false\n",
            2,
        ),
        (
            "          members: [bsmith, ckim]\n",
            "          members: [bsmith, ckim]\n          synced: false\n",
            1,
        ),
        (
            "          members: [bsmith]\n",
            "          members: [bsmith]\n          synced: false\n",
            1,
        ),
    ];
    let mut text = fabrikam.to_owned();
    for (from, to, times) in edits {
        anyhow::ensure!(
            text.matches(from).count() == times,
            "msp.yaml changed: fabrikam has {from:?} other than {times} times"
        );
        text = text.replace(from, to);
    }
    let users = "          roles: [Global Administrator]\n";
    anyhow::ensure!(
        text.matches(users).count() == 1,
        "msp.yaml changed: fabrikam's admin"
    );
    text = text.replace(
        users,
        &format!(
            "{users}        - upn: bob.smith@fabrikam.com\n          display_name: Bob Smith\n          given_name: Bob\n          surname: Smith\n          usage_location: US\n          licenses: [SPB]\n        - upn: chris.kim@fabrikam.com\n          display_name: Chris Kim\n          given_name: Chris\n          surname: Kim\n          usage_location: US\n          licenses: [SPB]\n          manager: bob.smith@fabrikam.com\n"
        ),
    );
    anyhow::ensure!(!text.contains("entra_connect"), "fabrikam still syncs");
    let text = format!("{before}  - id: fabrikam\n{text}\n  - id: northwind\n{after}");
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(f)
}

/// Where a combination is tried: the sandbox world, its tenant and domain, someone there to
/// give the leaver's mailbox to, a group the starter joins, and the licence.
struct Case {
    world: &'static str,
    /// The company's id in the sandbox's Autotask.
    psa_company: &'static str,
    tenant: &'static str,
    domain: &'static str,
    trustee: &'static str,
    group: Option<&'static str>,
    sku: &'static str,
    sku_id: &'static str,
    disabled_ou: Option<&'static str>,
}

fn case(idp: IdentityProvider, mbx: MailboxProvider) -> Case {
    use IdentityProvider as I;
    use MailboxProvider as M;
    match (idp, mbx) {
        (I::EntraId, M::ExchangeOnline) => Case {
            world: "contoso",
            psa_company: "174",
            tenant: "8a6f1c2e-3b4d-4e5f-9a0b-1c2d3e4f5a6b",
            domain: "contoso.com",
            trustee: "megan.bowen@contoso.com",
            group: Some("All Staff"),
            sku: "SPB",
            sku_id: "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46",
            disabled_ou: None,
        },
        (I::EntraId | I::OnPremAd, M::ExchangeServer) => Case {
            world: "northwind",
            psa_company: "176",
            tenant: "7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1908",
            domain: "northwindtraders.com",
            trustee: "nancy.davolio@northwindtraders.com",
            group: (idp == I::OnPremAd).then_some("NW-Staff"),
            // A cloud-only user whose mailbox is on Exchange Server gets a licence without
            // Exchange Online (with it, Exchange Online would make a second mailbox).
            sku: "O365_BUSINESS",
            sku_id: "cdd28e44-67e3-425e-be4c-737fab2899d3",
            disabled_ou: (idp == I::OnPremAd)
                .then_some("OU=Leavers,OU=Northwind,DC=northwind,DC=local"),
        },
        _ => Case {
            world: "fabrikam",
            psa_company: "175",
            tenant: "2c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f",
            domain: "fabrikam.com",
            trustee: "bob.smith@fabrikam.com",
            group: (idp == I::Hybrid).then_some("Sales"),
            sku: "SPB",
            sku_id: "cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46",
            disabled_ou: Some("OU=Disabled Users,DC=fabrikam,DC=local"),
        },
    }
}

/// The combinations that cannot work, refused when planned: a tenant's mailbox for users only
/// AD has (nothing synchronises them), and Exchange hybrid for cloud-only users (no AD
/// account for Enable-RemoteMailbox).
fn refused(idp: IdentityProvider, mbx: MailboxProvider) -> bool {
    (idp == IdentityProvider::OnPremAd && mbx != MailboxProvider::ExchangeServer)
        || (idp == IdentityProvider::EntraId && mbx == MailboxProvider::ExchangeHybrid)
}

/// A world whose company `c.world` has providers `idp` × `mbx`, linked to its company in the
/// sandbox's Autotask, whose signed webhooks reach Steward's API: a new-starter ticket (queue 8,
/// issue type 10) starts `onboarding`, a leaver ticket `offboarding`.
async fn combo_world(idp: IdentityProvider, mbx: MailboxProvider, c: &Case) -> Result<World> {
    let nw = c.world == "northwind";
    let mut settings = json!({
        "identity_provider": idp.name(), "mailbox_provider": mbx.name(), "tenant_id": c.tenant,
        "rmm": {"provider": "datto", "site": c.world},
        "defaults": {"usage_location": "US"},
        "psa": {"provider": "autotask", "company_id": c.psa_company},
    });
    if idp != IdentityProvider::EntraId {
        settings["ad_runner"] = json!(if nw { "NW-RUNNER01" } else { "FAB-RUNNER01" });
        settings["defaults"]["ou"] = json!(if nw {
            "OU=Users,OU=Northwind,DC=northwind,DC=local"
        } else {
            "OU=Staff,DC=fabrikam,DC=local"
        });
    }
    if idp == IdentityProvider::Hybrid {
        settings["entra_connect_server"] = json!("FAB-AADC01");
    }
    if mbx != MailboxProvider::ExchangeOnline {
        settings["exchange_server"] = json!(if nw { "NW-EXCH01" } else { "FAB-EXCH01" });
        settings["exchange_runner"] = json!(if nw { "NW-RUNNER01" } else { "FAB-RUNNER01" });
    }
    let companies = vec![world_company(c.world, settings)];
    let fixture = if nw {
        Some(northwind_with_a_tenant()?)
    } else if idp == IdentityProvider::HybridNoSync {
        Some(fabrikam_without_entra_connect()?)
    } else {
        None
    };
    let mut w = World::start_psa(
        companies,
        Duration::from_secs(5),
        steward_sandbox::Options {
            fixture: fixture.as_ref().map(|f| f.path().to_path_buf()),
            ..Default::default()
        },
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows"),
    )
    .await?;
    drop(fixture);
    let (s, b) = w
        .api(
            "PUT",
            "/v1/psa/rules",
            Some(json!({"rules": [
                {"workflow": "offboarding", "provider": "autotask", "queue": ["8"], "title_keywords": ["leaver"], "lifecycle": "offboarding"},
                {"workflow": "onboarding", "provider": "autotask", "queue": ["8"], "issue_type": ["10"], "title_keywords": ["new starter"], "lifecycle": "onboarding"},
            ]})),
        )
        .await?;
    anyhow::ensure!(s == 200, "the rules: {s} {b}");
    let m = m365_support::m365_shared(&w.sb.base_url, &w.env, &w.sink);
    let registry =
        steward_workers::Registry::connected(Some(m), Some(w.onprem(Duration::from_secs(5))));
    w.start_worker_with(registry).await?;
    if nw {
        // Northwind's runner reaches the Exchange server by PowerShell remoting; its Kerberos
        // delegation is set up (the fixture starts without it, for the double-hop test).
        w.admin(
            "POST",
            "/companies/northwind/faults",
            Some(json!({"double_hop_misconfigured": false})),
        )
        .await?;
    }
    Ok(w)
}

/// The state each step of `run` ended in (`succeeded`, `skipped`, …).
/// The user of a sandbox world's tenant (`GET /world/{name}`) whose record mentions `upn`.
fn tenant_user(snap: &Value, upn: &str) -> Option<Value> {
    snap["tenant"]["users"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u.to_string().contains(upn))
        .cloned()
}

async fn step_states(
    w: &World,
    run: steward_schemas::RunId,
) -> Result<std::collections::BTreeMap<String, String>> {
    let snap = w.env.store.load(run).await?.context("run")?;
    Ok(snap
        .doc
        .state
        .steps
        .iter()
        .map(|(id, s)| (id.to_string(), s.state.name().to_owned()))
        .collect())
}

/// Onboards one person for a company of providers `idp` × `mbx` in the sandbox world that has
/// the systems it needs, and checks the user, the licence and the mailbox in the right
/// systems; then offboards them with every option chosen and checks that each item was done,
/// in the order that avoids the known failures.
async fn lifecycle(idp: IdentityProvider, mbx: MailboxProvider) -> Result<()> {
    let c = case(idp, mbx);
    let w = combo_world(idp, mbx, &c).await?;
    let world = c.world;
    let upn = format!("ann.lee@{}", c.domain);
    let mut onboarding = json!({
        "given_name": "Ann", "surname": "Lee", "display_name": "Ann Lee",
        "user_principal_name": upn, "license_sku": c.sku,
    });
    if let Some(g) = c.group {
        onboarding["groups"] = json!([g]);
    }
    let mut lines = vec![
        ("Name", "Ann Lee".to_owned()),
        ("First name", "Ann".to_owned()),
        ("Last name", "Lee".to_owned()),
        ("Email", upn.clone()),
        ("Licence", c.sku.to_owned()),
    ];
    if let Some(g) = c.group {
        lines.push(("Groups", g.to_owned()));
    }
    let (onboarding_ticket, run) = from_ticket(
        &w,
        world,
        "New starter: Ann Lee",
        &lines,
        "onboarding",
        &onboarding,
    )
    .await?;
    drive(&w, run, onboarding_ticket).await?;
    completed(&w, run).await?;
    approved_through_links(&w, run).await?;
    let snap = w.admin("GET", &format!("/world/{world}"), None).await?;
    let ad = if world == "contoso" {
        None
    } else {
        w.ad_user(world, "ann.lee").await?
    };
    if idp != IdentityProvider::EntraId || mbx == MailboxProvider::ExchangeServer {
        let ad = ad.as_ref().context("Ann has an AD account")?;
        assert_eq!(ad["deleted"], false, "{ad}");
    }
    let cloud_user = tenant_user(&snap, &upn);
    if has_cloud(idp, mbx) {
        let u = cloud_user.as_ref().context("Ann is in Entra ID")?;
        assert!(u.to_string().contains(c.sku_id), "licensed: {u}");
    }
    let provisioned = |id: &Value| {
        snap["provisioned_mailboxes"]
            .as_array()
            .is_some_and(|m| m.contains(id))
    };
    match mbx {
        MailboxProvider::ExchangeServer => {
            let ad = ad.as_ref().context("in AD")?;
            assert!(!ad["mailbox"].is_null(), "a mailbox on the server: {ad}");
            if idp == IdentityProvider::EntraId {
                // New-Mailbox made the mailbox's own AD account; Exchange Online made none.
                let changes = w.changes(world).await?;
                assert!(
                    changes
                        .iter()
                        .any(|c| c.starts_with("exchange_server.new_mailbox ")),
                    "{changes:#?}"
                );
                let id = cloud_user.as_ref().context("in Entra ID")?["id"].clone();
                assert!(!provisioned(&id), "no second mailbox in Exchange Online");
                // The mailbox account's password was kept for the technician's one-time link,
                // and reached neither the ledger nor the run's history.
                let (_, secret) = w
                    .sink
                    .read(&format!("{run}/mailbox"))
                    .context("the mailbox account's password was kept")?;
                let ledger = w
                    .admin("GET", &format!("/ledger?company={world}"), None)
                    .await?
                    .to_string();
                assert!(
                    !ledger.contains(secret.expose()),
                    "a password in the ledger"
                );
                assert!(
                    !w.history(run).await?.contains(secret.expose()),
                    "a password in the history"
                );
            }
        }
        MailboxProvider::ExchangeOnline | MailboxProvider::ExchangeHybrid => {
            let id = cloud_user.as_ref().context("in Entra ID")?["id"].clone();
            assert!(
                provisioned(&id),
                "a mailbox in Exchange Online: {}",
                snap["provisioned_mailboxes"]
            );
            if mbx == MailboxProvider::ExchangeHybrid {
                let ad = ad.as_ref().context("in AD")?;
                assert!(
                    !ad["remote_mailbox"].is_null(),
                    "a remote mailbox on premises: {ad}"
                );
            }
        }
    }
    if let (Some(g), Some(ad)) = (c.group, ad.as_ref())
        && idp != IdentityProvider::EntraId
    {
        let group = w.ad_group(world, g).await?;
        assert!(
            group["members"]
                .as_array()
                .is_some_and(|m| m.contains(&ad["object_guid"])),
            "{group}"
        );
    }
    // Ann leaves some time after she started: an hour and a half passes, in ten-minute steps
    // (each settles what became due), long enough for whatever runs on a schedule, such as
    // Entra Connect's half-hourly sync cycle where the company has one, to have run.
    for _ in 0..9 {
        w.admin("POST", "/clock/advance", Some(json!({"seconds": 600})))
            .await?;
    }
    if idp == IdentityProvider::HybridNoSync {
        // Nothing synchronises the company's AD: Ann's cloud account is still her own.
        let snap = w.admin("GET", &format!("/world/{world}"), None).await?;
        let u = tenant_user(&snap, &upn).context("Ann is in Entra ID")?;
        assert!(u["on_prem"].is_null(), "Ann became synced: {u}");
    }
    // An on-prem mailbox with a phone on it, for the mobile-device item.
    if mbx == MailboxProvider::ExchangeServer {
        w.admin(
            "POST",
            &format!("/companies/{world}/faults"),
            Some(json!({"add_mobile_device": "ann.lee"})),
        )
        .await?;
    }

    // Offboarding, every option chosen.
    let mut offboarding = json!({
        "user": upn, "manager": c.trustee, "forward_to": c.trustee,
        "auto_reply": "Ann has left; please write to her manager",
        "license_sku": c.sku,
    });
    let mut lines = vec![
        ("Name", "Ann Lee".to_owned()),
        ("Email", upn.clone()),
        ("Manager", c.trustee.to_owned()),
        ("Forward to", c.trustee.to_owned()),
        (
            "Auto reply",
            "Ann has left; please write to her manager".to_owned(),
        ),
        ("Licence", c.sku.to_owned()),
    ];
    if let Some(g) = c.group {
        offboarding["groups"] = json!([g]);
        lines.push(("Groups", g.to_owned()));
    }
    if let Some(ou) = c.disabled_ou {
        offboarding["disabled_ou"] = json!(ou);
        lines.push(("Disabled OU", ou.to_owned()));
    }
    let onboarding_run = run;
    let (offboarding_ticket, run) = from_ticket(
        &w,
        world,
        "Leaver: Ann Lee",
        &lines,
        "offboarding",
        &offboarding,
    )
    .await?;
    drive(&w, run, offboarding_ticket).await?;
    completed(&w, run).await?;
    approved_through_links(&w, run).await?;
    let states = step_states(&w, run).await?;
    let cloud = has_cloud(idp, mbx);
    let ad_side = idp != IdentityProvider::EntraId;
    // Every chosen item ran (or, where the company has no such system, was left out).
    let mut want_done = vec![
        "block_sign_in",
        "convert_to_shared",
        "manager_access",
        "forwarding",
        "auto_reply",
        "hide_from_gal",
        "mobile_devices",
    ];
    if cloud {
        // The devices are retired once the company's policy gate (which the planner adds before
        // them) is approved.
        want_done.extend([
            "revoke_sessions",
            "remove_mfa",
            "remove_license",
            "policy_approval",
            "retire_devices",
        ]);
    }
    if c.group.is_some() {
        want_done.push("group_1");
    }
    if ad_side {
        want_done.push("move_to_disabled_ou");
    }
    if idp == IdentityProvider::Hybrid {
        want_done.push("delta_sync");
    }
    for s in &want_done {
        assert_eq!(
            states.get(*s).map(String::as_str),
            Some("succeeded"),
            "{s}: {states:?}"
        );
    }
    // In order: the first change blocks sign-in; the mailbox is shared before anything else
    // touches it and before the licence goes; the account moves to the leavers' OU last.
    let steps = changed_steps(&w, run).await?;
    let at = |s: &str| {
        steps
            .iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("{s} changed nothing: {steps:?}"))
    };
    assert_eq!(at("block_sign_in"), 0, "{steps:?}");
    for later in [
        "manager_access",
        "forwarding",
        "auto_reply",
        "hide_from_gal",
    ] {
        assert!(at("convert_to_shared") < at(later), "{later}: {steps:?}");
        if cloud {
            assert!(at(later) < at("remove_license"), "{later}: {steps:?}");
        }
    }
    if cloud {
        assert!(at("revoke_sessions") < at("convert_to_shared"), "{steps:?}");
        assert!(at("convert_to_shared") < at("remove_license"), "{steps:?}");
    }
    if ad_side {
        assert_eq!(
            steps
                .iter()
                .rfind(|s| *s != "delta_sync")
                .map(String::as_str),
            Some("move_to_disabled_ou"),
            "{steps:?}"
        );
    }
    // And the directories say so.
    if ad_side || mbx == MailboxProvider::ExchangeServer {
        let ad = w.ad_user(world, "ann.lee").await?.context("Ann is in AD")?;
        if ad_side {
            assert_eq!(ad["enabled"], false, "{ad}");
            assert_eq!(ad["parent"], c.disabled_ou.unwrap_or_default(), "{ad}");
        }
        if mbx == MailboxProvider::ExchangeServer {
            let m = &ad["mailbox"];
            assert_eq!(m["kind"], "SharedMailbox", "{ad}");
            assert_eq!(m["hidden_from_address_lists"], true, "{ad}");
            assert_eq!(m["auto_reply"]["state"], "Enabled", "{ad}");
            assert_eq!(m["deliver_to_mailbox_and_forward"], true, "{ad}");
            assert_eq!(m["full_access"].as_array().map(Vec::len), Some(1), "{ad}");
            assert_eq!(
                m["mobile_devices"].as_array().map(Vec::len),
                Some(0),
                "{ad}"
            );
        }
        if let Some(g) = c.group
            && ad_side
        {
            let group = w.ad_group(world, g).await?;
            assert!(
                group["members"]
                    .as_array()
                    .is_some_and(|m| !m.contains(&ad["object_guid"])),
                "{group}"
            );
        }
    }
    if cloud {
        let snap = w.admin("GET", &format!("/world/{world}"), None).await?;
        let u = tenant_user(&snap, &upn).context("Ann is still in Entra ID")?;
        assert!(!u.to_string().contains(c.sku_id), "unlicensed: {u}");
    }
    // Each ticket says it is done, naming its run; no note holds a secret.
    for (ticket, run) in [
        (onboarding_ticket, onboarding_run),
        (offboarding_ticket, run),
    ] {
        let done = w.note(ticket, "Steward: done").await?;
        assert!(done.to_string().contains(&run.to_string()), "{done}");
    }
    notes_keep_secrets(&w, &[onboarding_ticket, offboarding_ticket]).await?;
    Ok(())
}

/// Creates a ticket titled `title` for `company` in the sandbox's Autotask, its description the
/// labelled `lines`; its signed webhook reaches Steward's API, whose rules start `workflow` with
/// the ticket's inputs (checked against `want`). Returns the ticket and the run.
async fn from_ticket(
    w: &World,
    company: &str,
    title: &str,
    lines: &[(&str, String)],
    workflow: &str,
    want: &Value,
) -> Result<(i64, steward_schemas::RunId)> {
    let mut description = String::from("Hello helpdesk,\n");
    for (label, value) in lines {
        description.push_str(&format!("{label}: {value}\n"));
    }
    description.push_str("Thanks");
    let ticket = w.ticket(company, title, &description).await?;
    let intake = w.intake(ticket, "started").await?;
    assert_eq!(intake["workflow"], workflow, "{intake}");
    for (k, v) in want.as_object().context("inputs")? {
        assert_eq!(&intake["inputs"][k], v, "input {k}: {intake}");
    }
    let run: steward_schemas::RunId = intake["run"]
        .as_str()
        .with_context(|| format!("no run in {intake}"))?
        .parse()?;
    let (s, view) = w.api("GET", &format!("/v1/runs/{run}"), None).await?;
    assert_eq!(s, 200, "{view}");
    assert_eq!(
        view["summary"]["ticket"]["id"],
        ticket.to_string(),
        "{view}"
    );
    Ok((ticket, run))
}

/// Every gate of `run` was decided through a signed link from a ticket note.
async fn approved_through_links(w: &World, run: steward_schemas::RunId) -> Result<()> {
    let snap = w.env.store.load(run).await?.context("run")?;
    let mut gates = 0;
    for (step, s) in &snap.doc.state.steps {
        if let steward_schemas::StepState::Succeeded { output, .. } = &s.state
            && let Some(approvals) = output.get("approvals").and_then(Value::as_array)
        {
            gates += 1;
            assert!(
                approvals.iter().all(|a| a["via"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("link (issued by steward (psa note))"))),
                "{step}: {output}"
            );
        }
    }
    assert!(gates >= 1, "no gate in {run}");
    Ok(())
}

/// No note on `tickets` holds a secret: a password the workers kept for its one-time link (the
/// link may be there, never the password), the webhook key, the PSA's or Microsoft 365's
/// credentials.
async fn notes_keep_secrets(w: &World, tickets: &[i64]) -> Result<()> {
    let mut secrets: Vec<(String, String)> = w
        .sink
        .keys()
        .into_iter()
        .filter_map(|k| {
            w.sink
                .read(&k)
                .map(|(_, s)| (format!("the password kept as {k}"), s.expose().to_owned()))
        })
        .collect();
    assert!(!secrets.is_empty(), "the new starter's password was kept");
    for (what, s) in [
        ("the webhook key", onprem_support::HOOK_SECRET),
        ("the Autotask API secret", onprem_support::AUTOTASK_SECRET),
        (
            "the Autotask integration code",
            onprem_support::AUTOTASK_CODE,
        ),
        ("the Microsoft 365 app secret", m365_support::CLIENT_SECRET),
        ("the partner's refresh token", m365_support::PARTNER_RT),
    ] {
        secrets.push((what.to_owned(), s.to_owned()));
    }
    let mut notes = Vec::new();
    for t in tickets {
        notes.extend(w.notes(*t).await?);
    }
    assert!(notes.len() >= 2 * tickets.len(), "{notes:#?}");
    let text = serde_json::to_string(&notes)?;
    for (what, s) in &secrets {
        assert!(!text.contains(s.as_str()), "{what} is in a ticket note");
    }
    Ok(())
}

/// A combination that cannot work is refused when the run is planned (nothing starts, nothing
/// changes), with a message that names the providers and the fix; `POST /v1/plans` shows the
/// same problem on the steps concerned. From a ticket: the webhook starts no run, the intake is
/// recorded as refused with the problem, and the ticket's note names the fix.
async fn refused_up_front(idp: IdentityProvider, mbx: MailboxProvider) -> Result<()> {
    let c = case(idp, mbx);
    let w = combo_world(idp, mbx, &c).await?;
    let id = c.world;
    let world_before = w.admin("GET", &format!("/world/{id}"), None).await?;
    let changes = |ledger: &Value| -> Vec<Value> {
        ledger["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["service"] != "autotask")
            .cloned()
            .collect()
    };
    let ledger_before = changes(&w.admin("GET", "/ledger", None).await?);
    let inputs = json!({
        "given_name": "Jane", "surname": "Doe", "display_name": "Jane Doe",
        "user_principal_name": format!("jane.doe@{}", c.domain),
    });
    let (status, plan) = w
        .api(
            "POST",
            "/v1/plans",
            Some(json!({"workflow": "onboarding", "company": id, "inputs": inputs})),
        )
        .await?;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["routable"], false, "{plan}");
    let mailbox = step(&plan, "mailbox")?;
    let problem = mailbox["problem"].as_str().unwrap_or_default();
    let providers = format!("identity {}, mailbox {}", idp.name(), mbx.name());
    assert!(
        problem.contains(&providers) && problem.contains("fix: set "),
        "{problem}"
    );
    for (flow, inputs) in [
        ("onboarding", inputs.clone()),
        (
            "offboarding",
            json!({"user": inputs["user_principal_name"]}),
        ),
    ] {
        let (status, body) = w
            .api(
                "POST",
                "/v1/runs",
                Some(json!({"workflow": flow, "company": id, "inputs": inputs})),
            )
            .await?;
        assert_eq!(status, 422, "{flow}: {body}");
        let text = body.to_string();
        assert!(
            text.contains("nothing was started")
                && text.contains("fix")
                && (text.contains("hybrid_no_sync") || text.contains("exchange_online")),
            "{flow}: {text}"
        );
    }
    // The same requests as tickets: refused, recorded, and the ticket told the fix.
    let upn = format!("jane.doe@{}", c.domain);
    for (title, description) in [
        (
            "New starter: Jane Doe",
            format!("Name: Jane Doe\nFirst name: Jane\nLast name: Doe\nEmail: {upn}\n"),
        ),
        (
            "Leaver: Jane Doe",
            format!("Name: Jane Doe\nEmail: {upn}\n"),
        ),
    ] {
        let ticket = w.ticket(id, title, &description).await?;
        let intake = w.intake(ticket, "refused").await?;
        assert!(intake["run"].is_null(), "{intake}");
        let problem = intake["problem"].as_str().unwrap_or_default();
        assert!(
            problem.contains(&providers) && problem.contains("fix: set "),
            "{title}: {intake}"
        );
        let note = w.note(ticket, "Steward: could not start").await?;
        let text = note["description"].as_str().unwrap_or_default();
        assert!(
            text.contains(&providers) && text.contains("fix: set "),
            "{title}: {note}"
        );
        assert!(
            w.notes(ticket)
                .await?
                .iter()
                .all(|n| n["title"] == "Steward: could not start"),
            "{title}: only the refusal was written"
        );
    }
    let (_, runs) = w.api("GET", "/v1/runs", None).await?;
    assert!(
        !runs.to_string().contains(&format!("\"{id}\"")),
        "no run was created: {runs}"
    );
    // Nothing changed in the sandbox but the notes on the tickets.
    assert_eq!(
        changes(&w.admin("GET", "/ledger", None).await?),
        ledger_before,
        "the sandbox's ledger"
    );
    let world_after = w.admin("GET", &format!("/world/{id}"), None).await?;
    for part in ["tenant", "ad"] {
        assert_eq!(world_after[part], world_before[part], "{part}");
    }
    Ok(())
}

macro_rules! combos {
    ($($name:ident: $idp:ident, $mbx:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<()> {
            let (idp, mbx) = (IdentityProvider::$idp, MailboxProvider::$mbx);
            if refused(idp, mbx) {
                refused_up_front(idp, mbx).await
            } else {
                lifecycle(idp, mbx).await
            }
        }
    )*};
}

combos! {
    lifecycle_entra_id_exchange_online: EntraId, ExchangeOnline;
    lifecycle_entra_id_exchange_server: EntraId, ExchangeServer;
    refused_entra_id_exchange_hybrid: EntraId, ExchangeHybrid;
    refused_on_prem_ad_exchange_online: OnPremAd, ExchangeOnline;
    lifecycle_on_prem_ad_exchange_server: OnPremAd, ExchangeServer;
    refused_on_prem_ad_exchange_hybrid: OnPremAd, ExchangeHybrid;
    lifecycle_hybrid_exchange_online: Hybrid, ExchangeOnline;
    lifecycle_hybrid_exchange_server: Hybrid, ExchangeServer;
    lifecycle_hybrid_exchange_hybrid: Hybrid, ExchangeHybrid;
    lifecycle_hybrid_no_sync_exchange_online: HybridNoSync, ExchangeOnline;
    lifecycle_hybrid_no_sync_exchange_server: HybridNoSync, ExchangeServer;
    lifecycle_hybrid_no_sync_exchange_hybrid: HybridNoSync, ExchangeHybrid;
}
