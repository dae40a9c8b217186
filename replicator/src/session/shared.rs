//! What every session of one sidecar shares. The sidecar (`lsync run`) builds it once
//! and hands it to each session it starts.

use std::sync::RwLock;

use tokio::sync::watch;

use crate::config::RunConfig;
use crate::dbfile::FileId;
use crate::members::DeviceKeys;
use crate::protocol::Secret;

pub struct Node {
    pub cfg: RunConfig,
    /// The file `cfg.db` named at start; sessions refuse to open another.
    pub db_file: FileId,
    /// This device's static key pair (read at start: a listener proves it
    /// before it touches the database).
    pub keys: DeviceKeys,
    /// The library secrets this device knows, newest first, with their
    /// epochs; refreshed when the database changes.
    pub secrets: RwLock<Vec<(i64, Secret)>>,
    /// Bumped whenever another connection commits to the database.
    pub changed: watch::Sender<u64>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl Node {
    /// The secrets to offer in a handshake. A listener accepts any of them;
    /// a dialer offers one, the newest on its first try and each older one
    /// in turn after a handshake that failed (its peer may not have
    /// learned of a rotation yet).
    pub fn secrets_for(&self, initiator: bool, attempt: usize) -> Vec<Secret> {
        let all: Vec<Secret> = self
            .secrets
            .read()
            .map(|s| s.iter().map(|(_, k)| *k).collect())
            .unwrap_or_default();
        if !initiator || all.is_empty() {
            return all;
        }
        vec![all[attempt % all.len()]]
    }

    /// Whether `secret` is the newest this device knows: only the newest
    /// admits a device that is not a member yet.
    pub fn is_newest(&self, secret: &Secret) -> bool {
        self.secrets
            .read()
            .is_ok_and(|s| s.first().is_some_and(|(_, k)| k == secret))
    }

    /// The newest secret and its epoch.
    pub fn newest(&self) -> Option<(i64, Secret)> {
        self.secrets.read().ok().and_then(|s| s.first().copied())
    }

    /// Replaces the secrets; whether they differ from those it replaced.
    pub fn set_secrets(&self, all: Vec<(i64, Secret)>) -> bool {
        match self.secrets.write() {
            Ok(mut s) if *s != all => {
                *s = all;
                true
            }
            _ => false,
        }
    }
}
