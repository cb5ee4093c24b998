//! The three PSAs' webhook payloads, read into one shape: a ticket event.
//!
//! - Autotask: `{Action, Guid, EntityType, Id, Fields{…REST names…}, EventTime, SequenceNumber,
//!   PersonID}`; an `Update` carries only the changed fields plus the display-always ones.
//! - ConnectWise PSA: `{Action: added|updated|deleted, Type, ID, MemberId, CompanyId, FromUrl,
//!   Entity: "<the ticket as a JSON string>", Metadata: {key_url}}`.
//! - HaloPSA: the ticket object (and the action, where there is one). **[unverified]**: the exact
//!   default payload's envelope; we accept the ticket at the top level or under `ticket`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use steward_schemas::company::PsaProvider;

/// What happened to the ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new ticket.
    Created,
    /// A changed ticket.
    Updated,
    /// A deleted ticket (recorded, never acted on).
    Deleted,
}

/// A ticket event, whatever the PSA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketEvent {
    /// What happened.
    pub action: Action,
    /// The ticket's id in the PSA.
    pub ticket_id: String,
    /// The ticket's company id in the PSA, when the event carries it.
    pub company_id: Option<String>,
    /// The ticket fields the event carries (absent ones unchanged); names as below.
    pub fields: TicketFields,
    /// When the PSA says the event happened.
    pub event_time: Option<DateTime<Utc>>,
}

/// The ticket fields rules and the parser read. `None` / empty: not carried by this event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TicketFields {
    /// Its number as people see it (`T20270201.0004`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// The title or summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The description or initial text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Queue (Autotask `queueID`), board (ConnectWise) or team (Halo), as id or name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<String>,
    /// Ticket type (ConnectWise `type`, Halo `tickettype_id`, Autotask `ticketType`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ticket_type: Vec<String>,
    /// Category (Autotask `ticketCategory`, ConnectWise `subType`, Halo `category_1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<String>,
    /// Issue type (Autotask `issueType`/`subIssueType`, ConnectWise `item`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issue_type: Vec<String>,
    /// User-defined fields by name.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub udfs: Map<String, Value>,
}

impl TicketFields {
    /// `self` with what `newer` carries laid over it.
    pub fn merged(mut self, newer: &Self) -> Self {
        if newer.number.is_some() {
            self.number.clone_from(&newer.number);
        }
        if newer.title.is_some() {
            self.title.clone_from(&newer.title);
        }
        if newer.description.is_some() {
            self.description.clone_from(&newer.description);
        }
        for (mine, theirs) in [
            (&mut self.queue, &newer.queue),
            (&mut self.ticket_type, &newer.ticket_type),
            (&mut self.category, &newer.category),
            (&mut self.issue_type, &newer.issue_type),
        ] {
            if !theirs.is_empty() {
                mine.clone_from(theirs);
            }
        }
        for (k, v) in &newer.udfs {
            self.udfs.insert(k.clone(), v.clone());
        }
        self
    }
}

/// A payload that is not the PSA's ticket event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Case-insensitive field.
fn get<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// `{id, name}` references and plain ids both give their texts.
fn refs(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Object(o)) => ["id", "name", "identifier"]
            .iter()
            .filter_map(|k| text(get(o, k)))
            .collect(),
        other => text(other).into_iter().collect(),
    }
}

fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let s = text(v)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s.trim_end_matches('Z'), "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

fn object(body: &[u8]) -> Result<Map<String, Value>, Unreadable> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(Unreadable("the body is not a JSON object".to_owned())),
        Err(e) => Err(Unreadable(format!("the body is not JSON: {e}"))),
    }
}

/// Reads a payload from `provider`.
pub fn read(provider: PsaProvider, body: &[u8]) -> Result<TicketEvent, Unreadable> {
    match provider {
        PsaProvider::Autotask => autotask(body),
        PsaProvider::Connectwise => connectwise(body).map(|(e, _)| e),
        PsaProvider::Halopsa => halo(body),
    }
}

/// The fields of an Autotask ticket as its REST API gives it (`GET Tickets/{id}`'s `item`): the
/// same names as a webhook's `Fields`.
pub fn autotask_fields(item: &Value) -> TicketFields {
    let wrapped = serde_json::json!({"Action": "Update", "EntityType": "Ticket", "Id": item.get("id").cloned().unwrap_or(Value::Null), "Fields": item});
    autotask(wrapped.to_string().as_bytes())
        .map(|e| e.fields)
        .unwrap_or_default()
}

fn autotask(body: &[u8]) -> Result<TicketEvent, Unreadable> {
    let o = object(body)?;
    let entity = text(get(&o, "EntityType")).unwrap_or_default();
    if !entity.eq_ignore_ascii_case("Ticket") {
        return Err(Unreadable(format!(
            "EntityType `{entity}`: only Ticket webhooks start workflows"
        )));
    }
    let action = match text(get(&o, "Action"))
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "create" => Action::Created,
        "update" => Action::Updated,
        "delete" | "deactivated" => Action::Deleted,
        other => {
            return Err(Unreadable(format!(
                "Action `{other}` is not Create, Update or Delete"
            )));
        }
    };
    let id = text(get(&o, "Id")).ok_or_else(|| Unreadable("Id is missing".to_owned()))?;
    let empty = Map::new();
    let f = match get(&o, "Fields") {
        Some(Value::Object(f)) => f,
        _ => &empty,
    };
    let mut udfs = Map::new();
    if let Some(Value::Array(list)) = get(f, "userDefinedFields") {
        for u in list {
            if let (Some(n), Some(v)) = (u.get("name").and_then(Value::as_str), u.get("value")) {
                udfs.insert(n.to_owned(), v.clone());
            }
        }
    }
    let mut issue = refs(get(f, "issueType"));
    issue.extend(refs(get(f, "subIssueType")));
    Ok(TicketEvent {
        action,
        ticket_id: id,
        company_id: text(get(f, "companyID")),
        fields: TicketFields {
            number: text(get(f, "ticketNumber")),
            title: text(get(f, "title")),
            description: text(get(f, "description")),
            queue: refs(get(f, "queueID")),
            ticket_type: refs(get(f, "ticketType")),
            category: refs(get(f, "ticketCategory")),
            issue_type: issue,
            udfs,
        },
        event_time: time(get(&o, "EventTime")),
    })
}

/// Reads a ConnectWise callback; also gives `Metadata.key_url`.
pub fn connectwise(body: &[u8]) -> Result<(TicketEvent, Option<String>), Unreadable> {
    let o = object(body)?;
    let kind = text(get(&o, "Type")).unwrap_or_default();
    if !kind.eq_ignore_ascii_case("ticket") {
        return Err(Unreadable(format!(
            "Type `{kind}`: only ticket callbacks start workflows"
        )));
    }
    let action = match text(get(&o, "Action"))
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "added" => Action::Created,
        "updated" => Action::Updated,
        "deleted" => Action::Deleted,
        other => {
            return Err(Unreadable(format!(
                "Action `{other}` is not added, updated or deleted"
            )));
        }
    };
    let id = text(get(&o, "ID")).ok_or_else(|| Unreadable("ID is missing".to_owned()))?;
    let key_url = get(&o, "Metadata")
        .and_then(Value::as_object)
        .and_then(|m| text(get(m, "key_url")));
    let entity: Map<String, Value> = match get(&o, "Entity") {
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(Value::Object(e)) => e,
            _ => Map::new(),
        },
        Some(Value::Object(e)) => e.clone(),
        _ => Map::new(),
    };
    let mut udfs = Map::new();
    if let Some(Value::Array(list)) = get(&entity, "customFields") {
        for u in list {
            let name = u.get("caption").and_then(Value::as_str);
            if let (Some(n), Some(v)) = (name, u.get("value")) {
                udfs.insert(n.to_owned(), v.clone());
            }
        }
    }
    let company_id = get(&entity, "company")
        .and_then(Value::as_object)
        .and_then(|c| text(get(c, "id")));
    let updated = get(&entity, "_info")
        .and_then(Value::as_object)
        .and_then(|i| time(get(i, "lastUpdated")));
    Ok((
        TicketEvent {
            action,
            ticket_id: id,
            company_id,
            fields: TicketFields {
                number: text(get(&entity, "id")),
                title: text(get(&entity, "summary")),
                description: text(get(&entity, "initialDescription")),
                queue: refs(get(&entity, "board")),
                ticket_type: refs(get(&entity, "type")),
                category: refs(get(&entity, "subType")),
                issue_type: refs(get(&entity, "item")),
                udfs,
            },
            event_time: updated,
        },
        key_url,
    ))
}

fn halo(body: &[u8]) -> Result<TicketEvent, Unreadable> {
    let o = object(body)?;
    let t = match get(&o, "ticket") {
        Some(Value::Object(t)) => t.clone(),
        _ => o.clone(),
    };
    let id =
        text(get(&t, "id")).ok_or_else(|| Unreadable("the ticket's id is missing".to_owned()))?;
    let event = text(get(&o, "event"))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let action = if event.contains("delete") {
        Action::Deleted
    } else if event.contains("new ticket") || event.contains("logged") || event.contains("created")
    {
        Action::Created
    } else {
        Action::Updated
    };
    let mut udfs = Map::new();
    if let Some(Value::Array(list)) = get(&t, "customfields") {
        for u in list {
            let name = u
                .get("label")
                .or_else(|| u.get("name"))
                .and_then(Value::as_str);
            if let (Some(n), Some(v)) = (name, u.get("value")) {
                udfs.insert(n.to_owned(), v.clone());
            }
        }
    }
    let mut queue = refs(get(&t, "team_id"));
    queue.extend(refs(get(&t, "team")));
    let mut ttype = refs(get(&t, "tickettype_id"));
    ttype.extend(refs(get(&t, "tickettype_name")));
    Ok(TicketEvent {
        action,
        ticket_id: id.clone(),
        company_id: text(get(&t, "client_id")),
        fields: TicketFields {
            number: Some(id),
            title: text(get(&t, "summary")),
            description: text(get(&t, "details")),
            queue,
            ticket_type: ttype,
            category: refs(get(&t, "category_1")),
            issue_type: Vec::new(),
            udfs,
        },
        event_time: time(get(&t, "lastactiondate")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_psa() {
        let at = br#"{"Action":"Create","Guid":"g","EntityType":"Ticket","Id":1001,"Fields":{"id":1001,"ticketNumber":"T1","title":"New starter","description":"Name: Jane","queueID":8,"issueType":10,"subIssueType":150,"companyID":175},"EventTime":"2027-01-04T10:00:00.000Z","SequenceNumber":3,"PersonID":null}"#;
        let e = read(PsaProvider::Autotask, at).unwrap();
        assert_eq!(
            (e.action, e.ticket_id.as_str(), e.company_id.as_deref()),
            (Action::Created, "1001", Some("175"))
        );
        assert_eq!(e.fields.queue, vec!["8"]);
        assert_eq!(e.fields.issue_type, vec!["10", "150"]);
        assert!(e.event_time.is_some());
        let entity = serde_json::json!({"id": 77, "summary": "Leaver", "initialDescription": "Name: Bob", "board": {"id": 1, "name": "Service"}, "type": {"id": 5, "name": "Offboarding"}, "company": {"id": 250, "identifier": "Fab"}, "customFields": [{"id": 1, "caption": "Last day", "value": "2027-02-01"}]});
        let cw = serde_json::json!({"Action": "added", "Type": "ticket", "ID": 77, "MemberId": "api", "CompanyId": "msp", "Entity": entity.to_string(), "Metadata": {"key_url": "https://cw/k"}});
        let (e, key) = connectwise(cw.to_string().as_bytes()).unwrap();
        assert_eq!(key.as_deref(), Some("https://cw/k"));
        assert_eq!(e.company_id.as_deref(), Some("250"));
        assert_eq!(e.fields.ticket_type, vec!["5", "Offboarding"]);
        assert_eq!(e.fields.udfs["Last day"], "2027-02-01");
        let halo = serde_json::json!({"event": "New Ticket Logged", "ticket": {"id": 9, "summary": "S", "details": "D", "client_id": 12, "tickettype_id": 3, "customfields": [{"name": "CFStart", "label": "Start date", "value": "2027-01-01"}]}});
        let e = read(PsaProvider::Halopsa, halo.to_string().as_bytes()).unwrap();
        assert_eq!(
            (e.action, e.company_id.as_deref()),
            (Action::Created, Some("12"))
        );
        assert_eq!(e.fields.udfs["Start date"], "2027-01-01");
        assert!(read(PsaProvider::Autotask, b"[]").is_err());
        assert!(
            read(
                PsaProvider::Autotask,
                br#"{"EntityType":"Company","Action":"Create","Id":1}"#
            )
            .is_err()
        );
    }
}
