//! Registering scalar SQL functions: the trampoline SQLite calls, which
//! hands the arguments over (copied, or a BLOB borrowed), runs the Rust
//! closure inside `catch_unwind` and turns its result or error into the SQL
//! result.

use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use sqlite3ext_sys::{sqlite3_context, sqlite3_value};

use super::{api, blob_of_raw, transient, value_from_raw, Db, Value, SQLITE_BLOB, SQLITE_UTF8};
use crate::error::{Error, Result};

impl Db {
    /// Registers a scalar function. The closure receives owned copies of the
    /// arguments; errors become SQL errors and panics are caught, so nothing
    /// unwinds into SQLite.
    pub fn create_function<F>(&self, name: &str, n_args: c_int, flags: c_int, f: F) -> Result<()>
    where
        F: Fn(Db, &[Value]) -> Result<Value> + 'static,
    {
        self.register(name, n_args, flags, move |db, argv| {
            // SAFETY: `argv` holds the call's valid values (see `register`).
            let args: Vec<Value> = argv.iter().map(|v| unsafe { value_from_raw(*v) }).collect();
            f(db, &args)
        })
    }

    /// Registers a scalar function of one BLOB argument that the closure
    /// reads where SQLite holds it, not copied: a changeset of hundreds of
    /// MiB is then in memory once (the caller's bound copy), not three times.
    /// Any other argument is passed to the closure as `Err` of its value.
    pub fn create_blob_function<F>(&self, name: &str, flags: c_int, f: F) -> Result<()>
    where
        F: Fn(Db, std::result::Result<&[u8], Value>) -> Result<Value> + 'static,
    {
        self.register(name, 1, flags, move |db, argv| {
            let v = argv[0];
            // SAFETY: `v` is valid for the call (see `register`); the slice
            // does not outlive it, and reading it does not convert the value.
            let arg = unsafe {
                if call!(value_type(v)) == SQLITE_BLOB {
                    Ok(blob_of_raw(v))
                } else {
                    Err(value_from_raw(v))
                }
            };
            f(db, arg)
        })
    }

    fn register<F>(&self, name: &str, n_args: c_int, flags: c_int, f: F) -> Result<()>
    where
        F: Fn(Db, &[*mut sqlite3_value]) -> Result<Value> + 'static,
    {
        let cname = CString::new(name).map_err(|_| Error::msg("bad function name"))?;
        let boxed: *mut ScalarFn = Box::into_raw(Box::new(Box::new(f)));
        // SAFETY: `boxed` is a leaked Box reclaimed by `destroy_fn` when SQLite
        // drops the function (on replacement or connection close).
        let rc = unsafe {
            call!(create_function_v2(
                self.0,
                cname.as_ptr(),
                n_args,
                SQLITE_UTF8 | flags,
                boxed.cast::<c_void>(),
                Some(scalar_trampoline),
                None,
                None,
                Some(destroy_fn)
            ))
        };
        self.check(rc, "create_function")
    }
}

/// A registered function, called with the raw arguments of one call.
type ScalarFn = Box<dyn Fn(Db, &[*mut sqlite3_value]) -> Result<Value>>;

unsafe extern "C" fn scalar_trampoline(
    ctx: *mut sqlite3_context,
    argc: c_int,
    argv: *mut *mut sqlite3_value,
) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: user_data is the ScalarFn registered in create_function;
        // argv holds argc valid values for the duration of the call.
        let f = unsafe { &*call!(user_data(ctx)).cast::<ScalarFn>() };
        let db = Db(unsafe { call!(context_db_handle(ctx)) });
        let argv: &[*mut sqlite3_value] = if argv.is_null() || argc <= 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(argv, argc as usize) }
        };
        f(db, argv)
    }));
    match outcome {
        Ok(Ok(v)) => set_result(ctx, &v),
        Ok(Err(e)) => set_error(ctx, &e.to_string()),
        Err(_) => set_error(
            ctx,
            "lsync: internal error (caught a panic); nothing was changed",
        ),
    }
}

unsafe extern "C" fn destroy_fn(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: `p` came from Box::into_raw in create_function.
        drop(unsafe { Box::from_raw(p.cast::<ScalarFn>()) });
    }
}

/// Sets a function or vtab column result.
pub(super) fn set_result(ctx: *mut sqlite3_context, v: &Value) {
    // SAFETY: `ctx` is the live context of the current callback; text and
    // blobs are copied by SQLite (SQLITE_TRANSIENT).
    unsafe {
        match v {
            Value::Null => call!(result_null(ctx)),
            Value::Integer(i) => call!(result_int64(ctx, *i)),
            Value::Real(f) => call!(result_double(ctx, *f)),
            Value::Text(s) => call!(result_text64(
                ctx,
                s.as_ptr().cast::<c_char>(),
                s.len() as u64,
                transient(),
                SQLITE_UTF8 as u8
            )),
            Value::Blob(b) => call!(result_blob64(
                ctx,
                b.as_ptr().cast::<c_void>(),
                b.len() as u64,
                transient()
            )),
        }
    }
}

pub(super) fn set_error(ctx: *mut sqlite3_context, msg: &str) {
    let len = c_int::try_from(msg.len()).unwrap_or(c_int::MAX);
    // SAFETY: SQLite copies the message (length given explicitly).
    unsafe { call!(result_error(ctx, msg.as_ptr().cast::<c_char>(), len)) };
}
