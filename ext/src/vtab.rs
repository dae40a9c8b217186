//! `lsync_changes(since)`: the eponymous table-valued function over the
//! change clock. It flushes pending captures, then pages through
//! `changes::read` a batch at a time, so memory stays bounded.

use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use sqlite_loadable::prelude::*;
use sqlite_loadable::table::{ConstraintOperator, IndexInfo, VTab, VTabArguments, VTabCursor};
use sqlite_loadable::{BestIndexError, Error as LError, Result as LResult};

use crate::changes::{self, Change};
use crate::flush;
use crate::sql::{self, Db, Value};

const BATCH: usize = 1024;
const SINCE_COLUMN: c_int = 7;

/// Runs a callback body, turning errors and panics into vtab errors.
fn guard<T>(f: impl FnOnce() -> crate::error::Result<T>) -> LResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(LError::new_message(e.to_string())),
        Err(_) => Err(LError::new_message(
            "lsync: internal error (caught a panic)",
        )),
    }
}

#[repr(C)]
pub struct ChangesTable {
    base: sqlite3_vtab,
    db: *mut sqlite3,
}

impl<'vtab> VTab<'vtab> for ChangesTable {
    type Aux = ();
    type Cursor = ChangesCursor;

    fn connect(
        db: *mut sqlite3,
        _aux: Option<&Self::Aux>,
        _args: VTabArguments,
    ) -> LResult<(String, ChangesTable)> {
        let schema = "CREATE TABLE x(seq INTEGER, hlc INTEGER, origin TEXT, tbl TEXT, pk, op TEXT, data TEXT, since HIDDEN)";
        Ok((
            schema.to_owned(),
            ChangesTable {
                base: sql::empty_vtab(),
                db,
            },
        ))
    }

    fn best_index(&self, mut info: IndexInfo) -> Result<(), BestIndexError> {
        let mut has_since = false;
        for mut c in info.constraints() {
            if c.column_idx() == SINCE_COLUMN {
                if !c.usable() || c.op() != Some(ConstraintOperator::EQ) {
                    return Err(BestIndexError::Constraint);
                }
                c.set_argv_index(1);
                c.set_omit(true);
                has_since = true;
            }
        }
        info.set_idxnum(i32::from(has_since));
        info.set_estimated_cost(1000.0);
        Ok(())
    }

    fn open(&mut self) -> LResult<ChangesCursor> {
        Ok(ChangesCursor {
            base: sql::empty_cursor(),
            db: Db::from_raw(self.db),
            batch: Vec::new(),
            pos: 0,
            exhausted: true,
            rowid: 0,
        })
    }
}

#[repr(C)]
pub struct ChangesCursor {
    base: sqlite3_vtab_cursor,
    db: Db,
    batch: Vec<Change>,
    pos: usize,
    exhausted: bool,
    rowid: i64,
}

impl ChangesCursor {
    fn fill(&mut self, since: i64) -> crate::error::Result<()> {
        self.batch = changes::read(self.db, since, BATCH)?;
        self.pos = 0;
        self.exhausted = self.batch.len() < BATCH;
        Ok(())
    }
}

impl VTabCursor for ChangesCursor {
    fn filter(
        &mut self,
        _idx: c_int,
        _s: Option<&str>,
        values: &[*mut sqlite3_value],
    ) -> LResult<()> {
        guard(|| {
            let since = match values.first() {
                Some(v) => match sql::arg_value(*v) {
                    Value::Integer(i) => i,
                    Value::Null => 0,
                    other => {
                        return Err(crate::error::Error::msg(format!(
                            "lsync_changes: since must be an integer cursor, got {}",
                            match other {
                                Value::Text(t) => format!("the text '{t}'"),
                                Value::Real(r) => format!("the real {r}"),
                                _ => "a blob".to_owned(),
                            }
                        )))
                    }
                },
                None => 0,
            };
            flush::flush(self.db)?;
            self.rowid = 0;
            self.fill(since)
        })
    }

    fn next(&mut self) -> LResult<()> {
        guard(|| {
            self.pos += 1;
            self.rowid += 1;
            if self.pos >= self.batch.len() && !self.exhausted {
                let last = self.batch.last().map_or(0, |c| c.seq);
                self.fill(last)?;
            }
            Ok(())
        })
    }

    fn eof(&self) -> bool {
        self.pos >= self.batch.len()
    }

    fn column(&self, ctx: *mut sqlite3_context, i: c_int) -> LResult<()> {
        guard(|| {
            let Some(c) = self.batch.get(self.pos) else {
                return Ok(());
            };
            let v = match i {
                0 => Value::Integer(c.seq),
                1 => Value::Integer(c.hlc),
                2 => Value::Text(c.origin.to_string()),
                3 => Value::Text(c.tbl.to_string()),
                4 => c.pk.clone(),
                5 => Value::Text(c.op.as_str().to_owned()),
                6 => Value::Text(changes::data_json(&c.data)),
                _ => Value::Null,
            };
            sql::set_result(ctx, &v);
            Ok(())
        })
    }

    fn rowid(&self) -> LResult<i64> {
        Ok(self.rowid)
    }
}
