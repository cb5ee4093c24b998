//! Companies: CRUD and bulk CSV import.
//!
//! A company's approvers must be enabled technicians when it is saved (added, replaced or
//! imported); a company with runs in flight or gates open is deleted only when forced.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use schemars::JsonSchema;
use serde::Deserialize;
use steward_schemas::{Company, CompanyId};

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, ApiJson, ApiPath, ApiQuery, Caller};
use super::{ApiState, Created, NoContent};
use crate::companies::{self as store, CompanyRecord, ImportReport};

/// Refuses a company whose settings or approvers are wrong, naming every problem at once (its
/// settings as [`crate::companies::Companies`] checks them, and approvers who are not enabled
/// technicians).
async fn check(state: &ApiState, company: &Company) -> ApiResult<()> {
    let mut c = company.clone();
    steward_core::company::normalize(&mut c);
    let mut problems = steward_core::company::validate(&c);
    problems.extend(store::data_problems(&c));
    let directory = state.auth.directory().await?;
    problems.extend(steward_core::company::approver_problems(&c, &directory));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(store::Error::Invalid(problems).into())
    }
}

/// The companies the caller may act on.
pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<axum::Json<Vec<CompanyRecord>>> {
    let all = state.companies.list().await?;
    Ok(axum::Json(
        all.into_iter()
            .filter(|c| caller.may_access(&c.company.id))
            .collect(),
    ))
}

/// Adds a company (admins).
pub(super) async fn create(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiJson(company): ApiJson<Company>,
) -> ApiResult<Created<CompanyRecord>> {
    check(&state, &company).await?;
    Ok(Created(state.companies.create(company).await?))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct CompanyPath {
    /// The company.
    id: CompanyId,
}

/// A company.
pub(super) async fn get(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<CompanyPath>,
) -> ApiResult<axum::Json<CompanyRecord>> {
    caller.require_company(&p.id)?;
    let record = state
        .companies
        .get(&p.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no company `{}`", p.id)))?;
    Ok(axum::Json(record))
}

/// Optional optimistic concurrency for updates.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct IfVersion {
    /// Update only if the company is still at this version (its `version` when you read it).
    if_version: Option<u64>,
}

/// Replaces a company's settings (admins).
pub(super) async fn update(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiPath(p): ApiPath<CompanyPath>,
    ApiQuery(q): ApiQuery<IfVersion>,
    ApiJson(company): ApiJson<Company>,
) -> ApiResult<axum::Json<CompanyRecord>> {
    if company.id != p.id {
        return Err(ApiError::invalid(
            "id",
            format!(
                "the body is company `{}` but the path is `{}`",
                company.id, p.id
            ),
            "send the same id in both",
        ));
    }
    check(&state, &company).await?;
    Ok(axum::Json(
        state.companies.update(company, q.if_version).await?,
    ))
}

/// Whether to delete a company that has runs in flight.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteQuery {
    /// Delete it even though runs of it are in flight or its gates are open (they will fail
    /// when they next need the company); recorded in the companies' log with who, when and what
    /// was in flight.
    #[serde(default)]
    force: bool,
}

/// Deletes a company (admins). Refused (409, naming them) while it has runs in flight or gates
/// open, unless `force=true`.
pub(super) async fn delete(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    ApiPath(p): ApiPath<CompanyPath>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<NoContent> {
    if state.companies.get(&p.id).await?.is_none() {
        return Err(ApiError::not_found(format!("no company `{}`", p.id)));
    }
    let in_flight = store::in_flight(&state.store, &p.id).await?;
    if !in_flight.is_empty() && !q.force {
        let gates: usize = in_flight.iter().map(|r| r.open_gates.len()).sum();
        let runs: Vec<String> = in_flight
            .iter()
            .map(|r| {
                if r.open_gates.is_empty() {
                    format!("{} ({})", r.run, r.status)
                } else {
                    format!(
                        "{} ({}, gate{} {} open)",
                        r.run,
                        r.status,
                        if r.open_gates.len() == 1 { "" } else { "s" },
                        r.open_gates.join(", ")
                    )
                }
            })
            .collect();
        let mut e = ApiError::conflict(format!(
            "company `{}` has {} run{} in flight and {gates} gate{} open: {}",
            p.id,
            in_flight.len(),
            if in_flight.len() == 1 { "" } else { "s" },
            if gates == 1 { "" } else { "s" },
            runs.join("; ")
        ))
        .with_fix(format!(
            "wait for them to end, or cancel them (POST /v1/runs/RUN/cancel); or delete anyway with DELETE /v1/companies/{}?force=true (steward companies delete {} --force), which leaves them to fail",
            p.id, p.id
        ));
        e = e.with_details(serde_json::to_value(&in_flight).unwrap_or_default());
        return Err(e);
    }
    let existed = state.companies.delete(&p.id).await?;
    if !in_flight.is_empty() {
        tracing::warn!(
            company = %p.id,
            by = %caller.tech.email,
            runs = in_flight.len(),
            "company deleted with runs in flight (forced)"
        );
        state
            .companies
            .record_deletion(&p.id, &caller.tech.email, true, &in_flight)
            .await?;
    }
    if existed {
        Ok(NoContent)
    } else {
        Err(ApiError::not_found(format!("no company `{}`", p.id)))
    }
}

/// The most a CSV import may weigh.
pub const CSV_LIMIT: usize = 2 * 1024 * 1024;

/// A CSV body (`text/csv`), at most [`CSV_LIMIT`] bytes.
#[derive(Debug)]
pub(super) struct CsvBody(pub(super) Bytes);

impl<S: Send + Sync> FromRequest<S> for CsvBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("text/csv") {
            return Err(ApiError::unsupported_media("text/csv"));
        }
        let body = super::extract::read_limited(req, CSV_LIMIT).await?;
        Ok(Self(Bytes::from(body)))
    }
}

impl aide::OperationInput for CsvBody {
    fn operation_input(
        ctx: &mut aide::generate::GenContext,
        operation: &mut aide::openapi::Operation,
    ) {
        let schema = ctx.schema.subschema_for::<String>();
        operation.request_body = Some(aide::openapi::ReferenceOr::Item(
            aide::openapi::RequestBody {
                description: Some(
                    "a CSV file of companies; columns as in `steward companies import --help`"
                        .to_owned(),
                ),
                content: indexmap::IndexMap::from_iter([(
                    "text/csv".to_owned(),
                    aide::openapi::MediaType {
                        schema: Some(aide::openapi::SchemaObject {
                            json_schema: schema,
                            example: None,
                            external_docs: None,
                        }),
                        ..Default::default()
                    },
                )]),
                required: true,
                extensions: Default::default(),
            },
        ));
    }
}

/// Imports companies from CSV (admins): every row is checked first, errors come back by row and
/// column, and nothing is written unless every row is valid. Importing the same file again
/// changes nothing.
pub(super) async fn import(
    State(state): State<ApiState>,
    _admin: Admin,
    CsvBody(body): CsvBody,
) -> ApiResult<axum::Json<ImportReport>> {
    let refuse = |errors: Vec<steward_core::import::CellError>| {
        ApiError::invalid_many(
            format!(
                "the file has {} problems; nothing was imported",
                errors.len()
            ),
            serde_json::to_value(&errors).unwrap_or_default(),
        )
    };
    let rows = steward_core::import::parse_companies_csv_rows(&body).map_err(refuse)?;
    let directory = state.auth.directory().await?;
    let errors: Vec<steward_core::import::CellError> = rows
        .iter()
        .flat_map(|(row, company)| {
            store::data_problems(company)
                .into_iter()
                .chain(steward_core::company::approver_problems(
                    company, &directory,
                ))
                .map(|p| steward_core::import::CellError {
                    row: *row,
                    column: column_of(&p.field).to_owned(),
                    message: p.message,
                    fix: p.fix,
                })
        })
        .collect();
    if !errors.is_empty() {
        return Err(refuse(errors));
    }
    let columns = header_columns(&body);
    let companies = rows.into_iter().map(|(_, c)| c).collect();
    Ok(axum::Json(
        state.companies.import_columns(companies, &columns).await?,
    ))
}

/// The CSV column a company field comes from (`defaults.ou` → `ou`).
fn column_of(field: &str) -> &str {
    match field {
        "rmm" => "rmm_provider",
        "rmm.site" => "rmm_site",
        "psa" => "psa_provider",
        "psa.company_id" => "psa_company_id",
        "permissions" | "permissions.profile" => "permission_profile",
        f => f.strip_prefix("defaults.").unwrap_or(f),
    }
}

/// The column names of a CSV file's header (its first row that is not blank), lowercased:
/// which columns a re-import may change. The parser has already accepted the header.
fn header_columns(body: &[u8]) -> Vec<String> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = String::from_utf8_lossy(body);
    text.lines()
        .find(|l| !l.chars().all(|c| c == ',' || c.is_whitespace()))
        .map(|l| {
            l.split(',')
                .map(|c| c.trim().trim_matches('"').trim().to_lowercase())
                .filter(|c| !c.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::header_columns;

    #[test]
    fn the_header_names_the_columns_a_reimport_changes() {
        assert_eq!(
            header_columns(
                b"\xEF\xBB\xBF\r\n,,\r\n\"ID\", Name ,usage_location\r\nacme,Acme,GB\r\n"
            ),
            ["id", "name", "usage_location"]
        );
    }
}
