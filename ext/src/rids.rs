//! How SQL reaches a tracked row's local id, its `rid`: the number that
//! lsync's metadata (`lsync_clock`, `lsync_dirty`, ...) addresses rows by.
//! For a rowid table it is the rowid. A WITHOUT ROWID table has none, so
//! lsync numbers its rows in `lsync_gid` (rid -> the row's global id, its
//! key); the INSERT trigger numbers new rows above the high-water mark.

use crate::catalog::Table;
use crate::error::Result;
use crate::ident::{q, qm};
use crate::sql::{Db, Value};

impl Table {
    /// The global id column of a WITHOUT ROWID table (`lsync_track` allows
    /// no other identity there).
    fn wr_key(&self) -> Option<&str> {
        self.uuid_col().filter(|_| self.without_rowid)
    }

    /// Whether `lsync_gid` holds an entry per row: ids lsync keeps, or the
    /// rids of a WITHOUT ROWID table.
    pub fn mapped(&self) -> bool {
        self.kept() || self.without_rowid
    }

    /// A FROM source: the table's rows, each with its rid as `rowid`.
    pub fn src(&self) -> String {
        match self.wr_key() {
            Some(k) => format!(
                "(SELECT g.rid AS rowid, x.* FROM lsync_gid AS g JOIN {} AS x ON x.{} = g.gid
                  WHERE g.tbl = {})",
                qm(&self.name),
                q(k),
                self.id
            ),
            None => qm(&self.name),
        }
    }

    /// SQL for the rid of the row `row` names: an alias of the table, or
    /// `NEW` / `OLD` in a trigger.
    pub fn rid_of(&self, row: &str) -> String {
        match self.wr_key() {
            Some(k) => format!(
                "(SELECT rid FROM lsync_gid WHERE tbl = {} AND gid = {row}.{})",
                self.id,
                q(k)
            ),
            None => format!("{row}.rowid"),
        }
    }

    /// A condition on the table itself (the WHERE of an UPDATE or DELETE):
    /// the row whose rid is `p`.
    pub fn rid_is(&self, p: &str) -> String {
        match self.wr_key() {
            Some(k) => format!(
                "{}.{} = (SELECT gid FROM lsync_gid WHERE tbl = {} AND rid = {p})",
                q(&self.name),
                q(k),
                self.id
            ),
            None => format!("{}.rowid = {p}", q(&self.name)),
        }
    }

    /// A condition on the table itself: its rid is in `set` (a SELECT).
    pub fn rid_in(&self, set: &str) -> String {
        match self.wr_key() {
            Some(k) => format!(
                "{}.{} IN (SELECT gid FROM lsync_gid WHERE tbl = {} AND rid IN ({set}))",
                q(&self.name),
                q(k),
                self.id
            ),
            None => format!("{}.rowid IN ({set})", q(&self.name)),
        }
    }

    /// A query for the largest rid of a live row.
    pub fn max_rid_sql(&self) -> String {
        match self.wr_key() {
            Some(k) => format!(
                "SELECT g.rid FROM lsync_gid AS g WHERE g.tbl = {}
                   AND EXISTS (SELECT 1 FROM {} WHERE {} = g.gid)
                 ORDER BY g.rid DESC LIMIT 1",
                self.id,
                qm(&self.name),
                q(k)
            ),
            None => format!("SELECT max(rowid) FROM {}", qm(&self.name)),
        }
    }

    /// SQL that numbers the row with global id `gid` (an expression) of a
    /// WITHOUT ROWID table, above every rid and the high-water mark, unless
    /// it has a number already. It never meets a conflict: in a trigger, an
    /// outer `INSERT OR REPLACE` would turn OR IGNORE into OR REPLACE, and
    /// give the key a new number.
    pub fn number_sql(&self, gid: &str) -> String {
        format!(
            "INSERT OR IGNORE INTO lsync_gid(tbl, rid, gid)
             SELECT {id}, max(coalesce((SELECT max(rid) FROM lsync_gid WHERE tbl = {id}), 0),
                             (SELECT hwm FROM lsync_tables WHERE id = {id})) + 1, {gid}
             WHERE NOT EXISTS (SELECT 1 FROM lsync_gid WHERE tbl = {id} AND gid = {gid});",
            id = self.id
        )
    }
}

/// The rid of the row just inserted into `t` (with global id `gid`): the
/// rowid, or, for a WITHOUT ROWID table, the number it has or now gets.
pub fn inserted(db: Db, t: &Table, gid: &Value) -> Result<i64> {
    if !t.without_rowid {
        return Ok(db.last_insert_rowid());
    }
    db.run(&t.number_sql("?1"), std::slice::from_ref(gid))?;
    db.query_i64(
        "SELECT rid FROM lsync_gid WHERE tbl = ?1 AND gid = ?2",
        &[t.id.into(), gid.clone()],
    )?
    .ok_or_else(|| crate::error::Error::msg("lsync: a row lost its number"))
}

/// Numbers the rows a WITHOUT ROWID table has when it is tracked: the next
/// fold takes them for local inserts, as it takes a rowid table's.
pub fn number_existing(db: Db, t: &Table) -> Result<()> {
    let Some(k) = t.wr_key() else {
        return Ok(());
    };
    db.run(
        &format!(
            "INSERT OR IGNORE INTO lsync_gid(tbl, rid, gid)
             SELECT {id}, coalesce((SELECT max(rid) FROM lsync_gid WHERE tbl = {id}), 0)
                          + row_number() OVER (ORDER BY {k}), {k}
             FROM {n}",
            id = t.id,
            k = q(k),
            n = qm(&t.name)
        ),
        &[],
    )
}
