//! The server's Ed25519 signing key for Compose tokens.
//!
//! Read from `auth.signing_key` (hex, for keys passed through the
//! environment) or from the file `auth.signing_key_file`, which is created
//! with a fresh random key (mode 0600) on first start. Every server sharing a
//! store must share this key, or they refuse each other's tokens.

use std::path::Path;

use ed25519_dalek::SigningKey;

use super::key_file::{self, KeyFileError};

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("auth.signing_key must be 64 hexadecimal digits (a 32-byte Ed25519 seed)")]
    BadHex,
    #[error("auth.signing_key_file {path}: {reason}")]
    File { path: String, reason: String },
}

/// Loads the key from hex, else from `file`, creating the file when missing.
pub fn load_or_create(hex_key: Option<&str>, file: &Path) -> Result<SigningKey, SigningKeyError> {
    match key_file::load_or_create(hex_key, file, "token signing key") {
        Ok(seed) => Ok(SigningKey::from_bytes(&seed)),
        Err(KeyFileError::BadHex) => Err(SigningKeyError::BadHex),
        Err(KeyFileError::File { path, reason }) => Err(SigningKeyError::File { path, reason }),
    }
}
