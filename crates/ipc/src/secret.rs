//! Shared secrets (the engine token, the API key): kept as their SHA-256 digest and compared
//! in constant time over digests of equal length, so neither the content nor the length of a
//! guess shows in the timing.

use aws_lc_rs::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

/// A secret to check offered values against. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret {
    digest: [u8; 32],
}

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Empty, or only whitespace: it would never match, or match what a client left out.
    #[error("must not be empty or only whitespace")]
    Blank,
}

impl Secret {
    /// A secret; blank ones are refused (an empty `--api-key` must not turn auth off).
    pub fn new(value: &str) -> Result<Self, SecretError> {
        if value.trim().is_empty() {
            return Err(SecretError::Blank);
        }
        Ok(Self {
            digest: sha256(value),
        })
    }

    /// 32 random bytes as 64 hex digits, for a secret nobody chooses (`serve` for its own
    /// engine child).
    pub fn generate() -> String {
        use rand::{Rng, SeedableRng};
        let bytes: [u8; 32] = rand::rngs::StdRng::from_os_rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `offered` is the secret, in time independent of both.
    pub fn matches(&self, offered: &str) -> bool {
        self.digest.ct_eq(&sha256(offered)).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A secret value to send (the client's engine token). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(..)")
    }
}

fn sha256(value: &str) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, value.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_secret() {
        let s = Secret::new("open sesame").expect("valid");
        assert!(s.matches("open sesame"));
        for other in ["open sesamE", "open sesame ", "", "open"] {
            assert!(!s.matches(other), "{other:?}");
        }
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn blank_secrets_are_refused_and_generated_ones_differ() {
        for blank in ["", " ", "\t\n"] {
            assert_eq!(Secret::new(blank).err(), Some(SecretError::Blank));
        }
        let (a, b) = (Secret::generate(), Secret::generate());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
