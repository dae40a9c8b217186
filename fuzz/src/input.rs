//! Reading a fuzz input as a list of choices: each call takes the bytes
//! it needs, and an input that runs out yields zeros, so every input means
//! something and a small change of it makes a small change of the case.

use lsync_wire::value::Value;

pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// What is left, taken whole.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        let b = self.bytes(2);
        b.iter().rev().fold(0, |acc, x| (acc << 8) | u16::from(*x))
    }

    pub fn u32(&mut self) -> u32 {
        let b = self.bytes(4);
        b.iter().rev().fold(0, |acc, x| (acc << 8) | u32::from(*x))
    }

    pub fn u64(&mut self) -> u64 {
        let b = self.bytes(8);
        b.iter().rev().fold(0, |acc, x| (acc << 8) | u64::from(*x))
    }

    /// One of `items` (the first one when there are none left to choose).
    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[usize::from(self.u8()) % items.len()]
    }

    /// An integer that is often an edge: around zero, the limits of i64 and
    /// of doubles, HLCs near now and far ahead.
    pub fn int(&mut self) -> i64 {
        let now_hlc = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64))
            << 16;
        match self.u8() % 10 {
            0 => 0,
            1 => -1,
            2 => i64::MAX,
            3 => i64::MIN,
            4 => 1 << 53,
            5 => now_hlc + i64::from(self.u32() as i32) * 1000,
            6 => now_hlc + (120_000 << 16),
            7 => i64::from(self.u8()),
            _ => self.u64() as i64,
        }
    }

    /// A value: often one the receiver knows (`known`: its global ids and
    /// device ids), else any SQLite type with odd contents.
    pub fn value(&mut self, known: &[String]) -> Value {
        match self.u8() % 9 {
            0 => Value::Null,
            1 | 2 => Value::Integer(self.int()),
            3 => Value::Real(f64::from_bits(self.u64())),
            4 | 5 => Value::Text(self.pick(known).clone()),
            6 => {
                let n = usize::from(self.u8());
                Value::Text(String::from_utf8_lossy(self.bytes(n)).into_owned())
            }
            7 => {
                let n = usize::from(self.u8());
                Value::Blob(self.bytes(n).to_vec())
            }
            _ => {
                // A known uuid as its 16 bytes.
                let id = self.pick(known);
                match uuid::Uuid::parse_str(id) {
                    Ok(u) => Value::Blob(u.as_bytes().to_vec()),
                    Err(_) => Value::Blob(id.as_bytes().to_vec()),
                }
            }
        }
    }
}

/// `v` as an SQL parameter.
pub fn to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Integer(i) => S::Integer(*i),
        Value::Real(f) => S::Real(*f),
        Value::Text(t) => S::Text(t.clone()),
        Value::Blob(b) => S::Blob(b.clone()),
    }
}
