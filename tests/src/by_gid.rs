//! Every tracked table read through global ids, whatever identity each has:
//! what two replicas must agree on when their local ids (rowids, integer
//! FKs) differ. Generic over the schema: it reads `lsync_tables`.

use std::collections::BTreeMap;
use std::thread::sleep;
use std::time::Instant;

use rusqlite::Connection;

use crate::library::first_difference;
use crate::query::{query_rows, scalar};
use crate::sidecar::{Sidecar, PATIENCE, POLL};

/// What the dump needs of one tracked table.
struct TrackedTable {
    id: i64,
    name: String,
    /// Empty when lsync keeps the ids in `lsync_gid`.
    uuid_col: String,
    columns: Vec<String>,
    fks: BTreeMap<String, String>,
}

fn tracked_tables(c: &Connection) -> Vec<TrackedTable> {
    query_rows(
        c,
        "SELECT id, name, uuid_col, columns, fks FROM lsync_tables ORDER BY name",
    )
    .into_iter()
    .map(|r| TrackedTable {
        id: r[0].parse().expect("lsync_tables.id"),
        name: r[1].clone(),
        uuid_col: r[2].clone(),
        columns: serde_json::from_str(&r[3]).expect("lsync_tables.columns"),
        fks: serde_json::from_str(&r[4]).expect("lsync_tables.fks"),
    })
    .collect()
}

/// SQL for the global id of the row of `t` that `rowid` (an expression)
/// names: its id column, or its entry in `lsync_gid`.
fn global_id_sql(t: &TrackedTable, rowid: &str) -> String {
    if t.uuid_col.is_empty() {
        format!(
            "(SELECT gid FROM lsync_gid WHERE tbl = {} AND rid = {rowid})",
            t.id
        )
    } else {
        format!(
            "(SELECT \"{}\" FROM \"{}\" WHERE rowid = {rowid})",
            t.uuid_col, t.name
        )
    }
}

/// Every row of every tracked table as `table gid | col=value | ...`, sorted:
/// the row's global id, its tracked columns (local columns are not), and
/// each FK as its target's global id (a dangling FK shows its local value).
/// Values are SQL literals (`quote`), so types count.
pub fn dump_by_gid(c: &Connection) -> Vec<String> {
    let tables = tracked_tables(c);
    let mut rows = Vec::new();
    for t in &tables {
        // A WITHOUT ROWID table has its id in a column, and no rowid.
        let own = if t.uuid_col.is_empty() {
            global_id_sql(t, "t.rowid")
        } else {
            format!("t.\"{}\"", t.uuid_col)
        };
        let mut exprs = vec![format!("quote({own})")];
        for col in &t.columns {
            let target = t
                .fks
                .get(col)
                .and_then(|n| tables.iter().find(|x| x.name == *n));
            let value = match target {
                Some(x) => format!(
                    "CASE WHEN t.\"{col}\" IS NULL THEN 'NULL'
                          ELSE coalesce(quote({}), 'dangling ' || t.\"{col}\") END",
                    global_id_sql(x, &format!("t.\"{col}\""))
                ),
                None => format!("quote(t.\"{col}\")"),
            };
            exprs.push(format!("'{col}=' || {value}"));
        }
        let sql = format!(
            "SELECT '{} ' || {} FROM \"{}\" t",
            t.name,
            exprs.join(" || ' | ' || "),
            t.name
        );
        rows.extend(query_rows(c, &sql).into_iter().map(|mut r| r.remove(0)));
    }
    rows.sort();
    rows
}

/// Links still waiting for their target (`lsync_deferred`).
fn links_waiting(c: &Connection) -> i64 {
    scalar(c, "SELECT count(*) FROM lsync_deferred")
}

/// Waits, at most [`PATIENCE`], until `a` and `b` read the same through
/// global ids ([`dump_by_gid`]), no link is pending on either, and `also`
/// holds of both. Fails if a sidecar exits, or with the first difference
/// and both quarantines.
pub fn wait_same_by_gid(
    what: &str,
    nodes: &[&Sidecar],
    a: &Connection,
    b: &Connection,
    also: impl Fn(&Connection) -> bool,
) {
    let start = Instant::now();
    let max_polls = PATIENCE.as_millis() / POLL.as_millis() + 1;
    for _ in 0..max_polls {
        if dump_by_gid(a) == dump_by_gid(b)
            && links_waiting(a) == 0
            && links_waiting(b) == 0
            && also(a)
            && also(b)
        {
            return;
        }
        for n in nodes {
            assert!(n.alive(), "{} exited while waiting for: {what}", n.name);
        }
        if start.elapsed() > PATIENCE {
            break;
        }
        sleep(POLL);
    }
    let quarantine = |c: &Connection| query_rows(c, "SELECT tbl, op, error FROM lsync_conflicts");
    panic!(
        "timed out after {:.1} s waiting for: {what}\nfirst difference (a vs b): {}\n\
         pending links: {} at a, {} at b\nquarantined at a: {:?}\nquarantined at b: {:?}\n\
         a: {:#?}\nb: {:#?}",
        start.elapsed().as_secs_f64(),
        first_difference(&dump_by_gid(a), &dump_by_gid(b)),
        links_waiting(a),
        links_waiting(b),
        quarantine(a),
        quarantine(b),
        dump_by_gid(a),
        dump_by_gid(b),
    );
}
