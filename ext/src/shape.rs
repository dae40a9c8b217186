//! What `lsync_track` reads of a table's schema (columns, declared types,
//! primary key), which global id it takes, and which it refuses.

use std::collections::BTreeMap;

use crate::bail;
use crate::catalog::{Ident, Table};
use crate::error::{Error, Result};
use crate::sql::Db;

/// What `pragma_table_info` says about a table.
pub struct Shape {
    pub rowid_alias: Option<String>,
    pub columns: Vec<String>,
    /// Declared types (upper case), parallel to `columns`.
    pub types: Vec<String>,
    /// The PRIMARY KEY's columns, in key order.
    pub pk: Vec<String>,
    /// Declared `NOT NULL`, parallel to `columns`.
    pub notnull: Vec<bool>,
    /// The columns of each UNIQUE key (the PRIMARY KEY's first, then
    /// constraints, then unique indexes; no partial or expression index).
    pub uniques: Vec<Vec<String>>,
}

impl Shape {
    pub fn type_of(&self, col: &str) -> &str {
        self.columns
            .iter()
            .position(|c| c == col)
            .map_or("", |i| &self.types[i])
    }

    pub fn is_notnull(&self, col: &str) -> bool {
        self.columns
            .iter()
            .position(|c| c == col)
            .is_some_and(|i| self.notnull[i])
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
    let mut s = db.prepare(
        "SELECT name, upper(type), pk, \"notnull\" FROM pragma_table_info(?1, 'main') ORDER BY cid",
    )?;
    s.bind(1, &table.into())?;
    let (mut cols, mut types, mut pks, mut notnull) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while s.step()? {
        let name = s.text(0).unwrap_or_default();
        let ty = s.text(1).unwrap_or_default();
        if s.i64(2) > 0 {
            pks.push((s.i64(2), name.clone(), ty.clone()));
        }
        notnull.push(s.i64(3) != 0);
        cols.push(name);
        types.push(ty);
    }
    drop(s);
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
        notnull,
        uniques: unique_keys(db, table)?,
    })
}

fn unique_keys(db: Db, table: &str) -> Result<Vec<Vec<String>>> {
    let mut s = db.prepare(
        "SELECT il.name, (SELECT json_group_array(ii.name) FROM
                           (SELECT name FROM pragma_index_info(il.name, 'main') ORDER BY seqno) ii),
                (SELECT count(*) FROM pragma_index_info(il.name, 'main') WHERE name IS NULL)
         FROM pragma_index_list(?1, 'main') il
         WHERE il.\"unique\" AND NOT il.partial
         ORDER BY CASE il.origin WHEN 'pk' THEN 0 WHEN 'u' THEN 1 ELSE 2 END, il.seq DESC",
    )?;
    s.bind(1, &table.into())?;
    let mut out = Vec::new();
    while s.step()? {
        if s.i64(2) > 0 {
            continue;
        }
        let cols: Vec<String> =
            serde_json::from_str(&s.text(1).unwrap_or_default()).unwrap_or_default();
        if !cols.is_empty() && !out.contains(&cols) {
            out.push(cols);
        }
    }
    Ok(out)
}

/// What `lsync_track`'s options ask of the global id.
pub struct Wanted<'a> {
    pub uuid_column: Option<&'a str>,
    pub identity: Option<&'a serde_json::Value>,
    pub fks: &'a BTreeMap<String, String>,
    pub local: &'a [String],
}

/// The global id `lsync_track` takes, and how it was chosen. Without an
/// option, the first that fits: a column named `uuid`; a PRIMARY KEY of one
/// TEXT or BLOB column; a `UNIQUE NOT NULL` TEXT or BLOB column that is not
/// an FK; a key (the PRIMARY KEY, else a UNIQUE key) whose parts are all
/// `NOT NULL`; the INTEGER PRIMARY KEY, for which lsync mints ids.
pub fn choose(db: Db, table: &str, shape: &Shape, w: &Wanted) -> Result<(Ident, &'static str)> {
    if let Some(c) = w.uuid_column {
        return Ok((Ident::Column(c.to_owned()), "uuid_column option"));
    }
    match w.identity {
        None => {}
        Some(serde_json::Value::String(s)) if s == "rowid" => {
            return rowid_identity(table, shape).map(|i| (i, "identity option"));
        }
        Some(serde_json::Value::Array(parts)) => {
            let parts: Option<Vec<String>> = parts
                .iter()
                .map(|p| p.as_str().map(str::to_owned))
                .collect();
            let parts = parts.filter(|p| !p.is_empty()).ok_or_else(|| {
                Error::msg("lsync_track: the identity option's key must list column names")
            })?;
            check_key(db, table, shape, &parts, w)?;
            return Ok((Ident::Key(parts), "identity option"));
        }
        Some(other) => bail!(
            "lsync_track: the identity option must be \"rowid\" or a list of key columns, \
             got {other}"
        ),
    }
    if shape.columns.iter().any(|c| c == "uuid") {
        return Ok((Ident::Column("uuid".into()), "uuid column"));
    }
    let owned_value = |c: &String| is_id_type(shape.type_of(c)) && !w.fks.contains_key(c);
    if let [one] = shape.pk.as_slice() {
        if owned_value(one) {
            return Ok((Ident::Column(one.clone()), "primary key"));
        }
    }
    for key in &shape.uniques {
        if let [one] = key.as_slice() {
            if owned_value(one) && shape.is_notnull(one) && !shape.pk.contains(one) {
                return Ok((Ident::Column(one.clone()), "unique column"));
            }
        }
    }
    for key in &shape.uniques {
        if shape
            .rowid_alias
            .as_ref()
            .is_some_and(|a| key == std::slice::from_ref(a))
        {
            continue;
        }
        if check_key(db, table, shape, key, w).is_ok() {
            let how = if *key == shape.pk {
                "primary key"
            } else {
                "unique key"
            };
            return Ok((Ident::Key(key.clone()), how));
        }
    }
    if shape.rowid_alias.is_some() {
        return Ok((Ident::Rowid, "rowid"));
    }
    bail!(
        "lsync_track: table '{table}' has no usable key: no column 'uuid', no PRIMARY KEY or \
         UNIQUE key whose parts are NOT NULL, and no INTEGER PRIMARY KEY. Declare one (for \
         example id INTEGER PRIMARY KEY, for which lsync keeps global ids, or uuid TEXT UNIQUE), \
         or name the key with {{\"identity\": [\"column\", ...]}}"
    )
}

/// lsync mints the ids of a table keyed by its INTEGER PRIMARY KEY: an
/// implicit rowid may change (VACUUM renumbers it), so it cannot be.
fn rowid_identity(table: &str, shape: &Shape) -> Result<Ident> {
    if shape.rowid_alias.is_none() {
        bail!(
            "lsync_track: '{table}' has no INTEGER PRIMARY KEY: its implicit rowids may change \
             (VACUUM renumbers them), so lsync cannot keep global ids for them; use a key of the \
             table ({{\"identity\": [\"column\", ...]}}) or add a uuid column"
        );
    }
    Ok(Ident::Rowid)
}

/// A key can be a row's identity when it is UNIQUE, its parts are all
/// `NOT NULL` (two rows with a NULL part would share one id), and each part
/// is an FK to a tracked table or a value: never the local id of a row.
fn check_key(db: Db, table: &str, shape: &Shape, parts: &[String], w: &Wanted) -> Result<()> {
    let as_set = |k: &[String]| {
        let mut v = k.to_vec();
        v.sort();
        v
    };
    if !shape.uniques.iter().any(|k| as_set(k) == as_set(parts)) {
        bail!(
            "lsync_track: ({}) is not a PRIMARY KEY or UNIQUE key of '{table}'; a row's identity \
             must be one",
            parts.join(", ")
        );
    }
    for p in parts {
        if !shape.columns.contains(p) || w.local.contains(p) {
            bail!("lsync_track: key part '{p}' is not a tracked column of '{table}'");
        }
        if shape.rowid_alias.as_ref() == Some(p) {
            bail!(
                "lsync_track: key part '{table}.{p}' is the INTEGER PRIMARY KEY, a local id; \
                 use {{\"identity\": \"rowid\"}} to have lsync keep global ids for it"
            );
        }
        if !shape.is_notnull(p) {
            bail!(
                "lsync_track: key part '{table}.{p}' may be NULL, and rows with NULL parts would \
                 share one global id; declare it NOT NULL or use another key"
            );
        }
        if let Some(target) = w.fks.get(p) {
            if *target != table && crate::catalog::load(db, target)?.is_none() {
                bail!(
                    "lsync_track: key part '{table}.{p}' holds local ids of '{target}', which \
                     is not tracked, so it is not the same on another device; track '{target}' \
                     first"
                );
            }
        }
    }
    Ok(())
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
    let Some(col) = t.uuid_col() else {
        return Ok(None);
    };
    let strict = db.query_i64(
        "SELECT 1 FROM pragma_table_info(?1, 'main')
         WHERE name = ?2 AND \"notnull\" AND dflt_value IS NULL",
        &[(*t.name).into(), col.into()],
    )?;
    if strict.is_none() {
        return Ok(None);
    }
    let table = &t.name;
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
