//! Step executors: the [`Op`] trait, the [`Registry`] of ops by name, and the built-in ops.
//!
//! An op does one thing to one system and says how to undo it. It must be idempotent per
//! (run, step): a job can be delivered more than once (a worker dies after acting but before
//! reporting), so an op checks before it acts, or acts in a way that is naturally idempotent
//! ("ensure member of group"), keyed by [`OpContext::idempotency_key`].

pub mod catalog;
pub mod conn;
pub mod diagnosis;
pub mod m365;
pub mod onprem;
pub mod op;
pub mod powershell;
pub mod psa;
pub mod registry;
pub mod rmm;
pub mod testing;
pub mod timer;

pub use conn::RedisConn;
pub use op::{BoxFuture, Op, OpContext, OpError, OpOutcome, Services};
pub use registry::Registry;
