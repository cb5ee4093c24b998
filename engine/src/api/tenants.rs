//! Microsoft 365 tenant connections: list, show, connect (the consent flow), refresh,
//! disconnect, and the consent callback Microsoft redirects the administrator's browser to.
//!
//! Answers never hold a secret: not the client secret, the refresh token, the authorization
//! code, the PKCE verifier or the state (the callback's page says what happened in words).

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with, put_with as axum_put_with};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;
use steward_schemas::CompanyId;

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, ApiJson, ApiPath, ApiQuery, Caller};
use super::html::escape;
use super::{ApiState, NoContent};
use crate::secrets::Secret;
use crate::tenants::{self, Connector, ConsentStart, TenantView};

impl From<tenants::Error> for ApiError {
    fn from(e: tenants::Error) -> Self {
        use tenants::Error as E;
        match e {
            E::Redis(e) => e.into(),
            E::NotConnected(_) => Self::not_found(e.to_string()),
            E::Invalid {
                field,
                message,
                fix,
            } => Self::invalid(field, message, fix),
            E::Consent(m) => Self::status_code(StatusCode::BAD_REQUEST, "consent_failed", m),
            E::Token(t) => {
                Self::status_code(StatusCode::BAD_GATEWAY, "microsoft_refused", t.to_string())
            }
            E::Certificate(..) => {
                Self::status_code(StatusCode::CONFLICT, "certificate_unusable", e.to_string())
            }
            E::Open(_) | E::Corrupt(..) => Self::internal(e.to_string()),
        }
    }
}

/// The routes.
pub(super) fn routes() -> ApiRouter<ApiState> {
    ApiRouter::new()
        .api_route(
            "/v1/tenants",
            get_with(list, |o| {
                o.summary("the tenant connections of the companies the caller may act on")
                    .tag("tenants")
            }),
        )
        .api_route(
            "/v1/tenants/callback",
            get_with(callback, |o| {
                o.summary("where Microsoft sends the administrator back after consent (HTML)")
                    .tag("tenants")
            }),
        )
        .api_route(
            "/v1/tenants/{company}",
            get_with(show, |o| {
                o.summary("a company's tenant connection and its status")
                    .tag("tenants")
            })
            .delete_with(disconnect, |o| {
                o.summary("forget a company's tenant connection (admins)")
                    .tag("tenants")
            }),
        )
        .api_route(
            "/v1/tenants/{company}/connect",
            post_with(connect, |o| {
                o.summary("start connecting a tenant: the consent URL for its administrator")
                    .tag("tenants")
            }),
        )
        .api_route(
            "/v1/tenants/{company}/certificate",
            axum_put_with(set_certificate, |o| {
                o.summary("use a certificate instead of the client secret for the tenant's app-only calls (admins)")
                    .tag("tenants")
            })
            .delete_with(remove_certificate, |o| {
                o.summary("stop using the certificate: back to the client secret (admins)")
                    .tag("tenants")
            }),
        )
        .api_route(
            "/v1/tenants/{company}/refresh",
            post_with(refresh, |o| {
                o.summary("refresh the tenant's delegated token now")
                    .tag("tenants")
            }),
        )
}

fn connector(state: &ApiState) -> ApiResult<&Connector> {
    state.tenants.as_ref().ok_or_else(|| {
        ApiError::unavailable("this server has no Microsoft 365 connectors")
            .with_fix("start steward serve with a secrets key (secrets.key-dir)")
    })
}

/// The company of a path.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct CompanyPath {
    /// The company.
    company: CompanyId,
}

/// The tenant connections the caller may see.
pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<axum::Json<Vec<TenantView>>> {
    let all = connector(&state)?.tenants.list().await?;
    Ok(axum::Json(
        all.into_iter()
            .filter(|t| caller.may_access(&t.company))
            .collect(),
    ))
}

/// A company's tenant connection.
async fn show(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<CompanyPath>,
) -> ApiResult<axum::Json<TenantView>> {
    caller.require_company(&p.company)?;
    let view = connector(&state)?
        .tenants
        .view(&p.company)
        .await?
        .ok_or_else(|| tenants::Error::NotConnected(p.company.to_string()))?;
    Ok(axum::Json(view))
}

/// What to connect.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectRequest {
    /// The tenant's id or a verified domain; default: the company's `tenant_id`.
    #[serde(default)]
    tenant: Option<String>,
    /// The client id of the company's own app registration; default: Steward's app
    /// (`m365.client-id`).
    #[serde(default)]
    client_id: Option<String>,
    /// That app's client secret (with `client_id`). Stored sealed; never shown again.
    #[serde(default)]
    client_secret: Option<String>,
}

/// Starts connecting a company's tenant: the consent URL (single use, expiring) an
/// administrator of the tenant opens. Bound to the company and the caller.
async fn connect(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<CompanyPath>,
    ApiJson(req): ApiJson<ConnectRequest>,
) -> ApiResult<axum::Json<ConsentStart>> {
    caller.require_company(&p.company)?;
    let c = connector(&state)?;
    let company = state
        .companies
        .get(&p.company)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no company `{}`", p.company)))?;
    let Some(tenant) = req.tenant.or(company.company.tenant_id) else {
        return Err(ApiError::invalid(
            "tenant",
            format!(
                "company `{}` has no tenant_id and the request names no tenant",
                p.company
            ),
            "send {\"tenant\": \"contoso.onmicrosoft.com\"} (or the tenant's id), or set the company's tenant_id",
        ));
    };
    let app = match (req.client_id, req.client_secret) {
        (Some(id), Some(secret)) if !id.trim().is_empty() && !secret.is_empty() => {
            Some((id.trim().to_owned(), Secret::from(secret)))
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "client_secret",
                "client_id and client_secret go together",
                "send both (the company's own app registration) or neither (Steward's app)",
            ));
        }
    };
    Ok(axum::Json(
        c.start(&p.company, &caller.tech.email, &tenant, app)
            .await?,
    ))
}

/// A certificate credential.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CertificateRequest {
    /// The certificate uploaded to the app registration, PEM (`-----BEGIN CERTIFICATE-----`),
    /// RSA.
    certificate: String,
    /// Its private key, unencrypted PEM (PKCS#8 or PKCS#1). Stored sealed; never shown again.
    private_key: String,
    /// `RS256` (default) or `PS256`.
    #[serde(default)]
    algorithm: Option<String>,
}

/// Sets the certificate credential of a company's connection (admins): checked (PEM, RSA,
/// key matches, valid now) before it is stored.
async fn set_certificate(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiPath(p): ApiPath<CompanyPath>,
    ApiJson(req): ApiJson<CertificateRequest>,
) -> ApiResult<axum::Json<TenantView>> {
    use steward_workers::m365::assertion::{Algorithm, CertificateError, ClientCertificate};
    let algorithm = match req.algorithm.as_deref() {
        None => Algorithm::default(),
        Some(a) => Algorithm::parse(a).ok_or_else(|| {
            ApiError::invalid(
                "algorithm",
                format!("`{a}` is not a signing algorithm Microsoft accepts for client assertions"),
                "send RS256 or PS256",
            )
        })?,
    };
    let cert = ClientCertificate::from_pem(
        &req.certificate,
        steward_workers::m365::Secret::new(req.private_key),
        algorithm,
        None,
    )
    .map_err(|e| {
        let field = match e {
            CertificateError::Key | CertificateError::Mismatch => "private_key",
            _ => "certificate",
        };
        let text = e.to_string();
        let (message, fix) = text
            .split_once("; fix: ")
            .map_or((text.clone(), String::new()), |(m, f)| {
                (m.to_owned(), f.to_owned())
            });
        ApiError::invalid(field, message, fix)
    })?;
    Ok(axum::Json(
        connector(&state)?
            .tenants
            .set_certificate(&p.company, &cert)
            .await?,
    ))
}

/// Removes the certificate credential (admins): app-only calls use the client secret again.
async fn remove_certificate(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiPath(p): ApiPath<CompanyPath>,
) -> ApiResult<NoContent> {
    if connector(&state)?
        .tenants
        .remove_certificate(&p.company)
        .await?
    {
        Ok(NoContent)
    } else {
        Err(ApiError::not_found(format!(
            "company `{}`'s tenant connection has no certificate",
            p.company
        )))
    }
}

/// Refreshes the tenant's delegated token now; the answer is the status after it.
async fn refresh(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<CompanyPath>,
) -> ApiResult<axum::Json<TenantView>> {
    caller.require_company(&p.company)?;
    let c = connector(&state)?;
    Ok(axum::Json(c.tenants.refresh(&c.tokens, &p.company).await?))
}

/// Forgets a company's tenant connection (admins). Runs that need it fail until it is
/// connected again.
async fn disconnect(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiPath(p): ApiPath<CompanyPath>,
) -> ApiResult<NoContent> {
    if connector(&state)?.tenants.disconnect(&p.company).await? {
        Ok(NoContent)
    } else {
        Err(tenants::Error::NotConnected(p.company.to_string()).into())
    }
}

/// Microsoft's redirect after consent.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct CallbackQuery {
    /// The authorization code (single use).
    #[serde(default)]
    code: Option<String>,
    /// The state Steward sent.
    #[serde(default)]
    state: Option<String>,
    /// Microsoft's session.
    #[serde(default)]
    #[allow(dead_code)]
    session_state: Option<String>,
    /// The error, when consent was not given.
    #[serde(default)]
    error: Option<String>,
    /// Microsoft's description of the error.
    #[serde(default)]
    error_description: Option<String>,
    /// Microsoft's sub-code (`cancel`).
    #[serde(default)]
    #[allow(dead_code)]
    error_subcode: Option<String>,
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\"><title>{t}</title></head><body><h1>{t}</h1><p>{b}</p></body></html>",
        t = escape(title),
        b = escape(body)
    );
    let mut res = (status, Html(html)).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// The consent callback: redeems the code and stores the connection, then says what happened.
async fn callback(State(state): State<ApiState>, ApiQuery(q): ApiQuery<CallbackQuery>) -> Response {
    let Ok(c) = connector(&state) else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not connected",
            "This Steward server has no Microsoft 365 connectors.",
        );
    };
    let Some(st) = q.state.as_deref().filter(|s| !s.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "Microsoft's answer has no state: open the consent link Steward gave (steward tenants connect COMPANY).",
        );
    };
    match c
        .finish(
            st,
            q.code.as_deref(),
            q.error.as_deref(),
            q.error_description.as_deref(),
        )
        .await
    {
        Ok(view) => page(
            StatusCode::OK,
            "Tenant connected",
            &format!(
                "Company {} is connected to tenant {}; you can close this page.",
                view.company, view.tenant
            ),
        ),
        Err(e) => {
            let status = match &e {
                tenants::Error::Redis(_) => StatusCode::SERVICE_UNAVAILABLE,
                tenants::Error::Token(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::BAD_REQUEST,
            };
            tracing::info!(error = %e, "a tenant consent did not complete");
            page(status, "Not connected", &e.to_string())
        }
    }
}
