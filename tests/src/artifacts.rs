//! Where `cargo build` put the extension and the `lsync` binary.

use std::path::PathBuf;

/// `$env`, else `file` next to the test binary or in one of its parent
/// directories (the binary lives in `target/release/deps`; the cdylib in
/// `deps` or `target/release`, the `lsync` binary in `target/release`).
fn built_file(env: &str, file: &str, hint: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    for dir in exe.ancestors().skip(1).take(4) {
        let candidate = dir.join(file);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "cannot find {file} near {}; run `{hint}` or set {env}",
        exe.display()
    )
}

/// The extension: `$LSYNC_EXT`, else `liblsync.so` near the test binary.
/// `cargo test --release` builds it through the dev-dependency on `lsync-ext`.
pub fn ext_path() -> PathBuf {
    built_file(
        "LSYNC_EXT",
        "liblsync.so",
        "cargo build --release -p lsync-ext",
    )
}

/// The `lsync` binary: `$LSYNC_BIN`, else `lsync` near the test binary.
/// `cargo test -p lsync-tests` does not build it: run
/// `cargo build --release --workspace` first.
pub fn lsync_bin() -> PathBuf {
    built_file("LSYNC_BIN", "lsync", "cargo build --release --workspace")
}
