//! Helpers for the end-to-end tests: they load the real `liblsync.so` into
//! rusqlite's bundled SQLite, exactly as an app would, and run the real
//! `lsync` binary. The one helper layer of the tests: every name here means
//! one thing, so `use lsync_tests::*` is safe (`tests/python/test_structure.py`
//! keeps helper names unique).

mod artifacts;
mod by_gid;
mod connection;
mod hostile;
mod library;
mod lsync;
mod process;
mod proxy;
mod query;
mod rogue;
mod sidecar;
mod tempdir;

pub use artifacts::{ext_path, lsync_bin};
pub use by_gid::{dump_by_gid, wait_same_by_gid};
pub use connection::{current_schema_version, load, open, open_plain, testing_mode};
pub use hostile::{all_tables, Hostile, HOSTILE_SCHEMA};
pub use library::*;
pub use lsync::*;
pub use process::*;
pub use proxy::Link;
pub use query::*;
pub use rogue::*;
pub use sidecar::*;
pub use tempdir::TempDir;
