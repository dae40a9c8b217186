//! Quoting for SQL text that lsync generates.

/// Quotes an identifier: `a"b` becomes `"a""b"`.
pub fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table of the main schema, quoted and qualified: `main."t"`. A temp
/// table of the same name would otherwise shadow it in every statement run
/// outside a trigger of `main`.
pub fn qm(name: &str) -> String {
    format!("main.{}", q(name))
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
        assert_eq!(super::qm("a\"b"), "main.\"a\"\"b\"");
    }
}
