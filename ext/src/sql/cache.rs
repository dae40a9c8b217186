//! Statements kept prepared across calls, per connection.
//!
//! Preparing is most of what a small commit's SQL costs: callgrind counted
//! sqlite3Prepare at 55% of each sidecar's instructions per one-row commit
//! (about 117 statements prepared on the sending side, 90 on the receiving
//! one, nearly all of them the same text every time). A statement kept past
//! the call that prepared it must be finalized before its connection
//! closes, or `sqlite3_close` fails (SQLITE_BUSY) and the connection leaks.
//! SQLite disconnects every virtual table first thing in `sqlite3_close`
//! and `sqlite3_close_v2`, before it looks for unfinalized statements (its
//! source says so for virtual tables that keep statements): so a
//! connection's statements are kept while the eponymous table
//! `lsync_statements` is connected there, which loading the extension
//! does, and are finalized by its xDisconnect. A connection without it (one
//! that lsync opens itself, without the extension) prepares every time.
//!
//! Only plain queries and DML are kept: a PRAGMA, a transaction statement
//! or DDL may act when it is prepared, not only when it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{api, sqlite3_stmt, Db, Stmt, Value};
use crate::error::Result;

/// The most statements kept per connection; past it they all go (a
/// connection that keeps writing new SQL texts must not grow forever).
const MAX_KEPT: usize = 256;

/// A prepared statement in the cache, reset, with no bindings.
struct Kept(*mut sqlite3_stmt);

// SAFETY: a kept statement is used by one thread at a time: it is taken out
// of the map (under the lock) before use, and SQLite serializes the use of
// its connection.
unsafe impl Send for Kept {}

struct Connection {
    /// Which arming this is (see [`arm`]).
    generation: u64,
    stmts: HashMap<Box<str>, Kept>,
}

/// The connections whose statements are kept, by handle address.
static KEPT: Mutex<Option<HashMap<usize, Connection>>> = Mutex::new(None);
static GENERATION: AtomicU64 = AtomicU64::new(0);

fn with_kept<T>(f: impl FnOnce(&mut HashMap<usize, Connection>) -> T) -> T {
    let mut guard = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// Whether `sql` may be kept: it must do nothing when prepared.
pub(super) fn keepable(sql: &str) -> bool {
    let word: String = sql
        .trim_start()
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    [
        "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "VALUES",
    ]
    .iter()
    .any(|k| word.eq_ignore_ascii_case(k))
}

/// What the cache has for a statement about to be prepared.
pub(super) enum Taken {
    /// Prepared already: the statement and its key.
    Hit(*mut sqlite3_stmt, Box<str>),
    /// Prepare it; `keep`: it goes back to the cache once done with.
    Miss { keep: bool },
}

pub(super) fn take(db: Db, sql: &str) -> Taken {
    let keep = keepable(sql);
    if !keep {
        return Taken::Miss { keep };
    }
    with_kept(|all| match all.get_mut(&(db.0 as usize)) {
        None => Taken::Miss { keep: false },
        Some(c) => match c.stmts.remove_entry(sql) {
            Some((key, s)) => Taken::Hit(s.0, key),
            None => Taken::Miss { keep: true },
        },
    })
}

/// Gives back a statement of `db`, already reset; it is finalized instead
/// when the connection keeps no statements (any more), or keeps another
/// one for the same text.
pub(super) fn give_back(db: Db, key: Box<str>, stmt: *mut sqlite3_stmt) {
    let surplus = with_kept(|all| {
        let Some(c) = all.get_mut(&(db.0 as usize)) else {
            return vec![Kept(stmt)];
        };
        if c.stmts.contains_key(&key) {
            return vec![Kept(stmt)];
        }
        let mut out = Vec::new();
        if c.stmts.len() >= MAX_KEPT {
            out.extend(c.stmts.drain().map(|(_, s)| s));
        }
        c.stmts.insert(key, Kept(stmt));
        out
    });
    finalize(surplus);
}

/// Starts keeping the statements of `db`; returns the arming to pass to
/// [`disarm`].
pub(crate) fn arm(db: Db) -> u64 {
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    let replaced = with_kept(|all| {
        all.insert(
            db.0 as usize,
            Connection {
                generation,
                stmts: HashMap::new(),
            },
        )
    });
    finalize(replaced.into_iter().flat_map(|c| c.stmts.into_values()));
    generation
}

/// Finalizes the statements kept for `db` and stops keeping them, unless
/// a later arming took over.
pub(crate) fn disarm(db: Db, generation: u64) {
    let gone = with_kept(|all| match all.get(&(db.0 as usize)) {
        Some(c) if c.generation == generation => all.remove(&(db.0 as usize)),
        _ => None,
    });
    finalize(gone.into_iter().flat_map(|c| c.stmts.into_values()));
}

/// `SQLITE_STMTSTATUS_REPREPARE`.
const STMTSTATUS_REPREPARE: std::ffi::c_int = 5;

/// The texts of the statements `db` keeps, each with the number of times
/// SQLite prepared it again since it was first prepared.
pub(crate) fn texts(db: Db) -> Vec<(String, i64)> {
    with_kept(|all| {
        all.get(&(db.0 as usize))
            .map(|c| {
                c.stmts
                    .iter()
                    .map(|(k, s)| {
                        // SAFETY: a kept statement is live until finalized,
                        // which takes it out of the map first.
                        let n = unsafe { call!(stmt_status(s.0, STMTSTATUS_REPREPARE, 0)) };
                        (k.to_string(), i64::from(n))
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Finalizes statements (outside the lock).
fn finalize(stmts: impl IntoIterator<Item = Kept>) {
    for s in stmts {
        // SAFETY: a kept statement is owned by the cache alone; it leaves
        // the map before this, so it is finalized exactly once.
        unsafe { call!(finalize(s.0)) };
    }
}

/// Prepared statements kept for the length of one operation (a flush, an
/// export, an apply), so per-row work does not even look in the
/// connection's statements (above); given back to those when the SQL
/// function returns.
pub struct Cache {
    db: Db,
    stmts: std::cell::RefCell<std::collections::HashMap<String, Option<Stmt>>>,
}

impl Cache {
    pub fn new(db: Db) -> Cache {
        Cache {
            db,
            stmts: Default::default(),
        }
    }

    pub fn db(&self) -> Db {
        self.db
    }

    /// Binds `params` to the cached statement for `sql` and hands it to `f`
    /// for stepping; the statement is reset afterwards.
    pub fn with<T>(
        &self,
        sql: &str,
        params: &[Value],
        f: impl FnOnce(&mut Stmt) -> Result<T>,
    ) -> Result<T> {
        let cached = self.stmts.borrow_mut().get_mut(sql).and_then(Option::take);
        let mut stmt = match cached {
            Some(s) => s,
            None => self.db.prepare(sql)?,
        };
        let out = stmt.bind_all(params).and_then(|()| f(&mut stmt));
        stmt.reset();
        let mut map = self.stmts.borrow_mut();
        match map.get_mut(sql) {
            Some(slot) if slot.is_none() => *slot = Some(stmt),
            Some(_) => {}
            None => {
                map.insert(sql.to_owned(), Some(stmt));
            }
        }
        out
    }

    /// Runs a statement to completion.
    pub fn run(&self, sql: &str, params: &[Value]) -> Result<()> {
        self.with(sql, params, |s| {
            while s.step()? {}
            Ok(())
        })
    }
}
