//! Steward's engine runtime: the Redis run store and its transition script, the step queue (an
//! apalis backend on Redis streams), workers, the timer scheduler, configuration, and a private
//! Redis for demos, benchmarks and tests. The decisions are made by the pure core
//! (`steward-core`); this crate persists them and carries them out.

pub mod api;
pub mod auth;
pub mod bench;
pub mod clock;
pub mod companies;
pub mod config;
pub mod db;
mod durable;
pub mod embedded;
pub mod housekeeping;
pub mod inbox;
pub mod keys;
pub mod links;
pub mod metrics;
pub mod planner;
pub mod psa;
pub mod queue;
pub mod runner;
pub mod scheduler;
pub mod schedules;
pub mod secrets;
pub mod store;
pub mod tenants;
pub mod watchdog;
pub mod worker;

pub use clock::{Clock, SystemClock};
pub use config::Config;
pub use db::Db;
pub use keys::Keys;
pub use store::Store;
