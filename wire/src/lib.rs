//! The SQLite-free core of lsync, shared by the extension and the replicator:
//! the hybrid logical clock and (later) the changeset codec.

pub mod hlc;
