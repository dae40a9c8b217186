//! Output of `lsync bench capture`: a readable table and one JSON line.

use serde::Serialize;

use super::capture::{Outcome, Variant};
use super::clock::Best;

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// Bytes per inserted row.
fn per_row(bytes: i64, rows: u64) -> f64 {
    bytes as f64 / rows as f64
}

/// CPU-time ratio, when both CPU times are known and the base is not zero.
fn cpu_ratio(x: &Best, base: &Best) -> Option<f64> {
    match (x.cpu_s, base.cpu_s) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The per-object metadata sizes, to stderr (they explain the totals).
pub(crate) fn print_breakdown(o: &Outcome<'_>) {
    let plain = o.get(Variant::Plain).used_bytes;
    for v in [Variant::DeviceOwned, Variant::Shared] {
        let m = o.get(v);
        eprintln!(
            "{}: database uses {} B more than plain ({:.1} B/row); lsync objects:",
            v.name(),
            m.used_bytes - plain,
            per_row(m.used_bytes - plain, o.args.rows)
        );
        for (name, bytes) in &m.meta {
            eprintln!(
                "  {name:<40} {bytes:>12} B  {:>8.2} B/row",
                per_row(*bytes, o.args.rows)
            );
        }
    }
}

/// The results table, to stdout.
pub(crate) fn print_table(o: &Outcome<'_>) {
    let a = o.args;
    println!(
        "lsync bench capture: schema {}, {} rows, {} updates{}, uuid {}, best of {}, foreign_keys {}, SQLite {}",
        a.schema.as_str(),
        a.rows,
        o.updates,
        if a.flush_before_update {
            " (after a flush)"
        } else {
            ""
        },
        a.uuid.as_str(),
        a.repeat,
        if a.foreign_keys.is_on() { "on" } else { "off" },
        o.sqlite_version
    );
    println!(
        "{:<13} {:>9} {:>6} {:>6} {:>9} {:>6} {:>6} {:>8} {:>10} {:>9}",
        "variant",
        "insert s",
        "ratio",
        "cpu",
        "update s",
        "ratio",
        "cpu",
        "flush s",
        "meta B/row",
        "db +B/row"
    );
    let plain = o.get(Variant::Plain);
    let opt = |x: Option<String>| x.unwrap_or_else(|| "-".to_owned());
    let ratio = |x: Option<f64>| opt(x.map(|r| format!("{r:.2}x")));
    for v in Variant::ALL {
        let m = o.get(v);
        let tracked = v != Variant::Plain;
        let bytes = |b: i64| opt(tracked.then(|| format!("{:.2}", per_row(b, a.rows))));
        println!(
            "{:<13} {:>9.4} {:>6} {:>6} {:>9.4} {:>6} {:>6} {:>8} {:>10} {:>9}",
            v.name(),
            m.insert.wall_s,
            ratio(Some(m.insert.wall_s / plain.insert.wall_s)),
            ratio(cpu_ratio(&m.insert, &plain.insert)),
            m.update.wall_s,
            ratio(Some(m.update.wall_s / plain.update.wall_s)),
            ratio(cpu_ratio(&m.update, &plain.update)),
            opt(m.flush_s.map(|s| format!("{s:.4}"))),
            bytes(m.meta_bytes()),
            bytes(m.used_bytes - plain.used_bytes),
        );
    }
    println!(
        "ratio = wall time vs plain; cpu = this thread's CPU time vs plain; \
         meta = dbstat pages of lsync* tables and indexes after lsync_flush(); \
         db + = used pages beyond plain"
    );
}

#[derive(Serialize)]
struct Json {
    schema: &'static str,
    rows: u64,
    uuid: &'static str,
    repeat: u32,
    foreign_keys: bool,
    sqlite_version: &'static str,
    plain_s: f64,
    device_owned_s: f64,
    shared_s: f64,
    device_owned_ratio: f64,
    shared_ratio: f64,
    plain_cpu_s: Option<f64>,
    device_owned_cpu_s: Option<f64>,
    shared_cpu_s: Option<f64>,
    device_owned_cpu_ratio: Option<f64>,
    shared_cpu_ratio: Option<f64>,
    update_rows: usize,
    update_plain_s: f64,
    update_device_owned_s: f64,
    update_shared_s: f64,
    update_device_owned_ratio: f64,
    update_shared_ratio: f64,
    update_device_owned_cpu_ratio: Option<f64>,
    update_shared_cpu_ratio: Option<f64>,
    flush_before_update: bool,
    flush_after_insert_device_owned_s: Option<f64>,
    flush_after_insert_shared_s: Option<f64>,
    flush_device_owned_s: Option<f64>,
    flush_shared_s: Option<f64>,
    meta_bytes_per_row_device_owned: f64,
    meta_bytes_per_row_shared: f64,
    db_extra_bytes_per_row_device_owned: f64,
    db_extra_bytes_per_row_shared: f64,
}

/// The results as one JSON object (one line).
pub(crate) fn json(o: &Outcome<'_>) -> Result<String, serde_json::Error> {
    let a = o.args;
    let (p, d, s) = (
        o.get(Variant::Plain),
        o.get(Variant::DeviceOwned),
        o.get(Variant::Shared),
    );
    let secs = |x: f64| round_to(x, 6);
    let ratio = |x: f64, base: f64| round_to(x / base, 4);
    let cpu = |x: &Best, base: &Best| cpu_ratio(x, base).map(|r| round_to(r, 4));
    let bytes = |b: i64| round_to(per_row(b, a.rows), 2);
    serde_json::to_string(&Json {
        schema: a.schema.as_str(),
        rows: a.rows,
        uuid: a.uuid.as_str(),
        repeat: a.repeat,
        foreign_keys: a.foreign_keys.is_on(),
        sqlite_version: o.sqlite_version,
        plain_s: secs(p.insert.wall_s),
        device_owned_s: secs(d.insert.wall_s),
        shared_s: secs(s.insert.wall_s),
        device_owned_ratio: ratio(d.insert.wall_s, p.insert.wall_s),
        shared_ratio: ratio(s.insert.wall_s, p.insert.wall_s),
        plain_cpu_s: p.insert.cpu_s.map(secs),
        device_owned_cpu_s: d.insert.cpu_s.map(secs),
        shared_cpu_s: s.insert.cpu_s.map(secs),
        device_owned_cpu_ratio: cpu(&d.insert, &p.insert),
        shared_cpu_ratio: cpu(&s.insert, &p.insert),
        update_rows: o.updates,
        update_plain_s: secs(p.update.wall_s),
        update_device_owned_s: secs(d.update.wall_s),
        update_shared_s: secs(s.update.wall_s),
        update_device_owned_ratio: ratio(d.update.wall_s, p.update.wall_s),
        update_shared_ratio: ratio(s.update.wall_s, p.update.wall_s),
        update_device_owned_cpu_ratio: cpu(&d.update, &p.update),
        update_shared_cpu_ratio: cpu(&s.update, &p.update),
        flush_before_update: a.flush_before_update,
        flush_after_insert_device_owned_s: d.insert_flush_s.map(secs),
        flush_after_insert_shared_s: s.insert_flush_s.map(secs),
        flush_device_owned_s: d.flush_s.map(secs),
        flush_shared_s: s.flush_s.map(secs),
        meta_bytes_per_row_device_owned: bytes(d.meta_bytes()),
        meta_bytes_per_row_shared: bytes(s.meta_bytes()),
        db_extra_bytes_per_row_device_owned: bytes(d.used_bytes - p.used_bytes),
        db_extra_bytes_per_row_shared: bytes(s.used_bytes - p.used_bytes),
    })
}
