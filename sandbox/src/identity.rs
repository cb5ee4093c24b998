//! The Microsoft identity platform: the token endpoint (`/login/{tenant}/oauth2/v2.0/token`),
//! the discovery documents Microsoft's auth libraries read before asking for a token (OpenID
//! configuration, instance discovery, signing keys), and the bearer-token checks every Microsoft
//! API in the sandbox applies.
//!
//! Grants: `client_credentials` (app-only), `refresh_token` (delegated, the partner's
//! technician) and `authorization_code` with PKCE (the consent flow: `GET
//! /{tenant}/oauth2/v2.0/authorize` shows a consent page whose form posts back; accepting
//! consents the app in the tenant and redirects with a single-use code valid ten minutes;
//! cancelling redirects with `access_denied` and AADSTS65004; an unknown app (AADSTS700016) or a
//! redirect URI the app does not have (AADSTS50011) is an error page, never a redirect; a code
//! redeemed twice is AADSTS54005, expired AADSTS70008, with a wrong or missing PKCE verifier
//! AADSTS50148 / 501481). Refresh rotates: each redemption returns a new refresh token; the old one stays
//! valid until it expires, as Microsoft documents. A refresh asking for `openid` also gets an
//! `id_token`, and `client_info=1` a `client_info`, which is what MSAL needs to build an account
//! for its cache and silent flow. A refresh token older than 90 days on the
//! sandbox clock fails with AADSTS700082, a revoked one with AADSTS50173. Errors use the real
//! envelope (`error`, `error_description` starting `AADSTSnnnn:`, `error_codes`, `timestamp`,
//! `trace_id`, `correlation_id`, `error_uri`).
//!
//! Tokens are stored only as SHA-256 digests keyed lookups; the token text exists only in the
//! response that hands it out.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::fixture::Fixture;
use crate::http::{AppState, Ctx, form_get, parse_form, query_pairs, request_info};

/// Refresh tokens expire after this much inactivity.
pub(crate) const REFRESH_TOKEN_LIFETIME_DAYS: i64 = 90;
pub(crate) const ACCESS_TOKEN_SECONDS: i64 = 3599;

pub(crate) const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
pub(crate) const OUTLOOK_AUDIENCE: &str = "https://outlook.office365.com";

#[derive(Debug, Clone)]
pub(crate) struct AccessToken {
    pub(crate) company: String,
    pub(crate) audience: &'static str,
    pub(crate) expires_at: DateTime<Utc>,
    /// App-only (client credentials) rather than a user's delegated rights.
    pub(crate) app_only: bool,
    /// What the token carries: its `roles` (app-only) or `scp` (delegated).
    pub(crate) permissions: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct RefreshToken {
    pub(crate) client_id: String,
    pub(crate) user: String,
    pub(crate) issued_at: DateTime<Utc>,
    pub(crate) revoked_at: Option<DateTime<Utc>>,
}

/// An authorization code handed out by the authorize endpoint, until it is redeemed.
#[derive(Debug, Clone)]
pub(crate) struct AuthCode {
    client_id: String,
    redirect_uri: String,
    /// PKCE: the challenge and its method (`S256` or `plain`).
    challenge: Option<(String, String)>,
    user: String,
    company: String,
    issued_at: DateTime<Utc>,
    redeemed: bool,
}

/// Authorization codes expire after this long (Microsoft: "typically about 10 minutes").
pub(crate) const AUTH_CODE_SECONDS: i64 = 600;

#[derive(Debug, Default)]
pub(crate) struct TokenStore {
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    codes: HashMap<String, AuthCode>,
    issued: u64,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl TokenStore {
    pub(crate) fn from_fixture(fx: &Fixture, now: DateTime<Utc>) -> Self {
        let mut s = Self::default();
        for t in &fx.partner.refresh_tokens {
            s.refresh.insert(
                digest(t.token.expose()),
                RefreshToken {
                    client_id: t.client_id.clone(),
                    user: t.user.clone(),
                    issued_at: now - Duration::days(i64::from(t.issued_days_ago)),
                    revoked_at: None,
                },
            );
        }
        s
    }

    pub(crate) fn access(&self, token: &str) -> Option<&AccessToken> {
        self.access.get(&digest(token))
    }

    /// Revokes refresh tokens (all, or a user's); returns how many.
    pub(crate) fn revoke(&mut self, user: Option<&str>, now: DateTime<Utc>) -> usize {
        let mut n = 0;
        for rt in self.refresh.values_mut() {
            if rt.revoked_at.is_none() && user.is_none_or(|u| rt.user.eq_ignore_ascii_case(u)) {
                rt.revoked_at = Some(now);
                n += 1;
            }
        }
        n
    }

    pub(crate) fn summary(&self, now: DateTime<Utc>) -> Value {
        let mut rts: Vec<Value> = self
            .refresh
            .values()
            .map(|r| {
                json!({
                    "client_id": r.client_id,
                    "user": r.user,
                    "issued_at": r.issued_at,
                    "revoked": r.revoked_at.is_some(),
                    "expired": now - r.issued_at > Duration::days(REFRESH_TOKEN_LIFETIME_DAYS),
                })
            })
            .collect();
        rts.sort_by_key(|v| v["issued_at"].to_string());
        json!({
            "refresh_tokens": rts,
            "access_tokens_issued": self.issued,
        })
    }

    fn mint(&mut self, seed: u64, claims: &Value) -> String {
        self.issued += 1;
        let header = json!({"typ": "JWT", "alg": "HS256", "kid": "sandbox"});
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&seed.to_be_bytes())
            .expect("HMAC accepts keys of any length");
        let unsigned = format!("{}.{}", b64(&header), b64(claims));
        mac.update(unsigned.as_bytes());
        mac.update(&self.issued.to_be_bytes());
        let sig =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{unsigned}.{sig}")
    }

    fn new_refresh(
        &mut self,
        seed: u64,
        client_id: &str,
        user: &str,
        now: DateTime<Utc>,
    ) -> String {
        self.issued += 1;
        let raw = crate::ids::guid(seed, &["rt", &self.issued.to_string(), user]);
        let token = format!("0.SBX{}", raw.replace('-', ""));
        self.refresh.insert(
            digest(&token),
            RefreshToken {
                client_id: client_id.to_owned(),
                user: user.to_owned(),
                issued_at: now,
                revoked_at: None,
            },
        );
        token
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            get(authorize_page).post(authorize_decide),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/common/discovery/instance", get(instance_discovery))
        .route("/{tenant}/discovery/v2.0/keys", get(signing_keys))
        .fallback(fallback)
        .method_not_allowed_fallback(fallback)
}

async fn fallback() -> Response {
    aad_error(
        StatusCode::NOT_FOUND,
        "invalid_request",
        900561,
        "The endpoint only accepts POST requests at /{tenant}/oauth2/v2.0/token.",
        Utc::now(),
    )
}

fn unknown_tenant(tenant: &str, now: DateTime<Utc>) -> Response {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_tenant",
        90002,
        &format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
        ),
        now,
    )
}

/// The issuer of a tenant's v2.0 tokens: `{origin}/login/{tenant id}/v2.0`, as the real one is
/// `https://login.microsoftonline.com/{tenant id}/v2.0` (always the id, even when the tenant was
/// named by a domain).
fn issuer(origin: &str, tenant_id: &str) -> String {
    format!("{origin}/login/{tenant_id}/v2.0")
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`: the tenant's OpenID Provider metadata,
/// with Microsoft's fields and the sandbox's own URLs (from the request's origin), for a tenant id
/// or a verified domain. MSAL and azure-identity read `token_endpoint`, `authorization_endpoint`
/// and `issuer` from it before their first token request.
async fn openid_configuration(
    State(shared): State<AppState>,
    Path(tenant): Path<String>,
    ctx: Ctx,
) -> Response {
    let (st, now) = shared.lock();
    let Some(company) = st.world.company_by_tenant(&tenant) else {
        return unknown_tenant(&tenant, now);
    };
    let tid = &company.tenant.id;
    let base = format!("{}/login/{tid}", ctx.origin);
    axum::Json(json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer(&ctx.origin, tid),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": format!("{}/graph/oidc/userinfo", ctx.origin),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{base}/kerberos"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }))
    .into_response()
}

/// `GET /common/discovery/instance?api-version=1.1&authorization_endpoint=…`: instance
/// discovery, which MSAL calls to learn whether an authority's host is a trusted one and where
/// its tenant's OpenID configuration is. The sandbox trusts only itself: an authorization
/// endpoint on another host is `invalid_instance` (AADSTS50049), as the real service answers for
/// a host it does not know.
async fn instance_discovery(
    ctx: Ctx,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let now = Utc::now();
    let pairs = query_pairs(q.as_deref());
    let Some(endpoint) = pairs
        .iter()
        .find(|(k, _)| k == "authorization_endpoint")
        .map(|(_, v)| v.as_str())
    else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90014,
            "The required field 'authorization_endpoint' is missing from the credential. Ensure that you have all the necessary parameters for the login request.",
            now,
        );
    };
    let ours = url::Url::parse(&ctx.origin).ok();
    let theirs = url::Url::parse(endpoint).ok();
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        return invalid_instance(now);
    };
    // Host names only: MSAL Python drops the authority's port from the endpoint it asks about.
    if ours.host_str().is_none() || ours.host_str() != theirs.host_str() {
        return invalid_instance(now);
    }
    let host = format!(
        "{}{}",
        ours.host_str().unwrap_or_default(),
        ours.port().map(|p| format!(":{p}")).unwrap_or_default()
    );
    // `{origin}/login/{tenant}/oauth2/v2.0/authorize` names the tenant.
    let prefix = ours.path().trim_end_matches('/');
    let tenant = theirs
        .path()
        .strip_prefix(prefix)
        .and_then(|p| p.strip_prefix("/login/"))
        .and_then(|p| p.split('/').next())
        .filter(|t| !t.is_empty());
    let Some(tenant) = tenant else {
        return invalid_instance(now);
    };
    axum::Json(json!({
        "tenant_discovery_endpoint": format!("{}/login/{tenant}/v2.0/.well-known/openid-configuration", ctx.origin),
        "api-version": "1.1",
        "metadata": [{
            "preferred_network": host,
            "preferred_cache": host,
            "aliases": [host],
        }],
    }))
    .into_response()
}

fn invalid_instance(now: DateTime<Utc>) -> Response {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_instance",
        50049,
        "Unknown or invalid instance.",
        now,
    )
}

/// `GET /{tenant}/discovery/v2.0/keys`, the `jwks_uri` of the OpenID configuration. The sandbox's
/// tokens are HMAC-signed stand-ins that only it can check, so it publishes no keys: a client that
/// tries to verify a signature finds none (none of Microsoft's client libraries does).
async fn signing_keys(State(shared): State<AppState>, Path(tenant): Path<String>) -> Response {
    let (st, now) = shared.lock();
    if st.world.company_by_tenant(&tenant).is_none() {
        return unknown_tenant(&tenant, now);
    }
    axum::Json(json!({ "keys": [] })).into_response()
}

/// The AAD error envelope.
pub(crate) fn aad_error(
    status: StatusCode,
    error: &str,
    code: u32,
    message: &str,
    now: DateTime<Utc>,
) -> Response {
    (
        status,
        axum::Json(aad_error_body(error, code, message, now)),
    )
        .into_response()
}

pub(crate) fn aad_error_body(error: &str, code: u32, message: &str, now: DateTime<Utc>) -> Value {
    let info = request_info();
    let ts = now.format("%Y-%m-%d %H:%M:%SZ").to_string();
    json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {message} Trace ID: {} Correlation ID: {} Timestamp: {ts}",
            info.request_id, info.client_request_id
        ),
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": info.request_id,
        "correlation_id": info.client_request_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    })
}

pub(crate) fn fault_body(status: StatusCode) -> Value {
    if status == StatusCode::TOO_MANY_REQUESTS {
        aad_error_body(
            "temporarily_unavailable",
            90024,
            "RequestBudgetExceededError - A transient error has occurred. Please try again.",
            Utc::now(),
        )
    } else {
        aad_error_body(
            "temporarily_unavailable",
            50033,
            "RetryableError - Indicates a transient error not related to the database operations.",
            Utc::now(),
        )
    }
}

fn missing(param: &str, now: DateTime<Utc>) -> Response {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{param}'."),
        now,
    )
}

/// Maps a `.default` (or delegated) scope list to the resource it asks for.
fn resource_of(scope: &str) -> Option<&str> {
    scope
        .split_whitespace()
        .find(|s| !matches!(*s, "offline_access" | "openid" | "profile" | "email"))
}

async fn token(
    State(shared): State<AppState>,
    Path(tenant): Path<String>,
    ctx: Ctx,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (mut st, now) = shared.lock();
    let is_form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
            now,
        );
    }
    let form = parse_form(&body);
    let Some(grant_type) = form_get(&form, "grant_type") else {
        return missing("grant_type", now);
    };
    let Some(company) = st.world.company_by_tenant(&tenant) else {
        return unknown_tenant(&tenant, now);
    };
    let company_id = company.id.clone();
    // The refresh token's user, when it is a user of this tenant (else the partner's technician).
    let tenant_user = |upn: &str| {
        company
            .tenant
            .users
            .iter()
            .find(|u| u.upn().eq_ignore_ascii_case(upn))
            .map(|u| (u.id.clone(), u.str_prop("displayName").map(str::to_owned)))
    };
    let refresh_user = form_get(&form, "refresh_token")
        .and_then(|rt| st.tokens.refresh.get(&digest(rt)))
        .and_then(|rt| tenant_user(&rt.user));
    let code_user = form_get(&form, "code")
        .and_then(|c| st.tokens.codes.get(&digest(c)))
        .and_then(|c| tenant_user(&c.user));
    let tenant_id = company.tenant.id.clone();
    let consents = company.tenant.consented_apps.clone();
    // client_secret_basic: `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let dec = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((dec(id)?, dec(secret)?))
        });
    let Some(client_id) =
        form_get(&form, "client_id").or(basic.as_ref().map(|(id, _)| id.as_str()))
    else {
        return missing("client_id", now);
    };
    let Some(app) = st
        .world
        .partner
        .apps
        .iter()
        .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
            now,
        );
    };
    let app_name = app.display_name.clone();
    let consent = consents
        .iter()
        .find(|c| c.client_id.eq_ignore_ascii_case(client_id))
        .cloned();
    if let Some(assertion) = form_get(&form, "client_assertion") {
        // Certificate credentials: a client assertion instead of the secret.
        if form_get(&form, "client_assertion_type") != Some(crate::assertion::ASSERTION_TYPE) {
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                &format!(
                    "The request body must contain the following parameter: 'client_assertion_type' with the value '{}'.",
                    crate::assertion::ASSERTION_TYPE
                ),
                now,
            );
        }
        let endpoint = |t: &str| format!("{}/login/{t}/oauth2/v2.0/token", ctx.origin);
        let audiences = [endpoint(&tenant), endpoint(&tenant_id)];
        if let Err(r) =
            crate::assertion::check(assertion, client_id, &app.certificates, &audiences, now)
        {
            let status = if r.error == "invalid_client" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            };
            return aad_error(status, r.error, r.code, &r.description, now);
        }
    } else {
        let Some(secret) =
            form_get(&form, "client_secret").or(basic.as_ref().map(|(_, secret)| secret.as_str()))
        else {
            return aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                now,
            );
        };
        if !app.client_secret.matches(secret) {
            return aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
                now,
            );
        }
    }
    let Some(scope) = form_get(&form, "scope") else {
        return missing("scope", now);
    };
    let audience = match resource_of(scope) {
        Some(r)
            if r.trim_end_matches("/.default")
                .eq_ignore_ascii_case(GRAPH_AUDIENCE)
                || r.starts_with("https://graph.microsoft.com/") =>
        {
            GRAPH_AUDIENCE
        }
        Some(r)
            if r.trim_end_matches("/.default")
                .eq_ignore_ascii_case(OUTLOOK_AUDIENCE)
                || r.starts_with("https://outlook.office365.com/") =>
        {
            OUTLOOK_AUDIENCE
        }
        other => {
            let res = other.unwrap_or(scope).trim_end_matches("/.default");
            return aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                500011,
                &format!(
                    "The resource principal named {res} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                ),
                now,
            );
        }
    };
    if grant_type == "client_credentials" && !scope.trim().ends_with("/.default") {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
            now,
        );
    }
    let consent_missing = || {
        aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            65001,
            &format!(
                "The user or administrator has not consented to use the application with ID '{client_id}' named '{app_name}'. Send an interactive authorization request for this user and resource."
            ),
            now,
        )
    };
    let seed = shared.seed;
    match grant_type {
        "client_credentials" => {
            // An app never consented in the tenant has no service principal there: Microsoft
            // answers client credentials with AADSTS700016 (unauthorized_client), not 65001.
            let Some(consent) = consent else {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    700016,
                    &format!(
                        "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
                    ),
                    now,
                );
            };
            // The roles the tenant granted the app on that resource.
            let roles = if audience == OUTLOOK_AUDIENCE {
                vec!["Exchange.ManageAsApp".to_owned()]
            } else {
                consent.roles
            };
            let exp = now + Duration::seconds(ACCESS_TOKEN_SECONDS);
            let claims = json!({
                "aud": audience, "iss": format!("https://sts.windows.net/{tenant_id}/"),
                "iat": now.timestamp(), "nbf": now.timestamp(), "exp": exp.timestamp(),
                "appid": client_id, "app_displayname": app_name, "tid": tenant_id,
                "idtyp": "app", "roles": roles,
            });
            let token = st.tokens.mint(seed, &claims);
            st.tokens.access.insert(
                digest(&token),
                AccessToken {
                    company: company_id,
                    audience,
                    expires_at: exp,
                    app_only: true,
                    permissions: roles,
                },
            );
            axum::Json(json!({
                "token_type": "Bearer",
                "expires_in": ACCESS_TOKEN_SECONDS,
                "ext_expires_in": ACCESS_TOKEN_SECONDS,
                "access_token": token,
            }))
            .into_response()
        }
        "refresh_token" => {
            let Some(presented) = form_get(&form, "refresh_token") else {
                return missing("refresh_token", now);
            };
            let Some(rt) = st.tokens.refresh.get(&digest(presented)).cloned() else {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                    now,
                );
            };
            if !rt.client_id.eq_ignore_ascii_case(client_id) {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "Provided grant is invalid or malformed.",
                    now,
                );
            }
            if let Some(revoked) = rt.revoked_at {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    50173,
                    &format!(
                        "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{}'.",
                        dotnet_time(rt.issued_at),
                        dotnet_time(revoked)
                    ),
                    now,
                );
            }
            let inactive = now - rt.issued_at;
            if inactive > Duration::days(REFRESH_TOKEN_LIFETIME_DAYS) {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    700082,
                    &format!(
                        "The refresh token has expired due to inactivity. The token was issued on {} and was inactive for {}.{:02}:{:02}:{:02}.",
                        dotnet_time(rt.issued_at),
                        inactive.num_days(),
                        inactive.num_hours() % 24,
                        inactive.num_minutes() % 60,
                        inactive.num_seconds() % 60
                    ),
                    now,
                );
            }
            let Some(consent) = consent else {
                return consent_missing();
            };
            let grant = Delegation {
                origin: &ctx.origin,
                company_id,
                tenant_id: &tenant_id,
                client_id,
                app_name: &app_name,
                audience,
                user: &rt.user,
                in_tenant: refresh_user,
                scope,
                granted: consent.scopes,
                client_info: form_get(&form, "client_info") == Some("1"),
            };
            delegated_answer(&mut st, seed, grant, now)
        }
        "authorization_code" => {
            let Some(presented) = form_get(&form, "code") else {
                return missing("code", now);
            };
            let Some(code) = st.tokens.codes.get(&digest(presented)).cloned() else {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    9002313,
                    "Invalid request. Request is malformed or invalid.",
                    now,
                );
            };
            if !code.client_id.eq_ignore_ascii_case(client_id) || code.company != company_id {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "Provided grant is invalid or malformed.",
                    now,
                );
            }
            if code.redeemed {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
                    now,
                );
            }
            if now - code.issued_at > Duration::seconds(AUTH_CODE_SECONDS) {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
                    now,
                );
            }
            // [unverified] Microsoft's code for a redemption naming another redirect URI than
            // the authorization request: 500112 is what its error pages show for it.
            let redirect = form_get(&form, "redirect_uri").unwrap_or_default();
            if redirect != code.redirect_uri {
                return aad_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    500112,
                    &format!(
                        "The reply address '{redirect}' does not match the reply address '{}' provided when requesting Authorization code.",
                        code.redirect_uri
                    ),
                    now,
                );
            }
            if let Some((challenge, method)) = &code.challenge {
                let Some(verifier) = form_get(&form, "code_verifier") else {
                    return aad_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        501481,
                        "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                        now,
                    );
                };
                if !pkce_matches(challenge, method, verifier) {
                    return aad_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        50148,
                        "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE.",
                        now,
                    );
                }
            }
            let Some(consent) = consent else {
                return consent_missing();
            };
            if let Some(c) = st.tokens.codes.get_mut(&digest(presented)) {
                c.redeemed = true;
            }
            let grant = Delegation {
                origin: &ctx.origin,
                company_id,
                tenant_id: &tenant_id,
                client_id,
                app_name: &app_name,
                audience,
                user: &code.user,
                in_tenant: code_user,
                scope,
                granted: consent.scopes,
                client_info: form_get(&form, "client_info") == Some("1"),
            };
            delegated_answer(&mut st, seed, grant, now)
        }
        other => aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
            now,
        ),
    }
}

/// What a delegated token answer is for.
struct Delegation<'a> {
    origin: &'a str,
    company_id: String,
    tenant_id: &'a str,
    client_id: &'a str,
    app_name: &'a str,
    audience: &'static str,
    user: &'a str,
    /// The user's (id, display name) when they are a user of the tenant.
    in_tenant: Option<(String, Option<String>)>,
    scope: &'a str,
    /// The delegated permissions the tenant granted the app on Graph.
    granted: Vec<String>,
    client_info: bool,
}

/// A delegated token answer (refresh or authorization code): an access token, a new refresh
/// token, and the ID token and `client_info` when asked for.
fn delegated_answer(
    st: &mut crate::State,
    seed: u64,
    g: Delegation<'_>,
    now: DateTime<Utc>,
) -> Response {
    let exp = now + Duration::seconds(ACCESS_TOKEN_SECONDS);
    let person = Person::of(&st.world.partner, g.user, g.tenant_id, g.in_tenant);
    let granted: Vec<String> = if g.audience == OUTLOOK_AUDIENCE {
        vec!["Exchange.Manage".to_owned()]
    } else {
        g.granted.clone()
    };
    let claims = json!({
        "aud": g.audience, "iss": format!("https://sts.windows.net/{}/", g.tenant_id),
        "iat": now.timestamp(), "nbf": now.timestamp(), "exp": exp.timestamp(),
        "appid": g.client_id, "app_displayname": g.app_name, "tid": g.tenant_id,
        "oid": person.oid, "upn": g.user, "idtyp": "user", "scp": granted.join(" "),
    });
    let token = st.tokens.mint(seed, &claims);
    st.tokens.access.insert(
        digest(&token),
        AccessToken {
            company: g.company_id,
            audience: g.audience,
            expires_at: exp,
            app_only: false,
            permissions: granted.clone(),
        },
    );
    let new_rt = st.tokens.new_refresh(seed, g.client_id, g.user, now);
    // What was granted (the resource's permissions, not the `.default` asked for), and the
    // OpenID scopes that were asked for.
    let requested: Vec<&str> = g.scope.split_whitespace().collect();
    let mut scopes: Vec<String> = granted
        .iter()
        .map(|p| format!("{}/{p}", g.audience))
        .collect();
    for oidc in ["openid", "profile", "email", "offline_access"] {
        if requested.contains(&oidc) {
            scopes.push(oidc.to_owned());
        }
    }
    let mut out = json!({
        "token_type": "Bearer",
        "scope": scopes.join(" "),
        "expires_in": ACCESS_TOKEN_SECONDS,
        "ext_expires_in": ACCESS_TOKEN_SECONDS,
        "access_token": token,
        "refresh_token": new_rt,
    });
    if requested.contains(&"openid") {
        let claims = person.id_token_claims(
            &issuer(g.origin, g.tenant_id),
            g.client_id,
            g.tenant_id,
            requested.contains(&"profile"),
            now,
        );
        out["id_token"] = json!(st.tokens.mint(seed, &claims));
    }
    if g.client_info {
        out["client_info"] = json!(person.client_info());
    }
    axum::Json(out).into_response()
}

/// Whether a PKCE verifier answers its challenge (RFC 7636 §4.6).
fn pkce_matches(challenge: &str, method: &str, verifier: &str) -> bool {
    if method.eq_ignore_ascii_case("S256") {
        let hashed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        hashed == challenge
    } else {
        verifier == challenge
    }
}

/// Whether `asked` is one of the app's redirect URIs. Exact match, except that a loopback URI
/// (`localhost`, `127.0.0.1`) matches whatever port is asked for, as Microsoft documents
/// ("the port component is ignored for the purposes of matching a redirect URI").
fn redirect_registered(registered: &[String], asked: &str) -> bool {
    let Ok(asked_url) = url::Url::parse(asked) else {
        return false;
    };
    registered.iter().any(|r| {
        if r == asked {
            return true;
        }
        let Ok(mut reg) = url::Url::parse(r) else {
            return false;
        };
        let loopback = matches!(reg.host_str(), Some("localhost" | "127.0.0.1"));
        if !loopback {
            return false;
        }
        let _ = reg.set_port(asked_url.port());
        reg == asked_url
    })
}

/// The parameters of an authorization request, checked as far as they must be before anything
/// is redirected: the tenant, the app and its redirect URI. Errors here are pages, never
/// redirects (Microsoft does not send a browser to a redirect URI it cannot trust).
struct AuthorizeRequest {
    params: Vec<(String, String)>,
    company: String,
    tenant_domain: String,
    client_id: String,
    app_name: String,
    redirect_uri: String,
    state: Option<String>,
}

fn authorize_request(
    st: &crate::State,
    tenant: &str,
    params: Vec<(String, String)>,
) -> Result<AuthorizeRequest, Response> {
    let page_error = |code: u32, message: &str| error_page(StatusCode::BAD_REQUEST, code, message);
    let Some(company) = st.world.company_by_tenant(tenant) else {
        return Err(page_error(
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        ));
    };
    let get = |k: &str| form_get(&params, k).map(str::to_owned);
    let Some(client_id) = get("client_id") else {
        return Err(page_error(
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        ));
    };
    let Some(app) = st
        .world
        .partner
        .apps
        .iter()
        .find(|a| a.client_id.eq_ignore_ascii_case(&client_id))
    else {
        return Err(page_error(
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        ));
    };
    let redirect_uri = get("redirect_uri").unwrap_or_default();
    if !redirect_registered(&app.redirect_uris, &redirect_uri) {
        return Err(page_error(
            50011,
            &format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal."
            ),
        ));
    }
    Ok(AuthorizeRequest {
        company: company.id.clone(),
        tenant_domain: company.tenant.initial_domain.clone(),
        client_id: app.client_id.clone(),
        app_name: app.display_name.clone(),
        redirect_uri,
        state: get("state"),
        params,
    })
}

/// The checks whose failures Microsoft reports by redirecting back to the app.
fn authorize_redirect_error(req: &AuthorizeRequest, now: DateTime<Utc>) -> Option<Response> {
    let get = |k: &str| form_get(&req.params, k);
    let fail = |error: &str, code: u32, message: &str| {
        Some(redirect_error(req, error, None, code, message, now))
    };
    match get("response_type") {
        None => {
            return fail(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'response_type'.",
            );
        }
        Some(t) if t.split_whitespace().any(|p| p == "code") => {}
        Some(t) => {
            return fail(
                "unsupported_response_type",
                700054,
                &format!("response_type '{t}' is not enabled for the application."),
            );
        }
    }
    if get("scope").is_none_or(|s| s.trim().is_empty()) {
        return fail(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    }
    if let Some(m) = get("code_challenge_method")
        && !(m == "S256" || m == "plain")
    {
        return fail(
            "invalid_request",
            501491,
            "Invalid size of Code_Challenge parameter.",
        );
    }
    None
}

fn redirect_error(
    req: &AuthorizeRequest,
    error: &str,
    subcode: Option<&str>,
    code: u32,
    message: &str,
    now: DateTime<Utc>,
) -> Response {
    let info = request_info();
    let description = format!(
        "AADSTS{code}: {message} Trace ID: {} Correlation ID: {} Timestamp: {}",
        info.request_id,
        info.client_request_id,
        now.format("%Y-%m-%d %H:%M:%SZ")
    );
    let mut pairs: Vec<(&str, &str)> = vec![("error", error)];
    if let Some(s) = subcode {
        pairs.push(("error_subcode", s));
    }
    pairs.push(("error_description", &description));
    if let Some(s) = &req.state {
        pairs.push(("state", s));
    }
    redirect_to(&req.redirect_uri, &pairs)
}

fn redirect_to(base: &str, pairs: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(base) else {
        return error_page(StatusCode::BAD_REQUEST, 50011, "Invalid redirect URI.");
    };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in pairs {
            q.append_pair(k, v);
        }
    }
    (
        StatusCode::FOUND,
        [(axum::http::header::LOCATION, url.to_string())],
    )
        .into_response()
}

/// The identity platform's sign-in error page: shown, not redirected.
fn error_page(status: StatusCode, code: u32, message: &str) -> Response {
    let info = request_info();
    let body = format!(
        "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body><h1>Sorry, but we’re having trouble signing you in.</h1><p id=\"error\">AADSTS{code}: {}</p><p>Request Id: {}</p><p>Correlation Id: {}</p></body></html>",
        html_escape(message),
        info.request_id,
        info.client_request_id
    );
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `GET /{tenant}/oauth2/v2.0/authorize`: the sign-in and consent page. Its form posts the
/// request back with the signed-in administrator (`login_hint`, default `admin@<initial
/// domain>`) and `decision=accept` or `decision=cancel`.
async fn authorize_page(
    State(shared): State<AppState>,
    Path(tenant): Path<String>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Response {
    let (st, now) = shared.lock();
    let req = match authorize_request(&st, &tenant, query_pairs(q.as_deref())) {
        Ok(r) => r,
        Err(page) => return page,
    };
    if let Some(redirect) = authorize_redirect_error(&req, now) {
        return redirect;
    }
    let user = form_get(&req.params, "login_hint")
        .map_or_else(|| format!("admin@{}", req.tenant_domain), str::to_owned);
    let mut hidden = String::new();
    for (k, v) in &req.params {
        if k == "login_hint" {
            continue;
        }
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            html_escape(k),
            html_escape(v)
        ));
    }
    let scope = form_get(&req.params, "scope").unwrap_or_default();
    let body = format!(
        "<!DOCTYPE html><html><head><title>Permissions requested</title></head><body><h1>Permissions requested</h1><p><b>{app}</b> wants to access resources in your organization ({domain}): {scope}</p><form method=\"post\">{hidden}<label>Signed in as <input name=\"login_hint\" value=\"{user}\"></label><button name=\"decision\" value=\"accept\">Accept</button><button name=\"decision\" value=\"cancel\">Cancel</button></form></body></html>",
        app = html_escape(&req.app_name),
        domain = html_escape(&req.tenant_domain),
        scope = html_escape(scope),
        user = html_escape(&user),
    );
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `POST /{tenant}/oauth2/v2.0/authorize`: the consent page's answer. Accept: the app is
/// consented in the tenant (admin consent) and the browser goes back with a code; cancel: back
/// with `error=access_denied` (AADSTS65004), as Microsoft answers a declined consent.
async fn authorize_decide(
    State(shared): State<AppState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let (mut st, now) = shared.lock();
    let req = match authorize_request(&st, &tenant, parse_form(&body)) {
        Ok(r) => r,
        Err(page) => return page,
    };
    if let Some(redirect) = authorize_redirect_error(&req, now) {
        return redirect;
    }
    if form_get(&req.params, "decision") != Some("accept") {
        return redirect_error(
            &req,
            "access_denied",
            Some("cancel"),
            65004,
            "User declined to consent to access the app.",
            now,
        );
    }
    let user = form_get(&req.params, "login_hint")
        .map_or_else(|| format!("admin@{}", req.tenant_domain), str::to_owned);
    let challenge = form_get(&req.params, "code_challenge").map(|c| {
        (
            c.to_owned(),
            form_get(&req.params, "code_challenge_method")
                .unwrap_or("plain")
                .to_owned(),
        )
    });
    // Admin consent grants what the app registration asks for now (a re-consent after the
    // registration asked for more grants the new permissions too).
    let grant = st.world.app(&req.client_id).map(|a| crate::world::Consent {
        client_id: a.client_id.clone(),
        roles: a.application_permissions.clone(),
        scopes: a.delegated_permissions.clone(),
    });
    if let (Some(c), Some(grant)) = (
        st.world.companies.iter_mut().find(|c| c.id == req.company),
        grant,
    ) {
        c.tenant
            .consented_apps
            .retain(|a| !a.client_id.eq_ignore_ascii_case(&req.client_id));
        c.tenant.consented_apps.push(grant);
    }
    st.tokens.issued += 1;
    let code = format!(
        "1.SBXC{}",
        crate::ids::guid(
            shared.seed,
            &[
                "code",
                &st.tokens.issued.to_string(),
                &user,
                &now.to_rfc3339()
            ]
        )
        .replace('-', "")
    );
    st.tokens.codes.insert(
        digest(&code),
        AuthCode {
            client_id: req.client_id.clone(),
            redirect_uri: req.redirect_uri.clone(),
            challenge,
            user,
            company: req.company.clone(),
            issued_at: now,
            redeemed: false,
        },
    );
    let session = crate::ids::guid(shared.seed, &["session", &code]);
    let mut pairs: Vec<(&str, &str)> = vec![("code", &code)];
    if let Some(s) = &req.state {
        pairs.push(("state", s));
    }
    pairs.push(("session_state", &session));
    redirect_to(&req.redirect_uri, &pairs)
}

/// The signed-in person of a delegated token, as ID tokens and `client_info` describe them.
#[derive(Debug, Clone)]
struct Person {
    upn: String,
    name: String,
    /// Object id in the home tenant.
    oid: String,
    /// The home tenant: the tenant's own id for its users; for the partner's technician (a
    /// delegated admin signing in from the MSP's tenant) the MSP's tenant.
    home_tenant: String,
}

impl Person {
    /// `in_tenant` is the user's (id, display name) when the UPN is a user of the tenant signed
    /// into. The partner's technicians live in the MSP's own tenant, which the fixture does not
    /// describe: their object ids and that tenant's id are derived from the UPN and the
    /// partner's name, stable across runs and seeds.
    fn of(
        partner: &crate::world::Partner,
        upn: &str,
        tenant_id: &str,
        in_tenant: Option<(String, Option<String>)>,
    ) -> Self {
        let local = upn.split('@').next().unwrap_or(upn).to_owned();
        match in_tenant {
            Some((id, name)) => Self {
                upn: upn.to_owned(),
                name: name.unwrap_or(local),
                oid: id,
                home_tenant: tenant_id.to_owned(),
            },
            None => Self {
                upn: upn.to_owned(),
                name: local,
                oid: crate::ids::guid(0, &["partner-user", &upn.to_ascii_lowercase()]),
                home_tenant: crate::ids::guid(
                    0,
                    &["partner-tenant", partner.name.as_deref().unwrap_or("")],
                ),
            },
        }
    }

    /// A v2.0 ID token's claims (as the identity platform documents them) for `client_id`.
    fn id_token_claims(
        &self,
        iss: &str,
        client_id: &str,
        tenant_id: &str,
        profile: bool,
        now: DateTime<Utc>,
    ) -> Value {
        // `sub` is pairwise: the same person has a different subject for each app.
        let sub = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(&Sha256::digest(format!("{}|{client_id}", self.oid).as_bytes())[..24]);
        let exp = now + Duration::seconds(ACCESS_TOKEN_SECONDS);
        let mut claims = json!({
            "aud": client_id.to_ascii_lowercase(),
            "iss": iss,
            "iat": now.timestamp(),
            "nbf": now.timestamp(),
            "exp": exp.timestamp(),
            "sub": sub,
            "tid": tenant_id,
            "ver": "2.0",
        });
        if profile {
            claims["name"] = json!(self.name);
            claims["oid"] = json!(self.oid);
            claims["preferred_username"] = json!(self.upn);
        }
        claims
    }

    /// `client_info`: base64url JSON naming the home account (`uid`.`utid`), which MSAL keys its
    /// cache on.
    fn client_info(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(json!({"uid": self.oid, "utid": self.home_tenant}).to_string())
    }
}

/// A timestamp the way AAD prints them in error texts (seven fractional digits).
fn dotnet_time(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    Missing,
    Unknown,
    Expired,
    WrongAudience,
}

/// Checks a bearer token for `audience`; returns the token's facts.
pub(crate) fn authenticate(
    tokens: &TokenStore,
    bearer: Option<&str>,
    audience: &str,
    now: DateTime<Utc>,
) -> Result<AccessToken, AuthFailure> {
    let raw = bearer.ok_or(AuthFailure::Missing)?;
    let t = tokens.access(raw).ok_or(AuthFailure::Unknown)?;
    if t.expires_at <= now {
        return Err(AuthFailure::Expired);
    }
    if t.audience != audience {
        return Err(AuthFailure::WrongAudience);
    }
    Ok(t.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_revokes_by_user_and_authenticates_by_audience() {
        let fx = Fixture::load(None).unwrap();
        let now = Utc::now();
        let mut s = TokenStore::from_fixture(&fx, now);
        let rt = s.new_refresh(1, "c", "someone@x.com", now);
        assert!(rt.starts_with("0.SBX"));
        assert_eq!(s.revoke(Some("nobody@x.com"), now), 0);
        assert_eq!(s.revoke(Some("SOMEONE@x.com"), now), 1);
        let tok = s.mint(1, &json!({"a": 1}));
        assert_eq!(tok.split('.').count(), 3);
        s.access.insert(
            digest(&tok),
            AccessToken {
                company: "c".into(),
                audience: GRAPH_AUDIENCE,
                expires_at: now + Duration::seconds(10),
                permissions: vec![],
                app_only: true,
            },
        );
        assert!(authenticate(&s, Some(&tok), GRAPH_AUDIENCE, now).is_ok());
        assert_eq!(
            authenticate(&s, Some(&tok), OUTLOOK_AUDIENCE, now).unwrap_err(),
            AuthFailure::WrongAudience
        );
        assert_eq!(
            authenticate(&s, Some(&tok), GRAPH_AUDIENCE, now + Duration::seconds(11)).unwrap_err(),
            AuthFailure::Expired
        );
        assert_eq!(
            authenticate(&s, None, GRAPH_AUDIENCE, now).unwrap_err(),
            AuthFailure::Missing
        );
        assert_eq!(
            authenticate(&s, Some("x"), GRAPH_AUDIENCE, now).unwrap_err(),
            AuthFailure::Unknown
        );
    }

    #[test]
    fn resource_from_scope() {
        assert_eq!(
            resource_of("offline_access https://graph.microsoft.com/.default"),
            Some("https://graph.microsoft.com/.default")
        );
        assert_eq!(resource_of("openid"), None);
    }
}
