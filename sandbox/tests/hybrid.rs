//! The hybrid world end to end: a Datto quick job runs Steward's runner on a simulated agent,
//! which fetches the script, applies the op to AD / Entra Connect / Exchange Server and posts
//! the result back; sync timing, mailbox provisioning delay, and the on-prem failure modes.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use serde_json::{Value, json};

const PASSWORD: &str = "Str0ng!Passw0rd-77";

fn new_ad_user(sam: &str, upn: &str) -> Value {
    json!({
        "sam_account_name": sam,
        "user_principal_name": upn,
        "path": "OU=Staff,DC=fabrikam,DC=local",
        "password": PASSWORD,
        "given_name": "Jane",
        "surname": "Doe",
        "display_name": "Jane Doe",
        "title": "Sales Executive",
        "department": "Sales",
        "manager": "bsmith",
    })
}

async fn find_synced(g: &Graph, sam: &str) -> Result<Vec<Value>> {
    let (s, b) = g
        .call(
            "GET",
            &format!("/users?$filter=onPremisesSamAccountName%20eq%20'{sam}'&$select=id,userPrincipalName,onPremisesSyncEnabled,onPremisesSamAccountName,onPremisesImmutableId,jobTitle"),
            None,
        )
        .await?;
    anyhow::ensure!(s == 200, "{b}");
    Ok(b["value"].as_array().cloned().unwrap_or_default())
}

/// Checks a runner result (callback body) is a failure of `category` whose stderr says
/// `stderr` (when given).
fn assert_op_failed(r: &Value, category: &str, stderr: Option<&str>) {
    assert_eq!(
        (r["status"].as_str(), r["exit_code"].as_i64()),
        (Some("failure"), Some(1)),
        "{r}"
    );
    assert_eq!(r["error"]["category"], category, "{r}");
    if let Some(text) = stderr {
        let got = r["stderr"].as_str().unwrap_or_default();
        assert!(got.contains(text), "stderr {got:?} lacks {text:?}: {r}");
    }
}

#[tokio::test]
async fn quick_job_round_trip_and_sync_timing() -> Result<()> {
    let sb = sandbox().await?;
    let host = Host::start().await?;
    let datto = Datto::new(&sb).await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;

    host.host.put_script(
        "new-user",
        script(
            "ad.new_user@1",
            &new_ad_user("jdoe", "jane.doe@fabrikam.com"),
        ),
    );
    let (s, _) = admin(&sb, "POST", "/jobs/hold", None).await?;
    assert_eq!(s, 200);
    let job = datto
        .runner_job(FAB_RUNNER, &host, "new-user", Some("run_H/ad_create/1"))
        .await?;
    let (s, j) = datto.call("GET", &format!("/job/{job}"), None).await?;
    assert_eq!((s, j["status"].as_str()), (200, Some("active")));
    let (_, r) = datto
        .call("GET", &format!("/job/{job}/results/{FAB_RUNNER}"), None)
        .await?;
    assert_eq!(r["jobDeploymentStatus"], "Pending");
    assert!(
        host.host.all("/callbacks/new-user").is_empty(),
        "held jobs must not run"
    );
    assert_eq!(admin(&sb, "POST", "/jobs/release", None).await?.0, 200);
    datto.wait_job(&job).await?;

    let cb = host
        .host
        .wait("/callbacks/new-user", Duration::from_secs(10))
        .await?;
    assert_eq!(cb.authorization.as_deref(), Some("Bearer job-token-7f3a"));
    let body: Value = serde_json::from_slice(&cb.body)?;
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["exit_code"], 0);
    assert_eq!(body["job_uid"], job.as_str());
    assert_eq!(body["device_uid"], FAB_RUNNER);
    assert_eq!(body["hostname"], "FAB-RUNNER01");
    assert_eq!(body["result"]["SamAccountName"], "jdoe");
    assert_eq!(
        body["result"]["DistinguishedName"],
        "CN=Jane Doe,OU=Staff,DC=fabrikam,DC=local"
    );
    assert!(body["error"].is_null());
    for k in ["stdout", "stderr", "started_at", "finished_at"] {
        assert!(body.get(k).is_some(), "{k} missing: {body}");
    }

    // The same outcome through the Datto API.
    let (_, r) = datto
        .call("GET", &format!("/job/{job}/results/{FAB_RUNNER}"), None)
        .await?;
    assert_eq!(r["jobDeploymentStatus"], "Success");
    assert_eq!(r["componentResults"][0]["componentStatus"], "Success");
    assert_eq!(r["componentResults"][0]["hasStdOut"], true);
    assert_eq!(r["componentResults"][0]["hasStdErr"], false);
    let (_, out) = datto
        .call(
            "GET",
            &format!("/job/{job}/results/{FAB_RUNNER}/stdout"),
            None,
        )
        .await?;
    assert!(
        out[0]["stdData"]
            .as_str()
            .unwrap()
            .contains("steward-op ad.new_user@1")
    );

    // Ledger: the quick job and the AD change, both correlated; no password anywhere.
    let entries = ledger(&sb).await?;
    let qj = entries
        .iter()
        .find(|e| e["action"] == "datto.quickjob")
        .unwrap();
    assert_eq!(qj["details"]["variables"][2]["value"], "[redacted]");
    let ad = entries
        .iter()
        .find(|e| e["action"] == "ad.new_user")
        .unwrap();
    assert_eq!(
        (
            ad["service"].as_str(),
            ad["run"].as_str(),
            ad["step"].as_str()
        ),
        (Some("runner"), Some("run_H"), Some("ad_create"))
    );
    assert_eq!(ad["attempt"], 1);
    assert_eq!(ad["company"], "fabrikam");
    let (_, world) = admin(&sb, "GET", "/world/fabrikam", None).await?;
    let (_, jobs) = admin(&sb, "GET", "/jobs", None).await?;
    for text in [
        serde_json::to_string(&entries)?,
        world.to_string(),
        jobs.to_string(),
    ] {
        assert!(!text.contains(PASSWORD), "password leaked");
        assert!(!text.contains(JOB_TOKEN), "job token leaked");
    }

    // Not in Entra until a sync cycle has run.
    assert!(find_synced(&g, "jdoe").await?.is_empty());
    let start = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "sync-1",
            "adsync.start_delta@1",
            json!({}),
        )
        .await?;
    assert_eq!(start["status"], "success", "{start}");
    assert_eq!(start["result"]["Result"], "Success");
    let busy = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "sync-2",
            "adsync.start_delta@1",
            json!({}),
        )
        .await?;
    assert_eq!(busy["status"], "failure");
    assert_eq!(busy["exit_code"], 1);
    assert_op_failed(&busy, "sync_busy", Some("AAD is busy"));
    let status = datto
        .run_op(FAB_RUNNER, &host, "sync-3", "adsync.status@1", json!({}))
        .await?;
    assert_eq!(status["result"]["SyncCycleInProgress"], true);
    assert!(
        find_synced(&g, "jdoe").await?.is_empty(),
        "mid-cycle: not yet exported"
    );

    advance(&sb, 121).await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let found = find_synced(&g, "jdoe").await?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["onPremisesSyncEnabled"], true);
    assert_eq!(found[0]["userPrincipalName"], "jane.doe@fabrikam.com");
    assert_eq!(found[0]["jobTitle"], "Sales Executive");
    assert!(
        !found[0]["onPremisesImmutableId"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    // The manager link came across too.
    let (s, m) = g
        .call("GET", "/users/jane.doe@fabrikam.com/manager", None)
        .await?;
    assert_eq!(
        (s, m["userPrincipalName"].as_str()),
        (200, Some("bob.smith@fabrikam.com"))
    );
    Ok(())
}

#[tokio::test]
async fn remote_mailbox_appears_in_exchange_online_only_after_provisioning() -> Result<()> {
    let sb = sandbox().await?;
    let host = Host::start().await?;
    let datto = Datto::new(&sb).await?;
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "u",
            "ad.new_user@1",
            new_ad_user("jdoe", "jane.doe@fabrikam.com"),
        )
        .await?;
    assert_eq!(r["status"], "success", "{r}");
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "rm",
            "exchange_server.enable_remote_mailbox@1",
            json!({"identity": "jdoe"}),
        )
        .await?;
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["result"]["RecipientTypeDetails"], "RemoteUserMailbox");
    assert_eq!(
        r["result"]["RemoteRoutingAddress"],
        "SMTP:jdoe@fabrikam.mail.onmicrosoft.com"
    );
    datto
        .run_op(FAB_RUNNER, &host, "s", "adsync.start_delta@1", json!({}))
        .await?;
    advance(&sb, 121).await?;

    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let id = find_synced(&g, "jdoe").await?[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = g
        .call(
            "PATCH",
            &format!("/users/{id}"),
            Some(json!({"usageLocation": "US"})),
        )
        .await?;
    assert_eq!(s, 204);
    let (_, skus) = g.call("GET", "/subscribedSkus", None).await?;
    let sku = skus["value"][0]["skuId"].as_str().unwrap().to_owned();
    let (s, b) = g
        .call(
            "POST",
            &format!("/users/{id}/assignLicense"),
            Some(
                json!({"addLicenses": [{"skuId": sku, "disabledPlans": []}], "removeLicenses": []}),
            ),
        )
        .await?;
    assert_eq!(s, 200, "{b}");

    let exo = Exo::new(&sb, FABRIKAM_TENANT).await?;
    let (s, b) = exo
        .run("Get-Mailbox", json!({"Identity": "jane.doe@fabrikam.com"}))
        .await?;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"]["message"], "Error executing cmdlet", "{b}");
    assert!(
        b["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|")
    );
    assert!(b["error"].get("innererror").is_none(), "{b}");

    advance(&sb, 601).await?;
    let exo = Exo::new(&sb, FABRIKAM_TENANT).await?;
    let (s, b) = exo
        .run("Get-Mailbox", json!({"Identity": "jane.doe@fabrikam.com"}))
        .await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["value"][0]["RecipientTypeDetails"], "UserMailbox");
    assert_eq!(b["value"][0]["IsDirSynced"], true);
    assert_eq!(b["value"][0]["ExternalDirectoryObjectId"], id.as_str());

    // Hiding a synced user from the GAL must happen on-prem.
    let (s, b) = exo
        .run(
            "Set-Mailbox",
            json!({"Identity": "jdoe", "HiddenFromAddressListsEnabled": true}),
        )
        .await?;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("synchronized from your on-premises organization")
    );
    let r = datto
        .run_op(FAB_RUNNER, &host, "hide", "exchange_server.set_remote_mailbox@1", json!({"identity": "jdoe", "hidden_from_address_lists_enabled": true, "type": "Shared"}))
        .await?;
    assert_eq!(r["status"], "success", "{r}");
    datto
        .run_op(FAB_RUNNER, &host, "s2", "adsync.start_delta@1", json!({}))
        .await?;
    advance(&sb, 121).await?;
    let exo = Exo::new(&sb, FABRIKAM_TENANT).await?;
    let (_, b) = exo.run("Get-Mailbox", json!({"Identity": "jdoe"})).await?;
    assert_eq!(b["value"][0]["HiddenFromAddressListsEnabled"], true);
    assert_eq!(b["value"][0]["RecipientTypeDetails"], "SharedMailbox");
    Ok(())
}

#[tokio::test]
async fn on_prem_failure_modes() -> Result<()> {
    let sb = sandbox().await?;
    let host = Host::start().await?;
    let datto = Datto::new(&sb).await?;

    let dup = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "dup",
            "ad.new_user@1",
            new_ad_user("ckim", "other@fabrikam.com"),
        )
        .await?;
    assert_eq!(
        (dup["status"].as_str(), dup["error"]["category"].as_str()),
        (Some("failure"), Some("already_exists"))
    );
    assert!(
        dup["stderr"]
            .as_str()
            .unwrap()
            .contains("The specified account already exists")
    );

    // A password the domain refuses leaves a disabled account behind, as New-ADUser does.
    let mut weak = new_ad_user("weak1", "weak1@fabrikam.com");
    weak["password"] = json!("short");
    let r = datto
        .run_op(FAB_RUNNER, &host, "weak", "ad.new_user@1", weak)
        .await?;
    assert_op_failed(&r, "password_policy", None);
    let got = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "weak-get",
            "ad.get_user@1",
            json!({"identity": "weak1"}),
        )
        .await?;
    assert_eq!(got["result"]["Enabled"], false);
    assert!(
        ledger(&sb)
            .await?
            .iter()
            .any(|e| e["action"] == "ad.new_user" && e["details"]["sam_account_name"] == "weak1")
    );

    // Scripts that don't say what they are, or carry a bad payload, are refused.
    host.host
        .put_script("nohdr", "New-ADUser -Name evil\n".to_owned());
    let job = datto.runner_job(FAB_RUNNER, &host, "nohdr", None).await?;
    datto.wait_job(&job).await?;
    let cb: Value = serde_json::from_slice(
        &host
            .host
            .wait("/callbacks/nohdr", Duration::from_secs(10))
            .await?
            .body,
    )?;
    assert_op_failed(&cb, "script_refused", Some("steward-op"));
    let r = datto
        .run_op(FAB_RUNNER, &host, "unk", "ad.format_c@1", json!({}))
        .await?;
    assert_op_failed(&r, "script_refused", None);
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "v2",
            "ad.get_user@9",
            json!({"identity": "ckim"}),
        )
        .await?;
    assert_op_failed(&r, "script_refused", None);
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "extra",
            "ad.get_user@1",
            json!({"identity": "ckim", "rm_rf": true}),
        )
        .await?;
    assert_op_failed(&r, "invalid_payload", None);
    assert!(r["error"]["message"].as_str().unwrap().contains("rm_rf"));
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "typed",
            "ad.set_enabled@1",
            json!({"identity": "ckim", "enabled": "no"}),
        )
        .await?;
    assert_op_failed(&r, "invalid_payload", None);
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "nf",
            "ad.get_user@1",
            json!({"identity": "nobody"}),
        )
        .await?;
    assert_op_failed(
        &r,
        "not_found",
        Some("Cannot find an object with identity: 'nobody'"),
    );

    // A script URL that doesn't answer fails the job without guessing.
    let job = datto
        .runner_job(FAB_RUNNER, &host, "missing-script", None)
        .await?;
    datto.wait_job(&job).await?;
    let cb: Value = serde_json::from_slice(
        &host
            .host
            .wait("/callbacks/missing-script", Duration::from_secs(10))
            .await?
            .body,
    )?;
    assert_op_failed(&cb, "script_fetch_failed", Some("404"));

    // Kerberos double hop: Exchange cmdlets from the runner fail, on the Exchange server work.
    let (s, _) = admin(
        &sb,
        "POST",
        "/companies/fabrikam/faults",
        Some(json!({"double_hop_misconfigured": true})),
    )
    .await?;
    assert_eq!(s, 200);
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "dh",
            "exchange_server.enable_remote_mailbox@1",
            json!({"identity": "weak1"}),
        )
        .await?;
    assert_op_failed(&r, "double_hop", Some("The supplied credential is invalid"));
    let r = datto
        .run_op(
            FAB_EXCH,
            &host,
            "dh-ok",
            "exchange_server.enable_remote_mailbox@1",
            json!({"identity": "weak1"}),
        )
        .await?;
    assert_eq!(r["status"], "success", "{r}");
    // Northwind's fixture has no delegation at all.
    let r = datto
        .run_op(
            NW_RUNNER,
            &host,
            "nw",
            "exchange_server.enable_mailbox@1",
            json!({"identity": "nancy.d"}),
        )
        .await?;
    assert_op_failed(&r, "double_hop", None);

    // WinRM to the DC unreachable.
    let (s, b) = admin(
        &sb,
        "POST",
        "/companies/fabrikam/faults",
        Some(json!({"winrm_unreachable": true})),
    )
    .await?;
    assert_eq!(
        (s, b["winrm_unreachable"].as_bool()),
        (200, Some(true)),
        "{b}"
    );
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "winrm",
            "ad.get_user@1",
            json!({"identity": "ckim"}),
        )
        .await?;
    assert_op_failed(
        &r,
        "winrm_unreachable",
        Some("WinRM cannot complete the operation"),
    );
    // Naming the wrong server is unreachable too.
    let (s, b) = admin(
        &sb,
        "POST",
        "/companies/fabrikam/faults",
        Some(json!({"winrm_unreachable": false})),
    )
    .await?;
    assert_eq!(
        (s, b["winrm_unreachable"].as_bool()),
        (200, Some(false)),
        "{b}"
    );
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "srv",
            "ad.get_user@1",
            json!({"identity": "ckim", "server": "DC99"}),
        )
        .await?;
    assert_op_failed(&r, "winrm_unreachable", None);
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "srv-ok",
            "ad.get_user@1",
            json!({"identity": "ckim", "server": "DC01.fabrikam.local"}),
        )
        .await?;
    assert_eq!(r["status"], "success", "{r}");
    Ok(())
}

#[tokio::test]
async fn ad_ops_change_the_forest_and_sync_carries_the_changes() -> Result<()> {
    let sb = sandbox().await?;
    let host = Host::start().await?;
    let datto = Datto::new(&sb).await?;
    let ok = |v: &Value| assert_eq!(v["status"], "success", "{v}");
    ok(&datto
        .run_op(
            FAB_RUNNER,
            &host,
            "dis",
            "ad.set_enabled@1",
            json!({"identity": "chris.kim@fabrikam.com", "enabled": false}),
        )
        .await?);
    ok(&datto
        .run_op(
            FAB_RUNNER,
            &host,
            "pw",
            "ad.reset_password@1",
            json!({"identity": "ckim", "password": "N3w!Passw0rd"}),
        )
        .await?);
    let mv = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "mv",
            "ad.move_object@1",
            json!({"identity": "ckim", "target_path": "OU=Disabled Users,DC=fabrikam,DC=local"}),
        )
        .await?;
    ok(&mv);
    assert_eq!(
        mv["result"]["previous_parent"],
        "OU=Staff,DC=fabrikam,DC=local"
    );
    let rm = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "grp",
            "ad.remove_group_member@1",
            json!({"group": "Sales", "member": "ckim"}),
        )
        .await?;
    ok(&rm);
    assert_eq!(rm["result"]["changed"], true);
    let again = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "grp2",
            "ad.remove_group_member@1",
            json!({"group": "Sales", "member": "ckim"}),
        )
        .await?;
    assert_op_failed(&again, "not_member", None);
    let add = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "grp3",
            "ad.add_group_member@1",
            json!({"group": "VPN Users", "member": "bsmith"}),
        )
        .await?;
    assert_eq!(
        add["result"]["changed"], false,
        "already a member: quietly idempotent"
    );
    ok(&datto
        .run_op(
            FAB_RUNNER,
            &host,
            "mgr",
            "ad.set_manager@1",
            json!({"identity": "ckim", "manager": null}),
        )
        .await?);

    datto
        .run_op(FAB_RUNNER, &host, "sync", "adsync.start_delta@1", json!({}))
        .await?;
    advance(&sb, 121).await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let (_, u) = g
        .call(
            "GET",
            "/users/chris.kim@fabrikam.com?$select=accountEnabled,onPremisesDistinguishedName",
            None,
        )
        .await?;
    assert_eq!(u["accountEnabled"], false);
    assert_eq!(
        u["onPremisesDistinguishedName"],
        "CN=Chris Kim,OU=Disabled Users,DC=fabrikam,DC=local"
    );
    let (s, _) = g
        .call("GET", "/users/chris.kim@fabrikam.com/manager", None)
        .await?;
    assert_eq!(s, 404);
    let (_, groups) = g
        .call("GET", "/groups?$filter=displayName%20eq%20'Sales'", None)
        .await?;
    let gid = groups["value"][0]["id"].as_str().unwrap().to_owned();
    let (_, members) = g
        .call(
            "GET",
            &format!("/groups/{gid}/members?$select=userPrincipalName"),
            None,
        )
        .await?;
    let upns: Vec<&str> = members["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["userPrincipalName"].as_str())
        .collect();
    assert_eq!(upns, vec!["bob.smith@fabrikam.com"]);

    // Removing the AD user soft-deletes the Entra user at the next sync.
    ok(&datto
        .run_op(
            FAB_RUNNER,
            &host,
            "del",
            "ad.remove_user@1",
            json!({"identity": "ckim"}),
        )
        .await?);
    datto
        .run_op(
            FAB_RUNNER,
            &host,
            "sync2",
            "adsync.start_delta@1",
            json!({}),
        )
        .await?;
    advance(&sb, 121).await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let (s, _) = g.call("GET", "/users/chris.kim@fabrikam.com", None).await?;
    assert_eq!(s, 404);
    let (_, del) = g
        .call(
            "GET",
            "/directory/deletedItems/microsoft.graph.user?$select=userPrincipalName",
            None,
        )
        .await?;
    assert_eq!(
        del["value"][0]["userPrincipalName"],
        "chris.kim@fabrikam.com"
    );
    Ok(())
}

#[tokio::test]
async fn offline_devices_keep_jobs_waiting() -> Result<()> {
    let sb = sandbox().await?;
    let host = Host::start().await?;
    let datto = Datto::new(&sb).await?;
    let (_, d) = datto
        .call("GET", &format!("/device/{FAB_OFFLINE}"), None)
        .await?;
    assert_eq!(d["online"], false);
    host.host.put_script(
        "off",
        script("ad.get_user@1", &json!({"identity": "bsmith"})),
    );
    let job = datto.runner_job(FAB_OFFLINE, &host, "off", None).await?;
    // A job on an online device created later still runs; the offline one waits.
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "on",
            "ad.get_user@1",
            json!({"identity": "bsmith"}),
        )
        .await?;
    assert_eq!(r["status"], "success");
    let (_, j) = datto.call("GET", &format!("/job/{job}"), None).await?;
    assert_eq!(j["status"], "active");
    assert!(host.host.all("/callbacks/off").is_empty());
    let (s, _) = admin(&sb, "POST", &format!("/devices/{FAB_OFFLINE}/online"), None).await?;
    assert_eq!(s, 200);
    datto.wait_job(&job).await?;
    let cb: Value = serde_json::from_slice(
        &host
            .host
            .wait("/callbacks/off", Duration::from_secs(10))
            .await?
            .body,
    )?;
    assert_eq!(cb["result"]["SamAccountName"], "bsmith");
    let (s, _) = admin(&sb, "POST", "/devices/nope/offline", None).await?;
    assert_eq!(s, 404);
    Ok(())
}

/// The same seed and the same calls give the same ids, jobs and ledger.
async fn scripted_run(seed: u64) -> Result<Vec<Value>> {
    let sb = sandbox_with(steward_sandbox::Options {
        seed,
        ..steward_sandbox::Options::default()
    })
    .await?;
    let host = Host::start().await?;
    let datto = Datto::new(&sb).await?;
    datto
        .run_op(
            FAB_RUNNER,
            &host,
            "a",
            "ad.new_user@1",
            new_ad_user("det1", "det1@fabrikam.com"),
        )
        .await?;
    datto
        .run_op(FAB_RUNNER, &host, "b", "adsync.start_delta@1", json!({}))
        .await?;
    advance(&sb, 121).await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let (_, u) = g
        .call("POST", "/users", Some(json!({"accountEnabled": true, "displayName": "D", "mailNickname": "d", "userPrincipalName": "d@fabrikam.com", "passwordProfile": {"password": "Sandbox!Pass123"}})))
        .await?;
    let synced = find_synced(&g, "det1").await?;
    let (_, jobs) = admin(&sb, "GET", "/jobs", None).await?;
    let mut out = vec![
        u["id"].clone(),
        synced[0]["id"].clone(),
        synced[0]["onPremisesImmutableId"].clone(),
    ];
    for j in jobs["jobs"].as_array().unwrap() {
        out.push(j["uid"].clone());
        out.push(j["id"].clone());
    }
    for e in ledger(&sb).await? {
        out.push(json!([e["seq"], e["action"], e["target"], e["duplicate"]]));
    }
    Ok(out)
}

#[tokio::test]
async fn runs_are_deterministic_under_the_seed() -> Result<()> {
    let a = scripted_run(11).await?;
    assert_eq!(a, scripted_run(11).await?);
    assert_ne!(a, scripted_run(12).await?);
    Ok(())
}

#[tokio::test]
async fn sync_overwrites_cloud_edits_of_a_changed_ad_user() -> Result<()> {
    let sb = sandbox().await?;
    let host = Host::start().await?;
    let datto = Datto::new(&sb).await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    // Blocking sign-in in the cloud works for a synced user...
    let (s, _) = g
        .call(
            "PATCH",
            "/users/bob.smith@fabrikam.com",
            Some(json!({"accountEnabled": false})),
        )
        .await?;
    assert_eq!(s, 204);
    // ...an unrelated sync leaves it alone (Bob's AD object didn't change)...
    datto
        .run_op(FAB_RUNNER, &host, "s1", "adsync.start_delta@1", json!({}))
        .await?;
    advance(&sb, 121).await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let (_, u) = g
        .call(
            "GET",
            "/users/bob.smith@fabrikam.com?$select=accountEnabled",
            None,
        )
        .await?;
    assert_eq!(u["accountEnabled"], false);
    // ...but once the AD object changes, the next sync writes AD's `enabled` back.
    let r = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "mgr",
            "ad.set_manager@1",
            json!({"identity": "bsmith", "manager": "ckim"}),
        )
        .await?;
    assert_eq!(r["status"], "success", "{r}");
    datto
        .run_op(FAB_RUNNER, &host, "s2", "adsync.start_delta@1", json!({}))
        .await?;
    advance(&sb, 121).await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let (_, u) = g
        .call(
            "GET",
            "/users/bob.smith@fabrikam.com?$select=accountEnabled",
            None,
        )
        .await?;
    assert_eq!(u["accountEnabled"], true, "disable synced users on-prem");
    Ok(())
}
