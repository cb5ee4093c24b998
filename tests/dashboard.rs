//! The technicians' dashboard (issue 13), against a real `steward serve` and `steward worker` on
//! a private Redis: over plain HTTP (sessions, CSRF, scoping, escaping; always runs), and in
//! Debian's Chromium driven by Playwright (`tests/dashboard/e2e.mjs`: sign-in, live updates,
//! approving from the inbox, cancel with rollback, scoping, CSRF, an expired session, axe on
//! every page, screenshots of every page into `target/screenshots/`, or the folder
//! `STEWARD_SCREENSHOTS` names: `STEWARD_SCREENSHOTS=docs/screenshots` refreshes the two the
//! README shows). `scripts/setup` installs Chromium and the
//! Node packages; without them the browser test says so loudly and passes, unless `CI` is set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use steward_engine::api::dashboard::Sessions;
use steward_engine::embedded::Persistence;
use steward_tests::procs::Installation;
use steward_tests::{Env, Proc, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_steward");
const CHROMIUM: &str = "/usr/bin/chromium";

/// A step that takes long enough to be seen queued, then one that records a change.
const SLOW: &str = "name: slow\ninputs:\n  user: {type: string}\nsteps:\n  - {id: nap, op: sleep, description: \"wait a moment for ${{ inputs.user }}\", with: {ms: 4000}}\n  - {id: record, op: ledger, needs: [nap], with: {key: \"slow:${{ inputs.user }}\"}}\n";
/// A change, a gate any one of the company's approvers decides, and a change it unlocks.
const GATED: &str = "name: gated\ninputs:\n  user: {type: string}\ndefaults: {on_failure: rollback, retry: {attempts: 2, initial: 50ms}}\nsteps:\n  - {id: prepare, op: ledger, with: {key: \"prepare:${{ inputs.user }}\"}}\n  - id: approval\n    needs: [prepare]\n    gate: {approvers: company, quorum: 1, expires_in: 24h, message: \"Create ${{ inputs.user }}?\"}\n  - {id: apply, op: ledger, description: \"apply the change for ${{ inputs.user }}\", needs: [approval], with: {key: \"apply:${{ inputs.user }}\"}}\n";

/// `steward serve` and `steward worker` on a private Redis (see [`Installation`]) offering SLOW
/// and GATED, contoso's instructions with markup in them, and an HTTP client that does not
/// follow redirects.
struct Stack {
    inst: Installation,
    http: reqwest::Client,
}

impl std::ops::Deref for Stack {
    type Target = Installation;

    fn deref(&self) -> &Installation {
        &self.inst
    }
}

impl Stack {
    async fn start() -> Result<Self> {
        let env = Env::start(Persistence::None).await?;
        let companies = env.companies();
        let mut contoso = companies
            .get(&"contoso".parse()?)
            .await?
            .context("contoso")?;
        contoso.company.custom_instructions =
            "Call the site manager before approving <b>anything</b>.".to_owned();
        companies.update(contoso.company, None).await?;
        let inst = Installation::start(env, BIN, &[("slow", SLOW), ("gated", GATED)]).await?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { inst, http })
    }

    /// Starts `workflow` for contoso as `who`; the run's id.
    async fn start_run(&self, who: &str, workflow: &str, user: &str) -> Result<String> {
        let res = self
            .http
            .post(format!("{}/v1/runs", self.api))
            .bearer_auth(&self.tokens[who])
            .json(&json!({"workflow": workflow, "company": "contoso", "inputs": {"user": user}, "ticket": {"psa": "autotask", "id": "T-<i>9</i>", "title": "<script>alert('ticket')</script>"}}))
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await?;
        if status.as_u16() != 201 {
            bail!("starting {workflow}: {status} {body}");
        }
        Ok(body["run"].as_str().context("run id")?.to_owned())
    }

    async fn status(&self, run: &str) -> Result<String> {
        let v: Value = self
            .http
            .get(format!("{}/v1/runs/{run}", self.api))
            .bearer_auth(&self.tokens["admin"])
            .send()
            .await?
            .json()
            .await?;
        Ok(v["summary"]["status"].as_str().unwrap_or("").to_owned())
    }

    async fn wait_status(&self, run: &str, want: &str) -> Result<()> {
        wait_for(
            &format!("{run} to be {want}"),
            Duration::from_secs(30),
            || async { Ok((self.status(run).await? == want).then_some(())) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }

    /// Signs in with `who`'s token through the sign-in form; the session cookie's value.
    async fn sign_in(&self, who: &str) -> Result<String> {
        let page = self.http.get(format!("{}/login", self.api)).send().await?;
        let pre = set_cookie(&page, "stw_login").context("the login form's cookie")?;
        let html = page.text().await?;
        let field = hidden(&html, "_csrf").context("the login form's token")?;
        assert_eq!(pre, field, "the double-submitted token is the cookie's");
        let res = self
            .http
            .post(format!("{}/login", self.api))
            .header("cookie", format!("stw_login={pre}"))
            .form(&[
                ("_csrf", field.as_str()),
                ("token", &self.tokens[who]),
                ("next", "/"),
            ])
            .send()
            .await?;
        assert_eq!(res.status().as_u16(), 303, "signing in as {who}");
        set_cookie(&res, "stw_session").context("the session cookie")
    }

    /// GET a page with a session: (status, body, location).
    async fn page(&self, session: &str, path: &str) -> Result<(u16, String, String)> {
        let res = self
            .http
            .get(format!("{}{path}", self.api))
            .header("cookie", format!("stw_session={session}"))
            .send()
            .await?;
        let status = res.status().as_u16();
        let location = res
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok((status, res.text().await?, location))
    }

    /// POST a form with a session: (status, body).
    async fn post(
        &self,
        session: &str,
        path: &str,
        form: &[(&str, &str)],
    ) -> Result<(u16, String)> {
        let res = self
            .http
            .post(format!("{}{path}", self.api))
            .header("cookie", format!("stw_session={session}"))
            .form(form)
            .send()
            .await?;
        Ok((res.status().as_u16(), res.text().await?))
    }
}

fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = kv.split_once('=')?;
            (k == name).then(|| {
                assert!(
                    attrs.contains("HttpOnly") && attrs.contains("SameSite=Strict"),
                    "{name}: {v}"
                );
                val.to_owned()
            })
        })
}

/// A hidden field's value in a page.
fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let at = html.find(&marker)? + marker.len();
    Some(html[at..].split('"').next()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_enforce_sessions_csrf_scoping_and_escaping() -> Result<()> {
    let stack = Stack::start().await?;
    // `/` answered 404 before; now it asks an unsigned visitor to sign in.
    let (status, _, location) = stack.page("nope", "/").await?;
    assert_eq!(
        (status, location.as_str()),
        (303, "/login?next=%2F&ended=1")
    );
    let res = stack.http.get(format!("{}/", stack.api)).send().await?;
    assert_eq!(res.headers()["location"], "/login?next=%2F");
    // The sign-in form refuses a post whose token does not match its cookie.
    let res = stack
        .http
        .post(format!("{}/login", stack.api))
        .header("cookie", "stw_login=aaaa")
        .form(&[("_csrf", "bbbb"), ("token", stack.tokens["tech"].as_str())])
        .send()
        .await?;
    assert_eq!(res.status().as_u16(), 403);
    assert!(set_cookie(&res, "stw_session").is_none());

    let tech = stack.sign_in("tech").await?;
    let outsider = stack.sign_in("outsider").await?;
    let hostile = "<script>alert(\"x\")</script>'\"><img src=x onerror=alert(1)>";
    let run = stack.start_run("tech", "gated", hostile).await?;
    wait_for("the gate to open", Duration::from_secs(30), || async {
        let (_, html, _) = stack.page(&tech, &format!("/runs/{run}")).await?;
        Ok(html
            .contains("data-state=\"awaiting_approval\"")
            .then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.logs()))?;

    // The run page: hostile text only ever escaped.
    let (status, html, _) = stack.page(&tech, &format!("/runs/{run}")).await?;
    assert_eq!(status, 200);
    assert!(!html.contains("<script>alert"), "raw script in the page");
    assert!(!html.contains("<img src=x"), "raw markup in the page");
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"));
    assert!(html.contains("T-&lt;i&gt;9&lt;/i&gt;"));
    // The graph, labelled; the gate's approvers under "why is this waiting"; the actions.
    assert!(html.contains("<svg class=\"graph\"") && html.contains("⏸ awaiting approval"));
    assert!(
        html.contains("Why is this waiting") && html.contains("alice@msp.example, bob@msp.example")
    );
    assert!(html.contains("data-action=\"cancel_with_rollback\""));
    // Each step's own history (its attempts, errors, undo) beside it.
    assert!(
        html.contains("class=\"step-history\""),
        "no step history in the page"
    );
    let csrf = hidden(&html, "_csrf").context("the page's CSRF token")?;

    // Another company's technician: not in their list, their page and actions refused.
    let (status, html, _) = stack.page(&outsider, "/").await?;
    assert_eq!(status, 200);
    assert!(
        !html.contains(&run),
        "a fabrikam technician lists contoso's run"
    );
    let (status, html, _) = stack.page(&outsider, &format!("/runs/{run}")).await?;
    assert_eq!(status, 403, "{html}");
    assert!(html.contains("may not act on this company"));
    let (_, own_page, _) = stack.page(&outsider, "/").await?;
    let outsider_csrf = hidden(&own_page, "_csrf").context("csrf")?;
    for (path, field) in [
        (format!("/runs/{run}/cancel"), ("rollback", "true")),
        (
            format!("/approvals/{run}/approval"),
            ("decision", "approve"),
        ),
    ] {
        let (status, body) = stack
            .post(&outsider, &path, &[("_csrf", &outsider_csrf), field])
            .await?;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, _) = stack
        .page(&outsider, &format!("/live/runs/{run}"))
        .await
        .map(|(s, b, _)| (s, b))?;
    assert_eq!(status, 403, "the live stream is scoped too");
    assert_eq!(stack.status(&run).await?, "running");

    // CSRF: no token, another session's token, a wrong one: refused, nothing done.
    for bad in [None, Some(outsider_csrf.as_str()), Some("x")] {
        let mut form = vec![("reason", "csrf")];
        if let Some(t) = bad {
            form.push(("_csrf", t));
        }
        let (status, body) = stack
            .post(&tech, &format!("/runs/{run}/pause"), &form)
            .await?;
        assert_eq!(status, 403, "{bad:?}: {body}");
        assert!(body.contains("CSRF"), "{body}");
    }
    assert_eq!(stack.status(&run).await?, "running");
    // Bad input is a 4xx page naming the field, never a 500.
    let long = "x".repeat(2001);
    let (status, body) = stack
        .post(
            &tech,
            &format!("/runs/{run}/pause"),
            &[("_csrf", &csrf), ("reason", &long)],
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("reason") && body.contains("longer than 2000"));
    let (status, _, _) = stack.page(&tech, "/runs/not-a-run").await?;
    assert_eq!(status, 400);
    let (status, body, _) = stack.page(&tech, "/?status=sideways").await?;
    assert_eq!(status, 200);
    assert!(body.contains("is not a run status"), "the list says why");
    // With the token, the action is the API's: the run is paused, the browser sent back.
    let (status, _) = stack
        .post(
            &tech,
            &format!("/runs/{run}/pause"),
            &[("_csrf", &csrf), ("reason", "checking")],
        )
        .await?;
    assert_eq!(status, 303);
    assert_eq!(stack.status(&run).await?, "paused");
    let (_, html, _) = stack.page(&tech, &format!("/runs/{run}")).await?;
    assert!(
        html.contains("data-action=\"resume\""),
        "a paused run offers resume"
    );
    let (status, _) = stack
        .post(&tech, &format!("/runs/{run}/resume"), &[("_csrf", &csrf)])
        .await?;
    assert_eq!(status, 303);
    assert_eq!(stack.status(&run).await?, "running");
    let (status, _) = stack
        .post(&tech, &format!("/runs/{run}/pause"), &[("_csrf", &csrf)])
        .await?;
    assert_eq!(status, 303);

    // `steward technicians login-link` goes through the API with the admin's token.
    let login_link = |who: &str| {
        Command::new(BIN)
            .args(["technicians", "login-link", "carol@msp.example"])
            .env("STEWARD_API_URL", &stack.api)
            .env("STEWARD_TOKEN", &stack.tokens[who])
            .env("STEWARD_REDIS__URL", "redis://127.0.0.1:9/")
            .output()
    };
    let out = login_link("admin")?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("login link for carol@msp.example")
            && printed.contains(&format!("{}/login/", stack.api)),
        "{printed}"
    );
    let out = login_link("tech")?;
    assert!(!out.status.success(), "a technician made a login link");
    // A login link made through the API works once.
    let me: Value = stack
        .http
        .get(format!("{}/v1/technicians/me", stack.api))
        .bearer_auth(&stack.tokens["bob"])
        .send()
        .await?
        .json()
        .await?;
    let make_link = |who: &str| {
        stack
            .http
            .post(format!(
                "{}/v1/technicians/{}/login-link",
                stack.api,
                me["id"].as_str().unwrap_or("")
            ))
            .bearer_auth(&stack.tokens[who])
            .send()
    };
    let link: Value = make_link("admin").await?.json().await?;
    let url = link["url"].as_str().context("the link")?.to_owned();
    assert!(url.starts_with(&format!("{}/login/", stack.api)), "{link}");
    let refused = make_link("tech").await?;
    assert_eq!(
        refused.status().as_u16(),
        403,
        "only admins make login links"
    );
    let opened = stack.http.get(&url).send().await?;
    assert_eq!(
        opened.status().as_u16(),
        200,
        "opening the link changes nothing"
    );
    let pre = set_cookie(&opened, "stw_login").context("cookie")?;
    let use_link = || {
        stack
            .http
            .post(&url)
            .header("cookie", format!("stw_login={pre}"))
            .form(&[("_csrf", pre.as_str())])
            .send()
    };
    let used = use_link().await?;
    assert_eq!(used.status().as_u16(), 303);
    let bob = set_cookie(&used, "stw_session").context("bob's session")?;
    let (status, html, _) = stack.page(&bob, "/approvals").await?;
    assert_eq!(status, 200);
    assert!(html.contains("bob@msp.example") && html.contains(&run));
    let again = use_link().await?;
    assert_eq!(again.status().as_u16(), 410, "a login link works once");

    // An expired session (Redis expires its key) is sent to sign in again.
    let sessions = Sessions::for_store(&stack.env.store);
    stack
        .env
        .store
        .db()
        .query::<()>(redis::cmd("PEXPIRE").arg(sessions.session_key(&bob)).arg(1))
        .await?;
    wait_for("the session to expire", Duration::from_secs(5), || async {
        Ok(sessions.get(&bob).await?.is_none().then_some(()))
    })
    .await?;
    let (status, _, location) = stack.page(&bob, "/approvals").await?;
    assert_eq!(
        (status, location.as_str()),
        (303, "/login?next=%2Fapprovals&ended=1")
    );
    // Signing out ends the session in Redis.
    let (status, _) = stack.post(&tech, "/logout", &[("_csrf", &csrf)]).await?;
    assert_eq!(status, 303);
    let (status, _, _) = stack.page(&tech, "/").await?;
    assert_eq!(status, 303);
    Ok(())
}

/// Where the browser test finds Node's packages and Chromium; `None` (after saying so loudly)
/// when they are missing and CI is not set.
fn browser_tools(root: &Path) -> Option<PathBuf> {
    let script = root.join("tests/dashboard/e2e.mjs");
    let missing: Vec<&str> = [
        (!Path::new(CHROMIUM).exists()).then_some("Debian's chromium (/usr/bin/chromium)"),
        (!root
            .join("tests/dashboard/node_modules/playwright-core")
            .exists())
        .then_some("tests/dashboard/node_modules (playwright-core, axe-core)"),
        Command::new("node")
            .arg("--version")
            .output()
            .is_err()
            .then_some("node"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some(script);
    }
    let message = format!(
        "the dashboard's browser test needs {}: run scripts/setup",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
        panic!("{message} (CI is set, so this fails)");
    }
    eprintln!("\n!!!!!!!!\n!!! SKIPPED: {message}\n!!!!!!!!\n");
    None
}

/// Runs the browser script in `phase`; its JSON.
fn run_browser(script: &Path, config: &Value, dir: &Path, phase: &str) -> Result<Value> {
    let mut config = config.clone();
    config["phase"] = json!(phase);
    config["user_data_dir"] = json!(dir.join(format!("chromium-{phase}")).display().to_string());
    let file = dir.join(format!("e2e-{phase}.json"));
    std::fs::write(&file, serde_json::to_vec(&config)?)?;
    let out = Command::new("node")
        .arg(script)
        .arg(&file)
        .output()
        .context("node runs")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).with_context(|| {
        format!(
            "the browser script printed no result (exit {:?}):\n{stdout}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn failed_checks(result: &Value) -> Vec<String> {
    result["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] != true)
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technicians_follow_and_steer_runs_in_chromium() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(script) = browser_tools(root) else {
        return Ok(());
    };
    let stack = Stack::start().await?;
    let dir = tempfile::tempdir()?;
    let config = json!({
        "base": stack.api,
        "tokens": stack.tokens,
        "chromium": CHROMIUM,
        "shots_dir": std::env::var("STEWARD_SCREENSHOTS")
            .map_or_else(|_| root.join("target/screenshots"), |d| root.join(d))
            .display()
            .to_string(),
    });
    let main = tokio::task::block_in_place(|| run_browser(&script, &config, dir.path(), "main"))?;
    let failed = failed_checks(&main);
    assert!(
        failed.is_empty(),
        "browser checks failed:\n{}\n{}",
        failed.join("\n"),
        stack.logs()
    );
    let names: Vec<&str> = main["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for want in [
        "signing in with a token lands on the runs list as that technician",
        "the runs list shows a new run and its completion without reloading",
        "a run page follows a step from queued to succeeded live, labelled in words",
        "after the approval the run continues to completion, the timeline naming the approver and comment",
        "after cancel with rollback the page shows the undo and the reason",
        "a fabrikam technician cannot open a contoso run page (403)",
        "a fabrikam technician cannot cancel a contoso run (403, run untouched)",
        "a post without the CSRF token or with a wrong one is refused (403) and does nothing",
        "hostile run inputs and ticket fields are shown as text, never run",
        "revoking a technician's sessions signs their open pages out",
    ] {
        assert!(
            names.contains(&want),
            "the browser script did not check: {want}"
        );
    }
    // axe ran on every page, at no serious or critical violation (checked above).
    let pages: Vec<&String> = main["axe"].as_object().context("axe")?.keys().collect();
    for page in [
        "login",
        "runs",
        "run-queued",
        "run-completed",
        "approvals",
        "run-rolled-back",
        "forbidden",
        "companies",
        "company",
        "import-errors",
    ] {
        assert!(
            pages.iter().any(|p| *p == page),
            "axe did not check {page}: {pages:?}"
        );
    }
    assert!(
        main["shots"].as_array().is_some_and(|s| s.len() >= 20),
        "screenshots: {}",
        main["shots"]
    );

    // The session the script kept, expired by Redis, then used in a fresh browser.
    let session = main["keep"]["session"]
        .as_str()
        .context("a session")?
        .to_owned();
    let sessions = Sessions::for_store(&stack.env.store);
    stack
        .env
        .store
        .db()
        .query::<()>(
            redis::cmd("PEXPIRE")
                .arg(sessions.session_key(&session))
                .arg(1),
        )
        .await?;
    wait_for("the session to expire", Duration::from_secs(5), || async {
        Ok(sessions.get(&session).await?.is_none().then_some(()))
    })
    .await?;
    let mut config = config;
    config["session"] = json!(session);
    let expired =
        tokio::task::block_in_place(|| run_browser(&script, &config, dir.path(), "expired"))?;
    let failed = failed_checks(&expired);
    assert!(
        failed.is_empty() && !expired["checks"].as_array().is_none_or(Vec::is_empty),
        "expired-session checks failed:\n{}",
        failed.join("\n")
    );
    let parked = main["keep"]["parked_run"].as_str().context("parked run")?;
    stack.wait_status(parked, "paused").await?;
    Ok(())
}

/// `steward demo --stay` prints the dashboard's address and a login link; with it, a technician
/// signs in and sees every run the demo started, and the demo stops cleanly on Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_dashboard_link_that_shows_its_runs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut demo = Proc::spawn(
        Path::new(BIN),
        dir.path(),
        "demo",
        &["demo".to_owned(), "--stay".to_owned()],
    )?;
    let text = wait_for(
        "the demo to finish and stay",
        Duration::from_secs(90),
        || {
            let text = std::fs::read_to_string(&demo.log).unwrap_or_default();
            async move { Ok(text.contains("Still running").then_some(text)) }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", demo.log_text()))?;
    let link = text
        .lines()
        .rev()
        .find_map(|l| {
            l.trim()
                .strip_prefix("http://")
                .filter(|l| l.contains("/login/"))
        })
        .map(|l| format!("http://{l}"))
        .context("no login link after `Still running`")?;
    let base = link.split("/login/").next().unwrap_or_default().to_owned();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let opened = http.get(&link).send().await?;
    assert_eq!(opened.status().as_u16(), 200);
    let pre = set_cookie(&opened, "stw_login").context("cookie")?;
    let used = http
        .post(&link)
        .header("cookie", format!("stw_login={pre}"))
        .form(&[("_csrf", pre.as_str())])
        .send()
        .await?;
    assert_eq!(used.status().as_u16(), 303);
    let session = set_cookie(&used, "stw_session").context("session")?;
    let html = http
        .get(format!("{base}/"))
        .header("cookie", format!("stw_session={session}"))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(html.matches("<tr data-run=").count(), 5, "{html}");
    assert_eq!(
        html.matches("data-status=\"completed\"").count(),
        5,
        "{html}"
    );
    assert!(html.contains("lead@msp.example (admin)"));
    demo.signal("INT")?;
    wait_for("the demo to stop", Duration::from_secs(30), || {
        let alive = demo.alive();
        async move { Ok((!alive).then_some(())) }
    })
    .await?;
    Ok(())
}
