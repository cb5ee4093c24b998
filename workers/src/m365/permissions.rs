//! The Microsoft Graph permissions Steward's app registration needs, and which one a refused
//! request lacked.
//!
//! Steward connects a tenant with `.default` scopes, so an administrator's consent grants what
//! the app registration lists; the registration must therefore list [`APPLICATION`] (app-only
//! calls: every op except the password reset) and [`DELEGATED`] (the password reset, which
//! Microsoft serves to delegated tokens only). When Graph answers 403
//! `Authorization_RequestDenied`, [`needed`] names the least privileged permission of the request
//! (from the "Permissions" tables of Microsoft's Graph v1.0 reference), so the diagnosis can say
//! what to grant.

use std::fmt;

/// The application permissions (app roles) the ops need, least privileged per route.
pub const APPLICATION: &[&str] = &[
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

/// The delegated permissions Steward asks for (the technician's rights, for password resets).
pub const DELEGATED: &[&str] = &[
    "Directory.AccessAsUser.All",
    "User.ReadWrite.All",
    "UserAuthenticationMethod.ReadWrite.All",
];

/// Application or delegated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An app role (client credentials).
    Application,
    /// A delegated scope (a signed-in technician).
    Delegated,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Application => "application",
            Self::Delegated => "delegated",
        })
    }
}

/// The permission of Steward's registration ([`APPLICATION`] or [`DELEGATED`]) that lets
/// Graph serve `request` (`METHOD /path`, the path with or without the `/v1.0` base and a
/// query), and of which kind; `None` for a request Steward does not make.
pub fn needed(request: &str) -> Option<(Kind, &'static str)> {
    let (method, path) = request.split_once(' ')?;
    let path = path.split(['?', ' ']).next().unwrap_or_default();
    let path = path.split_once("/v1.0").map_or(path, |(_, rest)| rest);
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let app = |p| Some((Kind::Application, p));
    match (method, segs.as_slice()) {
        ("POST", ["users", _, "authentication", "methods", _, "resetPassword"]) => {
            Some((Kind::Delegated, "UserAuthenticationMethod.ReadWrite.All"))
        }
        (_, ["users", _, "authentication", ..]) => app("UserAuthenticationMethod.ReadWrite.All"),
        ("GET", ["users", _, "memberOf", ..]) => app("GroupMember.Read.All"),
        (
            "POST",
            [
                "users",
                _,
                "assignLicense" | "microsoft.graph.assignLicense",
            ],
        ) => app("LicenseAssignment.ReadWrite.All"),
        ("POST", ["users", _, "revokeSignInSessions"]) => app("User.RevokeSessions.All"),
        ("GET", ["users", _, "managedDevices"]) => app("DeviceManagementManagedDevices.Read.All"),
        (_, ["users", ..]) => app("User.ReadWrite.All"),
        ("GET", ["groups", ..]) => app("GroupMember.Read.All"),
        (_, ["groups", _, "members", ..]) => app("GroupMember.ReadWrite.All"),
        ("GET", ["directory", "deletedItems", ..]) => app("User.ReadWrite.All"),
        (_, ["directory", "deletedItems", ..]) => app("User.DeleteRestore.All"),
        ("GET", ["deviceManagement", "managedDevices", ..]) => {
            app("DeviceManagementManagedDevices.Read.All")
        }
        ("POST", ["deviceManagement", "managedDevices", _, _]) => {
            app("DeviceManagementManagedDevices.PrivilegedOperations.All")
        }
        ("GET", ["subscribedSkus"]) => app("Organization.Read.All"),
        (_, ["roleManagement", ..]) => app("RoleManagement.ReadWrite.Directory"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_requests_name_their_least_privileged_permission() {
        assert_eq!(
            needed("POST /graph/v1.0/users/u-1/assignLicense"),
            Some((Kind::Application, "LicenseAssignment.ReadWrite.All"))
        );
        assert_eq!(
            needed("POST /v1.0/users/u/authentication/methods/28c1/resetPassword"),
            Some((Kind::Delegated, "UserAuthenticationMethod.ReadWrite.All"))
        );
        assert_eq!(
            needed("GET /v1.0/users?$filter=x"),
            Some((Kind::Application, "User.ReadWrite.All"))
        );
        assert_eq!(
            needed("POST /groups/g/members/$ref"),
            Some((Kind::Application, "GroupMember.ReadWrite.All"))
        );
        assert_eq!(needed("GET /v1.0/me/drive"), None);
        assert_eq!(needed("nonsense"), None);
        // Every permission it names is one the registration lists.
        for r in [
            "GET /users/u/memberOf/microsoft.graph.group",
            "GET /subscribedSkus",
            "GET /deviceManagement/managedDevices/d",
            "GET /users/u/authentication/methods",
            "GET /roleManagement/directory/roleDefinitions",
            "POST /users",
            "POST /users/u/revokeSignInSessions",
            "POST /directory/deletedItems/x/restore",
            "POST /deviceManagement/managedDevices/d/wipe",
            "DELETE /roleManagement/directory/roleAssignments/r",
            "DELETE /users/u/authentication/phoneMethods/m",
        ] {
            let (kind, p) = needed(r).expect(r);
            assert_eq!(kind, Kind::Application);
            assert!(APPLICATION.contains(&p), "{r}: {p}");
        }
    }
}
