//! Eponymous table-valued functions (`SELECT ... FROM f(arg)`): the
//! `sqlite3_module` callbacks, behind the safe `TableFunction` and
//! `TableCursor` traits. Every callback catches panics; an error becomes the
//! virtual table's error message, which SQLite reports for the statement.

use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use sqlite3ext_sys::{
    sqlite3, sqlite3_context, sqlite3_index_info, sqlite3_module, sqlite3_value, sqlite3_vtab,
    sqlite3_vtab_cursor,
};

use super::func::set_result;
use super::{api, value_from_raw, Db, Value, SQLITE_OK};
use crate::error::{Error, Result};

const SQLITE_ERROR: c_int = 1;
const SQLITE_CONSTRAINT: c_int = 19;
const SQLITE_INDEX_CONSTRAINT_EQ: u8 = 2;

/// A read-only virtual table that exists in every connection under its
/// module's name (eponymous-only: no `CREATE VIRTUAL TABLE`).
pub trait TableFunction: Sized + 'static {
    type Cursor: TableCursor;
    /// `CREATE TABLE x(...)`: the columns, with the arguments as `HIDDEN` ones.
    const SCHEMA: &'static str;
    fn connect(db: Db) -> Result<Self>;
    /// Picks a plan for the constraints SQLite offers; `Err(Unusable)`
    /// rejects this combination, and SQLite tries another.
    fn best_index(&self, info: &mut IndexInfo<'_>) -> std::result::Result<(), Unusable>;
    fn open(&self) -> Result<Self::Cursor>;
}

/// A scan over a `TableFunction`.
pub trait TableCursor: Sized + 'static {
    /// Starts a scan. `args` holds the constraint values that `best_index`
    /// asked for, in `argv_index` order.
    fn filter(&mut self, idx_num: c_int, args: &[Value]) -> Result<()>;
    fn next(&mut self) -> Result<()>;
    fn eof(&self) -> bool;
    fn column(&self, i: c_int) -> Result<Value>;
    fn rowid(&self) -> Result<i64>;
}

/// `best_index`: no plan for these constraints (`SQLITE_CONSTRAINT`).
#[derive(Debug)]
pub struct Unusable;

/// One `WHERE` term that SQLite offers to `best_index`.
#[derive(Debug, Clone, Copy)]
pub struct Constraint {
    pub column: c_int,
    pub usable: bool,
    /// The operator is `=`.
    pub is_eq: bool,
}

/// The planner's question and our answer (`sqlite3_index_info`).
pub struct IndexInfo<'a> {
    raw: &'a mut sqlite3_index_info,
}

impl IndexInfo<'_> {
    pub fn constraints(&self) -> Vec<Constraint> {
        let n = usize::try_from(self.raw.nConstraint).unwrap_or(0);
        if n == 0 || self.raw.aConstraint.is_null() {
            return Vec::new();
        }
        // SAFETY: SQLite passes nConstraint entries in aConstraint, valid for
        // the xBestIndex call that this borrow lives in.
        let all = unsafe { std::slice::from_raw_parts(self.raw.aConstraint, n) };
        all.iter()
            .map(|c| Constraint {
                column: c.iColumn,
                usable: c.usable != 0,
                is_eq: c.op == SQLITE_INDEX_CONSTRAINT_EQ,
            })
            .collect()
    }

    /// Passes the value of constraint `i` to `filter` as argument
    /// `argv_index` (from 1); with `omit`, SQLite does not check it again.
    pub fn use_constraint(&mut self, i: usize, argv_index: c_int, omit: bool) {
        let n = usize::try_from(self.raw.nConstraint).unwrap_or(0);
        assert!(i < n, "constraint {i} of {n}");
        // SAFETY: aConstraintUsage has nConstraint entries (checked above),
        // writable during xBestIndex.
        let usage = unsafe { &mut *self.raw.aConstraintUsage.add(i) };
        usage.argvIndex = argv_index;
        usage.omit = u8::from(omit);
    }

    pub fn set_idx_num(&mut self, n: c_int) {
        self.raw.idxNum = n;
    }

    pub fn set_estimated_cost(&mut self, cost: f64) {
        self.raw.estimatedCost = cost;
    }
}

impl Db {
    /// Registers `T` as the eponymous virtual table `name` on this connection.
    pub fn create_table_function<T: TableFunction>(&self, name: &str) -> Result<()> {
        let cname = CString::new(name).map_err(|_| Error::msg("bad table function name"))?;
        let module: &'static sqlite3_module = const { &module::<T>() };
        // SAFETY: the module is a constant with 'static lifetime; there is no
        // client data to free.
        let rc = unsafe {
            call!(create_module_v2(
                self.0,
                cname.as_ptr(),
                module,
                ptr::null_mut(),
                None
            ))
        };
        self.check(rc, "create_module")
    }
}

/// The callbacks for `T`. Without xCreate the table is eponymous-only.
const fn module<T: TableFunction>() -> sqlite3_module {
    sqlite3_module {
        iVersion: 2,
        xCreate: None,
        xConnect: Some(x_connect::<T>),
        xBestIndex: Some(x_best_index::<T>),
        xDisconnect: Some(take_back::<sqlite3_vtab, T>),
        xDestroy: Some(take_back::<sqlite3_vtab, T>),
        xOpen: Some(x_open::<T>),
        xClose: Some(take_back::<sqlite3_vtab_cursor, T::Cursor>),
        xFilter: Some(x_filter::<T::Cursor>),
        xNext: Some(x_next::<T::Cursor>),
        xEof: Some(x_eof::<T::Cursor>),
        xColumn: Some(x_column::<T::Cursor>),
        xRowid: Some(x_rowid::<T::Cursor>),
        xUpdate: None,
        xBegin: None,
        xSync: None,
        xCommit: None,
        xRollback: None,
        xFindFunction: None,
        xRename: None,
        xSavepoint: None,
        xRelease: None,
        xRollbackTo: None,
        xShadowName: None,
    }
}

/// What SQLite holds as a `sqlite3_vtab` or `sqlite3_vtab_cursor`: the C
/// header first (SQLite reads and writes it), then our value.
#[repr(C)]
struct WithHeader<H, T> {
    header: H,
    value: T,
}

/// Moves `value` to the heap behind a zeroed header, which SQLite fills in,
/// and hands it to SQLite through its out parameter `out`.
///
/// # Safety
/// `out` is SQLite's out parameter; `H` is a plain C struct of pointers and
/// integers, for which all-zero is a valid state.
unsafe fn hand_over<H, T>(out: *mut *mut H, value: T) {
    // SAFETY: guaranteed by the caller.
    let header = unsafe { std::mem::zeroed::<H>() };
    let boxed = Box::new(WithHeader { header, value });
    // SAFETY: guaranteed by the caller; `take_back` frees the box.
    unsafe { *out = Box::into_raw(boxed).cast::<H>() };
}

/// The value behind a header that `hand_over` gave SQLite.
///
/// # Safety
/// `p` came from `hand_over::<H, T>` and is live for the current callback.
unsafe fn value_of<'a, H, T>(p: *mut H) -> &'a mut T {
    // SAFETY: guaranteed by the caller.
    unsafe { &mut (*p.cast::<WithHeader<H, T>>()).value }
}

/// Frees what `hand_over` gave SQLite (xDisconnect, xClose).
///
/// # Safety
/// `p` is null or came from `hand_over::<H, T>`; SQLite gives it back once.
unsafe extern "C" fn take_back<H, T>(p: *mut H) -> c_int {
    if !p.is_null() {
        // SAFETY: guaranteed by the caller.
        let boxed = unsafe { Box::from_raw(p.cast::<WithHeader<H, T>>()) };
        let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
    }
    SQLITE_OK
}

/// Runs a callback body; a panic becomes an error, so nothing unwinds into
/// SQLite.
fn guarded<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::msg("lsync: internal error (caught a panic)")))
}

/// A copy of `msg` allocated by SQLite (`sqlite3_mprintf`), which SQLite
/// frees after reporting it.
fn sqlite_string(msg: &str) -> *mut c_char {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: "%s" with one valid C string argument.
    unsafe { call!(mprintf(c"%s".as_ptr(), c.as_ptr())) }
}

/// Reports `e` through the virtual table's error message.
///
/// # Safety
/// `vtab` is the live table of the current callback.
unsafe fn fail(vtab: *mut sqlite3_vtab, e: &Error) -> c_int {
    // SAFETY: guaranteed by the caller; a previous message was allocated by
    // SQLite and is replaced (and freed) here.
    unsafe {
        if !(*vtab).zErrMsg.is_null() {
            call!(free((*vtab).zErrMsg.cast::<c_void>()));
        }
        (*vtab).zErrMsg = sqlite_string(&e.to_string());
    }
    SQLITE_ERROR
}

unsafe extern "C" fn x_connect<T: TableFunction>(
    db: *mut sqlite3,
    _aux: *mut c_void,
    _argc: c_int,
    _argv: *const *const c_char,
    pp_vtab: *mut *mut sqlite3_vtab,
    err_msg: *mut *mut c_char,
) -> c_int {
    let made = guarded(|| {
        let table = T::connect(Db(db))?;
        let schema = CString::new(T::SCHEMA).map_err(|_| Error::msg("bad vtab schema"))?;
        // SAFETY: called from xConnect with the connection SQLite gave us.
        let rc = unsafe { call!(declare_vtab(db, schema.as_ptr())) };
        Db(db).check(rc, "declare_vtab")?;
        Ok(table)
    });
    match made {
        Ok(table) => {
            // SAFETY: SQLite's out parameter; freed by take_back (xDisconnect).
            unsafe { hand_over(pp_vtab, table) };
            SQLITE_OK
        }
        Err(e) => {
            // SAFETY: `err_msg` is SQLite's out parameter for the message.
            unsafe { *err_msg = sqlite_string(&e.to_string()) };
            SQLITE_ERROR
        }
    }
}

unsafe extern "C" fn x_best_index<T: TableFunction>(
    vtab: *mut sqlite3_vtab,
    info: *mut sqlite3_index_info,
) -> c_int {
    let planned = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `vtab` came from x_connect; `info` is valid and writable
        // for this call.
        let (table, raw) = unsafe { (value_of::<_, T>(vtab), &mut *info) };
        table.best_index(&mut IndexInfo { raw })
    }));
    match planned {
        Ok(Ok(())) => SQLITE_OK,
        Ok(Err(Unusable)) => SQLITE_CONSTRAINT,
        // SAFETY: `vtab` is live for this call.
        Err(_) => unsafe { fail(vtab, &Error::msg("lsync: internal error (caught a panic)")) },
    }
}

unsafe extern "C" fn x_open<T: TableFunction>(
    vtab: *mut sqlite3_vtab,
    pp_cursor: *mut *mut sqlite3_vtab_cursor,
) -> c_int {
    // SAFETY: `vtab` came from x_connect.
    let table = unsafe { value_of::<_, T>(vtab) };
    match guarded(|| table.open()) {
        Ok(cursor) => {
            // SAFETY: SQLite's out parameter; freed by take_back (xClose).
            unsafe { hand_over(pp_cursor, cursor) };
            SQLITE_OK
        }
        // SAFETY: `vtab` is live for this call.
        Err(e) => unsafe { fail(vtab, &e) },
    }
}

/// The Rust cursor behind SQLite's, and its table for error messages.
///
/// # Safety
/// `cursor` came from x_open and is live for the current callback.
unsafe fn cursor_of<'a, C>(cursor: *mut sqlite3_vtab_cursor) -> (&'a mut C, *mut sqlite3_vtab) {
    // SAFETY: guaranteed by the caller.
    unsafe { (value_of::<_, C>(cursor), (*cursor).pVtab) }
}

/// Runs a cursor callback: errors and panics become the table's message.
///
/// # Safety
/// As for [`cursor_of`].
unsafe fn with_cursor<C>(
    cursor: *mut sqlite3_vtab_cursor,
    f: impl FnOnce(&mut C) -> Result<()>,
) -> c_int {
    // SAFETY: guaranteed by the caller.
    let (c, vtab) = unsafe { cursor_of::<C>(cursor) };
    match guarded(|| f(c)) {
        Ok(()) => SQLITE_OK,
        // SAFETY: the cursor's table is live while the cursor is.
        Err(e) => unsafe { fail(vtab, &e) },
    }
}

unsafe extern "C" fn x_filter<C: TableCursor>(
    cursor: *mut sqlite3_vtab_cursor,
    idx_num: c_int,
    _idx_str: *const c_char,
    argc: c_int,
    argv: *mut *mut sqlite3_value,
) -> c_int {
    // SAFETY: argv holds argc values, valid for this call; the cursor is ours.
    unsafe {
        let args: Vec<Value> = (0..argc.max(0) as usize)
            .map(|i| value_from_raw(*argv.add(i)))
            .collect();
        with_cursor::<C>(cursor, |c| c.filter(idx_num, &args))
    }
}

unsafe extern "C" fn x_next<C: TableCursor>(cursor: *mut sqlite3_vtab_cursor) -> c_int {
    // SAFETY: the cursor is ours, live for this call.
    unsafe { with_cursor::<C>(cursor, C::next) }
}

unsafe extern "C" fn x_eof<C: TableCursor>(cursor: *mut sqlite3_vtab_cursor) -> c_int {
    // SAFETY: the cursor is ours, live for this call.
    let (c, _) = unsafe { cursor_of::<C>(cursor) };
    // A panic ends the scan rather than unwinding into SQLite.
    c_int::from(catch_unwind(AssertUnwindSafe(|| c.eof())).unwrap_or(true))
}

unsafe extern "C" fn x_column<C: TableCursor>(
    cursor: *mut sqlite3_vtab_cursor,
    ctx: *mut sqlite3_context,
    i: c_int,
) -> c_int {
    // SAFETY: the cursor is ours; `ctx` is the live result context.
    unsafe {
        with_cursor::<C>(cursor, |c| {
            set_result(ctx, &c.column(i)?);
            Ok(())
        })
    }
}

unsafe extern "C" fn x_rowid<C: TableCursor>(
    cursor: *mut sqlite3_vtab_cursor,
    p_rowid: *mut i64,
) -> c_int {
    // SAFETY: the cursor is ours; `p_rowid` is SQLite's out parameter.
    unsafe {
        with_cursor::<C>(cursor, |c| {
            *p_rowid = c.rowid()?;
            Ok(())
        })
    }
}
