//! The op catalog: every onboarding and offboarding op Steward knows, with its permission group,
//! access, approval rule, system, inputs and outputs.
//!
//! These entries are what workflows are validated against and what the permission policy judges.
//! The connectors that carry them out (Graph, Exchange Online, RMM scripts) register their
//! implementations under the same names; a worker that lacks one fails the step with a clear
//! message rather than guessing.

use steward_schemas::{
    ApprovalRule, FieldType, OpAccess, OpField, OpSpec, PermissionGroup as G, Reversibility, System,
};

#[allow(clippy::too_many_arguments)]
const fn op(
    name: &'static str,
    summary: &'static str,
    group: G,
    access: OpAccess,
    approval: ApprovalRule,
    system: System,
    reversibility: Reversibility,
    inputs: &'static [OpField],
    outputs: Option<&'static [OpField]>,
) -> OpSpec {
    OpSpec {
        name,
        summary,
        access,
        group,
        approval,
        system,
        reversibility,
        inputs,
        outputs,
        internal: false,
    }
}

use ApprovalRule::{Always, Blocked, Policy};
use OpAccess::{Read, Write};
use Reversibility::{Irreversible, NotNeeded, Reversible};

const USER: OpField = OpField::required("user", "the user: UPN, or object id");
const GROUP: OpField = OpField::required("group", "the group: name, or object id");

/// Every op in the catalog.
pub static CATALOG: &[OpSpec] = &[
    op(
        "user.create",
        "create a user",
        G::Users,
        Write,
        Policy,
        System::Directory,
        Reversible,
        &[
            OpField::required("user_principal_name", "the new user's UPN"),
            OpField::required("display_name", "the display name"),
            OpField::optional("given_name", "the first name"),
            OpField::optional("surname", "the last name"),
            OpField::optional("job_title", "the job title"),
            OpField::optional("department", "the department"),
            OpField::optional("usage_location", "ISO country code (needed for licenses)"),
            OpField::optional("ou", "the OU, for Active Directory"),
            OpField::optional(
                "password_ref",
                "a reference to the initial password in the secret store",
            ),
        ],
        Some(&[
            OpField::required("id", "the new user's object id"),
            OpField::required("user_principal_name", "its UPN"),
        ]),
    ),
    op(
        "user.get",
        "look a user up",
        G::Users,
        Read,
        Policy,
        System::Directory,
        NotNeeded,
        &[USER],
        None,
    ),
    op(
        "user.update",
        "change a user's attributes",
        G::Users,
        Write,
        Policy,
        System::Directory,
        Reversible,
        &[
            USER,
            OpField::required("attributes", "the attributes to set").of(FieldType::Map),
        ],
        Some(&[]),
    ),
    op(
        "user.disable",
        "block a user's sign-in",
        G::Users,
        Write,
        Policy,
        System::Directory,
        Reversible,
        &[USER],
        Some(&[]),
    ),
    op(
        "user.enable",
        "allow a user's sign-in",
        G::Users,
        Write,
        Policy,
        System::Directory,
        Reversible,
        &[USER],
        Some(&[]),
    ),
    op(
        "user.set_manager",
        "set a user's manager",
        G::Users,
        Write,
        Policy,
        System::Directory,
        Reversible,
        &[
            USER,
            OpField::required("manager", "the manager: UPN or object id"),
        ],
        Some(&[]),
    ),
    op(
        "user.delete",
        "delete a user (Entra ID: restorable for 30 days; Active Directory: restorable only \
         with the AD Recycle Bin enabled, otherwise gone for good)",
        G::Users,
        Write,
        Always,
        System::Directory,
        Reversible,
        &[USER],
        Some(&[]),
    ),
    op(
        "user.unlock",
        "unlock an account locked out by bad passwords (Active Directory; Entra ID's smart \
         lockout releases itself)",
        G::PasswordsSecurity,
        Write,
        Policy,
        System::Directory,
        NotNeeded,
        &[USER],
        Some(&[]),
    ),
    op(
        "user.reset_password",
        "reset a user's password",
        G::PasswordsSecurity,
        Write,
        Policy,
        System::Directory,
        Irreversible,
        &[
            USER,
            OpField::required(
                "password_ref",
                "a reference to the new password in the secret store",
            ),
        ],
        Some(&[]),
    ),
    op(
        "user.revoke_sessions",
        "sign a user out everywhere",
        G::PasswordsSecurity,
        Write,
        Policy,
        System::EntraId,
        Irreversible,
        &[USER],
        Some(&[]),
    ),
    op(
        "mfa.remove_methods",
        "remove a user's MFA methods",
        G::PasswordsSecurity,
        Write,
        Policy,
        System::EntraId,
        Irreversible,
        &[USER],
        Some(&[OpField::required("removed", "the methods removed").of(FieldType::List)]),
    ),
    op(
        "license.assign",
        "assign a license",
        G::Licensing,
        Write,
        Policy,
        System::EntraId,
        Reversible,
        &[USER, OpField::required("sku", "the SKU: part number or id")],
        Some(&[]),
    ),
    op(
        "license.remove",
        "remove a license",
        G::Licensing,
        Write,
        Policy,
        System::EntraId,
        Reversible,
        &[USER, OpField::required("sku", "the SKU: part number or id")],
        Some(&[]),
    ),
    op(
        "group.add_member",
        "add a user to a group",
        G::Groups,
        Write,
        Policy,
        System::Directory,
        Reversible,
        &[USER, GROUP],
        Some(&[]),
    ),
    op(
        "group.remove_member",
        "remove a user from a group",
        G::Groups,
        Write,
        Policy,
        System::Directory,
        Reversible,
        &[USER, GROUP],
        Some(&[]),
    ),
    op(
        "group.list_memberships",
        "list a user's groups",
        G::Groups,
        Read,
        Policy,
        System::Directory,
        NotNeeded,
        &[USER],
        Some(&[OpField::required("groups", "the groups").of(FieldType::List)]),
    ),
    op(
        "group.copy_memberships",
        "give a user the group memberships of a template user (\"same access as Bob\"; dynamic \
         groups are skipped, and in hybrid the AD groups are copied on premises)",
        G::Groups,
        Write,
        Policy,
        System::Directory,
        Reversible,
        &[
            USER,
            OpField::required("template", "the template user: UPN, or object id"),
        ],
        Some(&[]),
    ),
    op(
        "role.assign",
        "assign a directory role",
        G::DirectoryRoles,
        Write,
        Always,
        System::EntraId,
        Reversible,
        &[
            USER,
            OpField::required("role", "the role: name or template id"),
        ],
        Some(&[]),
    ),
    op(
        "role.remove",
        "remove a directory role",
        G::DirectoryRoles,
        Write,
        Policy,
        System::EntraId,
        Reversible,
        &[
            USER,
            OpField::required("role", "the role: name or template id"),
        ],
        Some(&[]),
    ),
    op(
        "mailbox.create",
        "give a user a mailbox (Exchange Online: the licence creates it and this waits until it \
         exists; Exchange Server: Enable-Mailbox, or New-Mailbox with its own AD account for a \
         cloud-only user; hybrid: Enable-RemoteMailbox)",
        G::Mailboxes,
        Write,
        Policy,
        System::Mail,
        Reversible,
        &[
            USER,
            OpField::optional(
                "remote_routing_address",
                "hybrid: user@tenant.mail.onmicrosoft.com (default: Exchange's address policy)",
            ),
            OpField::optional(
                "display_name",
                "New-Mailbox (a cloud-only user on Exchange Server): the account's name",
            ),
            OpField::optional("given_name", "New-Mailbox: the first name"),
            OpField::optional("surname", "New-Mailbox: the last name"),
            OpField::optional(
                "ou",
                "New-Mailbox: the OU of the mailbox's AD account (default: the company's defaults.ou, else Users)",
            ),
        ],
        Some(&[]),
    ),
    op(
        "mailbox.convert_to_shared",
        "convert a mailbox to shared",
        G::Mailboxes,
        Write,
        Policy,
        System::Mail,
        Reversible,
        &[USER],
        Some(&[]),
    ),
    op(
        "mailbox.set_forwarding",
        "forward a mailbox's mail",
        G::Mailboxes,
        Write,
        Policy,
        System::Mail,
        Reversible,
        &[
            USER,
            OpField::required("to", "where to forward"),
            OpField::optional("keep_copy", "keep a copy").boolean(),
        ],
        Some(&[]),
    ),
    op(
        "mailbox.grant_access",
        "grant a user access to a mailbox",
        G::Mailboxes,
        Write,
        Policy,
        System::Mail,
        Reversible,
        &[
            OpField::required("mailbox", "the mailbox"),
            OpField::required("trustee", "who gets access"),
            OpField::required("rights", "the access to grant").of(FieldType::OneOf {
                values: &["full_access", "send_as", "send_on_behalf"],
            }),
        ],
        Some(&[]),
    ),
    op(
        "mailbox.hide_from_gal",
        "hide a mailbox from the address list",
        G::Mailboxes,
        Write,
        Policy,
        System::Mail,
        Reversible,
        &[USER],
        Some(&[]),
    ),
    op(
        "mailbox.set_auto_reply",
        "set a mailbox's automatic reply",
        G::Mailboxes,
        Write,
        Policy,
        System::Mail,
        Reversible,
        &[USER, OpField::required("message", "the reply")],
        Some(&[]),
    ),
    op(
        "mobile_device.remove",
        "remove a user's mobile devices from their mailbox",
        G::Devices,
        Write,
        Policy,
        System::Mail,
        Irreversible,
        &[USER],
        Some(&[]),
    ),
    op(
        "device.list",
        "list a user's managed devices",
        G::Devices,
        Read,
        Policy,
        System::Intune,
        NotNeeded,
        &[USER],
        Some(&[OpField::required("devices", "the devices").of(FieldType::List)]),
    ),
    op(
        "device.wipe",
        "wipe a managed device",
        G::Devices,
        Write,
        Always,
        System::Intune,
        Irreversible,
        &[OpField::required("device", "the device id")],
        Some(&[]),
    ),
    op(
        "device.retire",
        "retire a managed device (remove company data)",
        G::Devices,
        Write,
        Always,
        System::Intune,
        Irreversible,
        &[OpField::required("device", "the device id")],
        Some(&[]),
    ),
    op(
        "device.wipe_all",
        "wipe every Intune-managed device of a user (factory reset)",
        G::Devices,
        Write,
        Always,
        System::Intune,
        Irreversible,
        &[USER],
        Some(&[OpField::required("devices", "the devices wiped").of(FieldType::List)]),
    ),
    op(
        "device.retire_all",
        "retire every Intune-managed device of a user (remove company data and management)",
        G::Devices,
        Write,
        Always,
        System::Intune,
        Irreversible,
        &[USER],
        Some(&[OpField::required("devices", "the devices retired").of(FieldType::List)]),
    ),
    op(
        "device.delete",
        "delete a device object",
        G::Devices,
        Write,
        Blocked,
        System::Intune,
        Irreversible,
        &[OpField::required("device", "the device id")],
        Some(&[]),
    ),
    op(
        "conditional_access.exclude_user",
        "exclude a user from a Conditional Access policy (weakens what the policy enforces)",
        G::ConditionalAccess,
        Write,
        // An exclusion switches the policy off for that user: a destructive Conditional Access
        // change, approved every time whatever the company's policy says.
        Always,
        System::EntraId,
        Reversible,
        &[USER, OpField::required("policy", "the policy id")],
        Some(&[]),
    ),
    op(
        "conditional_access.delete_policy",
        "delete a Conditional Access policy",
        G::ConditionalAccess,
        Write,
        Always,
        System::EntraId,
        Irreversible,
        &[OpField::required("policy", "the policy id")],
        Some(&[]),
    ),
    op(
        "app.add_secret",
        "add a client secret to an app registration",
        G::AppRegistrations,
        Write,
        Policy,
        System::EntraId,
        Reversible,
        &[OpField::required("app", "the app id")],
        Some(&[OpField::required(
            "secret_ref",
            "a reference to the secret in the secret store",
        )]),
    ),
    op(
        "domain.delete",
        "delete a domain",
        G::Users,
        Write,
        Blocked,
        System::EntraId,
        Irreversible,
        &[OpField::required("domain", "the domain")],
        Some(&[]),
    ),
    op(
        "ad.move_user",
        "move an AD user to another OU",
        G::OnPremAd,
        Write,
        Policy,
        System::ActiveDirectory,
        Reversible,
        &[USER, OpField::required("ou", "the target OU")],
        Some(&[]),
    ),
    op(
        "exchange_server.enable_remote_mailbox",
        "mail-enable an AD user with a mailbox in Exchange Online (Enable-RemoteMailbox)",
        G::OnPremExchange,
        Write,
        Policy,
        System::ExchangeServer,
        Reversible,
        &[
            USER,
            OpField::required("remote_routing_address", "user@tenant.mail.onmicrosoft.com"),
        ],
        Some(&[]),
    ),
    op(
        "directory_sync.start_delta",
        "start an Entra Connect delta sync",
        G::DirectorySync,
        Write,
        Policy,
        System::EntraConnect,
        NotNeeded,
        &[],
        Some(&[]),
    ),
    op(
        "directory_sync.wait_for_user",
        "wait until a user has synced to Entra ID",
        G::DirectorySync,
        Read,
        Policy,
        System::EntraId,
        NotNeeded,
        &[USER],
        Some(&[OpField::required("id", "the user's Entra object id")]),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> &'static OpSpec {
        CATALOG
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no op `{name}`"))
    }

    #[test]
    fn changes_that_weaken_security_or_destroy_always_need_approval() {
        for name in [
            "conditional_access.exclude_user",
            "conditional_access.delete_policy",
            "user.delete",
            "role.assign",
            "device.wipe",
            "device.retire",
            "device.wipe_all",
            "device.retire_all",
        ] {
            let s = spec(name);
            assert_eq!(s.approval, Always, "{name}");
            assert_eq!(s.access, Write, "{name}");
        }
        for name in ["device.delete", "domain.delete"] {
            assert_eq!(spec(name).approval, Blocked, "{name}");
        }
    }

    #[test]
    fn user_delete_says_when_it_cannot_be_undone() {
        // user.delete acts on the Directory, which is Active Directory for on-premises companies.
        let s = spec("user.delete");
        assert_eq!(s.system, System::Directory);
        assert!(
            s.summary.contains("30 days") && s.summary.contains("AD Recycle Bin"),
            "{}",
            s.summary
        );
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = CATALOG.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
