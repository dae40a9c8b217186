//! Foreign keys travel as UUIDs. These lookups are set-based: one query per
//! FK column per batch, never one per row (blob ids are the exception: SQLite
//! 3.40 has no way to pass a set of blobs in one parameter).

use std::collections::HashMap;

use crate::catalog::{self, Table};
use crate::error::{Error, Result};
use crate::ident::{q, qm};
use crate::ids::IdMap;
use crate::sql::{Cache, Db, Value};

/// A declared FK column's `ON DELETE` action.
pub struct OnDelete {
    pub col: String,
    /// As SQLite spells it: `CASCADE`, `SET NULL`, `SET DEFAULT`,
    /// `RESTRICT`, `NO ACTION`.
    pub action: String,
    /// The column's default expression, if any.
    pub default: Option<String>,
}

/// The declared `ON DELETE` action of each FK column of `table`.
pub fn on_delete(db: Db, table: &str) -> Result<Vec<OnDelete>> {
    let mut s = db.prepare(
        "SELECT f.\"from\", f.on_delete, c.dflt_value
         FROM pragma_foreign_key_list(?1, 'main') f
         LEFT JOIN pragma_table_info(?1, 'main') c ON c.name = f.\"from\"",
    )?;
    s.bind(1, &table.into())?;
    let mut out = Vec::new();
    while s.step()? {
        out.push(OnDelete {
            col: s.text(0).unwrap_or_default(),
            action: s.text(1).unwrap_or_default(),
            default: s.text(2),
        });
    }
    Ok(out)
}

/// uuid -> local id for a set of uuids of one table, in one query (text
/// uuids as a JSON array; 16-byte blob uuids as one concatenated blob).
pub fn rids_of(db: Db, t: &Table, ids: &[&Value]) -> Result<IdMap<i64>> {
    let mut map = IdMap::default();
    let texts: Vec<&str> = ids.iter().filter_map(|v| v.as_str()).collect();
    let blobs: Vec<&[u8]> = ids
        .iter()
        .filter_map(|v| match v {
            Value::Blob(b) => Some(b.as_slice()),
            _ => None,
        })
        .collect();
    let ids = t.gids();
    if !texts.is_empty() {
        // Each array element probes the index in array order (CROSS JOIN
        // keeps that order): no temporary set is built and sorted, and a
        // row found is named by its element's index, not by a copy of its id.
        let json = serde_json::to_string(&texts).unwrap_or_else(|_| "[]".into());
        let mut s = db.prepare(&format!(
            "SELECT j.key, g.rid FROM json_each(?1) AS j CROSS JOIN {ids} AS g ON g.gid = j.value"
        ))?;
        s.bind(1, &json.into())?;
        while s.step()? {
            let text = usize::try_from(s.i64(0)).ok().and_then(|i| texts.get(i));
            if let Some(text) = text {
                map.insert_text(text, s.i64(1));
            }
        }
    }
    if !blobs.is_empty() {
        if let Some(bad) = blobs.iter().find(|b| b.len() != 16) {
            crate::bail!(
                "lsync: a blob id of '{}' has {} bytes; blob uuids must be 16 bytes",
                t.name,
                bad.len()
            );
        }
        let mut s = db.prepare(&format!(
            "WITH RECURSIVE k(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM k WHERE n + 1 < length(?1) / 16)
             SELECT gid, rid FROM {ids} WHERE gid IN (SELECT substr(?1, 16 * n + 1, 16) FROM k)"
        ))?;
        s.bind(1, &Value::Blob(blobs.concat()))?;
        while s.step()? {
            map.insert(&s.value(0), s.i64(1));
        }
    }
    Ok(map)
}

/// The pending links of row `rid` of table `tbl`: (column, target table,
/// target uuid).
pub fn deferred_of(db: Db, tbl: i64, rid: i64) -> Result<Vec<(String, String, Value)>> {
    let mut s = db.prepare(
        "SELECT col, target, target_uuid FROM lsync_deferred WHERE tbl = ?1 AND rid = ?2",
    )?;
    s.bind_all(&[tbl.into(), rid.into()])?;
    let mut out = Vec::new();
    while s.step()? {
        out.push((
            s.text(0).unwrap_or_default(),
            s.text(1).unwrap_or_default(),
            s.value(2),
        ));
    }
    Ok(out)
}

/// Records that row `rid` of `t` should point at `target_uuid` in `target`.
pub fn defer(
    db: Db,
    t: &Table,
    rid: i64,
    uuid: &Value,
    col: &str,
    target: &str,
    target_uuid: &Value,
) -> Result<()> {
    db.run(
        "INSERT INTO lsync_deferred(tbl, rid, col, uuid, target, target_uuid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(tbl, rid, col) DO UPDATE SET target = excluded.target,
           target_uuid = excluded.target_uuid, uuid = excluded.uuid",
        &[
            t.id.into(),
            rid.into(),
            col.into(),
            uuid.clone(),
            target.into(),
            target_uuid.clone(),
        ],
    )
}

/// Forgets deferred links of a row (its column got a new value, or the row
/// was deleted).
pub fn forget(cache: &Cache, tbl: i64, rid: i64, col: Option<&str>) -> Result<()> {
    cache.run(
        "DELETE FROM lsync_deferred WHERE tbl = ?1 AND rid = ?2 AND (?3 IS NULL OR col = ?3)",
        &[tbl.into(), rid.into(), col.map(str::to_owned).into()],
    )
}

/// A link whose completion a constraint refused: (table id, rowid,
/// column, target rowid, the refusal).
pub type Refused = (i64, i64, String, i64, Error);

/// Completes every deferred link whose target now exists: one UPDATE per
/// (table, column, target). Returns how many links were completed, and the
/// links a constraint refused (they stay pending).
pub fn resolve(db: Db, tables: &[Table]) -> Result<(i64, Vec<Refused>)> {
    // Every apply asks; almost always there is no link waiting, and this
    // costs a fraction of preparing the UPDATE below.
    if db.query_i64("SELECT EXISTS (SELECT 1 FROM lsync_deferred)", &[])? == Some(0) {
        return Ok((0, Vec::new()));
    }
    // A link to a row merged into another (`lsync_alias`) is a link to it.
    db.run(
        "UPDATE lsync_deferred SET target_uuid = a.root
         FROM lsync_alias a JOIN lsync_tables t ON t.id = a.tbl
         WHERE t.name = lsync_deferred.target AND a.uuid = lsync_deferred.target_uuid",
        &[],
    )?;
    let mut s = db.prepare("SELECT DISTINCT tbl, col, target FROM lsync_deferred")?;
    let mut groups = Vec::new();
    while s.step()? {
        groups.push((
            s.i64(0),
            s.text(1).unwrap_or_default(),
            s.text(2).unwrap_or_default(),
        ));
    }
    drop(s);
    let by_id: HashMap<i64, &Table> = tables.iter().map(|t| (t.id, t)).collect();
    let (mut resolved, mut refused) = (0, Vec::new());
    for (tbl, col, target) in groups {
        let (Some(t), Some(tt)) = (by_id.get(&tbl), tables.iter().find(|t| *t.name == *target))
        else {
            continue;
        };
        let (tn, c, tids) = (qm(&t.name), q(&col), tt.gids());
        let params = [tbl.into(), col.as_str().into()];
        let set = db.run(
            &format!(
                "UPDATE {tn} SET {c} = r.trid FROM
                   (SELECT d.rid AS rid, x.rid AS trid FROM lsync_deferred d
                    JOIN {tids} x ON x.gid = d.target_uuid
                    WHERE d.tbl = ?1 AND d.col = ?2) AS r
                 WHERE {rid_is}",
                rid_is = t.rid_is("r.rid")
            ),
            &params,
        );
        match set {
            Ok(()) => {
                db.run(
                    &format!(
                        "DELETE FROM lsync_deferred WHERE tbl = ?1 AND col = ?2
                           AND target_uuid IN (SELECT gid FROM {tids})"
                    ),
                    &params,
                )?;
                resolved += db.changes();
            }
            // One link breaks a constraint (a UNIQUE pair, say): the
            // statement left nothing, so link one row at a time; those
            // refused stay pending, retried by the next apply, and never
            // stop this one.
            Err(e) if e.is_constraint() => {
                resolved += resolve_each(db, t, &c, &tids, &params, &mut refused)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((resolved, refused))
}

/// `resolve` for one (table, column, target), link by link.
fn resolve_each(
    db: Db,
    t: &Table,
    c: &str,
    tids: &str,
    params: &[Value],
    refused: &mut Vec<Refused>,
) -> Result<i64> {
    let mut s = db.prepare(&format!(
        "SELECT d.rid, x.rid FROM lsync_deferred d JOIN {tids} x ON x.gid = d.target_uuid
         WHERE d.tbl = ?1 AND d.col = ?2"
    ))?;
    s.bind_all(params)?;
    let mut links = Vec::new();
    while s.step()? {
        links.push((s.i64(0), s.i64(1)));
    }
    drop(s);
    let mut resolved = 0;
    for (rid, trid) in links {
        match db.run(
            &format!(
                "UPDATE {} SET {c} = ?2 WHERE {}",
                qm(&t.name),
                t.rid_is("?1")
            ),
            &[rid.into(), trid.into()],
        ) {
            Ok(()) => {
                db.run(
                    "DELETE FROM lsync_deferred WHERE tbl = ?1 AND col = ?2 AND rid = ?3",
                    &[params[0].clone(), params[1].clone(), rid.into()],
                )?;
                resolved += 1;
            }
            Err(e) if e.is_constraint() => {
                let (tbl, col) = (params[0].as_i64().unwrap_or(0), params[1].clone());
                let col = match col {
                    Value::Text(c) => c,
                    _ => String::new(),
                };
                refused.push((tbl, rid, col, trid, e));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(resolved)
}

/// After a local delete of row `rid` of table `tbl` (the DELETE trigger,
/// capture off): where SQLite enforces no FK (`foreign_keys` OFF, as in the
/// `sqlite3` shell), rows of tracked tables that still point at the rowid are
/// detached (`detach_referrers`), so the
/// next row to take the rowid never becomes their target, and this device
/// ends where its peers end when the delete reaches them: the next apply
/// gives those links their FK's `ON DELETE` action (`merge`'s sweep of links
/// to deleted rows), as every peer does. With `foreign_keys` ON, SQLite has
/// refused the delete or applied the FK's action already.
pub fn detach_local(db: Db, tbl: i64, rid: i64, uuid: &Value) -> Result<()> {
    if db.query_i64("PRAGMA foreign_keys", &[])? == Some(1) {
        return Ok(());
    }
    let tables = catalog::load_all(db)?;
    let Some(t) = tables.iter().find(|t| t.id == tbl) else {
        return Ok(());
    };
    let all: Vec<&Table> = tables.iter().collect();
    detach_referrers(db, &all, t, rid, uuid)
}

/// After a local delete of row `rid` of `t`, turns every FK cell that
/// pointed at it into a deferred link to its uuid (and NULL), so no cell is
/// left dangling (or silently re-pointed when the rowid is reused) until
/// the next apply gives it its FK's action.
pub fn detach_referrers(
    db: Db,
    tables: &[&Table],
    t: &Table,
    rid: i64,
    uuid: &Value,
) -> Result<()> {
    for s in tables {
        for (col, target) in s.fks.iter().filter(|(_, target)| ***target == *t.name) {
            db.run(
                &format!(
                    "INSERT INTO lsync_deferred(tbl, rid, col, uuid, target, target_uuid)
                     SELECT ?1, rid, ?2, gid, ?3, ?4 FROM {sids} x
                     WHERE rid IN (SELECT rowid FROM {st} WHERE {c} = ?5) AND gid IS NOT NULL
                     ON CONFLICT(tbl, rid, col) DO UPDATE SET target = excluded.target,
                       target_uuid = excluded.target_uuid",
                    sids = s.gids(),
                    st = s.src(),
                    c = q(col),
                ),
                &[
                    s.id.into(),
                    col.as_str().into(),
                    target.as_str().into(),
                    uuid.clone(),
                    rid.into(),
                ],
            )?;
            db.run(
                &format!(
                    "UPDATE {} SET {c} = NULL WHERE {c} = ?1",
                    qm(&s.name),
                    c = q(col)
                ),
                &[rid.into()],
            )?;
        }
    }
    Ok(())
}
