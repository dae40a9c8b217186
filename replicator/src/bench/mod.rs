//! Benchmarks (`lsync bench ...`).

pub mod apply;
mod baseline;
pub mod capture;
mod clock;
mod data;
pub mod initial;
pub mod net;
mod ops;
mod report;
mod session;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{what}")]
    Sql {
        what: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("creating the benchmark directory {}", .0.display())]
    TempDir(PathBuf, #[source] std::io::Error),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the JSON report")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Check(String),
}

/// Adds a description of what was being done to a rusqlite error.
pub(crate) trait SqlContext<T> {
    fn sql(self, what: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn sql(self, what: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|source| BenchError::Sql {
            what: what(),
            source,
        })
    }
}

/// A fresh directory, removed on drop unless `keep` is set.
pub(crate) struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(parent: Option<&Path>, keep: bool) -> Result<Self, BenchError> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!("lsync-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| BenchError::TempDir(path.clone(), e))?;
        Ok(Self { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A directory `name` inside this one, created if need be.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, BenchError> {
        let path = self.path.join(name);
        std::fs::create_dir_all(&path).map_err(|source| BenchError::Io {
            what: format!("creating {}", path.display()),
            source,
        })?;
        Ok(path)
    }

    /// Writes every file in the directory back to disk, so that a timed run
    /// does not pay for the write-back of the runs before it.
    pub fn settle(&self) -> Result<(), BenchError> {
        for path in self.files()? {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|source| BenchError::Io {
                    what: format!("syncing {}", path.display()),
                    source,
                })?;
        }
        Ok(())
    }

    /// Removes the files whose names start with `prefix` (unless `keep`).
    pub fn remove_prefixed(&self, prefix: &str) -> Result<(), BenchError> {
        if self.keep {
            return Ok(());
        }
        for path in self.files()? {
            let matches = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix));
            if matches {
                std::fs::remove_file(&path).map_err(|source| BenchError::Io {
                    what: format!("removing {}", path.display()),
                    source,
                })?;
            }
        }
        Ok(())
    }

    fn files(&self) -> Result<Vec<PathBuf>, BenchError> {
        let list = || -> std::io::Result<Vec<PathBuf>> {
            let (mut out, mut dirs) = (Vec::new(), vec![self.path.clone()]);
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(dir)? {
                    let entry = entry?;
                    let kind = entry.file_type()?;
                    if kind.is_file() {
                        out.push(entry.path());
                    } else if kind.is_dir() {
                        dirs.push(entry.path());
                    }
                }
            }
            Ok(out)
        };
        list().map_err(|source| BenchError::Io {
            what: format!("listing {}", self.path.display()),
            source,
        })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept benchmark databases in {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}
