//! How SQL reaches a tracked row's global id, whatever kind of identity its
//! table has (`catalog::Ident`): a column of the row, or an entry of
//! `lsync_gid` that lsync keeps for it, derived from the row's key or
//! minted. Everything else reads and writes global ids through these.

use sha2::{Digest, Sha256};

use crate::catalog::{Ident, Table};
use crate::error::Result;
use crate::ident::{q, qm};
use crate::sql::{Db, Value};

impl Table {
    /// The global id column, if a column of the table holds the ids.
    pub fn uuid_col(&self) -> Option<&str> {
        match &self.ident {
            Ident::Column(c) => Some(c),
            _ => None,
        }
    }

    /// Whether lsync keeps the global ids in `lsync_gid`.
    pub fn kept(&self) -> bool {
        self.uuid_col().is_none()
    }

    /// SQL for the global id of the row `row` names: the table's name or
    /// alias in a query, or `OLD` / `NEW` in a trigger.
    pub fn gid_of(&self, row: &str) -> String {
        match self.uuid_col() {
            Some(c) => format!("{row}.{}", q(c)),
            None => format!(
                "(SELECT gid FROM lsync_gid WHERE tbl = {} AND rid = {row}.rowid)",
                self.id
            ),
        }
    }

    /// A relation `(rid, gid)`: every row's rid with its global id. The
    /// query flattener turns a join with it into an index lookup.
    pub fn gids(&self) -> String {
        match self.uuid_col() {
            Some(c) => format!("(SELECT rowid AS rid, {} AS gid FROM {})", q(c), self.src()),
            None => format!("(SELECT rid, gid FROM lsync_gid WHERE tbl = {})", self.id),
        }
    }

    /// Gives row `rid` the global id `gid` (a merge's rename, `merge/unite`).
    pub fn set_gid(&self, db: Db, rid: i64, gid: &Value) -> Result<()> {
        let args = [rid.into(), gid.clone()];
        if let Some(c) = self.uuid_col() {
            db.run(
                &format!(
                    "UPDATE {} SET {} = ?2 WHERE {}",
                    qm(&self.name),
                    q(c),
                    self.rid_is("?1")
                ),
                &args,
            )?;
            if !self.without_rowid {
                return Ok(());
            }
        }
        db.run(
            &format!(
                "UPDATE lsync_gid SET gid = ?2 WHERE tbl = {} AND rid = ?1",
                self.id
            ),
            &args,
        )
    }
}

/// Records the global id `gid` of row `rid` of a table whose ids lsync
/// keeps (a row a peer sent, `merge/write`).
pub fn keep(db: Db, t: &Table, rid: i64, gid: &Value) -> Result<()> {
    db.run(
        "INSERT OR REPLACE INTO lsync_gid(tbl, rid, gid) VALUES (?1, ?2, ?3)",
        &[t.id.into(), rid.into(), gid.clone()],
    )
}

/// Forgets the global id of row `rid` (the row is gone).
pub fn forget(db: Db, t: &Table, rid: i64) -> Result<()> {
    if t.mapped() {
        db.run(
            "DELETE FROM lsync_gid WHERE tbl = ?1 AND rid = ?2",
            &[t.id.into(), rid.into()],
        )?;
    }
    Ok(())
}

/// Gives the local rows of `t` that `which` selects (a condition on
/// `k.rowid`) their global ids, when lsync keeps them: derived from the key,
/// or minted. `tables` are the tracked tables, for FK parts of a key.
pub fn assign(db: Db, t: &Table, tables: &[Table], which: &str) -> Result<()> {
    // An INTEGER PRIMARY KEY names the row: one written again under the
    // same id (INSERT OR REPLACE) keeps its global id. A key's id follows
    // the key.
    let ((expr, joins), conflict) = match &t.ident {
        Ident::Column(_) => return Ok(()),
        Ident::Rowid => (("lsync_uuid('blob')".to_owned(), String::new()), "IGNORE"),
        Ident::Key(parts) => (key_expr(t, tables, parts), "REPLACE"),
    };
    db.run(
        &format!(
            "INSERT OR {conflict} INTO lsync_gid(tbl, rid, gid)
             SELECT {id}, k.rowid, {expr} FROM {n} AS k{joins} WHERE {which}",
            id = t.id,
            n = qm(&t.name)
        ),
        &[],
    )
}

/// SQL for a row's global id from its key (row alias `k`), and the joins
/// it reads: an FK part counts as its target's global id. A key of one FK
/// is its target's id itself (a 1:1 extension of that row); any other key
/// is `lsync_key` of its parts. The targets are LEFT JOINed (a missing
/// target gives NULL), not looked up by a subquery per row: a join opens
/// its cursors once (a fold of 200k pairs, 5-7% faster).
fn key_expr(t: &Table, tables: &[Table], parts: &[String]) -> (String, String) {
    let (mut joins, mut joined) = (String::new(), Vec::new());
    let mut part = |i: usize, c: &String| match t
        .fks
        .get(c)
        .and_then(|n| tables.iter().find(|x| *x.name == **n))
    {
        Some(target) => {
            joins.push_str(&format!(
                " LEFT JOIN {} AS p{i} ON p{i}.rid = k.{}",
                target.gids(),
                q(c)
            ));
            joined.push(format!("p{i}.gid IS NULL"));
            format!("p{i}.gid")
        }
        None => format!("k.{}", q(c)),
    };
    let expr = match parts {
        [one] if t.fks.contains_key(one) => part(0, one),
        _ => {
            let parts: Vec<String> = parts.iter().enumerate().map(|(i, c)| part(i, c)).collect();
            format!("lsync_key({})", parts.join(", "))
        }
    };
    // A part whose target is not there (an FK left dangling with
    // foreign_keys off) names no row: such a row gets an id of its own, so
    // that it neither fails the fold nor shares an id with another.
    if joined.is_empty() {
        return (expr, joins);
    }
    let expr = format!(
        "CASE WHEN {} THEN lsync_uuid('blob') ELSE {expr} END",
        joined.join(" OR ")
    );
    (expr, joins)
}

/// `lsync_key(part, ...)`: the global id of a row whose identity is the
/// tuple of its key's parts, as a 16-byte UUID (version 8) made from a
/// SHA-256 of the parts, each with its type. The same tuple gives the same
/// id on every device.
pub fn key_uuid(parts: &[Value]) -> Value {
    let mut h = Sha256::new();
    for p in parts {
        let (tag, bytes): (u8, Vec<u8>) = match p {
            Value::Null => (0, Vec::new()),
            Value::Integer(i) => (1, i.to_be_bytes().to_vec()),
            Value::Real(r) => (2, r.to_bits().to_be_bytes().to_vec()),
            Value::Text(s) => (3, s.as_bytes().to_vec()),
            Value::Blob(b) => (4, b.clone()),
        };
        h.update([tag]);
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&bytes);
    }
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    Value::Blob(
        uuid::Builder::from_custom_bytes(id)
            .into_uuid()
            .as_bytes()
            .to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_depends_on_every_part_and_its_type() {
        let a = key_uuid(&[Value::Text("x".into()), Value::Integer(1)]);
        assert_eq!(a, key_uuid(&[Value::Text("x".into()), Value::Integer(1)]));
        assert_ne!(
            a,
            key_uuid(&[Value::Text("x".into()), Value::Text("1".into())])
        );
        assert_ne!(a, key_uuid(&[Value::Integer(1), Value::Text("x".into())]));
        // Parts are length-prefixed: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            key_uuid(&[Value::Text("ab".into()), Value::Text("c".into())]),
            key_uuid(&[Value::Text("a".into()), Value::Text("bc".into())])
        );
        let Value::Blob(b) = a else {
            panic!("not a blob")
        };
        assert_eq!(uuid::Uuid::from_slice(&b).unwrap().get_version_num(), 8);
    }
}
