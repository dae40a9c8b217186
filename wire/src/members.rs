//! A library member as `lsync_members()` lists it (the extension writes
//! the JSON, the replicator and `lsync_members_merge` read it).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub device: String,
    /// The public key, 64 hex characters; None for a device revoked before
    /// its key was known here.
    pub pubkey: Option<String>,
    pub status: String,
    #[serde(default)]
    pub added_ms: i64,
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    /// This database's own device (`lsync_members()` only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub this_device: bool,
}
