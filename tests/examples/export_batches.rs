//! Exports a database's changes since a cursor in changesets of a given
//! size, as a sidecar streams them to a peer that is behind, for profiling
//! the export under callgrind:
//!
//! ```text
//! cargo build --release -p lsync-tests --example export_batches
//! valgrind --tool=callgrind target/release/examples/export_batches DB EXT SINCE BATCH
//! ```

use rusqlite::Connection;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, ext, since, batch] = args.as_slice() else {
        return Err("usage: export_batches DB EXTENSION SINCE BATCH".into());
    };
    let (mut since, batch): (i64, i64) = (since.parse()?, batch.parse()?);
    let c = Connection::open(db)?;
    // SAFETY: the extension is the one named on the command line.
    unsafe {
        c.load_extension_enable()?;
        c.load_extension(ext, Some("sqlite3_lsync_init"))?;
        c.load_extension_disable()?;
    }
    let (mut changesets, mut changes, mut bytes) = (0, 0, 0);
    loop {
        let blob: Vec<u8> = c.query_row("SELECT lsync_changeset(?1, ?2)", [since, batch], |r| {
            r.get(0)
        })?;
        let info: String = c.query_row("SELECT lsync_changeset_info(?1)", [&blob], |r| r.get(0))?;
        let info: serde_json::Value = serde_json::from_str(&info)?;
        let n = info["count"].as_i64().unwrap_or(0);
        if n == 0 {
            break;
        }
        (changesets, changes, bytes) = (changesets + 1, changes + n, bytes + blob.len());
        since = info["to"]
            .as_i64()
            .ok_or("lsync_changeset_info gave no cursor")?;
    }
    println!("exported {changes} changes in {changesets} changesets, {bytes} bytes");
    Ok(())
}
