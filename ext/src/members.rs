//! The library's members (`lsync_members`, issue 13): which device id is
//! bound to which static public key, and which devices are revoked. Plus
//! the two local secrets a replicator keeps in the database: this device's
//! key pair and the library secrets it knows (`lsync_config`, never in a
//! snapshot: `snapshot.rs` keeps only the shared settings, and restore
//! refuses any other).
//!
//! The extension does no cryptography: the replicator makes the keys (snow)
//! and proves them in its sessions; this module only records bindings.
//!
//! Merging is monotonic, so members converge in any order: a device's first
//! binding to a key is permanent (a conflicting one is refused and
//! reported), a key binds one device only, and `revoked` is terminal.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sql::{Db, Value, DIRECTONLY, INNOCUOUS};
use crate::{bail, schema};

/// The most entries one `lsync_members_merge` takes.
const MAX_MERGE: usize = 100_000;
/// The most library secrets kept (the newest ones).
const MAX_SECRETS: usize = 8;

/// One member as `lsync_members()` lists it and `lsync_members_merge` takes it.
pub use lsync_wire::members::Member;

pub fn register(db: Db) -> Result<()> {
    db.create_function("lsync_members", 0, INNOCUOUS, |db, _| {
        crate::setup::ensure(db)?;
        json(&list(db)?)
    })?;
    db.create_function("lsync_revoke", 1, DIRECTONLY, |db, args| {
        let device = device_arg("lsync_revoke", &args[0])?;
        crate::setup::ensure(db)?;
        revoke(db, &device)?;
        let m = list(db)?.into_iter().find(|m| m.device == device);
        json(&m)
    })?;
    db.create_function("lsync_member_admit", 3, DIRECTONLY, |db, args| {
        let f = "lsync_member_admit";
        let device = device_arg(f, &args[0])?;
        let key = key_arg(f, &args[1])?;
        let may_join = matches!(args[2], Value::Integer(i) if i != 0);
        crate::setup::ensure(db)?;
        admit(db, &device, &key, may_join).map(Value::from)
    })?;
    db.create_function("lsync_members_merge", 1, DIRECTONLY, |db, args| {
        let text = match &args[0] {
            Value::Text(t) => t,
            _ => bail!("lsync_members_merge: the member list must be JSON text"),
        };
        let list: Vec<Member> = serde_json::from_str(text)
            .map_err(|e| Error::msg(format!("lsync_members_merge: not a member list: {e}")))?;
        if list.len() > MAX_MERGE {
            bail!("lsync_members_merge: more than {MAX_MERGE} members");
        }
        crate::setup::ensure(db)?;
        db.savepoint("lsync_members_merge", || merge(db, &list))
            .and_then(|r| json(&r))
    })?;
    db.create_function("lsync_device_key", 2, DIRECTONLY, |db, args| {
        crate::setup::ensure(db)?;
        let given = match (&args[0], &args[1]) {
            (Value::Null, Value::Null) => None,
            (p, k) => Some((
                key_arg("lsync_device_key", p)?,
                key_arg("lsync_device_key", k)?,
            )),
        };
        db.savepoint("lsync_device_key", || device_key(db, given))
    })?;
    db.create_function("lsync_library_secret", 2, DIRECTONLY, |db, args| {
        crate::setup::ensure(db)?;
        let given = match (&args[0], &args[1]) {
            (Value::Null, Value::Null) => None,
            (Value::Integer(e), s) if *e >= 0 => Some((*e, key_arg("lsync_library_secret", s)?)),
            _ => bail!("lsync_library_secret: takes (epoch >= 0, 64 hex characters), or NULLs"),
        };
        db.savepoint("lsync_library_secret", || secrets(db, given))
            .and_then(|s| json(&s))
    })?;
    Ok(())
}

fn json<T: Serialize>(v: &T) -> Result<Value> {
    serde_json::to_string(v)
        .map(Value::from)
        .map_err(|e| Error::msg(e.to_string()))
}

fn device_arg(func: &str, v: &Value) -> Result<String> {
    let Value::Text(s) = v else {
        bail!("{func}: the device id must be text (a UUID)");
    };
    uuid::Uuid::parse_str(s)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::msg(format!("{func}: '{s}' is not a device id (a UUID)")))
}

/// A 32-byte key as 64 lowercase hex characters.
fn key_arg(func: &str, v: &Value) -> Result<String> {
    match v {
        Value::Text(s) if is_key(s) => Ok(s.to_ascii_lowercase()),
        _ => bail!("{func}: a key is 64 hex characters"),
    }
}

fn is_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn to_blob(hex: &str) -> Value {
    Value::Blob(
        (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
            .collect(),
    )
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn list(db: Db) -> Result<Vec<Member>> {
    let me = schema::get_text(db, "device_id")?;
    let mut st = db.prepare(
        "SELECT device, pubkey, status, added_ms, revoked_ms FROM lsync_members ORDER BY device",
    )?;
    let mut out = Vec::new();
    while st.step()? {
        let device = st.text(0).unwrap_or_default();
        let pubkey = match st.value(1) {
            Value::Blob(b) => Some(to_hex(&b)),
            _ => None,
        };
        out.push(Member {
            this_device: device == me,
            device,
            pubkey,
            status: st.text(2).unwrap_or_default(),
            added_ms: st.i64(3),
            revoked_ms: st.value(4).as_i64(),
        });
    }
    Ok(out)
}

/// Marks `device` revoked, for good; a device not known yet is recorded as
/// revoked, so that it can never be admitted here.
fn revoke(db: Db, device: &str) -> Result<()> {
    if device == schema::get_text(db, "device_id")? {
        bail!(
            "lsync_revoke: {device} is this database's own device; revoke it from another member"
        );
    }
    let now = now_ms();
    db.run(
        "INSERT INTO lsync_members(device, pubkey, status, added_ms, revoked_ms)
         VALUES (?1, NULL, 'revoked', ?2, ?2)
         ON CONFLICT(device) DO UPDATE SET status = 'revoked',
           revoked_ms = coalesce(revoked_ms, excluded.revoked_ms)",
        &[device.into(), now.into()],
    )
}

/// The device bound to `key`, if any.
fn holder_of(db: Db, key: &str) -> Result<Option<String>> {
    db.query_text(
        "SELECT device FROM lsync_members WHERE pubkey = ?1",
        &[to_blob(key)],
    )
}

/// Whether `device`, proven to hold `key`, may hold a session: `member`
/// (bound to this key, active), `joined` (unknown, and `may_join`: now
/// bound), `unknown`, `revoked`, `mismatch` (bound to another key) or
/// `key_taken` (the key is bound to another device).
fn admit(db: Db, device: &str, key: &str, may_join: bool) -> Result<&'static str> {
    let row = db.query_value(
        "SELECT json_array(hex(pubkey), status) FROM lsync_members WHERE device = ?1",
        &[device.into()],
    )?;
    if let Some(Value::Text(row)) = row {
        let v: (String, String) =
            serde_json::from_str(&row).map_err(|e| Error::msg(e.to_string()))?;
        return Ok(if v.1 == "revoked" {
            "revoked"
        } else if v.0.eq_ignore_ascii_case(key) {
            "member"
        } else {
            "mismatch"
        });
    }
    if holder_of(db, key)?.is_some() {
        return Ok("key_taken");
    }
    if !may_join {
        return Ok("unknown");
    }
    db.run(
        "INSERT INTO lsync_members(device, pubkey, status, added_ms) VALUES (?1, ?2, 'active', ?3)",
        &[device.into(), to_blob(key), now_ms().into()],
    )?;
    Ok("joined")
}

/// What a merge did.
#[derive(Debug, Default, Serialize)]
pub struct Merged {
    pub added: i64,
    pub revoked: i64,
    /// Entries refused, each with why (a conflicting binding, a bad entry).
    pub refused: Vec<String>,
}

fn merge(db: Db, list: &[Member]) -> Result<Merged> {
    let mut out = Merged::default();
    for m in list {
        let Ok(device) = uuid::Uuid::parse_str(&m.device).map(|u| u.hyphenated().to_string())
        else {
            out.refused
                .push("an entry whose device is not a UUID".into());
            continue;
        };
        let key = match &m.pubkey {
            Some(k) if is_key(k) => Some(k.to_ascii_lowercase()),
            None => None,
            Some(_) => {
                out.refused
                    .push(format!("{device}: a key that is not 64 hex characters"));
                continue;
            }
        };
        let revoked = match m.status.as_str() {
            "revoked" => true,
            "active" => false,
            s => {
                out.refused.push(format!("{device}: unknown status '{s}'"));
                continue;
            }
        };
        let known: Option<Value> = db.query_value(
            "SELECT json_array(hex(pubkey), status) FROM lsync_members WHERE device = ?1",
            &[device.as_str().into()],
        )?;
        let known: Option<(Option<String>, String)> = match known {
            Some(Value::Text(t)) => {
                let (k, s): (String, String) =
                    serde_json::from_str(&t).map_err(|e| Error::msg(e.to_string()))?;
                Some(((!k.is_empty()).then_some(k.to_ascii_lowercase()), s))
            }
            _ => None,
        };
        // A key binds one device: one bound elsewhere is not taken here.
        let key = match key {
            Some(k) if known.as_ref().and_then(|x| x.0.as_ref()) != Some(&k) => {
                match holder_of(db, &k)? {
                    Some(other) if other != device => {
                        out.refused
                            .push(format!("{device}: its key is bound to {other}"));
                        None
                    }
                    _ => Some(k),
                }
            }
            k => k,
        };
        match known {
            None => {
                if key.is_none() && !revoked {
                    continue;
                }
                db.run(
                    "INSERT INTO lsync_members(device, pubkey, status, added_ms, revoked_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    &[
                        device.as_str().into(),
                        key.as_deref().map_or(Value::Null, to_blob),
                        if revoked { "revoked" } else { "active" }.into(),
                        now_ms().into(),
                        if revoked {
                            now_ms().into()
                        } else {
                            Value::Null
                        },
                    ],
                )?;
                out.added += 1;
                out.revoked += i64::from(revoked);
            }
            Some((have, status)) => {
                match (&have, &key) {
                    (Some(h), Some(k)) if h != k => out.refused.push(format!(
                        "{device}: bound here to another key; the first binding stays"
                    )),
                    (None, Some(k)) => db.run(
                        "UPDATE lsync_members SET pubkey = ?2 WHERE device = ?1",
                        &[device.as_str().into(), to_blob(k)],
                    )?,
                    _ => {}
                }
                // Revocation wins, whatever the key or the clocks.
                if revoked && status != "revoked" {
                    db.run(
                        "UPDATE lsync_members SET status = 'revoked', revoked_ms = ?2 WHERE device = ?1",
                        &[device.as_str().into(), now_ms().into()],
                    )?;
                    out.revoked += 1;
                }
            }
        }
    }
    Ok(out)
}

/// This device's key pair, as JSON `{"private", "public"}` (hex), or NULL
/// when it has none yet. `given` is stored when there is none (the
/// replicator makes it), and this device is then listed as a member with
/// that public key. A key is never replaced.
fn device_key(db: Db, given: Option<(String, String)>) -> Result<Value> {
    let stored = match schema::get(db, "device_key")? {
        Value::Text(t) => Some(t),
        _ => None,
    };
    let pair = match (stored, given) {
        (Some(t), _) => serde_json::from_str::<(String, String)>(&t)
            .map_err(|_| Error::msg("lsync_device_key: the stored device key is corrupt"))?,
        (None, None) => return Ok(Value::Null),
        (None, Some(pair)) => {
            let me = schema::get_text(db, "device_id")?;
            if let Some(Value::Blob(b)) = db.query_value(
                "SELECT pubkey FROM lsync_members WHERE device = ?1",
                &[me.as_str().into()],
            )? {
                if to_hex(&b) != pair.1 {
                    bail!(
                        "lsync_device_key: device {me} is a member with another key, and its \
                         private key is gone: start this device from a fresh database"
                    );
                }
            }
            schema::set(db, "device_key", json(&pair)?)?;
            pair
        }
    };
    let me = schema::get_text(db, "device_id")?;
    if holder_of(db, &pair.1)?.is_none() {
        db.run(
            "INSERT OR IGNORE INTO lsync_members(device, pubkey, status, added_ms)
             VALUES (?1, ?2, 'active', ?3)",
            &[me.as_str().into(), to_blob(&pair.1), now_ms().into()],
        )?;
    }
    json(&serde_json::json!({"private": pair.0, "public": pair.1}))
}

/// One library secret this device knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub epoch: i64,
    pub secret: String,
}

/// The library secrets, newest first (by epoch, then by the secret), after
/// recording `given`: a secret known already keeps the higher epoch.
fn secrets(db: Db, given: Option<(i64, String)>) -> Result<Vec<Secret>> {
    let mut all: Vec<Secret> = match schema::get(db, "library_secrets")? {
        Value::Text(t) => serde_json::from_str(&t)
            .map_err(|_| Error::msg("lsync_library_secret: the stored secrets are corrupt"))?,
        _ => Vec::new(),
    };
    if let Some((epoch, secret)) = given {
        match all.iter_mut().find(|s| s.secret == secret) {
            Some(s) => s.epoch = s.epoch.max(epoch),
            None => all.push(Secret { epoch, secret }),
        }
        all.sort_by(|a, b| (b.epoch, &b.secret).cmp(&(a.epoch, &a.secret)));
        all.truncate(MAX_SECRETS);
        schema::set(db, "library_secrets", json(&all)?)?;
    }
    all.sort_by(|a, b| (b.epoch, &b.secret).cmp(&(a.epoch, &a.secret)));
    Ok(all)
}

/// The revoked devices, if any.
/// The ids (lower case) of the members revoked here.
pub fn revoked(db: Db) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    let has = db.query_i64(
        "SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = 'lsync_members'",
        &[],
    )?;
    if has.is_none() {
        return Ok(out);
    }
    let mut st = db.prepare("SELECT device FROM lsync_members WHERE status = 'revoked'")?;
    while st.step()? {
        if let Some(d) = st.text(0) {
            out.insert(d);
        }
    }
    Ok(out)
}

/// The local aliases (`lsync_devices.idx`) of the revoked devices: their
/// changes are not exported from here, to any peer.
pub fn revoked_origins(db: Db) -> Result<HashSet<i64>> {
    let revoked = revoked(db)?;
    let mut out = HashSet::new();
    if revoked.is_empty() {
        return Ok(out);
    }
    let mut st = db.prepare("SELECT idx, lower(id) FROM lsync_devices")?;
    while st.step()? {
        if st.text(1).is_some_and(|id| revoked.contains(&id)) {
            out.insert(st.i64(0));
        }
    }
    Ok(out)
}
