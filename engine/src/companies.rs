//! Companies on Redis. Every company key shares the `{co}` hash slot, so a bulk import is one
//! atomic script: all of it is written, or none.
//!
//! A company with runs in flight is not deleted unless forced ([`in_flight`] says which runs and
//! gates stop it); a forced deletion is recorded in the companies' log, with who, when and what
//! was in flight.

use std::sync::Arc;

use redis::Script;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use steward_core::company::{FieldProblem, normalize, validate};
use steward_schemas::{Company, CompanyId, RunId, StepState, Timestamp};

use crate::clock::Clock;
use crate::db::Db;
use crate::store::Store;

/// A stored company with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompanyRecord {
    /// The company.
    pub company: Company,
    /// Incremented by every change; send it back to update without losing someone else's change.
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ImportReport {
    /// Companies created.
    pub created: Vec<CompanyId>,
    /// Companies changed.
    pub updated: Vec<CompanyId>,
    /// Companies already exactly as in the file.
    pub unchanged: Vec<CompanyId>,
    /// For each company updated, what changed (field: old → new).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<CompanyChanges>,
}

/// What an import changed in one existing company.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct CompanyChanges {
    /// The company.
    pub id: CompanyId,
    /// Its fields that changed, in column order.
    pub fields: Vec<FieldChange>,
}

/// One field an import changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FieldChange {
    /// The field (`defaults.usage_location`, `rmm`).
    pub field: String,
    /// Its value before (`(none)` when it had none).
    pub old: String,
    /// Its value now (`(none)` when it has none).
    pub new: String,
}

/// The company field (a JSON path) each CSV column sets. `rmm_provider`/`rmm_site` set `rmm`
/// together, as do `psa_provider`/`psa_company_id`.
const COLUMN_FIELDS: &[(&str, &[&str])] = &[
    ("name", &["name"]),
    ("tenant_id", &["tenant_id"]),
    ("identity_provider", &["identity_provider"]),
    ("mailbox_provider", &["mailbox_provider"]),
    ("ad_runner", &["ad_runner"]),
    ("entra_connect_server", &["entra_connect_server"]),
    ("exchange_server", &["exchange_server"]),
    ("exchange_runner", &["exchange_runner"]),
    ("rmm_provider", &["rmm"]),
    ("rmm_site", &["rmm"]),
    ("psa_provider", &["psa"]),
    ("psa_company_id", &["psa"]),
    ("upn_domain", &["defaults", "upn_domain"]),
    ("usage_location", &["defaults", "usage_location"]),
    ("ou", &["defaults", "ou"]),
    ("username_format", &["defaults", "username_format"]),
    ("approvers", &["approvers"]),
    ("permission_profile", &["permissions", "profile"]),
    ("custom_instructions", &["custom_instructions"]),
];

/// The company fields the CSV columns `columns` (header names, any case) set, in column order,
/// without repeats.
fn fields_of(columns: &[String]) -> Vec<&'static [&'static str]> {
    let mut out: Vec<&'static [&'static str]> = Vec::new();
    for (column, path) in COLUMN_FIELDS {
        if columns
            .iter()
            .any(|c| c.trim().eq_ignore_ascii_case(column))
            && !out.contains(path)
        {
            out.push(path);
        }
    }
    out
}

fn at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .filter(|v| !v.is_null())
}

fn set(v: &mut serde_json::Value, path: &[&str], value: Option<serde_json::Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        cur = obj
            .entry((*k).to_owned())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    }
    if let Some(obj) = cur.as_object_mut() {
        match value {
            Some(x) => obj.insert((*last).to_owned(), x),
            None => obj.remove(*last),
        };
    }
}

/// A field's value as a technician reads it in the report.
fn shown(v: Option<&serde_json::Value>) -> String {
    match v {
        None => "(none)".to_owned(),
        Some(serde_json::Value::String(s)) if s.is_empty() => "(none)".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(a)) if a.is_empty() => "(none)".to_owned(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("; "),
        Some(other) => other.to_string(),
    }
}

/// `old` with the fields at `paths` taken from `new` (what the file's columns say); every other
/// field (approvers, instructions, defaults, permission groups, settings the file has no column
/// for) is kept. Also what changed.
fn merge(
    old: &Company,
    new: &Company,
    paths: &[&'static [&'static str]],
) -> Result<(Company, Vec<FieldChange>)> {
    let corrupt = |e: serde_json::Error| Error::Corrupt(e.to_string());
    let old_json = serde_json::to_value(old).map_err(corrupt)?;
    let new_json = serde_json::to_value(new).map_err(corrupt)?;
    let mut merged = old_json.clone();
    for path in paths {
        set(&mut merged, path, at(&new_json, path).cloned());
    }
    let mut company: Company = serde_json::from_value(merged).map_err(corrupt)?;
    normalize(&mut company);
    let merged = serde_json::to_value(&company).map_err(corrupt)?;
    let changes = paths
        .iter()
        .filter_map(|path| {
            let (before, after) = (at(&old_json, path), at(&merged, path));
            (shown(before) != shown(after) || before != after).then(|| FieldChange {
                field: path.join("."),
                old: shown(before),
                new: shown(after),
            })
        })
        .collect();
    Ok((company, changes))
}

/// A company store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The settings are wrong.
    #[error("the company's settings have {} problems", .0.len())]
    Invalid(Vec<FieldProblem>),
    /// It exists already.
    #[error("company `{0}` already exists")]
    Exists(CompanyId),
    /// It does not exist.
    #[error("no company `{0}`")]
    NotFound(CompanyId),
    /// Someone else changed it first.
    #[error(
        "company `{id}` changed since version {expected} (it is at {actual}); reload it and apply your change again"
    )]
    Stale {
        /// The company.
        id: CompanyId,
        /// The version the caller had.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// Other writers kept changing the companies an import touches; nothing was written.
    #[error(
        "the companies in the file kept changing while they were imported ({0} attempts); nothing was imported; try again"
    )]
    Busy(u32),
    /// Stored data does not parse.
    #[error("stored company data is corrupt: {0}")]
    Corrupt(String),
}

/// `Result` for company calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes records only if every one is still at the version the caller read (0: absent).
/// KEYS: the company keys, then the id set. ARGV: per key, expected version and JSON.
const WRITE_ALL: &str = r"
local n = #KEYS - 1
for i = 1, n do
  local current = redis.call('GET', KEYS[i])
  local version = 0
  if current then version = cjson.decode(current).version end
  if tostring(version) ~= ARGV[2 * i - 1] then
    return {'stale', version}
  end
end
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[2 * i])
  redis.call('SADD', KEYS[n + 1], cjson.decode(ARGV[2 * i]).company.id)
end
return {'ok'}
";

/// How often an import reads and compares again after another writer got there first.
const IMPORT_ATTEMPTS: u32 = 5;

/// Companies. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Companies {
    db: Db,
    ns: String,
    clock: Arc<dyn Clock>,
    write_all: Arc<Script>,
}

impl Companies {
    /// Companies under namespace `ns`.
    pub fn new(db: Db, ns: &str, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            ns: ns.to_owned(),
            clock,
            write_all: Arc::new(Script::new(WRITE_ALL)),
        }
    }

    /// Companies in the run store's Redis and namespace, on its clock.
    pub fn for_store(store: &Store) -> Self {
        Self::new(
            store.db().clone(),
            store.keys().namespace(),
            store.clock().clone(),
        )
    }

    /// The key of a company.
    pub(crate) fn key(&self, id: &CompanyId) -> String {
        format!("{}:{{co}}:company:{id}", self.ns)
    }

    fn ids_key(&self) -> String {
        format!("{}:{{co}}:companies", self.ns)
    }

    /// The companies' log (a stream): forced deletions, with who, when and what was in flight.
    pub fn log_key(&self) -> String {
        format!("{}:{{co}}:log", self.ns)
    }

    /// Records the deletion of company `id` by `by`, and the runs that were in flight then.
    pub async fn record_deletion(
        &self,
        id: &CompanyId,
        by: &str,
        forced: bool,
        in_flight: &[RunInFlight],
    ) -> Result<()> {
        let runs = serde_json::to_string(in_flight).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.db
            .query::<String>(
                redis::cmd("XADD")
                    .arg(self.log_key())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(10_000)
                    .arg("*")
                    .arg("action")
                    .arg("deleted")
                    .arg("company")
                    .arg(id.as_str())
                    .arg("by")
                    .arg(by)
                    .arg("at")
                    .arg(self.clock.now().to_string())
                    .arg("forced")
                    .arg(if forced { "true" } else { "false" })
                    .arg("in_flight")
                    .arg(runs),
            )
            .await?;
        Ok(())
    }

    /// A company.
    pub async fn get(&self, id: &CompanyId) -> Result<Option<CompanyRecord>> {
        let json: Option<String> = self.db.query(redis::cmd("GET").arg(self.key(id))).await?;
        json.map(|j| parse(&j)).transpose()
    }

    /// Companies by id (absent ones are `None`), in one round trip.
    pub async fn get_many(&self, ids: &[CompanyId]) -> Result<Vec<Option<CompanyRecord>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let jsons: Vec<Option<String>> = self.db.query(redis::cmd("MGET").arg(&keys)).await?;
        jsons
            .iter()
            .map(|j| j.as_deref().map(parse).transpose())
            .collect()
    }

    /// Every company, by id.
    pub async fn list(&self) -> Result<Vec<CompanyRecord>> {
        let mut ids: Vec<String> = self
            .db
            .query(redis::cmd("SMEMBERS").arg(self.ids_key()))
            .await?;
        ids.sort();
        let ids: Vec<CompanyId> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        Ok(self.get_many(&ids).await?.into_iter().flatten().collect())
    }

    /// Checks and creates a company.
    pub async fn create(&self, mut company: Company) -> Result<CompanyRecord> {
        normalize(&mut company);
        let problems = validate(&company);
        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        let now = self.clock.now();
        let record = CompanyRecord {
            company,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        match self.write(&[(0, &record)]).await? {
            None => Ok(record),
            Some(_) => Err(Error::Exists(record.company.id)),
        }
    }

    /// Checks and replaces a company; with `if_version`, only if it is still at that version.
    pub async fn update(
        &self,
        mut company: Company,
        if_version: Option<u64>,
    ) -> Result<CompanyRecord> {
        normalize(&mut company);
        let problems = validate(&company);
        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        let current = self
            .get(&company.id)
            .await?
            .ok_or_else(|| Error::NotFound(company.id.clone()))?;
        if let Some(expected) = if_version
            && expected != current.version
        {
            return Err(Error::Stale {
                id: company.id,
                expected,
                actual: current.version,
            });
        }
        if current.company == company {
            return Ok(current);
        }
        let record = CompanyRecord {
            company,
            version: current.version + 1,
            created_at: current.created_at,
            updated_at: self.clock.now(),
        };
        match self.write(&[(current.version, &record)]).await? {
            None => Ok(record),
            Some(actual) => Err(Error::Stale {
                id: record.company.id,
                expected: current.version,
                actual,
            }),
        }
    }

    /// Deletes a company; whether it existed.
    pub async fn delete(&self, id: &CompanyId) -> Result<bool> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.key(id))
            .cmd("SREM")
            .arg(self.ids_key())
            .arg(id.as_str())
            .ignore();
        let (deleted,): (u64,) = self.db.pipe(&pipe).await?;
        Ok(deleted > 0)
    }

    /// Imports checked companies as the API takes them whole: every CSV column is taken as
    /// present. See [`Companies::import_columns`].
    pub async fn import(&self, companies: Vec<Company>) -> Result<ImportReport> {
        let all: Vec<String> = COLUMN_FIELDS.iter().map(|(c, _)| (*c).to_owned()).collect();
        self.import_columns(companies, &all).await
    }

    /// Imports checked companies from a CSV file whose header names `columns`: all are written
    /// or none. A new company is created as the file says. A known one gets the values of the
    /// columns the file has and keeps everything else (approvers, instructions, defaults,
    /// permission groups, settings the file has no column for), and the report lists what
    /// changed, field by field. A company already as the file says is left alone (so importing
    /// the same file twice changes nothing). A merged company is checked again as a whole.
    pub async fn import_columns(
        &self,
        companies: Vec<Company>,
        columns: &[String],
    ) -> Result<ImportReport> {
        let paths = fields_of(columns);
        for _ in 0..IMPORT_ATTEMPTS {
            let ids: Vec<CompanyId> = companies.iter().map(|c| c.id.clone()).collect();
            let current = self.get_many(&ids).await?;
            let now = self.clock.now();
            let mut report = ImportReport::default();
            let mut writes: Vec<(u64, CompanyRecord)> = Vec::new();
            let mut problems = Vec::new();
            for (mut company, existing) in companies.iter().cloned().zip(current) {
                normalize(&mut company);
                match existing {
                    None => {
                        report.created.push(company.id.clone());
                        writes.push((
                            0,
                            CompanyRecord {
                                company,
                                version: 1,
                                created_at: now,
                                updated_at: now,
                            },
                        ));
                    }
                    Some(old) => {
                        let (company, fields) = merge(&old.company, &company, &paths)?;
                        if fields.is_empty() {
                            report.unchanged.push(company.id.clone());
                            continue;
                        }
                        problems.extend(validate(&company).into_iter().map(|p| FieldProblem {
                            field: p.field,
                            message: format!("company `{}`: {}", company.id, p.message),
                            fix: p.fix,
                        }));
                        report.updated.push(company.id.clone());
                        report.changes.push(CompanyChanges {
                            id: company.id.clone(),
                            fields,
                        });
                        writes.push((
                            old.version,
                            CompanyRecord {
                                company,
                                version: old.version + 1,
                                created_at: old.created_at,
                                updated_at: now,
                            },
                        ));
                    }
                }
            }
            if !problems.is_empty() {
                return Err(Error::Invalid(problems));
            }
            let refs: Vec<(u64, &CompanyRecord)> = writes.iter().map(|(v, r)| (*v, r)).collect();
            if refs.is_empty() || self.write(&refs).await?.is_none() {
                return Ok(report);
            }
            // Someone changed one of them meanwhile: read again and redo the comparison.
        }
        Err(Error::Busy(IMPORT_ATTEMPTS))
    }

    /// Writes records if each is at its expected version; else the stored version of the first
    /// that is not.
    async fn write(&self, records: &[(u64, &CompanyRecord)]) -> Result<Option<u64>> {
        let mut inv = self.write_all.prepare_invoke();
        for (_, r) in records {
            inv.key(self.key(&r.company.id));
        }
        inv.key(self.ids_key());
        for (expected, r) in records {
            inv.arg(expected.to_string())
                .arg(serde_json::to_string(r).map_err(|e| Error::Corrupt(e.to_string()))?);
        }
        let reply: Vec<redis::Value> = self.db.script(&inv).await?;
        let first: String = reply
            .first()
            .map(redis::from_redis_value_ref)
            .transpose()
            .map_err(|e| Error::Corrupt(e.to_string()))?
            .unwrap_or_default();
        if first == "ok" {
            return Ok(None);
        }
        let version: u64 = reply
            .get(1)
            .map(redis::from_redis_value_ref)
            .transpose()
            .ok()
            .flatten()
            .unwrap_or(0);
        Ok(Some(version))
    }
}

/// Letters of other scripts that look like a Latin letter, and that letter: a small subset of
/// the Unicode confusables table (UTS #39 `confusables.txt`) for Cyrillic, Greek and a few Latin
/// variants, lowercase only (emails are compared lowercased). Not the whole table, and no NFD
/// step: enough to catch an email made to look like another.
const CONFUSABLES: &[(char, char)] = &[
    // Cyrillic.
    ('а', 'a'),
    ('ԁ', 'd'),
    ('е', 'e'),
    ('һ', 'h'),
    ('і', 'i'),
    ('ј', 'j'),
    ('ӏ', 'l'),
    ('о', 'o'),
    ('р', 'p'),
    ('ԛ', 'q'),
    ('ѕ', 's'),
    ('с', 'c'),
    ('у', 'y'),
    ('ү', 'y'),
    ('ѵ', 'v'),
    ('ԝ', 'w'),
    ('х', 'x'),
    ('ь', 'b'),
    // Greek.
    ('α', 'a'),
    ('ι', 'i'),
    ('κ', 'k'),
    ('ν', 'v'),
    ('ο', 'o'),
    ('ρ', 'p'),
    ('τ', 't'),
    ('υ', 'u'),
    ('χ', 'x'),
    ('γ', 'y'),
    ('ϲ', 'c'),
    ('ϳ', 'j'),
    // Latin variants.
    ('ı', 'i'),
    ('ɑ', 'a'),
    ('ɡ', 'g'),
    ('ℓ', 'l'),
    ('ⅰ', 'i'),
];

/// The skeleton of `s` (UTS #39, with the small table above): each look-alike replaced by the
/// Latin letter it imitates, after lowercasing. Two strings that look the same have the same
/// skeleton.
pub fn skeleton(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            CONFUSABLES
                .iter()
                .find(|(from, _)| *from == c)
                .map_or(c, |(_, to)| *to)
        })
        .collect()
}

/// Bidirectional-text controls: invisible, and able to make text read differently from what it
/// is (the CSV import refuses them in every cell too).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The fields (JSON paths) whose text a technician types, checked by [`data_problems`].
const TEXT_FIELDS: &[&[&str]] = &[
    &["name"],
    &["tenant_id"],
    &["ad_runner"],
    &["entra_connect_server"],
    &["exchange_server"],
    &["exchange_runner"],
    &["rmm", "site"],
    &["psa", "company_id"],
    &["defaults", "upn_domain"],
    &["defaults", "usage_location"],
    &["defaults", "ou"],
    &["custom_instructions"],
];

/// The rules on a company's text that hold however it arrives (the API's JSON or a CSV row):
/// no bidirectional or other control characters (line breaks only in `custom_instructions`), no
/// text a spreadsheet would run as a formula (starting with `=`, `+`, `-` or `@`), and no
/// approver email that imitates another: one mixing Latin letters with look-alikes from another
/// script (`аlice@contoso.com` with a Cyrillic `а`), or two approvers that look the same.
///
/// The API's create and update and the CSV import both call this, so they refuse the same things.
pub fn data_problems(c: &Company) -> Vec<FieldProblem> {
    let mut out = Vec::new();
    let json = serde_json::to_value(c).unwrap_or_default();
    for path in TEXT_FIELDS {
        let Some(text) = at(&json, path).and_then(|v| v.as_str()) else {
            continue;
        };
        let field = path.join(".");
        let multiline = field == "custom_instructions";
        if let Some(bad) = text.chars().find(|ch| {
            is_bidi_control(*ch)
                || (ch.is_control() && !(multiline && matches!(ch, '\n' | '\r')))
                || (!multiline && matches!(ch, '\u{2028}' | '\u{2029}'))
        }) {
            out.push(FieldProblem {
                field: field.clone(),
                message: format!(
                    "contains the invisible control character U+{:04X}",
                    u32::from(bad)
                ),
                fix: "delete it (retype the text if you cannot see it)".to_owned(),
            });
        }
        if let Some(sign) = text
            .trim_start()
            .chars()
            .next()
            .filter(|ch| matches!(ch, '=' | '+' | '-' | '@'))
        {
            out.push(FieldProblem {
                field,
                message: format!(
                    "starts with `{sign}`: text starting with = + - @ is refused, as spreadsheets run it as a formula"
                ),
                fix: "start the text differently".to_owned(),
            });
        }
    }
    let mut seen: Vec<(String, &str)> = Vec::new();
    for email in &c.approvers {
        let skel = skeleton(email);
        let lookalikes: Vec<char> = email
            .chars()
            .flat_map(char::to_lowercase)
            .filter(|ch| CONFUSABLES.iter().any(|(from, _)| from == ch))
            .collect();
        if !lookalikes.is_empty() && email.chars().any(|ch| ch.is_ascii_alphabetic()) {
            let shown: Vec<String> = lookalikes
                .iter()
                .map(|ch| format!("`{ch}` (U+{:04X})", u32::from(*ch)))
                .collect();
            out.push(FieldProblem {
                field: "approvers".to_owned(),
                message: format!(
                    "`{email}` mixes Latin letters with {}, which look like Latin letters: it reads as `{skel}` but is another address",
                    shown.join(", ")
                ),
                fix: format!("type the address again on a Latin keyboard (`{skel}`?)"),
            });
        } else if let Some((_, other)) = seen.iter().find(|(s, o)| *s == skel && *o != email) {
            out.push(FieldProblem {
                field: "approvers".to_owned(),
                message: format!(
                    "`{email}` and `{other}` look the same but are different addresses"
                ),
                fix: "keep the one that is the technician's real address".to_owned(),
            });
        }
        seen.push((skel, email));
    }
    out
}

/// A cloud-only company whose policy allows everything (`full_automation`), approved by
/// `approvers`: for demos, benchmarks and tests.
pub fn sample(id: &str, approvers: &[&str]) -> Company {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "name": format!("{id} (sample)"),
        "tenant_id": "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10",
        "identity_provider": "entra_id",
        "mailbox_provider": "exchange_online",
        "approvers": approvers,
        "permissions": {"profile": "full_automation"},
        "defaults": {"usage_location": "GB", "upn_domain": "example.com"},
    }))
    .expect("the sample company is well formed")
}

/// A run of a company that has not ended, and the gates it has open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RunInFlight {
    /// The run.
    pub run: RunId,
    /// Its status (`running`, `paused`, …).
    pub status: String,
    /// Its gates waiting for a decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_gates: Vec<String>,
}

/// The statuses of a run that has not ended.
const IN_FLIGHT: [&str; 5] = [
    "scheduled",
    "running",
    "paused",
    "cancelling",
    "rolling_back",
];

/// The runs of `company` that have not ended, oldest first, with their open gates: from the
/// intersection of the company's and each status's run index in every shard, in one round trip,
/// then their documents in another.
pub async fn in_flight(store: &Store, company: &CompanyId) -> Result<Vec<RunInFlight>> {
    let keys = store.keys();
    let mut pipe = redis::pipe();
    for shard in keys.all_shards() {
        for status in IN_FLIGHT {
            pipe.cmd("ZINTER")
                .arg(2)
                .arg(keys.runs_of_company(shard, company))
                .arg(keys.runs_in_status(shard, status))
                .arg("WITHSCORES");
        }
    }
    let replies: Vec<Vec<(String, i64)>> = store.db().pipe(&pipe).await?;
    let mut found: Vec<(i64, RunId)> = replies
        .into_iter()
        .flatten()
        .filter_map(|(id, score)| id.parse().ok().map(|run| (score, run)))
        .collect();
    found.sort();
    found.dedup();
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<RunId> = found.iter().map(|(_, run)| *run).collect();
    let docs = store.load_many(&ids).await?;
    Ok(found
        .into_iter()
        .zip(docs)
        .filter_map(|((_, run), snap)| {
            // A run that ended between the two reads, or vanished, is not in flight.
            let doc = snap?.doc;
            (!doc.state.status.is_terminal()).then(|| RunInFlight {
                run,
                status: doc.state.status.name().to_owned(),
                open_gates: doc
                    .state
                    .steps
                    .iter()
                    .filter(|(_, r)| matches!(r.state, StepState::AwaitingApproval { .. }))
                    .map(|(id, _)| id.to_string())
                    .collect(),
            })
        })
        .collect())
}

/// Creates the company if it does not exist yet.
pub async fn ensure(companies: &Companies, company: Company) -> Result<()> {
    match companies.create(company).await {
        Ok(_) | Err(Error::Exists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn parse(json: &str) -> Result<CompanyRecord> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(c: &Company) -> Vec<String> {
        data_problems(c).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn skeletons_make_look_alikes_equal() {
        assert_eq!(skeleton("\u{430}lice@msp.example"), "alice@msp.example");
        assert_eq!(skeleton("b\u{3BF}b@MSP.example"), "bob@msp.example");
        assert_eq!(skeleton("alice@msp.example"), "alice@msp.example");
    }

    #[test]
    fn text_rules_catch_controls_formulas_and_look_alikes() {
        let ok = sample("acme", &["alice@msp.example"]);
        assert!(data_problems(&ok).is_empty());
        let mut c = ok.clone();
        c.name = "Acme\u{202E}".to_owned();
        c.custom_instructions = "@SUM(A1)".to_owned();
        assert_eq!(fields(&c), ["name", "custom_instructions"]);
        let mut c = ok.clone();
        c.custom_instructions = "line one\nline two".to_owned();
        assert!(data_problems(&c).is_empty(), "line breaks are fine there");
        let mut c = ok.clone();
        c.approvers = vec!["\u{430}lice@msp.example".to_owned()];
        assert_eq!(fields(&c), ["approvers"]);
        // An address wholly in another script is not an imitation of a Latin one.
        let mut c = ok;
        c.approvers = vec!["\u{43F}\u{440}\u{438}\u{43C}\u{435}\u{440}@\u{43F}\u{440}\u{438}\u{43C}\u{435}\u{440}.\u{440}\u{444}".to_owned()];
        assert!(data_problems(&c).is_empty());
    }

    #[test]
    fn a_merge_takes_only_the_columns_given() {
        let mut old = sample("acme", &["alice@msp.example"]);
        old.custom_instructions = "keep me".to_owned();
        let mut new = sample("acme", &[]);
        new.name = "Acme Ltd".to_owned();
        let columns = ["id".to_owned(), "Name".to_owned()];
        let (merged, changes) = merge(&old, &new, &fields_of(&columns)).unwrap();
        assert_eq!(merged.name, "Acme Ltd");
        assert_eq!(merged.approvers, old.approvers);
        assert_eq!(merged.custom_instructions, "keep me");
        assert_eq!(
            changes,
            [FieldChange {
                field: "name".to_owned(),
                old: "acme (sample)".to_owned(),
                new: "Acme Ltd".to_owned()
            }]
        );
    }
}
