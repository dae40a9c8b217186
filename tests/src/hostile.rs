//! The hostile-changeset tests' scene (issue 13, docs/hostile.md): a real
//! peer A and a receiver B, each with rows of its own, and the checks that
//! every class shares: a clear error, nothing written, and A's real changes
//! still applying at B afterwards.

use lsync_wire::changeset::{Changeset, DEFAULT_MAX_BODY};
use rusqlite::Connection;

use crate::{query_rows, scalar, two_libraries, TempDir};

pub const HOSTILE_SCHEMA: &str = "
    CREATE TABLE notes(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, body TEXT, n INTEGER);
    CREATE TABLE files(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT,
                       note_id INTEGER REFERENCES notes(id), here TEXT);
    SELECT lsync_track('notes', 'shared');
    SELECT lsync_track('files', 'device_owned', '{\"local_columns\": [\"here\"]}');";

/// A, the real peer, and B, the receiver; each has rows of its own.
pub struct Hostile {
    _dir: TempDir,
    pub a: Connection,
    pub b: Connection,
}

impl Hostile {
    pub fn scene() -> Hostile {
        let (dir, a, b) = two_libraries(HOSTILE_SCHEMA);
        b.execute_batch(
            "INSERT INTO notes(uuid, body, n) VALUES ('B-note', 'mine', 1);
             INSERT INTO files(uuid, name, note_id, here) VALUES ('B-file', 'b.txt', 1, 'x');",
        )
        .unwrap();
        a.execute_batch(
            "INSERT INTO notes(uuid, body, n) VALUES ('A-note', 'theirs', 2);
             INSERT INTO files(uuid, name, note_id) VALUES ('A-file', 'a.txt', 1);",
        )
        .unwrap();
        Hostile { _dir: dir, a, b }
    }

    /// A's changes so far, as its `lsync_changeset(0)` exports them.
    pub fn valid(&self) -> Vec<u8> {
        scalar(&self.a, "SELECT lsync_changeset(0)")
    }

    /// A's changeset, decoded, edited by `edit` and encoded again.
    pub fn edited(&self, edit: impl FnOnce(&mut Changeset)) -> Vec<u8> {
        let mut cs = Changeset::decode(&self.valid(), DEFAULT_MAX_BODY).unwrap();
        edit(&mut cs);
        cs.encode().unwrap()
    }

    /// Applies `blob` at B, which must refuse it with an error naming
    /// `needle` and change nothing; then A's real changes must still apply.
    pub fn refused(&self, blob: &[u8], needle: &str) -> String {
        let before = all_tables(&self.b);
        let err = match self
            .b
            .query_row("SELECT lsync_apply(?1)", [blob], |r| r.get::<_, String>(0))
        {
            Ok(report) => panic!("lsync_apply took a hostile changeset: {report}"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("lsync_apply: "), "not lsync's error: {err}");
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
        assert!(err.contains("nothing was applied"), "{err}");
        assert_eq!(
            all_tables(&self.b),
            before,
            "something was written for: {err}"
        );
        self.still_syncs();
        err
    }

    /// Applies `blob` at B and returns the report.
    pub fn applied(&self, blob: &[u8]) -> serde_json::Value {
        let report: String = self
            .b
            .query_row("SELECT lsync_apply(?1)", [blob], |r| r.get(0))
            .unwrap_or_else(|e| panic!("lsync_apply: {e}"));
        serde_json::from_str(&report).unwrap()
    }

    /// A writes again, and everything A holds reaches B, which keeps its own.
    pub fn still_syncs(&self) {
        self.a
            .execute("INSERT INTO notes(body, n) VALUES ('later', 3)", [])
            .unwrap();
        self.applied(&self.valid());
        let uuids = "SELECT uuid FROM notes UNION ALL SELECT uuid FROM files ORDER BY 1";
        let (at_a, at_b) = (query_rows(&self.a, uuids), query_rows(&self.b, uuids));
        for row in &at_a {
            assert!(at_b.contains(row), "A's row {row:?} is missing at B");
        }
        assert_eq!(at_b.len(), at_a.len() + 2, "B keeps its own two rows");
        let link = "SELECT n.uuid FROM files f JOIN notes n ON n.id = f.note_id
                    WHERE f.uuid = 'A-file'";
        assert_eq!(query_rows(&self.b, link), [["A-note"]]);
    }
}

/// Every table of the database, lsync's included, row by row and sorted.
pub fn all_tables(c: &Connection) -> Vec<Vec<String>> {
    let tables = query_rows(
        c,
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name",
    );
    let mut out = Vec::new();
    for t in tables {
        let mut rows = query_rows(c, &format!("SELECT * FROM \"{}\"", t[0]));
        rows.sort();
        out.push(t);
        out.extend(rows);
    }
    out
}
