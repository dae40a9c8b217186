//! Prepared statements: binding, stepping, reading columns, and what
//! happens to the bindings between runs (see [`Stmt::reset`]).

use std::ffi::{c_char, c_int, c_void};

use super::{
    api, cache, sqlite3_stmt, step_error, transient, value_from_raw, Db, Value, ValueRef,
    SQLITE_BLOB, SQLITE_DONE, SQLITE_FLOAT, SQLITE_INTEGER, SQLITE_ROW, SQLITE_TEXT, SQLITE_UTF8,
};
use crate::error::Result;

/// A prepared statement, finalized on drop (or reset and kept, see
/// `cache`).
pub struct Stmt {
    db: Db,
    ptr: *mut sqlite3_stmt,
    /// The text it is kept under once dropped.
    keep: Option<Box<str>>,
    /// Parameters bound since the last reset (bit i-1 for parameter i).
    bound: u64,
    /// Parameters holding text or a blob, unbound at the reset.
    held: u64,
    /// Not stepped since it was prepared or reset.
    fresh: bool,
}

/// The parameters whose bits are set in `mask`, in order.
fn params_in(mut mask: u64) -> impl Iterator<Item = c_int> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as c_int + 1;
            mask &= mask - 1;
            i
        })
    })
}

/// The bit of parameter `i` (1-based) in `Stmt::bound` and `Stmt::held`;
/// parameters past the 64th have none.
fn param_bit(i: c_int) -> u64 {
    match i {
        1..=64 => 1 << (i - 1),
        _ => 0,
    }
}

impl Stmt {
    pub(super) fn new(db: Db, ptr: *mut sqlite3_stmt, keep: Option<Box<str>>) -> Stmt {
        Stmt {
            db,
            ptr,
            keep,
            bound: 0,
            held: 0,
            fresh: true,
        }
    }

    pub fn bind(&mut self, i: usize, v: &Value) -> Result<()> {
        self.bind_with(i, v, transient())
    }

    /// Binds `params` without copying them, runs the statement to completion,
    /// then resets it, which unbinds their text and blobs, all while `params`
    /// is borrowed, so SQLite never sees a freed buffer.
    pub fn run_borrowed<'v>(&mut self, params: impl IntoIterator<Item = &'v Value>) -> Result<()> {
        let r = (|| {
            for (i, p) in params.into_iter().enumerate() {
                // SQLITE_STATIC: valid until the reset below unbinds it.
                self.bind_with(i + 1, p, None)?;
            }
            while self.step()? {}
            Ok(())
        })();
        self.reset();
        r
    }

    fn bind_with(
        &mut self,
        i: usize,
        v: &Value,
        destructor: Option<unsafe extern "C" fn(*mut c_void)>,
    ) -> Result<()> {
        let i = i as c_int;
        let bit = param_bit(i);
        self.bound |= bit;
        match v {
            Value::Text(_) | Value::Blob(_) => self.held |= bit,
            _ => self.held &= !bit,
        }
        // SAFETY: the statement is live; text/blob are either copied
        // (TRANSIENT) or outlive the binding (the reset in run_borrowed
        // unbinds them).
        let rc = unsafe {
            match v {
                Value::Null => call!(bind_null(self.ptr, i)),
                Value::Integer(x) => call!(bind_int64(self.ptr, i, *x)),
                Value::Real(x) => call!(bind_double(self.ptr, i, *x)),
                Value::Text(s) => call!(bind_text64(
                    self.ptr,
                    i,
                    s.as_ptr().cast::<c_char>(),
                    s.len() as u64,
                    destructor,
                    SQLITE_UTF8 as u8
                )),
                Value::Blob(b) => call!(bind_blob64(
                    self.ptr,
                    i,
                    b.as_ptr().cast::<c_void>(),
                    b.len() as u64,
                    destructor
                )),
            }
        };
        self.db.check(rc, "bind")
    }

    pub fn bind_all(&mut self, params: &[Value]) -> Result<()> {
        for (i, p) in params.iter().enumerate() {
            self.bind(i + 1, p)?;
        }
        Ok(())
    }

    /// Steps once: `true` when a row is available.
    pub fn step(&mut self) -> Result<bool> {
        if self.fresh {
            self.fresh = false;
            self.unbind_unset()?;
        }
        // SAFETY: the statement is live.
        match unsafe { call!(step(self.ptr)) } {
            SQLITE_ROW => Ok(true),
            SQLITE_DONE => Ok(false),
            rc => Err(step_error(rc, self.db.errmsg())),
        }
    }

    /// Resets the statement so it can be stepped again with new bindings.
    ///
    /// Its numbers stay bound, and a parameter left unbound at the next run
    /// is bound NULL then (`unbind_unset`). SQLite 3.54 marks a statement to
    /// be prepared again at every `sqlite3_clear_bindings` once its plan
    /// looked at a bound value, whatever the values; its planner looks at
    /// one for an equality on a parameter (is it 0 or 1?) and for a
    /// `LIMIT ?n`. Clearing the bindings after each run had such statements
    /// parsed and planned at every run: the fold's clock lookup, for one,
    /// three quarters of a fold of scattered updates. Rebinding a number
    /// expires a statement only when that could change its plan. Text and
    /// blobs are unbound here: a borrowed one (`run_borrowed`) must not
    /// outlive the call, and a copy must not hold memory in the cache.
    pub fn reset(&mut self) {
        // SAFETY: the statement is live. Errors were already reported by step.
        unsafe {
            call!(reset(self.ptr));
            if call!(bind_parameter_count(self.ptr)) > 64 {
                call!(clear_bindings(self.ptr));
            } else {
                for i in params_in(self.held) {
                    call!(bind_null(self.ptr, i));
                }
            }
        }
        (self.bound, self.held, self.fresh) = (0, 0, true);
    }

    /// Binds NULL to each parameter not bound since the last reset, which may
    /// still hold the number of an earlier run: a statement runs as if its
    /// bindings had been cleared.
    fn unbind_unset(&mut self) -> Result<()> {
        // SAFETY: the statement is live.
        let count = unsafe { call!(bind_parameter_count(self.ptr)) }.clamp(0, 64);
        let all = u64::MAX.checked_shr(64 - count as u32).unwrap_or(0);
        for i in params_in(all & !self.bound) {
            // SAFETY: as above; `i` is a parameter of the statement.
            let rc = unsafe { call!(bind_null(self.ptr, i)) };
            self.db.check(rc, "bind")?;
        }
        Ok(())
    }

    /// Binds, runs to completion and resets: for repeated writes.
    pub fn execute(&mut self, params: &[Value]) -> Result<()> {
        self.bind_all(params)?;
        let r = (|| {
            while self.step()? {}
            Ok(())
        })();
        self.reset();
        r
    }

    pub fn column_count(&self) -> usize {
        // SAFETY: the statement is live.
        unsafe { call!(column_count(self.ptr)).max(0) as usize }
    }

    pub fn value(&self, i: usize) -> Value {
        // SAFETY: called after step() returned a row; column_value returns a
        // value that stays valid until the next step, and we copy it now.
        unsafe { value_from_raw(call!(column_value(self.ptr, i as c_int))) }
    }

    /// Column `i` of the current row where SQLite holds it, uncopied.
    pub fn value_ref(&self, i: usize) -> ValueRef<'_> {
        let i = i as c_int;
        // SAFETY: called after step() returned a row. A text or blob pointer
        // stays valid until the next step, reset or finalize, which take
        // `&mut self` or `self`, so not while the borrow lives, or until the
        // column is converted (to UTF-16, or a blob to text), which no
        // accessor here does: each reads a column as its own type.
        unsafe {
            let bytes = |p: *const u8| {
                let n = call!(column_bytes(self.ptr, i)).max(0) as usize;
                if p.is_null() || n == 0 {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(p, n)
                }
            };
            match call!(column_type(self.ptr, i)) {
                SQLITE_INTEGER => ValueRef::Integer(call!(column_int64(self.ptr, i))),
                SQLITE_FLOAT => ValueRef::Real(call!(column_double(self.ptr, i))),
                SQLITE_TEXT => {
                    let p = call!(column_text(self.ptr, i));
                    let b = bytes(p);
                    // Checked first: faster than the lossy copy, which
                    // valid text (nearly all) never needs.
                    ValueRef::Text(match std::str::from_utf8(b) {
                        Ok(s) => s.into(),
                        Err(_) => String::from_utf8_lossy(b),
                    })
                }
                SQLITE_BLOB => ValueRef::Blob(bytes(call!(column_blob(self.ptr, i)).cast()).into()),
                _ => ValueRef::Null,
            }
        }
    }

    /// Column `i` of the current row as SQLite holds its bytes, when it is
    /// text; uncopied and unchecked (not necessarily UTF-8).
    pub fn text_bytes(&self, i: usize) -> Option<&[u8]> {
        let i = i as c_int;
        // SAFETY: as for `value_ref`: the pointer stays valid while `self`
        // is borrowed, and the column is read as the type it has.
        unsafe {
            if call!(column_type(self.ptr, i)) != SQLITE_TEXT {
                return None;
            }
            let p = call!(column_text(self.ptr, i));
            let n = call!(column_bytes(self.ptr, i)).max(0) as usize;
            Some(match p.is_null() || n == 0 {
                true => &[][..],
                false => std::slice::from_raw_parts(p, n),
            })
        }
    }

    pub fn i64(&self, i: usize) -> i64 {
        // SAFETY: as for `value`.
        unsafe { call!(column_int64(self.ptr, i as c_int)) }
    }

    pub fn text(&self, i: usize) -> Option<String> {
        self.value(i).as_str().map(str::to_owned)
    }
}

impl Drop for Stmt {
    fn drop(&mut self) {
        match self.keep.take() {
            Some(key) if !self.ptr.is_null() => {
                self.reset();
                cache::give_back(self.db, key, self.ptr);
            }
            _ => {
                // SAFETY: finalized exactly once.
                unsafe { call!(finalize(self.ptr)) };
            }
        }
    }
}
