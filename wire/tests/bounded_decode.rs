//! Every allocation a changeset drives is bounded by the bytes it holds.
//!
//! Each test crafts a small input whose counts or lengths lie (one class of
//! lie per test), decodes it, and asserts a clean error and the peak of
//! heap bytes the decoding thread had allocated at once, as counted by the
//! allocator below: at most `K` times the body plus a constant `C`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lsync_wire::changeset::{
    decoded_budget, Changeset, DecodeError, DEFAULT_MAX_BODY, FORMAT, MAGIC, MIN_DECODED_BUDGET,
};

/// Heap bytes per body byte that a decoded changeset may take: a NULL
/// column is one byte on the wire and a 48-byte `(name, Value)` decoded; a
/// column name one byte and 56 bytes (its `String`, and its shared
/// `Arc<str>` with the counters).
const K: usize = 56;
/// The zstd reader's input buffer (128 KiB) and the first guess at the body
/// buffer (at least 64 KiB). zstd's own context and window (at most 2 MiB,
/// see `a_zstd_frame_that_declares_a_huge_window`) come from C's malloc,
/// which this count does not see.
const C: usize = 1 << 20;

struct Counting;

thread_local! {
    static NOW: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(d: isize) {
    // try_with: the thread's storage may already be gone as it exits.
    let _ = NOW.try_with(|now| {
        now.set(now.get() + d);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now.get())));
    });
}

// SAFETY: every call is passed straight to the system allocator; the counters
// are thread-local `Cell`s with const initializers, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        add(l.size() as isize);
        // SAFETY: the caller's layout, unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        add(l.size() as isize);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add(-(l.size() as isize));
        // SAFETY: `p` came from this allocator with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // Counted as a copy: the new block while the old one is still held.
        add(new as isize);
        add(-(l.size() as isize));
        // SAFETY: as for dealloc; `new` is the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The result of `f` and the peak of heap bytes it held at once.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, (PEAK.with(Cell::get) - base).max(0) as usize)
}

/// A changeset body, written by hand so that it can lie.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn uvar(mut self, mut v: u64) -> Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.uvar(s.len() as u64).raw(s.as_bytes())
    }
    /// library id, from 0, to 0, no fence.
    fn header() -> Self {
        Body::default().raw(&[7; 16]).uvar(0).uvar(0).uvar(0)
    }
    /// The header, one origin, one table `t` with `cols` columns.
    fn with_table(cols: usize) -> Self {
        let mut b = Body::header()
            .uvar(1)
            .raw(&[9; 16])
            .uvar(1)
            .str("t")
            .str("shared");
        b = b.uvar(cols as u64);
        for j in 0..cols {
            b = b.str(&format!("c{j}"));
        }
        b
    }
    /// The start of a change: table 0, `op`, seq +1, hlc +1, origin 0.
    fn change(self, op: u8) -> Self {
        self.uvar(0).uvar(u64::from(op)).uvar(2).uvar(2).uvar(0)
    }
}

/// `body` behind a header that declares `len`, in a checksummed zstd frame.
fn framed(len: u64, body: &[u8]) -> Vec<u8> {
    let mut blob = MAGIC.to_vec();
    blob.push(FORMAT);
    blob.extend_from_slice(&len.to_le_bytes());
    let mut z = zstd::bulk::Compressor::new(3).unwrap();
    z.include_checksum(true).unwrap();
    blob.extend_from_slice(&z.compress(body).unwrap());
    blob
}

/// Decodes `body` both raw and framed: each is refused with an error whose
/// text holds `needle`, within K x body + C bytes of heap.
#[track_caller]
fn refused_within_bound(body: &Body, needle: &str) -> DecodeError {
    let body = &body.0;
    let bound = K * body.len() + C;
    let (raw, raw_peak) = measured(|| Changeset::decode_body(body, DEFAULT_MAX_BODY));
    let err = raw.expect_err("a lying body must be refused");
    assert!(
        err.to_string().contains(needle),
        "expected '{needle}' in: {err}"
    );
    assert!(
        raw_peak <= bound,
        "{err}: raw decode peaked at {raw_peak} bytes, bound {bound}"
    );
    let blob = framed(body.len() as u64, body);
    let (framed, framed_peak) = measured(|| Changeset::decode(&blob, DEFAULT_MAX_BODY));
    assert_eq!(framed.expect_err("framed too"), err);
    assert!(
        framed_peak <= bound,
        "{err}: decode peaked at {framed_peak} bytes, bound {bound}"
    );
    let (summary, summary_peak) = measured(|| Changeset::summary(&blob, DEFAULT_MAX_BODY));
    assert!(
        summary_peak <= bound,
        "summary peaked at {summary_peak} bytes, bound {bound}"
    );
    drop(summary);
    eprintln!(
        "{err}: body {} B, peaks raw {raw_peak} / framed {framed_peak} / summary {summary_peak}",
        body.len()
    );
    err
}

fn is_count(err: &DecodeError, what: &str) -> bool {
    matches!(err, DecodeError::Count { what: w, .. } if *w == what)
}

#[test]
fn a_huge_origin_count() {
    let body = Body::header().uvar(u64::MAX >> 1).raw(&[0; 64]);
    let err = refused_within_bound(&body, "claims 9223372036854775807 origins");
    assert!(is_count(&err, "origins"), "{err}");
    // The count fits the bytes, but not at 16 bytes an origin.
    let body = Body::header().uvar(60).raw(&[0; 64]);
    assert!(is_count(
        &refused_within_bound(&body, "at most 4"),
        "origins"
    ));
}

#[test]
fn a_huge_table_count() {
    let body = Body::header().uvar(0).uvar(1 << 40).raw(&[0; 300]);
    assert!(is_count(&refused_within_bound(&body, "tables"), "tables"));
    // Every byte one table would be the old bound: 3 bytes is the least.
    let body = Body::header().uvar(0).uvar(200).raw(&[0; 300]);
    assert!(is_count(
        &refused_within_bound(&body, "at most 100"),
        "tables"
    ));
}

#[test]
fn a_huge_column_count() {
    let body = Body::header()
        .uvar(0)
        .uvar(1)
        .str("t")
        .str("shared")
        .uvar(u64::MAX);
    assert!(is_count(&refused_within_bound(&body, "columns"), "columns"));
    // Fits the bytes, but over the 63 a mask can name.
    let body = Body::header()
        .uvar(0)
        .uvar(1)
        .str("t")
        .str("shared")
        .uvar(64)
        .raw(&[0; 64]);
    refused_within_bound(&body, "too many columns");
}

#[test]
fn a_huge_change_count() {
    let body = Body::with_table(2).uvar(u64::MAX >> 8).raw(&[0; 1000]);
    assert!(is_count(&refused_within_bound(&body, "changes"), "changes"));
    // 7 bytes is the least a change takes: 1000 bytes hold 142.
    let body = Body::with_table(2).uvar(500).raw(&[0; 1000]);
    assert!(is_count(
        &refused_within_bound(&body, "at most 142"),
        "changes"
    ));
}

#[test]
fn a_huge_text_length() {
    for len in [u64::MAX, 1 << 40, 1 << 20] {
        let body = Body::with_table(1)
            .uvar(1)
            .change(0)
            .uvar(0)
            .uvar(1)
            .uvar(3)
            .uvar(len);
        assert!(is_count(&refused_within_bound(&body, "bytes"), "bytes"));
    }
    // A pk whose text claims more than is left.
    let body = Body::with_table(1)
        .uvar(1)
        .change(2)
        .uvar(3)
        .uvar(1 << 30)
        .raw(b"abc");
    assert!(is_count(&refused_within_bound(&body, "bytes"), "bytes"));
}

#[test]
fn a_huge_blob_length() {
    let body = Body::with_table(1)
        .uvar(1)
        .change(0)
        .uvar(0)
        .uvar(1)
        .uvar(4)
        .uvar(u64::MAX >> 1);
    assert!(is_count(&refused_within_bound(&body, "bytes"), "bytes"));
}

#[test]
fn a_huge_name_length() {
    // Table name, mode and column name.
    let body = Body::header().uvar(0).uvar(1).uvar(1 << 50).raw(b"t");
    refused_within_bound(&body, "bytes");
    let body = Body::header()
        .uvar(0)
        .uvar(1)
        .str("t")
        .uvar(1 << 50)
        .raw(b"shared");
    refused_within_bound(&body, "bytes");
    let body = Body::header()
        .uvar(0)
        .uvar(1)
        .str("t")
        .str("shared")
        .uvar(1)
        .uvar(u64::MAX);
    refused_within_bound(&body, "bytes");
}

#[test]
fn a_mask_beyond_the_columns() {
    let body = Body::with_table(2).uvar(1).change(1).uvar(0).uvar(u64::MAX);
    refused_within_bound(&body, "column mask");
    // Every column marked, no values behind the mask.
    let body = Body::with_table(63)
        .uvar(1)
        .change(1)
        .uvar(0)
        .uvar(u64::MAX >> 1);
    assert!(is_count(
        &refused_within_bound(&body, "column values"),
        "column values"
    ));
}

#[test]
fn nested_counts_that_each_fit() {
    // Honest-looking counts at every level, so that each is checked only
    // against the bytes left: 60 tables claimed (198 bytes hold 66), each
    // claiming 63 columns, and the bytes run out after 3.
    let mut body = Body::header().uvar(0).uvar(60);
    for _ in 0..3 {
        body = body.str("").str("").uvar(63);
        for _ in 0..63 {
            body = body.str("");
        }
    }
    refused_within_bound(&body, "truncated");
    // The changes' count fits, and each marks 63 columns of NULL; the last
    // change is cut short.
    let mut body = Body::with_table(63).uvar(40);
    for _ in 0..39 {
        body = body.change(1).uvar(0).uvar((1 << 63) - 1).raw(&[0; 63]);
    }
    body = body.change(1).uvar(0).uvar((1 << 63) - 1).raw(&[0; 10]);
    refused_within_bound(&body, "truncated");
}

#[test]
fn a_header_that_claims_a_huge_body() {
    // The header says 1 GiB (the cap); the frame holds 100 bytes.
    let body = Body::header().uvar(0).uvar(0).uvar(0);
    let blob = framed(DEFAULT_MAX_BODY, &body.0);
    let (out, peak) = measured(|| Changeset::decode(&blob, DEFAULT_MAX_BODY));
    assert_eq!(
        out,
        Err(DecodeError::Corrupt(
            "body length does not match the header"
        ))
    );
    assert!(peak <= C, "a lying header cost {peak} bytes");
}

/// A zstd frame with no content that declares a window of 2^`log` bytes.
fn empty_frame(log: u8) -> Vec<u8> {
    let mut blob = MAGIC.to_vec();
    blob.push(FORMAT);
    blob.extend_from_slice(&0u64.to_le_bytes());
    // Magic; descriptor: a checksum, no content size, not single-segment;
    // the window; one last raw block of 0 bytes; the checksum of nothing
    // (the low half of XXH64 of no bytes).
    blob.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0x04, (log - 10) << 3]);
    blob.extend_from_slice(&[0x01, 0x00, 0x00, 0x99, 0xe9, 0xd8, 0x51]);
    blob
}

#[test]
fn a_zstd_frame_that_declares_a_huge_window() {
    // zstd's buffers come from C's malloc, which the count above does not
    // see, and zstd allows a 128 MiB window by default: a frame that
    // declares more than 2 MiB is refused before zstd allocates its window.
    let (out, peak) = measured(|| Changeset::decode(&empty_frame(21), DEFAULT_MAX_BODY));
    assert_eq!(out, Err(DecodeError::Corrupt("truncated")), "a valid frame");
    assert!(peak <= C, "{peak}");
    for log in [22, 27, 30] {
        let out = Changeset::decode(&empty_frame(log), DEFAULT_MAX_BODY);
        assert_eq!(out, Err(DecodeError::Corrupt("zstd stream")), "2^{log}");
        // The summary reads as far as the header says: 10 bytes.
        let mut blob = empty_frame(log);
        blob[6] = 10;
        let out = Changeset::summary(&blob, DEFAULT_MAX_BODY);
        assert_eq!(out, Err(DecodeError::Corrupt("zstd stream")), "2^{log}");
    }
}

#[test]
fn a_well_formed_body_is_charged_against_the_budget() {
    // 63 NULL columns a change: 75 bytes on the wire, ~3 KiB decoded. A
    // body cap of 8 MiB allows 64 MiB decoded (the floor).
    let change = Body::default()
        .change(1)
        .uvar(0)
        .uvar((1 << 63) - 1)
        .raw(&[0; 63])
        .0;
    let n = ((8 << 20) - 1000) / change.len();
    let mut body = Body::with_table(63).uvar(n as u64);
    for _ in 0..n {
        body = body.raw(&change);
    }
    let blob = framed(body.0.len() as u64, &body.0);
    assert!(
        blob.len() < 64 << 10,
        "zstd makes it small: {} bytes",
        blob.len()
    );
    let max_body = 8 << 20;
    let (out, peak) = measured(|| Changeset::decode(&blob, max_body));
    let err = out.expect_err("the budget is spent");
    assert!(matches!(err, DecodeError::DecodedTooLarge { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("decodes to more than 67108864 bytes"),
        "{err}"
    );
    let bound = body.0.len() + decoded_budget(max_body) as usize + C;
    assert!(peak <= bound, "peaked at {peak}, bound {bound}");
    // Under a cap that allows it, it decodes, within K x body.
    let big = 1 << 30;
    let (out, peak) = measured(|| Changeset::decode(&blob, big));
    assert_eq!(out.expect("decodes").changes.len(), n);
    assert!(peak <= K * body.0.len() + C, "peaked at {peak}");
    eprintln!(
        "{} B body of NULLs peaked at {peak} B: {:.1} x",
        body.0.len(),
        peak as f64 / body.0.len() as f64
    );
    assert_eq!(decoded_budget(1), MIN_DECODED_BUDGET);
}

#[test]
fn a_well_formed_body_of_empty_names_stays_within_k() {
    // The densest item for memory: a column with an empty name, one byte on
    // the wire, 56 bytes decoded. 2,000 tables of 63 of them.
    let mut body = Body::header().uvar(0).uvar(2000);
    for _ in 0..2000 {
        body = body.str("").str("").uvar(63).raw(&[0; 63]);
    }
    let body = body.uvar(0);
    let (out, peak) = measured(|| Changeset::decode_body(&body.0, DEFAULT_MAX_BODY));
    assert_eq!(out.expect("decodes").tables.len(), 2000);
    let ratio = peak as f64 / body.0.len() as f64;
    eprintln!(
        "{} B body of empty names peaked at {peak} B: {ratio:.1} x",
        body.0.len()
    );
    assert!(peak <= K * body.0.len(), "{ratio:.1} x");
}

#[test]
fn an_ordinary_changeset_decodes_within_a_few_times_its_body() {
    use lsync_wire::changeset::{Change, Op, TableDesc};
    use lsync_wire::value::Value;
    use std::sync::Arc;
    let uuid = |i: u64| {
        let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        uuid::Uuid::from_u64_pair(x, x.rotate_left(17) ^ i).to_string()
    };
    let origin: Arc<str> = uuid(1).into();
    let (tbl, name, parent, size): (Arc<str>, Arc<str>, Arc<str>, Arc<str>) = (
        "files".into(),
        "name".into(),
        "parent".into(),
        "size".into(),
    );
    let cs = Changeset {
        library_id: uuid(0),
        from: 0,
        to: 50_000,
        fence: None,
        tables: vec![TableDesc {
            name: "files".into(),
            mode: "shared".into(),
            columns: vec!["name".into(), "parent".into(), "size".into()],
        }],
        changes: (0..50_000)
            .map(|i| Change {
                seq: i as i64 + 1,
                hlc: (1 << 40) + i as i64,
                origin: origin.clone(),
                tbl: tbl.clone(),
                pk: Value::Text(uuid(i + 10)),
                op: Op::Insert,
                data: vec![
                    (name.clone(), Value::Text(format!("file {i}.txt"))),
                    (parent.clone(), Value::Text(uuid(i / 100 + 10))),
                    (size.clone(), Value::Integer(i as i64 * 4096)),
                ],
            })
            .collect(),
    };
    let blob = cs.encode().unwrap();
    let body = Changeset::peek(&blob).unwrap().1 as usize;
    let (out, peak) = measured(|| Changeset::decode(&blob, DEFAULT_MAX_BODY));
    assert_eq!(out.unwrap(), cs);
    let ratio = peak as f64 / body as f64;
    eprintln!(
        "an ordinary {body} B body ({} B compressed) peaked at {peak} B: {ratio:.1} x",
        blob.len()
    );
    assert!(peak <= 8 * body, "{ratio:.1} x");
}

/// Bodies found by fuzz/fuzz_targets/changeset_decode.rs, each with why.
const FUZZ_REGRESSIONS: &[(&str, &[u8])] = &[
    // Against the decoder before these bounds: 254 body bytes took 18 KB
    // (72 x).
    (
        "old-decoder-72x-its-body",
        include_bytes!("regressions/old-decoder-72x-its-body.bin"),
    ),
];

#[test]
fn fuzz_regressions() {
    for (name, body) in FUZZ_REGRESSIONS {
        let (out, peak) = measured(|| Changeset::decode_body(body, DEFAULT_MAX_BODY));
        assert!(
            peak <= K * body.len() + 4096,
            "{name}: {peak} bytes: {out:?}"
        );
        let blob = framed(body.len() as u64, body);
        let (framed_out, peak) = measured(|| Changeset::decode(&blob, DEFAULT_MAX_BODY));
        assert!(peak <= (K + 1) * body.len() + C, "{name}: {peak} bytes");
        assert_eq!(format!("{framed_out:?}"), format!("{out:?}"), "{name}");
    }
}
