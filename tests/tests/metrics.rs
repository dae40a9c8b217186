//! Prometheus metrics (issue 15; docs/metrics.md): a real pair of `lsync run`
//! sidecars on 127.0.0.1, each with `--metrics` on a free port. Their
//! `/metrics` pages are scraped over plain HTTP, checked to hold every
//! documented metric, checked against `lsync status --json`, and seen to
//! move when rows are written.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use lsync_tests::*;

/// The samples of one scrape: `name{labels}` → value.
type Samples = BTreeMap<String, f64>;

/// `GET /metrics` over a plain TCP stream, retried a few times (the
/// listener starts with the sidecar, which may still be starting).
fn scrape(addr: &str) -> Samples {
    let mut last = String::new();
    for _ in 0..50 {
        match fetch(addr) {
            Ok(page) => return parse_exposition(&page),
            Err(e) => last = e.to_string(),
        }
        sleep(Duration::from_millis(100));
    }
    panic!("no metrics page at {addr}: {last}");
}

fn fetch(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {raw:?}")))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("answered {head:?}")));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(unchunk(body));
    }
    Ok(body.to_owned())
}

/// The body of a chunked HTTP/1.1 response.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The Prometheus text format: `# ...` lines are comments, every other line
/// is `name{labels} value`.
fn parse_exposition(page: &str) -> Samples {
    page.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (key, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|e| panic!("bad value in {l:?}: {e}")),
            };
            (key.to_owned(), value)
        })
        .collect()
}

/// The value of `name` (with the label `label="value"`, if given).
fn sample(m: &Samples, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let key = match label {
        Some((k, v)) => format!("{name}{{{k}=\"{v}\"}}"),
        None => name.to_owned(),
    };
    m.get(&key).copied()
}

fn peer_sample(m: &Samples, name: &str, peer: &str) -> f64 {
    sample(m, name, Some(("peer", peer)))
        .unwrap_or_else(|| panic!("no {name}{{peer=\"{peer}\"}} in {m:#?}"))
}

/// Whether the page has a sample of `name` (any labels, or a histogram's
/// `_bucket`/`_sum`/`_count`).
fn has_metric(m: &Samples, name: &str) -> bool {
    m.keys().any(|k| {
        k.strip_prefix(name).is_some_and(|rest| {
            rest.is_empty()
                || rest.starts_with('{')
                || rest.starts_with("_bucket")
                || rest.starts_with("_count")
        })
    })
}

/// Every metric docs/metrics.md lists, as the sidecar that dials names it.
const DIALER_METRICS: &[&str] = &[
    "lsync_peer_changes_received_total",
    "lsync_peer_changes_sent_total",
    "lsync_peer_bytes_received_total",
    "lsync_peer_bytes_sent_total",
    "lsync_peer_sessions",
    "lsync_peer_lag_changes",
    "lsync_peer_lag_seconds",
    "lsync_peer_received_cursor",
    "lsync_peer_acked_cursor",
    "lsync_peer_failures",
    "lsync_peer_stuck",
    "lsync_peer_held",
    "lsync_peer_tombstones_held",
    "lsync_peer_last_contact_timestamp_seconds",
    "lsync_dial_backoff_seconds",
    "lsync_dial_failures_total",
    "lsync_peer_session_failures_total",
    "lsync_head_cursor",
    "lsync_deferred_links",
    "lsync_quarantined_changes",
    "lsync_tombstones",
    "lsync_tombstones_awaiting_ack",
    "lsync_hlc_ahead_seconds",
    "lsync_changeset_apply_seconds",
    "lsync_changeset_export_seconds",
];

/// Whether the scrape agrees with `lsync status --json` on the database's
/// figures and on `peer`'s.
fn agrees_with_status(m: &Samples, db: &Path, peer: &str) -> Result<(), String> {
    let s = lsync_status(db);
    let p = s["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["device_id"] == peer))
        .ok_or_else(|| format!("no peer {peer} in {s}"))?;
    let pairs = [
        (sample(m, "lsync_head_cursor", None), &s["head"]),
        (sample(m, "lsync_tombstones", None), &s["tombstones"]),
        (
            sample(m, "lsync_tombstones_awaiting_ack", None),
            &s["tombstones_awaiting_ack"],
        ),
        (
            sample(m, "lsync_deferred_links", None),
            &s["deferred_links"],
        ),
        (
            sample(m, "lsync_quarantined_changes", None),
            &s["conflicts"],
        ),
        (
            sample(m, "lsync_peer_lag_changes", Some(("peer", peer))),
            &p["lag"],
        ),
        (
            sample(m, "lsync_peer_acked_cursor", Some(("peer", peer))),
            &p["acked_cursor"],
        ),
        (
            sample(m, "lsync_peer_received_cursor", Some(("peer", peer))),
            &p["recv_cursor"],
        ),
        (
            sample(m, "lsync_peer_failures", Some(("peer", peer))),
            &p["failures"],
        ),
        (
            sample(m, "lsync_peer_tombstones_held", Some(("peer", peer))),
            &p["tombstones_held"],
        ),
    ];
    for (i, (scraped, said)) in pairs.iter().enumerate() {
        if *scraped != said.as_f64() {
            return Err(format!("pair {i}: scraped {scraped:?}, status says {said}"));
        }
    }
    let contact = p["last_contact_ms"].as_f64().ok_or("no last contact")? / 1000.0;
    let scraped = peer_sample(m, "lsync_peer_last_contact_timestamp_seconds", peer);
    // The gauge is read up to a refresh (1 s) before the status.
    if !(contact - 5.0..=contact + 0.001).contains(&scraped) {
        return Err(format!("last contact {scraped} vs {contact}"));
    }
    Ok(())
}

/// Scrapes until the page agrees with the status (the gauges are read
/// from the database once a second).
fn scrape_agreeing(node: &Sidecar, metrics: &str, peer: &str) -> Samples {
    let mut why = String::new();
    for _ in 0..100 {
        let m = scrape(metrics);
        match agrees_with_status(&m, &node.db, peer) {
            Ok(()) => return m,
            Err(e) => why = e,
        }
        assert!(node.alive(), "{} died:\n{}", node.name, node.all_logs());
        sleep(Duration::from_millis(200));
    }
    panic!("{metrics} never agreed with lsync status: {why}");
}

#[test]
fn metrics_match_status_and_move_when_rows_are_written() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, a) = library_db(dir.path(), "a");
    let (b_db, b) = library_db(dir.path(), "b");
    index_tree(&a, "a", 30);
    let (ma, mb) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let node_a = Sidecar::start(dir.path(), "A", &a_db, &secret, &[], &["--metrics", &ma]);
    // B takes the address from its config file, as `metrics = "..."`.
    let config = dir.path().join("b.toml");
    std::fs::write(&config, format!("metrics = \"{mb}\"\n")).unwrap();
    let node_b = Sidecar::start(
        dir.path(),
        "B",
        &b_db,
        &secret,
        &[node_a.addr()],
        &["--join", "--config", config.to_str().unwrap()],
    );
    let nodes = [&node_a, &node_b];
    add_tag(&b, "red", "#f00");
    wait_for("A and B converge", &nodes, || converged(&[&a, &b], 32));
    let (dev_a, dev_b) = (device_id(&a), device_id(&b));

    let at_a = scrape_agreeing(&node_a, &ma, &dev_b);
    let at_b = scrape_agreeing(&node_b, &mb, &dev_a);
    let missing: Vec<_> = DIALER_METRICS
        .iter()
        .filter(|n| !has_metric(&at_b, n))
        .collect();
    assert!(missing.is_empty(), "B's page lacks {missing:?}:\n{at_b:#?}");
    assert_eq!(peer_sample(&at_a, "lsync_peer_sessions", &dev_b), 1.0);
    assert_eq!(peer_sample(&at_b, "lsync_peer_sessions", &dev_a), 1.0);
    assert_eq!(
        sample(
            &at_b,
            "lsync_dial_backoff_seconds",
            Some(("addr", node_a.addr()))
        ),
        Some(0.0),
        "B is connected to A"
    );
    assert!(peer_sample(&at_b, "lsync_peer_changes_received_total", &dev_a) >= 31.0);
    assert!(peer_sample(&at_a, "lsync_peer_changes_sent_total", &dev_b) >= 31.0);
    assert!(peer_sample(&at_a, "lsync_peer_changes_received_total", &dev_b) >= 1.0);
    // Rows written at A: A's head, what A sent B and what B received and
    // applied all move, and both pages agree with the status again.
    index_tree(&a, "more", 20);
    a.execute("DELETE FROM entries WHERE name = 'a-29'", [])
        .unwrap();
    wait_for("B gets the new rows", &nodes, || converged(&[&a, &b], 52));
    let after_a = scrape_agreeing(&node_a, &ma, &dev_b);
    let after_b = scrape_agreeing(&node_b, &mb, &dev_a);
    let grew = |before: &Samples, after: &Samples, name: &str, peer: &str, by: f64| {
        let (x, y) = (
            peer_sample(before, name, peer),
            peer_sample(after, name, peer),
        );
        assert!(
            y >= x + by,
            "{name}{{peer={peer}}} went from {x} to {y}, not by {by}"
        );
    };
    grew(
        &at_a,
        &after_a,
        "lsync_peer_changes_sent_total",
        &dev_b,
        21.0,
    );
    grew(&at_a, &after_a, "lsync_peer_bytes_sent_total", &dev_b, 1.0);
    grew(
        &at_b,
        &after_b,
        "lsync_peer_changes_received_total",
        &dev_a,
        21.0,
    );
    grew(
        &at_b,
        &after_b,
        "lsync_peer_bytes_received_total",
        &dev_a,
        1.0,
    );
    let head = |m: &Samples| sample(m, "lsync_head_cursor", None).unwrap();
    assert!(head(&after_a) >= head(&at_a) + 21.0);
    let observations =
        |m: &Samples, name: &str| sample(m, &format!("{name}_count"), None).unwrap_or(0.0);
    assert!(
        observations(&after_b, "lsync_changeset_apply_seconds")
            > observations(&at_b, "lsync_changeset_apply_seconds")
    );
    assert!(
        observations(&after_a, "lsync_changeset_export_seconds")
            > observations(&at_a, "lsync_changeset_export_seconds")
    );
}

#[test]
fn a_bad_metrics_address_stops_the_sidecar_before_it_starts() {
    let dir = TempDir::new();
    let secret = new_secret(dir.path(), "secret");
    let (a_db, _a) = library_db(dir.path(), "a");
    let out = std::process::Command::new(lsync_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--metrics", "no-port"])
        .arg("--db")
        .arg(&a_db)
        .arg("--secret-file")
        .arg(&secret)
        .output()
        .expect("run lsync");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics no-port"), "{err}");
}
