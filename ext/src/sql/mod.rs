//! The only module that touches the raw SQLite C API.
//!
//! Everything else in the extension works on the safe `Db`, `Stmt` and
//! `Value` types defined here, on the registration of SQL functions
//! (`func`) and on the `TableFunction` trait for eponymous virtual tables
//! (`vtab`). SQLite hands us a table of function pointers
//! (`sqlite3_api_routines`) when the extension is loaded; we keep it and call
//! through it, so the extension links no SQLite of its own. The C types come
//! from the bindgen crate `sqlite3ext-sys`; its SQLite functions are never
//! called (nor linked).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

pub use sqlite3ext_sys::{sqlite3, sqlite3_api_routines};
use sqlite3ext_sys::{sqlite3_stmt, sqlite3_value};

use crate::error::{Error, Result};

const SQLITE_OK: c_int = 0;
const SQLITE_ROW: c_int = 100;
const SQLITE_CONSTRAINT: c_int = 19;

/// An error from a statement's result code: constraint failures are told
/// apart (the primary code is the low byte of an extended one).
fn step_error(rc: c_int, msg: String) -> Error {
    if rc & 0xff == SQLITE_CONSTRAINT {
        Error::constraint(msg)
    } else {
        Error::Sqlite(msg)
    }
}
const SQLITE_DONE: c_int = 101;
const SQLITE_INTEGER: c_int = 1;
const SQLITE_FLOAT: c_int = 2;
const SQLITE_TEXT: c_int = 3;
const SQLITE_BLOB: c_int = 4;
const SQLITE_UTF8: c_int = 1;

/// Function flags (sqlite3.h).
pub const DETERMINISTIC: c_int = 0x0000_0800;
pub const DIRECTONLY: c_int = 0x0008_0000;
pub const INNOCUOUS: c_int = 0x0020_0000;

/// `SQLITE_TRANSIENT`: SQLite copies the buffer before the call returns.
fn transient() -> Option<unsafe extern "C" fn(*mut c_void)> {
    // SAFETY: SQLite defines SQLITE_TRANSIENT as the destructor value -1; it is
    // compared by value and never called.
    unsafe { std::mem::transmute::<isize, Option<unsafe extern "C" fn(*mut c_void)>>(-1) }
}

static API: AtomicPtr<sqlite3_api_routines> = AtomicPtr::new(ptr::null_mut());

/// Remembers SQLite's API table. Called from the entry point.
pub fn init_api(api: *mut sqlite3_api_routines) {
    if !api.is_null() {
        API.store(api, Ordering::Release);
    }
}

fn api() -> &'static sqlite3_api_routines {
    let p = API.load(Ordering::Acquire);
    // SAFETY: init_api runs in the entry point before any callback can be
    // registered, and SQLite's API table lives for the whole process.
    unsafe { &*p }
}

macro_rules! call {
    ($name:ident ( $($arg:expr),* )) => {
        (api().$name.expect(concat!("sqlite3_api_routines.", stringify!($name))))($($arg),*)
    };
}

// After `call!`, which they use.
mod cache;
mod conn;
mod func;
mod stmt;
mod txn;
mod vtab;

pub use stmt::Stmt;

pub use cache::Cache;
pub(crate) use cache::{arm as keep_statements, disarm as stop_keeping, texts as kept_texts};

pub use conn::{Connection, OPEN_CREATE, OPEN_NOFOLLOW, OPEN_READONLY, OPEN_READWRITE, OPEN_URI};

pub use vtab::{IndexInfo, TableCursor, TableFunction, Unusable};

pub use lsync_wire::value::{Value, ValueRef};

/// The version of the `sqlite3ext.h` that the API table's layout comes from:
/// the oldest host SQLite whose table has every entry we call.
pub fn api_version() -> &'static str {
    let v = sqlite3ext_sys::SQLITE_VERSION;
    std::str::from_utf8(&v[..v.len().saturating_sub(1)]).unwrap_or("?")
}

/// A borrowed database handle: the connection that called us.
#[derive(Clone, Copy)]
pub struct Db(*mut sqlite3);

// SAFETY: SQLite connections are used from one thread at a time (SQLite
// serializes access to a handle); `Db` is only a borrowed pointer to one.
unsafe impl Send for Db {}

impl Db {
    pub fn from_raw(db: *mut sqlite3) -> Db {
        Db(db)
    }

    fn errmsg(&self) -> String {
        // SAFETY: the handle is live for the duration of the callback.
        unsafe { cstr_lossy(call!(errmsg(self.0))) }
    }

    fn check(&self, rc: c_int, what: &str) -> Result<()> {
        if rc == SQLITE_OK {
            Ok(())
        } else {
            Err(Error::Sqlite(format!("{what}: {}", self.errmsg())))
        }
    }

    /// Prepares `sql`, or takes it from the statements this connection
    /// keeps (see `cache`); either way the statement is fresh: reset, with
    /// no bindings.
    pub fn prepare(&self, sql: &str) -> Result<Stmt> {
        let keep = match cache::take(*self, sql) {
            cache::Taken::Hit(ptr, key) => {
                return Ok(Stmt::new(*self, ptr, Some(key)));
            }
            cache::Taken::Miss { keep } => keep.then(|| sql.into()),
        };
        let mut stmt = ptr::null_mut();
        let len = c_int::try_from(sql.len()).map_err(|_| Error::msg("SQL text too long"))?;
        // SAFETY: `sql` outlives the call and its length is passed explicitly.
        let rc = unsafe {
            call!(prepare_v2(
                self.0,
                sql.as_ptr().cast::<c_char>(),
                len,
                &mut stmt,
                ptr::null_mut()
            ))
        };
        self.check(rc, "prepare")?;
        Ok(Stmt::new(*self, stmt, keep))
    }

    /// Runs one or more statements that return no rows.
    pub fn exec(&self, sql: &str) -> Result<()> {
        let c = CString::new(sql).map_err(|_| Error::msg("SQL contains a NUL byte"))?;
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: `c` is a valid C string; the error message is freed with
        // sqlite3_free as the API requires.
        let rc = unsafe { call!(exec(self.0, c.as_ptr(), None, ptr::null_mut(), &mut err)) };
        if rc == SQLITE_OK {
            return Ok(());
        }
        let msg = if err.is_null() {
            self.errmsg()
        } else {
            // SAFETY: non-null error strings from sqlite3_exec are C strings.
            let m = unsafe { cstr_lossy(err) };
            // SAFETY: allocated by SQLite; freed exactly once.
            unsafe { call!(free(err.cast::<c_void>())) };
            m
        };
        Err(step_error(rc, msg))
    }

    /// Runs one statement with parameters, discarding any rows.
    pub fn run(&self, sql: &str, params: &[Value]) -> Result<()> {
        let mut s = self.prepare(sql)?;
        s.bind_all(params)?;
        while s.step()? {}
        Ok(())
    }

    /// The first column of the first row, or `None` when there is no row.
    pub fn query_value(&self, sql: &str, params: &[Value]) -> Result<Option<Value>> {
        let mut s = self.prepare(sql)?;
        s.bind_all(params)?;
        Ok(if s.step()? { Some(s.value(0)) } else { None })
    }

    pub fn query_i64(&self, sql: &str, params: &[Value]) -> Result<Option<i64>> {
        Ok(self.query_value(sql, params)?.and_then(|v| v.as_i64()))
    }

    pub fn query_text(&self, sql: &str, params: &[Value]) -> Result<Option<String>> {
        Ok(self
            .query_value(sql, params)?
            .and_then(|v| v.as_str().map(str::to_owned)))
    }

    /// How many parameters one statement may have
    /// (`SQLITE_LIMIT_VARIABLE_NUMBER`).
    pub fn max_params(&self) -> usize {
        const SQLITE_LIMIT_VARIABLE_NUMBER: c_int = 9;
        // SAFETY: plain accessor on a live handle; -1 only reads the limit.
        let n = unsafe { call!(limit(self.0, SQLITE_LIMIT_VARIABLE_NUMBER, -1)) };
        usize::try_from(n).unwrap_or(0)
    }

    pub fn last_insert_rowid(&self) -> i64 {
        // SAFETY: plain accessor on a live handle.
        unsafe { call!(last_insert_rowid(self.0)) }
    }

    /// Turns trigger firing on or off for this connection
    /// (`SQLITE_DBCONFIG_ENABLE_TRIGGER`); returns the previous setting.
    pub fn set_triggers(&self, on: bool) -> Result<bool> {
        let before = self.triggers_enabled()?;
        self.trigger_config(c_int::from(on))?;
        Ok(before)
    }

    /// Whether triggers fire on this connection.
    pub fn triggers_enabled(&self) -> Result<bool> {
        self.trigger_config(-1)
    }

    /// `mode` 0 or 1 sets the flag, -1 only reads it; returns the flag after.
    fn trigger_config(&self, mode: c_int) -> Result<bool> {
        const SQLITE_DBCONFIG_ENABLE_TRIGGER: c_int = 1003;
        let mut after: c_int = 0;
        // SAFETY: db_config with ENABLE_TRIGGER takes an int and an int* out
        // parameter (the setting after the call), per sqlite3.h.
        let rc = unsafe {
            call!(db_config(
                self.0,
                SQLITE_DBCONFIG_ENABLE_TRIGGER,
                mode,
                &mut after as *mut c_int
            ))
        };
        self.check(rc, "db_config")?;
        Ok(after != 0)
    }

    pub fn changes(&self) -> i64 {
        // SAFETY: plain accessor on a live handle.
        i64::from(unsafe { call!(changes(self.0)) })
    }

    /// Runs `f` inside a savepoint: released on success, rolled back on error,
    /// so a failed call leaves nothing half-applied. Nests inside the caller's
    /// transaction when there is one.
    pub fn savepoint<T>(&self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.savepoint_if(name, |_| f())
    }

    /// `savepoint`, telling `f` whether there is one: false inside a
    /// running write statement.
    pub fn savepoint_if<T>(&self, name: &str, f: impl FnOnce(bool) -> Result<T>) -> Result<T> {
        if let Err(e) = self.exec(&format!("SAVEPOINT {name}")) {
            // Inside a running write statement (INSERT ... SELECT FROM
            // lsync_changes(...)) SQLite allows no savepoint. The work then
            // runs inside that statement's own transaction, which an error
            // from us aborts and rolls back as a whole.
            if e.to_string().contains("statements in progress") {
                return f(false);
            }
            return Err(e);
        }
        match f(true) {
            Ok(v) => {
                self.exec(&format!("RELEASE {name}"))?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.exec(&format!("ROLLBACK TO {name}; RELEASE {name}"));
                Err(e)
            }
        }
    }

    /// Like `savepoint`, but outside a transaction it begins one with
    /// `BEGIN IMMEDIATE`: a deferred transaction that reads, then writes
    /// fails at once (busy snapshot, no busy wait) when another connection
    /// commits in between.
    pub fn write_savepoint<T>(&self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.autocommit() {
            return self.savepoint(name, f);
        }
        self.exec("BEGIN IMMEDIATE")?;
        match self.savepoint(name, f) {
            Ok(v) => {
                self.exec("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.exec("ROLLBACK");
                Err(e)
            }
        }
    }
}

impl Db {
    /// The file behind schema `main`; `None` for in-memory and temporary
    /// databases.
    pub fn filename(&self) -> Option<std::path::PathBuf> {
        // SAFETY: the handle is live; the returned string is owned by SQLite
        // and copied before the call returns.
        let p = unsafe { call!(db_filename(self.0, c"main".as_ptr())) };
        // SAFETY: NULL or a NUL-terminated string.
        let s = unsafe { cstr_lossy(p) };
        (!s.is_empty()).then(|| std::path::PathBuf::from(s))
    }

    pub fn busy_timeout(&self, ms: i32) -> Result<()> {
        // SAFETY: plain setter on a live handle.
        let rc = unsafe { call!(busy_timeout(self.0, ms)) };
        self.check(rc, "busy_timeout")
    }

    /// Copies the whole `main` database of `src` over the `main` database of
    /// `self` with the backup API, in one step: one read transaction on the
    /// source and one write transaction on the destination, so the copy is
    /// consistent and the destination changes atomically.
    pub fn backup_from(&self, src: Db) -> Result<()> {
        let main = c"main".as_ptr();
        // SAFETY: both handles are live; the backup object is finished
        // exactly once below, which releases it.
        let b = unsafe { call!(backup_init(self.0, main, src.0, main)) };
        if b.is_null() {
            return Err(Error::Sqlite(format!("backup: {}", self.errmsg())));
        }
        // SAFETY: `b` is the live backup object created above.
        let step = unsafe { call!(backup_step(b, -1)) };
        // SAFETY: as above; finish frees `b` and reports the first error.
        let finish = unsafe { call!(backup_finish(b)) };
        if step != SQLITE_DONE {
            return Err(Error::Sqlite(format!(
                "backup: {} (code {step})",
                self.errmsg()
            )));
        }
        self.check(finish, "backup")
    }
}

/// Copies an `sqlite3_value` into an owned `Value`.
///
/// # Safety
/// `v` must be a valid value pointer for the duration of the call.
pub unsafe fn value_from_raw(v: *mut sqlite3_value) -> Value {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match call!(value_type(v)) {
            SQLITE_INTEGER => Value::Integer(call!(value_int64(v))),
            SQLITE_FLOAT => Value::Real(call!(value_double(v))),
            SQLITE_TEXT => {
                let p = call!(value_text(v));
                let n = call!(value_bytes(v)).max(0) as usize;
                Value::Text(bytes_lossy(p, n))
            }
            SQLITE_BLOB => Value::Blob(blob_of_raw(v).to_vec()),
            _ => Value::Null,
        }
    }
}

/// The bytes of a BLOB value where SQLite holds them.
///
/// # Safety
/// `v` must be a valid BLOB value, and the slice must not outlive it (nor a
/// call that converts it).
pub unsafe fn blob_of_raw<'a>(v: *mut sqlite3_value) -> &'a [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let p = call!(value_blob(v)).cast::<u8>();
        let n = call!(value_bytes(v)).max(0) as usize;
        if p.is_null() || n == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(p, n)
        }
    }
}

unsafe fn bytes_lossy(p: *const u8, n: usize) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller passes a buffer of n bytes.
    String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(p, n) }).into_owned()
}

unsafe fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
