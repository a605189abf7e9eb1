//! The server's Ed25519 signing key for Compose tokens.
//!
//! Read from `auth.signing_key` (hex, for keys passed through the
//! environment) or from the file `auth.signing_key_file`, which is created
//! with a fresh random key (mode 0600) on first start. Every server sharing a
//! store must share this key, or they refuse each other's tokens.

use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("auth.signing_key must be 64 hexadecimal digits (a 32-byte Ed25519 seed)")]
    BadHex,
    #[error("auth.signing_key_file {path}: {reason}")]
    File { path: String, reason: String },
}

/// Loads the key from hex, else from `file`, creating the file when missing.
pub fn load_or_create(hex_key: Option<&str>, file: &Path) -> Result<SigningKey, SigningKeyError> {
    if let Some(text) = hex_key {
        return parse_seed(text).ok_or(SigningKeyError::BadHex);
    }
    let file_error = |reason: String| SigningKeyError::File {
        path: file.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(file) {
        Ok(text) => {
            parse_seed(&text).ok_or_else(|| file_error("must hold 64 hexadecimal digits".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| file_error(e.to_string()))?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            match options.open(file) {
                Ok(mut f) => {
                    f.write_all(hex::encode(key.to_bytes()).as_bytes())
                        .map_err(|e| file_error(e.to_string()))?;
                    tracing::info!(path = %file.display(), "created a new token signing key");
                    Ok(key)
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create(None, file)
                }
                Err(e) => Err(file_error(e.to_string())),
            }
        }
        Err(e) => Err(file_error(e.to_string())),
    }
}

fn parse_seed(text: &str) -> Option<SigningKey> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).ok()?;
    Some(SigningKey::from_bytes(&seed))
}
