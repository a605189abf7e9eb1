//! Ethereum signatures: EIP-191 `personal_sign` hashing, secp256k1 address
//! recovery, and signing with a local key (for the CLI's dev sign-in).

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use ledger::WalletAddress;
use sha3::{Digest, Keccak256};

/// Why a signature does not name a signer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature must be 0x followed by 130 hexadecimal digits (65 bytes)")]
    Format,
    #[error("signature recovery id must be 0, 1, 27 or 28")]
    RecoveryId,
    #[error("signature does not recover to a public key")]
    Unrecoverable,
}

/// The EIP-191 hash a wallet signs for `personal_sign(message)`.
pub fn personal_message_hash(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(format!("\x19Ethereum Signed Message:\n{}", message.len()).as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

/// The address of a secp256k1 public key: the last 20 bytes of the Keccak-256
/// of its uncompressed point.
pub fn address_of(key: &VerifyingKey) -> WalletAddress {
    let point = key.to_encoded_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(&hash[12..]);
    WalletAddress::from_bytes(bytes)
}

/// Recovers who signed `message` with `personal_sign`, from a 65-byte
/// `r ‖ s ‖ v` signature in hex.
pub fn recover_personal_signer(
    message: &[u8],
    signature_hex: &str,
) -> Result<WalletAddress, SignatureError> {
    let digits = signature_hex.strip_prefix("0x").unwrap_or(signature_hex);
    if digits.len() != 130 {
        return Err(SignatureError::Format);
    }
    let mut bytes = [0u8; 65];
    hex::decode_to_slice(digits, &mut bytes).map_err(|_| SignatureError::Format)?;
    let v = match bytes[64] {
        0 | 27 => 0,
        1 | 28 => 1,
        _ => return Err(SignatureError::RecoveryId),
    };
    let mut signature = Signature::from_slice(&bytes[..64]).map_err(|_| SignatureError::Format)?;
    let mut recovery = RecoveryId::from_byte(v).ok_or(SignatureError::RecoveryId)?;
    // Accept high-s signatures by normalizing them (flipping the parity bit);
    // replay is prevented by single-use nonces, not by signature uniqueness.
    if let Some(normalized) = signature.normalize_s() {
        signature = normalized;
        recovery = RecoveryId::new(!recovery.is_y_odd(), recovery.is_x_reduced());
    }
    let hash = personal_message_hash(message);
    let key = VerifyingKey::recover_from_prehash(&hash, &signature, recovery)
        .map_err(|_| SignatureError::Unrecoverable)?;
    Ok(address_of(&key))
}

/// Signs `message` as `personal_sign` would, returning `0x…` hex (65 bytes,
/// `v` = 27 or 28).
pub fn sign_personal(key: &SigningKey, message: &[u8]) -> Result<String, SignatureError> {
    let hash = personal_message_hash(message);
    let (signature, recovery) = key
        .sign_prehash_recoverable(&hash)
        .map_err(|_| SignatureError::Unrecoverable)?;
    let mut bytes = signature.to_bytes().to_vec();
    bytes.push(27 + recovery.to_byte());
    Ok(format!("0x{}", hex::encode(bytes)))
}

/// A signing key from 32 bytes of hex (with or without `0x`).
pub fn signing_key_from_hex(text: &str) -> Option<SigningKey> {
    let digits = text.trim().strip_prefix("0x").unwrap_or(text.trim());
    let bytes = hex::decode(digits).ok()?;
    SigningKey::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anvil's and Hardhat's well-known first dev account.
    const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const DEV_ADDRESS: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

    #[test]
    fn signs_and_recovers_the_dev_account() {
        let key = signing_key_from_hex(DEV_KEY).unwrap();
        assert_eq!(address_of(key.verifying_key()).to_string(), DEV_ADDRESS);
        let signature = sign_personal(&key, b"hello").unwrap();
        assert_eq!(
            recover_personal_signer(b"hello", &signature)
                .unwrap()
                .to_string(),
            DEV_ADDRESS
        );
        // The same signature over another message names someone else.
        assert_ne!(
            recover_personal_signer(b"hellO", &signature)
                .unwrap()
                .to_string(),
            DEV_ADDRESS
        );
    }

    #[test]
    fn known_personal_sign_vector() {
        // personal_sign("hello") by the dev account, as produced by ethers/viem.
        let sig = "0xf16ea9a3478698f695fd1401bfe27e9e4a7e8e3da94aa72b021125e31fa899cc573c48ea3fe1d4ab61a9db10c19032026e3ed2dbccba5a178235ac27f94504311c";
        assert_eq!(
            recover_personal_signer(b"hello", sig).unwrap().to_string(),
            DEV_ADDRESS
        );
    }

    #[test]
    fn malformed_signatures_are_refused() {
        assert_eq!(
            recover_personal_signer(b"x", "0x12"),
            Err(SignatureError::Format)
        );
        assert_eq!(
            recover_personal_signer(b"x", &format!("0x{}", "zz".repeat(65))),
            Err(SignatureError::Format)
        );
        let mut bad_v = "11".repeat(64);
        bad_v.push_str("05");
        assert_eq!(
            recover_personal_signer(b"x", &bad_v),
            Err(SignatureError::RecoveryId)
        );
    }
}
