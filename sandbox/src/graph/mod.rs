//! Microsoft Graph v1.0, for what onboarding and offboarding use.
//!
//! The caller's company is the tenant of its access token (Graph URLs carry no tenant), exactly
//! as with the real service. Every handler takes the state lock once, checks the token, applies
//! the change and records it in the ledger before answering.

pub(crate) mod error;
mod groups;
pub(crate) mod odata;
mod other;
pub(crate) mod permissions;
pub(crate) mod schema;
mod users;

#[cfg(test)]
mod csdl_tests;

use axum::Router;
use axum::extract::OriginalUri;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::State as SandboxState;
use crate::http::{AppState, Ctx};
use crate::identity::{self, AuthFailure, GRAPH_AUDIENCE};
use crate::world::{Company, Group, ManagedDevice, Sku, Tenant, User};
use error::{GraphError, GraphResult};
use odata::Query;

/// Routes `path` and, when it names a cast or bound operation by its full name
/// (`microsoft.graph.group`), the same path with the `graph.` alias Microsoft's SDKs send
/// (`graph.group`): Graph takes both.
fn route_with_alias(
    router: Router<AppState>,
    path: &str,
    method: axum::routing::MethodRouter<AppState>,
) -> Router<AppState> {
    let alias = path.replace("/microsoft.graph.", "/graph.");
    let router = router.route(path, method.clone());
    if alias == path {
        router
    } else {
        router.route(&alias, method)
    }
}

pub(crate) fn router(shared: AppState) -> Router<AppState> {
    let casts: &[(&str, axum::routing::MethodRouter<AppState>)] = &[
        (
            "/v1.0/users/{id}/memberOf/microsoft.graph.group",
            get(users::member_of),
        ),
        (
            "/v1.0/users/{id}/microsoft.graph.assignLicense",
            post(users::assign_license),
        ),
        (
            "/v1.0/directory/deletedItems/microsoft.graph.user",
            get(users::list_deleted),
        ),
    ];
    let mut router = Router::new();
    for (path, method) in casts {
        router = route_with_alias(router, path, method.clone());
    }
    router
        .route("/v1.0/users", get(users::list).post(users::create))
        .route(
            "/v1.0/users/{id}",
            get(users::get_one)
                .patch(users::update)
                .delete(users::delete_user),
        )
        .route("/v1.0/users/{id}/manager", get(users::get_manager))
        .route(
            "/v1.0/users/{id}/manager/$ref",
            get(users::get_manager_ref)
                .put(users::set_manager)
                .delete(users::remove_manager),
        )
        .route("/v1.0/users/{id}/memberOf", get(users::member_of))
        .route(
            "/v1.0/users/{id}/assignLicense",
            post(users::assign_license),
        )
        .route(
            "/v1.0/users/{id}/revokeSignInSessions",
            post(users::revoke_sessions),
        )
        .route(
            "/v1.0/users/{id}/authentication/methods",
            get(users::list_methods),
        )
        .route(
            "/v1.0/users/{id}/authentication/{kind}/{method_id}",
            delete(users::delete_method),
        )
        .route(
            "/v1.0/users/{id}/authentication/methods/{method_id}/resetPassword",
            post(users::reset_password),
        )
        .route(
            "/v1.0/users/{id}/authentication/operations/{op_id}",
            get(users::get_operation),
        )
        .route("/v1.0/users/{id}/managedDevices", get(other::user_devices))
        .route(
            "/v1.0/directory/deletedItems/{id}",
            get(users::get_deleted).delete(users::purge_deleted),
        )
        .route(
            "/v1.0/directory/deletedItems/{id}/restore",
            post(users::restore_deleted),
        )
        .route("/v1.0/groups", get(groups::list))
        .route("/v1.0/groups/{id}", get(groups::get_one))
        .route("/v1.0/groups/{id}/members", get(groups::members))
        .route(
            "/v1.0/groups/{id}/members/$ref",
            get(groups::member_refs).post(groups::add_member),
        )
        .route(
            "/v1.0/groups/{id}/members/{member_id}/$ref",
            delete(groups::remove_member),
        )
        .route("/v1.0/subscribedSkus", get(other::subscribed_skus))
        .route(
            "/v1.0/deviceManagement/managedDevices",
            get(other::list_devices),
        )
        .route(
            "/v1.0/deviceManagement/managedDevices/{id}",
            get(other::get_device),
        )
        .route(
            "/v1.0/deviceManagement/managedDevices/{id}/wipe",
            post(other::wipe_device),
        )
        .route(
            "/v1.0/deviceManagement/managedDevices/{id}/retire",
            post(other::retire_device),
        )
        .route(
            "/v1.0/roleManagement/directory/roleDefinitions",
            get(other::role_definitions),
        )
        .route(
            "/v1.0/roleManagement/directory/roleAssignments",
            get(other::list_role_assignments).post(other::create_role_assignment),
        )
        .route(
            "/v1.0/roleManagement/directory/roleAssignments/{id}",
            get(other::get_role_assignment).delete(other::delete_role_assignment),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            shared,
            permissions::enforce,
        ))
        .route("/v1.0/$batch", post(other::batch))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn fallback(OriginalUri(uri): OriginalUri) -> Response {
    let seg = uri
        .path()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    GraphError::new(
        StatusCode::NOT_FOUND,
        "BadRequest",
        format!("Resource not found for the segment '{seg}'."),
    )
    .into_response()
}

async fn method_not_allowed() -> Response {
    GraphError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "Request_BadRequest",
        "The requested HTTP method is not supported for this resource.",
    )
    .into_response()
}

/// The caller as its token describes it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) company: String,
    /// An app-only token (client credentials), not a user's.
    pub(crate) app_only: bool,
}

pub(crate) fn authenticate(
    st: &SandboxState,
    ctx: &Ctx,
    now: DateTime<Utc>,
) -> GraphResult<Caller> {
    match identity::authenticate(&st.tokens, ctx.bearer(), GRAPH_AUDIENCE, now) {
        Ok(t) => Ok(Caller {
            company: t.company,
            app_only: t.app_only,
        }),
        Err(AuthFailure::Missing) => Err(GraphError::unauthenticated("Access token is empty.")),
        Err(AuthFailure::Unknown) => Err(GraphError::unauthenticated(
            "IDX14100: JWT is not well formed, there are no dots (.).",
        )),
        Err(AuthFailure::Expired) => Err(GraphError::unauthenticated(
            "Lifetime validation failed, the token is expired.",
        )),
        Err(AuthFailure::WrongAudience) => Err(GraphError::unauthenticated(
            "Access token validation failure. Invalid audience.",
        )),
    }
}

pub(crate) fn company<'a>(st: &'a SandboxState, caller: &Caller) -> GraphResult<&'a Company> {
    st.world
        .company(&caller.company)
        .ok_or_else(|| GraphError::unauthenticated("The tenant of the token no longer exists."))
}

pub(crate) fn company_mut<'a>(
    st: &'a mut SandboxState,
    caller: &Caller,
) -> GraphResult<&'a mut Company> {
    st.world
        .company_mut(&caller.company)
        .ok_or_else(|| GraphError::unauthenticated("The tenant of the token no longer exists."))
}

/// Writable user properties and their JSON kinds; everything Graph would accept on POST/PATCH.
pub(crate) const USER_WRITABLE: &[(&str, Kind)] = &[
    ("accountEnabled", Kind::Bool),
    ("displayName", Kind::Str),
    ("givenName", Kind::Str),
    ("surname", Kind::Str),
    ("mailNickname", Kind::Str),
    ("userPrincipalName", Kind::Str),
    ("mail", Kind::Str),
    ("jobTitle", Kind::Str),
    ("department", Kind::Str),
    ("officeLocation", Kind::Str),
    ("mobilePhone", Kind::Str),
    ("businessPhones", Kind::StrList),
    ("usageLocation", Kind::Str),
    ("companyName", Kind::Str),
    ("employeeId", Kind::Str),
    ("employeeType", Kind::Str),
    ("employeeHireDate", Kind::Str),
    ("employeeLeaveDateTime", Kind::Str),
    ("city", Kind::Str),
    ("country", Kind::Str),
    ("state", Kind::Str),
    ("streetAddress", Kind::Str),
    ("postalCode", Kind::Str),
    ("otherMails", Kind::StrList),
    ("preferredLanguage", Kind::Str),
    ("userType", Kind::Str),
    ("onPremisesImmutableId", Kind::Str),
    ("passwordProfile", Kind::PasswordProfile),
    ("passwordPolicies", Kind::Str),
];

/// Cloud-writable properties of a directory-synced user; everything else is mastered on-prem.
pub(crate) const SYNCED_USER_CLOUD_WRITABLE: &[&str] = &["accountEnabled", "usageLocation"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    Bool,
    StrList,
    PasswordProfile,
}

/// Every user property the sandbox models (`$select` takes any in [`schema::USER`]; the others
/// read as null or empty).
pub(crate) const USER_READABLE: &[&str] = &[
    "id",
    "accountEnabled",
    "assignedLicenses",
    "businessPhones",
    "city",
    "companyName",
    "country",
    "createdDateTime",
    "deletedDateTime",
    "department",
    "displayName",
    "employeeHireDate",
    "employeeId",
    "employeeLeaveDateTime",
    "employeeType",
    "givenName",
    "identities",
    "jobTitle",
    "lastPasswordChangeDateTime",
    "licenseAssignmentStates",
    "mail",
    "mailNickname",
    "mobilePhone",
    "officeLocation",
    "onPremisesDistinguishedName",
    "onPremisesDomainName",
    "onPremisesExtensionAttributes",
    "onPremisesImmutableId",
    "onPremisesLastSyncDateTime",
    "onPremisesSamAccountName",
    "onPremisesSyncEnabled",
    "onPremisesUserPrincipalName",
    "otherMails",
    "passwordPolicies",
    "passwordProfile",
    "postalCode",
    "preferredLanguage",
    "proxyAddresses",
    "signInSessionsValidFromDateTime",
    "state",
    "streetAddress",
    "surname",
    "usageLocation",
    "userPrincipalName",
    "userType",
];

/// What `GET /users` returns without `$select` (Graph v1.0's default set).
pub(crate) const USER_DEFAULT: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

pub(crate) const USER_FILTERABLE: &[&str] = &[
    "id",
    "userPrincipalName",
    "onPremisesSamAccountName",
    "onPremisesImmutableId",
    "mail",
    "mailNickname",
    "displayName",
    "accountEnabled",
    "employeeId",
    "department",
    "givenName",
    "surname",
    "usageLocation",
    "userType",
];

pub(crate) const USERS: odata::EntitySet = odata::EntitySet {
    resource: "User",
    type_name: "microsoft.graph.user",
    filterable: USER_FILTERABLE,
    schema: schema::USER,
};

pub(crate) const GROUP_READABLE: &[&str] = &[
    "id",
    "assignedLicenses",
    "createdDateTime",
    "description",
    "displayName",
    "groupTypes",
    "isAssignableToRole",
    "mail",
    "mailEnabled",
    "mailNickname",
    "membershipRule",
    "membershipRuleProcessingState",
    "onPremisesLastSyncDateTime",
    "onPremisesSamAccountName",
    "onPremisesSyncEnabled",
    "proxyAddresses",
    "securityEnabled",
    "visibility",
];

pub(crate) const GROUPS: odata::EntitySet = odata::EntitySet {
    resource: "Group",
    type_name: "microsoft.graph.group",
    filterable: &[
        "id",
        "displayName",
        "mailNickname",
        "mail",
        "mailEnabled",
        "securityEnabled",
        "onPremisesSyncEnabled",
    ],
    schema: schema::GROUP,
};

pub(crate) const SKU_READABLE: &[&str] = &[
    "id",
    "accountId",
    "accountName",
    "appliesTo",
    "capabilityStatus",
    "consumedUnits",
    "prepaidUnits",
    "servicePlans",
    "skuId",
    "skuPartNumber",
    "subscriptionIds",
];

pub(crate) const DEVICE_READABLE: &[&str] = &[
    "id",
    "azureADDeviceId",
    "complianceState",
    "deviceName",
    "emailAddress",
    "enrolledDateTime",
    "lastSyncDateTime",
    "managedDeviceOwnerType",
    "managementState",
    "model",
    "manufacturer",
    "operatingSystem",
    "osVersion",
    "serialNumber",
    "userDisplayName",
    "userId",
    "userPrincipalName",
];

pub(crate) const DEVICES: odata::EntitySet = odata::EntitySet {
    resource: "managedDevice",
    type_name: "microsoft.graph.managedDevice",
    filterable: &[
        "id",
        "userId",
        "userPrincipalName",
        "deviceName",
        "operatingSystem",
        "complianceState",
    ],
    schema: schema::MANAGED_DEVICE,
};

pub(crate) fn ts(t: DateTime<Utc>) -> Value {
    json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The full Graph representation of a user (before `$select`).
pub(crate) fn user_json(u: &User, tenant: &Tenant) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
    m.insert("id".into(), json!(u.id));
    for p in USER_READABLE {
        if let Some(v) = u.props.get(*p) {
            m.insert((*p).to_owned(), v.clone());
        }
    }
    for list in ["businessPhones", "otherMails"] {
        m.entry(list).or_insert_with(|| json!([]));
    }
    m.insert("createdDateTime".into(), ts(u.created_at));
    m.insert(
        "deletedDateTime".into(),
        u.deleted_at.map_or(Value::Null, ts),
    );
    m.insert("passwordProfile".into(), Value::Null);
    m.insert(
        "lastPasswordChangeDateTime".into(),
        ts(u.password.as_ref().map_or(u.created_at, |p| p.set_at)),
    );
    m.insert(
        "signInSessionsValidFromDateTime".into(),
        ts(u.sessions_revoked_at.unwrap_or(u.created_at)),
    );
    m.insert(
        "assignedLicenses".into(),
        Value::Array(
            u.licenses
                .iter()
                .map(|l| json!({"disabledPlans": l.disabled_plans, "skuId": l.sku_id}))
                .collect(),
        ),
    );
    m.insert(
        "licenseAssignmentStates".into(),
        Value::Array(
            u.licenses
                .iter()
                .map(|l| {
                    json!({"assignedByGroup": null, "disabledPlans": l.disabled_plans,
                           "error": "None", "lastUpdatedDateTime": ts(u.created_at),
                           "skuId": l.sku_id, "state": "Active"})
                })
                .collect(),
        ),
    );
    let mail = u.str_prop("mail").map(str::to_owned);
    m.insert(
        "proxyAddresses".into(),
        match &mail {
            Some(mail) => json!([format!("SMTP:{mail}")]),
            None => json!([]),
        },
    );
    match &u.on_prem {
        Some(l) => {
            m.insert("onPremisesSyncEnabled".into(), json!(true));
            m.insert("onPremisesSamAccountName".into(), json!(l.sam_account_name));
            m.insert("onPremisesImmutableId".into(), json!(l.immutable_id));
            m.insert(
                "onPremisesDistinguishedName".into(),
                json!(l.distinguished_name),
            );
            m.insert("onPremisesDomainName".into(), json!(l.domain_name));
            m.insert(
                "onPremisesUserPrincipalName".into(),
                json!(l.user_principal_name),
            );
            m.insert("onPremisesLastSyncDateTime".into(), ts(l.last_sync));
        }
        None => {
            m.insert("onPremisesSyncEnabled".into(), Value::Null);
            for k in [
                "onPremisesSamAccountName",
                "onPremisesDistinguishedName",
                "onPremisesDomainName",
                "onPremisesUserPrincipalName",
                "onPremisesLastSyncDateTime",
            ] {
                m.insert(k.into(), Value::Null);
            }
            m.entry("onPremisesImmutableId").or_insert(Value::Null);
        }
    }
    // A member signs in with their UPN, issued by the tenant's initial domain.
    m.insert(
        "identities".into(),
        json!([{
            "signInType": "userPrincipalName",
            "issuer": tenant.initial_domain,
            "issuerAssignedId": u.upn(),
        }]),
    );
    // Graph returns all fifteen, null until set (on-prem AD or Exchange sets them; the sandbox
    // never does).
    m.insert(
        "onPremisesExtensionAttributes".into(),
        Value::Object(
            (1..=15)
                .map(|i| (format!("extensionAttribute{i}"), Value::Null))
                .collect(),
        ),
    );
    m
}

pub(crate) fn group_json(g: &Group) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("@odata.type".into(), json!("#microsoft.graph.group"));
    m.insert("id".into(), json!(g.id));
    // Group-based licensing is not modelled: groups carry no licences.
    m.insert("assignedLicenses".into(), json!([]));
    m.insert("createdDateTime".into(), ts(g.created_at));
    m.insert("isAssignableToRole".into(), json!(false));
    m.insert("description".into(), json!(g.description));
    m.insert("displayName".into(), json!(g.display_name));
    m.insert("groupTypes".into(), json!(g.kind.group_types()));
    m.insert("mail".into(), json!(g.mail));
    m.insert("mailEnabled".into(), json!(g.kind.mail_enabled()));
    m.insert("mailNickname".into(), json!(g.mail_nickname));
    m.insert("membershipRule".into(), json!(g.membership_rule));
    m.insert(
        "membershipRuleProcessingState".into(),
        if g.membership_rule.is_some() {
            json!("On")
        } else {
            Value::Null
        },
    );
    m.insert(
        "onPremisesSyncEnabled".into(),
        if g.on_prem.is_some() {
            json!(true)
        } else {
            Value::Null
        },
    );
    m.insert(
        "onPremisesSamAccountName".into(),
        json!(g.on_prem.as_ref().map(|o| o.sam_account_name.clone())),
    );
    m.insert(
        "onPremisesLastSyncDateTime".into(),
        g.on_prem.as_ref().map_or(Value::Null, |o| ts(o.last_sync)),
    );
    m.insert(
        "proxyAddresses".into(),
        match &g.mail {
            Some(mail) => json!([format!("SMTP:{mail}")]),
            None => json!([]),
        },
    );
    m.insert("securityEnabled".into(), json!(g.kind.security_enabled()));
    m.insert(
        "visibility".into(),
        if g.kind == crate::world::GroupKind::M365 {
            json!("Private")
        } else {
            Value::Null
        },
    );
    m
}

pub(crate) fn sku_json(s: &Sku, c: &Company) -> Map<String, Value> {
    let consumed = crate::world::consumed_units(&c.tenant, &s.sku_id);
    let mut m = Map::new();
    m.insert("id".into(), json!(format!("{}_{}", c.tenant.id, s.sku_id)));
    m.insert("accountId".into(), json!(c.tenant.id));
    m.insert("accountName".into(), json!(c.name));
    m.insert("appliesTo".into(), json!("User"));
    m.insert("capabilityStatus".into(), json!("Enabled"));
    m.insert("consumedUnits".into(), json!(consumed));
    m.insert(
        "prepaidUnits".into(),
        json!({"enabled": s.seats, "suspended": 0, "warning": 0, "lockedOut": 0}),
    );
    m.insert(
        "servicePlans".into(),
        Value::Array(
            s.service_plans
                .iter()
                .map(|(id, name)| {
                    json!({"servicePlanId": id, "servicePlanName": name,
                           "provisioningStatus": "Success", "appliesTo": "User"})
                })
                .collect(),
        ),
    );
    m.insert("skuId".into(), json!(s.sku_id));
    m.insert("skuPartNumber".into(), json!(s.part_number));
    m.insert(
        "subscriptionIds".into(),
        json!([crate::ids::guid(
            0,
            &["subscription", &c.tenant.id, &s.sku_id]
        )]),
    );
    m
}

pub(crate) fn device_json(d: &ManagedDevice, t: &Tenant) -> Map<String, Value> {
    let user = t.users.iter().find(|u| u.id == d.user_id);
    let mut m = Map::new();
    m.insert(
        "@odata.type".into(),
        json!("#microsoft.graph.managedDevice"),
    );
    m.insert("id".into(), json!(d.id));
    m.insert("azureADDeviceId".into(), json!(d.azure_ad_device_id));
    m.insert("complianceState".into(), json!(d.compliance_state));
    m.insert("deviceName".into(), json!(d.device_name));
    m.insert(
        "emailAddress".into(),
        json!(user.and_then(|u| u.str_prop("mail"))),
    );
    m.insert("enrolledDateTime".into(), ts(d.enrolled_at));
    m.insert("lastSyncDateTime".into(), ts(d.enrolled_at));
    m.insert("managedDeviceOwnerType".into(), json!("company"));
    m.insert("managementState".into(), json!(d.management_state));
    m.insert("model".into(), json!("Virtual Machine"));
    m.insert("manufacturer".into(), json!("Microsoft Corporation"));
    m.insert("operatingSystem".into(), json!(d.operating_system));
    m.insert("osVersion".into(), json!(d.os_version));
    m.insert("serialNumber".into(), json!(d.serial_number));
    m.insert(
        "userDisplayName".into(),
        json!(user.and_then(|u| u.str_prop("displayName"))),
    );
    m.insert("userId".into(), json!(d.user_id));
    m.insert("userPrincipalName".into(), json!(user.map(User::upn)));
    m
}

/// Resolves `{id}` in a users URL: an object id or a userPrincipalName. `key` comes from axum's
/// `Path`, which has already percent-decoded it once, as Graph does; decoding again would make
/// `a%2540b` mean `a@b`.
pub(crate) fn find_user<'a>(t: &'a Tenant, key: &str) -> Option<&'a User> {
    user_index(t, key).map(|i| &t.users[i])
}

pub(crate) fn user_index(t: &Tenant, key: &str) -> Option<usize> {
    t.users
        .iter()
        .position(|u| u.id.eq_ignore_ascii_case(key) || u.upn().eq_ignore_ascii_case(key))
}

/// Extracts the object id from an `@odata.id` reference body.
pub(crate) fn ref_target(body: &Value) -> GraphResult<String> {
    let Some(obj) = body.as_object() else {
        return Err(GraphError::invalid_json());
    };
    let Some(v) = obj.get("@odata.id") else {
        return Err(GraphError::bad_request(
            "Invalid object identifier: the request body must contain '@odata.id'.",
        ));
    };
    let Some(url) = v.as_str() else {
        return Err(GraphError::bad_request("Invalid object identifier."));
    };
    let id = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let id = id
        .strip_prefix("directoryObjects('")
        .and_then(|s| s.strip_suffix("')"))
        .unwrap_or(id);
    if !crate::ids::is_guid(id) {
        return Err(GraphError::bad_request(format!(
            "Invalid object identifier '{id}'."
        )));
    }
    Ok(id.to_ascii_lowercase())
}

/// The `@odata.id` Graph writes for a directory object in a `$ref` answer. Graph names the
/// object through its directory service's own URL,
/// `https://graph.microsoft.com/v2/{tenant}/directoryObjects/{id}/Microsoft.DirectoryServices.User`;
/// the sandbox writes the same shape under its own origin. **[unverified]** against a captured
/// response; clients take the id from its `directoryObjects/{id}` segment.
pub(crate) fn directory_ref(origin: &str, tenant_id: &str, id: &str, kind: &str) -> Value {
    json!(format!(
        "{origin}/graph/v2/{tenant_id}/directoryObjects/{id}/Microsoft.DirectoryServices.{kind}"
    ))
}

/// Whether objects answered under `set` carry `@odata.type`. Graph answers with OData's
/// minimal metadata, which names an object's type only when it can differ from the type the
/// context URL declares: the items of a `directoryObjects` collection (`memberOf`, group
/// `members`, `deletedItems`) and a single directory object (`manager`, a deleted item, a
/// restore) say whether they are a user or a group; `/users`, `/groups`, a cast such as
/// `memberOf/microsoft.graph.group`, managed devices, SKUs and role assignments don't, because
/// their items are exactly the declared type. Every Graph read decides it here.
fn names_item_type(set: &str) -> bool {
    set == "directoryObjects"
}

/// `obj` as a response item: `@odata.type` when `set` calls for it, then the projection.
fn item(
    query: &Query,
    set: &str,
    obj: &Map<String, Value>,
    defaults: &[&str],
) -> Map<String, Value> {
    let mut out = Map::new();
    if names_item_type(set) {
        if let Some(t) = obj.get("@odata.type") {
            out.insert("@odata.type".into(), t.clone());
        }
    }
    query.project_into(&mut out, obj, defaults);
    out
}

/// A 200 collection response: `objs` filtered by `$filter`, projected to `$select` (or
/// `defaults`), typed as [`names_item_type`] decides for `context` (the entity set the
/// context URL names) and paged `page_size` at a time unless `$top` says otherwise.
pub(crate) fn collection(
    ctx: &Ctx,
    query: &Query,
    objs: impl IntoIterator<Item = Map<String, Value>>,
    defaults: &[&str],
    context: &str,
    page_size: usize,
) -> Response {
    let items: Vec<Value> = objs
        .into_iter()
        .filter(|m| query.matches(m))
        .map(|m| Value::Object(item(query, context, &m, defaults)))
        .collect();
    json_response(
        StatusCode::OK,
        query.page(items, &ctx.origin, &ctx.path, context, page_size),
    )
}

/// A single object as Graph answers it: `@odata.context` naming `set` (with the `$select`),
/// `@odata.type` when [`names_item_type`] says so, then the projection of `obj`.
pub(crate) fn entity(
    ctx: &Ctx,
    set: &str,
    query: &Query,
    obj: &Map<String, Value>,
    defaults: &[&str],
) -> Value {
    let mut out = Map::new();
    out.insert(
        "@odata.context".into(),
        json!(format!(
            "{}/graph/v1.0/$metadata#{set}{}/$entity",
            ctx.origin,
            query.context_select()
        )),
    );
    out.extend(item(query, set, obj, defaults));
    Value::Object(out)
}

pub(crate) fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Roles whose holders an app-only caller with ordinary user permissions may not modify.
pub(crate) fn is_privileged(t: &Tenant, user_id: &str) -> bool {
    const PRIVILEGED: &[&str] = &[
        "62e90394-69f5-4237-9190-012177145e10",
        "e8611ab8-c189-46e8-94e1-60213ab1f814",
    ];
    t.role_assignments
        .iter()
        .any(|r| r.principal_id == user_id && PRIVILEGED.contains(&r.role_definition_id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_targets() {
        let id = "8a6f1c2e-3b4d-4e5f-9a0b-1c2d3e4f5a6b";
        assert_eq!(
            ref_target(&json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}")})).unwrap(),
            id
        );
        assert_eq!(
            ref_target(&json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects('{id}')")})).unwrap(),
            id
        );
        assert!(ref_target(&json!({"@odata.id": "https://x/users/nope"})).is_err());
        assert!(ref_target(&json!({})).is_err());
        assert!(ref_target(&json!([])).is_err());
    }
}
