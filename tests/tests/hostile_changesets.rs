//! Issue 13, hostile changesets, their bytes: one test per class of a blob
//! that is not a well-formed changeset, each named after its class
//! (catalog: docs/hostile.md). A class is one mutation of a valid
//! changeset that a real peer made, or one field of a body encoded here by
//! hand (which applies as it is: `a_hand_encoded_changeset_applies`). Each
//! test checks, through `Hostile::refused`, a clear error, that the
//! receiver's tables and every one of lsync's tables are unchanged, and
//! that the real peer's changes still apply afterwards. Well-formed
//! changesets that lie: `hostile_changes.rs`.

use lsync_tests::*;
use lsync_wire::changeset::{Op, FORMAT, MAGIC};
use rusqlite::Connection;

// ------------------------------------------------- the hand-encoded body

fn uvar(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

fn ivar(v: i64) -> Vec<u8> {
    uvar(((v << 1) ^ (v >> 63)) as u64)
}

/// A length-prefixed string of any bytes.
fn str_of(s: &[u8]) -> Vec<u8> {
    [uvar(s.len() as u64), s.to_vec()].concat()
}

/// A TEXT value.
fn text(s: &[u8]) -> Vec<u8> {
    [vec![3], str_of(s)].concat()
}

fn uuid_bytes(s: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(s).unwrap().as_bytes().to_vec()
}

/// A changeset body, field by field (docs/protocol.md): one origin (A), one
/// table (`notes`, shared, `body` and `n`) and one insert of the row
/// `H-note`. A class replaces one field.
struct Parts {
    library: Vec<u8>,
    from_to: Vec<u8>,
    fence: Vec<u8>,
    origins: Vec<u8>,
    n_tables: Vec<u8>,
    name: Vec<u8>,
    mode: Vec<u8>,
    cols: Vec<u8>,
    n_changes: Vec<u8>,
    tbl: Vec<u8>,
    op: Vec<u8>,
    seq: Vec<u8>,
    hlc: Vec<u8>,
    origin: Vec<u8>,
    pk: Vec<u8>,
    mask: Vec<u8>,
    values: Vec<u8>,
    trailer: Vec<u8>,
}

impl Parts {
    fn new(receiver: &Connection, origin: &str) -> Parts {
        Parts {
            library: uuid_bytes(&library_id(receiver)),
            from_to: [ivar(0), ivar(1)].concat(),
            fence: vec![0],
            origins: [uvar(1), uuid_bytes(origin)].concat(),
            n_tables: uvar(1),
            name: str_of(b"notes"),
            mode: str_of(b"shared"),
            cols: [uvar(2), str_of(b"body"), str_of(b"n")].concat(),
            n_changes: uvar(1),
            tbl: uvar(0),
            op: vec![Op::Insert.code()],
            seq: ivar(1),
            hlc: ivar(lsync_wire::hlc::wall()),
            origin: uvar(0),
            pk: text(b"H-note"),
            mask: uvar(0b11),
            values: [text(b"by hand"), vec![1], ivar(7)].concat(),
            trailer: Vec::new(),
        }
    }

    fn body(&self) -> Vec<u8> {
        let parts: [&[u8]; 18] = [
            &self.library,
            &self.from_to,
            &self.fence,
            &self.origins,
            &self.n_tables,
            &self.name,
            &self.mode,
            &self.cols,
            &self.n_changes,
            &self.tbl,
            &self.op,
            &self.seq,
            &self.hlc,
            &self.origin,
            &self.pk,
            &self.mask,
            &self.values,
            &self.trailer,
        ];
        parts.concat()
    }
}

/// lsync's header for a body of `len` bytes.
fn header(len: u64) -> Vec<u8> {
    [MAGIC.as_slice(), &[FORMAT], &len.to_le_bytes()].concat()
}

/// A zstd frame of `body` with its content checksum, as lsync writes it.
fn zstd_checked(body: &[u8]) -> Vec<u8> {
    let mut z = zstd::bulk::Compressor::new(3).unwrap();
    z.include_checksum(true).unwrap();
    z.compress(body).unwrap()
}

/// The hand-encoded body, edited by `edit`, framed as lsync frames it.
fn hand(s: &Hostile, edit: impl FnOnce(&mut Parts)) -> Vec<u8> {
    let mut p = Parts::new(&s.b, &device_id(&s.a));
    edit(&mut p);
    lsync_framed(&p.body())
}

fn lsync_framed(body: &[u8]) -> Vec<u8> {
    [header(body.len() as u64), zstd_checked(body)].concat()
}

/// A's changeset, its body decompressed and handed to `edit`, framed again.
fn rebodied(blob: &[u8], edit: impl FnOnce(&mut Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut body = zstd::stream::decode_all(&blob[14..]).unwrap();
    edit(&mut body)
}

#[test]
fn a_hand_encoded_changeset_applies() {
    // The base of the hand-encoded classes is valid: each class breaks it
    // in one field only.
    let s = Hostile::scene();
    let report = s.applied(&hand(&s, |_| {}));
    assert_eq!(n(&report, "applied"), 1, "{report}");
    assert_eq!(
        query_rows(&s.b, "SELECT body, n FROM notes WHERE uuid = 'H-note'"),
        [["by hand", "7"]]
    );
}

// ------------------------------------------------ the header and the frame

#[test]
fn a_body_longer_than_its_header_claims() {
    let s = Hostile::scene();
    let blob = rebodied(&s.valid(), |body| {
        [header(body.len() as u64 - 1), zstd_checked(body)].concat()
    });
    s.refused(&blob, "body length does not match the header");
}

#[test]
fn a_body_shorter_than_its_header_claims() {
    let s = Hostile::scene();
    let blob = rebodied(&s.valid(), |body| {
        [header(body.len() as u64 + 1), zstd_checked(body)].concat()
    });
    s.refused(&blob, "body length does not match the header");
}

#[test]
fn a_zstd_frame_without_its_checksum() {
    // Without the checksum a flipped bit in the compressed data could
    // decode to other data: such a frame is refused however valid.
    let s = Hostile::scene();
    let blob = rebodied(&s.valid(), |body| {
        [
            header(body.len() as u64),
            zstd::bulk::compress(body, 3).unwrap(),
        ]
        .concat()
    });
    s.refused(&blob, "zstd frame header");
}

#[test]
fn a_skippable_zstd_frame_before_the_body() {
    // zstd skips "skippable" frames: hidden bytes that no check covers.
    let s = Hostile::scene();
    let blob = rebodied(&s.valid(), |body| {
        let skippable = [
            &0x184D_2A50u32.to_le_bytes()[..],
            &4u32.to_le_bytes(),
            b"evil",
        ]
        .concat();
        [header(body.len() as u64), skippable, zstd_checked(body)].concat()
    });
    s.refused(&blob, "zstd frame header");
}

#[test]
fn trailing_bytes_after_the_zstd_frame() {
    let s = Hostile::scene();
    let mut blob = s.valid();
    blob.extend_from_slice(b"trailing garbage");
    s.refused(&blob, "not exactly one zstd frame");
}

#[test]
fn a_body_split_over_two_zstd_frames_the_second_unchecked() {
    // The first frame passes the checksum rule; a second one without a
    // checksum carries bytes no check covers. It used to be applied: a
    // flipped bit there could be applied as other data.
    let s = Hostile::scene();
    let blob = rebodied(&s.valid(), |body| {
        let half = body.len() / 2;
        [
            header(body.len() as u64),
            zstd_checked(&body[..half]),
            zstd::bulk::compress(&body[half..], 3).unwrap(),
        ]
        .concat()
    });
    s.refused(&blob, "not exactly one zstd frame");
}

#[test]
fn bit_flips_at_seeded_offsets() {
    // Seeded single-bit flips over the whole blob, header included (every
    // byte of the compressed part: changesets.rs): each one is refused.
    let s = Hostile::scene();
    let valid = s.valid();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (pos, bit) = ((x % valid.len() as u64) as usize, (x >> 32) % 8);
        let mut bad = valid.clone();
        bad[pos] ^= 1 << bit;
        if pos == 5 || (6..14).contains(&pos) || pos < 5 {
            s.refused(&bad, "");
        } else {
            s.refused(&bad, "changeset");
        }
    }
}

// ---------------------------------------------------- the body's encoding

#[test]
fn an_unknown_op_code() {
    let s = Hostile::scene();
    s.refused(&hand(&s, |p| p.op = vec![9]), "corrupt: op");
}

#[test]
fn a_table_index_out_of_range() {
    let s = Hostile::scene();
    s.refused(&hand(&s, |p| p.tbl = uvar(1)), "table index");
}

#[test]
fn an_origin_index_out_of_range() {
    let s = Hostile::scene();
    s.refused(&hand(&s, |p| p.origin = uvar(1)), "origin index");
}

#[test]
fn a_table_of_more_than_63_columns() {
    // A column mask is 64 bits: a 64th column could never be named.
    let s = Hostile::scene();
    let blob = hand(&s, |p| {
        let names: Vec<u8> = (0..64)
            .flat_map(|i| str_of(format!("c{i}").as_bytes()))
            .collect();
        p.cols = [uvar(64), names].concat();
    });
    s.refused(&blob, "too many columns");
}

#[test]
fn an_unknown_value_tag() {
    let s = Hostile::scene();
    s.refused(&hand(&s, |p| p.values = vec![6, 0]), "value tag");
}

#[test]
fn invalid_utf8_in_a_text_value() {
    let s = Hostile::scene();
    let blob = hand(&s, |p| {
        p.values = [text(&[0xff, 0xfe, b'x']), vec![0]].concat()
    });
    s.refused(&blob, "utf-8");
}

#[test]
fn invalid_utf8_in_a_table_name() {
    let s = Hostile::scene();
    s.refused(&hand(&s, |p| p.name = str_of(&[b'n', 0xc3, b'x'])), "utf-8");
}

#[test]
fn a_varint_longer_than_ten_bytes() {
    let s = Hostile::scene();
    s.refused(
        &hand(&s, |p| p.seq = [vec![0x80; 10], vec![1]].concat()),
        "varint",
    );
}

#[test]
fn an_unknown_fence_tag() {
    let s = Hostile::scene();
    s.refused(&hand(&s, |p| p.fence = vec![2]), "corrupt: fence");
}

#[test]
fn trailing_bytes_inside_the_body() {
    let s = Hostile::scene();
    s.refused(&hand(&s, |p| p.trailer = vec![0]), "trailing bytes");
}

#[test]
fn a_change_count_larger_than_the_changes() {
    // Within what the bytes left could hold, so the count check passes:
    // the missing second change is found truncated.
    let s = Hostile::scene();
    s.refused(&hand(&s, |p| p.n_changes = uvar(2)), "truncated");
}
