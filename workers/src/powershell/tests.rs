use std::path::PathBuf;

use base64::Engine as _;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use steward_schemas::Company;

use super::Kind as K;
use super::*;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/powershell")
}

fn modes(t: &Template) -> Vec<Mode> {
    match t.role {
        OnPrem::ActiveDirectory => vec![Mode::Direct],
        OnPrem::EntraConnect | OnPrem::ExchangeServer => vec![Mode::Direct, Mode::Remote],
    }
}

fn golden_name(t: &Template, mode: Mode) -> String {
    match mode {
        Mode::Direct => format!("{}.ps1", t.id()),
        Mode::Remote => format!("{}.remote.ps1", t.id()),
    }
}

/// Inputs for `t` with every text field set to `text`.
fn inputs_with(t: &Template, text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    for f in t.fields {
        let v = match f.kind {
            Text | Secret => Value::String(text.to_owned()),
            Bool => Value::Bool(true),
            List => json!([text, "Sales"]),
            K::Map => match f.name {
                "attributes" => json!({"title": text, "department": null}),
                _ => json!({"extensionAttribute1": text, "msExchHideFromAddressLists": true}),
            },
            Choice(words) => Value::String(words[0].to_owned()),
        };
        m.insert(f.name.to_owned(), v);
    }
    m
}

fn payload_literal(script: &str) -> &str {
    let lines: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("$StewardPayload"))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one payload line");
    lines[0]
        .strip_prefix("$StewardPayload = '")
        .and_then(|r| r.strip_suffix('\''))
        .expect("a single-quoted literal")
}

/// Checks one script: the text outside the payload literal is the skeleton byte for byte, the
/// literal is base64 only, and it decodes back to exactly the payload's JSON.
fn assert_only_the_literal_varies(t: &Template, mode: Mode, p: &Payload) {
    let script = render(t, mode, &p.encode());
    let literal = payload_literal(&script);
    assert!(
        literal
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='),
        "{}: the literal is base64",
        t.op
    );
    assert_eq!(
        script.replacen(&format!("'{literal}'"), "''", 1),
        skeleton(t, mode),
        "{}: text outside the payload literal changed",
        t.op
    );
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(literal)
        .expect("base64");
    let back: Value = serde_json::from_slice(&decoded).expect("JSON");
    assert_eq!(back, Value::Object(p.fields().clone()), "{}", t.op);
    // The sandbox runner's contract: one header in the first 10 lines.
    let headers: Vec<usize> = script
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            l.trim_start_matches('#').trim().starts_with("steward-op:") && l.starts_with('#')
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(headers, vec![0], "{}", t.op);
    assert_eq!(
        script.lines().next(),
        Some(format!("# steward-op: {}", t.id()).as_str())
    );
}

fn parse_ps(text: &str) -> tree_sitter::Tree {
    let mut parser = tree_sitter::Parser::new();
    parser
        .set_language(&tree_sitter_powershell::LANGUAGE.into())
        .expect("the PowerShell grammar loads");
    parser.parse(text, None).expect("a tree")
}

/// Every ERROR or MISSING node, as `kind at row:col`.
fn syntax_problems(text: &str) -> Vec<String> {
    let tree = parse_ps(text);
    let mut out = Vec::new();
    let mut cursor = tree.walk();
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        if node.is_error() || node.is_missing() {
            let pos = node.start_position();
            let line = text.lines().nth(pos.row).unwrap_or("");
            out.push(format!(
                "{} at {}:{}: {line}",
                if node.is_missing() {
                    "MISSING"
                } else {
                    "ERROR"
                },
                pos.row + 1,
                pos.column + 1
            ));
        }
        stack.extend(node.children(&mut cursor));
    }
    out
}

/// Nodes of `kind` with their text.
fn nodes_of<'a>(text: &'a str, kind: &str) -> Vec<&'a str> {
    let tree = parse_ps(text);
    let mut out = Vec::new();
    let mut cursor = tree.walk();
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        if node.kind() == kind {
            out.push(&text[node.byte_range()]);
        }
        stack.extend(node.children(&mut cursor));
    }
    out
}

#[test]
fn every_template_matches_its_golden_file() {
    let dir = golden_dir();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    if update {
        std::fs::create_dir_all(&dir).expect("golden dir");
    }
    let mut expected = Vec::new();
    for t in TEMPLATES {
        for mode in modes(t) {
            let name = golden_name(t, mode);
            let path = dir.join(&name);
            let text = skeleton(t, mode);
            if update {
                std::fs::write(&path, &text).expect("write golden");
            }
            let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{}: {e}; run `UPDATE_GOLDEN=1 cargo nextest run -p steward-workers -E 'test(golden)'` and review the diff", path.display())
            });
            assert_eq!(text, golden, "{name} differs from its golden file");
            expected.push(name);
        }
    }
    // No golden file for a template that no longer exists.
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn every_template_parses_as_powershell_without_error_or_missing_nodes() {
    for t in TEMPLATES {
        for mode in modes(t) {
            let skeleton = skeleton(t, mode);
            let problems = syntax_problems(&skeleton);
            assert!(
                problems.is_empty(),
                "{}: {problems:#?}",
                golden_name(t, mode)
            );
            let p = Payload::build(t, &inputs_with(t, "O'Brien ‘x’ $(whoami)")).expect("payload");
            let full = render(t, mode, &p.encode());
            assert!(syntax_problems(&full).is_empty(), "{}", t.op);
        }
    }
    // The check can fail: broken scripts are caught.
    for broken in [
        "$x = {\n  Get-ADUser x\n",
        "$x = 'unterminated\n",
        "Get-ADUser x |\n",
        "if ($a) { b } else\n",
    ] {
        assert!(!syntax_problems(broken).is_empty(), "{broken:?}");
    }
}

#[test]
fn templates_never_expand_strings_nor_evaluate_text() {
    for t in TEMPLATES {
        for mode in modes(t) {
            let text = skeleton(t, mode);
            for s in nodes_of(&text, "expandable_string_literal") {
                assert!(
                    !s.contains('$') && !s.contains('`'),
                    "{}: expandable string {s}",
                    t.op
                );
            }
            assert!(
                nodes_of(&text, "expandable_here_string_literal").is_empty(),
                "{}",
                t.op
            );
            let lower = text.to_ascii_lowercase();
            for banned in [
                "invoke-expression",
                "iex ",
                "[scriptblock]::create",
                "addscript(",
                "-encodedcommand",
            ] {
                assert!(!lower.contains(banned), "{}: {banned}", t.op);
            }
        }
    }
    // The detector sees an expandable string when there is one.
    assert!(
        nodes_of("Write-Output \"a $b\"", "expandable_string_literal")
            .iter()
            .any(|s| s.contains('$'))
    );
}

#[test]
fn unattended_cmdlets_pass_confirm_false_and_passwords_only_become_secure_strings() {
    let mutating = [
        "New-", "Set-", "Add-", "Remove-", "Enable-", "Disable-", "Move-", "Unlock-", "Restore-",
    ];
    for t in TEMPLATES {
        let helpers = match t.role {
            OnPrem::ActiveDirectory => AD_HELPERS,
            OnPrem::EntraConnect => ADSYNC_HELPERS,
            OnPrem::ExchangeServer => EXCHANGE_HELPERS,
        };
        for c in t.cmdlets {
            assert!(
                t.body.contains(c) || helpers.contains(c),
                "{} declares {c} but does not call it",
                t.op
            );
        }
        for line in t.body.lines() {
            for word in line.split(|ch: char| ch.is_whitespace() || ch == '(') {
                let is_cmdlet = mutating.iter().any(|v| word.starts_with(v))
                    && word.contains('-')
                    && word
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                    && word != "New-Object";
                if is_cmdlet {
                    assert!(
                        t.cmdlets.contains(&word),
                        "{}: calls undeclared {word}",
                        t.op
                    );
                    assert!(
                        line.contains("-Confirm:$false"),
                        "{}: {word} without -Confirm:$false: {line}",
                        t.op
                    );
                }
            }
            if line.contains("$p.password") || line.contains("'password'") {
                assert!(
                    line.contains("ConvertTo-SecureString -String ([string]$p.password)"),
                    "{}: {line}",
                    t.op
                );
            }
        }
    }
}

/// Values PowerShell could mistake for code, and very long ones.
fn corpus() -> Vec<String> {
    let mut v: Vec<String> = [
        "'",
        "''",
        "\"",
        "‘",
        "’",
        "‚",
        "‛",
        "“",
        "”",
        "„",
        "'‘’‚‛“”„\"",
        "$(Remove-Item C:\\ -Recurse)",
        "${env:PATH}",
        "${function:x}",
        "$p",
        "$StewardPayload",
        "`",
        "``;",
        "`n`r`$",
        "a;b",
        "a & b",
        "a | b",
        "a\nb",
        "a\rb",
        "a\r\nb",
        "#>",
        "<#",
        "<# #>",
        "\0",
        "a\0b",
        "@'",
        "'@",
        "@\"",
        "\"@",
        "@'\nx\n'@",
        "@{a=1}",
        "}",
        "{",
        "){",
        "}) ; Remove-Item x; ({",
        "\u{2028}",
        "\u{feff}",
        "\u{202e}",
        "é漢字🎉",
        "-Confirm:$true",
        "--%",
        "%",
        "\\\\server\\share",
        "O'Brien",
        "jane.o'brien@contoso.com",
        "CN=Doe\\, Jane,OU=Staff,DC=contoso,DC=local",
        "STEWARD-RESULT {\"status\":\"changed\"}",
        "# steward-op: ad.remove_user@1",
        "$StewardPayload = 'e30='",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.push("x".repeat(50_000));
    v.push("'$(`\"‘’\n".repeat(2_000));
    v
}

#[test]
fn the_injection_corpus_leaves_every_script_unchanged() {
    for t in TEMPLATES {
        for mode in modes(t) {
            for value in corpus() {
                let p = Payload::build(t, &inputs_with(t, &value)).expect("payload");
                assert_only_the_literal_varies(t, mode, &p);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_values_leave_every_script_unchanged(value in any::<String>(), pick in 0usize..1000) {
        let t = &TEMPLATES[pick % TEMPLATES.len()];
        for mode in modes(t) {
            let p = Payload::build(t, &inputs_with(t, &value)).expect("payload");
            assert_only_the_literal_varies(t, mode, &p);
        }
    }
}

fn company(v: Value) -> Company {
    let mut c: Company = serde_json::from_value(v).expect("company");
    steward_core::company::normalize(&mut c);
    assert!(
        steward_core::company::validate(&c).is_empty(),
        "{:?}",
        steward_core::company::validate(&c)
    );
    c
}

fn hybrid(exchange_runner: Option<&str>) -> Company {
    let mut v = json!({
        "id": "fabrikam", "name": "Fabrikam", "tenant_id": "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10",
        "identity_provider": "hybrid", "mailbox_provider": "exchange_hybrid",
        "ad_runner": "RUNNER01", "entra_connect_server": "AADC01", "exchange_server": "EXCH01",
        "rmm": {"provider": "datto", "site": "s1"},
    });
    if let Some(r) = exchange_runner {
        v["exchange_runner"] = json!(r);
    }
    company(v)
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("object").clone()
}

#[test]
fn script_places_each_template_and_names_the_server_from_the_payload() {
    let c = hybrid(Some("RUNNER02"));
    let new_user = obj(
        json!({"sam_account_name": "jdoe", "user_principal_name": "jdoe@fabrikam.com",
        "path": "OU=Staff,DC=fabrikam,DC=local", "password": "Hunter2!Hunter2", "enabled": "true"}),
    );
    let p = prepare("ad.new_user", &c, &new_user).expect("prepared");
    assert_eq!(p.mode, Mode::Direct);
    assert_eq!(p.target.rmm_device(), Some("RUNNER01"));
    assert_eq!(
        p.payload.fields()["enabled"],
        json!(true),
        "CLI text becomes a boolean"
    );
    assert!(!p.payload.fields().contains_key("server"));
    assert!(
        !format!("{p:?}").contains("Hunter2"),
        "Debug hides the payload's values"
    );
    let text = script("ad.new_user", &c, &new_user).expect("script");
    assert!(text.ends_with(RUN_DIRECT) && !text.contains("Invoke-Command"));

    // The sync runs on AADC01, reached from the AD runner.
    let sync = prepare("adsync.start_delta", &c, &Map::new()).expect("prepared");
    assert_eq!(
        (sync.mode, sync.target.rmm_device()),
        (Mode::Remote, Some("RUNNER01"))
    );
    assert_eq!(sync.payload.fields()["server"], json!("AADC01"));
    let text = sync.text();
    assert!(text.contains("Invoke-Command -ComputerName $StewardTarget -ScriptBlock $StewardOp -ArgumentList $StewardPayload"));
    assert!(
        !text.contains("AADC01"),
        "the computer name is in the payload only"
    );

    // Exchange from its runner; direct when the runner is the server itself.
    let rm = obj(
        json!({"identity": "jdoe", "remote_routing_address": "jdoe@fabrikam.mail.onmicrosoft.com"}),
    );
    let p = prepare("exchange_server.enable_remote_mailbox", &c, &rm).expect("prepared");
    assert_eq!(
        (p.mode, p.target.rmm_device()),
        (Mode::Remote, Some("RUNNER02"))
    );
    assert_eq!(p.payload.fields()["server"], json!("EXCH01"));
    let p = prepare("exchange_server.enable_remote_mailbox", &hybrid(None), &rm).expect("prepared");
    assert_eq!(
        (p.mode, p.target.rmm_device()),
        (Mode::Direct, Some("EXCH01"))
    );

    // A conflicting server is refused; a workflow op names its concrete actions.
    let mut wrong = rm;
    wrong.insert("server".to_owned(), json!("EXCH99"));
    let e = prepare("exchange_server.enable_remote_mailbox", &c, &wrong).unwrap_err();
    assert!(e.to_string().contains("leave `server` out"), "{e}");
    let e = script("user.create", &c, &new_user).unwrap_err();
    assert!(
        e.to_string().contains("ad.new_user on RUNNER01 (direct), then adsync.start_delta on AADC01 (from runner RUNNER01 by PowerShell remoting)"),
        "{e}"
    );
    let e = script("ad.format_disk", &c, &new_user).unwrap_err();
    assert!(matches!(e, Error::UnknownTemplate { .. }), "{e}");

    // Bad inputs name the field and never echo a value.
    let mut bad = new_user.clone();
    bad.insert("password".to_owned(), json!(12345));
    let e = script("ad.new_user", &c, &bad).unwrap_err().to_string();
    assert!(
        e.contains("input `password` must be text") && !e.contains("12345"),
        "{e}"
    );
    let e = script("ad.new_user", &c, &obj(json!({"sam_account_name": "x"}))).unwrap_err();
    assert_eq!(
        e,
        Error::MissingField {
            op: "ad.new_user",
            field: "user_principal_name"
        }
    );
    let e = script(
        "ad.get_user",
        &c,
        &obj(json!({"identity": "x", "colour": "red"})),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("has no input `colour`; fix: use identity, server"),
        "{e}"
    );
    let e = script(
        "ad.set_user",
        &c,
        &obj(json!({"identity": "x", "replace": {"userAccountControl": 512}})),
    )
    .unwrap_err();
    assert!(e.to_string().contains("replace.userAccountControl"), "{e}");
    let e = script("ad.set_user", &c, &obj(json!({"identity": "x"}))).unwrap_err();
    assert!(e.to_string().contains("at least one attribute"), "{e}");
    let e = script(
        "exchange_server.new_mailbox",
        &c,
        &obj(json!({"name": "x", "user_principal_name": "x@y"})),
    )
    .unwrap_err();
    assert!(e.to_string().contains("password"), "{e}");
    let big = obj(json!({"identity": "x".repeat(MAX_PAYLOAD_BYTES)}));
    assert!(matches!(
        script("ad.get_user", &c, &big),
        Err(Error::TooLarge { .. })
    ));

    // The redacted script is the same text with the password hidden in the payload.
    let shown = script_redacted("ad.new_user", &c, &new_user).expect("script");
    let lit = payload_literal(&shown);
    let decoded = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(lit)
            .expect("b64"),
    )
    .expect("utf8");
    assert!(
        !decoded.contains("Hunter2") && decoded.contains("[redacted]"),
        "{decoded}"
    );
    assert_eq!(
        shown.replacen(&format!("'{lit}'"), "''", 1),
        skeleton(template("ad.new_user").expect("t"), Mode::Direct)
    );
}

#[test]
fn results_parse_into_typed_outcomes_with_secrets_scrubbed() {
    let t = template("ad.reset_password").expect("t");
    let p = Payload::build(
        t,
        &obj(json!({"identity": "jdoe", "password": "Hunter2!Hunter2"})),
    )
    .expect("p");
    let line = |v: Value| format!("noise\r\n{RESULT_PREFIX}{v}\r\nmore noise\n");
    assert_eq!(
        parse_result(
            t,
            &line(
                json!({"template": "ad.reset_password@1", "status": "changed", "result": {"a": 1}, "prior": {"locked_out": false}, "reason": "", "category": ""})
            ),
            &p
        ),
        Ok(Outcome::Changed {
            result: json!({"a": 1}),
            prior: json!({"locked_out": false})
        })
    );
    let failed = parse_result(
        t,
        &line(json!({"template": "ad.reset_password@1", "status": "failed", "result": null, "prior": null,
            "reason": "Set-ADAccountPassword : The password Hunter2!Hunter2 does not meet the length, complexity, or history requirement of the domain.", "category": "password_policy"})),
        &p,
    )
    .expect("parsed");
    let Outcome::Failed {
        reason, category, ..
    } = &failed
    else {
        panic!("{failed:?}")
    };
    assert!(
        !reason.contains("Hunter2") && reason.contains("[redacted]"),
        "{reason}"
    );
    assert_eq!(category, "password_policy");
    assert_eq!(
        parse_result(t, "nothing here", &p),
        Err(ResultError::Missing)
    );
    let two = format!("{RESULT_PREFIX}{{}}\n{RESULT_PREFIX}{{}}\n");
    assert_eq!(parse_result(t, &two, &p), Err(ResultError::Several(2)));
    assert!(matches!(
        parse_result(t, &format!("{RESULT_PREFIX}not json"), &p),
        Err(ResultError::Invalid(_))
    ));
    assert!(matches!(
        parse_result(
            t,
            &line(json!({"template": "ad.remove_user@1", "status": "changed"})),
            &p
        ),
        Err(ResultError::WrongTemplate { .. })
    ));
    assert!(matches!(
        parse_result(t, &line(json!({"template": "ad.reset_password@1", "status": "done"})), &p),
        Err(ResultError::Invalid(m)) if m.contains("`done`")
    ));
    let unchanged = parse_result(
        t,
        &line(
            json!({"template": "ad.reset_password@1", "status": "unchanged", "result": {}, "prior": {}}),
        ),
        &p,
    );
    assert_eq!(
        unchanged,
        Ok(Outcome::Unchanged {
            result: json!({}),
            prior: json!({})
        })
    );
    assert_eq!(inverse(t, &p, &unchanged.expect("ok")), Inverse::Nothing);
    assert!(
        matches!(inverse(t, &p, &Outcome::Changed { result: json!({}), prior: json!({}) }), Inverse::Irreversible(w) if w.contains("old password"))
    );
}

/// A plausible `Changed` outcome for `t`, as its script would report it.
fn changed(t: &Template) -> Outcome {
    let prior = match t.op {
        "ad.remove_user" => {
            json!({"existed": true, "recycle_bin": true, "user": {"object_guid": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}})
        }
        "ad.set_enabled" => json!({"enabled": true}),
        "ad.set_user" => json!({"attributes": {"title": "Engineer"}, "replace": {}}),
        "ad.set_manager" => json!({"manager": null}),
        "ad.copy_groups" => json!({"added": ["CN=Sales,OU=Groups,DC=c,DC=l"]}),
        "ad.move_object" => json!({"previous_parent": "OU=Staff,DC=c,DC=l"}),
        "exchange_server.set_remote_mailbox" => json!({"type": "Regular"}),
        "exchange_server.set_mailbox_type" => json!({"type": "Regular"}),
        "exchange_server.set_hidden_from_gal" => json!({"hidden": false}),
        "exchange_server.set_forwarding" => {
            json!({"forwarding_address": null, "forwarding_smtp_address": null, "deliver_to_mailbox_and_forward": false})
        }
        "exchange_server.set_auto_reply" => {
            json!({"state": "Disabled", "internal_message": "", "external_message": "", "external_audience": "All", "start_time": null, "end_time": null})
        }
        _ => json!({}),
    };
    Outcome::Changed {
        result: json!({"object_guid": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}),
        prior,
    }
}

#[test]
fn every_reversible_template_has_an_inverse_that_builds() {
    for t in TEMPLATES {
        let p = Payload::build(t, &inputs_with(t, "jdoe")).expect("payload");
        let inv = inverse(t, &p, &changed(t));
        match (t.undo, &inv) {
            (Undo::By(op), Inverse::Run { op: got, inputs }) => {
                assert_eq!(op, *got, "{}", t.op);
                let it = template(got).expect("inverse template");
                let built =
                    Payload::build(it, inputs).unwrap_or_else(|e| panic!("{} -> {got}: {e}", t.op));
                assert_eq!(
                    built.fields().get("server"),
                    p.fields().get("server"),
                    "{}",
                    t.op
                );
            }
            (Undo::Irreversible(_), Inverse::Irreversible(_))
            | (Undo::NotNeeded | Undo::Internal, Inverse::Nothing) => {}
            other => panic!("{}: {other:?}", t.op),
        }
        // Nothing changed, nothing to undo.
        let same = Outcome::Unchanged {
            result: json!({}),
            prior: json!({}),
        };
        assert_eq!(inverse(t, &p, &same), Inverse::Nothing, "{}", t.op);
    }
    // A deleted user comes back only with the AD Recycle Bin.
    let t = template("ad.remove_user").expect("t");
    let p = Payload::build(t, &obj(json!({"identity": "jdoe"}))).expect("p");
    let off = Outcome::Changed {
        result: json!({}),
        prior: json!({"recycle_bin": false, "user": {}}),
    };
    assert!(matches!(inverse(t, &p, &off), Inverse::Irreversible(w) if w.contains("Recycle Bin")));
    // Groups added before a failure are removed again.
    let t = template("ad.copy_groups").expect("t");
    let p = Payload::build(t, &obj(json!({"template": "tmpl", "member": "jdoe"}))).expect("p");
    let partial = Outcome::Failed {
        reason: "x".to_owned(),
        category: "error".to_owned(),
        prior: json!({"added": ["CN=A"]}),
    };
    assert_eq!(
        inverse(t, &p, &partial),
        Inverse::Run {
            op: "ad.remove_groups",
            inputs: obj(json!({"member": "jdoe", "groups": ["CN=A"]}))
        }
    );
}

#[test]
fn ops_match_the_sandbox_runner_where_it_knows_them() {
    // The simulated agent (sandbox/src/runner.rs) executes these names at version 1.
    for op in [
        "ad.new_user",
        "ad.remove_user",
        "ad.set_enabled",
        "ad.reset_password",
        "ad.add_group_member",
        "ad.remove_group_member",
        "ad.move_object",
        "ad.set_manager",
        "ad.get_user",
        "adsync.start_delta",
        "adsync.status",
        "exchange_server.enable_remote_mailbox",
        "exchange_server.disable_remote_mailbox",
        "exchange_server.set_remote_mailbox",
        "exchange_server.enable_mailbox",
        "exchange_server.disable_mailbox",
    ] {
        let t = template(op).unwrap_or_else(|| panic!("no template {op}"));
        assert_eq!(t.version, 1, "{op}");
    }
}

/// Routing and templates agree: every catalogue op is routed for every provider combination
/// (or refused with a reason), and every RMM action routing produces has a template that takes
/// the arguments routing adds.
#[test]
fn routing_covers_the_catalogue_and_every_rmm_action_has_a_template() {
    use steward_core::routing::{Error as RouteError, route_spec};
    use steward_schemas::{IdentityProvider, MailboxProvider};
    let mut seen = std::collections::BTreeSet::new();
    for idp in IdentityProvider::ALL {
        for mbx in MailboxProvider::ALL {
            let mut v = json!({
                "id": "contoso", "name": "Contoso", "tenant_id": "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10",
                "identity_provider": idp.name(), "mailbox_provider": mbx.name(),
                "rmm": {"provider": "datto", "site": "s1"},
            });
            if idp != IdentityProvider::EntraId {
                v["ad_runner"] = json!("RUNNER01");
            }
            if idp == IdentityProvider::Hybrid {
                v["entra_connect_server"] = json!("AADC01");
            }
            if mbx != MailboxProvider::ExchangeOnline {
                v["exchange_server"] = json!("EXCH01");
                v["exchange_runner"] = json!("RUNNER02");
            }
            let c = company(v);
            for spec in crate::catalog::CATALOG {
                match route_spec(&c, spec.name, Some(spec)) {
                    Ok(r) => {
                        for a in &r.actions {
                            if let Target::Rmm { .. } = a.target {
                                let t = template(a.action).unwrap_or_else(|| {
                                    panic!(
                                        "{}: routing sends {} to the RMM, which has no template",
                                        spec.name, a.action
                                    )
                                });
                                assert_eq!(
                                    routing::placement(&c, a.action, t.role).as_ref(),
                                    Ok(&a.target),
                                    "{}: `steward script {}` places it where routing does",
                                    spec.name,
                                    a.action
                                );
                                for k in a.args.keys() {
                                    assert!(
                                        t.field(k).is_some(),
                                        "{}: {} takes no `{k}`",
                                        spec.name,
                                        a.action
                                    );
                                }
                                seen.insert(a.action);
                            }
                        }
                    }
                    Err(RouteError::NotAvailable { .. } | RouteError::Combination { .. }) => {}
                    Err(e) => panic!("{} for {idp:?}/{mbx:?}: {e}", spec.name),
                }
            }
        }
    }
    assert!(
        seen.contains("adsync.start_delta") && seen.contains("exchange_server.set_remote_mailbox"),
        "{seen:?}"
    );
}
