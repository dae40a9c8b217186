//! Prometheus metrics of `lsync run --metrics ADDR` (docs/metrics.md).
//!
//! Two kinds, both through the `metrics` facade and rendered by
//! `metrics-exporter-prometheus`, whose HTTP listener serves them:
//! - what the sessions do (changes and bytes moved, sessions open, failures,
//!   backoff, apply and export times), recorded where it happens;
//! - what the database says of itself (`lsync_status()`: head, lag, waiting
//!   links and tombstones, conflicts, last contact), read every
//!   [`REFRESH`] by a task of its own, so that a scrape never waits for
//!   the database.
//!
//! Without `--metrics` no recorder is installed and every call here is a
//! no-op.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tokio::sync::watch;
use tracing::warn;

use crate::store;

/// How often the database's figures are read again.
pub const REFRESH: Duration = Duration::from_secs(1);

const APPLY: &str = "lsync_changeset_apply_seconds";
const EXPORT: &str = "lsync_changeset_export_seconds";

/// Upper bounds of the apply and export histograms, in seconds: a one-row
/// push takes well under a millisecond, a batch of thousands of changes up
/// to seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `metrics` setting: `host:port`, resolved once.
pub fn parse_addr(s: &str) -> Result<SocketAddr> {
    s.to_socket_addrs()
        .with_context(|| format!("--metrics {s}: not an address to listen on (host:port)"))?
        .next()
        .with_context(|| format!("--metrics {s}: the name resolves to no address"))
}

/// Installs the recorder and starts serving `/metrics` on `addr`: an error
/// when the address cannot be bound. Call within the tokio runtime.
pub fn serve(addr: SocketAddr) -> Result<()> {
    let mut b = PrometheusBuilder::new().with_http_listener(addr);
    for name in [APPLY, EXPORT] {
        b = b.set_buckets_for_metric(Matcher::Full(name.into()), &BUCKETS)?;
    }
    b.install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    describe();
    Ok(())
}

/// The HELP lines.
fn describe() {
    use metrics::Unit::{Bytes, Count, Seconds};
    for (name, unit, what) in [
        (
            "lsync_peer_changes_received_total",
            Count,
            "Changes received from the peer in changesets and applied",
        ),
        (
            "lsync_peer_changes_sent_total",
            Count,
            "Changes sent to the peer in changesets",
        ),
        (
            "lsync_peer_bytes_received_total",
            Bytes,
            "Changeset and snapshot bytes received from the peer (compressed, as sent)",
        ),
        (
            "lsync_peer_bytes_sent_total",
            Bytes,
            "Changeset and snapshot bytes sent to the peer (compressed)",
        ),
        (
            "lsync_peer_session_failures_total",
            Count,
            "Sessions with the peer that ended in an error after the handshake",
        ),
        (
            "lsync_dial_failures_total",
            Count,
            "Failed attempts to reach a configured peer (connect, handshake or session error)",
        ),
    ] {
        describe_counter!(name, unit, what);
    }
    for (name, unit, what) in [
        ("lsync_peer_sessions", Count, "Sessions open with the peer: 0 when disconnected"),
        ("lsync_peer_lag_changes", Count, "Cursors of this database the peer has not acknowledged"),
        ("lsync_peer_lag_seconds", Seconds, "Age, by its HLC, of the oldest change the peer has not acknowledged"),
        ("lsync_peer_received_cursor", Count, "The peer's cursor up to which its changes are applied here"),
        ("lsync_peer_acked_cursor", Count, "This database's cursor up to which the peer acknowledged its changes"),
        ("lsync_peer_failures", Count, "Consecutive failed catch-ups from the peer (5 start a full resync)"),
        ("lsync_peer_stuck", Count, "1 while the peer's last error is one a full resync would hit again"),
        ("lsync_peer_held", Count, "1 while the peer's changes are held because its clock is ahead"),
        ("lsync_peer_tombstones_held", Count, "Tombstones kept until the peer acknowledges them"),
        ("lsync_peer_last_contact_timestamp_seconds", Seconds, "Unix time of the last contact with the peer"),
        ("lsync_dial_backoff_seconds", Seconds, "Delay before the next attempt to reach a configured peer; 0 while connecting or connected"),
        ("lsync_head_cursor", Count, "The newest cursor of this database's change clock"),
        ("lsync_deferred_links", Count, "FK links waiting for their target row"),
        ("lsync_quarantined_changes", Count, "Changes from peers quarantined here"),
        ("lsync_tombstones", Count, "Tombstones of deletes kept in the change clock"),
        ("lsync_tombstones_awaiting_ack", Count, "Tombstones that wait for a peer's ACK before they can be pruned"),
        ("lsync_hlc_ahead_seconds", Seconds, "How far this database's HLC is ahead of the wall clock (0 when not ahead)"),
    ] {
        describe_gauge!(name, unit, what);
    }
    describe_histogram!(
        APPLY,
        Seconds,
        "Time to apply one changeset from a peer, in its write transaction"
    );
    describe_histogram!(EXPORT, Seconds, "Time to export one changeset for a peer");
}

/// A changeset from the peer was applied.
pub fn received(peer: &str, changes: u64, bytes: u64) {
    counter!("lsync_peer_changes_received_total", "peer" => peer.to_owned()).increment(changes);
    bytes_received(peer, bytes);
}

/// A changeset was sent to the peer.
pub fn sent(peer: &str, changes: u64, bytes: u64) {
    counter!("lsync_peer_changes_sent_total", "peer" => peer.to_owned()).increment(changes);
    bytes_sent(peer, bytes);
}

pub fn bytes_received(peer: &str, bytes: u64) {
    counter!("lsync_peer_bytes_received_total", "peer" => peer.to_owned()).increment(bytes);
}

pub fn bytes_sent(peer: &str, bytes: u64) {
    counter!("lsync_peer_bytes_sent_total", "peer" => peer.to_owned()).increment(bytes);
}

pub fn apply_time(t: Duration) {
    histogram!(APPLY).record(t);
}

pub fn export_time(t: Duration) {
    histogram!(EXPORT).record(t);
}

/// A session with the peer is open until this is dropped.
pub struct OpenSession(String);

impl OpenSession {
    pub fn new(peer: &str) -> OpenSession {
        gauge!("lsync_peer_sessions", "peer" => peer.to_owned()).increment(1.0);
        // The failure counter is there at 0 before the first failure.
        counter!("lsync_peer_session_failures_total", "peer" => peer.to_owned()).increment(0);
        OpenSession(peer.to_owned())
    }

    /// The session ended in an error.
    pub fn failed(&self) {
        counter!("lsync_peer_session_failures_total", "peer" => self.0.clone()).increment(1);
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        gauge!("lsync_peer_sessions", "peer" => self.0.clone()).decrement(1.0);
    }
}

/// An attempt to reach the configured peer at `addr` failed; the next one
/// is in `delay`.
pub fn dial_failed(addr: &str) {
    counter!("lsync_dial_failures_total", "addr" => addr.to_owned()).increment(1);
}

/// The dialer of `addr` waits `delay` before its next attempt (zero: it is
/// connecting or connected).
pub fn dial_backoff(addr: &str, delay: Duration) {
    if delay.is_zero() {
        // The failure counter is there at 0 before the first failure.
        counter!("lsync_dial_failures_total", "addr" => addr.to_owned()).increment(0);
    }
    gauge!("lsync_dial_backoff_seconds", "addr" => addr.to_owned()).set(delay.as_secs_f64());
}

/// Reads the database's figures every [`REFRESH`] until shutdown, on a
/// connection of its own. It only reads: captures not yet folded count
/// once a session (or `lsync status`) folds them.
pub async fn refresh(db: PathBuf, mut stop: watch::Receiver<bool>) {
    let conn = match store::open_existing(&db) {
        Ok(c) => std::sync::Arc::new(std::sync::Mutex::new(c)),
        Err(e) => {
            warn!("metrics: cannot open the database: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let c = conn.clone();
        let status = tokio::task::spawn_blocking(move || {
            let c = c
                .lock()
                .map_err(|_| anyhow::anyhow!("metrics connection poisoned"))?;
            Ok::<_, anyhow::Error>(store::folded_status(&c)?)
        })
        .await;
        match status {
            Ok(Ok(s)) => record(&s),
            Ok(Err(e)) => warn!("metrics: reading the status: {e:#}"),
            Err(e) => warn!("metrics: {e}"),
        }
    }
}

/// Sets the gauges of one status document.
fn record(s: &store::Status) {
    let db = [
        ("lsync_head_cursor", s.head),
        ("lsync_deferred_links", s.deferred_links),
        ("lsync_quarantined_changes", s.conflicts),
        ("lsync_tombstones", s.tombstones),
        ("lsync_tombstones_awaiting_ack", s.tombstones_awaiting_ack),
    ];
    for (name, v) in db {
        gauge!(name).set(v as f64);
    }
    gauge!("lsync_hlc_ahead_seconds").set(s.hlc_ahead_ms as f64 / 1000.0);
    for p in &s.peers {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let values = [
            ("lsync_peer_lag_changes", p.lag as f64),
            ("lsync_peer_lag_seconds", p.lag_ms as f64 / 1000.0),
            ("lsync_peer_received_cursor", p.recv_cursor as f64),
            ("lsync_peer_acked_cursor", p.acked_cursor as f64),
            ("lsync_peer_failures", p.failures as f64),
            ("lsync_peer_stuck", flag(p.stuck)),
            ("lsync_peer_held", flag(p.held.is_some())),
            ("lsync_peer_tombstones_held", p.tombstones_held as f64),
        ];
        for (name, v) in values {
            gauge!(name, "peer" => p.device_id.clone()).set(v);
        }
        // A known peer with no session in this run reads 0 sessions.
        gauge!("lsync_peer_sessions", "peer" => p.device_id.clone()).increment(0.0);
        if let Some(t) = p.last_contact_ms {
            gauge!("lsync_peer_last_contact_timestamp_seconds", "peer" => p.device_id.clone())
                .set(t as f64 / 1000.0);
        }
    }
}
