//! Quarantine: a change that SQLite refuses for a constraint (a CHECK, a
//! NOT NULL data column, a UNIQUE clash lsync does not resolve, an app
//! trigger's `RAISE`) is kept aside in `lsync_quarantine` with its error,
//! so that the rest of its changeset applies and the peer's watermark
//! advances. It is retried when a later changeset touches its table or a
//! table linked to it by an FK, and when a DBA asks (`lsync_conflict_retry`).

use std::sync::Arc;

use lsync_wire::changeset::{Change, Changeset, TableDesc};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::passes::{attempt, Attempt};
use super::Applier;
use crate::catalog::Table;
use crate::clock::code_of;
use crate::error::{Error, Result};
use crate::sql::{Db, Value};
use crate::{bail, schema};

/// At most this many quarantined changes are retried by one apply, those
/// tried longest ago first: a large quarantine costs each apply a bounded
/// amount, and every entry gets its turn.
const RETRIES_PER_APPLY: i64 = 100;

/// Sets change `c` aside with the error that refused it. The same change
/// refused again (a changeset delivered twice) stays one entry.
pub(super) fn record(
    db: Db,
    tables: &HashMap<Arc<str>, Table>,
    c: &Change,
    e: &Error,
) -> Result<()> {
    let Some(t) = tables
        .values()
        .find(|t| t.name.eq_ignore_ascii_case(&c.tbl))
    else {
        bail!("lsync_apply: table '{}' is not tracked here", c.tbl);
    };
    let cs = Changeset {
        library_id: schema::get_text(db, "library_id")?,
        from: 0,
        to: 0,
        fence: None,
        tables: vec![TableDesc {
            name: t.name.to_string(),
            mode: t.mode.as_str().to_owned(),
            columns: c.data.iter().map(|(k, _)| k.to_string()).collect(),
        }],
        changes: vec![Change {
            seq: 0,
            tbl: t.name.clone(),
            ..c.clone()
        }],
    };
    let blob = cs
        .encode()
        .map_err(|e| Error::msg(format!("lsync_apply: quarantining a change: {e}")))?;
    let now = now_ms();
    db.run(
        "INSERT INTO lsync_quarantine(tbl, uuid, origin, hlc, op, change, data, error, at, tried_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
         ON CONFLICT(tbl, uuid, origin, hlc, op) DO UPDATE SET error = excluded.error,
           tried_at = excluded.tried_at, tries = tries + 1",
        &[
            (*t.name).into(),
            c.pk.clone(),
            (*c.origin).into(),
            c.hlc.into(),
            code_of(c.op).into(),
            Value::Blob(blob),
            data_json(&c.data).into(),
            e.cause().into(),
            now.into(),
        ],
    )
}

/// Unix milliseconds, as the quarantine records times.
fn now_ms() -> i64 {
    lsync_wire::hlc::millis(lsync_wire::hlc::wall()) as i64
}

/// The values of a change as a JSON object, for people: blobs as hex.
fn data_json(data: &[(Arc<str>, Value)]) -> String {
    let obj: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| {
            let j = match v {
                Value::Null => serde_json::Value::Null,
                Value::Integer(i) => (*i).into(),
                Value::Real(r) => serde_json::Number::from_f64(*r)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number),
                Value::Text(s) => s.as_str().into(),
                Value::Blob(b) => {
                    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
                    format!("X'{hex}'").into()
                }
            };
            (k.to_string(), j)
        })
        .collect();
    serde_json::Value::Object(obj).to_string()
}

/// After a merge that touched `touched`: retries the quarantined changes
/// of those tables and of the tables linked to them by an FK (a change
/// there may have freed a unique value, brought a missing target, or
/// changed the row itself). Returns how many applied.
pub(super) fn retry_after(
    db: Db,
    tables: &HashMap<Arc<str>, Table>,
    touched: &HashSet<Arc<str>>,
) -> Result<i64> {
    if touched.is_empty()
        || db.query_i64("SELECT EXISTS (SELECT 1 FROM lsync_quarantine)", &[])? != Some(1)
    {
        return Ok(0);
    }
    let mut names: HashSet<&str> = touched.iter().map(|n| &**n).collect();
    for t in tables.values() {
        for target in t.fks.values() {
            if touched.contains(target.as_str()) {
                names.insert(&t.name);
            }
            if touched.contains(&t.name) {
                names.insert(target);
            }
        }
    }
    let names: Vec<&str> = names.into_iter().collect();
    let json = serde_json::to_string(&names).map_err(|e| Error::msg(e.to_string()))?;
    let mut s = db.prepare(
        "SELECT id FROM lsync_quarantine WHERE tbl IN (SELECT value FROM json_each(?1))
         ORDER BY tried_at, id LIMIT ?2",
    )?;
    s.bind_all(&[json.into(), RETRIES_PER_APPLY.into()])?;
    let mut ids = Vec::new();
    while s.step()? {
        ids.push(s.i64(0));
    }
    std::mem::drop(s);
    let mut applied = 0;
    for id in ids {
        if retry_one(db, tables, id)?.is_none() {
            applied += 1;
        }
    }
    Ok(applied)
}

/// Tries quarantined change `id` again (the caller has turned capture off
/// and holds a savepoint): `None` when it applied and left the quarantine,
/// else the error that refused it again.
pub fn retry(db: Db, tables: &HashMap<Arc<str>, Table>, id: i64) -> Result<Option<String>> {
    if db
        .query_i64("SELECT 1 FROM lsync_quarantine WHERE id = ?1", &[id.into()])?
        .is_none()
    {
        bail!("lsync_conflict_retry: there is no quarantined change with id {id} (see lsync_conflicts)");
    }
    retry_one(db, tables, id)
}

fn retry_one(db: Db, tables: &HashMap<Arc<str>, Table>, id: i64) -> Result<Option<String>> {
    match apply_one(db, tables, id) {
        Ok(()) => {
            db.run("DELETE FROM lsync_quarantine WHERE id = ?1", &[id.into()])?;
            Ok(None)
        }
        // Any error leaves it quarantined, with the error: a change set
        // aside never blocks an apply (its table's columns may have
        // changed since, say).
        Err(e) => {
            db.run(
                "UPDATE lsync_quarantine SET error = ?2, tried_at = ?3, tries = tries + 1
                 WHERE id = ?1",
                &[id.into(), e.cause().into(), now_ms().into()],
            )?;
            Ok(Some(e.cause().to_owned()))
        }
    }
}

/// Applies quarantined change `id` in a savepoint of its own: all or nothing.
fn apply_one(db: Db, tables: &HashMap<Arc<str>, Table>, id: i64) -> Result<()> {
    let Some(Value::Blob(blob)) = db.query_value(
        "SELECT change FROM lsync_quarantine WHERE id = ?1",
        &[id.into()],
    )?
    else {
        bail!("lsync: quarantined change {id} is missing or corrupt");
    };
    let cs = Changeset::decode(&blob, schema::max_body(db))
        .map_err(|e| Error::msg(format!("lsync: quarantined change {id} is corrupt: {e}")))?;
    let mut facts = Vec::new();
    loop {
        let mut a = Applier::new(
            db,
            tables.clone(),
            HashSet::default(),
            facts.clone(),
            super::Fresh::default(),
        )?;
        match attempt(db, &mut a, &cs) {
            Ok(()) => return Ok(()),
            // A UNIQUE clash merges the rows, as in any apply.
            Err(Attempt::Clash(f, e)) => {
                if facts.iter().any(|x: &super::Fact| x.same(&f)) {
                    return Err(e);
                }
                facts.push(*f);
            }
            Err(Attempt::Refused(_, e) | Attempt::Failed(e) | Attempt::Unbatch(e)) => {
                return Err(e)
            }
        }
    }
}

/// Removes quarantined change `id` for good.
pub fn drop(db: Db, id: i64) -> Result<()> {
    db.run("DELETE FROM lsync_quarantine WHERE id = ?1", &[id.into()])?;
    if db.changes() == 0 {
        bail!("lsync_conflict_drop: there is no quarantined change with id {id} (see lsync_conflicts)");
    }
    Ok(())
}

/// How many changes are quarantined.
pub fn count(db: Db) -> Result<i64> {
    Ok(db
        .query_i64("SELECT count(*) FROM lsync_quarantine", &[])?
        .unwrap_or(0))
}
