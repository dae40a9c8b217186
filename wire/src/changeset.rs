//! The changeset: one self-describing, versioned, zstd-compressed BLOB.
//!
//! Layout: `b"LSYNC"`, a format byte, the uncompressed body length (u64 LE),
//! then one zstd frame holding the body. The body names its tables and
//! columns and interns device ids, then lists changes row by row with
//! delta-coded cursors and HLCs; canonical UUID text travels as 16 bytes.
//! Decoding checks every length and caps the decompressed size, so a corrupt
//! or hostile blob is an error, never a crash or a memory blow-up.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use crate::value::Value;

pub const MAGIC: &[u8; 5] = b"LSYNC";
/// Format 2 added the [`Fence`].
pub const FORMAT: u8 = 2;
/// Default cap on the decompressed body (a zstd bomb stops here).
pub const DEFAULT_MAX_BODY: u64 = 1 << 30;
const ZSTD_LEVEL: i32 = 3;

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
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::default();
        w.raw(&uuid16(&self.library_id)?);
        w.ivar(self.from);
        w.ivar(self.to);
        match &self.fence {
            None => w.byte(0),
            Some(f) => {
                w.byte(1);
                w.raw(&uuid16(&f.sender)?);
                w.raw(&uuid16(&f.receiver)?);
                w.ivar(f.acked);
            }
        }
        let mut origins: HashMap<&str, u64> = HashMap::new();
        for c in &self.changes {
            let n = origins.len() as u64;
            origins.entry(&c.origin).or_insert(n);
        }
        let mut by_idx: Vec<(&str, u64)> = origins.iter().map(|(k, v)| (*k, *v)).collect();
        by_idx.sort_by_key(|(_, v)| *v);
        w.uvar(by_idx.len() as u64);
        for (o, _) in &by_idx {
            w.raw(&uuid16(o)?);
        }
        w.uvar(self.tables.len() as u64);
        let mut tables: HashMap<&str, (u64, HashMap<&str, u32>)> = HashMap::new();
        for (i, t) in self.tables.iter().enumerate() {
            w.str(&t.name);
            w.str(&t.mode);
            w.uvar(t.columns.len() as u64);
            let mut cols = HashMap::new();
            for (j, c) in t.columns.iter().enumerate() {
                w.str(c);
                cols.insert(c.as_str(), j as u32);
            }
            tables.insert(t.name.as_str(), (i as u64, cols));
        }
        w.uvar(self.changes.len() as u64);
        let (mut seq, mut hlc) = (self.from, 0i64);
        for c in &self.changes {
            let (ti, cols) = tables
                .get(&*c.tbl)
                .ok_or_else(|| EncodeError::UnknownTable(c.tbl.to_string()))?;
            w.uvar(*ti);
            w.byte(c.op.code());
            w.ivar(c.seq.wrapping_sub(seq));
            w.ivar(c.hlc.wrapping_sub(hlc));
            (seq, hlc) = (c.seq, c.hlc);
            w.uvar(origins[&*c.origin]);
            w.value(&c.pk);
            if c.op == Op::Merge {
                w.value(c.merged_into().unwrap_or(&Value::Null));
                continue;
            }
            let mut present: Vec<(u32, &Value)> = Vec::with_capacity(c.data.len());
            for (k, v) in &c.data {
                let j = cols
                    .get(&**k)
                    .ok_or_else(|| EncodeError::UnknownColumn(c.tbl.to_string(), k.to_string()))?;
                present.push((*j, v));
            }
            present.sort_by_key(|(j, _)| *j);
            w.uvar(present.iter().fold(0u64, |m, (j, _)| m | (1 << j)));
            for (_, v) in present {
                w.value(v);
            }
        }
        let body = w.buf;
        let mut out = Vec::with_capacity(body.len() / 4 + 16);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        let zerr = |e: std::io::Error| EncodeError::Zstd(e.to_string());
        let mut zc = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(zerr)?;
        // The frame checksum makes any corruption of the body an error.
        zc.include_checksum(true).map_err(zerr)?;
        let z = zc.compress(&body).map_err(zerr)?;
        out.extend_from_slice(&z);
        Ok(out)
    }

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
        zstd::stream::read::Decoder::new(blob.get(14..).unwrap_or_default())
            .map_err(|_| DecodeError::Corrupt("zstd"))?
            .take(len.min(PREFIX))
            .read_to_end(&mut head)
            .map_err(|_| DecodeError::Corrupt("zstd stream"))?;
        let mut r = Reader { buf: &head, pos: 0 };
        let quick = (|| {
            r.uuid()?;
            let (from, to) = (r.ivar()?, r.ivar()?);
            let fence = r.fence()?;
            let origins = r.count()?;
            r.take(
                origins
                    .checked_mul(16)
                    .ok_or(DecodeError::Corrupt("count"))?,
            )?;
            for _ in 0..r.count()? {
                r.bytes()?;
                r.bytes()?;
                for _ in 0..r.count()? {
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

    pub fn decode(blob: &[u8], max_body: u64) -> Result<Changeset, DecodeError> {
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
        let mut body = Vec::with_capacity(len as usize);
        let dec = zstd::stream::read::Decoder::new(&blob[14..])
            .map_err(|_| DecodeError::Corrupt("zstd"))?;
        // Read one byte past the declared length to catch a lying header.
        dec.take(len + 1)
            .read_to_end(&mut body)
            .map_err(|_| DecodeError::Corrupt("zstd stream"))?;
        if body.len() as u64 != len {
            return Err(DecodeError::Corrupt(
                "body length does not match the header",
            ));
        }
        Reader { buf: &body, pos: 0 }.changeset()
    }
}

#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn byte(&mut self, b: u8) {
        self.buf.push(b);
    }
    fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    fn uvar(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    fn ivar(&mut self, v: i64) {
        self.uvar(((v << 1) ^ (v >> 63)) as u64);
    }
    fn str(&mut self, s: &str) {
        self.uvar(s.len() as u64);
        self.raw(s.as_bytes());
    }
    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.byte(0),
            Value::Integer(i) => {
                self.byte(1);
                self.ivar(*i);
            }
            Value::Real(f) => {
                self.byte(2);
                self.raw(&f.to_le_bytes());
            }
            Value::Text(s) => match canonical_uuid(s) {
                Some(u) => {
                    self.byte(5);
                    self.raw(&u);
                }
                None => {
                    self.byte(3);
                    self.str(s);
                }
            },
            Value::Blob(b) => {
                self.byte(4);
                self.uvar(b.len() as u64);
                self.raw(b);
            }
        }
    }
}

/// The 16 bytes of `s` when it is a UUID in canonical lowercase form, so
/// that decoding gives back exactly the same text.
fn canonical_uuid(s: &str) -> Option<[u8; 16]> {
    if s.len() != 36 {
        return None;
    }
    let u = uuid::Uuid::parse_str(s).ok()?;
    let mut buf = [0u8; 36];
    (u.hyphenated().encode_lower(&mut buf) == s).then(|| *u.as_bytes())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, DecodeError>;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError::Corrupt("length"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::Corrupt("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn uvar(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError::Corrupt("varint"))
    }
    fn ivar(&mut self) -> R<i64> {
        let u = self.uvar()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    /// A count of items that each take at least one byte: bounded by what is left.
    fn count(&mut self) -> R<usize> {
        let n = self.uvar()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(DecodeError::Corrupt("count"));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.count()?;
        self.take(n)
    }
    fn str(&mut self) -> R<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::Corrupt("utf-8"))
    }
    fn uuid(&mut self) -> R<String> {
        let b = self.take(16)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(uuid::Uuid::from_bytes(a).hyphenated().to_string())
    }
    fn value(&mut self) -> R<Value> {
        Ok(match self.byte()? {
            0 => Value::Null,
            1 => Value::Integer(self.ivar()?),
            2 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(self.take(8)?);
                Value::Real(f64::from_le_bytes(a))
            }
            3 => Value::Text(self.str()?),
            4 => Value::Blob(self.bytes()?.to_vec()),
            5 => Value::Text(self.uuid()?),
            _ => return Err(DecodeError::Corrupt("value tag")),
        })
    }
    fn fence(&mut self) -> R<Option<Fence>> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(Fence {
                sender: self.uuid()?,
                receiver: self.uuid()?,
                acked: self.ivar()?,
            })),
            _ => Err(DecodeError::Corrupt("fence")),
        }
    }

    /// A change's column mask and the values it marks.
    fn columns(&mut self, tcols: &[Arc<str>]) -> R<Vec<(Arc<str>, Value)>> {
        let mask = self.uvar()?;
        if mask >> tcols.len() != 0 {
            return Err(DecodeError::Corrupt("column mask"));
        }
        let mut data = Vec::with_capacity(mask.count_ones() as usize);
        for (j, c) in tcols.iter().enumerate() {
            if mask & (1 << j) != 0 {
                data.push((c.clone(), self.value()?));
            }
        }
        Ok(data)
    }

    fn changeset(mut self) -> R<Changeset> {
        let library_id = self.uuid()?;
        let from = self.ivar()?;
        let to = self.ivar()?;
        let fence = self.fence()?;
        let n = self.count()?;
        let origins = (0..n)
            .map(|_| self.uuid().map(Arc::<str>::from))
            .collect::<R<Vec<_>>>()?;
        let n = self.count()?;
        let mut tables = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.str()?;
            let mode = self.str()?;
            let nc = self.count()?;
            if nc > 63 {
                return Err(DecodeError::Corrupt("too many columns"));
            }
            let columns = (0..nc).map(|_| self.str()).collect::<R<Vec<_>>>()?;
            tables.push(TableDesc {
                name,
                mode,
                columns,
            });
        }
        let names: Vec<(Arc<str>, Vec<Arc<str>>)> = tables
            .iter()
            .map(|t| {
                let cols = t.columns.iter().map(|c| Arc::from(c.as_str())).collect();
                (Arc::from(t.name.as_str()), cols)
            })
            .collect();
        let n = self.count()?;
        let mut changes = Vec::with_capacity(n);
        let (mut seq, mut hlc) = (from, 0i64);
        for _ in 0..n {
            let (tname, tcols) = names
                .get(self.uvar()? as usize)
                .ok_or(DecodeError::Corrupt("table index"))?;
            let op = Op::from_code(self.byte()?).ok_or(DecodeError::Corrupt("op"))?;
            seq = seq.wrapping_add(self.ivar()?);
            hlc = hlc.wrapping_add(self.ivar()?);
            let origin = origins
                .get(self.uvar()? as usize)
                .ok_or(DecodeError::Corrupt("origin index"))?
                .clone();
            let pk = self.value()?;
            let data = if op == Op::Merge {
                vec![(Arc::from(MERGE_INTO), self.value()?)]
            } else {
                self.columns(tcols)?
            };
            changes.push(Change {
                seq,
                hlc,
                origin,
                tbl: tname.clone(),
                pk,
                op,
                data,
            });
        }
        if self.pos != self.buf.len() {
            return Err(DecodeError::Corrupt("trailing bytes"));
        }
        Ok(Changeset {
            library_id,
            from,
            to,
            fence,
            tables,
            changes,
        })
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

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Changeset::decode(&bytes, 1 << 20);
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
