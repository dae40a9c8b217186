//! The database file a sidecar was started on, and noticing when it is
//! removed or replaced under the running sidecar.
//!
//! SQLite keeps writing to an open file after it is unlinked, and a session
//! that opened the path again would create a new, empty database with new
//! device and library ids. So the sidecar remembers which file it opened
//! (device and inode), checks the path every [`CHECK_EVERY`], and stops with
//! a clear error when the path names another file or none.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a running sidecar looks at its database path.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Which file a path named when the sidecar opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Gone {
    #[error(
        "the database file {} was removed while lsync ran (its directory too, \
         or it was moved away); stopping: restore the file, or start lsync on a \
         fresh database that joins with --join",
        .0.display()
    )]
    Removed(PathBuf),
    #[error(
        "the database file {} was replaced by another file while lsync ran; \
         stopping: start lsync again to serve the new file",
        .0.display()
    )]
    Replaced(PathBuf),
    #[error("cannot check the database file {}: {}", .0.display(), .1)]
    Unreadable(PathBuf, String),
}

impl FileId {
    pub fn of(path: &Path) -> Result<FileId, Gone> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(FileId {
                dev: m.dev(),
                ino: m.ino(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Gone::Removed(path.to_owned()))
            }
            Err(e) => Err(Gone::Unreadable(path.to_owned(), e.to_string())),
        }
    }

    /// Whether `path` still names this file.
    pub fn check(&self, path: &Path) -> Result<(), Gone> {
        match FileId::of(path)? {
            id if id == *self => Ok(()),
            _ => Err(Gone::Replaced(path.to_owned())),
        }
    }
}

/// Returns once `path` no longer names the file `id`, with the reason.
pub async fn watch(path: PathBuf, id: FileId) -> Gone {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match id.check(&path) {
            Ok(()) => {}
            // A passing error (say EACCES while a directory is edited) is
            // not a verdict: look again at the next tick.
            Err(Gone::Unreadable(..)) => {}
            Err(gone) => return gone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_or_replaced_file_is_noticed() {
        let dir = std::env::temp_dir().join(format!("lsync-dbfile-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let (db, other) = (dir.join("x.db"), dir.join("y.db"));
        std::fs::write(&db, b"x").unwrap();
        std::fs::write(&other, b"y").unwrap();
        let id = FileId::of(&db).unwrap();
        assert!(id.check(&db).is_ok());
        std::fs::rename(&other, &db).unwrap();
        assert!(matches!(id.check(&db), Err(Gone::Replaced(_))));
        std::fs::remove_file(&db).unwrap();
        assert!(matches!(id.check(&db), Err(Gone::Removed(_))));
        let _ = std::fs::remove_dir_all(dir);
    }
}
