//! Every `lsync bench` runs end to end at a tiny size and reports figures
//! that agree with its input. Not a measurement (`make bench` is): a
//! benchmark that cannot run, or checks its result through a connection
//! without the extension, fails here instead of in front of a user.

use std::process::Command;

use lsync_tests::lsync_bin;
use serde_json::Value;

/// Runs `lsync bench ARGS --json` and returns its last line as JSON.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(lsync_bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run lsync bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lsync bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"))
}

fn positive(v: &Value, key: &str) -> f64 {
    let x = v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"));
    assert!(x > 0.0, "{key} = {x} in {v}");
    x
}

#[test]
fn capture_reports_both_modes_against_plain() {
    let v = bench(&["capture", "--rows", "2000"]);
    assert_eq!(
        (v["rows"].as_i64(), v["schema"].as_str()),
        (Some(2000), Some("entries")),
        "{v}"
    );
    for key in ["plain_s", "device_owned_ratio", "shared_ratio"] {
        positive(&v, key);
    }
    assert_eq!(v["update_rows"].as_i64(), Some(200), "a tenth: {v}");
}

/// `--update-share` updates that share of the rows, each once; a split
/// clock range (updates after a flush) is what the metadata then shows.
#[test]
fn capture_updates_the_share_of_rows_asked() {
    let v = bench(&[
        "capture",
        "--rows",
        "2000",
        "--update-share",
        "0.5",
        "--flush-before-update",
    ]);
    assert_eq!(v["update_rows"].as_i64(), Some(1000), "{v}");
    positive(&v, "meta_bytes_per_row_device_owned");
}

#[test]
fn capture_runs_the_schemas_whose_ids_lsync_keeps() {
    for schema in ["composite", "intpk"] {
        let v = bench(&["capture", "--rows", "2000", "--schema", schema]);
        assert_eq!(
            (v["rows"].as_i64(), v["schema"].as_str()),
            (Some(2000), Some(schema)),
            "{v}"
        );
        for key in [
            "plain_s",
            "device_owned_ratio",
            "shared_ratio",
            "update_shared_ratio",
        ] {
            positive(&v, key);
        }
        // A 16-byte global id per row in lsync_gid, at least.
        assert!(positive(&v, "meta_bytes_per_row_shared") > 16.0, "{v}");
    }
}

#[test]
fn apply_applies_every_row_with_no_link_left_waiting() {
    let v = bench(&["apply", "--rows", "2000"]);
    assert_eq!(
        (v["rows"].as_i64(), v["deferred"].as_i64()),
        (Some(2000), Some(0)),
        "{v}"
    );
    positive(&v, "apply_ratio");
    positive(&v, "changeset_bytes_per_row");
    // SQLite's session extension applied the same rows beside it.
    positive(&v, "apply_vs_session");
    positive(&v, "session_changeset_bytes");
}

#[test]
fn initial_sync_completes_by_snapshot_and_by_batches() {
    for strategy in ["auto", "batch"] {
        let v = bench(&["initial-sync", "--rows", "2000", "--strategy", strategy]);
        assert_eq!(
            (v["rows"].as_i64(), v["strategy"].as_str()),
            (Some(2000), Some(strategy)),
            "{v}"
        );
        positive(&v, "seconds");
        positive(&v, "wire_bytes");
    }
}

#[test]
fn latency_and_propagate_reach_the_peer() {
    let v = bench(&["latency", "--commits", "5", "--idle-secs", "1"]);
    assert_eq!(v["commits"], 5, "{v}");
    positive(&v, "p50_ms");
    assert_eq!(v["watch"], true, "{v}");
    let idle = v["idle_cpu_ms_per_s"].as_array().map(Vec::len);
    assert_eq!(idle, Some(2), "{v}");
    let v = bench(&["propagate", "--rows", "500"]);
    assert_eq!(v["rows"], 500, "{v}");
    positive(&v, "seconds");
}
