//! What `lsync_apply` and `lsync_restore` report, as JSON. One definition
//! serves the extension, which writes it, and the replicator, which reads it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an apply did. `lsync_restore` reports the same figures for its merge.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApplyReport {
    /// Changes in the changeset.
    pub changes: i64,
    /// Changes that changed this database.
    pub applied: i64,
    /// Changes that lost to newer local state (or were already here).
    pub stale: i64,
    /// FK links left waiting for their target row.
    pub deferred: i64,
    /// Deferred links completed by this apply.
    pub resolved: i64,
    /// Changes to device-owned rows from a device that does not own them.
    pub refused: i64,
    /// Edits of shared rows that arrived before the row; applied when it comes.
    pub parked: i64,
    /// FK lookup queries run (at most one per FK column).
    pub fk_queries: i64,
    /// Changes refused for a constraint and set aside (`lsync_conflicts`).
    pub quarantined: i64,
    /// Quarantined changes of earlier applies that applied this time.
    pub retried: i64,
    /// Rows removed with the row their FK points at (its `ON DELETE`
    /// action, or delete-wins; docs/conflicts.md).
    pub cascaded: i64,
    /// Rows merged into another row of a shared table, because they clashed
    /// on a UNIQUE key here or on another replica (docs/conflicts.md).
    pub merged: i64,
    /// Changes that named this device as their origin: never applied. What
    /// this device wrote it holds, and no peer speaks for it (a relayed
    /// echo of its own changes, or a forgery).
    pub own: i64,
    /// Changes made by a device revoked here (`lsync_revoke`): never applied.
    pub revoked: i64,
}

impl ApplyReport {
    /// Adds another report's figures to this one (an apply in several batches).
    pub fn add(&mut self, r: &ApplyReport) {
        self.changes += r.changes;
        self.applied += r.applied;
        self.stale += r.stale;
        self.deferred += r.deferred;
        self.resolved += r.resolved;
        self.refused += r.refused;
        self.parked += r.parked;
        self.fk_queries += r.fk_queries;
        self.quarantined += r.quarantined;
        self.retried += r.retried;
        self.cascaded += r.cascaded;
        self.merged += r.merged;
        self.own += r.own;
        self.revoked += r.revoked;
    }
}

/// How `lsync_restore` brought a snapshot in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreMode {
    /// The library was empty: the snapshot's tables were copied in whole.
    #[default]
    Empty,
    /// Row by row, under the same rules as `lsync_apply`.
    Merge,
}

/// As in the JSON report: `empty` or `merge`.
impl std::fmt::Display for RestoreMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestoreMode::Empty => "empty",
            RestoreMode::Merge => "merge",
        })
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreReport {
    pub mode: RestoreMode,
    /// Why the empty-library path was not taken (merge mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not_empty: Option<String>,
    /// Rows in the snapshot.
    pub rows: i64,
    /// Rows per tracked table in the snapshot.
    pub tables: BTreeMap<String, i64>,
    /// The device that wrote the snapshot.
    pub source_device: String,
    /// The snapshot device's change cursor, now this database's watermark for
    /// it; 0 for a snapshot of one device's rows, which moves no watermark.
    pub cursor: i64,
    /// Set for a snapshot of one device's rows.
    pub owner: Option<String>,
    /// What the snapshot held that a restore never takes: schema objects
    /// that are not defined so here, and settings off the allow-list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
    /// The merge's figures; in empty mode only `deferred` is counted.
    #[serde(flatten)]
    pub merged: ApplyReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_report_flattens_the_merge_figures() {
        let r = RestoreReport {
            mode: RestoreMode::Merge,
            why_not_empty: Some("not empty".into()),
            rows: 3,
            merged: ApplyReport {
                applied: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["mode"], "merge");
        assert_eq!(r.mode.to_string(), "merge");
        assert_eq!(v["applied"], 2);
        assert_eq!(v["why_not_empty"], "not empty");
        let back: RestoreReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
