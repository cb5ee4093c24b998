//! Per-endpoint permissions: what a token must carry for Graph to serve each route, from the
//! "Permissions" tables of Microsoft's Graph v1.0 reference (least privileged first, then the
//! higher privileged ones that also work). A valid token without one of them gets 403
//! `Authorization_RequestDenied` "Insufficient privileges to complete the operation.", as Graph
//! answers; a route Graph does not offer to a token type ("Not supported.") refuses it the same
//! way. The table, with what could not be confirmed, is in the sandbox's README.

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::{AppState, Ctx};
use crate::identity::{self, GRAPH_AUDIENCE};

use super::error::GraphError;

/// The Graph application permissions Steward's ops need (the default of a fixture app's
/// `application_permissions`): the least privileged ones of the routes they call.
pub const STEWARD_APPLICATION: &[&str] = &[
    "User.ReadWrite.All",
    "User.RevokeSessions.All",
    "User.DeleteRestore.All",
    "GroupMember.Read.All",
    "GroupMember.ReadWrite.All",
    "LicenseAssignment.ReadWrite.All",
    "Organization.Read.All",
    "UserAuthenticationMethod.ReadWrite.All",
    "DeviceManagementManagedDevices.Read.All",
    "DeviceManagementManagedDevices.PrivilegedOperations.All",
    "RoleManagement.ReadWrite.Directory",
];

/// The Graph delegated permissions Steward asks for (password resets run as the technician).
pub const STEWARD_DELEGATED: &[&str] = &[
    "Directory.AccessAsUser.All",
    "User.ReadWrite.All",
    "UserAuthenticationMethod.ReadWrite.All",
];

/// What one route accepts: for app-only tokens (`roles`) and delegated ones (`scp`); the first
/// of each list is the least privileged. `None`: that token type is not supported at all.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// Application permissions (client credentials), least privileged first.
    pub application: Option<&'static [&'static str]>,
    /// Delegated permissions (a signed-in user), least privileged first.
    pub delegated: Option<&'static [&'static str]>,
}

const USER_READ: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const USER_READ_DELEGATED: &[&str] = &[
    "User.ReadBasic.All",
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const USER_WRITE: &[&str] = &["User.ReadWrite.All", "Directory.ReadWrite.All"];
const USER_WRITE_DELEGATED: &[&str] = &[
    "User.ReadWrite.All",
    "Directory.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const USER_DELETE: &[&str] = &["User.ReadWrite.All"];
const USER_DELETE_DELEGATED: &[&str] = &["User.ReadWrite.All", "Directory.AccessAsUser.All"];
const MEMBER_OF: &[&str] = &[
    "GroupMember.Read.All",
    "Group.Read.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const MEMBER_OF_DELEGATED: &[&str] = &[
    "GroupMember.Read.All",
    "Group.Read.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const LICENSE_WRITE: &[&str] = &[
    "LicenseAssignment.ReadWrite.All",
    "Directory.ReadWrite.All",
    "User.ReadWrite.All",
];
const LICENSE_WRITE_DELEGATED: &[&str] = &[
    "LicenseAssignment.ReadWrite.All",
    "Directory.ReadWrite.All",
    "User.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const REVOKE_SESSIONS: &[&str] = &["User.RevokeSessions.All", "Directory.ReadWrite.All"];
const REVOKE_SESSIONS_DELEGATED: &[&str] = &[
    "User.RevokeSessions.All",
    "User.ReadWrite.All",
    "Directory.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const AUTH_METHODS_READ: &[&str] = &[
    "UserAuthenticationMethod.Read.All",
    "UserAuthenticationMethod.ReadWrite.All",
];
const AUTH_METHODS_WRITE: &[&str] = &["UserAuthenticationMethod.ReadWrite.All"];
const DELETED_READ: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const DELETED_READ_DELEGATED: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const DELETED_RESTORE: &[&str] = &["User.DeleteRestore.All", "User.ReadWrite.All"];
const DELETED_RESTORE_DELEGATED: &[&str] = &[
    "User.DeleteRestore.All",
    "User.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const GROUP_READ: &[&str] = &[
    "GroupMember.Read.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const GROUP_READ_DELEGATED: &[&str] = &[
    "GroupMember.Read.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const MEMBERS_READ: &[&str] = &[
    "GroupMember.Read.All",
    "GroupMember.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
];
const MEMBERS_READ_DELEGATED: &[&str] = &[
    "GroupMember.Read.All",
    "GroupMember.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.AccessAsUser.All",
];
const MEMBERS_WRITE: &[&str] = &[
    "GroupMember.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.ReadWrite.All",
];
const MEMBERS_WRITE_DELEGATED: &[&str] = &[
    "GroupMember.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const SKUS_READ: &[&str] = &[
    "Organization.Read.All",
    "LicenseAssignment.Read.All",
    "LicenseAssignment.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "Organization.ReadWrite.All",
];
const DEVICES_READ: &[&str] = &[
    "DeviceManagementManagedDevices.Read.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
];
const DEVICES_ACTION: &[&str] = &[
    "DeviceManagementManagedDevices.PrivilegedOperations.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
];
const ROLES_READ: &[&str] = &[
    "RoleManagement.Read.Directory",
    "RoleManagement.ReadWrite.Directory",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const ROLES_READ_DELEGATED: &[&str] = &[
    "RoleManagement.Read.Directory",
    "RoleManagement.ReadWrite.Directory",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
    "Directory.AccessAsUser.All",
];
const ROLES_WRITE: &[&str] = &["RoleManagement.ReadWrite.Directory"];
const ROLES_WRITE_DELEGATED: &[&str] = &[
    "RoleManagement.ReadWrite.Directory",
    "Directory.AccessAsUser.All",
];

const fn both(
    application: &'static [&'static str],
    delegated: &'static [&'static str],
) -> Requirement {
    Requirement {
        application: Some(application),
        delegated: Some(delegated),
    }
}

/// The requirement of `method` on a route template under `/v1.0` (`/users/{id}`), or `None` for
/// routes with no check of their own (`$batch`: each inner request is checked).
pub(crate) fn requirement(method: &Method, route: &str) -> Option<Requirement> {
    let route = route.replace("/graph.", "/microsoft.graph.");
    let m = method.as_str();
    Some(match (m, route.as_str()) {
        ("GET", "/users" | "/users/{id}" | "/users/{id}/manager" | "/users/{id}/manager/$ref") => {
            both(USER_READ, USER_READ_DELEGATED)
        }
        ("POST", "/users")
        | ("PATCH", "/users/{id}")
        | ("PUT" | "DELETE", "/users/{id}/manager/$ref") => both(USER_WRITE, USER_WRITE_DELEGATED),
        ("DELETE", "/users/{id}") => both(USER_DELETE, USER_DELETE_DELEGATED),
        ("GET", "/users/{id}/memberOf" | "/users/{id}/memberOf/microsoft.graph.group") => {
            both(MEMBER_OF, MEMBER_OF_DELEGATED)
        }
        ("POST", "/users/{id}/assignLicense" | "/users/{id}/microsoft.graph.assignLicense") => {
            both(LICENSE_WRITE, LICENSE_WRITE_DELEGATED)
        }
        ("POST", "/users/{id}/revokeSignInSessions") => {
            both(REVOKE_SESSIONS, REVOKE_SESSIONS_DELEGATED)
        }
        (
            "GET",
            "/users/{id}/authentication/methods" | "/users/{id}/authentication/operations/{op_id}",
        ) => both(AUTH_METHODS_READ, AUTH_METHODS_READ),
        ("DELETE", "/users/{id}/authentication/{kind}/{method_id}") => {
            both(AUTH_METHODS_WRITE, AUTH_METHODS_WRITE)
        }
        ("POST", "/users/{id}/authentication/methods/{method_id}/resetPassword") => Requirement {
            application: None,
            delegated: Some(AUTH_METHODS_WRITE),
        },
        (
            "GET",
            "/users/{id}/managedDevices"
            | "/deviceManagement/managedDevices"
            | "/deviceManagement/managedDevices/{id}",
        ) => both(DEVICES_READ, DEVICES_READ),
        (
            "POST",
            "/deviceManagement/managedDevices/{id}/wipe"
            | "/deviceManagement/managedDevices/{id}/retire",
        ) => both(DEVICES_ACTION, DEVICES_ACTION),
        (
            "GET",
            "/directory/deletedItems/microsoft.graph.user" | "/directory/deletedItems/{id}",
        ) => both(DELETED_READ, DELETED_READ_DELEGATED),
        ("DELETE", "/directory/deletedItems/{id}")
        | ("POST", "/directory/deletedItems/{id}/restore") => {
            both(DELETED_RESTORE, DELETED_RESTORE_DELEGATED)
        }
        ("GET", "/groups" | "/groups/{id}") => both(GROUP_READ, GROUP_READ_DELEGATED),
        ("GET", "/groups/{id}/members" | "/groups/{id}/members/$ref") => {
            both(MEMBERS_READ, MEMBERS_READ_DELEGATED)
        }
        ("POST", "/groups/{id}/members/$ref")
        | ("DELETE", "/groups/{id}/members/{member_id}/$ref") => {
            both(MEMBERS_WRITE, MEMBERS_WRITE_DELEGATED)
        }
        ("GET", "/subscribedSkus") => both(SKUS_READ, SKUS_READ),
        (
            "GET",
            "/roleManagement/directory/roleDefinitions"
            | "/roleManagement/directory/roleAssignments"
            | "/roleManagement/directory/roleAssignments/{id}",
        ) => both(ROLES_READ, ROLES_READ_DELEGATED),
        ("POST", "/roleManagement/directory/roleAssignments")
        | ("DELETE", "/roleManagement/directory/roleAssignments/{id}") => {
            both(ROLES_WRITE, ROLES_WRITE_DELEGATED)
        }
        _ => return None,
    })
}

/// The requirement of a concrete request path under `/v1.0`, for tools and tests outside the
/// router (`/users/ada@contoso.com/assignLicense`).
pub fn requirement_for_path(method: &Method, path: &str) -> Option<Requirement> {
    let segs: Vec<&str> = path
        .split('?')
        .next()
        .unwrap_or_default()
        .trim_matches('/')
        .split('/')
        .collect();
    let template = match segs.as_slice() {
        ["users"] => "/users".to_owned(),
        ["users", _] => "/users/{id}".to_owned(),
        ["users", _, "manager"] => "/users/{id}/manager".to_owned(),
        ["users", _, "manager", "$ref"] => "/users/{id}/manager/$ref".to_owned(),
        ["users", _, rest @ ..] if rest.len() == 1 => format!("/users/{{id}}/{}", rest[0]),
        ["users", _, "memberOf", cast] => format!("/users/{{id}}/memberOf/{cast}"),
        ["users", _, "authentication", "methods"] => {
            "/users/{id}/authentication/methods".to_owned()
        }
        ["users", _, "authentication", "operations", _] => {
            "/users/{id}/authentication/operations/{op_id}".to_owned()
        }
        ["users", _, "authentication", "methods", _, "resetPassword"] => {
            "/users/{id}/authentication/methods/{method_id}/resetPassword".to_owned()
        }
        ["users", _, "authentication", _, _] => {
            "/users/{id}/authentication/{kind}/{method_id}".to_owned()
        }
        ["groups"] => "/groups".to_owned(),
        ["groups", _] => "/groups/{id}".to_owned(),
        ["groups", _, "members"] => "/groups/{id}/members".to_owned(),
        ["groups", _, "members", "$ref"] => "/groups/{id}/members/$ref".to_owned(),
        ["groups", _, "members", _, "$ref"] => "/groups/{id}/members/{member_id}/$ref".to_owned(),
        ["directory", "deletedItems", cast] if cast.contains("graph.") => {
            format!("/directory/deletedItems/{cast}")
        }
        ["directory", "deletedItems", _] => "/directory/deletedItems/{id}".to_owned(),
        ["directory", "deletedItems", _, "restore"] => {
            "/directory/deletedItems/{id}/restore".to_owned()
        }
        ["deviceManagement", "managedDevices"] => "/deviceManagement/managedDevices".to_owned(),
        ["deviceManagement", "managedDevices", _] => {
            "/deviceManagement/managedDevices/{id}".to_owned()
        }
        ["deviceManagement", "managedDevices", _, action] => {
            format!("/deviceManagement/managedDevices/{{id}}/{action}")
        }
        ["roleManagement", "directory", "roleDefinitions"] => {
            "/roleManagement/directory/roleDefinitions".to_owned()
        }
        ["roleManagement", "directory", "roleAssignments"] => {
            "/roleManagement/directory/roleAssignments".to_owned()
        }
        ["roleManagement", "directory", "roleAssignments", _] => {
            "/roleManagement/directory/roleAssignments/{id}".to_owned()
        }
        ["subscribedSkus"] => "/subscribedSkus".to_owned(),
        _ => return None,
    };
    requirement(method, &template)
}

/// Whether `granted` satisfies `req` for a token of that type.
pub(crate) fn allows(req: &Requirement, app_only: bool, granted: &[String]) -> bool {
    let accepted = if app_only {
        req.application
    } else {
        req.delegated
    };
    accepted.is_some_and(|list| {
        list.iter()
            .any(|p| granted.iter().any(|g| g.eq_ignore_ascii_case(p)))
    })
}

/// Route layer: a valid Graph token without the route's permission gets 403. Invalid tokens pass
/// through, so the handler answers 401 as before.
pub(crate) async fn enforce(
    State(shared): State<AppState>,
    matched: Option<MatchedPath>,
    ctx: Ctx,
    req: Request,
    next: Next,
) -> Response {
    let Some(route) = matched.as_ref().and_then(|m| {
        m.as_str()
            .split_once("/v1.0")
            .map(|(_, rest)| rest.to_owned())
    }) else {
        return next.run(req).await;
    };
    let Some(requirement) = requirement(req.method(), &route) else {
        return next.run(req).await;
    };
    let denied = {
        let (st, now) = shared.lock();
        match identity::authenticate(&st.tokens, ctx.bearer(), GRAPH_AUDIENCE, now) {
            Ok(t) => !allows(&requirement, t.app_only, &t.permissions),
            Err(_) => false,
        }
    };
    if denied {
        return GraphError::denied().into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_paths_map_to_the_documented_permissions() {
        let post = Method::POST;
        let r = requirement_for_path(&post, "/users/ada@contoso.com/assignLicense").unwrap();
        assert_eq!(r.application.unwrap()[0], "LicenseAssignment.ReadWrite.All");
        let r = requirement_for_path(
            &post,
            "/users/x/authentication/methods/28c10230-6103-485e-b985-444c60001490/resetPassword",
        )
        .unwrap();
        assert!(
            r.application.is_none(),
            "app-only resetPassword is not supported"
        );
        assert!(!allows(
            &r,
            true,
            &["UserAuthenticationMethod.ReadWrite.All".into()]
        ));
        assert!(allows(
            &r,
            false,
            &["UserAuthenticationMethod.ReadWrite.All".into()]
        ));
        let r = requirement_for_path(&Method::GET, "/users/x/memberOf/graph.group").unwrap();
        assert_eq!(r.application.unwrap()[0], "GroupMember.Read.All");
        // Directory.ReadWrite.All does not delete users; only User.ReadWrite.All does.
        let r = requirement_for_path(&Method::DELETE, "/users/x").unwrap();
        assert!(!allows(&r, true, &["Directory.ReadWrite.All".into()]));
        assert!(allows(&r, true, &["user.readwrite.all".into()]));
        assert!(requirement_for_path(&post, "/$batch").is_none());
        assert!(
            requirement_for_path(&Method::GET, "/directory/deletedItems/microsoft.graph.user")
                .is_some()
        );
        assert!(requirement_for_path(&post, "/deviceManagement/managedDevices/d/wipe").is_some());
        assert!(requirement_for_path(&post, "/deviceManagement/managedDevices/d/reboot").is_none());
    }
}
