//! The SQLite-free core of lsync, shared by the extension and the replicator:
//! the hybrid logical clock, owned SQLite values and the changeset codec.

pub mod changeset;
pub mod hlc;
pub mod value;
