//! One-time secret links.
