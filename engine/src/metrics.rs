//! What an operator watches, in the Prometheus text format: `GET /metrics` on `steward serve`
//! (with the API's routes) and on every `steward worker --metrics ADDR`.
//!
//! Two kinds of figures:
//! - this process's counters and histograms ([`Metrics`], one per process, reached through its
//!   [`Store`]): HTTP requests, runs started, decisions, step outcomes by op and result, step
//!   latency, retries, jobs taken over, dropped or dead-lettered, timers fired, stuck runs found;
//! - the installation's state, read from Redis at each scrape in one pipelined round trip
//!   ([`collect`]): queue depth, waiting and delivered jobs and the oldest job's age per shard,
//!   dead letters, runs by status (`rollback_failed` included), timers armed and due, open gates
//!   and the oldest one's age. Every process shows the same values for these (gauges: a
//!   dashboard takes `max by (shard)`).
//!
//! `/metrics` can require a token (`metrics.token`): `Authorization: Bearer <token>`, the scheme
//! in any case.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::Store;

/// A metric's name and labels.
type Key = (&'static str, Vec<(&'static str, String)>);

/// Step latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// What each metric means (`# HELP`).
const HELP: &[(&str, &str)] = &[
    ("steward_redis_up", "whether Redis answered this scrape"),
    (
        "steward_http_requests_total",
        "HTTP requests by method, route and status",
    ),
    ("steward_runs_started_total", "runs started through the API"),
    (
        "steward_decisions_total",
        "approval decisions by channel and verdict",
    ),
    (
        "steward_steps_total",
        "step attempts by op, phase and result",
    ),
    (
        "steward_step_duration_seconds",
        "how long ops ran, by op and phase",
    ),
    (
        "steward_step_retries_total",
        "attempts that were retries (attempt 2 or later), by op",
    ),
    (
        "steward_jobs_taken_over_total",
        "jobs this worker took over from a consumer that stopped renewing them",
    ),
    (
        "steward_jobs_dead_lettered_total",
        "jobs this worker moved to the dead-letter stream (delivered too often)",
    ),
    (
        "steward_jobs_dropped_total",
        "jobs not run: their run is gone, they are not the current attempt, or the definition is missing",
    ),
    (
        "steward_timers_fired_total",
        "durable timers this scheduler fired",
    ),
    (
        "steward_stuck_runs_total",
        "running runs the watchdog found with nothing to move them, by what it did",
    ),
    (
        "steward_queue_depth",
        "jobs in the shard's step stream (waiting or delivered)",
    ),
    ("steward_queue_waiting", "jobs no worker has received yet"),
    (
        "steward_queue_delivered",
        "jobs a worker received and has not reported on",
    ),
    (
        "steward_queue_oldest_job_age_seconds",
        "age of the oldest job in the shard's step stream",
    ),
    (
        "steward_dead_letters",
        "entries in the shard's dead-letter stream",
    ),
    ("steward_runs", "runs by status"),
    ("steward_timers", "durable timers armed"),
    (
        "steward_timers_due",
        "durable timers due now and not fired yet",
    ),
    ("steward_gates_open", "approval gates open"),
    (
        "steward_gate_oldest_age_seconds",
        "how long the oldest open gate has waited",
    ),
];

/// A histogram's buckets, sum and count.
#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// This process's counters and histograms. Label values must come from a bounded set (op
/// names, statuses, routes): each is kept for the life of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, u64>>,
    histograms: Mutex<BTreeMap<Key, Histogram>>,
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    )
}

impl Metrics {
    /// Adds one to a counter.
    pub fn count(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    /// Adds `n` to a counter.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        *self
            .counters
            .lock()
            .expect("the metrics lock is never poisoned")
            .entry(key(name, labels))
            .or_default() += n;
    }

    /// Records a duration in a histogram.
    pub fn observe(&self, name: &'static str, labels: &[(&'static str, &str)], d: Duration) {
        let secs = d.as_secs_f64();
        let mut h = self
            .histograms
            .lock()
            .expect("the metrics lock is never poisoned");
        let h = h.entry(key(name, labels)).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// A counter's value (0 if never counted).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        self.counters
            .lock()
            .expect("the metrics lock is never poisoned")
            .get(&key(name, labels))
            .copied()
            .unwrap_or(0)
    }

    /// The counters and histograms, in the text format.
    pub fn render(&self, out: &mut Text) {
        let counters = self
            .counters
            .lock()
            .expect("the metrics lock is never poisoned")
            .clone();
        for ((name, labels), v) in &counters {
            out.sample(name, "counter", labels, &v.to_string());
        }
        let histograms = self
            .histograms
            .lock()
            .expect("the metrics lock is never poisoned")
            .clone();
        for ((name, labels), h) in &histograms {
            for (i, le) in BUCKETS.iter().enumerate() {
                let mut l = labels.clone();
                l.push(("le", le.to_string()));
                out.sample_of(name, "_bucket", "histogram", &l, &h.buckets[i].to_string());
            }
            let mut l = labels.clone();
            l.push(("le", "+Inf".to_owned()));
            out.sample_of(name, "_bucket", "histogram", &l, &h.count.to_string());
            out.sample_of(name, "_sum", "histogram", labels, &h.sum.to_string());
            out.sample_of(name, "_count", "histogram", labels, &h.count.to_string());
        }
    }
}

/// Text in the Prometheus exposition format, each family's `# HELP` and `# TYPE` once.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
    typed: std::collections::HashSet<&'static str>,
}

impl Text {
    /// Adds a sample of family `name`.
    pub fn sample(
        &mut self,
        name: &'static str,
        kind: &str,
        labels: &[(&'static str, String)],
        value: &str,
    ) {
        self.sample_of(name, "", kind, labels, value);
    }

    fn sample_of(
        &mut self,
        name: &'static str,
        suffix: &str,
        kind: &str,
        labels: &[(&'static str, String)],
        value: &str,
    ) {
        if self.typed.insert(name) {
            if let Some((_, help)) = HELP.iter().find(|(n, _)| *n == name) {
                let _ = writeln!(self.out, "# HELP {name} {help}");
            }
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
        }
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Seconds since a stream id's or a score's millisecond time, never negative.
fn age(now_ms: u64, then_ms: u64) -> String {
    format!("{:.3}", now_ms.saturating_sub(then_ms) as f64 / 1000.0)
}

/// The installation's state, per shard, read from Redis in one pipelined round trip. `Err`
/// when Redis does not answer (then only this process's counters are shown).
pub async fn collect(store: &Store, out: &mut Text) -> redis::RedisResult<()> {
    let keys = store.keys();
    let now_ms = u64::try_from(store.clock().now().as_millis()).unwrap_or(0);
    let statuses = crate::api::runs::STATUSES;
    let mut pipe = redis::pipe();
    for shard in keys.all_shards() {
        let steps = keys.steps(shard);
        pipe.cmd("XLEN").arg(&steps);
        pipe.cmd("XPENDING").arg(&steps).arg(crate::keys::GROUP);
        pipe.cmd("XRANGE")
            .arg(&steps)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        pipe.cmd("XLEN").arg(keys.dead(shard));
        pipe.cmd("ZCARD").arg(keys.timers(shard));
        pipe.cmd("ZCOUNT")
            .arg(keys.timers(shard))
            .arg("-inf")
            .arg(now_ms);
        pipe.cmd("ZCARD").arg(keys.gates(shard));
        pipe.cmd("ZRANGE")
            .arg(keys.gates(shard))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES");
        for status in statuses {
            pipe.cmd("ZCARD").arg(keys.runs_in_status(shard, status));
        }
        // The new-runs stream (the first jobs of runs not started yet) counts in the queue.
        let new_steps = keys.new_steps(shard);
        pipe.cmd("XLEN").arg(&new_steps);
        pipe.cmd("XPENDING").arg(&new_steps).arg(crate::keys::GROUP);
        pipe.cmd("XRANGE")
            .arg(&new_steps)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
    }
    let replies: Vec<redis::Value> = store.db().pipe(&pipe).await?;
    let lanes_at = 8 + statuses.len();
    let per_shard = lanes_at + 3;
    let mut runs: BTreeMap<&str, u64> = BTreeMap::new();
    for (shard, r) in keys.all_shards().zip(replies.chunks(per_shard)) {
        let s = || vec![("shard", shard.to_string())];
        let int = |v: &redis::Value| redis::from_redis_value_ref::<u64>(v).unwrap_or(0);
        // Both lanes: (XLEN, XPENDING, XRANGE) of the continuations', then of the new runs'.
        let lanes = [
            (&r[0], &r[1], &r[2]),
            (&r[lanes_at], &r[lanes_at + 1], &r[lanes_at + 2]),
        ];
        let depth: u64 = lanes.iter().map(|l| int(l.0)).sum();
        // A consumer group that does not exist yet (nothing prepared) has nothing delivered.
        let delivered: u64 = lanes
            .iter()
            .map(|l| {
                redis::from_redis_value_ref::<redis::streams::StreamPendingReply>(l.1)
                    .map_or(0, |p| p.count() as u64)
            })
            .sum();
        out.sample("steward_queue_depth", "gauge", &s(), &depth.to_string());
        out.sample(
            "steward_queue_waiting",
            "gauge",
            &s(),
            &depth.saturating_sub(delivered).to_string(),
        );
        out.sample(
            "steward_queue_delivered",
            "gauge",
            &s(),
            &delivered.to_string(),
        );
        let oldest = lanes
            .iter()
            .filter_map(|l| {
                redis::from_redis_value_ref::<redis::streams::StreamRangeReply>(l.2)
                    .ok()
                    .and_then(|reply| reply.ids.first().map(|e| e.id.clone()))
                    .and_then(|id| {
                        id.split_once('-')
                            .and_then(|(ms, _)| ms.parse::<u64>().ok())
                    })
            })
            .min();
        out.sample(
            "steward_queue_oldest_job_age_seconds",
            "gauge",
            &s(),
            &oldest.map_or_else(|| "0".to_owned(), |ms| age(now_ms, ms)),
        );
        out.sample(
            "steward_dead_letters",
            "gauge",
            &s(),
            &int(&r[3]).to_string(),
        );
        out.sample("steward_timers", "gauge", &s(), &int(&r[4]).to_string());
        out.sample("steward_timers_due", "gauge", &s(), &int(&r[5]).to_string());
        out.sample("steward_gates_open", "gauge", &s(), &int(&r[6]).to_string());
        let oldest_gate = redis::from_redis_value_ref::<Vec<(String, f64)>>(&r[7])
            .ok()
            .and_then(|v| v.first().map(|(_, score)| *score as u64));
        out.sample(
            "steward_gate_oldest_age_seconds",
            "gauge",
            &s(),
            &oldest_gate.map_or_else(|| "0".to_owned(), |ms| age(now_ms, ms)),
        );
        for (status, v) in statuses.iter().zip(&r[8..lanes_at]) {
            *runs.entry(status).or_default() += int(v);
        }
    }
    for (status, n) in runs {
        out.sample(
            "steward_runs",
            "gauge",
            &[("status", status.to_owned())],
            &n.to_string(),
        );
    }
    Ok(())
}

/// The whole page: whether Redis answered, the installation's state, this process's counters.
pub async fn page(store: &Store) -> String {
    let mut state = Text::default();
    let up = collect(store, &mut state).await.is_ok();
    let mut out = Text::default();
    out.sample("steward_redis_up", "gauge", &[], if up { "1" } else { "0" });
    if up {
        out.out.push_str(&state.out);
        out.typed.extend(state.typed);
    }
    store.metrics().render(&mut out);
    out.finish()
}

/// Whether a request may read `/metrics`: always without a configured token; with one, only
/// with `Authorization: Bearer <token>` (the scheme in any case).
pub fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::api::extract::bearer_token)
    else {
        return false;
    };
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /metrics`: the page, or 401 without the configured token.
pub async fn respond(store: &Store, token: Option<&str>, headers: &HeaderMap) -> Response {
    if !authorized(headers, token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "send Authorization: Bearer <metrics.token>\n",
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        page(store).await,
    )
        .into_response()
}

/// The router a worker serves its metrics with (`steward worker --metrics ADDR`).
pub fn router(store: Store, token: Option<String>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: HeaderMap| {
            let store = store.clone();
            let token = token.clone();
            async move { respond(&store, token.as_deref(), &headers).await }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        let m = Metrics::default();
        m.count(
            "steward_steps_total",
            &[("op", "ledger"), ("result", "succeeded")],
        );
        m.count(
            "steward_steps_total",
            &[("op", "ledger"), ("result", "succeeded")],
        );
        m.observe(
            "steward_step_duration_seconds",
            &[("op", "ledger")],
            Duration::from_millis(70),
        );
        let mut t = Text::default();
        m.render(&mut t);
        let text = t.finish();
        assert!(
            text.contains("# TYPE steward_steps_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("steward_steps_total{op=\"ledger\",result=\"succeeded\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("steward_step_duration_seconds_bucket{op=\"ledger\",le=\"0.05\"} 0\n")
                && text
                    .contains("steward_step_duration_seconds_bucket{op=\"ledger\",le=\"0.1\"} 1\n")
                && text.contains("steward_step_duration_seconds_count{op=\"ledger\"} 1\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE steward_step_duration_seconds").count(),
            1
        );
    }

    #[test]
    fn the_token_is_checked_with_any_case_of_bearer() {
        let mut h = HeaderMap::new();
        assert!(authorized(&h, None));
        assert!(!authorized(&h, Some("s3cret")));
        for (value, ok) in [
            ("Bearer s3cret", true),
            ("bearer s3cret", true),
            ("BEARER s3cret", true),
            ("Bearer s3cre", false),
            ("Basic s3cret", false),
            ("s3cret", false),
        ] {
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(authorized(&h, Some("s3cret")), ok, "{value}");
        }
    }

    #[test]
    fn the_grafana_dashboard_asks_only_for_metrics_steward_exports() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/steward.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut seen = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("steward_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name);
                    assert!(
                        HELP.iter().any(|(n, _)| *n == family),
                        "{}: `{name}` is not a metric Steward exports",
                        panel["title"]
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen >= 20, "{seen}");
    }
}
