//! The tracked tables, as recorded in `lsync_tables`: what every other
//! module reads to know a table's mode, uuid column, columns and FKs.

use std::collections::BTreeMap;
use std::sync::Arc;

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

/// A tracked table, as recorded in `lsync_tables`.
#[derive(Debug, Clone)]
pub struct Table {
    pub id: i64,
    pub name: Arc<str>,
    pub mode: Mode,
    pub uuid_col: String,
    pub hwm: i64,
    /// Tracked columns (not the rowid alias, not the uuid), in mask-bit order.
    pub columns: Vec<Arc<str>>,
    /// FK column -> target table.
    pub fks: BTreeMap<String, String>,
}

const TABLE_COLS: &str = "id, name, mode, uuid_col, hwm, columns, fks";

fn table_from_row(s: &Stmt) -> Result<Table> {
    let corrupt = |what: &str| Error::msg(format!("lsync: lsync_tables has a corrupt {what}"));
    Ok(Table {
        id: s.i64(0),
        name: Arc::from(s.text(1).unwrap_or_default()),
        mode: Mode::parse(&s.text(2).unwrap_or_default())?,
        uuid_col: s.text(3).unwrap_or_default(),
        hwm: s.i64(4),
        columns: serde_json::from_str::<Vec<String>>(&s.text(5).unwrap_or_default())
            .map_err(|_| corrupt("column list"))?
            .into_iter()
            .map(Arc::from)
            .collect(),
        fks: serde_json::from_str(&s.text(6).unwrap_or_default()).map_err(|_| corrupt("FK map"))?,
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
    let mut s = db.prepare(&format!(
        "SELECT {TABLE_COLS} FROM lsync_tables WHERE name = ?1 COLLATE NOCASE"
    ))?;
    s.bind(1, &name.into())?;
    if s.step()? {
        Ok(Some(table_from_row(&s)?))
    } else {
        Ok(None)
    }
}
