//! Exchange Online's InvokeCommand endpoint: the cmdlets offboarding uses and their errors.

mod common;

use anyhow::Result;
use common::*;
use serde_json::{Value, json};

/// The exception type: from `details[0].message` (`ExNNNNNN|<type>|<text>`), as the real
/// service gives it, else from the inner error.
fn exception(b: &Value) -> String {
    b["error"]["details"][0]["message"]
        .as_str()
        .and_then(|m| m.split('|').nth(1))
        .or_else(|| b["error"]["innererror"]["internalexception"]["type"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn mailbox_settings_permissions_and_auto_reply() -> Result<()> {
    let sb = sandbox().await?;
    let exo = Exo::new(&sb, CONTOSO_TENANT)
        .await?
        .correlated("run_X/exo/1");
    let (s, b) = exo
        .run(
            "Get-Mailbox",
            json!({"Identity": "adele.vance@contoso.com"}),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    assert!(
        b["@odata.context"]
            .as_str()
            .unwrap()
            .contains("$metadata#Collection(Exchange.GenericHashTable)")
    );
    assert!(b["@adminapi.warnings"].is_array());
    assert_eq!(b["value"][0]["RecipientTypeDetails"], "UserMailbox");
    assert_eq!(b["value"][0]["Alias"], "adele.vance");

    let (s, _) = exo
        .run("Set-Mailbox", json!({"Identity": "adele.vance", "Type": "Shared", "ForwardingAddress": "megan.bowen@contoso.com", "DeliverToMailboxAndForward": true}))
        .await?;
    assert_eq!(s, 200);
    let (s, b) = exo
        .run("Set-Mailbox", json!({"Identity": "adele.vance", "GrantSendOnBehalfTo": {"@odata.type": "#Exchange.GenericHashTable", "add": "megan.bowen@contoso.com"}}))
        .await?;
    assert_eq!(s, 200, "{b}");
    let (_, b) = exo
        .run("Get-Mailbox", json!({"Identity": "adele.vance"}))
        .await?;
    let m = &b["value"][0];
    assert_eq!(m["RecipientTypeDetails"], "SharedMailbox");
    assert_eq!(m["ForwardingAddress"], "megan.bowen");
    assert_eq!(m["DeliverToMailboxAndForward"], true);
    assert_eq!(m["GrantSendOnBehalfTo"], json!(["megan.bowen"]));
    // The same setting again changes nothing and says so.
    let (_, b) = exo
        .run(
            "Set-Mailbox",
            json!({"Identity": "adele.vance", "Type": "Shared"}),
        )
        .await?;
    assert!(
        b["@adminapi.warnings"][0]
            .as_str()
            .unwrap()
            .contains("no settings")
    );
    let (_, _) = exo
        .run("Set-Mailbox", json!({"Identity": "adele.vance", "GrantSendOnBehalfTo": {"remove": ["megan.bowen@contoso.com"]}, "ForwardingAddress": null}))
        .await?;
    let (_, b) = exo
        .run("Get-Mailbox", json!({"Identity": "adele.vance"}))
        .await?;
    assert_eq!(b["value"][0]["GrantSendOnBehalfTo"], json!([]));
    assert!(b["value"][0]["ForwardingAddress"].is_null());

    let (s, b) = exo
        .run("Add-MailboxPermission", json!({"Identity": "adele.vance", "User": "megan.bowen@contoso.com", "AccessRights": ["FullAccess"], "InheritanceType": "All", "AutoMapping": false}))
        .await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["value"][0]["AccessRights"], json!(["FullAccess"]));
    let (s, b) = exo
        .run("Add-MailboxPermission", json!({"Identity": "adele.vance", "User": "megan.bowen@contoso.com", "AccessRights": "FullAccess"}))
        .await?;
    assert_eq!(s, 200);
    assert_eq!(b["@adminapi.warnings"].as_array().unwrap().len(), 1);
    let (_, b) = exo
        .run("Get-MailboxPermission", json!({"Identity": "adele.vance"}))
        .await?;
    assert_eq!(b["value"].as_array().unwrap().len(), 1);
    let (s, _) = exo
        .run("Remove-MailboxPermission", json!({"Identity": "adele.vance", "User": "megan.bowen", "AccessRights": "FullAccess", "Confirm": false}))
        .await?;
    assert_eq!(s, 200);
    let (s, _) = exo
        .run("Add-RecipientPermission", json!({"Identity": "adele.vance", "Trustee": "megan.bowen", "AccessRights": "SendAs", "Confirm": false}))
        .await?;
    assert_eq!(s, 200);
    let (_, b) = exo
        .run(
            "Get-RecipientPermission",
            json!({"Identity": "adele.vance"}),
        )
        .await?;
    assert_eq!(b["value"][0]["Trustee"], "megan.bowen@contoso.com");
    let (s, _) = exo
        .run(
            "Remove-RecipientPermission",
            json!({"Identity": "adele.vance", "Trustee": "megan.bowen", "AccessRights": "SendAs"}),
        )
        .await?;
    assert_eq!(s, 200);

    let (s, b) = exo
        .run("Set-MailboxAutoReplyConfiguration", json!({"Identity": "adele.vance", "AutoReplyState": "Enabled", "InternalMessage": "<p>Adele has left</p>", "ExternalMessage": "<p>Gone</p>", "ExternalAudience": "All"}))
        .await?;
    assert_eq!(s, 200, "{b}");
    let (_, b) = exo
        .run(
            "Get-MailboxAutoReplyConfiguration",
            json!({"Identity": "adele.vance"}),
        )
        .await?;
    assert_eq!(b["value"][0]["AutoReplyState"], "Enabled");
    let (s, b) = exo
        .run(
            "Set-MailboxAutoReplyConfiguration",
            json!({"Identity": "adele.vance", "AutoReplyState": "Sometimes"}),
        )
        .await?;
    assert_eq!(s, 400);
    assert_eq!(
        exception(&b),
        "System.Management.Automation.ParameterBindingException"
    );

    let entries = ledger(&sb).await?;
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "exo.set_mailbox",
        "exo.add_mailbox_permission",
        "exo.remove_mailbox_permission",
        "exo.add_recipient_permission",
        "exo.set_auto_reply",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["action"] == "exo.add_mailbox_permission")
            .count(),
        1,
        "the repeat changed nothing"
    );
    assert!(entries.iter().all(|e| e["run"] == "run_X"));
    Ok(())
}

#[tokio::test]
async fn mobile_devices_and_distribution_groups() -> Result<()> {
    let sb = sandbox().await?;
    let exo = Exo::new(&sb, CONTOSO_TENANT)
        .await?
        .correlated("run_X/exo/1");
    let (s, b) = exo
        .run(
            "Get-MobileDevice",
            json!({"Mailbox": "adele.vance@contoso.com"}),
        )
        .await?;
    assert_eq!(s, 200);
    let dev = b["value"][0]["Identity"].as_str().unwrap().to_owned();
    assert!(dev.starts_with("adele.vance\\ExchangeActiveSyncDevices\\"));
    let (s, _) = exo
        .run(
            "Remove-MobileDevice",
            json!({"Identity": dev, "Confirm": false}),
        )
        .await?;
    assert_eq!(s, 200);
    let (s, b) = exo
        .run("Remove-MobileDevice", json!({"Identity": dev}))
        .await?;
    // A missing object: 404 NotFound "Error executing cmdlet", the type only in the details.
    assert_eq!(s, 404);
    assert_eq!(b["error"]["code"], "NotFound");
    assert_eq!(b["error"]["message"], "Error executing cmdlet");
    assert!(b["error"].get("innererror").is_none(), "{b}");
    assert_eq!(
        exception(&b),
        "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
    );

    let (s, b) = exo
        .run("Add-DistributionGroupMember", json!({"Identity": "Sales DL", "Member": "megan.bowen@contoso.com", "BypassSecurityGroupManagerCheck": true}))
        .await?;
    assert_eq!(s, 200, "{b}");
    let (s, b) = exo
        .run(
            "Add-DistributionGroupMember",
            json!({"Identity": "sales", "Member": "megan.bowen"}),
        )
        .await?;
    assert_eq!(s, 400);
    assert_eq!(
        exception(&b),
        "Microsoft.Exchange.Management.Tasks.MemberAlreadyExistsException"
    );
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MemberAlreadyExistsException")
    );
    let (_, b) = exo
        .run(
            "Get-DistributionGroupMember",
            json!({"Identity": "Sales DL"}),
        )
        .await?;
    assert_eq!(b["value"].as_array().unwrap().len(), 2);
    let (s, _) = exo
        .run(
            "Remove-DistributionGroupMember",
            json!({"Identity": "Sales DL", "Member": "megan.bowen", "Confirm": false}),
        )
        .await?;
    assert_eq!(s, 200);
    let (s, b) = exo
        .run(
            "Remove-DistributionGroupMember",
            json!({"Identity": "Sales DL", "Member": "megan.bowen"}),
        )
        .await?;
    assert_eq!(s, 400);
    assert_eq!(
        exception(&b),
        "Microsoft.Exchange.Management.Tasks.MemberNotFoundException"
    );
    // A security group without mail is no Exchange recipient.
    let (s, b) = exo
        .run(
            "Add-DistributionGroupMember",
            json!({"Identity": "Retail Team", "Member": "megan.bowen"}),
        )
        .await?;
    assert_eq!(s, 404);
    assert_eq!(
        exception(&b),
        "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
    );
    Ok(())
}

#[tokio::test]
async fn new_users_have_no_recipient_until_provisioned() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (_, u) = g
        .call(
            "POST",
            "/users",
            Some(json!({"accountEnabled": true, "displayName": "New Hire", "mailNickname": "new.hire", "userPrincipalName": "new.hire@contoso.com",
                        "usageLocation": "GB", "passwordProfile": {"password": "Sandbox!Pass123"}})),
        )
        .await?;
    let id = u["id"].as_str().unwrap().to_owned();
    let (_, skus) = g.call("GET", "/subscribedSkus", None).await?;
    let sku = skus["value"][0]["skuId"].as_str().unwrap().to_owned();
    g.call(
        "POST",
        &format!("/users/{id}/assignLicense"),
        Some(json!({"addLicenses": [{"skuId": sku}], "removeLicenses": []})),
    )
    .await?;
    let exo = Exo::new(&sb, CONTOSO_TENANT)
        .await?
        .correlated("run_X/exo/1");
    let (s, b) = exo
        .run(
            "Add-DistributionGroupMember",
            json!({"Identity": "Sales DL", "Member": "new.hire@contoso.com"}),
        )
        .await?;
    assert_eq!(s, 404);
    assert_eq!(
        exception(&b),
        "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
    );
    let (s, _) = exo
        .run("Get-Mailbox", json!({"Identity": "new.hire@contoso.com"}))
        .await?;
    assert_eq!(s, 404);
    advance(&sb, 299).await?;
    let exo = Exo::new(&sb, CONTOSO_TENANT)
        .await?
        .correlated("run_X/exo/1");
    let (s, _) = exo
        .run("Get-Mailbox", json!({"Identity": "new.hire"}))
        .await?;
    assert_eq!(s, 404, "still provisioning at 299 s of 300");
    advance(&sb, 2).await?;
    let (s, _) = exo
        .run("Get-Mailbox", json!({"Identity": "new.hire"}))
        .await?;
    assert_eq!(s, 200);
    let (s, _) = exo
        .run(
            "Add-DistributionGroupMember",
            json!({"Identity": "Sales DL", "Member": "new.hire@contoso.com"}),
        )
        .await?;
    assert_eq!(s, 200);
    Ok(())
}

#[tokio::test]
async fn malformed_requests_get_exchange_errors() -> Result<()> {
    let sb = sandbox().await?;
    let exo = Exo::new(&sb, CONTOSO_TENANT)
        .await?
        .correlated("run_X/exo/1");
    let (s, b) = exo.run("Format-Mailbox", json!({})).await?;
    assert_eq!(s, 400);
    assert_eq!(
        exception(&b),
        "System.Management.Automation.CommandNotFoundException"
    );
    let (s, b) = exo
        .run(
            "Get-Mailbox",
            json!({"Identity": "adele.vance", "Colour": "blue"}),
        )
        .await?;
    // An unknown parameter: 400 BadRequest "Invalid Operation".
    assert_eq!(s, 400);
    assert_eq!(b["error"]["message"], "Invalid Operation");
    assert_eq!(
        exception(&b),
        "System.Management.Automation.AmbiguousParameterSetException"
    );
    assert!(
        b["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("'Colour'")
    );
    let (s, b) = exo.run("Set-Mailbox", json!({"Type": "Shared"})).await?;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing mandatory parameters: Identity")
    );
    let (s, _) = exo
        .run(
            "Set-Mailbox",
            json!({"Identity": "adele.vance", "HiddenFromAddressListsEnabled": "perhaps"}),
        )
        .await?;
    assert_eq!(s, 400);
    let r = client()
        .post(&exo.url)
        .bearer_auth(&exo.token)
        .body("nope")
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await?;
    assert!(b["error"]["message"].is_string());
    let r = client().post(&exo.url).json(&json!({})).send().await?;
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{}/outlook/whatever", sb.base_url))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await?;
    assert!(b["error"]["code"].is_string());
    // A cloud-only user may be hidden from the GAL in the cloud.
    let (s, _) = exo
        .run(
            "Set-Mailbox",
            json!({"Identity": "adele.vance", "HiddenFromAddressListsEnabled": true}),
        )
        .await?;
    assert_eq!(s, 200);
    Ok(())
}
