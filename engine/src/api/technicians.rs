//! Technicians and their tokens.

use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use steward_schemas::{CompanyScope, Role, Technician, TechnicianId, TokenId, TokenInfo};

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, ApiJson, ApiPath, Caller};
use super::{ApiState, Created, NoContent};

/// Every technician (admins).
pub(super) async fn list(
    State(state): State<ApiState>,
    _admin: Admin,
) -> ApiResult<axum::Json<Vec<Technician>>> {
    Ok(axum::Json(state.auth.technicians().await?))
}

/// The caller.
pub(super) async fn me(caller: Caller) -> axum::Json<Technician> {
    axum::Json(caller.tech)
}

/// A technician to add.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTechnician {
    /// Their email (how approver lists name them).
    #[schemars(email, length(max = 254))]
    pub email: String,
    /// Their name.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    /// `admin` or `technician`.
    pub role: Role,
    /// `"all"`, or the company ids they may act on.
    pub companies: CompanyScope,
}

/// Adds a technician (admins).
pub(super) async fn create(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiJson(b): ApiJson<NewTechnician>,
) -> ApiResult<Created<Technician>> {
    Ok(Created(
        state
            .auth
            .add_technician(&b.email, &b.name, b.role, b.companies)
            .await?,
    ))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct TechPath {
    /// The technician.
    id: TechnicianId,
}

/// Changes to a technician.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TechnicianPatch {
    /// A new name.
    #[serde(default)]
    pub name: Option<String>,
    /// A new role.
    #[serde(default)]
    pub role: Option<Role>,
    /// New companies.
    #[serde(default)]
    pub companies: Option<CompanyScope>,
    /// Disable (their tokens stop working) or enable them.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Changes a technician (admins).
pub(super) async fn update(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    ApiPath(p): ApiPath<TechPath>,
    ApiJson(b): ApiJson<TechnicianPatch>,
) -> ApiResult<axum::Json<Technician>> {
    let name = b
        .name
        .as_deref()
        .map(crate::auth::validate_name)
        .transpose()?
        .map(str::to_owned);
    let is_caller = caller.tech.id == p.id;
    if is_caller && b.role.is_some_and(|r| r != Role::Admin) {
        return Err(ApiError::conflict(
            "you cannot take away your own admin role; ask another admin",
        ));
    }
    if is_caller && b.disabled == Some(true) {
        return Err(ApiError::conflict("you cannot disable yourself"));
    }
    // Applied to the record as stored, and written only if nobody changed it meanwhile, so a
    // concurrent change (a disable) is never undone.
    let tech = state
        .auth
        .update_technician(p.id, |tech| {
            if let Some(name) = &name {
                tech.name.clone_from(name);
            }
            if let Some(role) = b.role {
                tech.role = role;
            }
            if let Some(companies) = &b.companies {
                tech.companies = companies.clone();
            }
            if let Some(disabled) = b.disabled {
                tech.disabled = disabled;
            }
        })
        .await?;
    Ok(axum::Json(tech))
}

fn self_or_admin(caller: &Caller, id: TechnicianId) -> ApiResult<()> {
    if caller.tech.id == id || caller.tech.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only admins may manage other technicians' tokens",
        ))
    }
}

/// A technician's tokens (admins, or the technician).
pub(super) async fn tokens(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<TechPath>,
) -> ApiResult<axum::Json<Vec<TokenInfo>>> {
    self_or_admin(&caller, p.id)?;
    Ok(axum::Json(state.auth.tokens(p.id).await?))
}

/// A token to make.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What it is for (`laptop`, `psa-integration`).
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
}

/// A new token: shown once, stored only as a hash.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CreatedToken {
    /// The token: send it as `Authorization: Bearer <token>`. It is not shown again.
    pub token: String,
    /// Its record.
    pub info: TokenInfo,
}

/// Makes a token (admins, or the technician for themself).
pub(super) async fn create_token(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<TechPath>,
    ApiJson(b): ApiJson<NewToken>,
) -> ApiResult<Created<CreatedToken>> {
    self_or_admin(&caller, p.id)?;
    state
        .auth
        .technician(p.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no technician `{}`", p.id)))?;
    let (info, token) = state.auth.create_token(p.id, &b.name).await?;
    Ok(Created(CreatedToken { token, info }))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct TokenPath {
    /// The token's id.
    id: TokenId,
}

/// Revokes a token (admins, or its owner).
pub(super) async fn revoke(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<TokenPath>,
) -> ApiResult<NoContent> {
    let token = state
        .auth
        .token(p.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no token `{}`", p.id)))?;
    self_or_admin(&caller, token.info().technician)?;
    state.auth.revoke(token).await?;
    Ok(NoContent)
}
