//! `lsync_statements`: the statements this connection keeps prepared
//! between calls (see `sql::cache`). Loading the extension connects it,
//! which starts keeping them; closing the connection disconnects it first
//! thing, which finalizes them before SQLite looks for unfinalized ones.

use std::ffi::c_int;

use crate::error::Result;
use crate::sql::{self, Db, IndexInfo, TableCursor, TableFunction, Unusable, Value};

pub struct StatementsTable {
    db: Db,
    /// Which arming of the cache this table stands for.
    generation: u64,
}

impl TableFunction for StatementsTable {
    type Cursor = StatementsCursor;

    const SCHEMA: &'static str = "CREATE TABLE x(sql TEXT, reprepared INTEGER)";

    fn connect(db: Db) -> Result<StatementsTable> {
        Ok(StatementsTable {
            db,
            generation: sql::keep_statements(db),
        })
    }

    fn best_index(&self, info: &mut IndexInfo<'_>) -> std::result::Result<(), Unusable> {
        info.set_estimated_cost(100.0);
        Ok(())
    }

    fn open(&self) -> Result<StatementsCursor> {
        Ok(StatementsCursor {
            db: self.db,
            texts: Vec::new(),
            pos: 0,
        })
    }
}

impl Drop for StatementsTable {
    fn drop(&mut self) {
        sql::stop_keeping(self.db, self.generation);
    }
}

pub struct StatementsCursor {
    db: Db,
    texts: Vec<(String, i64)>,
    pos: usize,
}

impl TableCursor for StatementsCursor {
    fn filter(&mut self, _idx_num: c_int, _args: &[Value]) -> Result<()> {
        self.texts = sql::kept_texts(self.db);
        self.texts.sort();
        self.pos = 0;
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.pos += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.pos >= self.texts.len()
    }

    fn column(&self, i: c_int) -> Result<Value> {
        let (sql, reprepared) = &self.texts[self.pos];
        Ok(match i {
            0 => Value::Text(sql.clone()),
            _ => Value::Integer(*reprepared),
        })
    }

    fn rowid(&self) -> Result<i64> {
        Ok(self.pos as i64)
    }
}

/// Registers `lsync_statements` and connects it, which starts keeping this
/// connection's statements.
pub fn register(db: Db) -> Result<()> {
    db.create_table_function::<StatementsTable>("lsync_statements")?;
    // Preparing a statement that names the table connects it.
    drop(db.prepare("SELECT sql FROM lsync_statements")?);
    Ok(())
}
