//! What `lsync bench capture --schema` writes: each schema's tables, their
//! untimed setup, and the timed insert and update of its main table.

use std::path::Path;

use rusqlite::Connection;

use super::clock::Timing;
use super::data::{self, Dataset, Pairs, Tracks};
use super::ops;
use super::BenchError;
use crate::cli::{SchemaKind, UuidKind};

/// Tags and objects, each with a uuid column, and the join table whose
/// identity is its composite key (global ids kept in `lsync_gid`).
const COMPOSITE: &str = "
CREATE TABLE tag(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
CREATE TABLE object(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
CREATE TABLE tag_on_object(
    tag_id INTEGER NOT NULL REFERENCES tag(id),
    object_id INTEGER NOT NULL REFERENCES object(id),
    added TEXT,
    PRIMARY KEY (tag_id, object_id));";
const INSERT_TAG: &str = "INSERT INTO tag(uuid, name) VALUES (?, ?)";
const INSERT_OBJECT: &str = "INSERT INTO object(uuid, name) VALUES (?, ?)";
const INSERT_PAIR: &str = "INSERT INTO tag_on_object(tag_id, object_id, added) VALUES (?, ?, ?)";
const UPDATE_PAIR: &str = "UPDATE tag_on_object SET added = ? WHERE tag_id = ? AND object_id = ?";

/// A table with an INTEGER PRIMARY KEY and no global id column (lsync
/// mints one per row into `lsync_gid`).
const INTPK: &str = "
CREATE TABLE track(id INTEGER PRIMARY KEY, name TEXT, album_id INTEGER,
    ms INTEGER, bytes INTEGER, price REAL);";
const INSERT_TRACK: &str =
    "INSERT INTO track(name, album_id, ms, bytes, price) VALUES (?, ?, ?, ?, ?)";
const UPDATE_TRACK: &str = "UPDATE track SET bytes = ?, price = ? WHERE id = ?";

/// The pre-generated rows of one `--schema`.
pub(super) enum Workload {
    Entries(Dataset),
    Composite(Pairs),
    IntPk(Tracks),
}

impl Workload {
    /// `share` of the rows, distinct and scattered, are updated.
    pub fn generate(schema: SchemaKind, rows: usize, uuid: UuidKind, share: f64) -> Self {
        match schema {
            SchemaKind::Entries => Workload::Entries(data::generate(rows, uuid, share)),
            SchemaKind::Composite => Workload::Composite(data::pairs(rows, uuid, share)),
            SchemaKind::IntPk => Workload::IntPk(data::tracks(rows, share)),
        }
    }

    pub fn updates(&self) -> usize {
        match self {
            Workload::Entries(d) => d.updates.len(),
            Workload::Composite(p) => p.updates.len(),
            Workload::IntPk(t) => t.updates.len(),
        }
    }

    /// Creates the tables, tracks them in `mode` (unless plain), fills the
    /// tables the timed rows point at, and checkpoints. With the composite
    /// key, the targets are tracked `shared` whatever `mode` the join table
    /// takes, and folded here, so that the timed flush is the join table's.
    pub fn setup(
        &self,
        conn: &Connection,
        mode: Option<&str>,
        path: &Path,
    ) -> Result<(), BenchError> {
        match self {
            Workload::Entries(d) => ops::setup(conn, mode, &d.locations, path),
            Workload::Composite(p) => {
                let tracked = mode.into_iter().flat_map(|m| {
                    [
                        ("tag", "shared"),
                        ("object", "shared"),
                        ("tag_on_object", m),
                    ]
                });
                ops::create(conn, COMPOSITE, tracked, path)?;
                for (sql, rows) in [(INSERT_TAG, &p.tags), (INSERT_OBJECT, &p.objects)] {
                    let rows = rows.iter().map(|r| (&r.uuid, &r.name));
                    ops::write_all(conn, sql, rows, "inserting a target", path)?;
                }
                if mode.is_some() {
                    ops::flush(conn, path)?;
                }
                ops::checkpoint(conn, path)
            }
            Workload::IntPk(_) => {
                let tracked = mode.map(|m| ("track", m));
                ops::create(conn, INTPK, tracked, path)?;
                ops::checkpoint(conn, path)
            }
        }
    }

    /// Inserts the rows in one transaction, times it, then checks (untimed)
    /// that they got rowids 1..=rows.
    pub fn insert(&self, conn: &Connection, path: &Path) -> Result<Timing, BenchError> {
        let (timing, table, rows) = match self {
            Workload::Entries(d) => (
                ops::insert_entries_timed(conn, &d.entries, path)?,
                "entries",
                d.entries.len(),
            ),
            Workload::Composite(p) => {
                let rows = p.pairs.iter().map(|r| (r.tag_id, r.object_id, &r.added));
                let (t, _) = ops::write_all(conn, INSERT_PAIR, rows, "inserting a pair", path)?;
                (t, "tag_on_object", p.pairs.len())
            }
            Workload::IntPk(t) => {
                let rows = t
                    .tracks
                    .iter()
                    .map(|r| (&r.name, r.album_id, r.ms, r.bytes, r.price));
                let (timing, _) =
                    ops::write_all(conn, INSERT_TRACK, rows, "inserting a track", path)?;
                (timing, "track", t.tracks.len())
            }
        };
        ops::check_rows(conn, table, rows, path)?;
        Ok(timing)
    }

    /// Applies the updates in one transaction; times it.
    pub fn update(&self, conn: &Connection, path: &Path) -> Result<Timing, BenchError> {
        match self {
            Workload::Entries(d) => ops::update_entries_timed(conn, &d.updates, path),
            Workload::Composite(p) => {
                let rows = p.updates.iter().map(|u| (&u.added, u.tag_id, u.object_id));
                ops::update_all(conn, UPDATE_PAIR, rows, path)
            }
            Workload::IntPk(t) => {
                let rows = t.updates.iter().map(|u| (u.bytes, u.price, u.id));
                ops::update_all(conn, UPDATE_TRACK, rows, path)
            }
        }
    }
}
