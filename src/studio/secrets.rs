//! Studio key values and the secrets that protect them at rest.
//!
//! A Studio key's value (`sk-…`/`pk-…`) is never stored in the clear. The
//! store finds a presented value by its keyed hash ([`StudioSecrets::lookup_hash`],
//! HMAC-SHA256), so a leaked table cannot be brute-forced offline without the
//! master key; and an `sk` value, which its owner may read back, is kept sealed
//! ([`StudioSecrets::seal`], AES-256-GCM bound to the key's id).
//!
//! Both come from one 32-byte master key, read from
//! `studio.secrets_key` (hex, e.g. `TOLLGATE__STUDIO__SECRETS_KEY`) or from
//! the file `studio.secrets_key_file`, which is created (mode 0600) on first
//! start. Every server sharing a store must share this key; losing it makes
//! every stored key unusable.

use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::auth::key_file::{self, KeyFileError};

/// A Studio key's type: `sk` (secret) or `pk` (public). One type with the
/// store's, so a record's type feeds [`new_value`] directly.
pub use ledger::model::ApiKeyType as KeyType;

/// Domain separation: the subkey that seals values.
const SEAL_LABEL: &[u8] = b"tollgate-studio-seal-v1";
/// Domain separation: the subkey that keys lookup hashes.
const LOOKUP_LABEL: &[u8] = b"tollgate-studio-lookup-v1";
/// AES-GCM's standard 96-bit nonce.
const NONCE_BYTES: usize = 12;
/// AES-GCM's 128-bit tag.
const TAG_BYTES: usize = 16;
/// Sealed values longer than this are refused before decoding: a sealed key
/// value is about 80 characters, so this bounds work on a corrupt row.
const SEALED_MAX_CHARS: usize = 4_096;
/// Random bytes in a key value (256 bits), after its `sk-`/`pk-` prefix.
const VALUE_RANDOM_BYTES: usize = 32;
/// Characters kept visible at each end of a masked value.
const MASK_PREFIX_CHARS: usize = 3;
const MASK_SUFFIX_CHARS: usize = 4;
/// The `x`s between them.
const MASK_FILL_CHARS: usize = 24;

type HmacSha256 = Hmac<Sha256>;

/// Why the secrets could not be loaded, or a value not sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("studio.secrets_key must be 64 hexadecimal digits (a 32-byte key)")]
    BadHex,
    #[error("studio.secrets_key_file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("a sealed value is corrupt, or was sealed under another key or for another row")]
    Corrupt,
    #[error("the value is too long to seal")]
    TooLong,
}

/// The sealing cipher and the lookup key, both derived from the master key.
pub struct StudioSecrets {
    cipher: Aes256Gcm,
    lookup_key: [u8; 32],
}

impl std::fmt::Debug for StudioSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("StudioSecrets").finish_non_exhaustive()
    }
}

impl StudioSecrets {
    /// Loads the master key from `hex_key` (which wins), else from `file`,
    /// creating the file with a fresh random key (mode 0600) when missing.
    pub fn load_or_create(
        hex_key: Option<&str>,
        file: &Path,
    ) -> Result<StudioSecrets, SecretsError> {
        match key_file::load_or_create(hex_key, file, "studio secrets key") {
            Ok(master) => Ok(StudioSecrets::from_master(master)),
            Err(KeyFileError::BadHex) => Err(SecretsError::BadHex),
            Err(KeyFileError::File { path, reason }) => Err(SecretsError::File { path, reason }),
        }
    }

    /// Derives the sealing and lookup subkeys from the master key, each with
    /// its own label, so neither use can stand in for the other.
    pub fn from_master(master: [u8; 32]) -> StudioSecrets {
        let seal_key = hmac_sha256(&master, SEAL_LABEL);
        StudioSecrets {
            cipher: Aes256Gcm::new(&seal_key.into()),
            lookup_key: hmac_sha256(&master, LOOKUP_LABEL),
        }
    }

    /// The lower-case hex HMAC-SHA256 of `value` under the lookup key: how a
    /// presented key value is found in the store.
    pub fn lookup_hash(&self, value: &str) -> String {
        hex::encode(hmac_sha256(&self.lookup_key, value.as_bytes()))
    }

    /// Encrypts `value` with a fresh random nonce, bound to
    /// `associated_data` (the key's id): base64url(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, value: &str, associated_data: &str) -> Result<String, SecretsError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: value.as_bytes(),
            aad: associated_data.as_bytes(),
        };
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), payload)
            .map_err(|_| SecretsError::TooLong)?;
        Ok(URL_SAFE_NO_PAD.encode([nonce.as_slice(), &ciphertext].concat()))
    }

    /// Decrypts what [`seal`](Self::seal) made with the same
    /// `associated_data`; anything else is [`SecretsError::Corrupt`].
    pub fn open(&self, sealed: &str, associated_data: &str) -> Result<String, SecretsError> {
        if sealed.len() > SEALED_MAX_CHARS {
            return Err(SecretsError::Corrupt);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SecretsError::Corrupt)?;
        if bytes.len() < NONCE_BYTES + TAG_BYTES {
            return Err(SecretsError::Corrupt);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| SecretsError::Corrupt)?;
        let payload = Payload {
            msg: ciphertext,
            aad: associated_data.as_bytes(),
        };
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), payload)
            .map_err(|_| SecretsError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| SecretsError::Corrupt)
    }
}

/// A new key value: `sk-`/`pk-` and 32 random bytes as base64url (43 chars).
pub fn new_value(kind: KeyType) -> String {
    let mut random = [0u8; VALUE_RANDOM_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut random);
    format!("{}-{}", kind.as_str(), URL_SAFE_NO_PAD.encode(random))
}

/// The listing form of a value: its 3-character prefix, 24 `x`, and its last
/// 4 characters. A value too short to keep 8 characters hidden is all `x`.
pub fn masked(value: &str) -> String {
    let kept = MASK_PREFIX_CHARS + MASK_SUFFIX_CHARS;
    let chars: Vec<char> = value.chars().collect();
    if chars.len() < 8 {
        return "x".repeat(kept + MASK_FILL_CHARS);
    }
    let mut out: String = chars[..MASK_PREFIX_CHARS].iter().collect();
    out.push_str(&"x".repeat(MASK_FILL_CHARS));
    out.extend(&chars[chars.len() - MASK_SUFFIX_CHARS..]);
    out
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length");
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn secrets(seed: u8) -> StudioSecrets {
        StudioSecrets::from_master([seed; 32])
    }

    /// A fresh path under the system's temporary directory.
    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir()
            .join(format!("tollgate-secrets-{}", uuid::Uuid::now_v7()))
            .join(name)
    }

    #[test]
    fn seal_and_open_round_trip() {
        let s = secrets(1);
        let sealed = s.seal("sk-secret", "key-1").unwrap();
        assert_eq!(s.open(&sealed, "key-1").unwrap(), "sk-secret");
        // nonce ‖ ciphertext ‖ tag, base64url without padding.
        let raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        assert_eq!(raw.len(), NONCE_BYTES + "sk-secret".len() + TAG_BYTES);
        assert!(!sealed.contains('='));
    }

    #[test]
    fn opens_a_value_sealed_by_an_independent_implementation() {
        // Python `cryptography`: AESGCM(HMAC-SHA256([7]*32, seal label))
        // .encrypt(bytes(range(12)), b"sk-secret-value", b"key-1").
        let sealed = "AAECAwQFBgcICQoLmVuA6DVFS18Lp-0AN9MNngXqabi1z-n_x4ytmd8m_A";
        assert_eq!(secrets(7).open(sealed, "key-1").unwrap(), "sk-secret-value");
    }

    #[test]
    fn wrong_associated_data_is_refused() {
        let s = secrets(1);
        let sealed = s.seal("sk-secret", "key-1").unwrap();
        assert!(matches!(
            s.open(&sealed, "key-2"),
            Err(SecretsError::Corrupt)
        ));
        assert!(matches!(s.open(&sealed, ""), Err(SecretsError::Corrupt)));
    }

    #[test]
    fn tampered_or_foreign_sealed_values_are_refused() {
        let s = secrets(1);
        let sealed = s.seal("sk-secret", "key-1").unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in [0, NONCE_BYTES, raw.len() - 1] {
            raw[i] ^= 1;
            let tampered = URL_SAFE_NO_PAD.encode(&raw);
            assert!(matches!(
                s.open(&tampered, "key-1"),
                Err(SecretsError::Corrupt)
            ));
            raw[i] ^= 1;
        }
        // Another master key cannot open it.
        assert!(matches!(
            secrets(2).open(&sealed, "key-1"),
            Err(SecretsError::Corrupt)
        ));
        let too_long = "A".repeat(SEALED_MAX_CHARS + 1);
        for garbage in ["", "!!", "AAAA", &sealed[..sealed.len() - 4], &too_long] {
            assert!(
                matches!(s.open(garbage, "key-1"), Err(SecretsError::Corrupt)),
                "{garbage}"
            );
        }
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let s = secrets(1);
        let a = s.seal("sk-secret", "key-1").unwrap();
        let b = s.seal("sk-secret", "key-1").unwrap();
        assert_ne!(a, b);
        assert_eq!(s.open(&b, "key-1").unwrap(), "sk-secret");
    }

    #[test]
    fn lookup_hash_is_deterministic_and_keyed() {
        let s = secrets(1);
        let hash = s.lookup_hash("sk-abc");
        assert_eq!(hash, s.lookup_hash("sk-abc"));
        assert_eq!(hash, secrets(1).lookup_hash("sk-abc"));
        assert_eq!(hash.len(), 64);
        assert!(hash
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(hash, s.lookup_hash("sk-abd"));
        assert_ne!(hash, secrets(2).lookup_hash("sk-abc"));
        // Python: HMAC-SHA256(HMAC-SHA256([7]*32, lookup label), b"sk-abc").
        assert_eq!(
            secrets(7).lookup_hash("sk-abc"),
            "bdfc8e1a714dbe861dcd790a1c866e6941bfa87ae0f2dc438c9b08414059cd2e"
        );
    }

    #[test]
    fn subkeys_differ_from_each_other_and_from_the_master() {
        let master = [7u8; 32];
        let seal = hmac_sha256(&master, SEAL_LABEL);
        let lookup = hmac_sha256(&master, LOOKUP_LABEL);
        assert_ne!(seal, lookup);
        assert_ne!(seal, master);
        assert_ne!(lookup, master);
        // Python: HMAC-SHA256([7]*32, label).
        assert_eq!(
            hex::encode(seal),
            "3dd22067a08998eb830f4d438e0d1de0de6c97d21387949b3d81c0cec8c663a9"
        );
        assert_eq!(
            hex::encode(lookup),
            "f47dc931cff79f1fb3682d7e6674ab7d5eb92c9ba0cbd5e3b9464e1ecaa9f433"
        );
        assert_eq!(StudioSecrets::from_master(master).lookup_key, lookup);
    }

    #[test]
    fn new_values_have_the_right_form_and_are_unique() {
        for (kind, prefix) in [(KeyType::Sk, "sk-"), (KeyType::Pk, "pk-")] {
            let value = new_value(kind);
            assert!(value.starts_with(prefix), "{value}");
            let random = &value[3..];
            assert_eq!(random.len(), 43, "{value}");
            assert!(random
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            assert_eq!(URL_SAFE_NO_PAD.decode(random).unwrap().len(), 32);
        }
        let values: std::collections::HashSet<String> =
            (0..1_000).map(|_| new_value(KeyType::Sk)).collect();
        assert_eq!(values.len(), 1_000);
    }

    #[test]
    fn key_type_names() {
        assert_eq!(KeyType::Sk.as_str(), "sk");
        assert_eq!(KeyType::Pk.as_str(), "pk");
        assert_eq!(KeyType::parse("sk"), Some(KeyType::Sk));
        assert_eq!(KeyType::parse("pk"), Some(KeyType::Pk));
        assert_eq!(KeyType::parse("SK"), None);
        assert_eq!(KeyType::parse(""), None);
    }

    #[test]
    fn masked_keeps_prefix_and_last_four() {
        assert_eq!(
            masked("sk-0123456789abcdefghijklmnopqrstuvwxyzAbC1"),
            "sk-xxxxxxxxxxxxxxxxxxxxxxxxAbC1"
        );
        let value = new_value(KeyType::Pk);
        let m = masked(&value);
        assert_eq!(m.len(), 31);
        assert!(m.starts_with("pk-xxxxxxxxxxxxxxxxxxxxxxxx"));
        assert_eq!(&m[27..], &value[value.len() - 4..]);
        assert_eq!(masked("sk-1234A"), "sk-xxxxxxxxxxxxxxxxxxxxxxxx234A");
        // Too short to hide anything: fully masked, same width.
        for short in ["", "sk-", "sk-123A"] {
            assert_eq!(masked(short), "x".repeat(31), "{short}");
        }
        // Counts characters, not bytes.
        assert_eq!(masked("ééééééééé"), "éééxxxxxxxxxxxxxxxxxxxxxxxxéééé");
    }

    #[test]
    fn load_or_create_creates_a_private_file_and_reads_it_back() {
        let path = temp_path("studio.key");
        let first = StudioSecrets::load_or_create(None, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 64);
        assert!(hex::decode(&text).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = StudioSecrets::load_or_create(None, &path).unwrap();
        assert_eq!(first.lookup_key, second.lookup_key);
        let sealed = first.seal("sk-secret", "key-1").unwrap();
        assert_eq!(second.open(&sealed, "key-1").unwrap(), "sk-secret");
        // A hex key wins over the file.
        let hex_key = hex::encode([9u8; 32]);
        let from_hex = StudioSecrets::load_or_create(Some(&hex_key), &path).unwrap();
        assert_eq!(from_hex.lookup_key, secrets(9).lookup_key);
        assert_ne!(from_hex.lookup_key, first.lookup_key);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn bad_hex_and_bad_files_are_refused() {
        let path = temp_path("unused.key");
        for bad in ["", "zz", &"0".repeat(62), &"0".repeat(66), &"g".repeat(64)] {
            assert!(
                matches!(
                    StudioSecrets::load_or_create(Some(bad), &path),
                    Err(SecretsError::BadHex)
                ),
                "{bad}"
            );
        }
        // A hex key is used without touching the file.
        assert!(!path.exists());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "not hex").unwrap();
        let err = StudioSecrets::load_or_create(None, &path).unwrap_err();
        assert!(matches!(&err, SecretsError::File { path: p, .. } if p.ends_with("unused.key")));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
