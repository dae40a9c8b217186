//! Errors are values: every failure becomes an SQL error with a message a
//! person can act on.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A message for the user, already phrased as `lsync: ...`.
    #[error("{0}")]
    Msg(String),
    /// SQLite refused a statement that lsync ran.
    #[error("lsync: {0}")]
    Sqlite(String),
}

impl Error {
    /// The message without the `lsync: ` prefix, for nesting in another one.
    pub fn detail(&self) -> &str {
        match self {
            Error::Msg(m) => m.strip_prefix("lsync: ").unwrap_or(m),
            Error::Sqlite(m) => m,
        }
    }

    pub fn msg(m: impl Into<String>) -> Error {
        let m = m.into();
        if m.starts_with("lsync") {
            Error::Msg(m)
        } else {
            Error::Msg(format!("lsync: {m}"))
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Early-returns a user error.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::error::Error::msg(format!($($t)*))) };
}
