//! The changeset: one self-describing, versioned, zstd-compressed BLOB.
//!
//! Layout: `b"LSYNC"`, a format byte, the uncompressed body length (u64 LE),
//! then one zstd frame holding the body. The body names its tables and
//! columns and interns device ids, then lists changes row by row with
//! delta-coded cursors and HLCs; canonical UUID text travels as 16 bytes.
//! Decoding checks every length and caps the decompressed size, so a corrupt
//! or hostile blob is an error, never a crash or a memory blow-up: a count
//! is checked against the bytes left, given the smallest encoding of one
//! item, before anything is allocated for it, and what the decoded items
//! take in memory is charged against a budget (see [`decoded_budget`]).

use std::io::Read;
use std::sync::Arc;

use crate::value::Value;

mod read;
mod stream;
mod write;
use read::{zstd_reader, Reader};
pub use stream::{Skim, Stream};
pub use write::{Describe, Encoder};

pub const MAGIC: &[u8; 5] = b"LSYNC";
/// Format 2 added the [`Fence`].
pub const FORMAT: u8 = 2;
/// Default cap on the decompressed body (a zstd bomb stops here).
pub const DEFAULT_MAX_BODY: u64 = 1 << 30;
/// Level 1: faster than 3, and on lsync's bodies (varints, 16-byte ids,
/// names) no larger (the bench's changeset: 29.7 B/row, level 3 30.1).
const ZSTD_LEVEL: i32 = 1;
/// The largest zstd window a reader accepts (2 MiB, what level 3, used
/// before, takes; level 1 takes 512 KiB), so that a frame header cannot make the decoder allocate the
/// 128 MiB window zstd allows by default.
const ZSTD_WINDOW_LOG_MAX: u32 = 21;

/// The decoded changes may take at most this many times the body cap in
/// memory (with a floor of [`MIN_DECODED_BUDGET`]): one byte of body can
/// decode to up to ~48 bytes (a NULL column is one byte on the wire and a
/// 48-byte `(name, Value)` in memory), so without it a well-formed body of
/// NULLs that zstd shrinks to a few KB would take 48 times the body cap.
pub const DECODED_PER_BODY_BYTE: u64 = 4;
/// Changesets that decode to less than this are never refused for memory.
pub const MIN_DECODED_BUDGET: u64 = 64 << 20;

/// The memory the decoded changes of a changeset may take, for a body cap of
/// `max_body`. Decoding holds the body and the decoded changes, so its peak
/// is about `max_body + decoded_budget(max_body)`.
pub fn decoded_budget(max_body: u64) -> u64 {
    max_body
        .saturating_mul(DECODED_PER_BODY_BYTE)
        .max(MIN_DECODED_BUDGET)
}

// The smallest encoding of each counted item, so that a count can be checked
// against the bytes left before anything is allocated for it.
/// A device id: 16 bytes.
const MIN_ORIGIN: usize = 16;
/// A table: empty name, empty mode, no columns (three one-byte varints).
const MIN_TABLE: usize = 3;
/// A column: an empty name.
const MIN_COLUMN: usize = 1;
/// A change: table, op, seq, hlc, origin, a NULL pk, and an empty mask (or
/// a NULL `into`), one byte each.
const MIN_CHANGE: usize = 7;
/// A value: a NULL's tag.
const MIN_VALUE: usize = 1;
/// What an `Arc<str>` allocation takes besides its text: two counters.
const ARC_HEADER: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("not an lsync changeset (bad magic)")]
    BadMagic,
    #[error("changeset format {0} is not supported (this build reads format {FORMAT})")]
    Format(u8),
    #[error("changeset is truncated or corrupt: {0}")]
    Corrupt(&'static str),
    #[error("changeset body of {0} bytes exceeds the limit of {1} bytes")]
    TooLarge(u64, u64),
    /// A count that cannot fit in the bytes left, even if each item took
    /// its smallest encoding.
    #[error(
        "changeset is truncated or corrupt: it claims {claimed} {what}, \
         but the {left} bytes left hold at most {most}"
    )]
    Count {
        what: &'static str,
        claimed: u64,
        left: usize,
        most: usize,
    },
    #[error(
        "changeset body of {body} bytes decodes to more than {budget} bytes in memory, \
         the limit for a body limit of {max_body} bytes"
    )]
    DecodedTooLarge {
        body: u64,
        budget: u64,
        max_body: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    /// Rows that clashed on a UNIQUE key of a shared table became one: the
    /// row `pk` is an alias of the row in [`Change::merged_into`].
    Merge,
}

/// The name under which a merge carries the row it merges into.
pub const MERGE_INTO: &str = "into";

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Merge => "merge",
        }
    }
    /// The op's code: on the wire, and in the extension's clock and triggers.
    pub const fn code(self) -> u8 {
        match self {
            Op::Insert => 0,
            Op::Update => 1,
            Op::Delete => 2,
            Op::Merge => 3,
        }
    }
    pub const fn from_code(c: u8) -> Option<Op> {
        match c {
            0 => Some(Op::Insert),
            1 => Some(Op::Update),
            2 => Some(Op::Delete),
            3 => Some(Op::Merge),
            _ => None,
        }
    }
}

/// One change: a row's state (or some of its columns), or a tombstone.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub seq: i64,
    pub hlc: i64,
    /// Device UUID (text) where the change was made.
    pub origin: Arc<str>,
    pub tbl: Arc<str>,
    /// The row's global id.
    pub pk: Value,
    pub op: Op,
    /// Column values; FK columns hold the target row's uuid. Names are
    /// shared, so a million changes do not mean millions of name copies.
    pub data: Vec<(Arc<str>, Value)>,
}

impl Change {
    /// What [`Change::size`] counts for all but the values: table, op,
    /// seq, hlc, origin and mask, at their largest.
    pub const HEADER_SIZE: usize = 1 + 1 + 10 + 10 + 5 + 10;

    /// Its bytes in a changeset body, about (never less): for the byte
    /// budget of an export.
    pub fn size(&self) -> usize {
        Change::HEADER_SIZE
            + self.pk.size()
            + self.data.iter().map(|(_, v)| v.size()).sum::<usize>()
    }

    /// The row a merge makes this row an alias of.
    pub fn merged_into(&self) -> Option<&Value> {
        (self.op == Op::Merge)
            .then(|| self.data.iter().find(|(k, _)| &**k == MERGE_INTO))
            .flatten()
            .map(|(_, v)| v)
    }
}

/// A table as the sender knows it, so the receiver can check its schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDesc {
    pub name: String,
    pub mode: String,
    pub columns: Vec<String>,
}

/// What the sender had applied of the receiver's changes when it exported a
/// changeset. A changeset read from the sender's database before it applied
/// the receiver's delete may still carry the deleted row's older state; the
/// fence lets the receiver tell such a stale changeset from a current one
/// after it has pruned that delete's tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The exporting device.
    pub sender: String,
    /// The device the changeset was exported for (`except_device`).
    pub receiver: String,
    /// The receiver's cursor up to which the sender had applied its changes.
    pub acked: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Changeset {
    pub library_id: String,
    /// Cursor range: changes after `from`, up to and including `to`.
    pub from: i64,
    pub to: i64,
    /// Present when the changeset was exported for one receiver.
    pub fence: Option<Fence>,
    pub tables: Vec<TableDesc>,
    pub changes: Vec<Change>,
}

/// Everything in a changeset but its changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub library_id: String,
    pub from: i64,
    pub to: i64,
    pub fence: Option<Fence>,
    pub tables: Vec<TableDesc>,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("'{0}' is not a UUID")]
    NotUuid(String),
    #[error("change for table '{0}', which the changeset does not describe")]
    UnknownTable(String),
    #[error("table '{0}' has no column '{1}'")]
    UnknownColumn(String, String),
    #[error("compression failed: {0}")]
    Zstd(String),
}

fn uuid16(s: &str) -> Result<[u8; 16], EncodeError> {
    uuid::Uuid::parse_str(s)
        .map(|u| *u.as_bytes())
        .map_err(|_| EncodeError::NotUuid(s.to_owned()))
}

/// What [`Changeset::summary`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub from: i64,
    pub to: i64,
    pub changes: u64,
    pub fence: Option<Fence>,
}

impl Changeset {
    /// Reads the header without decompressing: (format, body length).
    pub fn peek(blob: &[u8]) -> Result<(u8, u64), DecodeError> {
        if blob.len() < MAGIC.len() || &blob[..MAGIC.len()] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let format = *blob.get(5).ok_or(DecodeError::Corrupt("header"))?;
        if format != FORMAT {
            return Err(DecodeError::Format(format));
        }
        let len = blob.get(6..14).ok_or(DecodeError::Corrupt("header"))?;
        let mut b = [0u8; 8];
        b.copy_from_slice(len);
        Ok((format, u64::from_le_bytes(b)))
    }

    /// The cursors and the number of changes, decompressing only the head
    /// of the body (the changes are not decoded). Falls back to a full
    /// decode when the head does not fit in the first 64 KiB.
    pub fn summary(blob: &[u8], max_body: u64) -> Result<Summary, DecodeError> {
        const PREFIX: u64 = 64 << 10;
        let (_, len) = Changeset::peek(blob)?;
        let mut head = Vec::with_capacity(len.min(PREFIX) as usize);
        zstd_reader(blob.get(14..).unwrap_or_default())?
            .take(len.min(PREFIX))
            .read_to_end(&mut head)
            .map_err(|_| DecodeError::Corrupt("zstd stream"))?;
        let mut r = Reader::new(&head, u64::MAX);
        let quick = (|| {
            r.uuid()?;
            let (from, to) = (r.ivar()?, r.ivar()?);
            let fence = r.fence()?;
            let origins = r.count("origins", MIN_ORIGIN)?;
            r.take(origins * MIN_ORIGIN)?;
            for _ in 0..r.count("tables", MIN_TABLE)? {
                r.bytes()?;
                r.bytes()?;
                for _ in 0..r.count("columns", MIN_COLUMN)? {
                    r.bytes()?;
                }
            }
            let changes = r.uvar()?;
            Ok(Summary {
                from,
                to,
                changes,
                fence,
            })
        })();
        match quick {
            Ok(s) => Ok(s),
            Err(_) if len > PREFIX => Changeset::decode(blob, max_body).map(|c| Summary {
                from: c.from,
                to: c.to,
                changes: c.changes.len() as u64,
                fence: c.fence,
            }),
            Err(e) => Err(e),
        }
    }

    /// Decodes a changeset BLOB whose body is at most `max_body` bytes and
    /// whose changes take at most [`decoded_budget`]`(max_body)` in memory.
    pub fn decode(blob: &[u8], max_body: u64) -> Result<Changeset, DecodeError> {
        // The count is the header's claim until the changes are read, so it
        // reserves room up to a modest size only; beyond, the list grows.
        const RESERVE: u64 = 1 << 16;
        let mut s = Stream::open(blob, max_body)?;
        let mut changes = Vec::with_capacity(s.left().min(RESERVE) as usize);
        while let Some(c) = s.next_change()? {
            changes.push(c);
        }
        Ok(Changeset::from_head(s.head().clone(), changes))
    }

    /// The body length that the header of `blob` declares, once the frame
    /// around the body has passed its checks.
    fn framed_len(blob: &[u8], max_body: u64) -> Result<u64, DecodeError> {
        let (_, len) = Changeset::peek(blob)?;
        if len > max_body {
            return Err(DecodeError::TooLarge(len, max_body));
        }
        // The zstd frame must carry its content checksum (descriptor bit 2),
        // so that a flipped bit anywhere is caught rather than applied.
        if blob.get(14..18) != Some(&[0x28, 0xb5, 0x2f, 0xfd][..])
            || blob.get(18).is_none_or(|d| d & 0x04 == 0)
        {
            return Err(DecodeError::Corrupt("zstd frame header"));
        }
        // Exactly one frame and nothing after it: zstd would go on into a
        // second frame, which need not carry a checksum.
        if zstd::zstd_safe::find_frame_compressed_size(&blob[14..]) != Ok(blob.len() - 14) {
            return Err(DecodeError::Corrupt("not exactly one zstd frame"));
        }
        Ok(len)
    }

    pub fn from_head(head: Head, changes: Vec<Change>) -> Changeset {
        Changeset {
            library_id: head.library_id,
            from: head.from,
            to: head.to,
            fence: head.fence,
            tables: head.tables,
            changes,
        }
    }

    /// Everything but the changes.
    pub fn head(&self) -> Head {
        Head {
            library_id: self.library_id.clone(),
            from: self.from,
            to: self.to,
            fence: self.fence.clone(),
            tables: self.tables.clone(),
        }
    }

    /// Decodes an uncompressed body, as [`Changeset::decode`] does after
    /// decompressing it (for tests and fuzzing: no checksum guards it).
    pub fn decode_body(body: &[u8], max_body: u64) -> Result<Changeset, DecodeError> {
        if body.len() as u64 > max_body {
            return Err(DecodeError::TooLarge(body.len() as u64, max_body));
        }
        Reader::new(body, max_body).changeset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Changeset {
        let dev: Arc<str> = Arc::from("01a20142-c196-70dc-8b46-cc82023ee619");
        Changeset {
            library_id: "01a20142-c196-70dc-8b46-cc83df4c5b94".into(),
            from: 10,
            to: 13,
            fence: Some(Fence {
                sender: "01a20142-c196-70dc-8b46-cc82023ee619".into(),
                receiver: "01a20142-c196-70dc-8b46-cc82023ee61a".into(),
                acked: 7,
            }),
            tables: vec![TableDesc {
                name: "tags".into(),
                mode: "shared".into(),
                columns: vec!["name".into(), "color".into()],
            }],
            changes: vec![
                Change {
                    seq: 11,
                    hlc: 1 << 40,
                    origin: dev.clone(),
                    tbl: "tags".into(),
                    pk: Value::Text("01a20142-c1a2-73d9-ad7a-e0debb265376".into()),
                    op: Op::Insert,
                    data: vec![
                        (Arc::from("name"), Value::Text("red".into())),
                        (Arc::from("color"), Value::Blob(vec![1, 2])),
                    ],
                },
                Change {
                    seq: 12,
                    hlc: (1 << 40) - 5,
                    origin: dev,
                    tbl: "tags".into(),
                    pk: Value::Text("NOT-A-UUID".into()),
                    op: Op::Delete,
                    data: vec![],
                },
                Change {
                    seq: 13,
                    hlc: 1 << 40,
                    origin: "01a20142-c196-70dc-8b46-cc82023ee619".into(),
                    tbl: "tags".into(),
                    pk: Value::Text("01a20142-c1a2-73d9-ad7a-e0debb265377".into()),
                    op: Op::Merge,
                    data: vec![(
                        Arc::from(MERGE_INTO),
                        Value::Text("01a20142-c1a2-73d9-ad7a-e0debb265376".into()),
                    )],
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let cs = sample();
        let blob = cs.encode().unwrap();
        assert_eq!(Changeset::decode(&blob, DEFAULT_MAX_BODY).unwrap(), cs);
    }

    #[test]
    fn summary_matches_the_full_decode() {
        let mut cs = sample();
        assert_eq!(
            Changeset::summary(&cs.encode().unwrap(), DEFAULT_MAX_BODY).unwrap(),
            Summary {
                from: 10,
                to: 13,
                changes: 3,
                fence: cs.fence.clone(),
            }
        );
        assert!(cs.fence.is_some(), "the summary must be shown a fence");
        // A body far larger than the prefix that is read.
        let one = cs.changes[0].clone();
        cs.changes = (0..20_000)
            .map(|i| Change {
                seq: 11 + i,
                data: vec![(Arc::from("name"), Value::Text(format!("tag {i:09}")))],
                ..one.clone()
            })
            .collect();
        cs.to = 11 + 20_000;
        let blob = cs.encode().unwrap();
        let s = Changeset::summary(&blob, DEFAULT_MAX_BODY).unwrap();
        assert_eq!((s.from, s.to, s.changes), (10, 20_011, 20_000));
        assert_eq!(
            Changeset::summary(b"nope", 1 << 20),
            Err(DecodeError::BadMagic)
        );
    }

    #[test]
    fn rejects_bad_input() {
        let blob = sample().encode().unwrap();
        assert_eq!(
            Changeset::decode(b"nope", 1 << 20),
            Err(DecodeError::BadMagic)
        );
        let mut v2 = blob.clone();
        v2[5] = 9;
        assert_eq!(Changeset::decode(&v2, 1 << 20), Err(DecodeError::Format(9)));
        assert!(Changeset::decode(&blob[..blob.len() - 3], 1 << 20).is_err());
        assert!(matches!(
            Changeset::decode(&blob, 8),
            Err(DecodeError::TooLarge(_, 8))
        ));
    }

    #[test]
    fn zstd_bomb_is_capped_even_with_a_lying_header() {
        let body = vec![0u8; 50 << 20];
        let mut blob = MAGIC.to_vec();
        blob.push(FORMAT);
        blob.extend_from_slice(&16u64.to_le_bytes());
        let mut zc = zstd::bulk::Compressor::new(3).unwrap();
        zc.include_checksum(true).unwrap();
        blob.extend_from_slice(&zc.compress(&body).unwrap());
        assert!(Changeset::decode(&blob, 1 << 20).is_err());
    }

    #[test]
    fn a_body_larger_than_the_zstd_window_round_trips() {
        // The reader caps the window at 2^ZSTD_WINDOW_LOG_MAX: what the
        // writer's level uses for a body larger than that.
        let mut cs = sample();
        let one = cs.changes[0].clone();
        let mut x = 1u64;
        cs.changes = (0..200_000)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                Change {
                    seq: 11 + i,
                    data: vec![(Arc::from("color"), Value::Blob(x.to_le_bytes().to_vec()))],
                    ..one.clone()
                }
            })
            .collect();
        let blob = cs.encode().unwrap();
        assert!(Changeset::peek(&blob).unwrap().1 > 1 << (ZSTD_WINDOW_LOG_MAX + 1));
        assert_eq!(Changeset::decode(&blob, DEFAULT_MAX_BODY).unwrap(), cs);
    }

    #[test]
    fn decode_body_is_decode_without_the_frame() {
        let cs = sample();
        let blob = cs.encode().unwrap();
        let mut body = Vec::new();
        zstd::stream::copy_decode(&blob[14..], &mut body).unwrap();
        assert_eq!(Changeset::decode_body(&body, DEFAULT_MAX_BODY).unwrap(), cs);
        assert_eq!(
            Changeset::decode_body(&body, 8),
            Err(DecodeError::TooLarge(body.len() as u64, 8))
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Changeset::decode(&bytes, 1 << 20);
            let _ = Changeset::decode_body(&bytes, 1 << 20);
        }

        #[test]
        fn corrupting_a_valid_blob_never_panics(pos in 0usize..200, byte in any::<u8>()) {
            let mut blob = sample().encode().unwrap();
            let p = pos % blob.len();
            blob[p] = byte;
            let _ = Changeset::decode(&blob, 1 << 20);
        }
    }
}
