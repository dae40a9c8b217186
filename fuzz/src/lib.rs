//! What the SQL fuzz targets (`apply_sql`, `restore_file`) share: the
//! extension (the `liblsync.so` this build instrumented, see `register`)
//! registered on every connection, a small tracked schema, and the databases, changesets and
//! snapshots that the inputs start from, made once per process by the real
//! SQL API.
//!
//! With `LSYNC_FUZZ_SEEDS=DIR` set, the world also writes its valid
//! changesets and snapshots to `DIR/apply_sql` and `DIR/restore_file`, in
//! the input layout of those targets: that is how `fuzz/seeds/` was made.

use std::ffi::{c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use lsync_wire::changeset::{Changeset, FORMAT, MAGIC};
use rusqlite::{params, Connection};

pub mod input;

/// The receivers' cap on a decompressed changeset (`max_changeset_bytes`).
pub const MAX_BODY: i64 = 1 << 20;

/// The tracked schema: a device-owned tree, a shared table with a UNIQUE
/// name, a CHECK and a CASCADE FK into it, and a shared join table whose
/// identity is its two FKs. Small pages make small snapshots (seeds).
pub const SCHEMA: &str = include_str!("../world.sql");

/// Fixed ids, so that the checked-in seeds name the world's library,
/// devices and rows in every run.
pub const LIBRARY: &str = "01a20152-4dbb-7029-9802-6754477a9a51";
pub const PEER: &str = "01a20152-0000-7000-8000-00000000000a";
pub const ME: &str = "01a20152-0000-7000-8000-00000000000b";

/// Where the world lives and the inputs start from.
pub struct World {
    pub dir: PathBuf,
    pub library: String,
    /// The device that made `changesets` and `snapshots`, and the receiver.
    pub peer: String,
    pub me: String,
    /// The receiver as the app left it (own rows, one label name that
    /// clashes with the peer's), and the same after it applied the peer's
    /// first changeset.
    pub receiver: PathBuf,
    pub receiver_synced: PathBuf,
    /// The receiver's library, with nothing in it: restore's empty path.
    pub empty: PathBuf,
    /// Valid changesets: the peer's first, its next, all of it, and one of
    /// the receiver's own (which the receiver must never apply).
    pub changesets: Vec<Vec<u8>>,
    /// Valid snapshot files: the peer's whole library, and its own rows.
    pub snapshots: Vec<Vec<u8>>,
    /// Global ids and device ids found in the above, for values that mean
    /// something to the receiver.
    pub ids: Vec<String>,
    /// The snapshot's tables and their columns, for crafted edits.
    pub snapshot_tables: Vec<(String, Vec<String>)>,
}

type Entry = unsafe extern "C" fn(
    *mut rusqlite::ffi::sqlite3,
    *mut *mut c_char,
    *const rusqlite::ffi::sqlite3_api_routines,
) -> c_int;

/// `liblsync.so` as this build made it (instrumented like the targets):
/// `$LSYNC_EXT`, else next to the target's executable or in its `deps`.
fn ext_path() -> PathBuf {
    if let Some(p) = std::env::var_os("LSYNC_EXT") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the target knows its own path");
    let dir = exe.parent().expect("the target's directory");
    [dir.join("liblsync.so"), dir.join("deps/liblsync.so")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no liblsync.so near {}: set LSYNC_EXT", exe.display()))
}

/// The extension's entry points, from the instrumented `.so`. Not linked
/// in: its crate brings a second SQLite (sqlite3ext-sys compiles one),
/// whose symbols clash with rusqlite's. Loaded at run time, the `.so` still
/// guides the fuzzer: libFuzzer counts the coverage of every module loaded
/// before the first input (the targets build the world in their `init`).
fn entry_points() -> &'static (Entry, Entry) {
    static ENTRIES: OnceLock<(Entry, Entry)> = OnceLock::new();
    ENTRIES.get_or_init(|| {
        let path = ext_path();
        let c_path = std::ffi::CString::new(path.to_str().expect("a UTF-8 path")).unwrap();
        // SAFETY: dlopen of a shared library by a NUL-terminated path; it
        // stays loaded for the life of the process.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a NUL-terminated message after a failure.
            let why = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) };
            panic!("dlopen {}: {}", path.display(), why.to_string_lossy());
        }
        let entry = |name: &std::ffi::CStr| -> Entry {
            // SAFETY: a NUL-terminated symbol name, in a handle that stays open.
            let sym = unsafe { libc::dlsym(handle, name.as_ptr()) };
            assert!(!sym.is_null(), "no {name:?} in {}", path.display());
            // SAFETY: the symbol is an extension's C entry point (sqlite3*,
            // char**, const sqlite3_api_routines*) -> int.
            unsafe { std::mem::transmute::<*mut libc::c_void, Entry>(sym) }
        };
        (
            entry(c"sqlite3_lsync_init"),
            entry(c"sqlite3_lsync_testing_init"),
        )
    })
}

/// Registers the extension for every later connection: through its testing
/// entry point while the world is made (fixed device ids make seeds that
/// stay valid), through the ordinary one for the inputs.
fn register(testing: bool) {
    let (normal, test) = *entry_points();
    let (on, off) = if testing {
        (test, normal)
    } else {
        (normal, test)
    };
    // SAFETY: (un)registers valid entry points for later connections;
    // cancelling, unlike registering, needs SQLite initialized (its mutex).
    unsafe {
        assert_eq!(rusqlite::ffi::sqlite3_initialize(), 0, "sqlite3_initialize");
        rusqlite::ffi::sqlite3_cancel_auto_extension(Some(off));
        let rc = rusqlite::ffi::sqlite3_auto_extension(Some(on));
        assert_eq!(rc, 0, "sqlite3_auto_extension");
    }
}

/// A connection to `path`, the extension loaded.
pub fn open(path: &Path) -> Connection {
    let c = Connection::open(path).expect("open a database");
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c
}

/// Removes `path` and the files SQLite keeps beside it.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// A fresh copy of `template` at `dir/work.db`, opened.
pub fn fresh(template: &Path) -> (Connection, PathBuf) {
    let w = world();
    let work = w.dir.join("work.db");
    remove_db(&work);
    std::fs::copy(template, &work).expect("copy the template database");
    (open(&work), work)
}

/// A changeset blob around `body`, with a valid header and zstd checksum:
/// what a peer holding the secret can send.
pub fn wrap(body: &[u8]) -> Vec<u8> {
    let mut blob = MAGIC.to_vec();
    blob.push(FORMAT);
    blob.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut z = zstd::bulk::Compressor::new(1).unwrap();
    z.include_checksum(true).unwrap();
    blob.extend_from_slice(&z.compress(body).unwrap());
    blob
}

/// The body of a valid blob.
pub fn body_of(blob: &[u8]) -> Vec<u8> {
    zstd::stream::decode_all(&blob[14..]).expect("a valid changeset decompresses")
}

/// `LSYNC_FUZZ_DEBUG` set: the targets print what each input did (to see
/// that the seeds reach what they should).
pub fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("LSYNC_FUZZ_DEBUG").is_some())
}

pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        register(true);
        let w = build();
        register(false);
        w
    })
}

extern "C" fn cleanup() {
    if let Some(w) = WORLD_DIR.get() {
        let _ = std::fs::remove_dir_all(w);
    }
}
static WORLD_DIR: OnceLock<PathBuf> = OnceLock::new();

fn scalar<T: rusqlite::types::FromSql>(c: &Connection, sql: &str) -> T {
    c.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn build() -> World {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("lsync-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the fuzz world's directory");
    let _ = WORLD_DIR.set(dir.clone());
    // SAFETY: registers a plain extern "C" fn with no arguments.
    unsafe { libc::atexit(cleanup) };

    // The peer: a tree of folders, labels in them, pins.
    let peer_path = dir.join("peer.db");
    let p = open(&peer_path);
    p.execute_batch(SCHEMA).expect("the peer's schema");
    let library: String = scalar(&p, &format!("SELECT lsync_library_id('{LIBRARY}')"));
    let peer: String = scalar(&p, &format!("SELECT lsync_debug_set_device_id('{PEER}')"));
    assert_eq!((library.as_str(), peer.as_str()), (LIBRARY, PEER));
    p.execute_batch(
        "INSERT INTO folders(id, uuid, name) VALUES (1, '01a20152-0000-7000-8000-0000000000f1', 'root');
         INSERT INTO folders(id, uuid, name, parent_id) VALUES
           (2, '01a20152-0000-7000-8000-0000000000f2', 'docs', 1),
           (3, '01a20152-0000-7000-8000-0000000000f3', 'music', 1);
         INSERT INTO labels(uuid, name, color, folder_id) VALUES
           ('01a20152-0000-7000-8000-0000000000a1', 'inbox', 'red', 2),
           ('01a20152-0000-7000-8000-0000000000a2', 'done', NULL, 3),
           ('01a20152-0000-7000-8000-0000000000a3', 'later', 'blue', NULL);
         INSERT INTO pins(label_id, folder_id, note) VALUES (1, 2, 'a'), (2, 3, NULL);",
    )
    .expect("the peer's rows");
    let first: Vec<u8> = scalar(&p, "SELECT lsync_changeset(0)");
    let head: i64 = scalar(&p, "SELECT lsync_head()");
    p.execute_batch(
        "UPDATE labels SET color = 'green' WHERE name = 'inbox';
         UPDATE folders SET name = 'papers' WHERE name = 'docs';
         DELETE FROM pins WHERE note IS NULL;
         DELETE FROM labels WHERE name = 'later';
         INSERT INTO folders(id, uuid, name, parent_id) VALUES
           (4, '01a20152-0000-7000-8000-0000000000f4', 'new', 3);
         INSERT INTO labels(uuid, name, folder_id) VALUES
           ('01a20152-0000-7000-8000-0000000000a4', 'fresh', 4);",
    )
    .expect("the peer's edits");
    let next: Vec<u8> = p
        .query_row("SELECT lsync_changeset(?1)", [head], |r| r.get(0))
        .unwrap();
    let all: Vec<u8> = scalar(&p, "SELECT lsync_changeset(0)");
    let whole = dir.join("whole.snap");
    let own = dir.join("own.snap");
    let _: i64 = p
        .query_row(
            "SELECT lsync_snapshot(?1)",
            [whole.to_str().unwrap()],
            |r| r.get(0),
        )
        .expect("a snapshot");
    let _: i64 = p
        .query_row(
            "SELECT lsync_snapshot(?1, ?2)",
            params![own.to_str().unwrap(), peer],
            |r| r.get(0),
        )
        .expect("a partial snapshot");
    let snapshots = vec![std::fs::read(&whole).unwrap(), std::fs::read(&own).unwrap()];

    // The receiver: the same library, rows of its own.
    let empty = dir.join("empty.db");
    let e = open(&empty);
    e.execute_batch(SCHEMA).expect("the receiver's schema");
    let _: String = e
        .query_row("SELECT lsync_library_id(?1)", [&library], |r| r.get(0))
        .expect("join the library");
    let me: String = scalar(&e, &format!("SELECT lsync_debug_set_device_id('{ME}')"));
    // A zstd bomb within the default cap (1 GiB) is a legal size, not a
    // finding, but would trip the malloc limit.
    e.execute(
        "INSERT OR REPLACE INTO lsync_config(key, value) VALUES ('max_changeset_bytes', ?1)",
        [MAX_BODY],
    )
    .unwrap();
    drop(e);
    let receiver = dir.join("receiver.db");
    std::fs::copy(&empty, &receiver).unwrap();
    let r = open(&receiver);
    r.execute_batch(
        "INSERT INTO folders(id, uuid, name) VALUES (1, '01a20152-0000-7000-8000-0000000000e1', 'home');
         INSERT INTO labels(uuid, name, color, folder_id) VALUES
           ('01a20152-0000-7000-8000-0000000000e2', 'inbox', 'black', 1),
           ('01a20152-0000-7000-8000-0000000000e3', 'mine', NULL, 1);
         INSERT INTO pins(label_id, folder_id) VALUES (2, 1);",
    )
    .expect("the receiver's rows");
    let mine: Vec<u8> = scalar(&r, "SELECT lsync_changeset(0)");
    drop(r);
    let receiver_synced = dir.join("receiver-synced.db");
    std::fs::copy(&receiver, &receiver_synced).unwrap();
    let rs = open(&receiver_synced);
    let _: String = rs
        .query_row("SELECT lsync_apply(?1)", [&first], |r| r.get(0))
        .expect("the receiver applies the peer's first changeset");
    drop(rs);

    let changesets = vec![first, next, all, mine];
    let mut ids = vec![library.clone(), peer.clone(), me.clone()];
    for blob in &changesets {
        let cs = Changeset::decode(blob, 1 << 20).expect("a valid changeset decodes");
        for c in &cs.changes {
            if let lsync_wire::value::Value::Text(t) = &c.pk {
                ids.push(t.clone());
            }
        }
    }
    ids.sort();
    ids.dedup();

    let s = open(&whole);
    let mut snapshot_tables = Vec::new();
    let names: Vec<String> = s
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for t in names {
        let cols: Vec<String> = s
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .unwrap()
            .query_map([&t], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        snapshot_tables.push((t, cols));
    }
    drop(s);

    let world = World {
        dir,
        library,
        peer,
        me,
        receiver,
        receiver_synced,
        empty,
        changesets,
        snapshots,
        ids,
        snapshot_tables,
    };
    if let Some(out) = std::env::var_os("LSYNC_FUZZ_SEEDS") {
        write_seeds(&world, Path::new(&out));
    }
    world
}

/// The valid inputs in each target's layout (see the targets' docs).
fn write_seeds(w: &World, out: &Path) {
    let apply = out.join("apply_sql");
    let restore = out.join("restore_file");
    std::fs::create_dir_all(&apply).unwrap();
    std::fs::create_dir_all(&restore).unwrap();
    for (k, blob) in w.changesets.iter().enumerate() {
        // Raw blob, applied alone and inside the caller's transaction.
        let mut raw = vec![0u8];
        raw.extend_from_slice(blob);
        std::fs::write(apply.join(format!("blob-{k}")), &raw).unwrap();
        // The body, framed by the harness, on the synced receiver.
        let mut body = vec![1u8 | 8];
        body.extend_from_slice(&body_of(blob));
        std::fs::write(apply.join(format!("body-{k}")), &body).unwrap();
        // The decoded changeset, edited: a pk set to a known id.
        let edit = [3u8 | 4, k as u8, 0, 0, 5, 0];
        std::fs::write(apply.join(format!("edit-{k}")), edit).unwrap();
    }
    for (k, file) in w.snapshots.iter().enumerate() {
        for template in [0u8, 1] {
            let mut raw = vec![template];
            raw.extend_from_slice(file);
            std::fs::write(restore.join(format!("file-{k}-{template}")), &raw).unwrap();
            // An edit of the snapshot: a config value set.
            let edit = [template | 2, k as u8, 3, 0, 1, 7];
            std::fs::write(restore.join(format!("edit-{k}-{template}")), edit).unwrap();
        }
    }
}
