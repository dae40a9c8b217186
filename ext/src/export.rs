//! `lsync_changeset` and `lsync_changeset_info`: packing the changes after
//! a cursor into one changeset BLOB, and describing one.

use std::collections::BTreeMap;

use lsync_wire::changeset::{Changeset, Describe, EncodeError, Encoder, Fence, TableDesc};

use crate::changes::{Body, ChangeRef};
use crate::error::{Error, Result};
use crate::sql::Db;
use crate::{catalog, changes, flush, schema};

/// The changes after cursor `since` (at most `budget`), in cursor order,
/// which is an order that applies: each row's latest state, FKs as uuids.
/// They are encoded as they are read, never held as [`changes::Change`]s.
pub fn changeset(
    db: Db,
    since: i64,
    mut budget: changes::Budget,
    except: Option<&str>,
) -> Result<Vec<u8>> {
    flush::flush(db)?;
    let tables = catalog::load_all(db)?;
    let descs = tables
        .iter()
        .map(|t| TableDesc {
            name: t.name.to_string(),
            mode: t.mode.as_str().to_owned(),
            columns: t.columns.iter().map(|c| c.to_string()).collect(),
        })
        .collect();
    // Only the tables with changes are described.
    let mut sink = Encode {
        enc: Encoder::new(since, descs, Describe::Used),
        origins: Vec::new(),
        last: None,
    };
    changes::read_each(db, &tables, since, &mut budget, except, &mut sink)?;
    // When everything was read, the cursor may skip to the newest seq even
    // if the last entries were superseded.
    let newest = schema::get_i64(db, "next_seq")? - 1;
    let last = sink.last.unwrap_or(since);
    let to = if !budget.spent() {
        last.max(newest).max(since)
    } else {
        last
    };
    let fence = except.map(|r| fence(db, r)).transpose()?;
    sink.enc
        .finish(&schema::get_text(db, "library_id")?, to, fence.as_ref())
        .map_err(encode_error)
}

fn encode_error(e: EncodeError) -> Error {
    Error::msg(format!("lsync_changeset: {e}"))
}

/// Encodes each change as it is read.
struct Encode {
    enc: Encoder,
    /// Device alias -> index in the changeset's devices (few: a list).
    origins: Vec<(i64, u64)>,
    /// The cursor of the last change.
    last: Option<i64>,
}

impl changes::Sink for Encode {
    fn change(&mut self, c: &ChangeRef<'_>) -> Result<()> {
        let origin = match self.origins.iter().find(|(alias, _)| *alias == c.origin) {
            Some((_, i)) => *i,
            None => {
                let i = self.enc.origin(c.origin_id).map_err(encode_error)?;
                self.origins.push((c.origin, i));
                i
            }
        };
        let e = &mut self.enc;
        e.change(c.table_index, c.op, c.seq, c.hlc, origin, &c.pk);
        match &c.body {
            Body::Into(root) => e.value(root),
            Body::Columns(cols, values) => {
                e.mask(cols.iter().fold(0u64, |m, j| m | (1 << j)));
                for v in values.iter() {
                    e.value(v);
                }
            }
        }
        self.last = Some(c.seq);
        Ok(())
    }
}

/// What this device had applied of `receiver`'s changes, read in the same
/// transaction as the changes themselves (see [`Fence`]): the highest
/// cursor ever applied, which a full resync does not lower.
fn fence(db: Db, receiver: &str) -> Result<Fence> {
    let acked = db
        .query_i64(
            "SELECT max(recv_cursor, coalesce(applied_cursor, 0)) FROM lsync_peers WHERE device_id = ?1",
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
