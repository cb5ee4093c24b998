//! Exchange Online's admin API: `POST /adminapi/beta/{tenant}/InvokeCommand` with a
//! `{"CmdletInput":{"CmdletName":..,"Parameters":{..}}}` body, the endpoint the
//! ExchangeOnlineManagement module (and CIPP) use.
//!
//! Recipients exist only once Exchange Online has provisioned them, which happens some minutes
//! after a user becomes due a mailbox (licence assigned, remote mailbox synced). Until then every
//! cmdlet naming the user fails with `ManagementObjectNotFoundException`, as it does for real.
//! Cmdlet errors come back as HTTP 400 with the exception type in `error.message`,
//! `error.details[].message` and `error.innererror.internalexception`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use crate::http::{AppState, Ctx, parse_json};
use crate::identity::{self, AuthFailure, OUTLOOK_AUDIENCE};
use crate::world::{Company, FullAccess, GroupKind, Mailbox, MailboxKind, User};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/adminapi/beta/{tenant}/InvokeCommand", post(invoke))
        .fallback(fallback)
        .method_not_allowed_fallback(fallback)
}

async fn fallback() -> Response {
    envelope(
        StatusCode::NOT_FOUND,
        "NotFound",
        "The requested resource was not found. The admin API serves POST /adminapi/beta/{tenant}/InvokeCommand.",
        None,
    )
}

/// A cmdlet failure: the .NET exception type and its message.
#[derive(Debug, Clone)]
pub(crate) struct CmdletError {
    pub(crate) exception: &'static str,
    pub(crate) message: String,
}

const NOT_FOUND_EX: &str =
    "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException";
const MEMBER_EXISTS_EX: &str = "Microsoft.Exchange.Management.Tasks.MemberAlreadyExistsException";
const MEMBER_NOT_FOUND_EX: &str = "Microsoft.Exchange.Management.Tasks.MemberNotFoundException";
const RECIPIENT_TASK_EX: &str = "Microsoft.Exchange.Management.Tasks.RecipientTaskException";
const PARAM_EX: &str = "System.Management.Automation.ParameterBindingException";
const COMMAND_EX: &str = "System.Management.Automation.CommandNotFoundException";
const AMBIGUOUS_EX: &str = "System.Management.Automation.AmbiguousParameterSetException";
const INVALID_OP_EX: &str = "Microsoft.Exchange.Configuration.Tasks.TaskInvalidOperationException";

impl CmdletError {
    fn new(exception: &'static str, message: impl Into<String>) -> Self {
        Self {
            exception,
            message: message.into(),
        }
    }

    fn identity_not_found(id: &str) -> Self {
        Self::new(
            NOT_FOUND_EX,
            format!(
                "The operation couldn't be performed because object '{id}' couldn't be found on 'SBXP281A001DC01.PROD.OUTLOOK.COM'."
            ),
        )
    }

    fn object_not_found(id: &str) -> Self {
        Self::new(
            NOT_FOUND_EX,
            format!(
                "Couldn't find object \"{id}\". Please make sure that it was spelled correctly or specify a different object."
            ),
        )
    }

    fn param(message: impl Into<String>) -> Self {
        Self::new(PARAM_EX, message)
    }

    fn missing(param: &str, cmdlet: &str) -> Self {
        Self::param(format!(
            "Cannot process command because of one or more missing mandatory parameters: {param}. ({cmdlet})"
        ))
    }

    fn bad_value(param: &str, value: &Value) -> Self {
        Self::param(format!(
            "Cannot bind parameter '{param}'. Cannot convert value \"{}\" to the type the parameter expects.",
            value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned)
        ))
    }

    /// The answer, shaped as the admin API's: a missing object is 404 `NotFound` "Error
    /// executing cmdlet" with the exception type only in `details[0].message`; an unknown
    /// parameter is 400 `BadRequest` "Invalid Operation" (`AmbiguousParameterSetException`);
    /// other cmdlet errors 400 `BadRequest` with the type in the message and the inner error.
    fn response(&self) -> Response {
        let code = crate::ids::number(0, &[self.exception], 0xFFFFFF);
        let detail = format!("Ex{code:06X}|{}|{}", self.exception, self.message);
        if self.exception == NOT_FOUND_EX {
            let error = json!({
                "code": "NotFound",
                "message": "Error executing cmdlet",
                "details": [{"code": "Context", "target": "", "message": detail}],
            });
            return (StatusCode::NOT_FOUND, axum::Json(json!({ "error": error }))).into_response();
        }
        if self.exception == AMBIGUOUS_EX {
            return envelope(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Invalid Operation",
                Some((detail, self.exception)),
            );
        }
        let msg = format!("|{}|{}", self.exception, self.message);
        envelope(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &msg,
            Some((detail, self.exception)),
        )
    }
}

fn envelope(
    status: StatusCode,
    code: &str,
    message: &str,
    detail: Option<(String, &str)>,
) -> Response {
    let mut error = json!({"code": code, "message": message});
    if let Some((detail, exception)) = detail {
        error["details"] = json!([{"code": "Context", "target": "", "message": detail}]);
        error["innererror"] = json!({
            "message": message,
            "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException",
            "internalexception": {"message": message, "type": exception},
        });
    }
    (status, axum::Json(json!({ "error": error }))).into_response()
}

pub(crate) fn fault_body(status: StatusCode) -> Value {
    let (code, msg) = match status.as_u16() {
        429 => (
            "TooManyRequests",
            "The request was throttled. Please retry after some time.",
        ),
        503 => (
            "ServiceUnavailable",
            "The service is temporarily unavailable.",
        ),
        _ => ("InternalServerError", "An injected sandbox fault."),
    };
    json!({"error": {"code": code, "message": msg}})
}

fn unauthorized(message: &str) -> Response {
    envelope(StatusCode::UNAUTHORIZED, "Unauthorized", message, None)
}

async fn invoke(
    State(shared): State<AppState>,
    Path(tenant): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let token = match identity::authenticate(&st.tokens, ctx.bearer(), OUTLOOK_AUDIENCE, now) {
        Ok(t) => t,
        Err(AuthFailure::Missing) => return unauthorized("The request is missing a bearer token."),
        Err(AuthFailure::Expired) => return unauthorized("The access token has expired."),
        Err(AuthFailure::WrongAudience) => {
            return unauthorized(
                "The access token's audience is not https://outlook.office365.com.",
            );
        }
        Err(AuthFailure::Unknown) => return unauthorized("The access token is invalid."),
    };
    let Some(company_id) = st.world.company_by_tenant(&tenant).map(|c| c.id.clone()) else {
        return envelope(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Tenant '{tenant}' was not found."),
            None,
        );
    };
    if company_id != token.company {
        return envelope(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "The access token was issued for a different tenant.",
            None,
        );
    }
    let Ok(Value::Object(input)) = parse_json(&body) else {
        return envelope(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The request body is not valid JSON.",
            None,
        );
    };
    let Some(Value::Object(cmdlet)) = input.get("CmdletInput") else {
        return envelope(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "The request body must contain 'CmdletInput'.",
            None,
        );
    };
    let Some(name) = cmdlet.get("CmdletName").and_then(Value::as_str) else {
        return envelope(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "CmdletInput must contain 'CmdletName'.",
            None,
        );
    };
    let params = match cmdlet.get("Parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => {
            return envelope(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "CmdletInput.Parameters must be an object.",
                None,
            );
        }
    };
    let Some(company) = st.world.company_mut(&company_id) else {
        return unauthorized("The tenant no longer exists.");
    };
    let mut out = Outcome::default();
    let result = run_cmdlet(company, name, &params, now, &mut out);
    match result {
        Ok(value) => {
            for (action, target, details) in out.mutations {
                st.ledger.record(
                    ctx.mutation(
                        "exchange_online",
                        &company_id,
                        &action,
                        Some(&target),
                        details,
                    ),
                    now,
                );
            }
            axum::Json(json!({
                "@odata.context": format!("https://outlook.office365.com/adminapi/beta/{tenant}/$metadata#Collection(Exchange.GenericHashTable)"),
                "adminapi.warnings@odata.type": "#Collection(String)",
                "@adminapi.warnings": out.warnings,
                "value": value,
            }))
            .into_response()
        }
        Err(e) => e.response(),
    }
}

#[derive(Debug, Default)]
struct Outcome {
    warnings: Vec<String>,
    mutations: Vec<(String, String, Value)>,
}

type CmdResult = Result<Vec<Value>, CmdletError>;

/// Runs one cmdlet against the company's Exchange Online.
type Run = fn(&mut Company, &Params<'_>, chrono::DateTime<chrono::Utc>, &mut Outcome) -> CmdResult;

/// A supported cmdlet: the parameters it takes (unknown ones are a binding error, as in
/// PowerShell; `Confirm` and `ErrorAction` are accepted everywhere) and what runs it.
struct Cmdlet {
    name: &'static str,
    params: &'static [&'static str],
    run: Run,
}

const CMDLETS: &[Cmdlet] = &[
    Cmdlet {
        name: "Get-Mailbox",
        params: &["Identity", "ResultSize", "RecipientTypeDetails"],
        run: |c, p, now, _| get_mailbox(c, p, now),
    },
    Cmdlet {
        name: "Set-Mailbox",
        params: &[
            "Identity",
            "Type",
            "ForwardingAddress",
            "ForwardingSmtpAddress",
            "DeliverToMailboxAndForward",
            "HiddenFromAddressListsEnabled",
            "GrantSendOnBehalfTo",
        ],
        run: set_mailbox,
    },
    Cmdlet {
        name: "Get-MailboxPermission",
        params: &["Identity", "User"],
        run: |c, p, now, _| get_mailbox_permission(c, p, now),
    },
    Cmdlet {
        name: "Add-MailboxPermission",
        params: &[
            "Identity",
            "User",
            "AccessRights",
            "InheritanceType",
            "AutoMapping",
        ],
        run: add_mailbox_permission,
    },
    Cmdlet {
        name: "Remove-MailboxPermission",
        params: &[
            "Identity",
            "User",
            "AccessRights",
            "InheritanceType",
            "BypassMasterAccountSid",
        ],
        run: remove_mailbox_permission,
    },
    Cmdlet {
        name: "Get-RecipientPermission",
        params: &["Identity", "Trustee"],
        run: |c, p, now, _| get_recipient_permission(c, p, now),
    },
    Cmdlet {
        name: "Add-RecipientPermission",
        params: &["Identity", "Trustee", "AccessRights"],
        run: |c, p, now, out| recipient_permission(c, p, now, out, true),
    },
    Cmdlet {
        name: "Remove-RecipientPermission",
        params: &["Identity", "Trustee", "AccessRights"],
        run: |c, p, now, out| recipient_permission(c, p, now, out, false),
    },
    Cmdlet {
        name: "Get-MailboxAutoReplyConfiguration",
        params: &["Identity"],
        run: |c, p, now, _| get_auto_reply(c, p, now),
    },
    Cmdlet {
        name: "Set-MailboxAutoReplyConfiguration",
        params: &[
            "Identity",
            "AutoReplyState",
            "InternalMessage",
            "ExternalMessage",
            "ExternalAudience",
            "StartTime",
            "EndTime",
        ],
        run: set_auto_reply,
    },
    Cmdlet {
        name: "Get-MobileDevice",
        params: &["Mailbox", "Identity", "ResultSize"],
        run: |c, p, now, _| get_mobile_devices(c, p, now),
    },
    Cmdlet {
        name: "Remove-MobileDevice",
        params: &["Identity"],
        run: remove_mobile_device,
    },
    Cmdlet {
        name: "Get-DistributionGroupMember",
        params: &["Identity", "ResultSize"],
        run: |c, p, now, _| get_group_members(c, p, now),
    },
    Cmdlet {
        name: "Add-DistributionGroupMember",
        params: &["Identity", "Member", "BypassSecurityGroupManagerCheck"],
        run: |c, p, now, out| group_member(c, p, now, out, "Add-DistributionGroupMember", true),
    },
    Cmdlet {
        name: "Remove-DistributionGroupMember",
        params: &["Identity", "Member", "BypassSecurityGroupManagerCheck"],
        run: |c, p, now, out| group_member(c, p, now, out, "Remove-DistributionGroupMember", false),
    },
];

fn run_cmdlet(
    c: &mut Company,
    name: &str,
    params: &Map<String, Value>,
    now: chrono::DateTime<chrono::Utc>,
    out: &mut Outcome,
) -> CmdResult {
    let Some(cmdlet) = CMDLETS.iter().find(|x| x.name.eq_ignore_ascii_case(name)) else {
        return Err(CmdletError::new(
            COMMAND_EX,
            format!(
                "The term '{name}' is not recognized as a name of a cmdlet, function, script file, or executable program."
            ),
        ));
    };
    for k in params.keys() {
        if k.eq_ignore_ascii_case("Confirm")
            || k.eq_ignore_ascii_case("ErrorAction")
            || cmdlet.params.iter().any(|a| a.eq_ignore_ascii_case(k))
        {
            continue;
        }
        return Err(CmdletError::new(
            AMBIGUOUS_EX,
            format!("A parameter cannot be found that matches parameter name '{k}'."),
        ));
    }
    (cmdlet.run)(c, &Params(params), now, out)
}

struct Params<'a>(&'a Map<String, Value>);

impl Params<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v)
    }

    fn str(&self, k: &str) -> Result<Option<String>, CmdletError> {
        match self.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(CmdletError::bad_value(k, v)),
        }
    }

    fn required(&self, k: &str, cmdlet: &str) -> Result<String, CmdletError> {
        self.str(k)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| CmdletError::missing(k, cmdlet))
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, CmdletError> {
        match self.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.trim_start_matches('$').to_ascii_lowercase().as_str()
            {
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(CmdletError::bad_value(k, &Value::String(s.clone()))),
            },
            Some(v) => Err(CmdletError::bad_value(k, v)),
        }
    }

    /// A string or an array of strings.
    fn list(&self, k: &str) -> Result<Option<Vec<String>>, CmdletError> {
        match self.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| CmdletError::bad_value(k, v))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(CmdletError::bad_value(k, v)),
        }
    }
}

fn user_matches(u: &User, key: &str) -> bool {
    let key = key
        .trim()
        .trim_start_matches("smtp:")
        .trim_start_matches("SMTP:");
    u.id.eq_ignore_ascii_case(key)
        || u.upn().eq_ignore_ascii_case(key)
        || u.str_prop("mail")
            .is_some_and(|m| m.eq_ignore_ascii_case(key))
        || u.mail_nickname().eq_ignore_ascii_case(key)
        || u.str_prop("displayName")
            .is_some_and(|d| d.eq_ignore_ascii_case(key))
}

/// The provisioned mailbox named by `key`, as (mailbox index, user index).
fn resolve_mailbox(
    c: &Company,
    key: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<(usize, usize)> {
    c.exchange_online
        .mailboxes
        .iter()
        .enumerate()
        .filter(|(_, m)| m.provisioned_at <= now)
        .find_map(|(mi, m)| {
            let ui = c.tenant.users.iter().position(|u| u.id == m.user_id)?;
            (user_matches(&c.tenant.users[ui], key) || m.guid.eq_ignore_ascii_case(key))
                .then_some((mi, ui))
        })
}

/// A recipient named in a parameter (trustee, member, forwarding target): a user with a
/// provisioned mailbox.
fn resolve_recipient<'a>(
    c: &'a Company,
    key: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<&'a User, CmdletError> {
    resolve_mailbox(c, key, now)
        .map(|(_, ui)| &c.tenant.users[ui])
        .ok_or_else(|| CmdletError::object_not_found(key))
}

fn alias(u: &User) -> String {
    u.mail_nickname()
}

fn mailbox_json(c: &Company, m: &Mailbox, u: &User) -> Value {
    let names = |ids: &[String]| -> Vec<String> {
        ids.iter()
            .filter_map(|id| c.tenant.users.iter().find(|x| &x.id == id))
            .map(alias)
            .collect()
    };
    json!({
        "Identity": alias(u),
        "Name": alias(u),
        "Alias": alias(u),
        "DisplayName": u.str_prop("displayName"),
        "UserPrincipalName": u.upn(),
        "PrimarySmtpAddress": u.primary_smtp(),
        "EmailAddresses": [format!("SMTP:{}", u.primary_smtp())],
        "RecipientType": "UserMailbox",
        "RecipientTypeDetails": m.kind.as_str(),
        "ExternalDirectoryObjectId": u.id,
        "Guid": m.guid,
        "ExchangeGuid": m.guid,
        "IsDirSynced": u.synced(),
        "HiddenFromAddressListsEnabled": m.hidden_from_address_lists,
        "ForwardingAddress": m.forwarding_address.as_ref().and_then(|id| c.tenant.users.iter().find(|x| &x.id == id)).map(alias),
        "ForwardingSmtpAddress": m.forwarding_smtp_address.as_ref().map(|s| format!("smtp:{s}")),
        "DeliverToMailboxAndForward": m.deliver_to_mailbox_and_forward,
        "GrantSendOnBehalfTo": names(&m.grant_send_on_behalf_to),
        "WhenMailboxCreated": m.provisioned_at,
    })
}

fn get_mailbox(c: &Company, p: &Params<'_>, now: chrono::DateTime<chrono::Utc>) -> CmdResult {
    let filter_type = p.str("RecipientTypeDetails")?;
    if let Some(id) = p.str("Identity")? {
        let (mi, ui) =
            resolve_mailbox(c, &id, now).ok_or_else(|| CmdletError::identity_not_found(&id))?;
        return Ok(vec![mailbox_json(
            c,
            &c.exchange_online.mailboxes[mi],
            &c.tenant.users[ui],
        )]);
    }
    Ok(c.exchange_online
        .mailboxes
        .iter()
        .filter(|m| m.provisioned_at <= now)
        .filter(|m| {
            filter_type
                .as_ref()
                .is_none_or(|t| t.eq_ignore_ascii_case(m.kind.as_str()))
        })
        .filter_map(|m| {
            let u = c.tenant.users.iter().find(|u| u.id == m.user_id)?;
            Some(mailbox_json(c, m, u))
        })
        .collect())
}

fn identity_mailbox(
    c: &Company,
    p: &Params<'_>,
    cmdlet: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(usize, usize, String), CmdletError> {
    let id = p.required("Identity", cmdlet)?;
    let (mi, ui) =
        resolve_mailbox(c, &id, now).ok_or_else(|| CmdletError::identity_not_found(&id))?;
    Ok((mi, ui, id))
}

fn no_change(out: &mut Outcome, id: &str) {
    out.warnings.push(format!(
        "The command completed successfully but no settings of '{id}' have been modified."
    ));
}

fn set_mailbox(
    c: &mut Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
    out: &mut Outcome,
) -> CmdResult {
    let (mi, ui, id) = identity_mailbox(c, p, "Set-Mailbox", now)?;
    let user_id = c.tenant.users[ui].id.clone();
    let synced = c.tenant.users[ui].synced();
    let display = c.tenant.users[ui]
        .str_prop("displayName")
        .unwrap_or(&id)
        .to_owned();
    let mut changes = Map::new();
    let kind = match p.str("Type")? {
        None => None,
        Some(t) => match t.to_ascii_lowercase().as_str() {
            "shared" => Some(MailboxKind::SharedMailbox),
            "regular" => Some(MailboxKind::UserMailbox),
            _ => return Err(CmdletError::bad_value("Type", &json!(t))),
        },
    };
    let hidden = p.bool("HiddenFromAddressListsEnabled")?;
    if hidden.is_some() && synced {
        return Err(CmdletError::new(
            RECIPIENT_TASK_EX,
            format!(
                "An error occurred while updating a mailbox. The operation on mailbox \"{display}\" failed because it's out of the current user's write scope. The action 'Set-Mailbox', 'HiddenFromAddressListsEnabled', can't be performed on the object '{display}' because the object is being synchronized from your on-premises organization. This action should be performed on the object in your on-premises organization."
            ),
        ));
    }
    let forwarding_address = match p.get("ForwardingAddress") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => {
            let target = p.str("ForwardingAddress")?.unwrap_or_default();
            Some(Some(resolve_recipient(c, &target, now)?.id.clone()))
        }
    };
    let forwarding_smtp = match p.get("ForwardingSmtpAddress") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(_) => {
            let s = p.str("ForwardingSmtpAddress")?.unwrap_or_default();
            let addr = s
                .strip_prefix("smtp:")
                .or_else(|| s.strip_prefix("SMTP:"))
                .unwrap_or(&s)
                .to_owned();
            if !addr.contains('@') || addr.contains(' ') {
                return Err(CmdletError::bad_value("ForwardingSmtpAddress", &json!(s)));
            }
            Some(Some(addr))
        }
    };
    let deliver = p.bool("DeliverToMailboxAndForward")?;
    let send_on_behalf = match p.get("GrantSendOnBehalfTo") {
        None => None,
        Some(Value::Null) => Some(SendOnBehalf::Replace(vec![])),
        Some(Value::Object(h)) => {
            let mut add = vec![];
            let mut remove = vec![];
            for (k, v) in h {
                let names: Vec<String> = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect(),
                    _ => continue,
                };
                match k.to_ascii_lowercase().as_str() {
                    "add" => add = names,
                    "remove" => remove = names,
                    "@odata.type" => {}
                    _ => {
                        return Err(CmdletError::bad_value(
                            "GrantSendOnBehalfTo",
                            &Value::Object(h.clone()),
                        ));
                    }
                }
            }
            let add = add
                .iter()
                .map(|n| resolve_recipient(c, n, now).map(|u| u.id.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let remove = remove
                .iter()
                .map(|n| resolve_recipient(c, n, now).map(|u| u.id.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            Some(SendOnBehalf::Delta { add, remove })
        }
        Some(_) => {
            let names = p.list("GrantSendOnBehalfTo")?.unwrap_or_default();
            let ids = names
                .iter()
                .map(|n| resolve_recipient(c, n, now).map(|u| u.id.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            Some(SendOnBehalf::Replace(ids))
        }
    };
    let m = &mut c.exchange_online.mailboxes[mi];
    if let Some(k) = kind {
        if m.kind != k {
            m.kind = k;
            changes.insert("Type".into(), json!(k.as_str()));
        }
    }
    if let Some(h) = hidden {
        if m.hidden_from_address_lists != h {
            m.hidden_from_address_lists = h;
            changes.insert("HiddenFromAddressListsEnabled".into(), json!(h));
        }
    }
    if let Some(f) = forwarding_address {
        if m.forwarding_address != f {
            changes.insert("ForwardingAddress".into(), json!(f));
            m.forwarding_address = f;
        }
    }
    if let Some(f) = forwarding_smtp {
        if m.forwarding_smtp_address != f {
            changes.insert("ForwardingSmtpAddress".into(), json!(f));
            m.forwarding_smtp_address = f;
        }
    }
    if let Some(d) = deliver {
        if m.deliver_to_mailbox_and_forward != d {
            m.deliver_to_mailbox_and_forward = d;
            changes.insert("DeliverToMailboxAndForward".into(), json!(d));
        }
    }
    match send_on_behalf {
        None => {}
        Some(SendOnBehalf::Replace(ids)) => {
            if m.grant_send_on_behalf_to != ids {
                changes.insert("GrantSendOnBehalfTo".into(), json!(ids));
                m.grant_send_on_behalf_to = ids;
            }
        }
        Some(SendOnBehalf::Delta { add, remove }) => {
            let before = m.grant_send_on_behalf_to.clone();
            for a in add {
                if !m.grant_send_on_behalf_to.contains(&a) {
                    m.grant_send_on_behalf_to.push(a);
                }
            }
            m.grant_send_on_behalf_to.retain(|x| !remove.contains(x));
            if before != m.grant_send_on_behalf_to {
                changes.insert(
                    "GrantSendOnBehalfTo".into(),
                    json!(m.grant_send_on_behalf_to),
                );
            }
        }
    }
    if changes.is_empty() {
        no_change(out, &id);
    } else {
        out.mutations
            .push(("exo.set_mailbox".into(), user_id, Value::Object(changes)));
    }
    Ok(vec![])
}

enum SendOnBehalf {
    Replace(Vec<String>),
    Delta {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

fn access_rights(p: &Params<'_>, cmdlet: &str, expected: &str) -> Result<(), CmdletError> {
    let rights = p
        .list("AccessRights")?
        .ok_or_else(|| CmdletError::missing("AccessRights", cmdlet))?;
    if rights.len() != 1 || !rights[0].eq_ignore_ascii_case(expected) {
        return Err(CmdletError::param(format!(
            "Cannot bind parameter 'AccessRights'. The sandbox supports only '{expected}' for {cmdlet}."
        )));
    }
    Ok(())
}

fn permission_json(mailbox: &User, trustee: &User, fa: &FullAccess) -> Value {
    json!({
        "Identity": alias(mailbox),
        "User": trustee.upn(),
        "AccessRights": ["FullAccess"],
        "IsInherited": false,
        "Deny": false,
        "InheritanceType": fa.inheritance_type,
    })
}

fn get_mailbox_permission(
    c: &Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
) -> CmdResult {
    let (mi, ui, _) = identity_mailbox(c, p, "Get-MailboxPermission", now)?;
    let only = p.str("User")?;
    let mbx_user = &c.tenant.users[ui];
    Ok(c.exchange_online.mailboxes[mi]
        .full_access
        .iter()
        .filter_map(|fa| {
            let t = c.tenant.users.iter().find(|u| u.id == fa.user_id)?;
            only.as_ref()
                .is_none_or(|o| user_matches(t, o))
                .then(|| permission_json(mbx_user, t, fa))
        })
        .collect())
}

fn add_mailbox_permission(
    c: &mut Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
    out: &mut Outcome,
) -> CmdResult {
    let (mi, ui, id) = identity_mailbox(c, p, "Add-MailboxPermission", now)?;
    let user = p.required("User", "Add-MailboxPermission")?;
    access_rights(p, "Add-MailboxPermission", "FullAccess")?;
    let trustee = resolve_recipient(c, &user, now)?.clone();
    let automap = p.bool("AutoMapping")?.unwrap_or(true);
    let inheritance = p
        .str("InheritanceType")?
        .unwrap_or_else(|| "All".to_owned());
    let mbx_user = c.tenant.users[ui].clone();
    let m = &mut c.exchange_online.mailboxes[mi];
    if let Some(existing) = m.full_access.iter().find(|f| f.user_id == trustee.id) {
        out.warnings.push(format!(
            "An existing permission entry was found for user: {}.",
            trustee.upn()
        ));
        return Ok(vec![permission_json(&mbx_user, &trustee, existing)]);
    }
    let fa = FullAccess {
        user_id: trustee.id.clone(),
        automapping: automap,
        inheritance_type: inheritance,
    };
    let v = permission_json(&mbx_user, &trustee, &fa);
    m.full_access.push(fa);
    let _ = id;
    out.mutations.push((
        "exo.add_mailbox_permission".into(),
        mbx_user.id,
        json!({"user": trustee.id, "accessRights": "FullAccess", "autoMapping": automap}),
    ));
    Ok(vec![v])
}

fn remove_mailbox_permission(
    c: &mut Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
    out: &mut Outcome,
) -> CmdResult {
    let (mi, ui, id) = identity_mailbox(c, p, "Remove-MailboxPermission", now)?;
    let user = p.required("User", "Remove-MailboxPermission")?;
    access_rights(p, "Remove-MailboxPermission", "FullAccess")?;
    let trustee = resolve_recipient(c, &user, now)?.clone();
    let mbx_id = c.tenant.users[ui].id.clone();
    let m = &mut c.exchange_online.mailboxes[mi];
    let before = m.full_access.len();
    m.full_access.retain(|f| f.user_id != trustee.id);
    if m.full_access.len() == before {
        out.warnings.push(format!(
            "Can't remove the access control entry on the object \"{id}\" for account \"{}\" because the ACE doesn't exist on the object.",
            trustee.upn()
        ));
    } else {
        out.mutations.push((
            "exo.remove_mailbox_permission".into(),
            mbx_id,
            json!({"user": trustee.id, "accessRights": "FullAccess"}),
        ));
    }
    Ok(vec![])
}

fn get_recipient_permission(
    c: &Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
) -> CmdResult {
    let (mi, ui, _) = identity_mailbox(c, p, "Get-RecipientPermission", now)?;
    let mbx = &c.tenant.users[ui];
    Ok(c.exchange_online.mailboxes[mi]
        .send_as
        .iter()
        .filter_map(|t| c.tenant.users.iter().find(|u| &u.id == t))
        .map(|t| {
            json!({"Identity": alias(mbx), "Trustee": t.upn(), "AccessControlType": "Allow",
                   "AccessRights": ["SendAs"], "IsInherited": false, "InheritanceType": "None"})
        })
        .collect())
}

fn recipient_permission(
    c: &mut Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
    out: &mut Outcome,
    add: bool,
) -> CmdResult {
    let cmdlet = if add {
        "Add-RecipientPermission"
    } else {
        "Remove-RecipientPermission"
    };
    let (mi, ui, id) = identity_mailbox(c, p, cmdlet, now)?;
    let trustee_name = p.required("Trustee", cmdlet)?;
    access_rights(p, cmdlet, "SendAs")?;
    let trustee = resolve_recipient(c, &trustee_name, now)?.clone();
    let mbx = c.tenant.users[ui].clone();
    let m = &mut c.exchange_online.mailboxes[mi];
    let has = m.send_as.contains(&trustee.id);
    let row = json!({"Identity": alias(&mbx), "Trustee": trustee.upn(), "AccessControlType": "Allow",
                     "AccessRights": ["SendAs"], "IsInherited": false, "InheritanceType": "None"});
    match (add, has) {
        (true, true) => {
            out.warnings.push(format!(
                "The recipient permission 'SendAs' for trustee '{}' on recipient '{id}' already exists.",
                trustee.upn()
            ));
            Ok(vec![row])
        }
        (true, false) => {
            m.send_as.push(trustee.id.clone());
            out.mutations.push((
                "exo.add_recipient_permission".into(),
                mbx.id,
                json!({"trustee": trustee.id, "accessRights": "SendAs"}),
            ));
            Ok(vec![row])
        }
        (false, false) => {
            out.warnings.push(format!(
                "The recipient permission 'SendAs' for trustee '{}' on recipient '{id}' doesn't exist.",
                trustee.upn()
            ));
            Ok(vec![])
        }
        (false, true) => {
            m.send_as.retain(|t| t != &trustee.id);
            out.mutations.push((
                "exo.remove_recipient_permission".into(),
                mbx.id,
                json!({"trustee": trustee.id, "accessRights": "SendAs"}),
            ));
            Ok(vec![])
        }
    }
}

fn get_auto_reply(c: &Company, p: &Params<'_>, now: chrono::DateTime<chrono::Utc>) -> CmdResult {
    let (mi, ui, _) = identity_mailbox(c, p, "Get-MailboxAutoReplyConfiguration", now)?;
    let a = &c.exchange_online.mailboxes[mi].auto_reply;
    Ok(vec![json!({
        "Identity": alias(&c.tenant.users[ui]),
        "AutoReplyState": a.state,
        "InternalMessage": a.internal_message,
        "ExternalMessage": a.external_message,
        "ExternalAudience": a.external_audience,
        "StartTime": a.start_time,
        "EndTime": a.end_time,
    })])
}

fn set_auto_reply(
    c: &mut Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
    out: &mut Outcome,
) -> CmdResult {
    let (mi, ui, id) = identity_mailbox(c, p, "Set-MailboxAutoReplyConfiguration", now)?;
    let state = match p.str("AutoReplyState")? {
        None => None,
        Some(s) => Some(
            ["Enabled", "Disabled", "Scheduled"]
                .into_iter()
                .find(|x| x.eq_ignore_ascii_case(&s))
                .ok_or_else(|| CmdletError::bad_value("AutoReplyState", &json!(s)))?,
        ),
    };
    let audience = match p.str("ExternalAudience")? {
        None => None,
        Some(s) => Some(
            ["None", "Known", "All"]
                .into_iter()
                .find(|x| x.eq_ignore_ascii_case(&s))
                .ok_or_else(|| CmdletError::bad_value("ExternalAudience", &json!(s)))?,
        ),
    };
    let start = p.str("StartTime")?;
    let end = p.str("EndTime")?;
    for (name, v) in [("StartTime", &start), ("EndTime", &end)] {
        if let Some(s) = v {
            if chrono::DateTime::parse_from_rfc3339(s).is_err()
                && chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").is_err()
            {
                return Err(CmdletError::bad_value(name, &json!(s)));
            }
        }
    }
    let internal = p.str("InternalMessage")?;
    let external = p.str("ExternalMessage")?;
    let user_id = c.tenant.users[ui].id.clone();
    let a = &mut c.exchange_online.mailboxes[mi].auto_reply;
    let effective_state = state.unwrap_or(a.state.as_str());
    if effective_state == "Scheduled"
        && start.as_ref().or(a.start_time.as_ref()).is_none()
        && end.as_ref().or(a.end_time.as_ref()).is_none()
    {
        return Err(CmdletError::new(
            INVALID_OP_EX,
            format!(
                "The StartTime and EndTime parameters are required when AutoReplyState is Scheduled for '{id}'."
            ),
        ));
    }
    let mut changes = Map::new();
    if let Some(s) = state {
        a.state = s.to_owned();
        changes.insert("AutoReplyState".into(), json!(s));
    }
    if let Some(v) = audience {
        a.external_audience = v.to_owned();
        changes.insert("ExternalAudience".into(), json!(v));
    }
    if let Some(v) = internal {
        changes.insert("InternalMessage".into(), json!(v));
        a.internal_message = Some(v);
    }
    if let Some(v) = external {
        changes.insert("ExternalMessage".into(), json!(v));
        a.external_message = Some(v);
    }
    if let Some(v) = start {
        changes.insert("StartTime".into(), json!(v));
        a.start_time = Some(v);
    }
    if let Some(v) = end {
        changes.insert("EndTime".into(), json!(v));
        a.end_time = Some(v);
    }
    if changes.is_empty() {
        no_change(out, &id);
    } else {
        out.mutations
            .push(("exo.set_auto_reply".into(), user_id, Value::Object(changes)));
    }
    Ok(vec![])
}

fn device_identity(u: &User, d: &crate::world::MobileDevice) -> String {
    format!(
        "{}\\ExchangeActiveSyncDevices\\{}",
        alias(u),
        d.friendly_name.replace(['\\', ' '], "")
    )
}

fn device_json(u: &User, d: &crate::world::MobileDevice) -> Value {
    json!({
        "Identity": device_identity(u, d),
        "Guid": d.guid,
        "FriendlyName": d.friendly_name,
        "DeviceModel": d.device_model,
        "DeviceOS": d.device_os,
        "FirstSyncTime": d.first_sync_time,
        "UserDisplayName": u.str_prop("displayName"),
    })
}

fn get_mobile_devices(
    c: &Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
) -> CmdResult {
    if let Some(mbx) = p.str("Mailbox")? {
        let (mi, ui) =
            resolve_mailbox(c, &mbx, now).ok_or_else(|| CmdletError::identity_not_found(&mbx))?;
        let u = &c.tenant.users[ui];
        return Ok(c.exchange_online.mailboxes[mi]
            .mobile_devices
            .iter()
            .map(|d| device_json(u, d))
            .collect());
    }
    let only = p.str("Identity")?;
    let mut all = Vec::new();
    for m in c
        .exchange_online
        .mailboxes
        .iter()
        .filter(|m| m.provisioned_at <= now)
    {
        let Some(u) = c.tenant.users.iter().find(|u| u.id == m.user_id) else {
            continue;
        };
        for d in &m.mobile_devices {
            if only.as_ref().is_none_or(|o| {
                o.eq_ignore_ascii_case(&d.guid) || o.eq_ignore_ascii_case(&device_identity(u, d))
            }) {
                all.push(device_json(u, d));
            }
        }
    }
    if let (Some(o), true) = (&only, all.is_empty()) {
        return Err(CmdletError::identity_not_found(o));
    }
    Ok(all)
}

fn remove_mobile_device(
    c: &mut Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
    out: &mut Outcome,
) -> CmdResult {
    let id = p.required("Identity", "Remove-MobileDevice")?;
    let users: Vec<User> = c.tenant.users.clone();
    for m in c
        .exchange_online
        .mailboxes
        .iter_mut()
        .filter(|m| m.provisioned_at <= now)
    {
        let Some(u) = users.iter().find(|u| u.id == m.user_id) else {
            continue;
        };
        if let Some(pos) = m.mobile_devices.iter().position(|d| {
            id.eq_ignore_ascii_case(&d.guid) || id.eq_ignore_ascii_case(&device_identity(u, d))
        }) {
            let d = m.mobile_devices.remove(pos);
            out.mutations.push((
                "exo.remove_mobile_device".into(),
                u.id.clone(),
                json!({"device": d.guid, "friendlyName": d.friendly_name}),
            ));
            return Ok(vec![]);
        }
    }
    Err(CmdletError::identity_not_found(&id))
}

fn find_dl(c: &Company, key: &str) -> Option<usize> {
    c.tenant.groups.iter().position(|g| {
        g.kind.mail_enabled()
            && (g.id.eq_ignore_ascii_case(key)
                || g.display_name.eq_ignore_ascii_case(key)
                || g.mail_nickname.eq_ignore_ascii_case(key)
                || g.mail.as_ref().is_some_and(|m| m.eq_ignore_ascii_case(key)))
    })
}

fn get_group_members(c: &Company, p: &Params<'_>, now: chrono::DateTime<chrono::Utc>) -> CmdResult {
    let id = p.required("Identity", "Get-DistributionGroupMember")?;
    let gi = find_dl(c, &id).ok_or_else(|| CmdletError::identity_not_found(&id))?;
    let _ = now;
    Ok(c.tenant.groups[gi]
        .members
        .iter()
        .filter_map(|m| c.tenant.users.iter().find(|u| &u.id == m))
        .map(|u| {
            json!({"Identity": alias(u), "Name": alias(u), "DisplayName": u.str_prop("displayName"),
                   "PrimarySmtpAddress": u.primary_smtp(), "RecipientType": "UserMailbox",
                   "ExternalDirectoryObjectId": u.id})
        })
        .collect())
}

fn group_member(
    c: &mut Company,
    p: &Params<'_>,
    now: chrono::DateTime<chrono::Utc>,
    out: &mut Outcome,
    cmdlet: &str,
    add: bool,
) -> CmdResult {
    let id = p.required("Identity", cmdlet)?;
    let member_name = p.required("Member", cmdlet)?;
    let gi = find_dl(c, &id).ok_or_else(|| CmdletError::identity_not_found(&id))?;
    let member = resolve_recipient(c, &member_name, now)?.clone();
    let g = &mut c.tenant.groups[gi];
    if g.kind == GroupKind::M365 {
        return Err(CmdletError::new(
            RECIPIENT_TASK_EX,
            format!(
                "The group '{}' is a Microsoft 365 group. Use Add-UnifiedGroupLinks or Remove-UnifiedGroupLinks to manage its members.",
                g.display_name
            ),
        ));
    }
    if g.on_prem.is_some() {
        return Err(CmdletError::new(
            RECIPIENT_TASK_EX,
            format!(
                "The action '{cmdlet}', 'Members', can't be performed on the object '{}' because the object is being synchronized from your on-premises organization. This action should be performed on the object in your on-premises organization.",
                g.display_name
            ),
        ));
    }
    let is_member = g.members.contains(&member.id);
    match (add, is_member) {
        (true, true) => Err(CmdletError::new(
            MEMBER_EXISTS_EX,
            format!(
                "The recipient {} is already a member of the group {}.",
                member.upn(),
                g.display_name
            ),
        )),
        (false, false) => Err(CmdletError::new(
            MEMBER_NOT_FOUND_EX,
            format!(
                "The recipient {} isn't a member of the group {}.",
                member.upn(),
                g.display_name
            ),
        )),
        (true, false) => {
            g.members.push(member.id.clone());
            out.mutations.push((
                "exo.add_distribution_group_member".into(),
                g.id.clone(),
                json!({"member": member.id}),
            ));
            Ok(vec![])
        }
        (false, true) => {
            g.members.retain(|m| m != &member.id);
            out.mutations.push((
                "exo.remove_distribution_group_member".into(),
                g.id.clone(),
                json!({"member": member.id}),
            ));
            Ok(vec![])
        }
    }
}
