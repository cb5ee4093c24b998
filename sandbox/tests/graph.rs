//! Microsoft Graph v1.0 over real HTTP: users, licences, groups, devices, roles, deleted items,
//! `$batch`, query options, and Graph's error envelope and codes.

mod common;

use anyhow::Result;
use common::*;
use serde_json::{Value, json};

fn new_user(upn: &str) -> Value {
    json!({
        "accountEnabled": true,
        "displayName": "Jane Doe",
        "mailNickname": upn.split('@').next().unwrap(),
        "userPrincipalName": upn,
        "givenName": "Jane",
        "surname": "Doe",
        "passwordProfile": {"forceChangePasswordNextSignIn": true, "password": "Sandbox!Pass123"},
    })
}

/// Calls `method path` with `body` and checks the answer is `status` with Graph's error
/// envelope carrying `code`; returns the body.
async fn expect_error(
    g: &Graph,
    method: &str,
    path: &str,
    body: Option<Value>,
    status: u16,
    code: &str,
) -> Result<Value> {
    let (s, b) = g.call(method, path, body).await?;
    assert_eq!(s, status, "{method} {path}: {b}");
    assert_envelope(&b, code);
    Ok(b)
}

fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    let inner = &body["error"]["innerError"];
    for k in ["date", "request-id", "client-request-id"] {
        assert!(inner[k].is_string(), "innerError.{k} missing in {body}");
    }
}

#[tokio::test]
async fn create_get_update_and_conflicts() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, created) = g
        .call_with(
            "POST",
            "/users",
            Some(new_user("jane.doe@contoso.com")),
            Some("run_01JD/create_user/1"),
        )
        .await?;
    assert_eq!(s, 201, "{created}");
    assert!(
        created["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$metadata#users/$entity")
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["userPrincipalName"], "jane.doe@contoso.com");
    assert!(created.get("passwordProfile").is_none());

    let dup = expect_error(
        &g,
        "POST",
        "/users",
        Some(new_user("Jane.Doe@contoso.com")),
        400,
        "Request_BadRequest",
    )
    .await?;
    assert_eq!(
        dup["error"]["message"],
        "Another object with the same value for property userPrincipalName already exists."
    );
    assert_eq!(dup["error"]["details"][0]["code"], "ObjectConflict");
    assert_eq!(dup["error"]["details"][0]["target"], "userPrincipalName");

    for missing in [
        "mailNickname",
        "passwordProfile",
        "displayName",
        "accountEnabled",
    ] {
        let mut body = new_user("x1@contoso.com");
        body.as_object_mut().unwrap().remove(missing);
        let (s, b) = g.call("POST", "/users", Some(body)).await?;
        assert_eq!(s, 400, "{missing}: {b}");
        assert_eq!(
            b["error"]["message"],
            format!("Invalid value specified for property '{missing}' of resource 'User'.")
        );
    }
    let (s, b) = g
        .call("POST", "/users", Some(new_user("x@notverified.com")))
        .await?;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("verified domain")
    );
    let mut weak = new_user("weak@contoso.com");
    weak["passwordProfile"]["password"] = json!("password");
    let (s, b) = g.call("POST", "/users", Some(weak)).await?;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("complexity")
    );
    let mut wrong_type = new_user("wt@contoso.com");
    wrong_type["accountEnabled"] = json!("yes");
    let (s, _) = g.call("POST", "/users", Some(wrong_type)).await?;
    assert_eq!(s, 400);

    // Invalid JSON gets Graph's envelope, not a plain-text rejection.
    let r = g
        .http
        .post(format!("{}/users", g.base))
        .bearer_auth(&g.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await?;
    assert_envelope(&b, "BadRequest");

    let (s, b) = g
        .call(
            "PATCH",
            &format!("/users/{id}"),
            Some(json!({"jobTitle": "Sales Executive", "usageLocation": "GB"})),
        )
        .await?;
    assert_eq!((s, b), (204, Value::Null));
    let (s, b) = g
        .call(
            "GET",
            "/users/jane.doe@contoso.com?$select=id,jobTitle,usageLocation,accountEnabled",
            None,
        )
        .await?;
    assert_eq!(s, 200);
    assert_eq!(b["jobTitle"], "Sales Executive");
    assert_eq!(b["usageLocation"], "GB");
    assert_eq!(b["accountEnabled"], true);
    assert!(b.get("displayName").is_none(), "$select must project: {b}");

    let (s, b) = g
        .call(
            "PATCH",
            &format!("/users/{id}"),
            Some(json!({"accountEnabled": false})),
        )
        .await?;
    assert_eq!((s, b), (204, Value::Null));
    expect_error(
        &g,
        "GET",
        "/users/00000000-0000-4000-8000-000000000000",
        None,
        404,
        "Request_ResourceNotFound",
    )
    .await?;
    let (s, b) = g
        .call(
            "PATCH",
            &format!("/users/{id}"),
            Some(json!({"favouriteColour": "blue"})),
        )
        .await?;
    assert_eq!(s, 400, "{b}");

    // The ledger saw the create with its correlation, and nothing for the refused calls.
    let entries = ledger(&sb).await?;
    let create = entries
        .iter()
        .find(|e| e["action"] == "user.create")
        .unwrap();
    assert_eq!(create["run"], "run_01JD");
    assert_eq!(create["step"], "create_user");
    assert_eq!(create["attempt"], 1);
    assert_eq!(create["company"], "contoso");
    assert_eq!(
        create["details"]["passwordProfile"]["password"],
        "[redacted]"
    );
    assert!(!serde_json::to_string(&entries)?.contains("Sandbox!Pass123"));
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["action"] == "user.create")
            .count(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn filters_select_and_paging() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, b) = g
        .call(
            "GET",
            "/users?$filter=userPrincipalName%20eq%20'adele.vance@contoso.com'",
            None,
        )
        .await?;
    assert_eq!(s, 200);
    assert_eq!(b["value"].as_array().unwrap().len(), 1);
    assert_eq!(b["value"][0]["displayName"], "Adele Vance");
    // Default properties only, without $select.
    assert!(b["value"][0].get("accountEnabled").is_none());
    assert!(b["value"][0].get("id").is_some());

    expect_error(
        &g,
        "GET",
        "/users?$filter=jobTitle%20eq%20'x'",
        None,
        400,
        "Request_UnsupportedQuery",
    )
    .await?;
    expect_error(
        &g,
        "GET",
        "/users?$filter=userPrincipalName%20eq%20'unterminated",
        None,
        400,
        "BadRequest",
    )
    .await?;
    let (s, _) = g.call("GET", "/users?$select=nope", None).await?;
    assert_eq!(s, 400);
    let (s, _) = g.call("GET", "/users?$top=1000", None).await?;
    assert_eq!(s, 400);

    // Page through all users two at a time following @odata.nextLink.
    let mut seen = Vec::new();
    let mut next = Some(format!(
        "{}/users?$top=2&$select=id,userPrincipalName",
        g.base
    ));
    let mut pages = 0;
    while let Some(url) = next {
        let (s, b) = g.call("GET", &url, None).await?;
        assert_eq!(s, 200, "{b}");
        pages += 1;
        for u in b["value"].as_array().unwrap() {
            seen.push(u["userPrincipalName"].as_str().unwrap().to_owned());
        }
        next = b["@odata.nextLink"].as_str().map(str::to_owned);
        assert!(pages < 10);
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(pages, 2);

    // Synced users can be found by sAMAccountName in the hybrid tenant.
    let fg = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let (s, b) = fg
        .call(
            "GET",
            "/users?$filter=onPremisesSamAccountName%20eq%20'ckim'&$select=id,onPremisesSyncEnabled,onPremisesSamAccountName,onPremisesImmutableId,userPrincipalName",
            None,
        )
        .await?;
    assert_eq!(s, 200);
    let u = &b["value"][0];
    assert_eq!(u["onPremisesSyncEnabled"], true);
    assert_eq!(u["userPrincipalName"], "chris.kim@fabrikam.com");
    assert!(u["onPremisesImmutableId"].as_str().unwrap().ends_with("=="));
    Ok(())
}

#[tokio::test]
async fn synced_users_refuse_cloud_edits_of_mastered_attributes() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let upn = "chris.kim@fabrikam.com";
    let b = expect_error(
        &g,
        "PATCH",
        &format!("/users/{upn}"),
        Some(json!({"jobTitle": "VP"})),
        400,
        "Request_BadRequest",
    )
    .await?;
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("on-premises mastered")
    );
    let (s, _) = g
        .call(
            "PATCH",
            &format!("/users/{upn}"),
            Some(json!({"passwordProfile": {"password": "Another!Pass1"}})),
        )
        .await?;
    assert_eq!(s, 400);
    let (s, _) = g.call("DELETE", &format!("/users/{upn}"), None).await?;
    assert_eq!(s, 400);
    // accountEnabled and usageLocation stay cloud-writable.
    let (s, _) = g
        .call(
            "PATCH",
            &format!("/users/{upn}"),
            Some(json!({"accountEnabled": false})),
        )
        .await?;
    assert_eq!(s, 204);
    // Groups synced from AD can't be changed in the cloud either.
    let (_, groups) = g
        .call("GET", "/groups?$filter=displayName%20eq%20'Sales'", None)
        .await?;
    let gid = groups["value"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(groups["value"][0]["onPremisesSyncEnabled"], true);
    let (_, admin_user) = g
        .call("GET", "/users/admin@fabrikam.onmicrosoft.com", None)
        .await?;
    let (s, b) = g
        .call(
            "POST",
            &format!("/groups/{gid}/members/$ref"),
            Some(json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{}", admin_user["id"].as_str().unwrap())})),
        )
        .await?;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("on-premises mastered")
    );
    Ok(())
}

async fn user_id(g: &Graph, upn: &str) -> Result<String> {
    let (s, b) = g.call("GET", &format!("/users/{upn}"), None).await?;
    anyhow::ensure!(s == 200, "{upn}: {b}");
    Ok(b["id"].as_str().unwrap().to_owned())
}

fn directory_object(id: &str) -> Value {
    json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}")})
}

#[tokio::test]
async fn manager_groups_and_member_of() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let megan = user_id(&g, "megan.bowen@contoso.com").await?;
    let (_, created) = g
        .call("POST", "/users", Some(new_user("new.starter@contoso.com")))
        .await?;
    let new = created["id"].as_str().unwrap().to_owned();

    let (s, _) = g
        .call("GET", &format!("/users/{new}/manager"), None)
        .await?;
    assert_eq!(s, 404);
    let (s, _) = g
        .call(
            "PUT",
            &format!("/users/{new}/manager/$ref"),
            Some(json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/users/{megan}")})),
        )
        .await?;
    assert_eq!(s, 204);
    let (s, m) = g
        .call("GET", &format!("/users/{new}/manager"), None)
        .await?;
    assert_eq!((s, m["id"].as_str()), (200, Some(megan.as_str())));
    let (s, b) = g
        .call(
            "PUT",
            &format!("/users/{new}/manager/$ref"),
            Some(json!({"@odata.id": "nonsense"})),
        )
        .await?;
    assert_eq!(s, 400, "{b}");

    let (_, groups) = g.call("GET", "/groups", None).await?;
    let find = |name: &str| {
        groups["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["displayName"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (retail, dl, dynamic) = (
        find("Retail Team"),
        find("Sales DL"),
        find("All Users (dynamic)"),
    );
    let (s, _) = g
        .call(
            "POST",
            &format!("/groups/{retail}/members/$ref"),
            Some(directory_object(&new)),
        )
        .await?;
    assert_eq!(s, 204);
    let (s, b) = g
        .call(
            "POST",
            &format!("/groups/{retail}/members/$ref"),
            Some(directory_object(&new)),
        )
        .await?;
    assert_eq!(s, 400);
    assert_eq!(
        b["error"]["message"],
        "One or more added object references already exist for the following modified properties: 'members'."
    );
    let (s, b) = g
        .call(
            "POST",
            &format!("/groups/{dl}/members/$ref"),
            Some(directory_object(&new)),
        )
        .await?;
    assert_eq!(s, 400);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mail-enabled")
    );
    let (s, _) = g
        .call(
            "POST",
            &format!("/groups/{dynamic}/members/$ref"),
            Some(directory_object(&new)),
        )
        .await?;
    assert_eq!(s, 400);
    expect_error(
        &g,
        "POST",
        &format!("/groups/{retail}/members/$ref"),
        Some(directory_object("00000000-0000-4000-8000-000000000000")),
        404,
        "Request_ResourceNotFound",
    )
    .await?;

    let (s, b) = g
        .call("GET", &format!("/users/{new}/memberOf"), None)
        .await?;
    assert_eq!(s, 200);
    let names: Vec<&str> = b["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["displayName"].as_str())
        .collect();
    assert_eq!(names, vec!["Retail Team"]);
    assert_eq!(b["value"][0]["@odata.type"], "#microsoft.graph.group");
    // The selection CIPP-style tooling uses to triage memberships.
    let (s, b) = g
        .call(
            "GET",
            &format!("/users/{new}/memberOf/microsoft.graph.group?$select=id,displayName,groupTypes,mailEnabled,securityEnabled,onPremisesSyncEnabled,membershipRule,assignedLicenses"),
            None,
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["value"][0]["assignedLicenses"], json!([]));
    assert!(b["@odata.context"].as_str().unwrap().contains("#groups("));

    let (s, _) = g
        .call(
            "DELETE",
            &format!("/groups/{retail}/members/{new}/$ref"),
            None,
        )
        .await?;
    assert_eq!(s, 204);
    let (s, _) = g
        .call(
            "DELETE",
            &format!("/groups/{retail}/members/{new}/$ref"),
            None,
        )
        .await?;
    assert_eq!(s, 404);
    let (s, _) = g
        .call("DELETE", &format!("/users/{new}/manager/$ref"), None)
        .await?;
    assert_eq!(s, 204);
    Ok(())
}

#[tokio::test]
async fn licences_seats_and_usage_location() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, skus) = g.call("GET", "/subscribedSkus", None).await?;
    assert_eq!(s, 200);
    let spb = skus["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["skuPartNumber"] == "SPB")
        .unwrap();
    assert_eq!(spb["prepaidUnits"]["enabled"], 5);
    assert_eq!(spb["consumedUnits"], 2);
    let spb_id = spb["skuId"].as_str().unwrap().to_owned();
    let ess = skus["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["skuPartNumber"] == "O365_BUSINESS_ESSENTIALS")
        .unwrap();
    let ess_id = ess["skuId"].as_str().unwrap().to_owned();

    let (_, created) = g
        .call("POST", "/users", Some(new_user("lic.test@contoso.com")))
        .await?;
    let id = created["id"].as_str().unwrap().to_owned();
    let add = |sku: &str| json!({"addLicenses": [{"skuId": sku, "disabledPlans": []}], "removeLicenses": []});

    let (s, b) = g
        .call(
            "POST",
            &format!("/users/{id}/assignLicense"),
            Some(json!({"addLicenses": [{"skuId": spb_id}]})),
        )
        .await?;
    assert_eq!(s, 400);
    assert_eq!(
        b["error"]["message"],
        "One or more parameters of the operation 'assignLicense' are missing from the request payload. The missing parameters are: removeLicenses."
    );
    let (s, b) = g
        .call(
            "POST",
            &format!("/users/{id}/assignLicense"),
            Some(add(&spb_id)),
        )
        .await?;
    assert_eq!(s, 400);
    assert_eq!(
        b["error"]["message"],
        "License assignment cannot be done for user with invalid usage location."
    );
    let (s, b) = g
        .call(
            "POST",
            &format!("/users/{id}/assignLicense"),
            Some(json!({"addLicenses": [{"skuId": null}], "removeLicenses": []})),
        )
        .await?;
    assert_eq!(s, 400, "{b}");

    g.call(
        "PATCH",
        &format!("/users/{id}"),
        Some(json!({"usageLocation": "GB"})),
    )
    .await?;
    let (s, b) = g
        .call(
            "POST",
            &format!("/users/{id}/assignLicense"),
            Some(add(&spb_id)),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["id"], id.as_str());
    let (_, u) = g
        .call(
            "GET",
            &format!("/users/{id}?$select=assignedLicenses"),
            None,
        )
        .await?;
    assert_eq!(u["assignedLicenses"][0]["skuId"], spb_id.as_str());
    let (_, skus) = g.call("GET", "/subscribedSkus", None).await?;
    let spb = skus["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["skuPartNumber"] == "SPB")
        .unwrap();
    assert_eq!(spb["consumedUnits"], 3);

    // The one Essentials seat goes to this user; the next user gets CountViolation.
    let (s, _) = g
        .call(
            "POST",
            &format!("/users/{id}/assignLicense"),
            Some(add(&ess_id)),
        )
        .await?;
    assert_eq!(s, 200);
    let megan = user_id(&g, "megan.bowen@contoso.com").await?;
    let (s, b) = g
        .call(
            "POST",
            &format!("/users/{megan}/assignLicense"),
            Some(add(&ess_id)),
        )
        .await?;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["details"][0]["code"], "CountViolation");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not have any available licenses")
    );
    // Freeing the seat makes it assignable.
    let (s, _) = g
        .call(
            "POST",
            &format!("/users/{id}/assignLicense"),
            Some(json!({"addLicenses": [], "removeLicenses": [ess_id]})),
        )
        .await?;
    assert_eq!(s, 200);
    let (s, _) = g
        .call(
            "POST",
            &format!("/users/{megan}/assignLicense"),
            Some(add(&ess_id)),
        )
        .await?;
    assert_eq!(s, 200);
    Ok(())
}

#[tokio::test]
async fn offboarding_calls() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let adele = user_id(&g, "adele.vance@contoso.com").await?;
    let (s, b) = g
        .call(
            "POST",
            &format!("/users/{adele}/revokeSignInSessions"),
            None,
        )
        .await?;
    assert_eq!(s, 200);
    assert_eq!(b["value"], true);

    let (s, m) = g
        .call(
            "GET",
            &format!("/users/{adele}/authentication/methods"),
            None,
        )
        .await?;
    assert_eq!(s, 200);
    let methods = m["value"].as_array().unwrap();
    assert_eq!(methods.len(), 3, "password + authenticator + phone: {m}");
    assert_eq!(
        methods[0]["@odata.type"],
        "#microsoft.graph.passwordAuthenticationMethod"
    );
    let phone = methods
        .iter()
        .find(|x| x["@odata.type"] == "#microsoft.graph.phoneAuthenticationMethod")
        .unwrap();
    let phone_id = phone["id"].as_str().unwrap();
    let (s, _) = g
        .call(
            "DELETE",
            &format!("/users/{adele}/authentication/microsoftAuthenticatorMethods/{phone_id}"),
            None,
        )
        .await?;
    assert_eq!(s, 404, "a phone method isn't an authenticator method");
    let (s, _) = g
        .call(
            "DELETE",
            &format!("/users/{adele}/authentication/phoneMethods/{phone_id}"),
            None,
        )
        .await?;
    assert_eq!(s, 204);
    let (s, _) = g
        .call(
            "DELETE",
            &format!(
                "/users/{adele}/authentication/passwordMethods/28c10230-6103-485e-b985-444c60001490"
            ),
            None,
        )
        .await?;
    assert_eq!(s, 400);

    let (s, devs) = g
        .call("GET", &format!("/users/{adele}/managedDevices"), None)
        .await?;
    assert_eq!(s, 200);
    let dev = devs["value"][0]["id"].as_str().unwrap().to_owned();
    let (s, _) = g
        .call(
            "POST",
            &format!("/deviceManagement/managedDevices/{dev}/wipe"),
            Some(json!({"keepEnrollmentData": false, "keepUserData": false})),
        )
        .await?;
    assert_eq!(s, 204);
    let (s, b) = g
        .call(
            "POST",
            &format!("/deviceManagement/managedDevices/{dev}/wipe"),
            Some(json!({"bogus": 1})),
        )
        .await?;
    assert_eq!(s, 400, "{b}");
    let (_, d) = g
        .call(
            "GET",
            &format!("/deviceManagement/managedDevices/{dev}"),
            None,
        )
        .await?;
    assert_eq!(d["managementState"], "wipePending");
    let (s, _) = g
        .call(
            "POST",
            &format!("/deviceManagement/managedDevices/{dev}/retire"),
            None,
        )
        .await?;
    assert_eq!(s, 204);

    // Role assignments: list by principal, remove, add back, conflict.
    let megan = user_id(&g, "megan.bowen@contoso.com").await?;
    let (s, ra) = g
        .call(
            "GET",
            &format!(
                "/roleManagement/directory/roleAssignments?$filter=principalId%20eq%20'{megan}'"
            ),
            None,
        )
        .await?;
    assert_eq!(s, 200);
    assert_eq!(ra["value"].as_array().unwrap().len(), 1);
    let ra_id = ra["value"][0]["id"].as_str().unwrap().to_owned();
    let role = ra["value"][0]["roleDefinitionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = g
        .call(
            "DELETE",
            &format!("/roleManagement/directory/roleAssignments/{ra_id}"),
            None,
        )
        .await?;
    assert_eq!(s, 204);
    let body = json!({"principalId": megan, "roleDefinitionId": role, "directoryScopeId": "/"});
    let (s, b) = g
        .call(
            "POST",
            "/roleManagement/directory/roleAssignments",
            Some(body.clone()),
        )
        .await?;
    assert_eq!(s, 201, "{b}");
    let (s, _) = g
        .call(
            "POST",
            "/roleManagement/directory/roleAssignments",
            Some(body),
        )
        .await?;
    assert_eq!(s, 400);
    Ok(())
}

#[tokio::test]
async fn delete_restore_and_the_30_day_window() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (_, a) = g
        .call("POST", "/users", Some(new_user("temp.one@contoso.com")))
        .await?;
    let (_, b) = g
        .call("POST", "/users", Some(new_user("temp.two@contoso.com")))
        .await?;
    let (a, b) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    for id in [&a, &b] {
        let (s, _) = g.call("DELETE", &format!("/users/{id}"), None).await?;
        assert_eq!(s, 204);
    }
    let (s, _) = g.call("GET", &format!("/users/{a}"), None).await?;
    assert_eq!(s, 404);
    let (s, del) = g
        .call("GET", "/directory/deletedItems/microsoft.graph.user", None)
        .await?;
    assert_eq!(s, 200);
    assert_eq!(del["value"].as_array().unwrap().len(), 2);
    assert!(del["value"][0]["deletedDateTime"].is_string());
    let (s, r) = g
        .call(
            "POST",
            &format!("/directory/deletedItems/{a}/restore"),
            None,
        )
        .await?;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["id"], a.as_str());
    let (s, _) = g.call("GET", &format!("/users/{a}"), None).await?;
    assert_eq!(s, 200);
    // Restoring under a taken UPN conflicts; a new UPN resolves it.
    let (_, c) = g
        .call("POST", "/users", Some(new_user("temp.three@contoso.com")))
        .await?;
    let c = c["id"].as_str().unwrap().to_owned();
    g.call("DELETE", &format!("/users/{c}"), None).await?;
    g.call("POST", "/users", Some(new_user("temp.three@contoso.com")))
        .await?;
    let (s, e) = g
        .call(
            "POST",
            &format!("/directory/deletedItems/{c}/restore"),
            None,
        )
        .await?;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["details"][0]["code"], "ObjectConflict");
    let (s, r) = g
        .call(
            "POST",
            &format!("/directory/deletedItems/{c}/restore"),
            Some(json!({"newUserPrincipalName": "temp.three.old@contoso.com"})),
        )
        .await?;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["userPrincipalName"], "temp.three.old@contoso.com");
    // Past the 30-day window the other one is gone for good.
    advance(&sb, 31 * 86_400).await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, _) = g
        .call(
            "POST",
            &format!("/directory/deletedItems/{b}/restore"),
            None,
        )
        .await?;
    assert_eq!(s, 404);
    // A user holding Global/Privileged Role Administrator can't be deleted by the app.
    let fg = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let (s, e) = fg
        .call("DELETE", "/users/admin@fabrikam.onmicrosoft.com", None)
        .await?;
    assert_eq!(s, 403);
    assert_envelope(&e, "Authorization_RequestDenied");
    Ok(())
}

#[tokio::test]
async fn batch_runs_inner_requests_through_the_real_routes() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, b) = g
        .call_with(
            "POST",
            "/$batch",
            Some(json!({"requests": [
                {"id": "1", "method": "POST", "url": "/users", "headers": {"Content-Type": "application/json"}, "body": new_user("batch.user@contoso.com")},
                {"id": "2", "method": "GET", "url": "/users/batch.user@contoso.com?$select=id,displayName", "dependsOn": ["1"]},
                {"id": "3", "method": "GET", "url": "/users/nobody@contoso.com"},
                {"id": "4", "method": "GET", "url": "/users/x", "dependsOn": ["3"]},
            ]})),
            Some("run_B/batch/1"),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    let r = b["responses"].as_array().unwrap();
    let by_id = |i: &str| r.iter().find(|x| x["id"] == i).unwrap();
    assert_eq!(by_id("1")["status"], 201);
    assert_eq!(by_id("2")["status"], 200);
    assert_eq!(by_id("2")["body"]["displayName"], "Jane Doe");
    assert_eq!(by_id("3")["status"], 404);
    assert_eq!(
        by_id("3")["body"]["error"]["code"],
        "Request_ResourceNotFound"
    );
    assert_eq!(by_id("4")["status"], 424);
    let entries = ledger(&sb).await?;
    assert_eq!(
        entries.last().unwrap()["run"],
        "run_B",
        "inner requests keep the correlation"
    );

    let too_many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/users"}))
        .collect();
    expect_error(
        &g,
        "POST",
        "/$batch",
        Some(json!({"requests": too_many})),
        400,
        "BadRequest",
    )
    .await?;
    let (s, _) = g
        .call("POST", "/$batch", Some(json!({"requests": [{"id": "a1", "method": "GET", "url": "/users"}, {"id": "A1", "method": "GET", "url": "/users"}]})))
        .await?;
    assert_eq!(s, 400);
    let (s, _) = g.call("POST", "/$batch", Some(json!({"nope": []}))).await?;
    assert_eq!(s, 400);
    // A write without its Content-Type, or without a body, fails the whole batch; so does an
    // absolute URL.
    for bad in [
        json!({"id": "1", "method": "PATCH", "url": "/users/megan.bowen@contoso.com", "body": {"jobTitle": "x"}}),
        json!({"id": "1", "method": "POST", "url": "/users/megan.bowen@contoso.com/revokeSignInSessions"}),
        json!({"id": "1", "method": "GET", "url": "https://graph.microsoft.com/v1.0/users"}),
    ] {
        let (s, b) = g
            .call(
                "POST",
                "/$batch",
                Some(json!({"requests": [{"id": "0", "method": "GET", "url": "/users"}, bad]})),
            )
            .await?;
        assert_eq!(s, 400, "{b}");
        assert!(b.get("responses").is_none(), "{b}");
    }
    let entries_after = ledger(&sb).await?;
    assert_eq!(
        entries_after.len(),
        entries.len(),
        "a refused batch changes nothing"
    );

    // A throttled inner request carries its own status and Retry-After.
    add_faults(&sb, json!({"method": "GET", "path": "/graph/v1.0/subscribedSkus", "sequence": [{"status": 429, "retry_after": 7}]})).await?;
    let (_, b) = g
        .call("POST", "/$batch", Some(json!({"requests": [{"id": "a", "method": "GET", "url": "/subscribedSkus"}, {"id": "b", "method": "GET", "url": "/subscribedSkus"}]})))
        .await?;
    let r = b["responses"].as_array().unwrap();
    let by_id = |i: &str| r.iter().find(|x| x["id"] == i).unwrap();
    assert_eq!(by_id("a")["status"], 429);
    assert_eq!(by_id("a")["headers"]["retry-after"], "7");
    assert_eq!(by_id("a")["body"]["error"]["code"], "TooManyRequests");
    assert_eq!(by_id("b")["status"], 200);

    // Responses come back in any order: some batch of this size is answered out of order.
    let many: Vec<Value> = (0..10)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/subscribedSkus"}))
        .collect();
    let (_, b) = g
        .call("POST", "/$batch", Some(json!({"requests": many})))
        .await?;
    let order: Vec<&str> = b["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(order.len(), 10);
    assert_ne!(
        order,
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        "answered in order"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_graphs_envelope() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, b) = g.call("GET", "/nonsense", None).await?;
    assert_eq!(s, 404);
    assert!(b["error"]["message"].as_str().unwrap().contains("nonsense"));
    let (s, b) = g.call("PUT", "/users", Some(json!({}))).await?;
    assert_eq!(s, 405);
    assert!(b["error"]["code"].is_string());
    Ok(())
}

#[tokio::test]
async fn password_reset_method_writes_back_for_synced_users() -> Result<()> {
    let sb = sandbox().await?;
    let pw_method = "28c10230-6103-485e-b985-444c60001490";
    // Not supported with application permissions, as Microsoft documents.
    let app = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, b) = app
        .call(
            "POST",
            &format!(
                "/users/adele.vance@contoso.com/authentication/methods/{pw_method}/resetPassword"
            ),
            Some(json!({"newPassword": "Res3t!Password"})),
        )
        .await?;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("Authorization_RequestDenied"))
    );
    let g = Graph::delegated(&sb, CONTOSO_TENANT).await?;
    let r = g
        .http
        .post(format!(
            "{}/users/adele.vance@contoso.com/authentication/methods/{pw_method}/resetPassword",
            g.base
        ))
        .bearer_auth(&g.token)
        .json(&json!({"newPassword": "Res3t!Password"}))
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str()?.to_owned();
    let (s, op) = g.call("GET", &location, None).await?;
    assert_eq!((s, op["status"].as_str()), (200, Some("succeeded")));
    let (s, _) = g
        .call(
            "POST",
            &format!(
                "/users/adele.vance@contoso.com/authentication/methods/{pw_method}/resetPassword"
            ),
            Some(json!({"newPassword": "weak"})),
        )
        .await?;
    assert_eq!(s, 400);
    let (s, _) = g
        .call(
            "POST",
            &format!(
                "/users/adele.vance@contoso.com/authentication/methods/{pw_method}/resetPassword"
            ),
            Some(json!({})),
        )
        .await?;
    // Cloud-only: without newPassword the service generates one and answers it.
    assert_eq!(s, 202);
    let (s, b) = g
        .call(
            "POST",
            &format!(
                "/users/adele.vance@contoso.com/authentication/methods/{pw_method}/resetPassword"
            ),
            Some(json!({})),
        )
        .await?;
    assert_eq!(s, 202);
    assert!(
        b["newPassword"].as_str().is_some_and(|p| p.len() >= 12),
        "{b}"
    );

    let fg = Graph::delegated(&sb, FABRIKAM_TENANT).await?;
    // A synced user's writeback needs newPassword.
    let (s, _) = fg
        .call(
            "POST",
            &format!(
                "/users/chris.kim@fabrikam.com/authentication/methods/{pw_method}/resetPassword"
            ),
            Some(json!({})),
        )
        .await?;
    assert_eq!(s, 400);
    let (s, _) = fg
        .call(
            "POST",
            &format!(
                "/users/chris.kim@fabrikam.com/authentication/methods/{pw_method}/resetPassword"
            ),
            Some(json!({"newPassword": "Res3t!Password"})),
        )
        .await?;
    assert_eq!(s, 202);
    let entries = ledger(&sb).await?;
    let resets: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "user.reset_password")
        .collect();
    assert_eq!(resets.len(), 4);
    assert_eq!(resets[0]["details"]["writeback"], false);
    assert_eq!(resets[3]["details"]["writeback"], true);
    assert!(!serde_json::to_string(&entries)?.contains("Res3t!Password"));
    let (_, w) = admin(&sb, "GET", "/world/fabrikam", None).await?;
    let ckim = w["ad"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["sam_account_name"] == "ckim")
        .unwrap();
    assert_eq!(
        ckim["password"]["value"], "[redacted]",
        "written back to AD"
    );
    Ok(())
}

/// What `@odata.type` and `@odata.context` say on each read, as Graph answers with OData's
/// minimal metadata: items of a `directoryObjects` collection and single directory objects name
/// their type; `/users`, `/groups`, casts, devices, SKUs and role assignments don't.
#[tokio::test]
async fn odata_type_and_context_follow_minimal_metadata() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let adele = user_id(&g, "adele.vance@contoso.com").await?;
    let get = |path: String| {
        let g = &g;
        async move {
            let (s, b) = g.call("GET", &path, None).await?;
            assert_eq!(s, 200, "{path}: {b}");
            anyhow::Ok(b)
        }
    };
    let typed = |b: &Value, path: &str, want: Option<&str>| {
        let items = b["value"].as_array().unwrap();
        assert!(!items.is_empty(), "{path}: {b}");
        for item in items {
            assert_eq!(item["@odata.type"].as_str(), want, "{path}: {item}");
        }
    };
    let context_ends = |b: &Value, path: &str, tail: &str| {
        let c = b["@odata.context"].as_str().unwrap_or_default();
        assert!(c.ends_with(tail), "{path}: context {c}, want …{tail}");
    };

    for (path, want, tail) in [
        ("/users".to_owned(), None, "#users"),
        ("/groups".to_owned(), None, "#groups"),
        (
            format!("/users/{adele}/memberOf"),
            Some("#microsoft.graph.group"),
            "#directoryObjects",
        ),
        (
            format!("/users/{adele}/memberOf/microsoft.graph.group"),
            None,
            "#groups",
        ),
        (
            format!("/users/{adele}/managedDevices"),
            None,
            "#managedDevices",
        ),
        (
            "/deviceManagement/managedDevices".to_owned(),
            None,
            "#deviceManagement/managedDevices",
        ),
        ("/subscribedSkus".to_owned(), None, "#subscribedSkus"),
        (
            "/roleManagement/directory/roleAssignments".to_owned(),
            None,
            "#roleManagement/directory/roleAssignments",
        ),
    ] {
        let b = get(path.clone()).await?;
        typed(&b, &path, want);
        context_ends(&b, &path, tail);
    }
    let b = get(format!("/users/{adele}/memberOf")).await?;
    let group = b["value"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/groups/{group}/members");
    typed(
        &get(path.clone()).await?,
        &path,
        Some("#microsoft.graph.user"),
    );

    // Single objects: the context names the set; only directory objects name their type.
    let b = get(format!("/users/{adele}")).await?;
    context_ends(&b, "user", "#users/$entity");
    assert!(b.get("@odata.type").is_none(), "{b}");
    let b = get(format!("/users/{adele}?$select=displayName,id")).await?;
    context_ends(&b, "user $select", "#users(displayName,id)/$entity");
    assert!(b.get("@odata.type").is_none(), "{b}");
    let b = get(format!("/groups/{group}")).await?;
    context_ends(&b, "group", "#groups/$entity");
    assert!(b.get("@odata.type").is_none(), "{b}");
    let b = get(format!("/users/{adele}/manager")).await?;
    context_ends(&b, "manager", "#directoryObjects/$entity");
    assert_eq!(b["@odata.type"], "#microsoft.graph.user", "{b}");
    let b = get(format!("/users/{adele}/managedDevices")).await?;
    let device = b["value"][0]["id"].as_str().unwrap().to_owned();
    let b = get(format!("/deviceManagement/managedDevices/{device}")).await?;
    context_ends(&b, "device", "#deviceManagement/managedDevices/$entity");
    assert!(b.get("@odata.type").is_none(), "{b}");
    let b = get("/roleManagement/directory/roleAssignments".to_owned()).await?;
    let ra = b["value"][0]["id"].as_str().unwrap().to_owned();
    let b = get(format!("/roleManagement/directory/roleAssignments/{ra}")).await?;
    context_ends(
        &b,
        "role assignment",
        "#roleManagement/directory/roleAssignments/$entity",
    );
    assert!(b.get("@odata.type").is_none(), "{b}");

    // The deleted-items bin holds directory objects.
    let (s, created) = g
        .call("POST", "/users", Some(new_user("gone@contoso.com")))
        .await?;
    assert_eq!(s, 201, "{created}");
    assert!(created.get("@odata.type").is_none(), "{created}");
    let gone = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        g.call("DELETE", &format!("/users/{gone}"), None).await?.0,
        204
    );
    let path = "/directory/deletedItems/microsoft.graph.user";
    let b = get(path.to_owned()).await?;
    typed(&b, path, Some("#microsoft.graph.user"));
    let b = get(format!("/directory/deletedItems/{gone}")).await?;
    context_ends(&b, "deleted item", "#directoryObjects/$entity");
    assert_eq!(b["@odata.type"], "#microsoft.graph.user", "{b}");
    assert!(b["deletedDateTime"].is_string(), "{b}");
    let (s, b) = g
        .call(
            "POST",
            &format!("/directory/deletedItems/{gone}/restore"),
            None,
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    context_ends(&b, "restore", "#directoryObjects/$entity");
    assert_eq!(b["@odata.type"], "#microsoft.graph.user", "{b}");
    Ok(())
}

#[tokio::test]
async fn user_keys_in_the_path_are_decoded_exactly_once() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, b) = g
        .call("GET", "/users/adele.vance%40contoso.com", None)
        .await?;
    assert_eq!(
        (s, b["displayName"].as_str()),
        (200, Some("Adele Vance")),
        "{b}"
    );
    // `%2540` is an encoded `%40`: a UPN containing "%40", which nobody has.
    expect_error(
        &g,
        "GET",
        "/users/adele.vance%2540contoso.com",
        None,
        404,
        "Request_ResourceNotFound",
    )
    .await?;
    let (s, b) = g
        .call(
            "PATCH",
            "/users/adele.vance%2540contoso.com",
            Some(json!({"jobTitle": "x"})),
        )
        .await?;
    assert_eq!(s, 404, "{b}");
    // A '+' in a UPN stays a '+', written plainly or encoded.
    let (s, b) = g
        .call("POST", "/users", Some(new_user("jane+test@contoso.com")))
        .await?;
    assert_eq!(s, 201, "{b}");
    for path in [
        "/users/jane+test@contoso.com",
        "/users/jane%2Btest%40contoso.com",
    ] {
        let (s, b) = g.call("GET", path, None).await?;
        assert_eq!(
            (s, b["userPrincipalName"].as_str()),
            (200, Some("jane+test@contoso.com")),
            "{path}: {b}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn select_takes_every_property_of_the_schema() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    // Properties of user (and of its bases directoryObject and entity) that the world does not
    // model read as null, or [] for collections; modelled ones have their value.
    let (s, b) = g
        .call(
            "GET",
            "/users/adele.vance@contoso.com?$select=id,deletedDateTime,assignedPlans,identities,onPremisesExtensionAttributes,showInAddressList,ageGroup,imAddresses,manager",
            None,
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["assignedPlans"], json!([]));
    assert_eq!(b["imAddresses"], json!([]));
    assert_eq!(b["showInAddressList"], Value::Null);
    assert_eq!(b["ageGroup"], Value::Null);
    assert_eq!(b["deletedDateTime"], Value::Null);
    assert_eq!(
        b["identities"],
        json!([{"signInType": "userPrincipalName", "issuer": "contoso.onmicrosoft.com", "issuerAssignedId": "adele.vance@contoso.com"}])
    );
    assert_eq!(
        b["onPremisesExtensionAttributes"]["extensionAttribute15"],
        Value::Null
    );
    assert_eq!(
        b["onPremisesExtensionAttributes"]
            .as_object()
            .map(serde_json::Map::len),
        Some(15)
    );
    // A navigation property is selectable but adds nothing without $expand.
    assert!(b.get("manager").is_none(), "{b}");
    assert!(
        b["@odata.context"]
            .as_str()
            .is_some_and(|c| c.contains("(id,deletedDateTime,assignedPlans,")),
        "{b}"
    );
    for (path, prop) in [
        ("/groups", "classification"),
        ("/groups", "resourceProvisioningOptions"),
        ("/deviceManagement/managedDevices", "isEncrypted"),
        ("/subscribedSkus", "accountName"),
        ("/roleManagement/directory/roleAssignments", "condition"),
    ] {
        let (s, b) = g
            .call("GET", &format!("{path}?$select=id,{prop}"), None)
            .await?;
        assert_eq!(s, 200, "{path} {prop}: {b}");
        assert!(
            b["value"][0].get(prop).is_some(),
            "{path}: {prop} missing from {b}"
        );
    }
    // Only a name outside the schema is refused, with Graph's message.
    let b = expect_error(
        &g,
        "GET",
        "/users?$select=id,favouriteColour",
        None,
        400,
        "BadRequest",
    )
    .await?;
    assert_eq!(
        b["error"]["message"],
        "Could not find a property named 'favouriteColour' on type 'microsoft.graph.user'."
    );
    Ok(())
}

#[tokio::test]
async fn graph_cast_aliases_and_reference_reads() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let adele = user_id(&g, "adele.vance@contoso.com").await?;
    let megan = user_id(&g, "megan.bowen@contoso.com").await?;
    // The SDKs' `graph.` alias works wherever `microsoft.graph.` does, with the same answer.
    let (s, full) = g
        .call(
            "GET",
            &format!("/users/{adele}/memberOf/microsoft.graph.group"),
            None,
        )
        .await?;
    assert_eq!(s, 200, "{full}");
    let (s, alias) = g
        .call("GET", &format!("/users/{adele}/memberOf/graph.group"), None)
        .await?;
    assert_eq!(s, 200, "{alias}");
    assert_eq!(alias["value"], full["value"]);
    assert!(
        alias["@odata.context"]
            .as_str()
            .is_some_and(|c| c.ends_with("$metadata#groups")),
        "{alias}"
    );
    let (s, b) = g
        .call("GET", "/directory/deletedItems/graph.user", None)
        .await?;
    assert_eq!((s, &b["value"]), (200, &json!([])), "{b}");
    let (s, b) = g
        .call(
            "POST",
            &format!("/users/{adele}/graph.assignLicense"),
            Some(json!({"addLicenses": [], "removeLicenses": []})),
        )
        .await?;
    assert_eq!(s, 200, "{b}");

    // GET manager/$ref: a reference naming the manager; 404 without one.
    let (s, b) = g
        .call("GET", &format!("/users/{adele}/manager/$ref"), None)
        .await?;
    assert_eq!(s, 200, "{b}");
    assert!(
        b["@odata.id"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("/directoryObjects/{megan}/"))),
        "{b}"
    );
    assert!(
        b.get("displayName").is_none(),
        "a reference, not the object: {b}"
    );
    expect_error(
        &g,
        "GET",
        &format!("/users/{megan}/manager/$ref"),
        None,
        404,
        "Request_ResourceNotFound",
    )
    .await?;

    // GET members/$ref: one reference per member, paged like any collection.
    let (s, groups) = g.call("GET", "/groups", None).await?;
    assert_eq!(s, 200);
    let all_staff = groups["value"]
        .as_array()
        .and_then(|a| a.iter().find(|g| g["displayName"] == "All Staff"))
        .and_then(|g| g["id"].as_str())
        .unwrap()
        .to_owned();
    let (s, b) = g
        .call(
            "GET",
            &format!("/groups/{all_staff}/members/$ref?$top=1"),
            None,
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["value"].as_array().map(Vec::len), Some(1), "{b}");
    let next = b["@odata.nextLink"].as_str().unwrap().to_owned();
    let (s, b2) = g.call("GET", &next, None).await?;
    assert_eq!(s, 200, "{b2}");
    let refs: Vec<&str> = [&b, &b2]
        .iter()
        .filter_map(|p| p["value"][0]["@odata.id"].as_str())
        .collect();
    for id in [&adele, &megan] {
        assert!(
            refs.iter()
                .any(|r| r.contains(&format!("/directoryObjects/{id}/"))),
            "{id} not in {refs:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn filters_the_sandbox_does_not_evaluate_are_unsupported_not_malformed() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let b = expect_error(
        &g,
        "GET",
        "/users?$filter=assignedLicenses/any(x:x/skuId eq cbdc14ab-d96c-4c30-b9f4-6ada7cdc1d46)",
        None,
        400,
        "Request_UnsupportedQuery",
    )
    .await?;
    assert_eq!(
        b["error"]["message"],
        "Unsupported or invalid query filter clause specified for property 'assignedLicenses' of resource 'User'."
    );
    expect_error(
        &g,
        "GET",
        "/users?$filter=endswith(mail,'@contoso.com')",
        None,
        400,
        "Request_UnsupportedQuery",
    )
    .await?;
    // With Graph's advanced queries (ConsistencyLevel: eventual and $count=true) `endswith`
    // and `ne` are served.
    let r = g
        .http
        .get(format!(
            "{}/users?$count=true&$filter=endswith(userPrincipalName,'@contoso.com') and userPrincipalName ne 'megan.bowen@contoso.com'&$select=userPrincipalName",
            g.base
        ))
        .bearer_auth(&g.token)
        .header("ConsistencyLevel", "eventual")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let b: Value = r.json().await?;
    let upns: Vec<&str> = b["value"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|u| u["userPrincipalName"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(upns.contains(&"adele.vance@contoso.com"), "{b}");
    assert!(!upns.contains(&"megan.bowen@contoso.com"), "{b}");
    assert!(upns.iter().all(|u| u.ends_with("@contoso.com")), "{b}");
    // The header without $count is not enough.
    let r = g
        .http
        .get(format!(
            "{}/users?$filter=userPrincipalName ne 'megan.bowen@contoso.com'",
            g.base
        ))
        .bearer_auth(&g.token)
        .header("ConsistencyLevel", "eventual")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    // Still malformed: an unterminated string.
    let b = expect_error(
        &g,
        "GET",
        "/users?$filter=displayName eq 'x",
        None,
        400,
        "BadRequest",
    )
    .await?;
    assert!(
        b["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Invalid filter clause")),
        "{b}"
    );
    Ok(())
}
