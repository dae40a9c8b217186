//! The library secret: 32 random bytes, written as 64 hex characters. Every
//! replicator of a library holds the same secret; it keys the Noise
//! handshake, so a peer without it can neither read nor write anything.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::protocol::Secret;

/// A fresh secret, as hex.
pub fn new() -> Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(key.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a secret file (64 hex characters, surrounding whitespace ignored).
pub fn read(path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the secret file {}", path.display()))?;
    parse(text.trim()).with_context(|| format!("in the secret file {}", path.display()))
}

fn parse(hex: &str) -> Result<Secret> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("a secret is 64 hex characters (make one with `lsync secret new`)");
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_errors() {
        let s = super::new().unwrap();
        assert_eq!(super::parse(&s).unwrap().len(), 32);
        assert_ne!(super::new().unwrap(), s);
        assert!(super::parse("abc").is_err());
        assert!(super::parse(&"zz".repeat(32)).is_err());
    }
}
