//! Encoding a changeset change by change, straight from where the values
//! are (an exporter's SQLite rows), with no [`Change`] in between.
//! [`Changeset::encode`] is this encoder fed from a [`Changeset`].

use std::collections::HashMap;

use super::*;
use crate::value::{canonical_uuid, ValueRef};

/// Room kept before the changes for the head (ids, tables, counts), which
/// is only known at the end, so that the body is compressed where it was
/// written rather than copied behind its head.
const HEAD_ROOM: usize = 4096;

/// Which tables a changeset describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Describe {
    /// All the tables the encoder was given.
    All,
    /// Only those with a change, in the order given.
    Used,
}

/// Writes changes one at a time; [`Encoder::finish`] makes the BLOB.
pub struct Encoder {
    from: i64,
    tables: Vec<TableDesc>,
    describe: Describe,
    /// Whether a change of each table was written.
    used: Vec<bool>,
    origins: Vec<[u8; 16]>,
    /// [`HEAD_ROOM`] bytes, then the changes.
    w: Writer,
    /// Where each change's table index is (for [`Describe::Used`], whose
    /// indexes are only known at the end).
    at: Vec<usize>,
    count: u64,
    seq: i64,
    hlc: i64,
}

impl Encoder {
    /// An encoder of the changes after cursor `from`, of the tables
    /// `tables` (a change names its table by its index there).
    pub fn new(from: i64, tables: Vec<TableDesc>, describe: Describe) -> Encoder {
        Encoder {
            from,
            used: vec![false; tables.len()],
            tables,
            describe,
            origins: Vec::new(),
            w: Writer {
                buf: vec![0; HEAD_ROOM],
            },
            at: Vec::new(),
            count: 0,
            seq: from,
            hlc: 0,
        }
    }

    /// Adds device `id` to the changeset's devices; the index is what
    /// [`Encoder::change`] takes. Each device is added once, in the order of
    /// the first change made there.
    pub fn origin(&mut self, id: &str) -> Result<u64, EncodeError> {
        self.origins.push(uuid16(id)?);
        Ok(self.origins.len() as u64 - 1)
    }

    /// Starts a change of table `table` (an index into the tables given to
    /// [`Encoder::new`]) made at device `origin`. What follows it: for a
    /// merge, one [`Encoder::value`] (the row merged into); otherwise one
    /// [`Encoder::mask`] of the columns present, then their values in
    /// column order.
    #[allow(clippy::too_many_arguments)]
    pub fn change(
        &mut self,
        table: usize,
        op: Op,
        seq: i64,
        hlc: i64,
        origin: u64,
        pk: &ValueRef<'_>,
    ) {
        if let Some(u) = self.used.get_mut(table) {
            *u = true;
        }
        if self.describe == Describe::Used {
            self.at.push(self.w.buf.len());
        }
        let w = &mut self.w;
        w.uvar(table as u64);
        w.byte(op.code());
        w.ivar(seq.wrapping_sub(self.seq));
        w.ivar(hlc.wrapping_sub(self.hlc));
        (self.seq, self.hlc) = (seq, hlc);
        w.uvar(origin);
        w.value(pk);
        self.count += 1;
    }

    /// The columns present in the change, as bits of their indexes.
    pub fn mask(&mut self, mask: u64) {
        self.w.uvar(mask);
    }

    pub fn value(&mut self, v: &ValueRef<'_>) {
        self.w.value(v);
    }

    /// The changeset of what was written, as a compressed BLOB.
    pub fn finish(
        mut self,
        library_id: &str,
        to: i64,
        fence: Option<&Fence>,
    ) -> Result<Vec<u8>, EncodeError> {
        self.renumber_tables();
        let described: Vec<&TableDesc> = match self.describe {
            Describe::All => self.tables.iter().collect(),
            Describe::Used => self
                .tables
                .iter()
                .zip(&self.used)
                .filter(|(_, u)| **u)
                .map(|(t, _)| t)
                .collect(),
        };
        let mut head = Writer::default();
        head.raw(&uuid16(library_id)?);
        head.ivar(self.from);
        head.ivar(to);
        match fence {
            None => head.byte(0),
            Some(f) => {
                head.byte(1);
                head.raw(&uuid16(&f.sender)?);
                head.raw(&uuid16(&f.receiver)?);
                head.ivar(f.acked);
            }
        }
        head.uvar(self.origins.len() as u64);
        for o in &self.origins {
            head.raw(o);
        }
        head.uvar(described.len() as u64);
        for t in described {
            head.str(&t.name);
            head.str(&t.mode);
            head.uvar(t.columns.len() as u64);
            for c in &t.columns {
                head.str(c);
            }
        }
        head.uvar(self.count);
        let body: &[u8] = if head.buf.len() <= HEAD_ROOM {
            let start = HEAD_ROOM - head.buf.len();
            self.w.buf[start..HEAD_ROOM].copy_from_slice(&head.buf);
            &self.w.buf[start..]
        } else {
            head.raw(&self.w.buf[HEAD_ROOM..]);
            &head.buf
        };
        compress(body)
    }

    /// Numbers the changes' tables as described: only the used ones, in
    /// order, for [`Describe::Used`].
    fn renumber_tables(&mut self) {
        if self.describe == Describe::All {
            return;
        }
        let mut new = vec![0u64; self.tables.len()];
        let mut n = 0;
        for (i, used) in self.used.iter().enumerate() {
            new[i] = n;
            n += u64::from(*used);
        }
        if new.iter().enumerate().any(|(i, n)| *n != i as u64) {
            self.w.buf = renumber(&self.w.buf, &self.at, &new);
        }
    }
}

/// `buf` with the table index (a varint) at each of `at` replaced by its
/// new number `new[index]`.
fn renumber(buf: &[u8], at: &[usize], new: &[u64]) -> Vec<u8> {
    let mut out = Writer {
        buf: Vec::with_capacity(buf.len()),
    };
    let mut done = 0;
    for &p in at {
        out.raw(&buf[done..p]);
        let (old, len) = read_uvar(&buf[p..]);
        out.uvar(new.get(old as usize).copied().unwrap_or(old));
        done = p + len;
    }
    out.raw(&buf[done..]);
    out.buf
}

/// A varint this encoder wrote, and its length.
fn read_uvar(b: &[u8]) -> (u64, usize) {
    let mut v = 0u64;
    for (i, x) in b.iter().enumerate() {
        v |= u64::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    (v, b.len())
}

/// The BLOB of an encoded body: magic, format, length, one zstd frame.
fn compress(body: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(body.len() / 4 + 16);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let zerr = |e: std::io::Error| EncodeError::Zstd(e.to_string());
    let mut zc = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(zerr)?;
    // The frame checksum makes any corruption of the body an error.
    zc.include_checksum(true).map_err(zerr)?;
    let z = zc.compress(body).map_err(zerr)?;
    out.extend_from_slice(&z);
    Ok(out)
}

impl Changeset {
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        // Checked first, so that a bad id is reported before a bad change.
        uuid16(&self.library_id)?;
        let mut e = Encoder::new(self.from, self.tables.clone(), Describe::All);
        let mut tables: HashMap<&str, (usize, HashMap<&str, u32>)> = HashMap::new();
        for (i, t) in self.tables.iter().enumerate() {
            let cols = t.columns.iter().enumerate();
            let cols = cols.map(|(j, c)| (c.as_str(), j as u32)).collect();
            tables.insert(t.name.as_str(), (i, cols));
        }
        let mut origins: HashMap<&str, u64> = HashMap::new();
        for c in &self.changes {
            let (ti, cols) = tables
                .get(&*c.tbl)
                .ok_or_else(|| EncodeError::UnknownTable(c.tbl.to_string()))?;
            let origin = match origins.get(&*c.origin) {
                Some(o) => *o,
                None => *origins.entry(&c.origin).or_insert(e.origin(&c.origin)?),
            };
            e.change(*ti, c.op, c.seq, c.hlc, origin, &c.pk.as_ref());
            if c.op == Op::Merge {
                e.value(&c.merged_into().unwrap_or(&Value::Null).as_ref());
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
            e.mask(present.iter().fold(0u64, |m, (j, _)| m | (1 << j)));
            for (_, v) in present {
                e.value(&v.as_ref());
            }
        }
        e.finish(&self.library_id, self.to, self.fence.as_ref())
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
    fn value(&mut self, v: &ValueRef<'_>) {
        match v {
            ValueRef::Null => self.byte(0),
            ValueRef::Integer(i) => {
                self.byte(1);
                self.ivar(*i);
            }
            ValueRef::Real(f) => {
                self.byte(2);
                self.raw(&f.to_le_bytes());
            }
            ValueRef::Text(s) => match canonical_uuid(s) {
                Some(u) => {
                    self.byte(5);
                    self.raw(&u);
                }
                None => {
                    self.byte(3);
                    self.str(s);
                }
            },
            ValueRef::Blob(b) => {
                self.byte(4);
                self.uvar(b.len() as u64);
                self.raw(b);
            }
            ValueRef::Uuid(u) => {
                self.byte(5);
                self.raw(u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What `canonical_uuid` must say: the uuid crate's parse, if its
    /// lowercase hyphenated form is the text itself.
    fn by_the_uuid_crate(s: &str) -> Option<[u8; 16]> {
        let u = uuid::Uuid::parse_str(s).ok()?;
        let mut buf = [0u8; 36];
        (u.hyphenated().encode_lower(&mut buf) == s).then(|| *u.as_bytes())
    }

    #[test]
    fn canonical_uuid_examples() {
        for s in [
            "01a20142-c196-70dc-8b46-cc82023ee619",
            "01A20142-c196-70dc-8b46-cc82023ee619",
            "01a20142c196-70dc-8b46-cc82023ee6190",
            "{1a20142-c196-70dc-8b46-cc82023ee61}",
            "01a20142-c196-70dc-8b46-cc82023ee61g",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "",
        ] {
            assert_eq!(canonical_uuid(s), by_the_uuid_crate(s), "{s}");
        }
    }

    #[test]
    fn used_tables_are_renumbered() {
        let table = |name: &str| TableDesc {
            name: name.into(),
            mode: "shared".into(),
            columns: vec!["a".into()],
        };
        let dev = "01a20142-c196-70dc-8b46-cc82023ee619";
        let lib = "01a20142-c196-70dc-8b46-cc83df4c5b94";
        // 200 tables: the last one's index takes two bytes, its new one one.
        let tables: Vec<TableDesc> = (0..200).map(|i| table(&format!("t{i}"))).collect();
        let mut e = Encoder::new(0, tables.clone(), Describe::Used);
        let o = e.origin(dev).unwrap();
        for (seq, t) in [(1, 199), (2, 3), (3, 199)] {
            e.change(t, Op::Insert, seq, 7, o, &ValueRef::Integer(seq));
            e.mask(1);
            e.value(&ValueRef::Text("x".into()));
        }
        let cs = Changeset::decode(&e.finish(lib, 3, None).unwrap(), DEFAULT_MAX_BODY).unwrap();
        let names: Vec<&str> = cs.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["t3", "t199"]);
        let tbls: Vec<&str> = cs.changes.iter().map(|c| &*c.tbl).collect();
        assert_eq!(tbls, ["t199", "t3", "t199"]);
    }

    proptest! {
        #[test]
        fn canonical_uuid_agrees_with_the_uuid_crate(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"0123456789abcdefABCDEF-g{}".to_vec()), 36)
        ) {
            let s = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(canonical_uuid(&s), by_the_uuid_crate(&s));
        }

        #[test]
        fn canonical_uuid_of_real_uuids(b in any::<[u8; 16]>()) {
            let s = uuid::Uuid::from_bytes(b).hyphenated().to_string();
            prop_assert_eq!(canonical_uuid(&s), Some(b));
            prop_assert_eq!(ValueRef::Text(s.as_str().into()).compact().to_owned(), Value::Text(s.clone()));
            prop_assert_eq!(canonical_uuid(&s.to_uppercase()), by_the_uuid_crate(&s.to_uppercase()));
        }
    }
}
