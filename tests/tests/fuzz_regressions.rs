//! The crashes the fuzz targets found (`make fuzz`, fuzz/), each run here on
//! the exact bytes that crashed, so that `make test` keeps them fixed. The
//! files are in `tests/tests/fuzz_regressions/`, named after the target and
//! the artifact's hash. The class each belongs to has its own readable test
//! too (named in each test's comment).

use std::path::{Path, PathBuf};

use lsync_tests::*;

/// The schema and ids of the SQL fuzz targets' world (fuzz/src/lib.rs), so
/// that their inputs mean here what they meant there.
const FUZZ_SCHEMA: &str = include_str!("../../fuzz/world.sql");
const FUZZ_LIBRARY: &str = "01a20152-4dbb-7029-9802-6754477a9a51";

fn fuzz_input(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(name)
}

/// Brings the crashing file to this lsync's metadata version, as opening
/// it with this lsync would: a later lsync refuses a file of another
/// version before it reads anything else, which would hide the check the
/// crash is kept for. Its rows and clock stay as they were.
fn at_this_version(snap: &Path) {
    let f = open(snap);
    let _: String = scalar(&f, "SELECT lsync_device_id()");
}

/// restore_file, crash-90f37246: a partial snapshot whose clock names an
/// origin that is a REAL, no device alias. The empty path took it whole,
/// and the device could export nothing again ("'unknown-device-0' is not a
/// UUID"). Now refused, nothing restored, and the device still exports.
/// Class: hostile_snapshot.rs,
/// `clock_and_parked_origins_of_no_device_are_refused`.
#[test]
fn fuzz_restore_file_clock_origin_of_no_device_is_refused() {
    let dir = TempDir::new();
    let db = dir.path().join("empty.db");
    let c = open(&db);
    c.execute_batch(FUZZ_SCHEMA).unwrap();
    join_library(&c, FUZZ_LIBRARY);
    // Restored from a copy: a restore may consume or lock its file.
    let snap = dir.path().join("input.snap");
    std::fs::copy(
        fuzz_input("restore_file-90f37246-clock-origin-real.snap"),
        &snap,
    )
    .unwrap();
    at_this_version(&snap);
    let e = error_of(
        &c,
        &format!("SELECT lsync_restore('{}')", snap.to_str().unwrap()),
    );
    assert!(
        e.contains("lsync_clock holds 1 changes whose origin is no device")
            && e.contains("nothing was restored"),
        "{e}"
    );
    assert_eq!(count(&c, "folders"), 0, "nothing restored");
    let _: Vec<u8> = c
        .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
        .expect("the device still exports");
}
