//! What the merge needs to know of a changeset's columns: their bits in
//! the table's column mask, which are FKs, and the tracked tables they
//! point at. Found by name once per chunk, then by the names' addresses:
//! the decoder gives every change of a table the same `Arc` per column
//! name, so a change costs a few pointer compares instead of string
//! compares and a B-tree walk per column (about 8% of a bulk apply's
//! time, perf).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use lsync_wire::changeset::Change;

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

/// The columns of a change, in its order.
pub(super) struct Shape {
    /// The bits of all of them.
    pub mask: u64,
    /// Per column, the tracked table it points at.
    pub targets: Vec<Option<Arc<str>>>,
    /// The positions of its FK columns.
    pub fks: Vec<usize>,
}

/// A column met: its table, its name, and what it is.
type Met = (i64, Arc<str>, Rc<Col>);
/// A change's column list met: its table, its names, and what they are.
type Seen = (i64, Vec<Arc<str>>, Rc<Shape>);

/// Column lists kept at most: a shared table's edits may name any subset.
const MAX_SHAPES: usize = 64;

/// The columns and column lists met so far; each entry keeps its names
/// alive, so that an address is never taken for another name.
#[derive(Default)]
pub(super) struct Cols {
    cols: RefCell<Vec<Met>>,
    shapes: RefCell<Vec<Seen>>,
}

/// The tracked tables, by name.
type Tracked<S> = HashMap<Arc<str>, Table, S>;

impl Cols {
    /// Column `name` of `t`.
    pub fn of<S: std::hash::BuildHasher>(
        &self,
        t: &Table,
        tracked: &Tracked<S>,
        name: &Arc<str>,
    ) -> Rc<Col> {
        if let Some((_, _, c)) = self
            .cols
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
        self.cols
            .borrow_mut()
            .push((t.id, Arc::clone(name), Rc::clone(&col)));
        col
    }

    /// The columns of change `c` to `t`.
    pub fn shape<S: std::hash::BuildHasher>(
        &self,
        t: &Table,
        tracked: &Tracked<S>,
        c: &Change,
    ) -> Rc<Shape> {
        let same = |(tbl, names, _): &&Seen| {
            *tbl == t.id
                && names.len() == c.data.len()
                && names
                    .iter()
                    .zip(&c.data)
                    .all(|(n, (m, _))| Arc::ptr_eq(n, m))
        };
        if let Some((_, _, s)) = self.shapes.borrow().iter().rev().find(same) {
            return Rc::clone(s);
        }
        let cols: Vec<Rc<Col>> = c.data.iter().map(|(n, _)| self.of(t, tracked, n)).collect();
        let shape = Rc::new(Shape {
            mask: cols.iter().fold(0, |m, c| m | c.bit),
            targets: cols.iter().map(|c| c.target.clone()).collect(),
            fks: (0..cols.len()).filter(|&i| cols[i].fk).collect(),
        });
        let mut shapes = self.shapes.borrow_mut();
        if shapes.len() >= MAX_SHAPES {
            shapes.clear();
        }
        let names = c.data.iter().map(|(n, _)| Arc::clone(n)).collect();
        shapes.push((t.id, names, Rc::clone(&shape)));
        shape
    }
}
