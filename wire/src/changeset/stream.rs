//! Decoding a changeset as a stream: the body is decompressed a window at
//! a time and its changes come out in chunks, so a changeset of any size is
//! read in memory for one chunk, never for its whole body and every change
//! at once.
//!
//! Every check of the in-memory decoder holds, with the same errors: a
//! count is checked against the bytes left (a window too small for an item
//! is refilled, and the item read again), the decoded changes are charged
//! against the same budget, and a stream that zstd finds corrupt, or whose
//! length is not the header's, is reported before any error of the parse
//! it caused.

use std::collections::HashMap;
use std::io::Read;

use super::read::{zstd_reader, Names, Reader, R};
use super::*;

/// The first window's size; an item larger than the window doubles it.
const WINDOW: usize = 256 << 10;

/// A changeset's changes, read chunk by chunk; see the module doc.
pub struct Stream<'b> {
    head: Head,
    names: Names,
    w: Window<'b>,
    /// Changes not read yet, and the running (seq, hlc) of the deltas.
    left: u64,
    at: (i64, i64),
    /// What the changes read so far take decoded (charged as if all were
    /// kept, so that a changeset is refused or not whatever the chunks).
    mem: u64,
    max_body: u64,
    done: bool,
}

/// What a pass over the changes found, without keeping them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skim {
    pub changes: u64,
    /// The lowest HLC of any change, and the highest of those kept by the
    /// pass's filter.
    pub min_hlc: Option<i64>,
    pub max_hlc: Option<i64>,
    /// Changes per described table (by its index in the head) and per op
    /// (by its code).
    pub per_table: Vec<u64>,
    pub per_op: [u64; 4],
}

impl<'b> Stream<'b> {
    /// Checks the frame of `blob` and reads the head of its body.
    pub fn open(blob: &'b [u8], max_body: u64) -> R<Stream<'b>> {
        let len = Changeset::framed_len(blob, max_body)?;
        let mut w = Window {
            z: zstd_reader(&blob[14..])?,
            buf: vec![0; WINDOW.min(usize::try_from(len).unwrap_or(usize::MAX).saturating_add(1))],
            pos: 0,
            filled: 0,
            yielded: 0,
            len,
            ended: false,
        };
        w.fill()?;
        let mut mem = 0;
        let (head, names, n) = w.parse(&mut mem, max_body, |r| r.head())?;
        // The changes must fit in what is left of the body as declared;
        // nothing is allocated for them up front, so a lie costs nothing.
        let left = usize::try_from(w.len - w.consumed()).unwrap_or(usize::MAX);
        let most = left / MIN_CHANGE;
        if n > most as u64 {
            let e = DecodeError::Count {
                what: "changes",
                claimed: n,
                left,
                most,
            };
            return Err(w.fail(e));
        }
        Ok(Stream {
            at: (head.from, 0),
            head,
            names,
            w,
            left: n,
            mem,
            max_body,
            done: false,
        })
    }

    /// The changes not read yet, as the header claims.
    pub fn left(&self) -> u64 {
        self.left
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The next changes, at most `max_changes` and about `max_bytes` of
    /// them (by [`Change::size`]; at least one); `None` once all were
    /// read and the body was checked to its end.
    pub fn next_chunk(&mut self, max_changes: usize, max_bytes: usize) -> R<Option<Vec<Change>>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_changes.max(1) && bytes < max_bytes {
            let Some(c) = self.next_change()? else {
                break;
            };
            bytes = bytes.saturating_add(c.size());
            out.push(c);
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// The next change; `None` once all were read and the body was
    /// checked to its end.
    pub fn next_change(&mut self) -> R<Option<Change>> {
        if self.left == 0 {
            self.end()?;
            return Ok(None);
        }
        self.next::<true>().map(Some)
    }

    /// Reads the remaining changes without keeping their values, and checks
    /// the body to its end. `keep` chooses by origin the changes whose HLC
    /// counts for [`Skim::max_hlc`].
    pub fn skim(mut self, keep: impl Fn(&str) -> bool) -> R<(Head, Skim)> {
        let mut s = Skim {
            per_table: vec![0; self.head.tables.len()],
            ..Skim::default()
        };
        let index: HashMap<String, usize> = self
            .head
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let mut last: Option<(Arc<str>, bool)> = None;
        while self.left > 0 {
            let c = self.next::<false>()?;
            s.changes += 1;
            s.per_op[c.op.code() as usize] += 1;
            if let Some(i) = index.get(&*c.tbl) {
                s.per_table[*i] += 1;
            }
            s.min_hlc = Some(s.min_hlc.map_or(c.hlc, |m| m.min(c.hlc)));
            // Changes of one origin come in runs: ask once per run.
            let kept = match &last {
                Some((o, k)) if Arc::ptr_eq(o, &c.origin) => *k,
                _ => {
                    let k = keep(&c.origin);
                    last = Some((c.origin.clone(), k));
                    k
                }
            };
            if kept {
                s.max_hlc = Some(s.max_hlc.map_or(c.hlc, |m| m.max(c.hlc)));
            }
        }
        self.end()?;
        Ok((self.head, s))
    }

    fn next<const KEEP: bool>(&mut self) -> R<Change> {
        let (names, mut at) = (&self.names, self.at);
        let c = self.w.parse(&mut self.mem, self.max_body, |r| {
            r.charge(size_of::<Change>())?;
            let mut a = at;
            let c = r.change::<KEEP>(names, &mut a)?;
            at = a;
            Ok(c)
        })?;
        self.at = at;
        self.left -= 1;
        Ok(c)
    }

    /// After the last change: nothing may follow it, and the stream must
    /// end where the header says, with a good checksum.
    fn end(&mut self) -> R<()> {
        if self.done {
            return Ok(());
        }
        let consumed = self.w.consumed();
        self.w.drain()?;
        if self.w.yielded != consumed {
            return Err(DecodeError::Corrupt("trailing bytes"));
        }
        self.done = true;
        Ok(())
    }
}

/// The decompressed body, held a window at a time.
struct Window<'b> {
    z: zstd::stream::read::Decoder<'static, std::io::BufReader<&'b [u8]>>,
    buf: Vec<u8>,
    /// Read up to `pos`, filled up to `filled`.
    pos: usize,
    filled: usize,
    /// Bytes the stream has yielded, and the body length it must yield.
    yielded: u64,
    len: u64,
    ended: bool,
}

impl Window<'_> {
    /// Body bytes read so far.
    fn consumed(&self) -> u64 {
        self.yielded - (self.filled - self.pos) as u64
    }

    /// Runs `f` on the unread bytes; an item cut off by the window's end is
    /// read again from its start once the window holds more.
    fn parse<T>(
        &mut self,
        mem: &mut u64,
        max_body: u64,
        mut f: impl FnMut(&mut Reader<'_>) -> R<T>,
    ) -> R<T> {
        loop {
            let mut r = Reader::window(&self.buf[self.pos..self.filled], self.len, *mem, max_body);
            let out = f(&mut r);
            let (read, charged) = (r.pos, r.mem);
            match out {
                Ok(v) => {
                    self.pos += read;
                    *mem = charged;
                    return Ok(v);
                }
                Err(DecodeError::Corrupt("truncated") | DecodeError::Count { .. })
                    if !self.ended =>
                {
                    self.more()?
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Keeps the unread bytes and reads more after them, doubling the
    /// window when they fill it.
    fn more(&mut self) -> R<()> {
        self.buf.copy_within(self.pos..self.filled, 0);
        self.filled -= self.pos;
        self.pos = 0;
        if self.filled == self.buf.len() {
            // One byte past the declared length catches a longer stream.
            let most = usize::try_from(self.len - self.yielded)
                .unwrap_or(usize::MAX)
                .saturating_add(self.filled)
                .saturating_add(1);
            let grown = self.buf.len().saturating_mul(2).min(most);
            self.buf.resize(grown.max(self.filled + 1), 0);
        }
        self.fill()
    }

    /// Fills the window from the stream, as far as it goes.
    fn fill(&mut self) -> R<()> {
        let mismatch = DecodeError::Corrupt("body length does not match the header");
        while self.filled < self.buf.len() && !self.ended {
            match self.z.read(&mut self.buf[self.filled..]) {
                Ok(0) => {
                    self.ended = true;
                    if self.yielded != self.len {
                        return Err(mismatch);
                    }
                }
                Ok(n) => {
                    self.filled += n;
                    self.yielded += n as u64;
                    if self.yielded > self.len {
                        return Err(mismatch);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(DecodeError::Corrupt("zstd stream")),
            }
        }
        Ok(())
    }

    /// Reads the stream to its end, keeping nothing.
    fn drain(&mut self) -> R<()> {
        while !self.ended {
            (self.pos, self.filled) = (0, 0);
            self.fill()?;
        }
        Ok(())
    }

    /// The error to report for a parse that failed with `e`: the stream's
    /// own error, if it has one, caused it.
    fn fail(&mut self, e: DecodeError) -> DecodeError {
        match self.drain() {
            Err(z) => z,
            Ok(()) => e,
        }
    }
}
