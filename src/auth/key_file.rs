//! A 32-byte secret kept as 64 hex digits in a private file: read it, or on
//! first start create it with fresh random bytes (mode 0600, `create_new` so
//! two processes starting together agree on one, synced to disk before use).
//! The token signing key and the Studio master key both live this way.

use std::io::Write;
use std::path::Path;

use rand::RngCore;

/// The secret from `hex` when given (it wins: keys passed through the
/// environment), else from `file`, created when missing. Errors are a reason
/// for the caller to wrap with the setting's name.
pub fn load_or_create(
    hex: Option<&str>,
    file: &Path,
    what: &str,
) -> Result<[u8; 32], KeyFileError> {
    if let Some(text) = hex {
        return parse(text).ok_or(KeyFileError::BadHex);
    }
    let file_error = |reason: String| KeyFileError::File {
        path: file.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(file) {
        Ok(text) => {
            parse(&text).ok_or_else(|| file_error("must hold 64 hexadecimal digits".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
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
                    f.write_all(hex::encode(secret).as_bytes())
                        .map_err(|e| file_error(e.to_string()))?;
                    // On disk before anything is signed or sealed with it.
                    f.sync_all().map_err(|e| file_error(e.to_string()))?;
                    tracing::info!(path = %file.display(), "created a new {what}");
                    Ok(secret)
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create(None, file, what)
                }
                Err(e) => Err(file_error(e.to_string())),
            }
        }
        Err(e) => Err(file_error(e.to_string())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("must be 64 hexadecimal digits")]
    BadHex,
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

fn parse(text: &str) -> Option<[u8; 32]> {
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret).ok()?;
    Some(secret)
}
