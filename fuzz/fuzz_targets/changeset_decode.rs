//! The changeset decoder on arbitrary bytes: as a blob (header and zstd
//! frame), and as a body, raw and framed, since random bytes seldom make a
//! zstd frame with a valid checksum. The heap the decoder holds at once is
//! counted, and more than `K` bytes per body byte (plus a constant) is a
//! crash, as in wire/tests/bounded_decode.rs.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use libfuzzer_sys::fuzz_target;
use lsync_wire::changeset::{Changeset, FORMAT, MAGIC};

const MAX_BODY: u64 = 1 << 20;
/// Heap bytes a decoded changeset may take per body byte (docs/protocol.md).
const K: usize = 56;
/// The zstd reader's buffer and the first guess at the body buffer.
const C: usize = 1 << 20;

struct Counting;
static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes straight to the system allocator; the counters are
// atomics (libFuzzer runs one input at a time, on one thread).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = NOW.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(now, Relaxed);
        // SAFETY: the caller's layout, unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NOW.fetch_sub(l.size(), Relaxed);
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `f`'s result and the most heap it held at once.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed).saturating_sub(base))
}

fuzz_target!(|data: &[u8]| {
    let _ = Changeset::decode(data, MAX_BODY);
    let _ = Changeset::summary(data, MAX_BODY);

    let (raw, peak) = measured(|| Changeset::decode_body(data, MAX_BODY));
    assert!(
        peak <= K * data.len() + 4096,
        "{} body bytes took {peak}",
        data.len()
    );
    if let Ok(cs) = &raw {
        // What decodes encodes (a decoded id is canonical UUID text).
        let _ = cs.encode().expect("a decoded changeset encodes");
    }

    let mut blob = MAGIC.to_vec();
    blob.push(FORMAT);
    blob.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut z = zstd::bulk::Compressor::new(1).unwrap();
    z.include_checksum(true).unwrap();
    blob.extend_from_slice(&z.compress(data).unwrap());
    let (full, peak) = measured(|| Changeset::decode(&blob, MAX_BODY));
    assert!(
        peak <= (K + 1) * data.len() + C,
        "{} body bytes took {peak}",
        data.len()
    );
    // Debug, not PartialEq: a REAL may be NaN.
    assert_eq!(format!("{full:?}"), format!("{raw:?}"));
    if let (Ok(s), Ok(cs)) = (Changeset::summary(&blob, MAX_BODY), full) {
        assert_eq!(
            (s.from, s.to, s.changes),
            (cs.from, cs.to, cs.changes.len() as u64)
        );
    }
});
