//! Quoting for SQL text that lsync generates.

/// Quotes an identifier: `a"b` becomes `"a""b"`.
pub fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal: `it's` becomes `'it''s'`.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::q("a\"b"), "\"a\"\"b\"");
        assert_eq!(super::lit("it's"), "'it''s'");
    }
}
