//! Compose key tokens: `compose-` + a credential signed with the server's
//! Ed25519 key, verifiable without a database round trip.
//!
//! Form: `compose-<base64url(claims JSON)>.<base64url(signature)>`, where the
//! signature covers `compose-v1.` followed by the claims bytes. The store keeps
//! only the token's SHA-256 ([`token_sha256`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use ledger::model::{NewKey, Purpose};
use ledger::{ChainId, KeyId, SessionId, WalletAddress};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "compose-";
/// Tokens longer than this are refused before any decoding.
pub const TOKEN_MAX_BYTES: usize = 1_024;
/// Domain separation for the signature.
const SIGNING_CONTEXT: &[u8] = b"compose-v1.";

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub key_id: KeyId,
    pub wallet: WalletAddress,
    pub chain_id: ChainId,
    pub purpose: Purpose,
    pub session_id: Option<SessionId>,
    pub expires_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct WireClaims {
    v: u8,
    kid: String,
    sub: String,
    cid: u64,
    pur: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
}

/// Issues and verifies tokens with the server's key.
#[derive(Clone)]
pub struct TokenSigner {
    signing: SigningKey,
    verifying: VerifyingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TokenSigner")
            .field("public", &hex::encode(self.verifying.as_bytes()))
            .finish()
    }
}

impl TokenSigner {
    /// Mints the token for a new key and the record to store with it (the
    /// token's hash; never the token itself).
    pub fn mint(&self, key: NewKey) -> (NewKey, String) {
        let token = self.issue(&Claims {
            key_id: key.id.clone(),
            wallet: key.wallet,
            chain_id: key.chain_id,
            purpose: key.purpose,
            session_id: key.session_id.clone(),
            expires_at_ms: key.expires_at_ms,
        });
        (
            NewKey {
                token_sha256: token_sha256(&token),
                ..key
            },
            token,
        )
    }

    pub fn new(signing: SigningKey) -> Self {
        let verifying = signing.verifying_key();
        Self { signing, verifying }
    }

    /// Signs `claims` into a token.
    pub fn issue(&self, claims: &Claims) -> String {
        let wire = WireClaims {
            v: 1,
            kid: claims.key_id.to_string(),
            sub: claims.wallet.to_lower_hex(),
            cid: claims.chain_id.0,
            pur: claims.purpose.as_str().to_owned(),
            sid: claims.session_id.as_ref().map(|s| s.to_string()),
            exp: claims.expires_at_ms,
        };
        // Serializing a struct of strings and integers cannot fail.
        let body = serde_json::to_vec(&wire).unwrap_or_default();
        let signature = self.signing.sign(&[SIGNING_CONTEXT, &body].concat());
        format!(
            "{TOKEN_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&body),
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    /// Checks a token's form, signature and expiry; no database involved.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, TokenError> {
        let (body, signature) = split(token)?;
        self.verifying
            .verify(&[SIGNING_CONTEXT, &body].concat(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        claims_of(&body, now_ms)
    }

    /// Reads a token's claims and checks its expiry **without** checking
    /// the signature. Only for a caller that then proves the token another
    /// way: the paid path compares its SHA-256 with the stored hash of the
    /// key's token, which only the very token issued can match.
    pub fn decode_unverified(&self, token: &str, now_ms: i64) -> Result<Claims, TokenError> {
        let (body, _) = split(token)?;
        claims_of(&body, now_ms)
    }
}

/// A token's claims bytes and signature.
fn split(token: &str) -> Result<(Vec<u8>, Signature), TokenError> {
    if token.len() > TOKEN_MAX_BYTES {
        return Err(TokenError::Malformed);
    }
    let rest = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(TokenError::Malformed)?;
    let (body_b64, signature_b64) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let body = URL_SAFE_NO_PAD
        .decode(body_b64)
        .map_err(|_| TokenError::Malformed)?;
    let signature_bytes: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| TokenError::Malformed)?
        .try_into()
        .map_err(|_| TokenError::Malformed)?;
    Ok((body, Signature::from_bytes(&signature_bytes)))
}

fn claims_of(body: &[u8], now_ms: i64) -> Result<Claims, TokenError> {
    let wire: WireClaims = serde_json::from_slice(body).map_err(|_| TokenError::Malformed)?;
    if wire.v != 1 {
        return Err(TokenError::Malformed);
    }
    let claims = Claims {
        key_id: KeyId::parse(&wire.kid).ok_or(TokenError::Malformed)?,
        wallet: wire.sub.parse().map_err(|_| TokenError::Malformed)?,
        chain_id: ChainId(wire.cid),
        purpose: Purpose::parse(&wire.pur).ok_or(TokenError::Malformed)?,
        session_id: wire
            .sid
            .map(|s| SessionId::parse(&s).ok_or(TokenError::Malformed))
            .transpose()?,
        expires_at_ms: wire.exp,
    };
    if now_ms >= claims.expires_at_ms {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// The lower-case hex SHA-256 of a token: all the store ever keeps of it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(seed: u8) -> TokenSigner {
        TokenSigner::new(SigningKey::from_bytes(&[seed; 32]))
    }

    fn claims() -> Claims {
        Claims {
            key_id: KeyId::generate(),
            wallet: WalletAddress::from_bytes([7; 20]),
            chain_id: ChainId(43113),
            purpose: Purpose::Session,
            session_id: Some(SessionId::generate()),
            expires_at_ms: 2_000,
        }
    }

    #[test]
    fn round_trips_and_expires() {
        let s = signer(1);
        let c = claims();
        let token = s.issue(&c);
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(s.verify(&token, 1_999), Ok(c));
        assert_eq!(s.verify(&token, 2_000), Err(TokenError::Expired));
    }

    #[test]
    fn tampering_and_foreign_keys_are_refused() {
        let s = signer(1);
        let token = s.issue(&claims());
        assert_eq!(signer(2).verify(&token, 0), Err(TokenError::BadSignature));
        // Flip one character of the claims.
        let mut bytes = token.clone().into_bytes();
        let i = TOKEN_PREFIX.len() + 5;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(
            s.verify(&tampered, 0),
            Err(TokenError::BadSignature | TokenError::Malformed)
        ));
        for garbage in [
            "",
            "compose-",
            "compose-abc",
            "compose-a.b",
            "sk-123",
            &"compose-".repeat(200),
        ] {
            assert_eq!(
                s.verify(garbage, 0),
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
