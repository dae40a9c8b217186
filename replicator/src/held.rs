//! A peer whose clock is ahead is held, not failed (issue 11). A changeset
//! whose newest HLC is more than `max_drift_ms` ahead of our clock is
//! refused by the drift guard, but only until our clock catches up: the
//! receiver keeps the peer's changes waiting (no error, no escalation),
//! pulls them again when they are acceptable, and both sides' `lsync status`
//! say whose clock is ahead, by how much, and until when.
//!
//! Here: asking the extension about a refused changeset (`lsync_drift`),
//! recording holds (`lsync_peer_held`, `lsync_peer_held_by`), and how a
//! hold reads.

use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{params, Connection};

use crate::store::R;

/// A hold: the newest HLC is `ahead_ms` ahead of the receiver's clock, and
/// the receiver accepts it at `until_ms` (unix ms, the receiver's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    pub ahead_ms: i64,
    pub until_ms: i64,
}

/// `lsync_drift`'s answer.
#[derive(serde::Deserialize)]
struct Drift {
    ahead_ms: i64,
    accept_at_ms: i64,
}

/// Whether a changeset from `peer` that failed to apply was refused by the
/// drift guard only for now: if so, records the hold and returns it. The
/// extension answers from the changeset itself, never from the error's text.
pub fn check(c: &Connection, peer: &str, blob: &[u8]) -> R<Option<Hold>> {
    let drift: Option<String> = c.query_row("SELECT lsync_drift(?1)", [blob], |r| r.get(0))?;
    let Some(d) = drift else {
        return Ok(None);
    };
    let d: Drift = serde_json::from_str(&d)?;
    let hold = Hold {
        ahead_ms: d.ahead_ms,
        until_ms: d.accept_at_ms,
    };
    c.query_row(
        "SELECT lsync_peer_held(?1, ?2, ?3)",
        params![peer, hold.ahead_ms, hold.until_ms],
        |_| Ok(()),
    )?;
    Ok(Some(hold))
}

/// The peer reported that it holds our changes.
pub fn held_by(c: &Connection, peer: &str, hold: Hold) -> R<()> {
    c.query_row(
        "SELECT lsync_peer_held_by(?1, ?2, ?3)",
        params![peer, hold.ahead_ms, hold.until_ms],
        |_| Ok(()),
    )?;
    Ok(())
}

/// A duration for people: tenths of a second below a minute, else whole
/// seconds (`4m 10s`).
pub fn amount(ms: i64) -> String {
    if ms.abs() < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs(ms.unsigned_abs() / 1000)).to_string()
    }
}

/// A unix-ms time for people, in UTC, rounded up to the second (a hold
/// is over by then).
pub fn time(ms: i64) -> String {
    let secs = (ms.max(0) as u64).div_ceil(1000);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The `lsync status` lines for a peer: whether we hold its changes, and
/// whether it holds ours. `now` is unix ms.
pub fn lines(peer: &str, held: Option<Hold>, held_by_peer: Option<Hold>, now: i64) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(h) = held {
        let when = if h.until_ms > now {
            format!("at {} (in {})", time(h.until_ms), amount(h.until_ms - now))
        } else {
            format!("from {} on, at the next retry", time(h.until_ms))
        };
        out.push(format!(
            "held: {peer}'s clock is {} ahead of ours; its changes wait, and will be accepted {when}",
            amount(h.ahead_ms)
        ));
    }
    if let Some(h) = held_by_peer {
        out.push(format!(
            "held by {peer}: our clock is {} ahead of its clock; it holds our changes, and will \
             accept them at {} (its clock)",
            amount(h.ahead_ms),
            time(h.until_ms)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A changeset refused for drift is held, and the hold recorded; one
    /// refused for another reason (another library) is not.
    #[test]
    fn only_a_drift_refusal_is_a_hold() {
        crate::db::register(None).unwrap();
        let dir = std::env::temp_dir().join(format!("lsync-held-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = |name: &str| {
            let c = crate::store::open(&dir.join(name)).unwrap();
            c.execute_batch(
                "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
                 SELECT lsync_track('tags', 'shared');",
            )
            .unwrap();
            c
        };
        let (a, b, other) = (db("a.db"), db("b.db"), db("o.db"));
        let library: String = a
            .query_row("SELECT lsync_library_id()", [], |r| r.get(0))
            .unwrap();
        crate::store::join_library(&b, &library).unwrap();
        let peer: String = a
            .query_row("SELECT lsync_device_id()", [], |r| r.get(0))
            .unwrap();
        b.query_row("SELECT lsync_peer_contact(?1, NULL)", [&peer], |_| Ok(()))
            .unwrap();
        let ahead = crate::now::now_ms() + 600_000;
        a.execute_batch(&format!(
            "UPDATE lsync_config SET value = {} WHERE key = 'hlc';
             INSERT INTO tags(name) VALUES ('x');",
            ahead << 16
        ))
        .unwrap();
        let blob: Vec<u8> = a
            .query_row("SELECT lsync_changeset(0)", [], |r| r.get(0))
            .unwrap();
        let h = check(&b, &peer, &blob).unwrap().expect("held");
        assert!((599_000..=600_100).contains(&h.ahead_ms), "{h:?}");
        assert_eq!(h.until_ms, ahead - 60_000 + 1);
        let row: String = b
            .query_row("SELECT lsync_peer(?1)", [&peer], |r| r.get(0))
            .unwrap();
        let row: crate::store::PeerStatus = serde_json::from_str(&row).unwrap();
        assert_eq!(row.held, Some(h));
        assert!(!row.stuck && row.last_error.is_none());
        assert!(check(&other, &peer, &blob).is_err(), "another library");
        drop((a, b, other));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn holds_read_as_whose_clock_is_ahead_by_how_much_and_until_when() {
        let (peer, now) = ("01a2", 1_700_000_000_000);
        let h = Hold {
            ahead_ms: 600_000,
            until_ms: now + 540_000,
        };
        let l = lines(peer, Some(h), None, now);
        assert_eq!(
            l,
            [
                "held: 01a2's clock is 10m ahead of ours; its changes wait, and will be accepted \
              at 2023-11-14T22:22:20Z (in 9m)"
            ]
        );
        let l = lines(peer, None, Some(h), now);
        assert_eq!(
            l,
            ["held by 01a2: our clock is 10m ahead of its clock; it holds our changes, and will \
              accept them at 2023-11-14T22:22:20Z (its clock)"]
        );
        assert!(lines(
            peer,
            Some(Hold {
                ahead_ms: 1500,
                until_ms: now - 1
            }),
            None,
            now
        )[0]
        .contains("1.5s ahead of ours; its changes wait, and will be accepted from"));
        assert!(lines(peer, None, None, now).is_empty());
    }
}
