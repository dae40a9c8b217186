//! What `lsync_track` reads of a table's schema (columns, declared types,
//! primary key), which global id it takes, and which it refuses.

use std::collections::BTreeMap;

use crate::bail;
use crate::catalog::Table;
use crate::error::Result;
use crate::sql::Db;

/// What `pragma_table_info` says about a table.
pub struct Shape {
    pub rowid_alias: Option<String>,
    pub columns: Vec<String>,
    /// Declared types (upper case), parallel to `columns`.
    pub types: Vec<String>,
    /// The PRIMARY KEY's columns, in key order.
    pub pk: Vec<String>,
}

impl Shape {
    pub fn type_of(&self, col: &str) -> &str {
        self.columns
            .iter()
            .position(|c| c == col)
            .map_or("", |i| &self.types[i])
    }

    /// The global id column `lsync_track` takes when no option names one,
    /// and how it was found: a column named `uuid`, else a PRIMARY KEY of
    /// one TEXT or BLOB column.
    pub fn identity(&self) -> Option<(&str, &'static str)> {
        if self.columns.iter().any(|c| c == "uuid") {
            return Some(("uuid", "uuid column"));
        }
        match self.pk.as_slice() {
            [one] if is_id_type(self.type_of(one)) => Some((one, "primary key")),
            _ => None,
        }
    }

    /// A uuid column declared BLOB gets 16-byte UUIDs; anything else text.
    pub fn uuid_fill(&self, col: &str) -> &'static str {
        let blob = self
            .columns
            .iter()
            .zip(&self.types)
            .any(|(c, t)| c == col && t.contains("BLOB"));
        if blob {
            "lsync_uuid('blob')"
        } else {
            "lsync_uuid()"
        }
    }
}

pub fn shape(db: Db, table: &str) -> Result<Shape> {
    let mut s =
        db.prepare("SELECT name, upper(type), pk FROM pragma_table_info(?1, 'main') ORDER BY cid")?;
    s.bind(1, &table.into())?;
    let mut cols = Vec::new();
    let mut types = Vec::new();
    let mut pks = Vec::new();
    while s.step()? {
        let name = s.text(0).unwrap_or_default();
        let ty = s.text(1).unwrap_or_default();
        if s.i64(2) > 0 {
            pks.push((s.i64(2), name.clone(), ty.clone()));
        }
        cols.push(name);
        types.push(ty);
    }
    pks.sort();
    let rowid_alias = match pks.as_slice() {
        [(_, name, ty)] if ty == "INTEGER" => Some(name.clone()),
        _ => None,
    };
    Ok(Shape {
        rowid_alias,
        columns: cols,
        types,
        pk: pks.into_iter().map(|(_, name, _)| name).collect(),
    })
}

/// A declared type that holds the same value on every device: TEXT or
/// BLOB affinity (SQLite's rules: CHAR, CLOB, TEXT; BLOB or no type).
fn is_id_type(ty: &str) -> bool {
    !ty.contains("INT")
        && (ty.contains("CHAR")
            || ty.contains("CLOB")
            || ty.contains("TEXT")
            || ty.contains("BLOB"))
}

/// Refuses a global id column that holds local ids: an INTEGER column, or
/// an FK (the row it points at is another row's, and may be shared).
pub fn check_identity(
    db: Db,
    table: &str,
    col: &str,
    ty: &str,
    option_fks: &BTreeMap<String, String>,
) -> Result<()> {
    if ty.contains("INT") {
        bail!(
            "lsync_track: '{table}.{col}' is an INTEGER column: it holds local ids, which differ \
             between devices, so it cannot be the global id; use a TEXT or BLOB column (for \
             example uuid TEXT UNIQUE, which lsync fills)"
        );
    }
    let target = db
        .query_text(
            "SELECT \"table\" FROM pragma_foreign_key_list(?1, 'main') WHERE \"from\" = ?2",
            &[table.into(), col.into()],
        )?
        .or_else(|| option_fks.get(col).cloned());
    if let Some(target) = target {
        bail!(
            "lsync_track: '{table}.{col}' is an FK to '{target}': it names another row, which \
             several rows may share, so it cannot be this row's global id; add a column of the \
             row's own (uuid TEXT UNIQUE, which lsync fills)"
        );
    }
    Ok(())
}

/// A global id column that is `NOT NULL` with no default: an insert that
/// leaves it out fails before lsync can fill it in.
pub fn id_warning(db: Db, t: &Table, shape: &Shape) -> Result<Option<serde_json::Value>> {
    let strict = db.query_i64(
        "SELECT 1 FROM pragma_table_info(?1, 'main')
         WHERE name = ?2 AND \"notnull\" AND dflt_value IS NULL",
        &[(*t.name).into(), (*t.uuid_col).into()],
    )?;
    if strict.is_none() {
        return Ok(None);
    }
    let (table, col) = (&t.name, &t.uuid_col);
    let fill = shape.uuid_fill(col);
    Ok(Some(serde_json::json!({
        "table": table, "column": col,
        "message": format!(
            "{table}.{col}, the global id, is NOT NULL with no default: an insert that leaves it \
             out fails before lsync can give it an id. Declare the column with DEFAULT ({fill}) \
             (docs/sql-api.md), or have the app supply ids"
        ),
    })))
}
