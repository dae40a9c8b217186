//! Decoding a changeset: the zstd body, grown only by what the stream
//! yields, and the reader whose every allocation is checked against the
//! bytes left and the decoded-memory budget.

use super::*;

pub(super) fn zstd_reader(
    z: &[u8],
) -> R<zstd::stream::read::Decoder<'static, std::io::BufReader<&[u8]>>> {
    let mut dec = zstd::stream::read::Decoder::new(z).map_err(|_| DecodeError::Corrupt("zstd"))?;
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|_| DecodeError::Corrupt("zstd"))?;
    Ok(dec)
}

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pub(super) pos: usize,
    /// What the decoded items take in memory so far, and the most they may
    /// for a body cap of `max_body`.
    pub(super) mem: u64,
    budget: u64,
    max_body: u64,
    /// The length of the whole body, which `buf` may be a window of.
    body: u64,
}

pub(super) type R<T> = Result<T, DecodeError>;

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], max_body: u64) -> Self {
        Reader::window(buf, buf.len() as u64, 0, max_body)
    }
    /// A reader of `buf`, a window of a body of `body` bytes, whose decoded
    /// items so far took `mem`.
    pub(super) fn window(buf: &'a [u8], body: u64, mem: u64, max_body: u64) -> Self {
        Reader {
            buf,
            pos: 0,
            mem,
            budget: decoded_budget(max_body),
            max_body,
            body,
        }
    }
    pub(super) fn left(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// Counts `bytes` of memory against the budget, before they are allocated.
    pub(super) fn charge(&mut self, bytes: usize) -> R<()> {
        self.mem = self.mem.saturating_add(bytes as u64);
        if self.mem > self.budget {
            return Err(DecodeError::DecodedTooLarge {
                body: self.body,
                budget: self.budget,
                max_body: self.max_body,
            });
        }
        Ok(())
    }
    pub(super) fn take(&mut self, n: usize) -> R<&'a [u8]> {
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
    pub(super) fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn uvar(&mut self) -> R<u64> {
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
    pub(super) fn ivar(&mut self) -> R<i64> {
        let u = self.uvar()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
    /// A count of `what`, each at least `min_size` bytes: no more than the
    /// bytes left can hold.
    pub(super) fn count(&mut self, what: &'static str, min_size: usize) -> R<usize> {
        let n = self.uvar()?;
        self.fits(what, n, min_size)
    }
    pub(super) fn fits(&self, what: &'static str, n: u64, min_size: usize) -> R<usize> {
        let (left, most) = (self.left(), self.left() / min_size);
        if n > most as u64 {
            return Err(DecodeError::Count {
                what,
                claimed: n,
                left,
                most,
            });
        }
        Ok(n as usize)
    }
    pub(super) fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.count("bytes", 1)?;
        self.take(n)
    }
    pub(super) fn str(&mut self) -> R<String> {
        let b = self.bytes()?;
        self.charge(b.len())?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Corrupt("utf-8"))
    }
    /// An interned name: one allocation holding its counters and its text.
    pub(super) fn arc(&mut self, s: &str) -> R<Arc<str>> {
        self.charge(ARC_HEADER + s.len())?;
        Ok(Arc::from(s))
    }
    /// 16 bytes as canonical UUID text, written into `text`.
    pub(super) fn uuid_in<'t>(&mut self, text: &'t mut [u8; 36]) -> R<&'t str> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(uuid::Uuid::from_bytes(a).hyphenated().encode_lower(text))
    }
    /// Canonical UUID text; the header's few ids are not charged.
    pub(super) fn uuid(&mut self) -> R<String> {
        Ok(self.uuid_in(&mut [0; 36])?.to_owned())
    }
    /// A value, checked, with its heap bytes charged (its inline size is
    /// the caller's); built only when `KEEP`, so that a pass that only
    /// checks allocates nothing.
    fn any_value<const KEEP: bool>(&mut self) -> R<Option<Value>> {
        Ok(match self.byte()? {
            0 => KEEP.then_some(Value::Null),
            1 => {
                let i = self.ivar()?;
                KEEP.then_some(Value::Integer(i))
            }
            2 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(self.take(8)?);
                KEEP.then_some(Value::Real(f64::from_le_bytes(a)))
            }
            3 => {
                let b = self.bytes()?;
                self.charge(b.len())?;
                let s = std::str::from_utf8(b).map_err(|_| DecodeError::Corrupt("utf-8"))?;
                KEEP.then(|| Value::Text(s.to_owned()))
            }
            4 => {
                let b = self.bytes()?;
                self.charge(b.len())?;
                KEEP.then(|| Value::Blob(b.to_vec()))
            }
            5 => {
                self.charge(36)?;
                if KEEP {
                    Some(Value::Text(self.uuid()?))
                } else {
                    self.take(16)?;
                    None
                }
            }
            _ => return Err(DecodeError::Corrupt("value tag")),
        })
    }
    pub(super) fn fence(&mut self) -> R<Option<Fence>> {
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

    /// A change's column mask and the values it marks (none unless `KEEP`).
    fn columns<const KEEP: bool>(&mut self, tcols: &[Arc<str>]) -> R<Vec<(Arc<str>, Value)>> {
        let mask = self.uvar()?;
        if mask >> tcols.len() != 0 {
            return Err(DecodeError::Corrupt("column mask"));
        }
        if mask == 0 {
            return Ok(Vec::new());
        }
        let n = self.fits("column values", mask.count_ones().into(), MIN_VALUE)?;
        self.charge(n * size_of::<(Arc<str>, Value)>())?;
        let mut data = Vec::with_capacity(if KEEP { n } else { 0 });
        for (j, c) in tcols.iter().enumerate() {
            if mask & (1 << j) != 0 {
                if let Some(v) = self.any_value::<KEEP>()? {
                    data.push((c.clone(), v));
                }
            }
        }
        Ok(data)
    }

    /// Everything before the changes, and the number of changes it claims
    /// (unchecked: the caller checks it against the bytes left).
    pub(super) fn head(&mut self) -> R<(Head, Names, u64)> {
        let library_id = self.uuid()?;
        let from = self.ivar()?;
        let to = self.ivar()?;
        let fence = self.fence()?;
        let n = self.count("origins", MIN_ORIGIN)?;
        self.charge(n * size_of::<Arc<str>>())?;
        let mut origins = Vec::with_capacity(n);
        for _ in 0..n {
            let mut text = [0; 36];
            let origin = self.uuid_in(&mut text)?;
            origins.push(self.arc(origin)?);
        }
        let n = self.count("tables", MIN_TABLE)?;
        self.charge(n * size_of::<TableDesc>())?;
        let mut tables = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.str()?;
            let mode = self.str()?;
            let nc = self.count("columns", MIN_COLUMN)?;
            if nc > 63 {
                return Err(DecodeError::Corrupt("too many columns"));
            }
            self.charge(nc * size_of::<String>())?;
            let mut columns = Vec::with_capacity(nc);
            for _ in 0..nc {
                columns.push(self.str()?);
            }
            tables.push(TableDesc {
                name,
                mode,
                columns,
            });
        }
        // The names the changes share.
        self.charge(tables.len() * size_of::<(Arc<str>, Vec<Arc<str>>)>())?;
        let mut names: Vec<(Arc<str>, Vec<Arc<str>>)> = Vec::with_capacity(tables.len());
        for t in &tables {
            self.charge(t.columns.len() * size_of::<Arc<str>>())?;
            let mut cols = Vec::with_capacity(t.columns.len());
            for c in &t.columns {
                cols.push(self.arc(c)?);
            }
            names.push((self.arc(&t.name)?, cols));
        }
        let merge_into = self.arc(MERGE_INTO)?;
        let count = self.uvar()?;
        let head = Head {
            library_id,
            from,
            to,
            fence,
            tables,
        };
        let names = Names {
            tables: names,
            origins,
            merge_into,
        };
        Ok((head, names, count))
    }

    /// The next change, its values built only when `KEEP`; `at` holds the
    /// running (seq, hlc) that changes are delta-coded against, and moves
    /// only when the change was read whole.
    pub(super) fn change<const KEEP: bool>(
        &mut self,
        names: &Names,
        at: &mut (i64, i64),
    ) -> R<Change> {
        let (tname, tcols) = names
            .tables
            .get(self.uvar()? as usize)
            .ok_or(DecodeError::Corrupt("table index"))?;
        let op = Op::from_code(self.byte()?).ok_or(DecodeError::Corrupt("op"))?;
        let seq = at.0.wrapping_add(self.ivar()?);
        let hlc = at.1.wrapping_add(self.ivar()?);
        let origin = names
            .origins
            .get(self.uvar()? as usize)
            .ok_or(DecodeError::Corrupt("origin index"))?
            .clone();
        let pk = self.any_value::<KEEP>()?.unwrap_or(Value::Null);
        let data = if op == Op::Merge {
            self.charge(size_of::<(Arc<str>, Value)>())?;
            let into = self.any_value::<KEEP>()?;
            into.map(|v| vec![(names.merge_into.clone(), v)])
                .unwrap_or_default()
        } else {
            self.columns::<KEEP>(tcols)?
        };
        *at = (seq, hlc);
        Ok(Change {
            seq,
            hlc,
            origin,
            tbl: tname.clone(),
            pk,
            op,
            data,
        })
    }

    /// A whole body held in memory (`Changeset::decode_body`).
    pub(super) fn changeset(mut self) -> R<Changeset> {
        let (head, names, n) = self.head()?;
        let n = self.fits("changes", n, MIN_CHANGE)?;
        self.charge(n * size_of::<Change>())?;
        let mut changes = Vec::with_capacity(n);
        let mut at = (head.from, 0i64);
        for _ in 0..n {
            changes.push(self.change::<true>(&names, &mut at)?);
        }
        if self.pos != self.buf.len() {
            return Err(DecodeError::Corrupt("trailing bytes"));
        }
        Ok(Changeset::from_head(head, changes))
    }
}

/// What the changes of one changeset share: its tables' names and
/// columns, interned, and its origins.
pub(super) struct Names {
    tables: Vec<(Arc<str>, Vec<Arc<str>>)>,
    origins: Vec<Arc<str>>,
    merge_into: Arc<str>,
}
