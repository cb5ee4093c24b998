//! The cloud ops: Microsoft Graph and Exchange Online changes, each idempotent, each recording
//! the state it saw and how to undo what it did.

pub mod prior;
