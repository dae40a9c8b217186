//! `lsync_changes(since)`: the eponymous table-valued function over the
//! change clock. It flushes pending captures, then pages through
//! `changes::read` a batch at a time, so memory stays bounded.

use std::ffi::c_int;

use crate::changes::{self, Change};
use crate::error::{Error, Result};
use crate::flush;
use crate::sql::{Db, IndexInfo, TableCursor, TableFunction, Unusable, Value};

const BATCH: usize = 1024;
const SINCE_COLUMN: c_int = 7;

pub struct ChangesTable {
    db: Db,
}

impl TableFunction for ChangesTable {
    type Cursor = ChangesCursor;

    const SCHEMA: &'static str = "CREATE TABLE x(seq INTEGER, hlc INTEGER, origin TEXT, tbl TEXT, pk, op TEXT, data TEXT, since HIDDEN)";

    fn connect(db: Db) -> Result<ChangesTable> {
        Ok(ChangesTable { db })
    }

    fn best_index(&self, info: &mut IndexInfo<'_>) -> std::result::Result<(), Unusable> {
        let mut has_since = false;
        for (i, c) in info.constraints().into_iter().enumerate() {
            if c.column == SINCE_COLUMN {
                if !c.usable || !c.is_eq {
                    return Err(Unusable);
                }
                info.use_constraint(i, 1, true);
                has_since = true;
            }
        }
        info.set_idx_num(i32::from(has_since));
        info.set_estimated_cost(1000.0);
        Ok(())
    }

    fn open(&self) -> Result<ChangesCursor> {
        Ok(ChangesCursor {
            db: self.db,
            batch: Vec::new(),
            pos: 0,
            exhausted: true,
            rowid: 0,
        })
    }
}

pub struct ChangesCursor {
    db: Db,
    batch: Vec<Change>,
    pos: usize,
    exhausted: bool,
    rowid: i64,
}

impl ChangesCursor {
    fn fill(&mut self, since: i64) -> Result<()> {
        self.batch = changes::read(self.db, since, BATCH)?;
        self.pos = 0;
        self.exhausted = self.batch.len() < BATCH;
        Ok(())
    }
}

impl TableCursor for ChangesCursor {
    fn filter(&mut self, _idx_num: c_int, args: &[Value]) -> Result<()> {
        let since = match args.first() {
            Some(Value::Integer(i)) => *i,
            Some(Value::Null) | None => 0,
            Some(other) => {
                return Err(Error::msg(format!(
                    "lsync_changes: since must be an integer cursor, got {}",
                    match other {
                        Value::Text(t) => format!("the text '{t}'"),
                        Value::Real(r) => format!("the real {r}"),
                        _ => "a blob".to_owned(),
                    }
                )))
            }
        };
        flush::flush(self.db)?;
        self.rowid = 0;
        self.fill(since)
    }

    fn next(&mut self) -> Result<()> {
        self.pos += 1;
        self.rowid += 1;
        if self.pos >= self.batch.len() && !self.exhausted {
            let last = self.batch.last().map_or(0, |c| c.seq);
            self.fill(last)?;
        }
        Ok(())
    }

    fn eof(&self) -> bool {
        self.pos >= self.batch.len()
    }

    fn column(&self, i: c_int) -> Result<Value> {
        let Some(c) = self.batch.get(self.pos) else {
            return Ok(Value::Null);
        };
        Ok(match i {
            0 => Value::Integer(c.seq),
            1 => Value::Integer(c.hlc),
            2 => Value::Text(c.origin.to_string()),
            3 => Value::Text(c.tbl.to_string()),
            4 => c.pk.clone(),
            5 => Value::Text(c.op.as_str().to_owned()),
            6 => Value::Text(changes::data_json(&c.data)),
            _ => Value::Null,
        })
    }

    fn rowid(&self) -> Result<i64> {
        Ok(self.rowid)
    }
}
