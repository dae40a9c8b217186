//! Opening SQLite connections with the lsync extension loaded.
//!
//! The extension is loaded at run time from its shared library,
//! `liblsync.so`, into every connection, as any other SQLite host loads it:
//! this binary links one SQLite (rusqlite's bundled copy) and no extension
//! code. [`register`] finds the library once, at startup.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rusqlite::{Connection, LoadExtensionGuard, OpenFlags};

/// Entry point name of the extension in `liblsync.so`.
const ENTRY_POINT: &str = "sqlite3_lsync_init";

/// File name of the extension.
const LIBRARY: &str = "liblsync.so";

/// The library every connection loads, set by [`register`].
static EXTENSION: OnceLock<PathBuf> = OnceLock::new();

/// Connection settings.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub foreign_keys: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "cannot find the lsync extension: tried {}; give its path with --extension",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { tried: Vec<PathBuf> },
    #[error("the lsync extension {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("the lsync extension was not registered before opening a database")]
    NotRegistered,
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
    #[error("{}: journal_mode is {mode:?}, expected \"wal\"", path.display())]
    NotWal { path: PathBuf, mode: String },
}

/// Where the extension is: `explicit` (from --extension or the config file)
/// if given, else `liblsync.so` next to this executable, else
/// `../lib/liblsync.so` relative to it.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, DbError> {
    if let Some(p) = explicit {
        // Absolute, so that dlopen does not search the library path for a
        // bare file name.
        return match p.canonicalize() {
            Ok(abs) if abs.is_file() => Ok(abs),
            _ => Err(DbError::Missing(p.to_owned())),
        };
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let prefix = dir.parent().unwrap_or(dir);
    let tried = vec![dir.join(LIBRARY), prefix.join("lib").join(LIBRARY)];
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(DbError::NotFound { tried }),
    }
}

/// Finds the extension (see [`locate`]), checks that it loads, and makes
/// every connection opened afterwards load it. Call it once, before opening
/// connections; a later call keeps the first library. Returns the library
/// in use.
pub fn register(explicit: Option<&Path>) -> Result<&'static Path, DbError> {
    if let Some(lib) = EXTENSION.get() {
        return Ok(lib);
    }
    let lib = locate(explicit)?;
    let probe = Connection::open_in_memory().map_err(|source| DbError::Open {
        path: PathBuf::from(":memory:"),
        source,
    })?;
    load(&probe, &lib)?;
    Ok(EXTENSION.get_or_init(|| lib))
}

/// The library that [`register`] chose.
pub fn extension() -> Result<&'static Path, DbError> {
    EXTENSION
        .get()
        .map(PathBuf::as_path)
        .ok_or(DbError::NotRegistered)
}

/// Opens (or creates) `path` in WAL mode with `synchronous=NORMAL`, with the
/// lsync extension loaded.
pub fn open(path: &Path, opts: &DbOptions) -> Result<Connection, DbError> {
    tune(path, opts, connect(path)?)
}

/// [`open`], but never creates the file: a database that is gone stays gone
/// instead of coming back empty, with new identities.
pub fn open_existing(path: &Path, opts: &DbOptions) -> Result<Connection, DbError> {
    let flags = OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE;
    tune(path, opts, connect_with(path, flags)?)
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
pub fn connect(path: &Path) -> Result<Connection, DbError> {
    connect_with(path, OpenFlags::default())
}

fn connect_with(path: &Path, flags: OpenFlags) -> Result<Connection, DbError> {
    let lib = extension()?;
    let conn = Connection::open_with_flags(path, flags).map_err(|source| DbError::Open {
        path: path.to_owned(),
        source,
    })?;
    load(&conn, lib)?;
    Ok(conn)
}

fn load(conn: &Connection, lib: &Path) -> Result<(), DbError> {
    let load = |source| DbError::Load {
        lib: lib.to_owned(),
        source,
    };
    // SAFETY: loading native code is inherently trusted: the user named the
    // library, or it is the one installed beside this binary.
    unsafe {
        let _guard = LoadExtensionGuard::new(conn).map_err(load)?;
        conn.load_extension(lib, Some(ENTRY_POINT)).map_err(load)
    }
}
