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
    /// SQLite refused a write for a constraint (UNIQUE, NOT NULL, CHECK,
    /// FOREIGN KEY, or a trigger's `RAISE`): the data, not the database,
    /// is at fault, so the change is quarantined rather than retried.
    #[error("{full}")]
    Constraint {
        /// The whole message, as for any other error.
        full: String,
        /// What was refused and why, for the quarantine.
        cause: String,
    },
    /// Two rows of shared table `tbl` clash on a UNIQUE key: the merge
    /// takes them as one (`merge::unite`) and runs again.
    #[error("{full}")]
    Clash {
        full: String,
        tbl: std::sync::Arc<str>,
        a: lsync_wire::value::Value,
        b: lsync_wire::value::Value,
    },
    /// A chunk merged without a savepoint of its own failed (`merge`): the
    /// caller takes the whole apply back and runs it again with them.
    #[error("{0}")]
    Unsaved(Box<Error>),
}

impl Error {
    /// The message without the `lsync: ` prefix, for nesting in another one.
    pub fn detail(&self) -> &str {
        match self {
            Error::Msg(m) => m.strip_prefix("lsync: ").unwrap_or(m),
            Error::Sqlite(m) => m,
            Error::Constraint { full, .. } | Error::Clash { full, .. } => {
                full.strip_prefix("lsync: ").unwrap_or(full)
            }
            Error::Unsaved(e) => e.detail(),
        }
    }

    /// A constraint failure of a statement, as SQLite words it.
    pub fn constraint(msg: String) -> Error {
        Error::Constraint {
            full: format!("lsync: {msg}"),
            cause: msg,
        }
    }

    pub fn is_constraint(&self) -> bool {
        matches!(self, Error::Constraint { .. })
    }

    /// What was refused and why, without the wrapping of an apply.
    pub fn cause(&self) -> &str {
        match self {
            Error::Constraint { cause, .. } => cause,
            other => other.detail(),
        }
    }

    /// An error of `lsync_apply` while it did `action` (e.g. "inserting
    /// into 'tags'"); a constraint failure stays one.
    pub fn in_apply(self, action: &str) -> Error {
        let full = format!("lsync_apply: {action}: {self}; nothing was applied");
        match self {
            Error::Constraint { cause, .. } => Error::Constraint {
                full,
                cause: format!("{action}: {cause}"),
            },
            _ => Error::Msg(full),
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
