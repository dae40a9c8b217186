//! Applies changeset files to a database the way the sidecar's session
//! connection does (bundled SQLite, foreign keys on, triggers off, one
//! `lsync_apply` per file), for profiling the apply under callgrind:
//!
//! ```text
//! cargo build --release -p lsync-tests --example apply_files
//! valgrind --tool=callgrind target/release/examples/apply_files DB EXT FILE...
//! ```
//!
//! With `LSYNC_TRIGGERS_ON=1` the connection keeps triggers on, as an app's
//! does (and as the sidecar's did before it kept them off).

use rusqlite::config::DbConfig;
use rusqlite::Connection;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, ext, files @ ..] = args.as_slice() else {
        return Err("usage: apply_files DB EXTENSION FILE...".into());
    };
    let c = Connection::open(db)?;
    // SAFETY: the extension is the one named on the command line.
    unsafe {
        c.load_extension_enable()?;
        c.load_extension(ext, Some("sqlite3_lsync_init"))?;
        c.load_extension_disable()?;
    }
    c.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
    let on = std::env::var_os("LSYNC_TRIGGERS_ON").is_some();
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, on)?;
    for f in files {
        let blob = std::fs::read(f)?;
        let _: String = c.query_row("SELECT lsync_apply(?1)", [blob], |r| r.get(0))?;
    }
    println!("applied {} changesets", files.len());
    Ok(())
}
