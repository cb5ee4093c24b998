//! Microsoft 365 tenant connections end to end: `steward serve` and `steward worker` processes
//! pointed at the sandbox (`--sandbox`), a tenant connected through the consent flow over real
//! HTTP (refusal, wrong redirect URI, acceptance, a replayed callback), a workflow creating and
//! licensing a user in it, the initial password reachable only through its one-time link, and
//! no secret anywhere in Redis, the logs or the API's answers. Then the tenant's status through
//! a transient failure, a revoked consent and the scheduled refresh.

mod m365_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use steward_engine::config::Config;
use steward_engine::embedded::Persistence;
use steward_engine::tenants::{self, TenantStatus};
use steward_schemas::{CompanyScope, Role};
use steward_tests::{Env, Proc, wait_for};

use m365_support::*;

const BIN: &str = env!("CARGO_BIN_EXE_steward");
const T: Duration = Duration::from_secs(60);

const ONBOARD: &str = r#"
name: onboard_cloud
inputs: {upn: {type: string}}
defaults: {on_failure: rollback, retry: {attempts: 3, initial: 50ms, max_delay: 200ms}}
steps:
  - {id: create, op: user.create, with: {user_principal_name: "${{ inputs.upn }}", display_name: "Consent Test", usage_location: GB}}
  - {id: licence, op: license.assign, needs: [create], with: {user: "${{ steps.create.output.id }}", sku: SPB}}
"#;

/// An HTTP client that does not follow redirects (the test plays the browser).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The consent page of `url` accepted (or refused) as a browser would post its form; the
/// redirect's `Location`.
async fn consent(url: &str, decision: &str) -> Result<url::Url> {
    let b = browser();
    let page = b.get(url).send().await?;
    let status = page.status();
    let html = page.text().await?;
    if !status.is_success() || !html.contains("Permissions requested") {
        bail!("the consent page answered {status}: {html}");
    }
    let url = url::Url::parse(url)?;
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.push(("decision".to_owned(), decision.to_owned()));
    let res = b.post(url.as_str()).form(&form).send().await?;
    if res.status().as_u16() != 302 {
        bail!("the consent answer is {}, not a redirect", res.status());
    }
    let location = res
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .context("no Location")?;
    Ok(url::Url::parse(location)?)
}

fn param(url: &url::Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Every value in the test's namespace (strings, hashes, lists, sets, sorted sets, streams).
async fn redis_text(env: &Env) -> Result<String> {
    let client = redis::Client::open(env.redis.url())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", env.namespace))
        .query_async(&mut c)
        .await?;
    let mut out = String::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(&mut c).await?;
        let v: redis::Value = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&k).query_async(&mut c).await?,
            "hash" => redis::cmd("HGETALL").arg(&k).query_async(&mut c).await?,
            "list" => {
                redis::cmd("LRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await?
            }
            "set" => redis::cmd("SMEMBERS").arg(&k).query_async(&mut c).await?,
            "zset" => {
                redis::cmd("ZRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await?
            }
            "stream" => {
                redis::cmd("XRANGE")
                    .arg(&k)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut c)
                    .await?
            }
            _ => redis::Value::Nil,
        };
        out.push_str(&k);
        out.push(' ');
        out.push_str(&format!("{v:?}"));
        out.push('\n');
    }
    Ok(out)
}

struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
    /// Every answer, for the secret scan.
    seen: std::sync::Mutex<String>,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.parse()?, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        self.seen.lock().unwrap().push_str(&text);
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_connected_by_consent_runs_a_cloud_workflow_and_secrets_stay_out() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let sb = sandbox().await?;
    let dir = tempfile::tempdir()?;
    let flows = dir.path().join("workflows");
    std::fs::create_dir(&flows)?;
    std::fs::write(flows.join("onboard.yaml"), ONBOARD)?;
    let auth = steward_engine::auth::Auth::for_store(&env.store);
    let admin = auth
        .add_technician("admin@msp.example", "Admin", Role::Admin, CompanyScope::ALL)
        .await?;
    let (_, token) = auth.create_token(admin.id, "test").await?;
    let outsider = auth
        .add_technician(
            "outsider@msp.example",
            "Outsider",
            Role::Technician,
            CompanyScope::Only(vec!["fabrikam".parse()?]),
        )
        .await?;
    let (_, outsider_token) = auth.create_token(outsider.id, "test").await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let api_url = format!("http://127.0.0.1:{port}");
    let app_env = [
        ("STEWARD_M365__CLIENT_ID", CLIENT_ID),
        ("STEWARD_M365__CLIENT_SECRET", CLIENT_SECRET),
        ("STEWARD_HTTP__PUBLIC_URL", api_url.as_str()),
    ];
    let mut args = env.cli_args();
    args.extend(
        [
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tick",
            "20ms",
            "--workflows",
            &flows.display().to_string(),
            "--sandbox",
            &sb.base_url,
        ]
        .map(str::to_owned),
    );
    let serve = Proc::spawn_env(Path::new(BIN), dir.path(), "serve", &args, &app_env)?;
    let mut args = env.cli_args();
    args.extend(["worker", "--sandbox", &sb.base_url].map(str::to_owned));
    let worker = Proc::spawn_env(Path::new(BIN), dir.path(), "worker", &args, &app_env)?;
    let logs = || format!("{}\n{}", serve.log_text(), worker.log_text());
    let api = Api {
        url: api_url.clone(),
        token: token.clone(),
        http: reqwest::Client::new(),
        seen: Default::default(),
    };
    wait_for("the API", T, || async {
        Ok(api
            .call("GET", "/readyz", None)
            .await
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|_| ()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;

    // Company scoping: a technician of another company may not connect this one.
    let outsider_api = Api {
        url: api_url.clone(),
        token: outsider_token,
        http: reqwest::Client::new(),
        seen: Default::default(),
    };
    let (status, _) = outsider_api
        .call(
            "POST",
            "/v1/tenants/contoso/connect",
            Some(json!({"tenant": CONTOSO})),
        )
        .await?;
    assert_eq!(status, 403);

    // Refused consent: Microsoft sends the browser back with access_denied (AADSTS65004).
    let (status, start) = api
        .call(
            "POST",
            "/v1/tenants/contoso/connect",
            Some(json!({"tenant": CONTOSO})),
        )
        .await?;
    assert_eq!(status, 200, "{start}\n{}", logs());
    let url = start["consent_url"]
        .as_str()
        .context("consent_url")?
        .to_owned();
    assert!(
        url.starts_with(&format!(
            "{}/login/{CONTOSO}/oauth2/v2.0/authorize?",
            sb.base_url
        )),
        "{url}"
    );
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let back = consent(&url, "cancel").await?;
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    assert!(
        param(&back, "error_description")
            .unwrap_or_default()
            .starts_with("AADSTS65004:")
    );
    let res = browser().get(back.as_str()).send().await?;
    assert_eq!(res.status().as_u16(), 400);
    let page = res.text().await?;
    assert!(page.contains("AADSTS65004"), "{page}");
    let (status, _) = api.call("GET", "/v1/tenants/contoso", None).await?;
    assert_eq!(status, 404, "a refused consent connected the tenant");

    // A consent URL whose redirect URI the app does not have: an error page, no redirect.
    let (_, start) = api
        .call(
            "POST",
            "/v1/tenants/contoso/connect",
            Some(json!({"tenant": CONTOSO})),
        )
        .await?;
    let mut evil = url::Url::parse(start["consent_url"].as_str().context("url")?)?;
    let pairs: Vec<(String, String)> = evil
        .query_pairs()
        .map(|(k, v)| {
            if k == "redirect_uri" {
                (
                    k.into_owned(),
                    "https://evil.example/v1/tenants/callback".to_owned(),
                )
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    evil.query_pairs_mut().clear().extend_pairs(pairs);
    let res = browser().get(evil.as_str()).send().await?;
    assert_eq!(res.status().as_u16(), 400);
    assert!(res.headers().get("location").is_none());
    assert!(res.text().await?.contains("AADSTS50011"));

    // Accepted: the code comes back to Steward's callback, which redeems it once.
    let back = consent(start["consent_url"].as_str().context("url")?, "accept").await?;
    let code = param(&back, "code").context("code")?;
    let state = param(&back, "state").context("state")?;
    assert!(
        back.as_str()
            .starts_with(&format!("{api_url}/v1/tenants/callback?")),
        "{back}"
    );
    let res = browser().get(back.as_str()).send().await?;
    let status = res.status().as_u16();
    let page = res.text().await?;
    assert_eq!(status, 200, "{page}\n{}", logs());
    assert!(page.contains("Tenant connected"), "{page}");
    let res = browser().get(back.as_str()).send().await?;
    assert_eq!(
        res.status().as_u16(),
        400,
        "a replayed callback was accepted"
    );
    let (status, view) = api.call("GET", "/v1/tenants/contoso", None).await?;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "healthy", "{view}");
    assert_eq!(view["tenant"], CONTOSO);
    assert_eq!(view["connected_by"], "admin@msp.example");
    assert!(view["window_closes"].is_string(), "{view}");
    let (_, list) = outsider_api.call("GET", "/v1/tenants", None).await?;
    assert_eq!(
        list,
        json!([]),
        "another company's technician sees the tenant"
    );

    // The CLI speaks the same API.
    let out = std::process::Command::new(BIN)
        .args(["tenants", "show", "contoso"])
        .env("STEWARD_API_URL", &api_url)
        .env("STEWARD_TOKEN", &token)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("healthy") && text.contains(CONTOSO), "{text}");

    // A workflow against the connected tenant, through the worker process.
    let (status, started) = api
        .call(
            "POST",
            "/v1/runs",
            Some(json!({"workflow": "onboard_cloud", "company": "contoso", "inputs": {"upn": "consent.one@contoso.com"}})),
        )
        .await?;
    assert!(status == 201 || status == 200, "{started}\n{}", logs());
    let run = started["run"]
        .as_str()
        .or_else(|| started["summary"]["run"].as_str())
        .or_else(|| started["id"].as_str())
        .with_context(|| format!("no run id in {started}"))?
        .to_owned();
    let view = wait_for("the run to end", T, || async {
        let (_, v) = api.call("GET", &format!("/v1/runs/{run}"), None).await?;
        let s = v["summary"]["status"].as_str().unwrap_or("").to_owned();
        Ok(matches!(
            s.as_str(),
            "completed" | "rolled_back" | "rollback_failed" | "cancelled" | "failed" | "paused"
        )
        .then_some(v))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;
    assert_eq!(view["summary"]["status"], "completed", "{view}\n{}", logs());
    let text = view.to_string();
    let link = text
        .split('"')
        .find(|s| s.contains("/s/sl_"))
        .with_context(|| format!("no one-time link in the run: {view}"))?
        .to_owned();
    assert!(link.starts_with(&format!("{api_url}/s/sl_")), "{link}");
    let world = admin_get(&sb, "/world/contoso").await?;
    let user = world["tenant"]["users"]
        .as_array()
        .context("users")?
        .iter()
        .find(|u| u.to_string().contains("consent.one@contoso.com"))
        .context("the user was not created")?
        .clone();
    assert_eq!(user["licenses"].as_array().map(Vec::len), Some(1), "{user}");

    // The password: only through the link, once.
    let page = reqwest::get(&link).await?.text().await?;
    assert!(page.contains("Show the secret"), "{page}");
    let revealed = reqwest::Client::new()
        .post(&link)
        .send()
        .await?
        .text()
        .await?;
    let password = revealed
        .split("<pre")
        .nth(1)
        .and_then(|p| p.split('>').nth(1))
        .and_then(|p| p.split("</pre").next())
        .context("no secret on the page")?
        .to_owned();
    assert!(password.len() >= 12, "{password}");
    let again = reqwest::Client::new().post(&link).send().await?;
    assert_eq!(again.status().as_u16(), 410);

    // The built-in token refresh is a schedule of serve's: fired now, it refreshes the due
    // tenant.
    let (_, schedules) = api.call("GET", "/v1/schedules", None).await?;
    assert!(
        schedules.to_string().contains("token-refresh"),
        "{schedules}"
    );
    let (_, before) = api.call("GET", "/v1/tenants/contoso", None).await?;
    let tenants_store = tenants::Tenants::for_store(&env.store).context("keyring")?;
    assert_eq!(tenants_store.make_all_due().await?, 1);
    let (status, fired) = api
        .call("POST", "/v1/schedules/token-refresh/run", Some(json!(null)))
        .await?;
    assert_eq!(status, 200, "{fired}");
    wait_for("the scheduled refresh", T, || async {
        let (_, now) = api.call("GET", "/v1/tenants/contoso", None).await?;
        Ok(
            (now["last_refresh"] != before["last_refresh"] && now["status"] == "healthy")
                .then_some(()),
        )
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", logs()))?;

    // A certificate credential instead of the secret (admins): bad input is a 422 naming the
    // field and its fix, a good one is stored sealed and shown by its thumbprint only; refreshes sign
    // client assertions with it; removing it goes back to the secret.
    let cert_pem = include_str!("../sandbox/fixtures/certs/steward.cert.pem");
    let key_pem = include_str!("../sandbox/fixtures/certs/steward.key.pem");
    let other_key = include_str!("../sandbox/fixtures/certs/other.key.pem");
    for (body, field) in [
        (
            json!({"certificate": "nonsense", "private_key": key_pem}),
            "certificate",
        ),
        (
            json!({"certificate": cert_pem, "private_key": other_key}),
            "private_key",
        ),
        (
            json!({"certificate": cert_pem, "private_key": "nonsense"}),
            "private_key",
        ),
        (
            json!({"certificate": cert_pem, "private_key": key_pem, "algorithm": "HS256"}),
            "algorithm",
        ),
    ] {
        let (status, b) = api
            .call("PUT", "/v1/tenants/contoso/certificate", Some(body))
            .await?;
        assert_eq!(status, 422, "{b}");
        assert_eq!(b["error"]["field"], field, "{b}");
        assert!(
            b["error"]["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "{b}"
        );
    }
    let (status, view) = api
        .call(
            "PUT",
            "/v1/tenants/contoso/certificate",
            Some(json!({"certificate": cert_pem, "private_key": key_pem, "algorithm": "PS256"})),
        )
        .await?;
    assert_eq!(status, 200, "{view}\n{}", logs());
    assert_eq!(view["certificate"]["algorithm"], "PS256", "{view}");
    assert_eq!(
        view["certificate"]["thumbprint"].as_str().map(str::len),
        Some(40),
        "{view}"
    );
    let (status, refreshed) = api
        .call("POST", "/v1/tenants/contoso/refresh", Some(json!(null)))
        .await?;
    assert_eq!(
        (status, &refreshed["status"]),
        (200, &json!("healthy")),
        "{refreshed}\n{}",
        logs()
    );
    assert!(refreshed["certificate"].is_object(), "{refreshed}");
    let (status, _) = api
        .call("DELETE", "/v1/tenants/contoso/certificate", None)
        .await?;
    assert_eq!(status, 204);
    let (status, _) = api
        .call("DELETE", "/v1/tenants/contoso/certificate", None)
        .await?;
    assert_eq!(status, 404);
    let key_line = key_pem.lines().nth(3).context("a key line")?.to_owned();

    // No secret in Redis, the logs or the API's answers.
    let _ = api.call("GET", "/v1/tenants", None).await?;
    let _ = api.call("GET", &format!("/v1/runs/{run}"), None).await?;
    let _ = api.call("GET", "/v1/runs", None).await?;
    let haystacks = [
        ("redis", redis_text(&env).await?),
        ("logs", logs()),
        ("answers", api.seen.lock().unwrap().clone()),
    ];
    for (what, text) in &haystacks {
        for (name, secret) in [
            ("client secret", CLIENT_SECRET),
            ("authorization code", code.as_str()),
            ("state", state.as_str()),
            ("password", password.as_str()),
            ("a refresh token", "0.SBX"),
            ("an authorization code", "1.SBXC"),
            ("the certificate's private key", key_line.as_str()),
        ] {
            // The consent URL (with its state) is the connect request's answer, by design.
            if name == "state" && *what == "answers" {
                continue;
            }
            assert!(!text.contains(secret), "the {name} is in the {what}");
        }
    }
    Ok(())
}

async fn admin_get(sb: &steward_sandbox::RunningSandbox, path: &str) -> Result<Value> {
    admin(sb, "GET", path, None).await
}

/// A Steward configuration pointing at the sandbox with Steward's sandbox app.
fn config_for(sb: &steward_sandbox::RunningSandbox) -> Config {
    let mut c = Config::default();
    c.sandbox.url = Some(sb.base_url.clone());
    c.m365.client_id = Some(CLIENT_ID.to_owned());
    c.m365.client_secret = Some(steward_engine::config::Secret(CLIENT_SECRET.to_owned()));
    c
}

/// Connects `company` through the consent flow in process (the test plays the browser).
async fn connect(c: &tenants::Connector, company: &str, tenant: &str) -> Result<()> {
    let start = c
        .start(&company.parse()?, "admin@msp.example", tenant, None)
        .await?;
    let back = consent(&start.consent_url, "accept").await?;
    c.finish(
        &param(&back, "state").context("state")?,
        param(&back, "code").as_deref(),
        None,
        None,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_s_status_follows_its_refreshes_and_the_schedule_refreshes_each_once() -> Result<()>
{
    let env = Env::start(Persistence::None).await?;
    let sb = sandbox().await?;
    let c = tenants::build(&env.store, &config_for(&sb), "http://127.0.0.1:1")
        .map_err(|e| anyhow::anyhow!(e))?;
    let t = &c.tenants;
    connect(&c.connector, "contoso", CONTOSO).await?;
    connect(&c.connector, "fabrikam", "fabrikam.onmicrosoft.com").await?;
    let contoso = "contoso".parse()?;
    let view = t.view(&contoso).await?.context("connected")?;
    assert_eq!(view.status, TenantStatus::Healthy);
    let fabrikam = t.view(&"fabrikam".parse()?).await?.context("connected")?;
    assert_eq!(
        fabrikam.tenant, FABRIKAM,
        "the tenant id comes from Microsoft's answer"
    );

    // A transient failure: refresh_failing, with the error and when it is tried again.
    admin(
        &sb,
        "POST",
        "/faults",
        Some(json!({"path": format!("/login/{CONTOSO}/oauth2/v2.0/token"), "sequence": [{"status": 503}]})),
    )
    .await?;
    let view = t.refresh(&c.m365.tokens, &contoso).await?;
    assert_eq!(view.status, TenantStatus::RefreshFailing, "{view:?}");
    assert!(
        view.next_try.is_some() && view.last_error.is_some(),
        "{view:?}"
    );
    let view = t.refresh(&c.m365.tokens, &contoso).await?;
    assert_eq!(view.status, TenantStatus::Healthy, "{view:?}");
    assert!(view.last_error.is_none());

    // The schedule: every tenant due is refreshed once, however many replicas run it.
    assert_eq!(t.make_all_due().await?, 2);
    let before = admin_get(&sb, "/tokens").await?["access_tokens_issued"]
        .as_u64()
        .unwrap_or(0);
    let other = tenants::build(&env.store, &config_for(&sb), "http://127.0.0.1:1")
        .map_err(|e| anyhow::anyhow!(e))?;
    let (a, b) = tokio::join!(
        t.refresh_round(&c.m365.tokens, 10, 4),
        other.tenants.refresh_round(&other.m365.tokens, 10, 4)
    );
    let (a, b) = (a?, b?);
    assert_eq!(a.0 + b.0, 2, "{a:?} {b:?}");
    assert_eq!(a.1 + b.1, 0);
    assert_eq!(t.due_count().await?, 0);
    let after = admin_get(&sb, "/tokens").await?["access_tokens_issued"]
        .as_u64()
        .unwrap_or(0);
    // Each refresh issues an access token and a refresh token.
    assert_eq!(after - before, 4, "one token request per tenant");

    // Consent withdrawn (tokens revoked): reconsent_needed, out of the schedule, in the inbox.
    admin(&sb, "POST", "/tokens/revoke", Some(json!({}))).await?;
    let view = t.refresh(&c.m365.tokens, &contoso).await?;
    assert_eq!(view.status, TenantStatus::ReconsentNeeded, "{view:?}");
    assert_eq!(
        view.last_error.as_ref().map(|e| e.code.as_str()),
        Some("AADSTS50173")
    );
    assert!(view.next_refresh.is_none());
    assert!(
        view.status_text.contains("steward tenants connect contoso"),
        "{}",
        view.status_text
    );
    let inbox = steward_engine::inbox::Inbox::for_store(&env.store);
    let items = inbox.list().await?;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].kind, "reconsent_needed");
    // Connecting again makes it healthy and clears the item.
    connect(&c.connector, "contoso", CONTOSO).await?;
    assert_eq!(
        t.view(&contoso).await?.context("view")?.status,
        TenantStatus::Healthy
    );
    assert!(inbox.list().await?.is_empty());

    // The 90-day window: a token left alone past it is refused for good.
    admin(
        &sb,
        "POST",
        "/clock/advance",
        Some(json!({"seconds": 91 * 86_400})),
    )
    .await?;
    let view = t.refresh(&c.m365.tokens, &contoso).await?;
    assert_eq!(view.status, TenantStatus::ReconsentNeeded);
    assert_eq!(
        view.last_error.as_ref().map(|e| e.code.as_str()),
        Some("AADSTS700082")
    );
    Ok(())
}

/// The sandbox's authorization code grant answers as Microsoft does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_s_authorization_code_grant_checks_pkce_reuse_redirects_and_expiry()
-> Result<()> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let sb = sandbox().await?;
    let redirect = "http://localhost:5000/v1/tenants/callback";
    let verifier = "a-verifier-of-forty-three-characters-or-more-x";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let authorize = |challenge: &str| {
        let mut u = url::Url::parse(&format!(
            "{}/login/{CONTOSO}/oauth2/v2.0/authorize",
            sb.base_url
        ))
        .unwrap();
        u.query_pairs_mut()
            .append_pair("client_id", CLIENT_ID)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect)
            .append_pair(
                "scope",
                "offline_access https://graph.microsoft.com/.default",
            )
            .append_pair("state", "s1")
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        u.to_string()
    };
    let redeem = |code: String, verifier: Option<&'static str>, redirect: &'static str| {
        let sb_url = sb.base_url.clone();
        async move {
            let mut form = vec![
                ("client_id", CLIENT_ID.to_owned()),
                ("client_secret", CLIENT_SECRET.to_owned()),
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", redirect.to_owned()),
                ("scope", "https://graph.microsoft.com/.default".to_owned()),
            ];
            if let Some(v) = verifier {
                form.push(("code_verifier", v.to_owned()));
            }
            let r = http()
                .post(format!("{sb_url}/login/{CONTOSO}/oauth2/v2.0/token"))
                .form(&form)
                .send()
                .await?;
            let status = r.status().as_u16();
            let v: Value = r.json().await?;
            Ok::<_, anyhow::Error>((status, v))
        }
    };
    let aadsts = |v: &Value| v["error_codes"][0].as_u64().unwrap_or(0);

    let back = consent(&authorize(&challenge), "accept").await?;
    assert_eq!(param(&back, "state").as_deref(), Some("s1"));
    let code = param(&back, "code").context("code")?;
    let (s, v) = redeem(code.clone(), None, redirect).await?;
    assert_eq!((s, aadsts(&v)), (400, 501481), "{v}");
    let (s, v) = redeem(
        code.clone(),
        Some("another-verifier-another-verifier-another-v"),
        redirect,
    )
    .await?;
    assert_eq!((s, aadsts(&v)), (400, 50148), "{v}");
    let (s, v) = redeem(
        code.clone(),
        Some(verifier),
        "http://localhost:5000/elsewhere",
    )
    .await?;
    assert_eq!((s, aadsts(&v)), (400, 500112), "{v}");
    let (s, v) = redeem(code.clone(), Some(verifier), redirect).await?;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["refresh_token"].is_string() && v["access_token"].is_string(),
        "{v}"
    );
    let (s, v) = redeem(code, Some(verifier), redirect).await?;
    assert_eq!(
        (s, aadsts(&v), v["error"].as_str()),
        (400, 54005, Some("invalid_grant")),
        "{v}"
    );

    let back = consent(&authorize(&challenge), "accept").await?;
    let code = param(&back, "code").context("code")?;
    admin(&sb, "POST", "/clock/advance", Some(json!({"seconds": 660}))).await?;
    let (s, v) = redeem(code, Some(verifier), redirect).await?;
    assert_eq!((s, aadsts(&v)), (400, 70008), "{v}");

    // An unknown app is an error page, not a redirect.
    let unknown = authorize(&challenge).replace(CLIENT_ID, "00000000-0000-0000-0000-000000000001");
    let res = browser().get(&unknown).send().await?;
    assert_eq!(res.status().as_u16(), 400);
    assert!(res.headers().get("location").is_none());
    assert!(res.text().await?.contains("AADSTS700016"));
    Ok(())
}

/// `steward sandbox seed` registers the sandbox world's companies and connects their tenants
/// through the consent flow, as a technician would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_seed_registers_the_world_s_companies_and_connects_their_tenants() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let sb = sandbox().await?;
    let dir = tempfile::tempdir()?;
    let auth = steward_engine::auth::Auth::for_store(&env.store);
    let admin = auth
        .add_technician("admin@msp.example", "Admin", Role::Admin, CompanyScope::ALL)
        .await?;
    let (_, token) = auth.create_token(admin.id, "test").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let api_url = format!("http://127.0.0.1:{port}");
    let mut args = env.cli_args();
    args.extend(
        [
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workflows",
            &dir.path().display().to_string(),
        ]
        .map(str::to_owned),
    );
    let serve = Proc::spawn_env(
        Path::new(BIN),
        dir.path(),
        "serve",
        &args,
        &[
            ("STEWARD_M365__CLIENT_ID", CLIENT_ID),
            ("STEWARD_M365__CLIENT_SECRET", CLIENT_SECRET),
            ("STEWARD_SANDBOX__URL", sb.base_url.as_str()),
        ],
    )?;
    let api = Api {
        url: api_url.clone(),
        token: token.clone(),
        http: reqwest::Client::new(),
        seen: Default::default(),
    };
    wait_for("the API", T, || async {
        Ok(api
            .call("GET", "/readyz", None)
            .await
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|_| ()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", serve.log_text()))?;
    let out = std::process::Command::new(BIN)
        .args(["sandbox", "seed", "--sandbox", &sb.base_url])
        .env("STEWARD_API_URL", &api_url)
        .env("STEWARD_TOKEN", &token)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}\n{}", serve.log_text());
    let (_, list) = api.call("GET", "/v1/tenants", None).await?;
    let mut connected: Vec<(String, String)> = list
        .as_array()
        .context("list")?
        .iter()
        .map(|t| {
            (
                t["company"].as_str().unwrap_or("").to_owned(),
                t["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    connected.sort();
    assert_eq!(
        connected,
        [
            ("contoso".to_owned(), "healthy".to_owned()),
            ("fabrikam".to_owned(), "healthy".to_owned()),
            ("northwind".to_owned(), "healthy".to_owned()),
        ],
        "{text}"
    );
    let (_, fabrikam) = api.call("GET", "/v1/companies/fabrikam", None).await?;
    assert_eq!(fabrikam["company"]["tenant_id"], FABRIKAM, "{fabrikam}");
    // Seeding again changes nothing but reconnects.
    let again = std::process::Command::new(BIN)
        .args(["sandbox", "seed", "--sandbox", &sb.base_url])
        .env("STEWARD_API_URL", &api_url)
        .env("STEWARD_TOKEN", &token)
        .output()?;
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}

/// Key rotation seals tenant credentials again under the active key; the tenant keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_seals_tenant_credentials_again() -> Result<()> {
    use steward_engine::secrets::{Keyring, generate_key, parse_key};
    let env = Env::start(Persistence::None).await?;
    let sb = sandbox().await?;
    let k1 = generate_key();
    let k2 = generate_key();
    let store_with = |active: &str, keys: Vec<(&str, &str)>| {
        let ring = Keyring::new(
            active,
            keys.into_iter()
                .map(|(id, k)| parse_key(id, k, "test").expect("key"))
                .collect(),
        )
        .expect("keyring");
        let url = env.redis.url();
        let ns = env.namespace.clone();
        let shards = env.shards;
        async move {
            let db = steward_engine::Db::connect(&url, Duration::from_secs(5)).await?;
            let keys = steward_engine::Keys::new(&ns, shards)?;
            let store = steward_engine::Store::new(db, keys, Arc::new(steward_engine::SystemClock))
                .with_secrets(Some(Arc::new(ring)));
            store.prepare().await?;
            anyhow::Ok(store)
        }
    };
    let old = store_with("k1", vec![("k1", k1.as_str())]).await?;
    let c = tenants::build(&old, &config_for(&sb), "http://127.0.0.1:1")
        .map_err(|e| anyhow::anyhow!(e))?;
    connect(&c.connector, "contoso", CONTOSO).await?;
    let new = store_with("k2", vec![("k1", k1.as_str()), ("k2", k2.as_str())]).await?;
    let before = steward_engine::secrets::rotate::census(&new).await?;
    assert_eq!(before.by_key["k1"].tenants, 1, "{before:?}");
    let rotated = steward_engine::secrets::rotate::rotate(&new, |_| {}).await?;
    assert_eq!(
        rotated.tenants, 2,
        "client secret and refresh token: {rotated:?}"
    );
    assert_eq!(rotated.census.left(), 0, "{:?}", rotated.census);
    // Only the new key now: the tenant still refreshes.
    let only_new = store_with("k2", vec![("k2", k2.as_str())]).await?;
    let c = tenants::build(&only_new, &config_for(&sb), "http://127.0.0.1:1")
        .map_err(|e| anyhow::anyhow!(e))?;
    let view = c
        .tenants
        .refresh(&c.m365.tokens, &"contoso".parse()?)
        .await?;
    assert_eq!(view.status, TenantStatus::Healthy, "{view:?}");
    Ok(())
}
