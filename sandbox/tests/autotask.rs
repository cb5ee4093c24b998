//! Autotask REST (tickets query, notes, status) and the signed ticket webhooks, verified here by
//! an implementation of Autotask's escaping written independently of the sandbox's.

mod common;

use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use steward_sandbox::Options;

fn at(sb: &steward_sandbox::RunningSandbox, method: &str, path: &str) -> reqwest::RequestBuilder {
    client()
        .request(
            method.parse().unwrap(),
            format!("{}/autotask/atservicesrest/v1.0{path}", sb.base_url),
        )
        .header("ApiIntegrationCode", "SANDBOXINTEGRATIONCODE")
        .header("UserName", "steward-api@examplemsp.com")
        .header("Secret", "sandbox-autotask-secret")
}

#[tokio::test]
async fn tickets_query_notes_and_status() -> Result<()> {
    let sb = sandbox().await?;
    let r = at(&sb, "POST", "/Tickets/query")
        .json(&json!({"filter": [{"op": "eq", "field": "id", "value": 1001}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await?;
    assert_eq!(b["items"].as_array().unwrap().len(), 1);
    assert_eq!(b["items"][0]["companyID"], 175);
    assert_eq!(b["pageDetails"]["count"], 1);
    let r = at(&sb, "POST", "/Tickets/query")
        .json(&json!({"filter": [{"op": "or", "items": [{"op": "eq", "field": "id", "value": 1001}, {"op": "contains", "field": "title", "value": "leaver"}]}]}))
        .send()
        .await?;
    let b: Value = r.json().await?;
    assert_eq!(b["items"].as_array().unwrap().len(), 2);
    let r = at(&sb, "POST", "/Tickets/query")
        .json(&json!({"filter": [{"op": "eq", "field": "nope", "value": 1}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await?;
    assert!(b["errors"][0].as_str().unwrap().contains("nope"));

    let r = at(&sb, "POST", "/Tickets/1001/Notes")
        .header("X-Steward-Correlation", "run_T/note/1")
        .json(&json!({"TicketID": 1001, "Title": "Steward", "Description": "User created.", "NoteType": 1, "Publish": 1}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await?;
    assert!(b["itemId"].as_i64().unwrap() > 0);
    let r = at(&sb, "POST", "/Tickets/1001/Notes")
        .json(&json!({"Title": "x"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400, "Description is required");
    let r = at(&sb, "POST", "/Tickets/9999/Notes")
        .json(&json!({"Title": "x", "Description": "y"}))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let r = at(&sb, "GET", "/Tickets/1001/Notes").send().await?;
    let b: Value = r.json().await?;
    assert_eq!(b["items"][0]["description"], "User created.");

    let r = at(&sb, "PATCH", "/Tickets")
        .json(&json!({"id": 1001, "status": 5}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = at(&sb, "GET", "/Tickets/1001").send().await?;
    let b: Value = r.json().await?;
    assert_eq!(b["item"]["status"], 5);
    let r = at(&sb, "PATCH", "/Tickets")
        .json(&json!({"id": 1001, "status": "done"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let r = at(&sb, "PATCH", "/Tickets")
        .json(&json!({"status": 5}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);

    let r = client()
        .get(format!(
            "{}/autotask/atservicesrest/v1.0/Tickets/1001",
            sb.base_url
        ))
        .header("ApiIntegrationCode", "SANDBOXINTEGRATIONCODE")
        .header("UserName", "steward-api@examplemsp.com")
        .header("Secret", "wrong")
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let entries = ledger(&sb).await?;
    let note = entries
        .iter()
        .find(|e| e["action"] == "ticket.add_note")
        .unwrap();
    assert_eq!(
        (note["run"].as_str(), note["company"].as_str()),
        (Some("run_T"), Some("fabrikam"))
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "ticket.update" && e["details"]["status"] == 5)
    );
    Ok(())
}

/// Autotask's escaped form, written from its description: inside string values the characters
/// & < > ' " ` + and everything beyond ASCII become \uXXXX (upper-case hex, UTF-16 units).
fn escaped(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if !in_str {
            if c == '"' {
                in_str = true;
            }
            out.push(c);
            continue;
        }
        match c {
            '\\' => {
                let next = chars.next().unwrap();
                if next == '"' {
                    out.push_str("\\u0022");
                } else {
                    out.push('\\');
                    out.push(next);
                }
            }
            '"' => {
                in_str = false;
                out.push('"');
            }
            '&' | '<' | '>' | '\'' | '`' | '+' => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c if !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for u in c.encode_utf16(&mut buf).iter() {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn verify(secret: &str, body: &[u8], header: &str) -> bool {
    let raw = std::str::from_utf8(body).unwrap();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(escaped(raw).as_bytes());
    let expected = format!(
        "sha1={}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    expected == header
}

#[tokio::test]
async fn webhooks_are_signed_over_autotasks_escaped_form() -> Result<()> {
    let host = Host::start().await?;
    let sb = sandbox_with(Options {
        webhook_url: Some(format!("{}/webhooks/autotask", host.base)),
        webhook_secret: Some("hook-secret".to_owned()),
        ..Options::default()
    })
    .await?;
    let title = "Onboard Zoë O'Neil & \"Bob\" <sales> +1 `now` 😀";
    let (s, t) = admin(&sb, "POST", "/tickets", Some(json!({"company": "fabrikam", "title": title, "description": "New starter", "status": 1}))).await?;
    assert_eq!(s, 201, "{t}");
    let got = host
        .host
        .wait("/webhooks/autotask", Duration::from_secs(10))
        .await?;
    let sig = got.signature.clone().expect("X-Hook-Signature");
    assert!(sig.starts_with("sha1="));
    assert!(
        verify("hook-secret", &got.body, &sig),
        "signature must verify over the escaped form"
    );
    assert!(!verify("other-secret", &got.body, &sig));
    // The raw body alone doesn't verify when it has characters Autotask escapes.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"hook-secret").unwrap();
    mac.update(&got.body);
    let raw_sig = format!(
        "sha1={}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_ne!(raw_sig, sig);

    let payload: Value = serde_json::from_slice(&got.body)?;
    assert_eq!(payload["Action"], "Create");
    assert_eq!(payload["EntityType"], "Ticket");
    assert_eq!(payload["Guid"], "6a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d");
    assert_eq!(payload["Fields"]["title"], title);
    assert_eq!(payload["Id"], t["id"]);
    assert_eq!(payload["SequenceNumber"], 1);

    let id = t["id"].as_i64().unwrap();
    let (s, _) = admin(
        &sb,
        "PATCH",
        &format!("/tickets/{id}"),
        Some(json!({"status": 8})),
    )
    .await?;
    assert_eq!(s, 200);
    let update = host
        .host
        .wait_count("/webhooks/autotask", 2, Duration::from_secs(10))
        .await?
        .remove(1);
    assert!(verify(
        "hook-secret",
        &update.body,
        update.signature.as_deref().unwrap()
    ));
    let p: Value = serde_json::from_slice(&update.body)?;
    assert_eq!(p["Action"], "Update");
    assert_eq!(p["Fields"]["status"], 8);
    assert!(
        p["Fields"].get("title").is_none(),
        "only changed and display-always fields: {p}"
    );
    assert_eq!(p["SequenceNumber"], 2);

    let (_, w) = admin(&sb, "GET", "/webhooks", None).await?;
    assert_eq!(w["deliveries"][0]["delivered"], true);
    let (s, _) = admin(&sb, "PATCH", "/tickets/424242", Some(json!({"status": 1}))).await?;
    assert_eq!(s, 404);
    let (s, _) = admin(
        &sb,
        "POST",
        "/tickets",
        Some(json!({"company": "nope", "title": "x"})),
    )
    .await?;
    assert_eq!(s, 400);
    let (s, _) = admin(
        &sb,
        "POST",
        "/tickets",
        Some(json!({"company": "fabrikam", "title": "x", "colour": 1})),
    )
    .await?;
    assert_eq!(s, 400);
    Ok(())
}

#[test]
fn independent_escaper_matches_the_documented_examples() {
    assert_eq!(escaped(r#"{"a":"x&y"}"#), r#"{"a":"x\u0026y"}"#);
    assert_eq!(
        escaped(r#"{"a":"say \"hi\""}"#),
        r#"{"a":"say \u0022hi\u0022"}"#
    );
    assert_eq!(escaped(r#"{"a":"é"}"#), r#"{"a":"\u00E9"}"#);
    assert_eq!(escaped(r#"{"n":1,"b":true}"#), r#"{"n":1,"b":true}"#);
}

#[tokio::test]
async fn fixture_tickets_can_fire_on_start() -> Result<()> {
    let host = Host::start().await?;
    let f = fixture_variant(|t| {
        t.replace(
            "sub_issue_type: 150",
            "sub_issue_type: 150\n      emit_on_start: true",
        )
    })?;
    let _sb = sandbox_with(Options {
        fixture: Some(f.path().to_owned()),
        webhook_url: Some(format!("{}/webhooks/autotask", host.base)),
        webhook_secret: Some("s3cret".to_owned()),
        ..Options::default()
    })
    .await?;
    let got = host
        .host
        .wait("/webhooks/autotask", Duration::from_secs(10))
        .await?;
    assert!(verify(
        "s3cret",
        &got.body,
        got.signature.as_deref().unwrap()
    ));
    let p: Value = serde_json::from_slice(&got.body)?;
    assert_eq!(
        (p["Action"].as_str(), p["Id"].as_i64()),
        (Some("Create"), Some(1001))
    );
    assert_eq!(p["Fields"]["subIssueType"], 150);
    Ok(())
}

#[tokio::test]
async fn a_refused_webhook_is_tried_three_times_and_recorded() -> Result<()> {
    let host = Host::start().await?;
    let sb = sandbox_with(Options {
        // The host answers 404 here.
        webhook_url: Some(format!("{}/webhooks/nowhere", host.base)),
        webhook_secret: Some("hook-secret".to_owned()),
        ..Options::default()
    })
    .await?;
    let (s, t) = admin(
        &sb,
        "POST",
        "/tickets",
        Some(json!({"company": "fabrikam", "title": "x"})),
    )
    .await?;
    assert_eq!(s, 201, "{t}");
    let d = wait_for(
        "the webhook delivery outcome",
        Duration::from_secs(10),
        || async {
            let (_, w) = admin(&sb, "GET", "/webhooks", None).await?;
            Ok((w["deliveries"][0]["attempts"].as_u64() == Some(3))
                .then(|| w["deliveries"][0].clone()))
        },
    )
    .await?;
    assert_eq!(d["status"], 404, "{d}");
    assert_eq!(d["delivered"], false, "{d}");
    Ok(())
}
