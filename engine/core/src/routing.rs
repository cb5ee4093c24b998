//! Routing: where each abstract op of a workflow runs for one company.
//!
//! A workflow says `user.create`; a company says where its users and mailboxes live (identity
//! provider `entra_id | on_prem_ad | hybrid | hybrid_no_sync`, mailbox provider
//! `exchange_online | exchange_server | exchange_hybrid`) and which machines the RMM reaches (AD
//! runner, Entra Connect server, Exchange server, Exchange runner). [`route`] turns the pair into
//! the concrete actions that carry the op out, each with the system it goes through — Microsoft
//! Graph, Exchange Online, or the RMM on a host, either **directly** on the target or on a
//! **runner** that reaches the target by PowerShell remoting.
//!
//! The rules, from the product seed and `domain.md` §4.2–4.4 and §9:
//! - AD changes run on the AD runner (the DC itself, or a runner with RSAT's AD module: the module
//!   talks to AD Web Services, so there is no remoting hop).
//! - The Entra Connect delta sync runs on the Entra Connect server: directly when it is the AD
//!   runner, otherwise from the AD runner through `Invoke-Command` (the server has no RMM agent).
//! - On-prem Exchange cmdlets run on the Exchange server: directly, or from the Exchange runner
//!   when one is set and is another machine.
//! - Exchange Online and Exchange Hybrid standard mailbox ops go to the cloud.
//! - `hybrid`: an identity change is made in AD, then a delta sync, then a wait until Entra ID
//!   shows it. Attributes of synced users are never changed in the cloud (the next sync would
//!   undo it; Graph refuses most of them anyway). Cloud-only attributes (usage location,
//!   licences, sessions, MFA methods, roles) stay cloud ops.
//! - `hybrid_no_sync`: the change is written to both directories with the same values.
//!
//! This is pure: no I/O. Conditions that only the directory can answer (is this group synced from
//! AD? is it a distribution list?) are part of the route as [`Condition`]s that the executor
//! checks when it runs, and that plans show to approvers.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value, json};
use steward_schemas::{
    Company, IdentityProvider as Idp, MailboxProvider as Mbx, OpSpec, System as OpSystem,
    WorkflowDef,
};

use crate::expr::{Path, Root, Scope, walk};
use crate::history::{SECRET_INPUT, is_secret_key, redact};
use crate::inputs::{InputProblem, prepare_inputs};
use crate::plan::{Catalog, GATE_OP, Plan};

/// What an action goes through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "system", rename_all = "snake_case")]
pub enum Target {
    /// Microsoft Graph (Entra ID, Intune), in the company's tenant.
    Graph,
    /// The Exchange Online admin API, in the company's tenant.
    ExchangeOnline,
    /// A PowerShell script run by the RMM.
    Rmm {
        /// The machine the script acts on (the AD runner, the Entra Connect server, the
        /// Exchange server), as named in the RMM or reachable from the runner.
        host: String,
        /// How the RMM reaches it.
        via: Via,
    },
    /// Steward itself (approval gates, built-in test ops).
    Steward,
}

impl Target {
    /// The system's name as settings and plans write it.
    pub fn system(&self) -> &'static str {
        match self {
            Self::Graph => "graph",
            Self::ExchangeOnline => "exchange_online",
            Self::Rmm { .. } => "rmm",
            Self::Steward => "steward",
        }
    }

    /// The RMM device the job is sent to (the target itself, or its runner).
    pub fn rmm_device(&self) -> Option<&str> {
        match self {
            Self::Rmm {
                via: Via::Runner { runner },
                ..
            } => Some(runner),
            Self::Rmm { host, .. } => Some(host),
            Self::Graph | Self::ExchangeOnline | Self::Steward => None,
        }
    }
}

/// How the RMM reaches an on-prem target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Via {
    /// The RMM agent is on the target: the script runs there.
    Direct,
    /// The script runs on `runner` (which has the RMM agent) and reaches the target with
    /// `Invoke-Command -ComputerName`.
    Runner {
        /// The runner's name in the RMM.
        runner: String,
    },
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct => f.write_str("direct"),
            Self::Runner { runner } => write!(f, "from runner {runner} by PowerShell remoting"),
        }
    }
}

/// A fact about the directory that decides, when the step runs, whether an action applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "if", rename_all = "snake_case")]
pub enum Condition {
    /// The group is synchronised from Active Directory (`onPremisesSyncEnabled`): change it in AD.
    GroupSyncedFromAd,
    /// The group exists in Active Directory (no sync: each directory has its own groups).
    GroupInAd,
    /// The group lives in the cloud and is mail-enabled (a distribution list or a mail-enabled
    /// security group): Graph cannot change its members, Exchange Online can.
    GroupCloudMailEnabled,
    /// The group lives in the cloud and is a security or Microsoft 365 group: Graph.
    GroupCloudNotMailEnabled,
    /// An input has a given value (`rights: send_as`).
    Input {
        /// The input (a `with:` key of the step).
        name: &'static str,
        /// The value.
        equals: &'static str,
    },
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GroupSyncedFromAd => f.write_str("if the group is synchronised from AD"),
            Self::GroupInAd => f.write_str("if the group exists in AD"),
            Self::GroupCloudMailEnabled => f.write_str(
                "if the group is a cloud distribution list or mail-enabled security group",
            ),
            Self::GroupCloudNotMailEnabled => {
                f.write_str("if the group is a cloud security or Microsoft 365 group")
            }
            Self::Input { name, equals } => write!(f, "if {name} is {equals}"),
        }
    }
}

/// One concrete action of a routed op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// The concrete action (`ad.new_user`, `graph.create_user`, `adsync.start_delta`).
    pub action: &'static str,
    /// What it goes through.
    pub target: Target,
    /// When it applies (always, when `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Fixed arguments routing adds to the step's own (`{"until": "present"}`).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub args: Map<String, Value>,
    /// Why it runs there, for people.
    pub why: &'static str,
}

/// An abstract op routed for one company.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The abstract op.
    pub op: String,
    /// Its actions, in order. Empty when there is nothing to do for this company (a sync op
    /// where nothing is synchronised); `note` then says why.
    pub actions: Vec<Action>,
    /// Something people should know about this route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why an op cannot be routed for a company.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Routing does not know the op.
    #[error("op `{op}` has no route to a system; fix: use an op listed by `steward ops`")]
    UnknownOp {
        /// The op.
        op: String,
    },
    /// A host the route needs is not in the company's settings.
    #[error(
        "company `{company}`: op `{op}` runs on the {role}, but `{field}` is not set; fix: {fix}"
    )]
    MissingHost {
        /// The company.
        company: String,
        /// The op.
        op: String,
        /// The machine's role.
        role: &'static str,
        /// The company settings field.
        field: &'static str,
        /// How to fix it.
        fix: &'static str,
    },
    /// The company's identity and mailbox providers, together, cannot give the op what it
    /// needs (a cloud user where nothing synchronises AD, an AD account for a cloud-only user).
    /// Planning refuses a run that would reach such a step, before anything changes.
    #[error("company `{company}`: op `{op}` cannot run with {reason}; fix: {fix}")]
    Combination {
        /// The company.
        company: String,
        /// The op.
        op: String,
        /// Why, starting with the providers (`identity entra_id, mailbox exchange_hybrid: …`).
        reason: String,
        /// How to fix it.
        fix: String,
    },
    /// The op makes no sense for the company's providers.
    #[error("company `{company}`: op `{op}` cannot run: {reason}; fix: {fix}")]
    NotAvailable {
        /// The company.
        company: String,
        /// The op.
        op: String,
        /// Why.
        reason: String,
        /// How to fix it.
        fix: String,
    },
}

/// The on-prem roles a script can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnPrem {
    /// Active Directory, through the AD runner.
    ActiveDirectory,
    /// The Entra Connect server.
    EntraConnect,
    /// The Exchange server.
    ExchangeServer,
}

/// Whether two RMM device names are the same machine: case-insensitive, and a short name
/// matches its FQDN (`DC01` and `dc01.contoso.local`).
pub fn same_host(a: &str, b: &str) -> bool {
    let short = |s: &str| s.split('.').next().unwrap_or(s).trim().to_ascii_lowercase();
    a.trim().eq_ignore_ascii_case(b.trim()) || short(a) == short(b)
}

/// Where the RMM runs a script that targets `role` for `company`.
pub fn placement(company: &Company, op: &str, role: OnPrem) -> Result<Target, Error> {
    let missing = |role, field, fix| Error::MissingHost {
        company: company.id.to_string(),
        op: op.to_owned(),
        role,
        field,
        fix,
    };
    match role {
        OnPrem::ActiveDirectory => {
            let host = company.ad_runner.clone().ok_or_else(|| {
                missing(
                    "AD runner",
                    "ad_runner",
                    "name the domain controller, or a runner with RSAT AD tools, as the RMM shows it",
                )
            })?;
            Ok(Target::Rmm {
                host,
                via: Via::Direct,
            })
        }
        OnPrem::EntraConnect => {
            let host = company.entra_connect_server.clone().ok_or_else(|| {
                missing(
                    "Entra Connect server",
                    "entra_connect_server",
                    "name the Entra Connect server as the RMM shows it (or reachable from the AD runner)",
                )
            })?;
            let via = match &company.ad_runner {
                Some(runner) if !same_host(runner, &host) => Via::Runner {
                    runner: runner.clone(),
                },
                _ => Via::Direct,
            };
            Ok(Target::Rmm { host, via })
        }
        OnPrem::ExchangeServer => {
            let host = company.exchange_server.clone().ok_or_else(|| {
                missing(
                    "Exchange server",
                    "exchange_server",
                    "name the Exchange server (and set exchange_runner if it has no RMM agent)",
                )
            })?;
            let via = match &company.exchange_runner {
                Some(runner) if !same_host(runner, &host) => Via::Runner {
                    runner: runner.clone(),
                },
                _ => Via::Direct,
            };
            Ok(Target::Rmm { host, via })
        }
    }
}

/// Every abstract op [`route`] knows. The catalogue's identity and mailbox ops are all here
/// (a test in `steward-workers` checks it); `mailbox.revoke_access` is routed ahead of its
/// catalogue entry.
pub const ROUTED_OPS: &[&str] = &[
    "user.create",
    "user.get",
    "user.update",
    "user.disable",
    "user.enable",
    "user.set_manager",
    "user.delete",
    "user.reset_password",
    "user.unlock",
    "user.revoke_sessions",
    "mfa.remove_methods",
    "license.assign",
    "license.remove",
    "group.add_member",
    "group.remove_member",
    "group.list_memberships",
    "group.copy_memberships",
    "role.assign",
    "role.remove",
    "mailbox.create",
    "mailbox.convert_to_shared",
    "mailbox.set_forwarding",
    "mailbox.grant_access",
    "mailbox.revoke_access",
    "mailbox.hide_from_gal",
    "mailbox.set_auto_reply",
    "mobile_device.remove",
    "device.list",
    "device.wipe",
    "device.retire",
    "device.wipe_all",
    "device.retire_all",
    "device.delete",
    "conditional_access.exclude_user",
    "conditional_access.delete_policy",
    "app.add_secret",
    "domain.delete",
    "ad.move_user",
    "exchange_server.enable_remote_mailbox",
    "directory_sync.start_delta",
    "directory_sync.wait_for_user",
];

/// What the wait after a hybrid sync waits for.
#[derive(Clone, Copy)]
enum Until {
    Present,
    Matches,
    Absent,
}

impl Until {
    fn name(self) -> &'static str {
        match self {
            Self::Present => "present",
            Self::Matches => "matches",
            Self::Absent => "absent",
        }
    }
}

struct Router<'a> {
    c: &'a Company,
    op: &'a str,
}

fn act(action: &'static str, target: Target, why: &'static str) -> Action {
    Action {
        action,
        target,
        when: None,
        args: Map::new(),
        why,
    }
}

impl Action {
    fn when(mut self, c: Condition) -> Self {
        self.when = Some(c);
        self
    }

    fn arg(mut self, k: &str, v: Value) -> Self {
        self.args.insert(k.to_owned(), v);
        self
    }
}

type Actions = Result<Vec<Action>, Error>;

impl Router<'_> {
    fn unavailable(&self, reason: impl Into<String>, fix: impl Into<String>) -> Error {
        Error::NotAvailable {
            company: self.c.id.to_string(),
            op: self.op.to_owned(),
            reason: reason.into(),
            fix: fix.into(),
        }
    }

    /// Whether the company has a Microsoft tenant Steward may act in.
    fn has_cloud(&self) -> bool {
        self.c.identity_provider != Idp::OnPremAd || self.c.mailbox_provider != Mbx::ExchangeServer
    }

    fn combination(&self, reason: impl Into<String>, fix: impl Into<String>) -> Error {
        Error::Combination {
            company: self.c.id.to_string(),
            op: self.op.to_owned(),
            reason: format!(
                "identity {}, mailbox {}: {}",
                self.c.identity_provider.name(),
                self.c.mailbox_provider.name(),
                reason.into()
            ),
            fix: fix.into(),
        }
    }

    /// A cloud action needs the user in Entra ID. With identity `on_prem_ad` the users are in
    /// AD only and nothing synchronises them, so a tenant (for Exchange Online or Exchange
    /// hybrid mailboxes) has no user to act on: that combination is refused, naming the
    /// providers that give the tenant its users.
    fn cloud_user(&self, system: &str) -> Result<(), Error> {
        if self.c.identity_provider == Idp::OnPremAd {
            return Err(self.combination(
                format!(
                    "the users exist only in Active Directory and nothing synchronises them to Entra ID, so {system} has no user to act on (a {} mailbox belongs to a cloud user)",
                    self.c.mailbox_provider.name()
                ),
                "set identity_provider to hybrid (Entra Connect synchronises AD to Entra ID; also set entra_connect_server) or to hybrid_no_sync (Steward creates and changes each user in AD and in Entra ID alike)",
            ));
        }
        Ok(())
    }

    fn graph(&self, action: &'static str, why: &'static str) -> Result<Action, Error> {
        if !self.has_cloud() {
            return Err(self.unavailable(
                "it acts in Entra ID, and the company is on-premises only (identity on_prem_ad, mailbox exchange_server)",
                "leave the step out for this company (e.g. `when: company.identity_provider != 'on_prem_ad'`), or change its providers",
            ));
        }
        self.cloud_user("Entra ID")?;
        Ok(act(action, Target::Graph, why))
    }

    fn exo(&self, action: &'static str, why: &'static str) -> Result<Action, Error> {
        self.cloud_user("Exchange Online")?;
        Ok(act(action, Target::ExchangeOnline, why))
    }

    /// Exchange hybrid manages the mailboxes of users that have an AD account (the on-prem
    /// object is the mailbox's master); a cloud-only user has none.
    fn hybrid_mail(&self) -> Result<(), Error> {
        if self.c.identity_provider == Idp::EntraId {
            return Err(self.combination(
                "Exchange hybrid manages the mailboxes of users who have an Active Directory account (Enable-RemoteMailbox, Set-RemoteMailbox act on it), and a cloud-only user (identity entra_id) has none",
                "set mailbox_provider to exchange_online (a cloud user's licence gives it its mailbox), or identity_provider to hybrid (the user is made in AD and synchronised)",
            ));
        }
        Ok(())
    }

    /// An on-prem Exchange cmdlet that acts on the user's existing AD account
    /// (`Enable-RemoteMailbox`, `Set-RemoteMailbox`, `Enable-Mailbox`). A cloud-only user
    /// (identity `entra_id`) has none; on Exchange Server `New-Mailbox` makes the account with
    /// the mailbox instead, and Exchange hybrid (which manages synchronised users) is refused.
    fn exch_user(&self, action: &'static str, why: &'static str) -> Result<Action, Error> {
        self.hybrid_mail()?;
        self.exch(action, why)
    }

    fn ad(&self, action: &'static str, why: &'static str) -> Result<Action, Error> {
        if self.c.identity_provider == Idp::EntraId {
            return Err(self.unavailable(
                "it acts in Active Directory, and the company's identity provider is entra_id",
                "leave the step out for cloud-only companies, or set the identity provider and ad_runner",
            ));
        }
        Ok(act(
            action,
            placement(self.c, self.op, OnPrem::ActiveDirectory)?,
            why,
        ))
    }

    fn exch(&self, action: &'static str, why: &'static str) -> Result<Action, Error> {
        Ok(act(
            action,
            placement(self.c, self.op, OnPrem::ExchangeServer)?,
            why,
        ))
    }

    fn sync(&self) -> Result<Action, Error> {
        Ok(act(
            "adsync.start_delta",
            placement(self.c, self.op, OnPrem::EntraConnect)?,
            "Entra Connect copies the AD change to Entra ID",
        ))
    }

    fn wait(&self, until: Until) -> Action {
        act(
            "graph.wait_for_user",
            Target::Graph,
            match until {
                Until::Present => "later steps need the user in Entra ID",
                Until::Matches => "later steps need Entra ID to show the change",
                Until::Absent => "later steps need the user gone from Entra ID",
            },
        )
        .arg("until", Value::String(until.name().to_owned()))
    }

    /// A change to a user's identity: where it is mastered, then synced.
    fn identity_write(&self, ad: &'static str, graph: &'static str, until: Until) -> Actions {
        Ok(match self.c.identity_provider {
            Idp::EntraId => vec![self.graph(graph, "the user lives in Entra ID")?],
            Idp::OnPremAd => vec![self.ad(ad, "the user lives in Active Directory")?],
            Idp::Hybrid => vec![
                self.ad(
                    ad,
                    "the user is mastered in AD and synchronised to Entra ID",
                )?,
                self.sync()?,
                self.wait(until),
            ],
            Idp::HybridNoSync => vec![
                self.ad(ad, "no sync: AD gets the change")?,
                self.graph(graph, "no sync: Entra ID gets the same change")?,
            ],
        })
    }

    /// A read of a user: where it lives (both directories when there are two).
    fn identity_read(&self, ad: &'static str, graph: &'static str) -> Actions {
        Ok(match self.c.identity_provider {
            Idp::EntraId => vec![self.graph(graph, "the user lives in Entra ID")?],
            Idp::OnPremAd => vec![self.ad(ad, "the user lives in Active Directory")?],
            Idp::Hybrid | Idp::HybridNoSync => vec![
                self.ad(ad, "AD is authoritative for the user's attributes")?,
                self.graph(graph, "Entra ID has the cloud side (object id, licences)")?,
            ],
        })
    }

    /// An op only Entra ID (or Intune) can do.
    fn cloud_only(&self, action: &'static str, why: &'static str) -> Actions {
        Ok(vec![self.graph(action, why)?])
    }

    /// Group membership: where the group lives decides, and only the directory can tell.
    fn group_member(&self, ad: &'static str, graph: &'static str, exo: &'static str) -> Actions {
        let cloud = |r: &Self| -> Actions {
            Ok(vec![
                r.exo(exo, "Graph cannot change a mail-enabled group's members")?
                    .when(Condition::GroupCloudMailEnabled),
                r.graph(graph, "a cloud security or Microsoft 365 group")?
                    .when(Condition::GroupCloudNotMailEnabled),
            ])
        };
        Ok(match self.c.identity_provider {
            Idp::EntraId => cloud(self)?,
            Idp::OnPremAd => vec![self.ad(ad, "groups live in Active Directory")?],
            Idp::Hybrid => {
                let mut v = vec![
                    self.ad(ad, "a synced group is mastered in AD")?
                        .when(Condition::GroupSyncedFromAd),
                    self.sync()?.when(Condition::GroupSyncedFromAd),
                ];
                v.extend(cloud(self)?);
                v
            }
            Idp::HybridNoSync => {
                let mut v = vec![
                    self.ad(ad, "no sync: AD has its own groups")?
                        .when(Condition::GroupInAd),
                ];
                v.extend(cloud(self)?);
                v
            }
        })
    }

    fn mailbox(&self, exo: &'static str, exch: &'static str) -> Actions {
        Ok(match self.c.mailbox_provider {
            Mbx::ExchangeOnline => vec![self.exo(exo, "the mailbox is in Exchange Online")?],
            Mbx::ExchangeHybrid => {
                self.hybrid_mail()?;
                vec![self.exo(
                    exo,
                    "Exchange hybrid: standard mailbox ops go to the cloud mailbox",
                )?]
            }
            Mbx::ExchangeServer => vec![self.exch(exch, "the mailbox is on the Exchange server")?],
        })
    }

    /// Whether the company's users are synchronised from AD (their attributes are mastered
    /// on-premises).
    fn synced(&self) -> bool {
        self.c.identity_provider == Idp::Hybrid
    }

    fn route(&self) -> Result<Route, Error> {
        let mut note = None;
        let actions = match self.op {
            "user.create" => self.identity_write("ad.new_user", "graph.create_user", Until::Present)?,
            "user.update" => {
                self.identity_write("ad.set_user", "graph.update_user", Until::Matches)?
            }
            "user.disable" | "user.enable" => self.identity_write(
                "ad.set_enabled",
                "graph.set_account_enabled",
                Until::Matches,
            )?,
            "user.set_manager" => {
                self.identity_write("ad.set_manager", "graph.set_manager", Until::Matches)?
            }
            "user.delete" => {
                self.identity_write("ad.remove_user", "graph.delete_user", Until::Absent)?
            }
            "user.get" => self.identity_read("ad.get_user", "graph.get_user")?,
            "group.list_memberships" => self.identity_read("ad.list_groups", "graph.list_groups")?,
            "user.reset_password" => match self.c.identity_provider {
                Idp::EntraId => vec![self.graph("graph.reset_password", "the user lives in Entra ID")?],
                Idp::OnPremAd => vec![self.ad("ad.reset_password", "the user lives in Active Directory")?],
                Idp::Hybrid => {
                    note = Some(
                        "the new password reaches Entra ID by password hash sync (about every 2 minutes) or is checked against AD by pass-through authentication; a delta sync does not carry it".to_owned(),
                    );
                    vec![self.ad(
                        "ad.reset_password",
                        "a synced user's password is set in AD (never in the cloud)",
                    )?]
                }
                Idp::HybridNoSync => vec![
                    self.ad("ad.reset_password", "no sync: AD gets the new password")?,
                    self.graph("graph.reset_password", "no sync: Entra ID gets the same password")?,
                ],
            },
            "user.unlock" => match self.c.identity_provider {
                Idp::EntraId => {
                    return Err(self.unavailable(
                        "Entra ID has no lock to clear: smart lockout releases an account by itself",
                        "leave the step out for cloud-only companies",
                    ));
                }
                Idp::OnPremAd | Idp::Hybrid | Idp::HybridNoSync => {
                    vec![self.ad("ad.unlock", "account lockout is an AD state")?]
                }
            },
            "group.add_member" => self.group_member(
                "ad.add_group_member",
                "graph.add_group_member",
                "exchange_online.add_distribution_group_member",
            )?,
            "group.remove_member" => self.group_member(
                "ad.remove_group_member",
                "graph.remove_group_member",
                "exchange_online.remove_distribution_group_member",
            )?,
            "group.copy_memberships" => match self.c.identity_provider {
                Idp::EntraId => vec![self.graph(
                    "graph.copy_group_memberships",
                    "groups live in Entra ID",
                )?],
                Idp::OnPremAd => vec![self.ad("ad.copy_groups", "groups live in Active Directory")?],
                Idp::Hybrid => vec![
                    self.ad("ad.copy_groups", "the template user's AD groups")?,
                    self.sync()?,
                    self.wait(Until::Matches),
                    self.graph(
                        "graph.copy_group_memberships",
                        "the template user's cloud-only groups (synced ones came through AD)",
                    )?
                    .arg("cloud_only", Value::Bool(true)),
                ],
                Idp::HybridNoSync => vec![
                    self.ad("ad.copy_groups", "no sync: the template user's AD groups")?,
                    self.graph(
                        "graph.copy_group_memberships",
                        "no sync: the template user's Entra ID groups",
                    )?,
                ],
            },
            "user.revoke_sessions" => {
                self.cloud_only("graph.revoke_sign_in_sessions", "sign-in sessions are Entra ID's")?
            }
            "mfa.remove_methods" => self.cloud_only(
                "graph.remove_authentication_methods",
                "MFA methods live in Entra ID",
            )?,
            "license.assign" => {
                self.cloud_only("graph.assign_license", "licences are assigned in Entra ID")?
            }
            "license.remove" => {
                self.cloud_only("graph.remove_license", "licences are assigned in Entra ID")?
            }
            "role.assign" => {
                self.cloud_only("graph.assign_directory_role", "directory roles are Entra ID's")?
            }
            "role.remove" => {
                self.cloud_only("graph.remove_directory_role", "directory roles are Entra ID's")?
            }
            "device.list" => self.cloud_only("graph.list_managed_devices", "devices are in Intune")?,
            "device.wipe" => self.cloud_only("graph.wipe_managed_device", "devices are in Intune")?,
            "device.retire" => {
                self.cloud_only("graph.retire_managed_device", "devices are in Intune")?
            }
            "device.wipe_all" => {
                self.cloud_only("graph.wipe_managed_devices", "devices are in Intune")?
            }
            "device.retire_all" => {
                self.cloud_only("graph.retire_managed_devices", "devices are in Intune")?
            }
            "device.delete" => self.cloud_only("graph.delete_device", "device objects are in Entra ID")?,
            "conditional_access.exclude_user" => self.cloud_only(
                "graph.exclude_user_from_conditional_access",
                "Conditional Access is Entra ID's",
            )?,
            "conditional_access.delete_policy" => self.cloud_only(
                "graph.delete_conditional_access_policy",
                "Conditional Access is Entra ID's",
            )?,
            "app.add_secret" => {
                self.cloud_only("graph.add_application_secret", "app registrations are Entra ID's")?
            }
            "domain.delete" => self.cloud_only("graph.delete_domain", "domains are Entra ID's")?,
            "mailbox.create" => match self.c.mailbox_provider {
                Mbx::ExchangeOnline => {
                    note = Some("Exchange Online creates the mailbox when the user gets a licence with Exchange; this step waits for it".to_owned());
                    vec![self.exo(
                        "exchange_online.wait_for_mailbox",
                        "the licence creates the mailbox",
                    )?]
                }
                Mbx::ExchangeServer if self.c.identity_provider == Idp::EntraId => {
                    note = Some("the mailbox's AD account (in the Exchange organisation's forest) is another account than the Entra ID user, with its own password, handed over through a one-time link; assign a licence without Exchange Online, or Exchange Online makes a second mailbox".to_owned());
                    vec![self.exch(
                        "exchange_server.new_mailbox",
                        "Exchange Server needs an AD account for every mailbox and a cloud-only user has none: New-Mailbox creates the account with the mailbox",
                    )?]
                }
                Mbx::ExchangeServer => vec![self.exch(
                    "exchange_server.enable_mailbox",
                    "the mailbox is created on the Exchange server for the AD user",
                )?],
                Mbx::ExchangeHybrid => {
                    let mut v = vec![self.exch_user(
                        "exchange_server.enable_remote_mailbox",
                        "hybrid: the on-prem Exchange mail-enables the user; Exchange Online makes the mailbox",
                    )?];
                    if self.synced() {
                        v.push(self.sync()?);
                    }
                    v.push(self.exo(
                        "exchange_online.wait_for_mailbox",
                        "the cloud mailbox appears after the sync and a licence",
                    )?);
                    v
                }
            },
            "exchange_server.enable_remote_mailbox" => match self.c.mailbox_provider {
                Mbx::ExchangeHybrid => {
                    let mut v = vec![self.exch_user(
                        "exchange_server.enable_remote_mailbox",
                        "an on-prem Exchange cmdlet",
                    )?];
                    if self.synced() {
                        v.push(self.sync()?);
                    }
                    v
                }
                Mbx::ExchangeOnline | Mbx::ExchangeServer => {
                    return Err(self.unavailable(
                        format!(
                            "remote mailboxes exist only in Exchange hybrid, and the mailbox provider is {}",
                            self.c.mailbox_provider.name()
                        ),
                        "use mailbox.create, which picks the right action for each mailbox provider",
                    ));
                }
            },
            "mailbox.convert_to_shared" => match self.c.mailbox_provider {
                Mbx::ExchangeOnline => vec![self
                    .exo("exchange_online.set_mailbox_type", "the mailbox is in Exchange Online")?
                    .arg("type", json!("Shared"))],
                Mbx::ExchangeServer => vec![self
                    .exch("exchange_server.set_mailbox_type", "the mailbox is on the Exchange server")?
                    .arg("type", json!("Shared"))],
                Mbx::ExchangeHybrid => {
                    note = Some("converting only in the cloud is undone by the on-prem attributes (msExchRemoteRecipientType) at the next sync, so both sides change".to_owned());
                    let mut v = vec![self
                        .exch_user(
                            "exchange_server.set_remote_mailbox",
                            "the on-prem remote mailbox object must say Shared too",
                        )?
                        .arg("type", json!("Shared"))];
                    if self.synced() {
                        v.push(self.sync()?);
                    }
                    v.push(
                        self.exo("exchange_online.set_mailbox_type", "the mailbox itself is in the cloud")?
                            .arg("type", json!("Shared")),
                    );
                    v
                }
            },
            "mailbox.set_forwarding" => self.mailbox(
                "exchange_online.set_forwarding",
                "exchange_server.set_forwarding",
            )?,
            "mailbox.set_auto_reply" => self.mailbox(
                "exchange_online.set_auto_reply",
                "exchange_server.set_auto_reply",
            )?,
            "mobile_device.remove" => self.mailbox(
                "exchange_online.remove_mobile_devices",
                "exchange_server.remove_mobile_devices",
            )?,
            "mailbox.grant_access" | "mailbox.revoke_access" => {
                let grant = self.op == "mailbox.grant_access";
                let pick = |a: &'static str, b: &'static str| if grant { a } else { b };
                let rights = |r: &'static str| Condition::Input {
                    name: "rights",
                    equals: r,
                };
                let mut v = Vec::new();
                for (right, exo, exch) in [
                    (
                        "full_access",
                        pick(
                            "exchange_online.add_mailbox_permission",
                            "exchange_online.remove_mailbox_permission",
                        ),
                        pick(
                            "exchange_server.add_mailbox_permission",
                            "exchange_server.remove_mailbox_permission",
                        ),
                    ),
                    (
                        "send_as",
                        pick(
                            "exchange_online.add_recipient_permission",
                            "exchange_online.remove_recipient_permission",
                        ),
                        pick("exchange_server.add_send_as", "exchange_server.remove_send_as"),
                    ),
                    (
                        "send_on_behalf",
                        "exchange_online.set_send_on_behalf",
                        "exchange_server.set_send_on_behalf",
                    ),
                ] {
                    for a in self.mailbox(exo, exch)? {
                        let a = if right == "send_on_behalf" {
                            a.arg("change", json!(if grant { "add" } else { "remove" }))
                        } else {
                            a
                        };
                        v.push(a.when(rights(right)));
                    }
                }
                v
            }
            "mailbox.hide_from_gal" => match (self.c.mailbox_provider, self.synced()) {
                (Mbx::ExchangeServer, _) => vec![self
                    .exch("exchange_server.set_hidden_from_gal", "the mailbox is on the Exchange server")?
                    .arg("hidden", Value::Bool(true))],
                (Mbx::ExchangeHybrid, true) => vec![
                    self.exch(
                        "exchange_server.set_remote_mailbox",
                        "a synced user's address-list visibility is mastered on-prem (Exchange Online refuses to change it)",
                    )?
                    .arg("hidden_from_address_lists_enabled", Value::Bool(true)),
                    self.sync()?,
                ],
                (Mbx::ExchangeOnline, true) => {
                    note = Some("with no Exchange server left, the AD attribute msExchHideFromAddressLists is the master for synced users; it needs the Exchange schema extension in AD".to_owned());
                    vec![
                        self.ad(
                            "ad.set_user",
                            "a synced user's address-list visibility is mastered in AD",
                        )?
                        .arg("replace", json!({"msExchHideFromAddressLists": true})),
                        self.sync()?,
                    ]
                }
                (Mbx::ExchangeOnline | Mbx::ExchangeHybrid, false) => {
                    if self.c.mailbox_provider == Mbx::ExchangeHybrid {
                        self.hybrid_mail()?;
                    }
                    vec![self
                    .exo("exchange_online.set_hidden_from_gal", "the mailbox is in Exchange Online")?
                    .arg("hidden", Value::Bool(true))]
                }
            },
            "ad.move_user" => {
                let mut v = vec![self.ad("ad.move_object", "an AD operation")?];
                if self.synced() {
                    note = Some("moving a user out of the OUs Entra Connect synchronises deletes its cloud user (soft-deleted for 30 days)".to_owned());
                    v.push(self.sync()?);
                }
                v
            }
            "directory_sync.start_delta" => {
                if self.synced() {
                    vec![self.sync()?]
                } else {
                    note = Some(format!(
                        "nothing to synchronise: the identity provider is {}",
                        self.c.identity_provider.name()
                    ));
                    vec![]
                }
            }
            "directory_sync.wait_for_user" => {
                if self.synced() {
                    vec![self.wait(Until::Present)]
                } else {
                    note = Some(format!(
                        "nothing to wait for: the identity provider is {}",
                        self.c.identity_provider.name()
                    ));
                    vec![]
                }
            }
            other => {
                return Err(Error::UnknownOp {
                    op: other.to_owned(),
                });
            }
        };
        Ok(Route {
            op: self.op.to_owned(),
            actions,
            note,
        })
    }
}

/// Routes the abstract op `op` for `company`: the concrete actions, in order, and where each
/// runs.
pub fn route(company: &Company, op: &str) -> Result<Route, Error> {
    Router { c: company, op }.route()
}

/// [`route`], with Steward's own ops (gates, test ops: system `steward` in the registry) routed
/// to Steward.
pub fn route_spec(company: &Company, op: &str, spec: Option<&OpSpec>) -> Result<Route, Error> {
    if op == GATE_OP || spec.is_some_and(|s| s.system == OpSystem::Steward) {
        return Ok(Route {
            op: op.to_owned(),
            actions: vec![act(
                op_static(op),
                Target::Steward,
                "Steward runs it itself",
            )],
            note: None,
        });
    }
    route(company, op)
}

/// Steward's own op names as `'static` (the action name of a built-in op is the op itself).
fn op_static(op: &str) -> &'static str {
    const BUILTIN: &[&str] = &[GATE_OP, "ledger", "poll", "flaky", "fail", "noop", "sleep"];
    BUILTIN
        .iter()
        .find(|b| **b == op)
        .copied()
        .unwrap_or("steward")
}

/// One action of a routed step, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionView {
    /// The concrete action.
    pub action: String,
    /// `graph`, `exchange_online`, `rmm` or `steward`.
    pub system: String,
    /// For the RMM: the machine the script acts on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// For the RMM: `direct`, or `from runner R by PowerShell remoting`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// When it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Arguments routing adds.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub args: Map<String, Value>,
    /// Why it runs there.
    pub why: String,
}

impl From<&Action> for ActionView {
    fn from(a: &Action) -> Self {
        let (host, via) = match &a.target {
            Target::Rmm { host, via } => (Some(host.clone()), Some(via.to_string())),
            Target::Graph | Target::ExchangeOnline | Target::Steward => (None, None),
        };
        Self {
            action: a.action.to_owned(),
            system: a.target.system().to_owned(),
            host,
            via,
            when: a.when.as_ref().map(ToString::to_string),
            args: a.args.clone(),
            why: a.why.to_owned(),
        }
    }
}

/// One step of a routed plan, for display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    /// The step's id.
    pub step: String,
    /// Its abstract op.
    pub op: String,
    /// What it does.
    pub summary: String,
    /// Its `when:` condition, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// The steps it waits for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Where it runs.
    pub actions: Vec<ActionView>,
    /// Something people should know about the route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why it could not be routed (the run would fail at this step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Its parameters, secrets hidden; references not yet known are shown as written.
    pub params: Value,
}

/// A workflow routed for one company, for `steward plan` and the approver's view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutedPlan {
    /// The workflow's name.
    pub workflow: String,
    /// Its version.
    pub version: u32,
    /// The company's id.
    pub company: String,
    /// The company's name.
    pub company_name: String,
    /// Its identity provider.
    pub identity_provider: &'static str,
    /// Its mailbox provider.
    pub mailbox_provider: &'static str,
    /// The inputs a run would have (the workflow's and the company's defaults applied), secret
    /// inputs hidden.
    pub inputs: Map<String, Value>,
    /// The steps in dependency order.
    pub steps: Vec<StepView>,
}

impl RoutedPlan {
    /// Whether every step could be routed.
    pub fn is_routable(&self) -> bool {
        self.steps.iter().all(|s| s.problem.is_none())
    }
}

/// Resolves inputs and company fields; step outputs and run fields are not known before the run.
struct PlanScope<'a> {
    inputs: &'a Map<String, Value>,
    company: Value,
}

impl Scope for PlanScope<'_> {
    fn lookup(&self, path: &Path) -> Value {
        let base = match &path.root {
            Root::Input(n) => self.inputs.get(n).cloned().unwrap_or(Value::Null),
            Root::Company(f) => self.company.get(f).cloned().unwrap_or(Value::Null),
            Root::StepOutput(_) | Root::Run(_) => Value::Null,
        };
        walk(&base, &path.segs)
    }
}

/// Routes every step of `plan` for `company` with `inputs` (checked against the workflow's
/// declarations first), for display: op, system, host, via, and parameters with secrets hidden
/// (inputs declared `secret: true` show `[secret]`, secret-looking keys `[redacted]`). A step
/// that cannot be routed carries its problem rather than failing the whole view.
pub fn render_plan(
    plan: &Plan,
    company: &Company,
    inputs: &Map<String, Value>,
    catalog: &dyn Catalog,
) -> Result<RoutedPlan, Vec<InputProblem>> {
    let company_inputs: Map<String, Value> = company
        .defaults
        .inputs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let inputs = crate::inputs::with_company_defaults(plan.def(), inputs, Some(&company_inputs));
    let inputs = prepare_inputs(plan.def(), &inputs)?;
    let scope = PlanScope {
        inputs: &inputs,
        company: serde_json::to_value(company).unwrap_or(Value::Null),
    };
    let steps = (0..plan.steps().len())
        .map(|i| describe_step(plan, i, company, &scope, catalog))
        .collect();
    let def = plan.def();
    let secrets = secret_inputs(def);
    // An input that feeds a secret-looking parameter (`admin_password: ${{ inputs.temp }}`) is
    // hidden too, as the parameter is.
    let mut feeds_secret: Vec<String> = Vec::new();
    for i in 0..plan.steps().len() {
        for (k, t) in &plan.step(i).with {
            if is_secret_key(k) {
                for r in t.refs() {
                    if let Root::Input(n) = &r.root {
                        feeds_secret.push(n.clone());
                    }
                }
            }
        }
    }
    let mut shown = inputs.clone();
    for (k, v) in &mut shown {
        if secrets.contains(&k.as_str()) || is_secret_key(k) || feeds_secret.contains(k) {
            *v = Value::String(SECRET_INPUT.to_owned());
        }
    }
    Ok(RoutedPlan {
        inputs: shown,
        workflow: def.name.clone(),
        version: def.version,
        company: company.id.to_string(),
        company_name: company.name.clone(),
        identity_provider: company.identity_provider.name(),
        mailbox_provider: company.mailbox_provider.name(),
        steps,
    })
}

/// Whether step `index`'s `when:` reads only inputs and company fields and is false for them:
/// the step is left out for this company and these inputs, whatever happens in the run.
fn left_out(plan: &Plan, index: usize, scope: &dyn Scope) -> bool {
    plan.step(index).when.as_ref().is_some_and(|w| {
        w.refs()
            .iter()
            .all(|r| matches!(r.root, Root::Input(_) | Root::Company(_)))
            && !w.eval(scope)
    })
}

/// The steps of `plan` that would reach a route `company`'s identity × mailbox combination
/// cannot carry out ([`Error::Combination`]), with that error: what planning refuses before a
/// run starts, so that no run waits for something that cannot happen. A step its `when:`
/// leaves out for this company and these inputs does not count. Inputs that do not prepare
/// are left to the run's own input checks (nothing is refused here for them).
pub fn combination_refusals(
    plan: &Plan,
    company: &Company,
    inputs: &Map<String, Value>,
    catalog: &dyn Catalog,
) -> Vec<(String, Error)> {
    let Ok(inputs) = prepare_inputs(plan.def(), inputs) else {
        return Vec::new();
    };
    let scope = PlanScope {
        inputs: &inputs,
        company: serde_json::to_value(company).unwrap_or(Value::Null),
    };
    (0..plan.steps().len())
        .filter(|i| !left_out(plan, *i, &scope))
        .filter_map(|i| {
            let s = plan.step(i);
            match route_spec(company, &s.op, catalog.op(&s.op)) {
                Err(e @ Error::Combination { .. }) => Some((s.id.to_string(), e)),
                _ => None,
            }
        })
        .collect()
}

/// One step of `plan` routed for `company`, its parameters described in `scope` (a run's scope
/// for the approver's view). Secret inputs and secret-looking keys are hidden.
pub fn describe_step(
    plan: &Plan,
    index: usize,
    company: &Company,
    scope: &dyn Scope,
    catalog: &dyn Catalog,
) -> StepView {
    let s = plan.step(index);
    let spec = catalog.op(&s.op);
    let secret_inputs = secret_inputs(plan.def());
    let mut params = Map::new();
    for (k, t) in &s.with {
        let uses_secret = t
            .refs()
            .iter()
            .any(|r| matches!(&r.root, Root::Input(n) if secret_inputs.contains(&n.as_str())));
        let v = if uses_secret || is_secret_key(k) {
            Value::String(SECRET_INPUT.to_owned())
        } else {
            t.describe(scope)
        };
        params.insert(k.clone(), v);
    }
    let mut params = Value::Object(params);
    redact(&mut params);
    let def_step = plan.def().steps.iter().find(|d| d.id == s.id.as_str());
    // A `when:` that reads only inputs and company fields is decided now: a step it leaves out
    // for this company (a licence for a company with no tenant) is not routed, and is no
    // problem. One that reads step outputs is decided when the run gets there.
    let skipped = left_out(plan, index, scope);
    let (actions, note, problem) = if skipped {
        (
            Vec::new(),
            Some("skipped for this company: its `when:` condition is false".to_owned()),
            None,
        )
    } else {
        match route_spec(company, &s.op, spec) {
            Ok(r) => (
                r.actions.iter().map(ActionView::from).collect(),
                r.note,
                None,
            ),
            Err(e) => (Vec::new(), None, Some(e.to_string())),
        }
    };
    StepView {
        step: s.id.to_string(),
        op: s.op.clone(),
        // A gate shows its message to approvers, a step its description; both filled in
        // (secrets hidden), so the options chosen are there to see.
        summary: {
            let message = plan.gate_message(index, Some(scope));
            if !message.is_empty() {
                message
            } else if s.description.is_empty() {
                spec.map_or_else(String::new, |sp| sp.summary.to_owned())
            } else {
                plan.step_description(index, Some(scope))
            }
        },
        when: def_step.and_then(|d| d.when.clone()),
        needs: s
            .needs
            .iter()
            .map(|&n| plan.step(n).id.to_string())
            .collect(),
        actions,
        note,
        problem,
        params,
    }
}

fn secret_inputs(def: &WorkflowDef) -> Vec<&str> {
    def.inputs
        .iter()
        .filter(|(_, d)| d.secret)
        .map(|(n, _)| n.as_str())
        .collect()
}

impl fmt::Display for RoutedPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Workflow {} (version {}) for {} ({}): identity provider {}, mailbox provider {}.",
            self.workflow,
            self.version,
            self.company_name,
            self.company,
            self.identity_provider,
            self.mailbox_provider
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f)?;
            write!(f, "{}. {} ({})", i + 1, s.step, s.op)?;
            if !s.summary.is_empty() {
                write!(f, ": {}", s.summary)?;
            }
            writeln!(f)?;
            if !s.needs.is_empty() {
                writeln!(f, "   after: {}", s.needs.join(", "))?;
            }
            if let Some(w) = &s.when {
                writeln!(f, "   only when: {w}")?;
            }
            if let Some(p) = &s.problem {
                writeln!(f, "   CANNOT RUN: {p}")?;
            }
            if s.actions.is_empty() && s.problem.is_none() {
                writeln!(f, "   nothing to do for this company")?;
            }
            for a in &s.actions {
                write!(f, "   - {} via {}", a.action, a.system)?;
                if let (Some(host), Some(via)) = (&a.host, &a.via) {
                    write!(f, " on {host}, {via}")?;
                }
                if let Some(w) = &a.when {
                    write!(f, ", {w}")?;
                }
                if !a.args.is_empty() {
                    let args: Vec<String> =
                        a.args.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    write!(f, " ({})", args.join(", "))?;
                }
                writeln!(f, ": {}", a.why)?;
            }
            if let Some(n) = &s.note {
                writeln!(f, "   note: {n}")?;
            }
            if let Value::Object(m) = &s.params
                && !m.is_empty()
            {
                let ps: Vec<String> = m.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                writeln!(f, "   parameters: {}", ps.join(", "))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_schemas::{OpAccess, OpField, PermissionGroup, Reversibility};

    const TENANT: &str = "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10";

    /// How the company's machines relate: the runner is the target, another machine, or unset.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Runner {
        Same,
        Other,
        Unset,
    }

    fn company(idp: Idp, mbx: Mbx, ad: Runner, exch: Runner) -> Company {
        let on_prem_ad = idp != Idp::EntraId;
        let on_prem_mail = mbx != Mbx::ExchangeOnline;
        let mut v = serde_json::json!({
            "id": "contoso", "name": "Contoso", "tenant_id": TENANT,
            "identity_provider": idp.name(), "mailbox_provider": mbx.name(),
            "rmm": {"provider": "datto", "site": "s1"},
        });
        if on_prem_ad {
            v["ad_runner"] = json!(if ad == Runner::Same {
                "AADC01"
            } else {
                "RUNNER01"
            });
        }
        if idp == Idp::Hybrid {
            v["entra_connect_server"] = json!("AADC01");
        }
        if on_prem_mail {
            v["exchange_server"] = json!("EXCH01");
            match exch {
                Runner::Same => v["exchange_runner"] = json!("exch01"),
                Runner::Other => v["exchange_runner"] = json!("RUNNER02"),
                Runner::Unset => {}
            }
        }
        let mut c: Company = serde_json::from_value(v).unwrap();
        crate::company::normalize(&mut c);
        assert!(
            crate::company::validate(&c).is_empty(),
            "{:?}",
            crate::company::validate(&c)
        );
        c
    }

    fn rmm(host: &str, runner: Option<&str>) -> Target {
        Target::Rmm {
            host: host.to_owned(),
            via: runner.map_or(Via::Direct, |r| Via::Runner {
                runner: r.to_owned(),
            }),
        }
    }

    /// `action@system[host<-runner]` for each action, conditions dropped: compact to compare.
    fn summary(r: &Route) -> Vec<String> {
        r.actions
            .iter()
            .map(|a| match &a.target {
                Target::Rmm {
                    host,
                    via: Via::Direct,
                } => format!("{}@{host}", a.action),
                Target::Rmm {
                    host,
                    via: Via::Runner { runner },
                } => format!("{}@{host}<-{runner}", a.action),
                t => format!("{}@{}", a.action, t.system()),
            })
            .collect()
    }

    /// The table: every identity × mailbox provider, with each runner equal to and different
    /// from its target (and the Exchange runner unset), for the ops whose route depends on them.
    #[test]
    fn every_provider_combination_routes_where_the_seed_says() {
        let mut combos = 0;
        let mut refused = 0;
        for idp in Idp::ALL {
            for mbx in Mbx::ALL {
                for ad in [Runner::Same, Runner::Other] {
                    for exch in [Runner::Same, Runner::Other, Runner::Unset] {
                        combos += 1;
                        let c = company(idp, mbx, ad, exch);
                        let ad_host = if ad == Runner::Same {
                            "AADC01"
                        } else {
                            "RUNNER01"
                        };
                        let sync = if ad == Runner::Same {
                            "adsync.start_delta@AADC01".to_owned()
                        } else {
                            "adsync.start_delta@AADC01<-RUNNER01".to_owned()
                        };
                        let exch_at = |a: &str| match exch {
                            Runner::Other => format!("{a}@EXCH01<-RUNNER02"),
                            Runner::Same | Runner::Unset => format!("{a}@EXCH01"),
                        };
                        let ctx =
                            format!("{idp:?}/{mbx:?}/ad runner {ad:?}/exchange runner {exch:?}");
                        let got = |op: &str| {
                            summary(&route(&c, op).unwrap_or_else(|e| panic!("{ctx}: {op}: {e}")))
                        };

                        // Identity writes.
                        let create = got("user.create");
                        let want: Vec<String> = match idp {
                            Idp::EntraId => vec!["graph.create_user@graph".into()],
                            Idp::OnPremAd => vec![format!("ad.new_user@{ad_host}")],
                            Idp::Hybrid => vec![
                                format!("ad.new_user@{ad_host}"),
                                sync.clone(),
                                "graph.wait_for_user@graph".into(),
                            ],
                            Idp::HybridNoSync => vec![
                                format!("ad.new_user@{ad_host}"),
                                "graph.create_user@graph".into(),
                            ],
                        };
                        assert_eq!(create, want, "{ctx}");
                        // AD work is never remoted: the AD runner runs it with RSAT.
                        for a in route(&c, "user.disable").unwrap().actions {
                            if let Target::Rmm { via, .. } = &a.target
                                && a.action.starts_with("ad.")
                            {
                                assert_eq!(via, &Via::Direct, "{ctx}");
                            }
                        }
                        // Synced users' attributes never change in the cloud.
                        if idp == Idp::Hybrid {
                            for op in [
                                "user.create",
                                "user.update",
                                "user.disable",
                                "user.enable",
                                "user.set_manager",
                                "user.delete",
                                "user.reset_password",
                            ] {
                                let r = route(&c, op).unwrap();
                                assert!(
                                    r.actions.iter().all(|a| !a.action.starts_with("graph.")
                                        || a.action == "graph.wait_for_user"),
                                    "{ctx}: {op} writes in the cloud: {:?}",
                                    summary(&r)
                                );
                            }
                        }

                        // The combinations that cannot work are refused, naming the fix: a
                        // tenant's mailbox for users only AD has (nothing syncs them), and
                        // Exchange hybrid for cloud-only users (no AD account).
                        let impossible = (idp == Idp::OnPremAd && mbx != Mbx::ExchangeServer)
                            || (idp == Idp::EntraId && mbx == Mbx::ExchangeHybrid);
                        if impossible {
                            for op in ["mailbox.create", "mailbox.set_forwarding"] {
                                let e = route(&c, op).expect_err(&ctx);
                                assert!(matches!(e, Error::Combination { .. }), "{ctx}: {e}");
                                let text = e.to_string();
                                assert!(
                                    text.contains("fix: set ")
                                        && (text.contains("identity_provider to hybrid")),
                                    "{ctx}: {text}"
                                );
                            }
                            if idp == Idp::OnPremAd {
                                assert!(
                                    matches!(
                                        route(&c, "license.assign"),
                                        Err(Error::Combination { .. })
                                    ),
                                    "{ctx}"
                                );
                            }
                            refused += 1;
                            continue;
                        }

                        // Mailbox: standard ops.
                        let fwd = got("mailbox.set_forwarding");
                        assert_eq!(
                            fwd,
                            match mbx {
                                Mbx::ExchangeOnline | Mbx::ExchangeHybrid => vec![
                                    "exchange_online.set_forwarding@exchange_online".to_owned()
                                ],
                                Mbx::ExchangeServer =>
                                    vec![exch_at("exchange_server.set_forwarding")],
                            },
                            "{ctx}"
                        );
                        // Mailbox creation: on-prem cmdlets on the Exchange server.
                        let create_mbx = got("mailbox.create");
                        let want_mbx: Vec<String> = match mbx {
                            Mbx::ExchangeOnline => {
                                vec!["exchange_online.wait_for_mailbox@exchange_online".into()]
                            }
                            // A cloud-only user has no AD account: New-Mailbox makes one.
                            Mbx::ExchangeServer if idp == Idp::EntraId => {
                                vec![exch_at("exchange_server.new_mailbox")]
                            }
                            Mbx::ExchangeServer => vec![exch_at("exchange_server.enable_mailbox")],
                            Mbx::ExchangeHybrid => {
                                let mut v = vec![exch_at("exchange_server.enable_remote_mailbox")];
                                if idp == Idp::Hybrid {
                                    v.push(sync.clone());
                                }
                                v.push("exchange_online.wait_for_mailbox@exchange_online".into());
                                v
                            }
                        };
                        assert_eq!(create_mbx, want_mbx, "{ctx}");
                        // Hiding a synced user's mailbox happens on-prem.
                        let hide = got("mailbox.hide_from_gal");
                        let want_hide: Vec<String> = match (mbx, idp) {
                            (Mbx::ExchangeServer, _) => {
                                vec![exch_at("exchange_server.set_hidden_from_gal")]
                            }
                            (Mbx::ExchangeHybrid, Idp::Hybrid) => {
                                vec![exch_at("exchange_server.set_remote_mailbox"), sync.clone()]
                            }
                            (Mbx::ExchangeOnline, Idp::Hybrid) => {
                                vec![format!("ad.set_user@{ad_host}"), sync.clone()]
                            }
                            _ => vec!["exchange_online.set_hidden_from_gal@exchange_online".into()],
                        };
                        assert_eq!(hide, want_hide, "{ctx}");

                        // The delta sync itself.
                        let sync_route = route(&c, "directory_sync.start_delta").unwrap();
                        if idp == Idp::Hybrid {
                            assert_eq!(summary(&sync_route), vec![sync.clone()], "{ctx}");
                        } else {
                            assert!(
                                sync_route.actions.is_empty() && sync_route.note.is_some(),
                                "{ctx}"
                            );
                        }

                        // Cloud-only ops need a tenant.
                        let lic = route(&c, "license.assign");
                        if idp == Idp::OnPremAd && mbx == Mbx::ExchangeServer {
                            assert!(matches!(lic, Err(Error::NotAvailable { .. })), "{ctx}");
                        } else {
                            assert_eq!(
                                summary(&lic.unwrap()),
                                vec!["graph.assign_license@graph"],
                                "{ctx}"
                            );
                        }

                        // Every routed op either routes or says why not, naming the company.
                        for op in ROUTED_OPS {
                            match route(&c, op) {
                                Ok(r) => assert!(
                                    !r.actions.is_empty() || r.note.is_some(),
                                    "{ctx}: {op}"
                                ),
                                Err(e) => {
                                    assert!(
                                        matches!(e, Error::NotAvailable { .. }),
                                        "{ctx}: {op}: {e}"
                                    );
                                    assert!(
                                        e.to_string().contains("company `contoso`")
                                            && e.to_string().contains("fix:"),
                                        "{e}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(combos, 72);
        assert_eq!(
            refused, 18,
            "3 of the 12 combinations, 6 runner set-ups each"
        );
    }

    #[test]
    fn placements_follow_the_runners() {
        let c = company(
            Idp::Hybrid,
            Mbx::ExchangeHybrid,
            Runner::Other,
            Runner::Other,
        );
        assert_eq!(
            placement(&c, "x", OnPrem::ActiveDirectory).unwrap(),
            rmm("RUNNER01", None)
        );
        assert_eq!(
            placement(&c, "x", OnPrem::EntraConnect).unwrap(),
            rmm("AADC01", Some("RUNNER01"))
        );
        assert_eq!(
            placement(&c, "x", OnPrem::ExchangeServer).unwrap(),
            rmm("EXCH01", Some("RUNNER02"))
        );
        assert_eq!(
            placement(&c, "x", OnPrem::ExchangeServer)
                .unwrap()
                .rmm_device(),
            Some("RUNNER02")
        );
        // A runner named like its target (another case, or the FQDN) is the target: direct.
        let mut same = c.clone();
        same.exchange_runner = Some("exch01.contoso.local".to_owned());
        same.ad_runner = Some("aadc01".to_owned());
        assert_eq!(
            placement(&same, "x", OnPrem::ExchangeServer).unwrap(),
            rmm("EXCH01", None)
        );
        assert_eq!(
            placement(&same, "x", OnPrem::EntraConnect).unwrap(),
            rmm("AADC01", None)
        );
        // Missing hosts name the field and the fix.
        let mut bare = c;
        bare.ad_runner = None;
        let e = route(&bare, "user.create").unwrap_err();
        assert!(
            e.to_string().contains("`ad_runner` is not set") && e.to_string().contains("RSAT"),
            "{e}"
        );
    }

    #[test]
    fn groups_route_by_where_the_group_lives() {
        let c = company(
            Idp::Hybrid,
            Mbx::ExchangeOnline,
            Runner::Other,
            Runner::Unset,
        );
        let r = route(&c, "group.add_member").unwrap();
        let whens: Vec<(&str, Option<Condition>)> = r
            .actions
            .iter()
            .map(|a| (a.action, a.when.clone()))
            .collect();
        assert_eq!(
            whens,
            vec![
                ("ad.add_group_member", Some(Condition::GroupSyncedFromAd)),
                ("adsync.start_delta", Some(Condition::GroupSyncedFromAd)),
                (
                    "exchange_online.add_distribution_group_member",
                    Some(Condition::GroupCloudMailEnabled)
                ),
                (
                    "graph.add_group_member",
                    Some(Condition::GroupCloudNotMailEnabled)
                ),
            ]
        );
        let access = route(&c, "mailbox.grant_access").unwrap();
        assert_eq!(
            access
                .actions
                .iter()
                .map(|a| (a.action, a.when.as_ref().map(ToString::to_string)))
                .collect::<Vec<_>>(),
            vec![
                (
                    "exchange_online.add_mailbox_permission",
                    Some("if rights is full_access".to_owned())
                ),
                (
                    "exchange_online.add_recipient_permission",
                    Some("if rights is send_as".to_owned())
                ),
                (
                    "exchange_online.set_send_on_behalf",
                    Some("if rights is send_on_behalf".to_owned())
                ),
            ]
        );
        assert_eq!(
            route(&c, "nonsense.op").unwrap_err(),
            Error::UnknownOp {
                op: "nonsense.op".to_owned()
            }
        );
    }

    #[test]
    fn serialises_for_the_api() {
        let c = company(
            Idp::Hybrid,
            Mbx::ExchangeHybrid,
            Runner::Other,
            Runner::Other,
        );
        let r = route(&c, "mailbox.convert_to_shared").unwrap();
        let v = serde_json::to_value(&r.actions[0]).unwrap();
        assert_eq!(
            v,
            json!({"action": "exchange_server.set_remote_mailbox",
                   "target": {"system": "rmm", "host": "EXCH01", "via": {"kind": "runner", "runner": "RUNNER02"}},
                   "args": {"type": "Shared"},
                   "why": "the on-prem remote mailbox object must say Shared too"})
        );
    }

    struct Cat(Vec<OpSpec>);

    impl Catalog for Cat {
        fn op(&self, name: &str) -> Option<&OpSpec> {
            self.0.iter().find(|s| s.name == name)
        }
        fn op_names(&self) -> Vec<&'static str> {
            self.0.iter().map(|s| s.name).collect()
        }
    }

    fn spec(name: &'static str, system: OpSystem) -> OpSpec {
        OpSpec {
            name,
            summary: "does it",
            access: OpAccess::Write,
            group: PermissionGroup::Users,
            approval: steward_schemas::ApprovalRule::Policy,
            system,
            reversibility: Reversibility::Reversible,
            inputs: &[],
            outputs: None::<&'static [OpField]>,
            internal: false,
        }
    }

    #[test]
    fn a_rendered_plan_shows_where_each_step_runs_and_hides_secrets() {
        let cat = Cat(vec![
            spec("user.create", OpSystem::Directory),
            spec("license.assign", OpSystem::EntraId),
            spec("ledger", OpSystem::Steward),
        ]);
        let yaml = r#"
name: onboard
version: 3
inputs:
  upn: {type: string}
  password: {type: string, secret: true}
  temp: {type: string}
steps:
  - id: create
    op: user.create
    with:
      user_principal_name: "${{ inputs.upn }}"
      initial: "${{ inputs.password }}"
      admin_password: "${{ inputs.temp }}"
      ou: "${{ company.defaults.ou }}"
  - id: license
    op: license.assign
    needs: [create]
    when: "inputs.upn != ''"
    with:
      user: "${{ steps.create.output.id }}"
      sku: SPE_E3
  - id: note
    op: ledger
    needs: [license]
    with: {key: done}
"#;
        let plan = Plan::load("onboard.yaml", yaml, None).unwrap();
        let mut c = company(
            Idp::Hybrid,
            Mbx::ExchangeOnline,
            Runner::Other,
            Runner::Unset,
        );
        c.defaults.ou = Some("OU=Staff,DC=contoso,DC=local".to_owned());
        let inputs = json!({"upn": "jane@contoso.com", "password": "Hunter2!Hunter2", "temp": "S3cret-temp"});
        let routed = render_plan(&plan, &c, inputs.as_object().unwrap(), &cat).unwrap();
        assert!(routed.is_routable());
        let text = routed.to_string();
        for secret in ["Hunter2!Hunter2", "S3cret-temp"] {
            assert!(!text.contains(secret), "{text}");
            assert!(!serde_json::to_string(&routed).unwrap().contains(secret));
        }
        for want in [
            "Workflow onboard (version 3) for Contoso (contoso): identity provider hybrid, mailbox provider exchange_online.",
            "1. create (user.create)",
            "- ad.new_user via rmm on RUNNER01, direct",
            "- adsync.start_delta via rmm on AADC01, from runner RUNNER01 by PowerShell remoting",
            "- graph.wait_for_user via graph (until = \"present\")",
            "initial = \"[secret]\"",
            "admin_password = \"[secret]\"",
            "user_principal_name = \"jane@contoso.com\"",
            "ou = \"OU=Staff,DC=contoso,DC=local\"",
            "2. license (license.assign)",
            "after: create",
            "only when: inputs.upn != ''",
            "user = \"${{ steps.create.output.id }}\"",
            "- graph.assign_license via graph",
            "3. note (ledger)",
            "- ledger via steward",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // The same plan for an on-prem-only company: the licence step cannot run, and says so.
        let onprem = company(
            Idp::OnPremAd,
            Mbx::ExchangeServer,
            Runner::Other,
            Runner::Unset,
        );
        let routed = render_plan(&plan, &onprem, inputs.as_object().unwrap(), &cat).unwrap();
        assert!(!routed.is_routable());
        assert!(
            routed
                .to_string()
                .contains("CANNOT RUN: company `contoso`: op `license.assign` cannot run"),
            "{routed}"
        );
        // Bad inputs are refused with the input named.
        let errs =
            render_plan(&plan, &c, json!({"upn": 3}).as_object().unwrap(), &cat).unwrap_err();
        assert!(errs.iter().any(|e| e.name == "upn") && errs.iter().any(|e| e.name == "password"));
    }
}
