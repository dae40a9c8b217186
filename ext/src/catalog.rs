//! The tracked tables, as recorded in `lsync_tables`: what every other
//! module reads to know a table's mode, uuid column, columns and FKs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;

use crate::bail;
use crate::error::{Error, Result};
use crate::sql::{Db, Stmt};

/// Column masks are one INTEGER, so at most this many tracked columns.
pub const MAX_COLUMNS: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    DeviceOwned,
    Shared,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "device_owned" => Ok(Mode::DeviceOwned),
            "shared" => Ok(Mode::Shared),
            other => bail!("lsync_track: mode must be 'device_owned' or 'shared', got '{other}'"),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::DeviceOwned => "device_owned",
            Mode::Shared => "shared",
        }
    }
}

/// Where a tracked table's global ids come from (`gids.rs` turns each
/// into SQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ident {
    /// A column of the table holds them: a `uuid` column, or a TEXT or
    /// BLOB primary key.
    Column(String),
    /// lsync keeps them in `lsync_gid`, derived from the row's key: these
    /// columns, FK parts as their targets' global ids. The same key on two
    /// devices is then the same row.
    Key(Vec<String>),
    /// lsync keeps them in `lsync_gid`, minted for each new row (a table
    /// with an INTEGER PRIMARY KEY and no global id column).
    Rowid,
}

impl Ident {
    /// How `lsync_tables` records it: the column in `uuid_col`, the other
    /// kinds in `options.identity`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Ident::Column(c) => serde_json::json!({ "column": c }),
            Ident::Key(parts) => serde_json::json!({ "key": parts }),
            Ident::Rowid => serde_json::json!("rowid"),
        }
    }

    fn from_row(uuid_col: String, options: &str) -> Result<Ident> {
        if !uuid_col.is_empty() {
            return Ok(Ident::Column(uuid_col));
        }
        let o: serde_json::Value = serde_json::from_str(options).unwrap_or_default();
        match &o["identity"] {
            serde_json::Value::String(s) if s == "rowid" => Ok(Ident::Rowid),
            v => match v["key"].as_array() {
                Some(parts) if !parts.is_empty() => Ok(Ident::Key(
                    parts
                        .iter()
                        .map(|p| p.as_str().map(str::to_owned))
                        .collect::<Option<_>>()
                        .ok_or_else(|| Error::msg("lsync: lsync_tables has a corrupt key"))?,
                )),
                _ => bail!("lsync: lsync_tables has a row with no global id"),
            },
        }
    }
}

/// A tracked table, as recorded in `lsync_tables`.
#[derive(Debug, Clone)]
pub struct Table {
    pub id: i64,
    pub name: Arc<str>,
    pub mode: Mode,
    pub ident: Ident,
    pub hwm: i64,
    /// Tracked columns (not the rowid alias, not the uuid), in mask-bit order.
    pub columns: Vec<Arc<str>>,
    /// FK column -> target table.
    pub fks: BTreeMap<String, String>,
    /// A WITHOUT ROWID table: lsync numbers its rows itself (`rids`).
    pub without_rowid: bool,
}

const TABLE_COLS: &str = "id, name, mode, uuid_col, hwm, columns, fks, options";

/// Tables parsed from `lsync_tables` rows, by the row's text (all but id
/// and hwm). Every lsync call reads the catalog, often several times, and
/// parsing its JSON cost as much as the query. Keyed by content, an entry
/// is never stale, whatever connection or database it came from.
static PARSED: Mutex<Option<FxHashMap<String, Table>>> = Mutex::new(None);
/// Entries kept at most (rows seen by a long-lived process whose schemas
/// keep changing): past it the cache starts over.
const PARSED_MAX: usize = 1024;

fn table_from_row(s: &Stmt) -> Result<Table> {
    let texts: Vec<String> = [1, 2, 3, 5, 6, 7]
        .iter()
        .map(|&i| s.text(i).unwrap_or_default())
        .collect();
    let key = texts.join("\u{0}");
    let (id, hwm) = (s.i64(0), s.i64(4));
    let cached = PARSED
        .lock()
        .ok()
        .and_then(|c| c.as_ref().and_then(|c| c.get(&key).cloned()));
    if let Some(t) = cached {
        return Ok(Table { id, hwm, ..t });
    }
    let t = parse_row(s)?;
    if let Ok(mut c) = PARSED.lock() {
        let c = c.get_or_insert_with(FxHashMap::default);
        if c.len() >= PARSED_MAX {
            c.clear();
        }
        c.insert(key, t.clone());
    }
    Ok(t)
}

fn parse_row(s: &Stmt) -> Result<Table> {
    let corrupt = |what: &str| Error::msg(format!("lsync: lsync_tables has a corrupt {what}"));
    Ok(Table {
        id: s.i64(0),
        name: Arc::from(s.text(1).unwrap_or_default()),
        mode: Mode::parse(&s.text(2).unwrap_or_default())?,
        ident: Ident::from_row(
            s.text(3).unwrap_or_default(),
            &s.text(7).unwrap_or_default(),
        )?,
        hwm: s.i64(4),
        columns: serde_json::from_str::<Vec<String>>(&s.text(5).unwrap_or_default())
            .map_err(|_| corrupt("column list"))?
            .into_iter()
            .map(Arc::from)
            .collect(),
        fks: serde_json::from_str(&s.text(6).unwrap_or_default()).map_err(|_| corrupt("FK map"))?,
        without_rowid: serde_json::from_str::<serde_json::Value>(&s.text(7).unwrap_or_default())
            .ok()
            .and_then(|o| o["without_rowid"].as_bool())
            .unwrap_or(false),
    })
}

/// All tracked tables, in id order.
pub fn load_all(db: Db) -> Result<Vec<Table>> {
    let mut s = db.prepare(&format!(
        "SELECT {TABLE_COLS} FROM lsync_tables ORDER BY id"
    ))?;
    let mut out = Vec::new();
    while s.step()? {
        out.push(table_from_row(&s)?);
    }
    Ok(out)
}

pub fn load(db: Db, name: &str) -> Result<Option<Table>> {
    load_where(db, "name = ?1 COLLATE NOCASE", name.into())
}

/// The tracked table with id `id` (a trigger names tables by id).
pub fn load_id(db: Db, id: i64) -> Result<Option<Table>> {
    load_where(db, "id = ?1", id.into())
}

fn load_where(db: Db, cond: &str, key: crate::sql::Value) -> Result<Option<Table>> {
    let mut s = db.prepare(&format!(
        "SELECT {TABLE_COLS} FROM lsync_tables WHERE {cond}"
    ))?;
    s.bind(1, &key)?;
    if s.step()? {
        Ok(Some(table_from_row(&s)?))
    } else {
        Ok(None)
    }
}
