//! Which columns of a table hold other rows' local ids (its FKs, in any of
//! SQLite's spellings), and the names tables are declared with.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::shape::shape;
use crate::sql::Db;

/// Single-column FKs that hold the target's local integer id.
pub fn declared_fks(db: Db, table: &str) -> Result<BTreeMap<String, String>> {
    let mut s = db.prepare(
        "SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list(?1, 'main')
         WHERE id IN (SELECT id FROM pragma_foreign_key_list(?1, 'main')
                      GROUP BY id HAVING count(*) = 1)",
    )?;
    s.bind(1, &table.into())?;
    let mut out = BTreeMap::new();
    while s.step()? {
        let (from, target) = (s.text(0).unwrap_or_default(), s.text(1).unwrap_or_default());
        // `REFERENCES Tags` names table `tags`: FK targets are compared
        // with tracked names, so take the declared spelling.
        let target = declared_name(db, &target)?.unwrap_or(target);
        let to = s.text(2);
        let alias = shape(db, &target)?.rowid_alias;
        let to_rowid = match to.as_deref() {
            None => true,
            Some(t) => alias.as_deref().is_some_and(|a| a.eq_ignore_ascii_case(t)),
        };
        if to_rowid {
            out.insert(from, target);
        }
    }
    Ok(out)
}

pub fn has_unique_index(db: Db, table: &str, col: &str) -> Result<bool> {
    Ok(db
        .query_i64(
            "SELECT 1 FROM pragma_index_list(?1, 'main') il
             WHERE il.\"unique\"
               AND (SELECT count(*) FROM pragma_index_info(il.name, 'main')) = 1
               AND (SELECT name FROM pragma_index_info(il.name, 'main')) = ?2",
            &[table.into(), col.into()],
        )?
        .is_some())
}

/// The declared spelling of a table of `main`: SQLite matches table names
/// without regard to (ASCII) letter case, and so does NOCASE.
pub fn declared_name(db: Db, table: &str) -> Result<Option<String>> {
    db.query_text(
        "SELECT name FROM main.sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        &[table.into()],
    )
}

/// Refuses a composite FK whose values are local ids: it copies the parent
/// row's key, and a part of that key that is an FK or the INTEGER PRIMARY
/// KEY differs between devices. A composite FK to a key of values (text,
/// say) holds the same values everywhere, and travels as it is. `local`
/// columns are kept on this device.
pub fn check_composite_fks(db: Db, table: &str, local: &[String]) -> Result<()> {
    let mut s = db.prepare(
        "SELECT id, \"table\", json_group_array(\"from\"), json_group_array(\"to\")
         FROM (SELECT * FROM pragma_foreign_key_list(?1, 'main') ORDER BY id, seq)
         GROUP BY id HAVING count(*) > 1",
    )?;
    s.bind(1, &table.into())?;
    let mut fks = Vec::new();
    while s.step()? {
        let cols = |i| serde_json::from_str::<Vec<Option<String>>>(&s.text(i).unwrap_or_default());
        fks.push((
            s.text(1).unwrap_or_default(),
            cols(2).unwrap_or_default(),
            cols(3).unwrap_or_default(),
        ));
    }
    drop(s);
    for (parent, from, to) in fks {
        let from: Vec<String> = from.into_iter().flatten().collect();
        if from.iter().all(|c| local.contains(c)) {
            continue;
        }
        let ps = shape(db, &parent)?;
        let to: Vec<String> = if to.iter().all(Option::is_some) {
            to.into_iter().flatten().collect()
        } else {
            ps.pk.clone()
        };
        let parent_fks = declared_fks(db, &parent)?;
        let local_part = to
            .iter()
            .find(|c| parent_fks.contains_key(*c) || ps.rowid_alias.as_ref() == Some(c));
        if let Some(part) = local_part {
            crate::bail!(
                "lsync_track: '{table}' has a composite FK ({}) to '{parent}', whose '{part}' \
                 holds local ids, which differ between devices: it cannot travel as it is. Point \
                 at a key of values (or at the row's global id), or keep the columns on this \
                 device with {{\"local_columns\": [{}]}}",
                from.join(", "),
                from.iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}
