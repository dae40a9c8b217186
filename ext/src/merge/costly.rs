//! Columns whose write costs more than the row's: indexed ones (an index
//! entry is deleted and inserted again), FK columns (the target is looked
//! up) and FK targets (the referrers are). An update writes those only
//! when their value changes, which it learns by reading them first; a
//! bulk update writes the other columns without reading them. Either way
//! the row ends the same: this only chooses the cheaper way there.

use crate::catalog::Table;
use crate::error::Result;
use crate::sql::Db;

/// The costly columns of a table; `None`: every column is (an index on an
/// expression may read any of them).
pub(super) type Costly = Option<Vec<String>>;

pub(super) fn costly(db: Db, t: &Table) -> Result<Costly> {
    let mut s = db.prepare(
        "SELECT ii.name, ii.cid FROM pragma_index_list(?1, 'main') AS il,
                pragma_index_xinfo(il.name, 'main') AS ii
          WHERE ii.key
         UNION ALL SELECT \"from\", 0 FROM pragma_foreign_key_list(?1, 'main')
         UNION ALL SELECT f.\"to\", 0 FROM main.sqlite_schema AS s,
                pragma_foreign_key_list(s.name, 'main') AS f
          WHERE s.type = 'table' AND f.\"table\" = ?1 COLLATE NOCASE",
    )?;
    s.bind(1, &(*t.name).into())?;
    let mut cols = Vec::new();
    while s.step()? {
        match s.text(0) {
            Some(name) => cols.push(name),
            // An expression (cid -2) may read any column; a NULL parent key
            // is the rowid, which an update never writes.
            None if s.i64(1) == -2 => return Ok(None),
            None => {}
        }
    }
    Ok(Some(cols))
}

/// Whether writing `cols` may cost more than writing the row.
pub(super) fn any_costly<'a>(costly: &Costly, mut cols: impl Iterator<Item = &'a str>) -> bool {
    match costly {
        None => true,
        Some(set) => cols.any(|c| set.iter().any(|x| x.eq_ignore_ascii_case(c))),
    }
}
