//! `lsync_apply` through SQL, as an app or the sidecar calls it, on a copy
//! of a receiver that holds rows of its own (`lsync_fuzz::World`). The
//! extension is linked in, so its code is what coverage guides.
//!
//! Input layout: the first byte chooses
//! - bits 0-1, what the blob is made of:
//!   0. the rest, as the blob;
//!   1. the rest, as a changeset body, framed with a valid header and zstd
//!      checksum (random bytes seldom make a checksummed zstd frame);
//!   2. one of the world's valid changesets (next byte), its body with bytes
//!      flipped: (u16 offset, u8 xor) pairs from the rest;
//!   3. one of the world's valid changesets (next byte), decoded and edited
//!      (pks, values, HLCs, origins, ops, tables, the fence: see `edit`),
//!      then encoded again: well-formed changesets that lie;
//! - bit 2: applied inside the caller's transaction (a savepoint);
//! - bit 3: on the receiver that already applied the peer's first changeset.
//!
//! Errors are fine. A crash, an abort, a leak or an allocation over the
//! malloc limit is not; nor is a database that a successful apply leaves
//! unable to export its changes or to take the same changeset again.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use lsync_fuzz::input::Input;
use lsync_fuzz::{body_of, debug, fresh, world, wrap};
use lsync_wire::changeset::{Changeset, Fence, Op};

fn edit(cs: &mut Changeset, inp: &mut Input, known: &[String]) {
    let ops = usize::from(inp.u8() % 8) + 1;
    for _ in 0..ops {
        if inp.is_empty() && !cs.changes.is_empty() {
            break;
        }
        let n = cs.changes.len().max(1);
        let i = usize::from(inp.u8()) % n;
        let op = inp.u8() % 14;
        let Some(c) = cs.changes.get_mut(i) else {
            continue;
        };
        match op {
            0 => c.pk = inp.value(known),
            1 => {
                if !c.data.is_empty() {
                    let j = usize::from(inp.u8()) % c.data.len();
                    c.data[j].1 = inp.value(known);
                }
            }
            2 => c.hlc = inp.int(),
            3 => c.origin = Arc::from(inp.pick(known).as_str()),
            4 => c.op = Op::from_code(inp.u8() % 4).unwrap_or(Op::Insert),
            5 => {
                let c = c.clone();
                cs.changes.push(c);
            }
            6 => {
                cs.changes.remove(i);
            }
            7 => {
                let j = usize::from(inp.u8()) % n;
                let last = cs.changes.len() - 1;
                cs.changes.swap(i, j.min(last));
            }
            8 => {
                let t = inp.pick(&cs.tables).name.clone();
                c.tbl = Arc::from(t.as_str());
            }
            9 => {
                cs.from = inp.int();
                cs.to = inp.int();
            }
            10 => {
                cs.fence = inp.u8().is_multiple_of(2).then(|| Fence {
                    sender: inp.pick(known).clone(),
                    receiver: inp.pick(known).clone(),
                    acked: inp.int(),
                })
            }
            11 => {
                // A column of the table's description renamed, added or
                // dropped (the data then names it or not: encode decides).
                let t = usize::from(inp.u8()) % cs.tables.len().max(1);
                if let Some(t) = cs.tables.get_mut(t) {
                    match inp.u8() % 3 {
                        0 => t.columns.push("uuid".into()),
                        1 => {
                            t.columns.pop();
                        }
                        _ => {
                            t.mode =
                                ["shared", "device_owned", ""][usize::from(inp.u8() % 3)].into()
                        }
                    }
                }
            }
            12 => {
                // A data column renamed to another column of its table.
                let cols: Vec<String> = cs
                    .tables
                    .iter()
                    .find(|t| *t.name == *c.tbl)
                    .map(|t| t.columns.clone())
                    .unwrap_or_default();
                if !c.data.is_empty() && !cols.is_empty() {
                    let j = usize::from(inp.u8()) % c.data.len();
                    c.data[j].0 = Arc::from(inp.pick(&cols).as_str());
                }
            }
            _ => c.seq = inp.int(),
        }
    }
}

fn blob(inp: &mut Input, mode: u8) -> Option<Vec<u8>> {
    let w = world();
    match mode {
        0 => Some(inp.rest().to_vec()),
        1 => Some(wrap(inp.rest())),
        2 => {
            let mut body = body_of(inp.pick::<Vec<u8>>(&w.changesets));
            while !inp.is_empty() && !body.is_empty() {
                let at = usize::from(inp.u16()) % body.len();
                body[at] ^= inp.u8().max(1);
            }
            Some(wrap(&body))
        }
        _ => {
            let mut cs = Changeset::decode(inp.pick::<Vec<u8>>(&w.changesets), 1 << 20).ok()?;
            edit(&mut cs, inp, &w.ids);
            // What cannot be encoded (an origin that is not a UUID, a
            // column the table does not describe) no peer can send either.
            cs.encode().ok()
        }
    }
}

fn apply(c: &rusqlite::Connection, blob: &[u8], in_tx: bool) -> rusqlite::Result<String> {
    if in_tx {
        c.execute_batch("BEGIN")?;
    }
    let out = c.query_row("SELECT lsync_apply(?1)", [blob], |r| r.get(0));
    if in_tx {
        c.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    }
    out
}

fuzz_target!(init: { world(); }, |data: &[u8]| {
    let w = world();
    let mut inp = Input::new(data);
    let how = inp.u8();
    let Some(blob) = blob(&mut inp, how & 3) else {
        return;
    };
    let template = if how & 8 != 0 {
        &w.receiver_synced
    } else {
        &w.receiver
    };
    let (c, _path) = fresh(template);
    let _ = c.query_row("SELECT lsync_changeset_info(?1)", [&blob], |r| {
        r.get::<_, String>(0)
    });
    let _ = c.query_row("SELECT lsync_drift(?1)", [&blob], |r| {
        r.get::<_, Option<String>>(0)
    });
    let in_tx = how & 4 != 0;
    let applied = apply(&c, &blob, in_tx);
    if debug() {
        eprintln!("mode {} in_tx {in_tx}: {applied:?}", how & 3);
    }
    if applied.is_ok() {
        // A database that took a changeset still exports, and takes the
        // same changeset again (idempotence: no error the first apply
        // did not hit).
        let export = c.query_row("SELECT lsync_changeset(0)", [], |r| r.get::<_, Vec<u8>>(0));
        let exported = export.unwrap_or_else(|e| panic!("no export after a successful apply: {e}"));
        Changeset::decode(&exported, 1 << 30).expect("the export decodes");
        if let Err(e) = apply(&c, &blob, in_tx) {
            panic!("the same changeset failed the second time: {e}");
        }
    }
});
