//! The on-prem ops offboarding and account upkeep use, through the engine against the sandbox's
//! Datto agent (issue 10): `Set-ADUser`, `Unlock-ADAccount`, copying and listing a user's
//! groups, and the Exchange Server mailbox cmdlets (`Enable-Mailbox`, `Set-Mailbox -Type`,
//! Full Access, Send As, Send on Behalf, forwarding, automatic replies, address-list
//! visibility, mobile devices). Each runs forward and, when a later step fails, its inverse;
//! forward twice changes things once (the effect ledger); directly on the servers and from a
//! runner by PowerShell remoting.

mod onprem_support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use onprem_support::{World, company};
use serde_json::json;
use steward_schemas::{RunStatus, StepState};

const FLOW: &str = r#"
name: onprem_mailbox
inputs:
  upn: {type: string}
  name: {type: string}
  fail: {type: boolean, default: false}
defaults: {on_failure: rollback, retry: {attempts: 2, initial: 50ms, max_delay: 100ms}}
steps:
  - {id: create, op: user.create, with: {user_principal_name: "${{ inputs.upn }}", display_name: "${{ inputs.name }}", given_name: Grace, surname: Test}}
  - {id: update, op: user.update, needs: [create], with: {user: "${{ inputs.upn }}", attributes: {company: Fabrikam, office: HQ, department: Sales}}}
  - {id: copy, op: group.copy_memberships, needs: [create], with: {user: "${{ inputs.upn }}", template: bsmith}}
  - {id: list, op: group.list_memberships, needs: [copy], with: {user: "${{ inputs.upn }}"}}
  - {id: mailbox, op: mailbox.create, needs: [create], with: {user: "${{ inputs.upn }}"}}
  - {id: shared, op: mailbox.convert_to_shared, needs: [mailbox], with: {user: "${{ inputs.upn }}"}}
  - {id: full, op: mailbox.grant_access, needs: [shared], with: {mailbox: "${{ inputs.upn }}", trustee: bsmith, rights: full_access}}
  - {id: send_as, op: mailbox.grant_access, needs: [shared], with: {mailbox: "${{ inputs.upn }}", trustee: ckim, rights: send_as}}
  - {id: behalf, op: mailbox.grant_access, needs: [shared], with: {mailbox: "${{ inputs.upn }}", trustee: ckim, rights: send_on_behalf}}
  - {id: forward, op: mailbox.set_forwarding, needs: [shared], with: {user: "${{ inputs.upn }}", to: "bob.smith@fabrikam.com", keep_copy: true}}
  - {id: reply, op: mailbox.set_auto_reply, needs: [shared], with: {user: "${{ inputs.upn }}", message: "Grace has left."}}
  - {id: hide, op: mailbox.hide_from_gal, needs: [shared], with: {user: "${{ inputs.upn }}"}}
  - {id: check, op: fail, needs: [update, list, full, send_as, behalf, forward, reply, hide], when: "${{ inputs.fail }}", with: {message: "HR cancelled"}}
"#;

/// Ops whose change cannot be undone or needs none, run in their own workflow.
const UPKEEP: &str = r#"
name: onprem_upkeep
inputs: {upn: {type: string}}
defaults: {retry: {attempts: 2, initial: 50ms, max_delay: 100ms}}
steps:
  - {id: unlock, op: user.unlock, with: {user: "${{ inputs.upn }}"}}
  - {id: phones, op: mobile_device.remove, needs: [unlock], with: {user: "${{ inputs.upn }}"}}
"#;

fn fab(id: &str, ad_runner: &str, exchange_runner: Option<&str>) -> steward_schemas::Company {
    company(
        id,
        json!({
            "identity_provider": "on_prem_ad",
            "mailbox_provider": "exchange_server",
            "ad_runner": ad_runner,
            "exchange_server": "FAB-EXCH01",
            "exchange_runner": exchange_runner,
            "rmm": {"provider": "datto", "site": "fabrikam"},
            "defaults": {"ou": "OU=Staff,DC=fabrikam,DC=local"},
        }),
    )
}

fn completed(s: &RunStatus) -> bool {
    matches!(s, RunStatus::Completed { failed, .. } if failed.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_and_account_ops_run_forward_and_back_once_direct_and_via_a_runner() -> Result<()> {
    let w = World::start(
        vec![
            fab("fab-direct", "FAB-DC01", None),
            fab("fab-runner", "FAB-RUNNER01", Some("FAB-RUNNER01")),
        ],
        Duration::from_secs(5),
    )
    .await?;
    for (company, sam) in [
        ("fab-direct", "grace.direct"),
        ("fab-runner", "grace.runner"),
    ] {
        let upn = format!("{sam}@fabrikam.com");
        let before = w.changes("fabrikam").await?.len();

        // Forward, then a later step fails: every change is undone through its inverse.
        let run = w
            .run(
                FLOW,
                company,
                json!({"upn": upn, "name": sam, "fail": true}),
            )
            .await?;
        let status = w.end(run).await?;
        assert!(
            matches!(status, RunStatus::RolledBack { .. }),
            "{company}: {status:?}\n{}",
            w.history(run).await?
        );
        let changes = w.changes("fabrikam").await?[before..].to_vec();
        let count = |action: &str| {
            changes
                .iter()
                .filter(|c| c.starts_with(&format!("{action} ")))
                .count()
        };
        // Forward and back: the same template with the prior state, or its inverse template.
        for (action, times) in [
            ("ad.set_user", 2),
            ("exchange_server.set_mailbox_type", 2),
            ("exchange_server.set_send_on_behalf", 2),
            ("exchange_server.set_forwarding", 2),
            ("exchange_server.set_auto_reply", 2),
            ("exchange_server.set_hidden_from_gal", 2),
            ("exchange_server.add_mailbox_permission", 1),
            ("exchange_server.remove_mailbox_permission", 1),
            ("exchange_server.add_send_as", 1),
            ("exchange_server.remove_send_as", 1),
            ("exchange_server.enable_mailbox", 1),
            ("exchange_server.disable_mailbox", 1),
            ("ad.new_user", 1),
            ("ad.remove_user", 1),
        ] {
            assert_eq!(count(action), times, "{company}: {action} in {changes:#?}");
        }
        // bsmith's groups (Sales, VPN Users) were copied, then taken away again.
        assert_eq!(count("ad.add_group_member"), 2, "{changes:#?}");
        assert_eq!(count("ad.remove_group_member"), 2, "{changes:#?}");
        let made = w.ad_user("fabrikam", sam).await?.context("created")?;
        assert_eq!(made["deleted"], true, "{company}: {made}");
        for g in ["Sales", "VPN Users"] {
            let group = w.ad_group("fabrikam", g).await?;
            assert!(
                group["members"]
                    .as_array()
                    .is_some_and(|m| !m.contains(&made["object_guid"])),
                "{company}: still in {g}: {group}"
            );
        }

        // Forward for real, then again: the second run changes nothing.
        let run = w
            .run(FLOW, company, json!({"upn": upn, "name": sam}))
            .await?;
        let status = w.end(run).await?;
        assert!(
            completed(&status),
            "{company}: {status:?}\n{}",
            w.history(run).await?
        );
        let user = w.ad_user("fabrikam", sam).await?.context("user")?;
        let m = &user["mailbox"];
        assert_eq!(m["kind"], "SharedMailbox", "{user}");
        assert_eq!(m["hidden_from_address_lists"], true, "{user}");
        assert_eq!(m["auto_reply"]["state"], "Enabled", "{user}");
        assert_eq!(m["deliver_to_mailbox_and_forward"], true, "{user}");
        for k in ["full_access", "send_as", "send_on_behalf"] {
            assert_eq!(m[k].as_array().map(Vec::len), Some(1), "{k}: {user}");
        }
        assert_eq!(user["attributes"]["company"], "Fabrikam", "{user}");
        assert_eq!(user["department"], "Sales", "{user}");
        let snap = w.env.store.load(run).await?.context("run")?;
        let StepState::Succeeded { output, .. } = &snap.doc.state.steps["list"].state else {
            panic!("list did not succeed");
        };
        let groups = output.to_string();
        assert!(
            groups.contains("CN=Sales,") && groups.contains("CN=VPN Users,"),
            "{output}"
        );
        let after_first = w.changes("fabrikam").await?.len();
        let run2 = w
            .run(FLOW, company, json!({"upn": upn, "name": sam}))
            .await?;
        let status = w.end(run2).await?;
        assert!(
            completed(&status),
            "{company}: {status:?}\n{}",
            w.history(run2).await?
        );
        assert_eq!(
            w.changes("fabrikam").await?.len(),
            after_first,
            "{company}: the second run changed something: {:#?}",
            &w.changes("fabrikam").await?[after_first..]
        );

        // Unlock (a lockout the sandbox sets) and the phone partnerships: once, then nothing.
        w.admin(
            "POST",
            "/companies/fabrikam/faults",
            Some(json!({"lock_out": sam, "add_mobile_device": sam})),
        )
        .await?;
        let before = w.changes("fabrikam").await?.len();
        let run = w.run(UPKEEP, company, json!({"upn": upn})).await?;
        let status = w.end(run).await?;
        assert!(completed(&status), "{status:?}\n{}", w.history(run).await?);
        let changes = w.changes("fabrikam").await?[before..].to_vec();
        assert_eq!(
            changes
                .iter()
                .map(|c| c.split(' ').next().unwrap_or_default())
                .collect::<Vec<_>>(),
            ["ad.unlock", "exchange_server.remove_mobile_device"],
            "{changes:#?}"
        );
        let user = w.ad_user("fabrikam", sam).await?.context("user")?;
        assert_eq!(user["locked_out"], false, "{user}");
        let n = w.changes("fabrikam").await?.len();
        let run = w.run(UPKEEP, company, json!({"upn": upn})).await?;
        assert!(completed(&w.end(run).await?));
        assert_eq!(
            w.changes("fabrikam").await?.len(),
            n,
            "a repeat changed something"
        );
    }
    Ok(())
}
