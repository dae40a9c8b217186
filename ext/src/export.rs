//! `lsync_changeset` and `lsync_changeset_info`: packing the changes after
//! a cursor into one changeset BLOB, and describing one.

use std::collections::BTreeMap;

use lsync_wire::changeset::{Changeset, Fence, TableDesc};

use crate::error::{Error, Result};
use crate::sql::Db;
use crate::{catalog, changes, flush, schema};

/// The changes after cursor `since` (at most `budget`), in cursor order,
/// which is an order that applies: each row's latest state, FKs as uuids.
pub fn changeset(
    db: Db,
    since: i64,
    mut budget: changes::Budget,
    except: Option<&str>,
) -> Result<Vec<u8>> {
    flush::flush(db)?;
    let changes = changes::read_within(db, since, &mut budget, except)?;
    let tables: Vec<TableDesc> = catalog::load_all(db)?
        .into_iter()
        .filter(|t| changes.iter().any(|c| c.tbl == t.name))
        .map(|t| TableDesc {
            name: t.name.to_string(),
            mode: t.mode.as_str().to_owned(),
            columns: t.columns.iter().map(|c| c.to_string()).collect(),
        })
        .collect();
    // When everything was read, the cursor may skip to the newest seq even
    // if the last entries were superseded.
    let newest = schema::get_i64(db, "next_seq")? - 1;
    let last = changes.last().map_or(since, |c| c.seq);
    let to = if !budget.spent() {
        last.max(newest).max(since)
    } else {
        last
    };
    Changeset {
        library_id: schema::get_text(db, "library_id")?,
        from: since,
        to,
        fence: except.map(|r| fence(db, r)).transpose()?,
        tables,
        changes,
    }
    .encode()
    .map_err(|e| Error::msg(format!("lsync_changeset: {e}")))
}

/// What this device had applied of `receiver`'s changes, read in the same
/// transaction as the changes themselves (see [`Fence`]).
fn fence(db: Db, receiver: &str) -> Result<Fence> {
    let acked = db
        .query_i64(
            "SELECT recv_cursor FROM lsync_peers WHERE device_id = ?1",
            &[receiver.into()],
        )?
        .unwrap_or(0);
    Ok(Fence {
        sender: schema::get_text(db, "device_id")?,
        receiver: receiver.to_owned(),
        acked,
    })
}

/// `lsync_changeset_info(blob)`: JSON describing a changeset.
pub fn info(db: Db, blob: &[u8]) -> Result<String> {
    let cs = Changeset::decode(blob, schema::max_body(db))
        .map_err(|e| Error::msg(format!("lsync_changeset_info: {e}")))?;
    let (format, body) = Changeset::peek(blob).map_err(|e| Error::msg(e.to_string()))?;
    let mut per_table: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cs.changes {
        *per_table.entry(&*c.tbl).or_default() += 1;
        *ops.entry(c.op.as_str()).or_default() += 1;
    }
    Ok(serde_json::json!({
        "format": format,
        "library_id": cs.library_id,
        "count": cs.changes.len(),
        "from": cs.from,
        "to": cs.to,
        "bytes": blob.len(),
        "body_bytes": body,
        "tables": per_table,
        "ops": ops,
        "max_hlc": cs.changes.iter().map(|c| c.hlc).max(),
        "fence": cs.fence.as_ref().map(|f| serde_json::json!({
            "sender": f.sender, "receiver": f.receiver, "acked": f.acked,
        })),
    })
    .to_string())
}
