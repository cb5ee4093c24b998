//! Durable schedules: a cron expression with a time zone, stored in Redis and fired through the
//! scheduler's timer index.
//!
//! **Firing once per tick.** Each schedule has one entry in shard 0's timer index (`sched:<id>`,
//! scored by its next tick), beside the runs' timers, so the scheduler that reads due timers
//! finds it in the same pipelined read. Firing is one script (`lua/schedule_fire.lua`): it moves
//! the entry to the next tick only if it still holds the tick the scheduler read (compare and
//! set), records the tick as fired and appends a *firing* to the firings stream, atomically —
//! so however many `steward serve` replicas see the tick, one firing is recorded, and a
//! scheduler killed mid-way leaves either nothing or the whole firing.
//!
//! **Missed ticks fire once.** The next tick is computed from the later of now and the tick
//! being fired: a schedule whose ticks were missed while everything was down fires once at
//! restart, then resumes its cadence.
//!
//! **Targets.** The firings stream is read by `steward serve` in a consumer group
//! ([`run_firings`]); a firing is acknowledged once its target ran (a crashed consumer's
//! firings are taken over). Targets: the built-in `token_refresh` (every connected tenant whose
//! refresh is due, see [`crate::tenants`]), or a `workflow` with inputs per company: each run
//! is started at most once per firing (a marker is set before the start, so a retried firing
//! never starts a second run for a company).

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use redis::Script;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use steward_schemas::{CompanyId, Timestamp};
use tracing::{info, warn};

use crate::store::Store;

/// The prefix of schedules' entries in the timer index.
pub const TIMER_PREFIX: &str = "sched:";

/// The firing script.
const FIRE: &str = include_str!("../lua/schedule_fire.lua");

/// The consumer group that runs firings.
const GROUP: &str = "serve";

/// The built-in token refresh schedule's id.
pub const TOKEN_REFRESH: &str = "token-refresh";

/// What a schedule does when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// Refresh the delegated token of every connected tenant whose refresh is due (at least
    /// every 7 days each, jittered).
    TokenRefresh,
    /// Start a workflow once per listed company, with that company's inputs.
    Workflow {
        /// The workflow's name.
        workflow: String,
        /// One run per entry.
        runs: Vec<WorkflowRun>,
    },
}

/// One run a workflow schedule starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRun {
    /// The company.
    pub company: CompanyId,
    /// The inputs.
    #[serde(default)]
    pub inputs: Map<String, Value>,
}

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Schedule {
    /// Its id: lowercase letters, digits and `-`.
    pub id: String,
    /// The cron expression: five fields (`minute hour day month weekday`), or six with seconds
    /// first.
    pub cron: String,
    /// The IANA time zone the expression is read in (`Europe/London`); default `UTC`.
    pub time_zone: String,
    /// What it does.
    pub target: Target,
    /// Who added it.
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
}

/// A schedule and where it stands.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ScheduleView {
    /// The schedule.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Its next tick.
    pub next_tick: Option<Timestamp>,
    /// The last tick it fired.
    pub last_fired: Option<Timestamp>,
}

/// Why a schedule operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Bad input; the message names the field and the fix.
    #[error("{field}: {message}; {fix}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
        /// The fix.
        fix: String,
    },
    /// No such schedule.
    #[error("no schedule `{0}`; see steward schedules list")]
    NotFound(String),
    /// A schedule with that id exists.
    #[error("a schedule `{0}` exists; remove it first or choose another id")]
    Exists(String),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct Cadence {
    schedule: cron::Schedule,
    tz: chrono_tz::Tz,
}

impl Cadence {
    /// Parses `expr` (five fields, or six with seconds) in `time_zone`.
    pub fn parse(expr: &str, time_zone: &str) -> Result<Self> {
        let fields = expr.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expr}"),
            6 => expr.to_owned(),
            _ => {
                return Err(Error::Invalid {
                    field: "cron",
                    message: format!("`{expr}` has {fields} fields"),
                    fix: "write five fields, `minute hour day-of-month month day-of-week` (e.g. `0 3 * * SUN`), or six with seconds first".to_owned(),
                });
            }
        };
        let schedule = cron::Schedule::from_str(&full).map_err(|e| Error::Invalid {
            field: "cron",
            message: format!("`{expr}` is not a cron expression: {e}"),
            fix: "write e.g. `0 3 * * SUN` (03:00 every Sunday) or `*/15 * * * *`".to_owned(),
        })?;
        let tz = chrono_tz::Tz::from_str(time_zone).map_err(|_| Error::Invalid {
            field: "time_zone",
            message: format!("`{time_zone}` is not an IANA time zone"),
            fix: "write e.g. `UTC`, `Europe/London` or `America/New_York`".to_owned(),
        })?;
        Ok(Self { schedule, tz })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let local = t.to_datetime().with_timezone(&self.tz);
        self.schedule
            .after(&local)
            .next()
            .map(|n| Timestamp::from_datetime(n.with_timezone(&Utc)))
    }
}

/// Schedules on Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Schedules {
    store: Store,
    fire: Arc<Script>,
}

fn valid_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(Error::Invalid {
            field: "id",
            message: format!("`{id}` is not a schedule id"),
            fix: "use 1 to 64 lowercase letters, digits and `-`".to_owned(),
        });
    }
    Ok(())
}

impl Schedules {
    /// Schedules beside `store`'s runs.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            fire: Arc::new(Script::new(FIRE)),
        }
    }

    /// The slot of shard 0, where the timer entries live: the schedules' keys share it so the
    /// firing script touches one slot.
    fn tag(&self) -> String {
        let timers = self.store.keys().timers(0);
        timers.strip_suffix(":timers").unwrap_or(&timers).to_owned()
    }

    fn defs_key(&self) -> String {
        format!("{}:sched:defs", self.tag())
    }

    fn last_key(&self) -> String {
        format!("{}:sched:last", self.tag())
    }

    /// The firings stream.
    pub fn firings_key(&self) -> String {
        format!("{}:sched:firings", self.tag())
    }

    fn started_key(&self, firing: &str, company: &str) -> String {
        format!("{}:sched:started:{firing}:{company}", self.tag())
    }

    fn member(id: &str) -> String {
        format!("{TIMER_PREFIX}{id}")
    }

    /// Adds a schedule, its first tick armed in the timer index.
    pub async fn add(&self, schedule: Schedule) -> Result<ScheduleView> {
        valid_id(&schedule.id)?;
        let cadence = Cadence::parse(&schedule.cron, &schedule.time_zone)?;
        if let Target::Workflow { workflow, runs } = &schedule.target {
            if workflow.trim().is_empty() {
                return Err(Error::Invalid {
                    field: "target.workflow",
                    message: "no workflow named".to_owned(),
                    fix: "name a workflow of GET /v1/workflows".to_owned(),
                });
            }
            if runs.is_empty() {
                return Err(Error::Invalid {
                    field: "target.runs",
                    message: "no company listed".to_owned(),
                    fix: "list at least one {company, inputs}".to_owned(),
                });
            }
        }
        let now = self.store.clock().now();
        let next = cadence.next_after(now).ok_or_else(|| Error::Invalid {
            field: "cron",
            message: format!("`{}` never fires again", schedule.cron),
            fix: "give an expression with future ticks".to_owned(),
        })?;
        let text = serde_json::to_string(&schedule).expect("a schedule serialises");
        let created: bool = self
            .store
            .db()
            .query(
                redis::cmd("HSETNX")
                    .arg(self.defs_key())
                    .arg(&schedule.id)
                    .arg(text),
            )
            .await?;
        if !created {
            return Err(Error::Exists(schedule.id));
        }
        self.store
            .db()
            .query::<()>(
                redis::cmd("ZADD")
                    .arg(self.store.keys().timers(0))
                    .arg(next.as_millis())
                    .arg(Self::member(&schedule.id)),
            )
            .await?;
        Ok(ScheduleView {
            schedule,
            next_tick: Some(next),
            last_fired: None,
        })
    }

    /// Adds the built-in token refresh (every minute: each round refreshes the tenants that are
    /// due) unless it exists.
    pub async fn ensure_token_refresh(&self) -> Result<()> {
        match self
            .add(Schedule {
                id: TOKEN_REFRESH.to_owned(),
                cron: "* * * * *".to_owned(),
                time_zone: "UTC".to_owned(),
                target: Target::TokenRefresh,
                created_by: "steward".to_owned(),
                created_at: self.store.clock().now(),
            })
            .await
        {
            Ok(_) | Err(Error::Exists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes a schedule; whether it existed.
    pub async fn remove(&self, id: &str) -> Result<bool> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(self.defs_key(), id)
            .zrem(self.store.keys().timers(0), Self::member(id))
            .ignore()
            .hdel(self.last_key(), id)
            .ignore();
        let (n,): (u64,) = self.store.db().pipe(&pipe).await?;
        Ok(n > 0)
    }

    /// Every schedule.
    pub async fn list(&self) -> Result<Vec<ScheduleView>> {
        let defs: HashMap<String, String> = self
            .store
            .db()
            .query(redis::cmd("HGETALL").arg(self.defs_key()))
            .await?;
        let mut out = Vec::new();
        let mut ids: Vec<&String> = defs.keys().collect();
        ids.sort();
        for id in ids {
            if let Some(v) = self.view_of(&defs[id]).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// One schedule.
    pub async fn get(&self, id: &str) -> Result<Option<ScheduleView>> {
        let text: Option<String> = self
            .store
            .db()
            .query(redis::cmd("HGET").arg(self.defs_key()).arg(id))
            .await?;
        match text {
            Some(t) => self.view_of(&t).await,
            None => Ok(None),
        }
    }

    async fn view_of(&self, text: &str) -> Result<Option<ScheduleView>> {
        let Ok(schedule) = serde_json::from_str::<Schedule>(text) else {
            return Ok(None);
        };
        let next: Option<f64> = self
            .store
            .db()
            .query(
                redis::cmd("ZSCORE")
                    .arg(self.store.keys().timers(0))
                    .arg(Self::member(&schedule.id)),
            )
            .await?;
        let last: Option<i64> = self
            .store
            .db()
            .query(redis::cmd("HGET").arg(self.last_key()).arg(&schedule.id))
            .await?;
        Ok(Some(ScheduleView {
            schedule,
            next_tick: next.map(|n| Timestamp::from_millis(n as i64)),
            last_fired: last.map(Timestamp::from_millis),
        }))
    }

    /// Fires a schedule now, outside its cadence (its ticks are unchanged); the firing's id.
    pub async fn run_now(&self, id: &str, by: &str) -> Result<String> {
        if self.get(id).await?.is_none() {
            return Err(Error::NotFound(id.to_owned()));
        }
        let now = self.store.clock().now();
        Ok(self
            .store
            .db()
            .query(
                redis::cmd("XADD")
                    .arg(self.firings_key())
                    .arg("*")
                    .arg("id")
                    .arg(id)
                    .arg("tick")
                    .arg(now.as_millis())
                    .arg("by")
                    .arg(by),
            )
            .await?)
    }

    /// Fires the schedule of timer entry `sched:<id>` if its tick is still the one due
    /// (the scheduler's hook); whether the entry is dealt with.
    pub async fn fire_timer(&self, id: &str) -> Result<bool> {
        let timers = self.store.keys().timers(0);
        let member = Self::member(id);
        let Some(def) = self.get(id).await? else {
            // Removed meanwhile: drop its entry.
            self.store
                .db()
                .query::<()>(redis::cmd("ZREM").arg(&timers).arg(&member))
                .await?;
            return Ok(true);
        };
        let Some(tick) = def.next_tick else {
            return Ok(true);
        };
        let now = self.store.clock().now();
        // Missed ticks fire once: the next tick is after now, not after the missed one.
        let after = if tick > now { tick } else { now };
        let next = Cadence::parse(&def.schedule.cron, &def.schedule.time_zone)
            .ok()
            .and_then(|c| c.next_after(after));
        let mut inv = self.fire.prepare_invoke();
        inv.key(&timers)
            .key(self.last_key())
            .key(self.firings_key())
            .arg(&member)
            .arg(tick.as_millis())
            .arg(next.map_or(-1, Timestamp::as_millis))
            .arg(id);
        let fired: i64 = self.store.db().script(&inv).await?;
        if fired == 1 {
            info!(schedule = id, tick = %tick, "schedule fired");
        }
        Ok(true)
    }
}

/// What runs a firing's target.
pub trait Runner: Send + Sync {
    /// Runs `schedule`'s target for the firing `firing`. An error leaves the firing pending, to
    /// be run again.
    fn run<'a>(
        &'a self,
        schedule: &'a Schedule,
        firing: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// The targets of `steward serve`: the token refresh and workflows.
#[derive(Debug, Clone)]
pub struct ServeRunner {
    /// The schedules (for the per-company start markers).
    pub schedules: Schedules,
    /// The tenants and the token client.
    pub tenants: Option<(crate::tenants::Tenants, steward_workers::m365::TokenClient)>,
    /// Starts runs under policy.
    pub planner: crate::planner::Planner,
    /// The workflows offered.
    pub workflows: crate::planner::Library,
}

impl Runner for ServeRunner {
    fn run<'a>(
        &'a self,
        schedule: &'a Schedule,
        firing: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            match &schedule.target {
                Target::TokenRefresh => {
                    let Some((tenants, tokens)) = &self.tenants else {
                        return Ok(());
                    };
                    loop {
                        let (ok, failed) = tenants
                            .refresh_round(tokens, 500, 64)
                            .await
                            .map_err(|e| e.to_string())?;
                        if ok + failed > 0 {
                            info!(refreshed = ok, failed, "token refresh round");
                        }
                        if ok + failed < 500 {
                            return Ok(());
                        }
                    }
                }
                Target::Workflow { workflow, runs } => {
                    let current = self.workflows.current();
                    let Some(plan) = current.get(workflow).cloned() else {
                        warn!(schedule = %schedule.id, workflow, "a schedule's workflow is not offered; nothing started");
                        return Ok(());
                    };
                    for r in runs {
                        let marker = self.schedules.started_key(firing, r.company.as_str());
                        let first: Option<String> = self
                            .schedules
                            .store
                            .db()
                            .query(
                                redis::cmd("SET")
                                    .arg(&marker)
                                    .arg(1)
                                    .arg("NX")
                                    .arg("EX")
                                    .arg(7 * 86_400),
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                        if first.is_none() {
                            continue;
                        }
                        match self
                            .planner
                            .start(crate::planner::StartRun {
                                plan: plan.clone(),
                                company: r.company.clone(),
                                inputs: r.inputs.clone(),
                                requested_by: format!("schedule:{}", schedule.id),
                                ticket: None,
                                start_at: None,
                            })
                            .await
                        {
                            Ok(run) => {
                                info!(schedule = %schedule.id, run.id = %run, company = %r.company, "schedule started a run");
                            }
                            Err(e) => {
                                warn!(schedule = %schedule.id, company = %r.company, error = %e, "a schedule's run did not start");
                            }
                        }
                    }
                    Ok(())
                }
            }
        })
    }
}

/// Runs firings until `shutdown`: reads the firings stream in consumer group `serve` (a dead
/// consumer's firings are taken over after a minute), runs each target, acknowledges it.
pub async fn run_firings(
    schedules: Schedules,
    runner: Arc<dyn Runner>,
    consumer: String,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let key = schedules.firings_key();
    let db = schedules.store.db().clone();
    let _: Result<(), _> = db
        .query(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM"),
        )
        .await;
    loop {
        let batch = read_firings(&db, &key, &consumer).await;
        let entries = match batch {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "cannot read schedule firings; trying again");
                Vec::new()
            }
        };
        for (entry, fields) in &entries {
            let Some(id) = fields.get("id") else {
                let _: Result<(), _> = db
                    .query(redis::cmd("XACK").arg(&key).arg(GROUP).arg(entry))
                    .await;
                continue;
            };
            let done = match schedules.get(id).await {
                Ok(Some(view)) => match runner.run(&view.schedule, entry).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(schedule = %id, error = %e, "a schedule's target failed; it will be run again");
                        false
                    }
                },
                Ok(None) => true,
                Err(e) => {
                    warn!(schedule = %id, error = %e, "cannot read a schedule");
                    false
                }
            };
            if done {
                let _: Result<(), _> = db
                    .query(redis::cmd("XACK").arg(&key).arg(GROUP).arg(entry))
                    .await;
            }
        }
        if entries.is_empty() {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

type Entries = Vec<(String, HashMap<String, String>)>;

async fn read_firings(
    db: &crate::db::Db,
    key: &str,
    consumer: &str,
) -> redis::RedisResult<Entries> {
    // Firings a dead consumer left, first.
    let claimed: redis::Value = db
        .query(
            redis::cmd("XAUTOCLAIM")
                .arg(key)
                .arg(GROUP)
                .arg(consumer)
                .arg(60_000)
                .arg("0")
                .arg("COUNT")
                .arg(10),
        )
        .await?;
    let mut out = entries_of(claimed.as_sequence().and_then(|s| s.get(1)));
    if out.is_empty() {
        let read: redis::Value = db
            .query(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(10)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(">"),
            )
            .await?;
        // [[key, [entries]]] (RESP2) or a map (RESP3).
        let streams = match &read {
            redis::Value::Array(s) => s
                .first()
                .and_then(|k| k.as_sequence())
                .and_then(|k| k.get(1)),
            redis::Value::Map(m) => m.first().map(|(_, v)| v),
            _ => None,
        };
        out = entries_of(streams);
    }
    Ok(out)
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn entries_of(v: Option<&redis::Value>) -> Entries {
    let Some(list) = v.and_then(|v| v.as_sequence()) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let parts = e.as_sequence()?;
            let id = text(parts.first()?)?;
            let fields = parts.get(1)?.as_sequence()?;
            let map = fields
                .chunks(2)
                .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
                .collect();
            Some((id, map))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadences_read_five_or_six_fields_in_their_time_zone() {
        let c = Cadence::parse("0 3 * * *", "Europe/London").unwrap();
        // 2026-07-01 00:00 UTC: 03:00 London (BST) is 02:00 UTC.
        let t = Timestamp::from_datetime("2026-07-01T00:00:00Z".parse().unwrap());
        assert_eq!(
            c.next_after(t).unwrap().to_string(),
            "2026-07-01T02:00:00.000000Z"
        );
        assert!(Cadence::parse("*/10 * * * * *", "UTC").is_ok());
        for (expr, tz, field) in [
            ("0 3 * *", "UTC", "cron"),
            ("0 99 * * *", "UTC", "cron"),
            ("0 3 * * *", "Mars/Olympus", "time_zone"),
        ] {
            match Cadence::parse(expr, tz) {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field, "{expr} {tz}"),
                other => panic!("{expr} {tz}: {other:?}"),
            }
        }
        assert!(valid_id("token-refresh").is_ok());
        assert!(valid_id("Bad Id").is_err());
    }
}
