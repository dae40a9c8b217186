//! Opening SQLite connections with the lsync extension loaded.
//!
//! By default the extension crate is linked into this binary and registered
//! as a SQLite *auto-extension*, so every connection opened afterwards has
//! the `lsync_*` functions. Alternatively the extension can be loaded from
//! its shared library (`liblsync.so`), like any other SQLite host would.

use std::ffi::{c_char, c_int};
use std::path::{Path, PathBuf};

use rusqlite::{ffi, Connection, LoadExtensionGuard, OpenFlags};

/// Entry point name of the extension in `liblsync.so`.
const ENTRY_POINT: &str = "sqlite3_lsync_init";

/// Where the lsync extension comes from.
#[derive(Debug, Clone)]
pub enum Extension {
    /// The copy linked into this binary, registered as an auto-extension.
    Static,
    /// A shared library loaded into every connection with `load_extension`.
    Shared(PathBuf),
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub extension: Extension,
    pub foreign_keys: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("registering the statically linked lsync extension")]
    Register(#[source] rusqlite::Error),
    #[error("opening {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("loading the lsync extension from {}", lib.display())]
    Load {
        lib: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("configuring {} ({what})", path.display())]
    Configure {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "this binary runs SQLite {runtime} but was built against {header}: \
         the extension's SQLite copy was linked instead of the bundled one"
    )]
    WrongSqlite { runtime: String, header: String },
    #[error("{}: journal_mode is {mode:?}, expected \"wal\"", path.display())]
    NotWal { path: PathBuf, mode: String },
}

/// Adapts the extension's entry point to rusqlite's `RawAutoExtension`.
///
/// The extension is written against `sqlite3ext-sys` (SQLite 3.39 headers),
/// whose `sqlite3` and `sqlite3_api_routines` are distinct Rust types from
/// `libsqlite3-sys`'s, and it takes the API pointer as `*mut` where rusqlite
/// passes `*const`. Only the pointer types differ: `sqlite3` is opaque, and
/// SQLite only ever appends to `sqlite3_api_routines`, so the 3.39 layout is
/// a prefix of the 3.54 table that SQLite passes here.
unsafe extern "C" fn lsync_auto_init(
    db: *mut ffi::sqlite3,
    pz_err: *mut *mut c_char,
    api: *const ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: SQLite calls this with a valid connection and API table; the
    // extension only reads through `api`.
    unsafe { lsync::sqlite3_lsync_init(db.cast(), pz_err, api.cast_mut().cast()) }
}

/// Registers the linked-in extension for all connections opened afterwards,
/// when `ext` is [`Extension::Static`]. Call it once, before opening
/// connections (SQLite ignores a repeated registration of the same function).
pub fn register(ext: &Extension) -> Result<(), DbError> {
    check_linked_sqlite()?;
    if let Extension::Static = ext {
        // SAFETY: the entry point neither opens nor closes connections and
        // does not touch the auto-extension list.
        unsafe { rusqlite::auto_extension::register_auto_extension(lsync_auto_init) }
            .map_err(DbError::Register)?;
    }
    Ok(())
}

/// Fails if the SQLite that answers at run time is not the bundled one that
/// rusqlite was compiled against (see the link-order note in `main.rs`).
fn check_linked_sqlite() -> Result<(), DbError> {
    let header = ffi::SQLITE_VERSION.to_str().unwrap_or_default().to_owned();
    let runtime = rusqlite::version();
    if runtime == header {
        Ok(())
    } else {
        Err(DbError::WrongSqlite {
            runtime: runtime.to_owned(),
            header,
        })
    }
}

/// Opens (or creates) `path` in WAL mode with `synchronous=NORMAL`, with the
/// lsync extension loaded.
pub fn open(path: &Path, opts: &DbOptions) -> Result<Connection, DbError> {
    tune(path, opts, connect(path, opts)?)
}

/// [`open`], but never creates the file: a database that is gone stays gone
/// instead of coming back empty, with new identities.
pub fn open_existing(path: &Path, opts: &DbOptions) -> Result<Connection, DbError> {
    let flags = OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE;
    tune(path, opts, connect_with(path, opts, flags)?)
}

fn tune(path: &Path, opts: &DbOptions, conn: Connection) -> Result<Connection, DbError> {
    let configure = |what, source| DbError::Configure {
        path: path.to_owned(),
        what,
        source,
    };
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| configure("journal_mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::NotWal {
            path: path.to_owned(),
            mode,
        });
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(|e| configure("synchronous", e))?;
    conn.pragma_update(None, "foreign_keys", opts.foreign_keys)
        .map_err(|e| configure("foreign_keys", e))?;
    Ok(conn)
}

/// Opens `path` (or `:memory:`) with the extension loaded, without
/// configuring anything else.
pub fn connect(path: &Path, opts: &DbOptions) -> Result<Connection, DbError> {
    connect_with(path, opts, OpenFlags::default())
}

fn connect_with(path: &Path, opts: &DbOptions, flags: OpenFlags) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(path, flags).map_err(|source| DbError::Open {
        path: path.to_owned(),
        source,
    })?;
    if let Extension::Shared(lib) = &opts.extension {
        load_shared(&conn, lib)?;
    }
    Ok(conn)
}

fn load_shared(conn: &Connection, lib: &Path) -> Result<(), DbError> {
    let load = |source| DbError::Load {
        lib: lib.to_owned(),
        source,
    };
    // SAFETY: loading native code is inherently trusted; the user named it.
    unsafe {
        let _guard = LoadExtensionGuard::new(conn).map_err(load)?;
        conn.load_extension(lib, Some(ENTRY_POINT)).map_err(load)
    }
}
