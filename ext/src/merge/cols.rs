//! What the merge needs to know of a changeset's column: its bit in the
//! table's column mask, whether it is an FK, and the tracked table it
//! points at. Found by name once per chunk, then by the name's address:
//! the decoder gives every change of a table the same `Arc` per column
//! name, so each row costs pointer compares instead of string compares
//! and a B-tree walk per column (about 8% of a bulk apply's time, perf).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::catalog::Table;

/// One column of one table.
pub(super) struct Col {
    /// `1 << i` for column `i` of the table (0: not a column of it).
    pub bit: u64,
    /// An FK column, whatever table it points at.
    pub fk: bool,
    /// The table it points at, when that table is tracked here.
    pub target: Option<Arc<str>>,
}

/// A column met: its table, its name, and what it is.
type Met = (i64, Arc<str>, Rc<Col>);

/// The columns met so far; each entry keeps its name alive, so that an
/// address is never taken for another name.
#[derive(Default)]
pub(super) struct Cols(RefCell<Vec<Met>>);

impl Cols {
    /// Column `name` of `t`; `tracked`: the tracked tables, by name.
    pub fn of<S>(
        &self,
        t: &Table,
        tracked: &HashMap<Arc<str>, Table, S>,
        name: &Arc<str>,
    ) -> Rc<Col>
    where
        S: std::hash::BuildHasher,
    {
        if let Some((_, _, c)) = self
            .0
            .borrow()
            .iter()
            .find(|(tbl, n, _)| *tbl == t.id && Arc::ptr_eq(n, name))
        {
            return Rc::clone(c);
        }
        let fk = t.fks.get(&**name);
        let col = Rc::new(Col {
            bit: t
                .columns
                .iter()
                .position(|x| x == name)
                .map_or(0, |i| 1 << i),
            fk: fk.is_some(),
            target: fk
                .and_then(|n| tracked.get_key_value(n.as_str()))
                .map(|(k, _)| Arc::clone(k)),
        });
        self.0
            .borrow_mut()
            .push((t.id, Arc::clone(name), Rc::clone(&col)));
        col
    }
}
