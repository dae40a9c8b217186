//! Which of a bulk apply's global ids are here, found by walking the
//! table's unique index on them in order rather than probing it once per
//! id (`fk::rids_of`). Ids that grow with time (UUID v7, as lsync mints
//! them) arrive sorted and dense, as the index holds them: each id then
//! costs a step of the cursor, and a gap a new seek.

use crate::catalog::Table;
use crate::error::Result;
use crate::ident::{q, qm};
use crate::ids::IdMap;
use crate::sql::Db;

/// Rows of the index that match no id, after which the walk seeks to the
/// next id instead of stepping on: scattered ids cost a seek each, as a
/// probe would, plus at most this many steps.
const GAP: u32 = 8;

/// The unique one-column index on `t`'s own global id column, when it
/// orders text as bytes do: a `BINARY` index in a UTF-8 database (in a
/// UTF-16 one, `BINARY` compares UTF-16 code units). None otherwise, and
/// for a table whose ids lsync keeps.
pub(super) fn key_index(db: Db, t: &Table) -> Result<Option<String>> {
    let Some(col) = t.uuid_col() else {
        return Ok(None);
    };
    if db.query_text("PRAGMA main.encoding", &[])?.as_deref() != Some("UTF-8") {
        return Ok(None);
    }
    db.query_text(
        "SELECT il.name FROM pragma_index_list(?1, 'main') AS il,
                pragma_index_xinfo(il.name, 'main') AS ii
          WHERE il.\"unique\" AND il.partial = 0 AND ii.key AND ii.name = ?2 COLLATE NOCASE
            AND ii.coll = 'BINARY'
            AND (SELECT count(*) FROM pragma_index_xinfo(il.name, 'main') WHERE key) = 1
          LIMIT 1",
        &[(*t.name).into(), col.into()],
    )
}

/// The rowids of the rows of `t` whose global id is one of `ids`, walking
/// `index` (from [`key_index`]). `ids` are sorted and deduplicated here.
pub(super) fn rids(db: Db, t: &Table, index: &str, ids: &mut Vec<&str>) -> Result<IdMap<i64>> {
    let mut map = IdMap::default();
    let Some(col) = t.uuid_col() else {
        return Ok(map);
    };
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(map);
    }
    // INDEXED BY: the walk is this index's order or nothing (an error, not
    // a sort of the whole table). BINARY as the index has it, whatever the
    // column's own collation.
    let mut s = db.prepare(&format!(
        "SELECT {c}, rowid FROM {t} INDEXED BY {i}
          WHERE {c} COLLATE BINARY >= ?1 ORDER BY {c} COLLATE BINARY",
        c = q(col),
        t = qm(&t.name),
        i = q(index),
    ))?;
    let mut walk = Walk::default();
    let mut next = Next::Seek(0);
    while next != Next::Done {
        if let Next::Seek(i) = next {
            s.reset();
            s.bind(1, &ids[i].into())?;
        }
        // Blobs sort after all text: no id of ours is among them.
        let here = match s.step()? {
            true => s.text_bytes(0),
            false => None,
        };
        next = walk.at(ids, here);
        if let Next::Found(i) = next {
            map.insert_text(ids[i], s.i64(1));
        }
    }
    Ok(map)
}

/// What the walk does after a row of the index.
#[derive(Debug, PartialEq)]
enum Next {
    /// The row is that of id `i`; step on.
    Found(usize),
    /// The row is none of the ids; step on.
    StepOn,
    /// Seek to id `i`.
    Seek(usize),
    /// No id is left that may be here.
    Done,
}

/// Where a walk is: the first id not yet found or ruled out, and the rows
/// passed over since the last found.
#[derive(Default)]
struct Walk {
    i: usize,
    misses: u32,
}

impl Walk {
    /// At the row of the index whose id is `here` (None: no row, or one
    /// past all text), of the sorted `ids`.
    fn at(&mut self, ids: &[&str], here: Option<&[u8]>) -> Next {
        let Some(here) = here else {
            return Next::Done;
        };
        // Ids below the row reached are not here.
        while self.i < ids.len() && ids[self.i].as_bytes() < here {
            self.i += 1;
        }
        if self.i == ids.len() {
            return Next::Done;
        }
        if ids[self.i].as_bytes() == here {
            self.misses = 0;
            self.i += 1;
            return Next::Found(self.i - 1);
        }
        self.misses += 1;
        if self.misses >= GAP {
            self.misses = 0;
            return Next::Seek(self.i);
        }
        Next::StepOn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks `index` (sorted) as `rids` walks SQLite's: the ids found, and
    /// how many rows were stepped to and how many seeks made.
    fn walk(index: &[&str], ids: &[&str]) -> (Vec<String>, usize, usize) {
        let (mut found, mut steps, mut seeks) = (Vec::new(), 0, 0);
        let mut walk = Walk::default();
        let mut at = 0;
        let mut next = Next::Seek(0);
        while next != Next::Done {
            if let Next::Seek(i) = next {
                seeks += 1;
                at = index.partition_point(|x| x.as_bytes() < ids[i].as_bytes());
            } else {
                at += 1;
            }
            steps += 1;
            next = walk.at(ids, index.get(at).map(|x| x.as_bytes()));
            if let Next::Found(i) = next {
                found.push(ids[i].to_string());
            }
        }
        (found, steps, seeks)
    }

    fn keys(range: impl Iterator<Item = u32>) -> Vec<String> {
        range.map(|k| format!("{k:08}")).collect()
    }

    #[test]
    fn every_id_here_is_found_and_no_other() {
        let index = keys(0..1000);
        let index: Vec<&str> = index.iter().map(String::as_str).collect();
        let cases: Vec<Vec<String>> = vec![
            keys(0..1000),                                                      // all, dense
            keys((0..1000).step_by(3)),    // two rows of three passed over
            keys((0..1000).step_by(97)),   // scattered: seeks
            keys((500..1500).step_by(2)),  // half past the end
            keys((0..40).chain(900..905)), // a long gap
            vec!["".into(), "0000005".into(), "00000050x".into(), "zz".into()], // none here
        ];
        for ids in cases {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let want: Vec<String> = ids
                .iter()
                .filter(|k| index.binary_search(k).is_ok())
                .map(|k| k.to_string())
                .collect();
            let (found, steps, seeks) = walk(&index, &ids);
            assert_eq!(found, want);
            // Each id costs at most a seek and GAP steps, and a dense run
            // a step each.
            assert!(seeks <= ids.len(), "{seeks} seeks for {} ids", ids.len());
            assert!(steps <= ids.len() * (GAP as usize + 1) + 1, "{steps} steps");
        }
        let dense = keys(0..1000);
        let dense: Vec<&str> = dense.iter().map(String::as_str).collect();
        assert_eq!(walk(&index, &dense).2, 1, "a dense run seeks once");
    }
}
