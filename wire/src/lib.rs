//! The SQLite-free core of lsync, shared by the extension and the replicator:
//! the hybrid logical clock, owned SQLite values, the changeset codec and
//! the reports of apply and restore.

pub mod changeset;
pub mod hlc;
pub mod members;
pub mod report;
pub mod value;
