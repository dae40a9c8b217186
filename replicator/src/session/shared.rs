//! What every session of one sidecar shares. The sidecar (`lsync run`) builds it once
//! and hands it to each session it starts.

use tokio::sync::watch;

use crate::config::RunConfig;
use crate::dbfile::FileId;
use crate::protocol::Secret;

pub struct Node {
    pub cfg: RunConfig,
    /// The file `cfg.db` named at start; sessions refuse to open another.
    pub db_file: FileId,
    pub secret: Secret,
    /// Bumped whenever another connection commits to the database.
    pub changed: watch::Sender<u64>,
    /// Flips to true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}
