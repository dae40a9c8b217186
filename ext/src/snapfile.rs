//! A snapshot file, as both of its ends see it: the settings it keeps and how
//! they are read back, its schema objects, and how our own connections on a
//! copy behave. `snapshot` writes such files; `restore` imports them.

use std::path::Path;

use crate::error::{Error, Result};
use crate::sql::{Db, Stmt, Value};

/// The settings a snapshot keeps; every other one is local to the device
/// (its identity, its limits) or unknown, and is not shipped.
pub const SHARED_KEYS: [&str; 5] = [
    "library_id",
    "schema_version",
    "next_seq",
    "hlc",
    "library_locked",
];

/// The settings (`lsync_config`) of a snapshot file, read for `func`. A file
/// without them is not a snapshot, and the errors say so; `tail` ends each
/// message (e.g. "; nothing was restored").
pub struct Settings<'a> {
    pub file: Db,
    pub func: &'a str,
    pub path: &'a str,
    pub tail: &'a str,
}

impl Settings<'_> {
    pub fn not_snapshot(&self, why: &str) -> Error {
        Error::msg(format!(
            "{}: '{}' is not an lsync snapshot ({why}); make one with lsync_snapshot{}",
            self.func, self.path, self.tail
        ))
    }

    /// One setting; NULL when the snapshot does not have it.
    pub fn get(&self, key: &str) -> Result<Value> {
        self.file
            .query_value(
                "SELECT value FROM lsync_config WHERE key = ?1",
                &[key.into()],
            )
            .map_err(|e| self.not_snapshot(e.detail()))
            .map(|v| v.unwrap_or(Value::Null))
    }

    /// The device that made the snapshot: every snapshot names one.
    pub fn device(&self) -> Result<String> {
        match self.get("snapshot_device")? {
            Value::Text(d) => Ok(d),
            _ => Err(self.not_snapshot("it has no snapshot_device setting")),
        }
    }
}

/// Removes a database file and its journals.
pub fn remove_db_files(file: &Path) {
    let _ = std::fs::remove_file(file);
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut p = file.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// Prepares a connection of ours on a copy: the extension is not loaded
/// there, so lsync's triggers must not fire, and FKs are handled by hand.
pub fn private(c: Db) -> Result<()> {
    c.set_triggers(false)?;
    c.exec("PRAGMA foreign_keys = OFF")
}

/// The (type, name, sql) rows a query on sqlite_schema returns.
pub fn objects(mut s: Stmt) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    while s.step()? {
        out.push((
            s.text(0).unwrap_or_default(),
            s.text(1).unwrap_or_default(),
            s.text(2).unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// Our connections on a snapshot run nothing the file defines with a
/// function that has side effects, and check cell sizes as they read.
pub fn harden(c: Db) -> Result<()> {
    c.exec("PRAGMA trusted_schema = OFF; PRAGMA cell_size_check = ON")
}

/// Why `name` is not one ordinary table of `s`'s main schema, if it is not.
pub fn not_ordinary_table(s: Db, name: &str) -> Result<Option<String>> {
    let mut st =
        s.prepare("SELECT type, sql FROM main.sqlite_schema WHERE name = ?1 COLLATE NOCASE")?;
    st.bind(1, &name.into())?;
    let mut found = Vec::new();
    while st.step()? {
        found.push((
            st.text(0).unwrap_or_default(),
            st.text(1).unwrap_or_default(),
        ));
    }
    Ok(match found.as_slice() {
        [] => Some(format!("it has no table {name}")),
        [(kind, _)] if kind != "table" => Some(format!("its {name} is a {kind}, not a table")),
        [(_, sql)]
            if !sql
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE TABLE") =>
        {
            Some(format!("its {name} is not an ordinary table"))
        }
        [_] => None,
        _ => Some(format!("it has {} objects named {name}", found.len())),
    })
}
