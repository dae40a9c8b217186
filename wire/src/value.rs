//! SQLite values, owned.

/// An owned copy of an SQLite value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    /// Bytes of its content in a changeset body, at most: a tag, and a
    /// varint length before text or a blob.
    pub fn size(&self) -> usize {
        self.as_ref().size()
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A borrowed SQLite value: what a statement's column holds, read without
/// copying it (text SQLite holds as invalid UTF-8 is copied, lossily, as
/// [`Value`] would be).
#[derive(Debug, Clone, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(std::borrow::Cow<'a, str>),
    Blob(std::borrow::Cow<'a, [u8]>),
    /// Text that is a UUID in canonical form (lowercase, hyphenated), as
    /// its 16 bytes: what a changeset carries of it.
    Uuid([u8; 16]),
}

impl ValueRef<'_> {
    /// Bytes of its content in a changeset body, at most: a tag, and a
    /// varint length before text or a blob.
    pub fn size(&self) -> usize {
        match self {
            ValueRef::Null => 1,
            ValueRef::Integer(_) | ValueRef::Real(_) => 11,
            ValueRef::Text(t) => 11 + t.len(),
            ValueRef::Blob(b) => 11 + b.len(),
            ValueRef::Uuid(_) => 11 + 36,
        }
    }

    /// Canonical UUID text as [`ValueRef::Uuid`]; anything else as it is.
    pub fn compact(self) -> Self {
        match &self {
            ValueRef::Text(t) => canonical_uuid(t).map_or(self, ValueRef::Uuid),
            _ => self,
        }
    }

    /// The same value, owning what it borrowed.
    pub fn detach(self) -> ValueRef<'static> {
        match self {
            ValueRef::Null => ValueRef::Null,
            ValueRef::Integer(i) => ValueRef::Integer(i),
            ValueRef::Real(f) => ValueRef::Real(f),
            ValueRef::Text(t) => ValueRef::Text(t.into_owned().into()),
            ValueRef::Blob(b) => ValueRef::Blob(b.into_owned().into()),
            ValueRef::Uuid(u) => ValueRef::Uuid(u),
        }
    }

    pub fn to_owned(&self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(*i),
            ValueRef::Real(f) => Value::Real(*f),
            ValueRef::Text(t) => Value::Text(t.clone().into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            ValueRef::Uuid(u) => Value::Text(uuid::Uuid::from_bytes(*u).hyphenated().to_string()),
        }
    }
}

impl Value {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t.as_str().into()),
            Value::Blob(b) => ValueRef::Blob(b.as_slice().into()),
        }
    }
}

/// The 16 bytes of `s` when it is a UUID in canonical form (lowercase,
/// hyphenated), so that turning them back into text gives `s` itself.
pub fn canonical_uuid(s: &str) -> Option<[u8; 16]> {
    /// Where each byte's two hex digits are.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let s: &[u8; 36] = s.as_bytes().try_into().ok()?;
    if [s[8], s[13], s[18], s[23]] != [b'-'; 4] {
        return None;
    }
    let mut out = [0u8; 16];
    // Any digit that is not one sets the high bit, checked once at the end.
    let mut bad = 0u8;
    for (o, i) in out.iter_mut().zip(AT) {
        let (hi, lo) = (HEX[s[i] as usize], HEX[s[i + 1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0x80 == 0).then_some(out)
}

/// The value of each lowercase hex digit; 0x80 for any other byte.
const HEX: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match c as u8 {
            b'0'..=b'9' => c as u8 - b'0',
            b'a'..=b'f' => c as u8 - b'a' + 10,
            _ => 0x80,
        };
        c += 1;
    }
    t
};
