//! `make demo`'s command, `lsync demo DIR`: two real sidecars on loopback,
//! A indexes a directory tree, B tags what it received, and both converge.
//!
//! The `lsync` binary must be built first: `cargo build --release --workspace`.

use std::process::Command;

use lsync_tests::*;

#[test]
fn the_demo_indexes_tags_and_converges() {
    let dir = TempDir::new();
    let tree = dir.path().join("tree");
    for d in 0..6 {
        let sub = tree.join(format!("dir{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..20 {
            std::fs::write(sub.join(format!("file{f}.txt")), "x").unwrap();
        }
    }
    let out = Command::new(lsync_bin())
        .arg("demo")
        .arg(&tree)
        .output()
        .unwrap();
    let text = strip_ansi(&String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("converged"), "{text}");
    assert!(text.contains("on A too: true"), "{text}");
    // The tree's 6 directories and 120 files, and its root, on both devices.
    let entries = text
        .lines()
        .find(|l| l.starts_with("entries"))
        .unwrap_or_else(|| panic!("no entries line: {text}"));
    let counts: Vec<&str> = entries.split_whitespace().skip(1).collect();
    assert_eq!(counts.len(), 2, "{entries}");
    assert_eq!(counts[0], counts[1], "{entries}");
    assert!(counts[0].parse::<i64>().unwrap() >= 126, "{entries}");
}
