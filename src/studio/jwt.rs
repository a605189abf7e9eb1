//! JWTs for Studio API keys: what `GET /api/v1/apikeys/{id}/token` returns
//! in exchange for a key, and what any party can verify through
//! `/.well-known/jwks.json`.
//!
//! Compact JWS (RFC 7515/7519) signed with EdDSA (Ed25519, RFC 8037) by the
//! server's signing key — the one Compose tokens use, so there is one key to
//! keep and rotate — through the `jsonwebtoken` crate. Verification accepts
//! only what [`JwtSigner::issue`] makes, pinned beyond the crate's own
//! `Validation` (algorithm EdDSA, issuer `tollgate`): our `kid`, no `crit`
//! header, a `sub` naming the key, and expiry checked against the caller's
//! clock. Clients tell a JWT from an `sk-`/`pk-` value by its shape
//! ([`looks_like_jwt`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `iss` of every token we issue, and the only one we accept.
pub const ISSUER: &str = "tollgate";
/// The only algorithm we sign with and accept.
pub const ALGORITHM: &str = "EdDSA";
/// Tokens longer than this are refused before any decoding; ours are about
/// 500 bytes.
pub const JWT_MAX_BYTES: usize = 4_096;
/// The `sub` of a token is this followed by the key's id.
const SUBJECT_PREFIX: &str = "apikey:";
/// Hex characters of SHA-256(public key) in a `kid`.
const KID_HEX_CHARS: usize = 16;
/// PKCS#8 v1 framing of an Ed25519 private key (RFC 8410): this prefix, then
/// the 32-byte seed. `jsonwebtoken` takes EdDSA signing keys in this form.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// What a Studio JWT asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub key_id: String,
    pub account: String,
    pub project: String,
    pub role: String,
    pub key_type: String,
    pub issued_at_s: i64,
    pub expires_at_s: i64,
}

#[derive(Serialize, Deserialize)]
struct WireClaims {
    iss: String,
    sub: String,
    key_id: String,
    account: String,
    project: String,
    role: String,
    #[serde(rename = "type")]
    key_type: String,
    iat: i64,
    exp: i64,
}

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("JWT is malformed")]
    Malformed,
    #[error("JWT algorithm is not EdDSA")]
    UnsupportedAlgorithm,
    #[error("JWT was signed by an unknown key")]
    UnknownKey,
    #[error("JWT signature is invalid")]
    BadSignature,
    #[error("JWT issuer is not tollgate")]
    WrongIssuer,
    #[error("JWT has expired")]
    Expired,
}

/// Issues and verifies Studio JWTs, and publishes the key that verifies them.
#[derive(Clone)]
pub struct JwtSigner {
    /// Kept for the tests, which forge tokens with it.
    #[cfg(test)]
    signing: SigningKey,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_key: [u8; 32],
    kid: String,
    validation: Validation,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtSigner {
    /// A signer for `signing`; its `kid` is the first 16 hex characters of
    /// SHA-256 of the public key.
    pub fn new(signing: SigningKey) -> JwtSigner {
        let public_key = signing.verifying_key().to_bytes();
        let mut kid = hex::encode(Sha256::digest(public_key));
        kid.truncate(KID_HEX_CHARS);
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&signing.to_bytes());
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["iss", "sub", "exp"]);
        // Expiry is checked against the caller's clock below, with no leeway.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        JwtSigner {
            #[cfg(test)]
            signing: signing.clone(),
            encoding: EncodingKey::from_ed_der(&pkcs8),
            decoding: DecodingKey::from_ed_der(&public_key),
            public_key,
            kid,
            validation,
        }
    }

    /// The key id in every header we issue and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` into a compact JWS: `header.payload.signature`.
    pub fn issue(&self, claims: &JwtClaims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let wire = WireClaims {
            iss: ISSUER.to_owned(),
            sub: format!("{SUBJECT_PREFIX}{}", claims.key_id),
            key_id: claims.key_id.clone(),
            account: claims.account.clone(),
            project: claims.project.clone(),
            role: claims.role.clone(),
            key_type: claims.key_type.clone(),
            iat: claims.issued_at_s,
            exp: claims.expires_at_s,
        };
        // Our key is a valid Ed25519 key and the claims plain strings and
        // integers: signing cannot fail.
        jsonwebtoken::encode(&header, &wire, &self.encoding).unwrap_or_default()
    }

    /// Checks a token's form, header (alg `EdDSA`, our `kid`, no `crit`),
    /// signature, issuer, subject and expiry (`exp <= now_s` is expired);
    /// returns its claims.
    pub fn verify(&self, token: &str, now_s: i64) -> Result<JwtClaims, JwtError> {
        if token.len() > JWT_MAX_BYTES || token.split('.').count() != 3 {
            return Err(JwtError::Malformed);
        }
        // The algorithm first, by name: `none` and names the crate does not
        // know are refused as such, not as malformed.
        let alg = token
            .split('.')
            .next()
            .and_then(|part| URL_SAFE_NO_PAD.decode(part).ok())
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .ok_or(JwtError::Malformed)?
            .get("alg")
            .and_then(|alg| alg.as_str().map(str::to_owned));
        if alg.as_deref() != Some(ALGORITHM) {
            return Err(JwtError::UnsupportedAlgorithm);
        }
        let header = jsonwebtoken::decode_header(token).map_err(refusal)?;
        if header.alg != Algorithm::EdDSA {
            return Err(JwtError::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(JwtError::UnknownKey);
        }
        let wire = jsonwebtoken::decode::<WireClaims>(token, &self.decoding, &self.validation)
            .map_err(refusal)?
            .claims;
        if wire.sub.strip_prefix(SUBJECT_PREFIX) != Some(wire.key_id.as_str()) {
            return Err(JwtError::Malformed);
        }
        if wire.exp <= now_s {
            return Err(JwtError::Expired);
        }
        Ok(JwtClaims {
            key_id: wire.key_id,
            account: wire.account,
            project: wire.project,
            role: wire.role,
            key_type: wire.key_type,
            issued_at_s: wire.iat,
            expires_at_s: wire.exp,
        })
    }

    /// The JSON Web Key Set (RFC 7517, RFC 8037) holding our public key.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(self.public_key),
                "kid": self.kid,
                "alg": ALGORITHM,
                "use": "sig",
            }]
        })
    }
}

/// `jsonwebtoken`'s refusals in our terms.
fn refusal(error: jsonwebtoken::errors::Error) -> JwtError {
    match error.kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            JwtError::UnsupportedAlgorithm
        }
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        _ => JwtError::Malformed,
    }
}

/// Whether a bearer value has the shape of a JWT: three non-empty
/// `.`-separated parts, the first starting with `eyJ` (base64 of `{"`).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            header.starts_with("eyJ") && !payload.is_empty() && !signature.is_empty()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use ed25519_dalek::{Signature, Signer};
    use hmac::{Hmac, Mac};

    use super::*;

    fn signer(seed: u8) -> JwtSigner {
        JwtSigner::new(SigningKey::from_bytes(&[seed; 32]))
    }

    fn claims(expires_at_s: i64) -> JwtClaims {
        JwtClaims {
            key_id: "0190d2a4-7c1e-7000-8000-000000000001".into(),
            account: "acct_1".into(),
            project: "proj_1".into(),
            role: "developer".into(),
            key_type: "sk".into(),
            issued_at_s: 1_000,
            expires_at_s,
        }
    }

    fn b64_json(value: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    fn parts(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    fn now_s() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn round_trips_with_the_documented_wire_form() {
        let s = signer(1);
        let c = claims(2_000);
        let token = s.issue(&c);
        assert!(looks_like_jwt(&token), "{token}");
        assert_eq!(s.verify(&token, 1_999), Ok(c));
        let p = parts(&token);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[0]).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": s.kid()})
        );
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[1]).unwrap()).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({
                "iss": "tollgate",
                "sub": "apikey:0190d2a4-7c1e-7000-8000-000000000001",
                "key_id": "0190d2a4-7c1e-7000-8000-000000000001",
                "account": "acct_1",
                "project": "proj_1",
                "role": "developer",
                "type": "sk",
                "iat": 1_000,
                "exp": 2_000,
            })
        );
    }

    #[test]
    fn kid_is_a_prefix_of_the_public_key_hash() {
        let s = signer(1);
        let public = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let full = hex::encode(Sha256::digest(public.as_bytes()));
        assert_eq!(s.kid(), &full[..16]);
        assert_ne!(s.kid(), signer(2).kid());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let s = signer(1);
        let token = s.issue(&claims(2_000));
        assert_eq!(s.verify(&token, 2_000), Err(JwtError::Expired));
        assert_eq!(s.verify(&token, 5_000), Err(JwtError::Expired));
    }

    #[test]
    fn tampered_payload_and_signature_are_refused() {
        let s = signer(1);
        let token = s.issue(&claims(2_000));
        let p = parts(&token);
        // A payload that grants more, under the original signature.
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p[1]).unwrap()).unwrap();
        payload["role"] = "admin".into();
        let forged = format!("{}.{}.{}", p[0], b64_json(&payload), p[2]);
        assert_eq!(s.verify(&forged, 0), Err(JwtError::BadSignature));
        // One bit of the signature flipped.
        let mut signature = URL_SAFE_NO_PAD.decode(&p[2]).unwrap();
        signature[10] ^= 1;
        let forged = format!("{}.{}.{}", p[0], p[1], URL_SAFE_NO_PAD.encode(signature));
        assert_eq!(s.verify(&forged, 0), Err(JwtError::BadSignature));
        // A signature moved onto another token of ours.
        let other = s.issue(&claims(3_000));
        let forged = format!("{}.{}.{}", p[0], parts(&other)[1], p[2]);
        assert_eq!(s.verify(&forged, 0), Err(JwtError::BadSignature));
    }

    /// Independent of `jsonwebtoken`, which signs them: plain Ed25519
    /// (strict verification) over `header.payload`, with only the JWKS key.
    #[test]
    fn ed25519_dalek_verifies_our_tokens_from_the_jwks_alone() {
        let s = signer(3);
        let token = s.issue(&claims(2_000));
        let jwks = s.jwks();
        let x = URL_SAFE_NO_PAD
            .decode(jwks["keys"][0]["x"].as_str().unwrap())
            .unwrap();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&x.try_into().unwrap()).unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap()
            .try_into()
            .unwrap();
        key.verify_strict(input.as_bytes(), &Signature::from_bytes(&signature))
            .unwrap();
        let tampered = format!("{input}x");
        assert!(key
            .verify_strict(tampered.as_bytes(), &Signature::from_bytes(&signature))
            .is_err());
    }

    #[test]
    fn other_algorithms_are_refused() {
        let s = signer(1);
        let p = parts(&s.issue(&claims(2_000)));
        for alg in ["none", "None", "HS256", "ES256", "RS256", "eddsa"] {
            let header = b64_json(&serde_json::json!({"alg": alg, "typ": "JWT", "kid": s.kid()}));
            let signing_input = format!("{header}.{}", p[1]);
            // The classic confusion: HMAC keyed with the public key.
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&s.public_key).unwrap();
            mac.update(signing_input.as_bytes());
            let hmac = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
            for signature in ["", hmac.as_str(), p[2].as_str()] {
                let token = format!("{signing_input}.{signature}");
                assert_eq!(
                    s.verify(&token, 0),
                    Err(JwtError::UnsupportedAlgorithm),
                    "{alg} {signature}"
                );
            }
        }
    }

    #[test]
    fn other_keys_are_refused() {
        let ours = signer(1);
        let theirs = signer(2);
        let token = theirs.issue(&claims(2_000));
        assert_eq!(ours.verify(&token, 0), Err(JwtError::UnknownKey));
        // Their signature under a header that claims our kid.
        let p = parts(&token);
        let header =
            b64_json(&serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": ours.kid()}));
        let signing_input = format!("{header}.{}", p[1]);
        let signature = theirs.signing.sign(signing_input.as_bytes());
        let token = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        );
        assert_eq!(ours.verify(&token, 0), Err(JwtError::BadSignature));
        // No kid at all.
        let header = b64_json(&serde_json::json!({"alg": "EdDSA", "typ": "JWT"}));
        let token = format!("{header}.{}.{}", p[1], p[2]);
        assert_eq!(ours.verify(&token, 0), Err(JwtError::UnknownKey));
    }

    #[test]
    fn wrong_issuer_subject_and_crit_are_refused() {
        let s = signer(1);
        let header = parts(&s.issue(&claims(2_000)))[0].clone();
        let sign = |header: &str, payload: &serde_json::Value| {
            let input = format!("{header}.{}", b64_json(payload));
            let signature = s.signing.sign(input.as_bytes());
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
        };
        let good = serde_json::json!({
            "iss": "tollgate", "sub": "apikey:k1", "key_id": "k1", "account": "a",
            "project": "p", "role": "admin", "type": "sk", "iat": 1, "exp": 2_000,
        });
        assert!(s.verify(&sign(&header, &good), 0).is_ok());
        let mut bad = good.clone();
        bad["iss"] = "someone-else".into();
        assert_eq!(
            s.verify(&sign(&header, &bad), 0),
            Err(JwtError::WrongIssuer)
        );
        let mut bad = good.clone();
        bad["sub"] = "apikey:k2".into();
        assert_eq!(s.verify(&sign(&header, &bad), 0), Err(JwtError::Malformed));
        let mut bad = good.clone();
        bad.as_object_mut().unwrap().remove("exp");
        assert_eq!(s.verify(&sign(&header, &bad), 0), Err(JwtError::Malformed));
        let crit = b64_json(&serde_json::json!({
            "alg": "EdDSA", "typ": "JWT", "kid": s.kid(), "crit": ["b64"], "b64": false,
        }));
        assert_eq!(s.verify(&sign(&crit, &good), 0), Err(JwtError::Malformed));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let s = signer(1);
        let token = s.issue(&claims(2_000));
        let too_long = format!("{token}{}", "A".repeat(JWT_MAX_BYTES));
        for garbage in [
            "",
            ".",
            "..",
            "a.b.c",
            "eyJ.eyJ.",
            &format!("{token}.x"),
            &format!("{token}="),
            &too_long,
            "sk-abc",
        ] {
            assert_eq!(s.verify(garbage, 0), Err(JwtError::Malformed), "{garbage}");
        }
    }

    #[test]
    fn recognizes_the_shape_of_a_jwt() {
        assert!(looks_like_jwt(&signer(1).issue(&claims(2_000))));
        assert!(looks_like_jwt("eyJhbGciOi.eyJ.c2ln"));
        for not in [
            "",
            "sk-abc.def.ghi",
            "pk-eyJ",
            "eyJ.a",
            "eyJ..c",
            "eyJ.b.",
            ".b.c",
            "eyJ.b.c.d",
            "xeyJ.b.c",
        ] {
            assert!(!looks_like_jwt(not), "{not}");
        }
    }

    #[test]
    fn jwks_has_the_public_key() {
        let s = signer(1);
        let jwks = s.jwks();
        let key = &jwks["keys"][0];
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kid"], s.kid());
        let x = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
        assert_eq!(x, s.public_key);
    }

    /// An independent implementation (`jsonwebtoken`), given only the JWKS
    /// JSON, accepts our tokens and refuses a tampered one.
    #[test]
    fn jsonwebtoken_verifies_our_tokens_from_the_jwks_alone() {
        use jsonwebtoken::jwk::JwkSet;
        use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

        let s = signer(3);
        let jwks_json = serde_json::to_string(&s.jwks()).unwrap();
        let set: JwkSet = serde_json::from_str(&jwks_json).unwrap();
        let exp = now_s() + 3_600;
        let token = s.issue(&claims(exp));

        let header = decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        let kid = header.kid.unwrap();
        assert_eq!(kid, s.kid());
        let key = DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 0;

        let data = decode::<serde_json::Value>(&token, &key, &validation).unwrap();
        let c = &data.claims;
        assert_eq!(c["iss"], "tollgate");
        assert_eq!(c["sub"], "apikey:0190d2a4-7c1e-7000-8000-000000000001");
        assert_eq!(c["key_id"], "0190d2a4-7c1e-7000-8000-000000000001");
        assert_eq!(c["account"], "acct_1");
        assert_eq!(c["project"], "proj_1");
        assert_eq!(c["role"], "developer");
        assert_eq!(c["type"], "sk");
        assert_eq!(c["iat"], 1_000);
        assert_eq!(c["exp"], exp);

        // Tampered payload: refused by jsonwebtoken as by us.
        let p = parts(&token);
        let mut payload = c.clone();
        payload["role"] = "admin".into();
        let forged = format!("{}.{}.{}", p[0], b64_json(&payload), p[2]);
        let err = decode::<serde_json::Value>(&forged, &key, &validation).unwrap_err();
        assert_eq!(
            err.kind(),
            &jsonwebtoken::errors::ErrorKind::InvalidSignature
        );
        // And a key from another JWKS does not verify ours.
        let other: JwkSet = serde_json::from_value(signer(4).jwks()).unwrap();
        let other_key = DecodingKey::from_jwk(&other.keys[0]).unwrap();
        assert!(decode::<serde_json::Value>(&token, &other_key, &validation).is_err());
    }

    /// The other direction: a token `jsonwebtoken` signs with our private
    /// key (PKCS#8) and our kid passes our verifier.
    #[test]
    fn we_verify_a_token_jsonwebtoken_signed() {
        use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

        let s = signer(5);
        // PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410): fixed prefix + seed.
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(&[5u8; 32]);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(s.kid().to_owned());
        let exp = now_s() + 3_600;
        let payload = serde_json::json!({
            "iss": "tollgate", "sub": "apikey:k9", "key_id": "k9", "account": "a9",
            "project": "p9", "role": "executor", "type": "pk", "iat": 7, "exp": exp,
        });
        let token = encode(&header, &payload, &EncodingKey::from_ed_der(&der)).unwrap();
        assert!(looks_like_jwt(&token));
        assert_eq!(
            s.verify(&token, now_s()),
            Ok(JwtClaims {
                key_id: "k9".into(),
                account: "a9".into(),
                project: "p9".into(),
                role: "executor".into(),
                key_type: "pk".into(),
                issued_at_s: 7,
                expires_at_s: exp,
            })
        );
    }
}
