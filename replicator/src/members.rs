//! This device's static key, the library secrets it knows and the
//! library's members, through the extension's SQL functions (`lsync_device_key`,
//! `lsync_library_secret`, `lsync_members`, `lsync_member_admit`,
//! `lsync_members_merge`, `lsync_revoke`). The keys are made here (snow);
//! the database only keeps them (docs/security.md).

use rusqlite::{params, Connection};

use crate::protocol::{self, MemberEntry, Secret};
use crate::store::{immediate, StoreError, R};

/// This device's static X25519 key pair.
#[derive(Clone)]
pub struct DeviceKeys {
    pub private: [u8; 32],
    pub public: [u8; 32],
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// This device's key pair, made and stored on first use. The extension
/// lists this device as a member under its public key.
pub fn device_keys(c: &Connection) -> R<DeviceKeys> {
    // Writes take the write lock first (see `store::immediate`): a read
    // that turns into a write fails at once while the app writes.
    immediate(c, read_or_make_keys)
}

fn read_or_make_keys(c: &Connection) -> R<DeviceKeys> {
    let stored: Option<String> =
        c.query_row("SELECT lsync_device_key(NULL, NULL)", [], |r| r.get(0))?;
    let json = match stored {
        Some(j) => j,
        None => {
            let (private, public) = protocol::generate_keypair()
                .map_err(|e| StoreError::Corrupt(format!("making the device key: {e}")))?;
            c.query_row(
                "SELECT lsync_device_key(?1, ?2)",
                params![hex(&private), hex(&public)],
                |r| r.get(0),
            )?
        }
    };
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let key = |k: &str| {
        v[k].as_str()
            .and_then(unhex)
            .ok_or_else(|| StoreError::Corrupt("the stored device key is corrupt".into()))
    };
    Ok(DeviceKeys {
        private: key("private")?,
        public: key("public")?,
    })
}

/// One library secret this database knows.
#[derive(Debug, Clone, serde::Deserialize)]
struct StoredSecret {
    epoch: i64,
    secret: String,
}

/// The library secrets, newest first, with their epochs.
pub fn secrets(c: &Connection) -> R<Vec<(i64, Secret)>> {
    let json: String = c
        .prepare_cached("SELECT lsync_library_secret(NULL, NULL)")?
        .query_row([], |r| r.get(0))?;
    parse_secrets(&json)
}

fn parse_secrets(json: &str) -> R<Vec<(i64, Secret)>> {
    let list: Vec<StoredSecret> = serde_json::from_str(json)?;
    Ok(list
        .into_iter()
        .filter_map(|s| unhex(&s.secret).map(|k| (s.epoch, k)))
        .collect())
}

/// Records a library secret (a known one keeps the higher epoch); returns
/// all of them, newest first.
pub fn record_secret(c: &Connection, epoch: i64, secret: &Secret) -> R<Vec<(i64, Secret)>> {
    let json: String = immediate(c, |c| {
        Ok(c.query_row(
            "SELECT lsync_library_secret(?1, ?2)",
            params![epoch, hex(secret)],
            |r| r.get(0),
        )?)
    })?;
    parse_secrets(&json)
}

/// The secret of `--secret-file`, recorded if the database does not know
/// it, as the newest: a secret file that changed is a new invite (an
/// older secret the database knows stays where it is).
pub fn seed_secret(c: &Connection, file: &Secret) -> R<Vec<(i64, Secret)>> {
    let known = secrets(c)?;
    if known.iter().any(|(_, s)| s == file) {
        return Ok(known);
    }
    let epoch = known.first().map_or(0, |s| s.0 + 1);
    record_secret(c, epoch, file)
}

/// A new library secret, one epoch past every known one.
pub fn rotate_secret(c: &Connection) -> R<Secret> {
    let epoch = secrets(c)?.first().map_or(0, |s| s.0) + 1;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| StoreError::Corrupt(format!("no randomness available: {e}")))?;
    record_secret(c, epoch, &key)?;
    Ok(key)
}

/// Whether the device `device`, proven to hold `key`, may hold a session
/// (see `lsync_member_admit`): `member`, `joined`, `unknown`, `revoked`,
/// `mismatch` or `key_taken`.
pub fn admit(c: &Connection, device: &str, key: &[u8; 32], may_join: bool) -> R<String> {
    immediate(c, |c| {
        Ok(c.query_row(
            "SELECT lsync_member_admit(?1, ?2, ?3)",
            params![device, hex(key), may_join],
            |r| r.get(0),
        )?)
    })
}

/// The members as `lsync_members()` lists them.
pub use lsync_wire::members::Member;

pub fn list(c: &Connection) -> R<Vec<Member>> {
    // Kept prepared: a session reads the members after every commit.
    let json: String = c
        .prepare_cached("SELECT lsync_members()")?
        .query_row([], |r| r.get(0))?;
    Ok(serde_json::from_str(&json)?)
}

/// The members as a session sends them.
pub fn entries(c: &Connection) -> R<Vec<MemberEntry>> {
    Ok(list(c)?
        .into_iter()
        .map(|m| MemberEntry {
            device: m.device,
            pubkey: m.pubkey,
            status: m.status,
        })
        .collect())
}

/// What merging a peer's member list did.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Merged {
    pub added: i64,
    pub revoked: i64,
    pub refused: Vec<String>,
}

pub fn merge(c: &Connection, members: &[MemberEntry]) -> R<Merged> {
    let json = serde_json::to_string(members)?;
    let out: String = immediate(c, |c| {
        Ok(c.query_row("SELECT lsync_members_merge(?1)", [json], |r| r.get(0))?)
    })?;
    Ok(serde_json::from_str(&out)?)
}

/// Whether `device` is revoked here.
pub fn is_revoked(c: &Connection, device: &str) -> R<bool> {
    Ok(list(c)?
        .iter()
        .any(|m| m.device == device && m.status == "revoked"))
}

/// Revokes `device`; returns its member entry.
pub fn revoke(c: &Connection, device: &str) -> R<String> {
    immediate(c, |c| {
        Ok(c.query_row("SELECT lsync_revoke(?1)", [device], |r| r.get(0))?)
    })
}
