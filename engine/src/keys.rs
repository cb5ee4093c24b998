//! Every Redis key Steward uses, derived from one namespace in one place.
//!
//! Every key of a run carries its shard's hash tag (`{s007}`), and each shard has its own step
//! streams (continuations and new runs), timer index, run index and ended-runs stream, so a transition's script touches one slot
//! and the keyspace is ready for Redis Cluster. The shard of a run comes from its id.

use steward_schemas::RunId;

/// The consumer group every worker reads step streams with.
pub const GROUP: &str = "workers";

/// Which of a shard's two step streams a job is queued in. Workers read continuations first
/// (see `crate::queue`), so a run in flight finishes before a burst of new runs has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Jobs of runs already under way (`Keys::steps`).
    Continuing,
    /// The first jobs of runs that have not started a step yet (`Keys::new_steps`).
    New,
}

impl Lane {
    /// Both lanes, continuations first.
    pub const ALL: [Lane; 2] = [Lane::Continuing, Lane::New];

    /// The prefix of a run hash's `j:<step>:<seq>` value that names the lane (see
    /// [`job_ref`]).
    pub fn prefix(self) -> &'static str {
        match self {
            Lane::Continuing => "",
            Lane::New => "n:",
        }
    }
}

/// What a run hash's `j:<step>:<seq>` field holds for a job queued as entry `id` in `lane`:
/// the entry id, prefixed with `n:` in the new-runs stream (`commit.lua` writes the same).
pub fn job_ref(lane: Lane, id: &str) -> String {
    format!("{}{id}", lane.prefix())
}

/// The lane and entry id a run hash's `j:<step>:<seq>` value names (see [`job_ref`]).
pub fn parse_job_ref(value: &str) -> (Lane, &str) {
    match value.strip_prefix("n:") {
        Some(id) => (Lane::New, id),
        None => (Lane::Continuing, value),
    }
}

/// Key names for one namespace and shard count.
#[derive(Debug, Clone)]
pub struct Keys {
    ns: String,
    shards: u16,
}

/// A namespace or shard count that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// The namespace has characters that would break the key layout.
    #[error(
        "redis namespace `{0}`: use letters, digits, `-`, `_` and `.` only (no braces, colons or spaces)"
    )]
    Namespace(String),
    /// The shard count is out of range.
    #[error("redis.shards = {0}: use 1 to {MAX_SHARDS}")]
    Shards(i64),
    /// The shard count is not a whole number.
    #[error("redis.shards = `{0}`: use a whole number from 1 to {MAX_SHARDS}")]
    ShardsText(String),
}

/// The most shards an installation may spread runs over.
pub const MAX_SHARDS: u16 = 1000;

/// Checks a shard count: the one rule the config file, `STEWARD_REDIS__SHARDS` and `--shards`
/// share, so they agree on the limits and say the same thing.
pub fn check_shards(n: i64) -> Result<u16, KeysError> {
    u16::try_from(n)
        .ok()
        .filter(|s| (1..=MAX_SHARDS).contains(s))
        .ok_or(KeysError::Shards(n))
}

/// A shard count written as text (a flag, an environment variable).
pub fn parse_shards(text: &str) -> Result<u16, KeysError> {
    match text.trim().parse::<i64>() {
        Ok(n) => check_shards(n),
        Err(_) => Err(KeysError::ShardsText(text.chars().take(40).collect())),
    }
}

impl Keys {
    /// Keys under `namespace`, spread over `shards` shards.
    pub fn new(namespace: &str, shards: u16) -> Result<Self, KeysError> {
        let ok = !namespace.is_empty()
            && namespace.len() <= 64
            && namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(KeysError::Namespace(namespace.to_owned()));
        }
        check_shards(i64::from(shards))?;
        Ok(Self {
            ns: namespace.to_owned(),
            shards,
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// How many shards.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// Every shard number.
    pub fn all_shards(&self) -> impl Iterator<Item = u16> + use<> {
        0..self.shards
    }

    /// The shard of a run: from the random part of its ULID, so runs spread evenly.
    pub fn shard_of(&self, run: RunId) -> u16 {
        let random = run.as_ulid().random();
        u16::try_from(random % u128::from(self.shards)).expect("a remainder of a u16 fits a u16")
    }

    fn tag(&self, shard: u16) -> String {
        format!("{}:{{s{shard:03}}}", self.ns)
    }

    /// The run's hash: `v` (version), `c`, `h`, `s:<step>` (the run in parts), `j:<step>:<seq>`
    /// (where a queued job is: see [`job_ref`]).
    pub fn run(&self, run: RunId) -> String {
        format!("{}:run:{run}", self.tag(self.shard_of(run)))
    }

    /// The run's history stream, as builds up to 5c13466 wrote it (one entry per transition):
    /// read before the log, and removed with the run.
    pub fn history(&self, run: RunId) -> String {
        format!("{}:hist:{run}", self.tag(self.shard_of(run)))
    }

    /// The run's history log: a string of one JSON entry per transition, each ending in a
    /// newline (`APPEND`: a few hundred bytes for a run parked at a gate, where a stream would
    /// preallocate a 4 KiB node).
    pub fn log(&self, run: RunId) -> String {
        format!("{}:log:{run}", self.tag(self.shard_of(run)))
    }

    /// A shard's step stream for runs under way (every job but a run's first ones).
    pub fn steps(&self, shard: u16) -> String {
        format!("{}:steps", self.tag(shard))
    }

    /// A shard's step stream for the first jobs of runs that have not started yet.
    pub fn new_steps(&self, shard: u16) -> String {
        format!("{}:steps:new", self.tag(shard))
    }

    /// A shard's step stream of `lane`.
    pub fn stream(&self, shard: u16, lane: Lane) -> String {
        match lane {
            Lane::Continuing => self.steps(shard),
            Lane::New => self.new_steps(shard),
        }
    }

    /// A shard's timer index.
    pub fn timers(&self, shard: u16) -> String {
        format!("{}:timers", self.tag(shard))
    }

    /// A shard's ended-runs stream.
    pub fn ended(&self, shard: u16) -> String {
        format!("{}:ended", self.tag(shard))
    }

    /// A shard's run index.
    pub fn runs(&self, shard: u16) -> String {
        format!("{}:runs", self.tag(shard))
    }

    /// A shard's dead-letter stream (jobs delivered too often without an outcome).
    pub fn dead(&self, shard: u16) -> String {
        format!("{}:dead", self.tag(shard))
    }

    /// An approver's inbox in a shard: open gates (`<run>|<step>`) by opening time (ms).
    pub fn inbox(&self, shard: u16, approver: &str) -> String {
        format!("{}:inbox:{}", self.tag(shard), approver.to_lowercase())
    }

    /// A shard's open approval gates (`<run>|<step>`) by opening time (ms), for `/metrics`.
    pub fn gates(&self, shard: u16) -> String {
        format!("{}:gates", self.tag(shard))
    }

    /// A shard's runs of a company, by creation time (µs).
    pub fn runs_of_company(&self, shard: u16, company: &steward_schemas::CompanyId) -> String {
        format!("{}:runs:company:{company}", self.tag(shard))
    }

    /// A shard's runs in a status, by creation time (µs).
    pub fn runs_in_status(&self, shard: u16, status: &str) -> String {
        format!("{}:runs:status:{status}", self.tag(shard))
    }

    /// The eight keys of a run's transition script, in the script's order.
    pub fn commit_keys(&self, run: RunId) -> [String; 8] {
        let shard = self.shard_of(run);
        [
            self.run(run),
            self.log(run),
            self.steps(shard),
            self.timers(shard),
            self.ended(shard),
            self.runs(shard),
            self.dead(shard),
            self.new_steps(shard),
        ]
    }

    /// A stored workflow definition, by content hash.
    pub fn definition(&self, hash: &str) -> String {
        format!("{}:def:{hash}", self.ns)
    }

    /// A one-time secret link's sealed value, by the link's id (expires with the link). Each link
    /// has its own slot (`{<id>}`), shared with its record.
    pub fn secret_link(&self, id: &str) -> String {
        format!("{}:sl:{{{id}}}:v", self.ns)
    }

    /// A one-time secret link's record (label, creation, expiry, when it was opened).
    pub fn secret_link_record(&self, id: &str) -> String {
        format!("{}:sl:{{{id}}}:r", self.ns)
    }

    /// The pattern that matches every one-time secret link's sealed value (for rotation).
    pub fn secret_link_pattern(&self) -> String {
        format!("{}:sl:*:v", self.ns)
    }

    /// The counter `redis.durability = waitaof` increments before each `WAITAOF` (see
    /// `crate::durable`), in a shard's slot so that on a cluster it is written on the master
    /// that holds the shard's runs.
    pub fn durability_marker(&self, shard: u16) -> String {
        format!("{}:durable", self.tag(shard))
    }

    /// Installation facts (the shard count), checked at startup.
    pub fn meta(&self) -> String {
        format!("{}:meta", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_keys_share_one_hash_tag() {
        let keys = Keys::new("steward", 8).unwrap();
        let run = RunId::from_ulid(ulid::Ulid::from_parts(1, 12345));
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned();
        let all = keys.commit_keys(run);
        assert!(all.iter().all(|k| tag(k) == tag(&all[0])), "{all:?}");
        assert_eq!(tag(&all[0]), format!("{{s{:03}}}", 12345 % 8));
        assert!(Keys::new("a:b", 8).is_err());
        assert!(Keys::new("a{b}", 8).is_err());
        assert!(Keys::new("ok", 0).is_err());
        for lane in Lane::ALL {
            assert_eq!(parse_job_ref(&job_ref(lane, "17-3")), (lane, "17-3"));
        }
    }
}
