//! The routed dispatcher (in progress).
