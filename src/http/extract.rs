//! Request parsing shared by the handlers: headers, bounded JSON bodies,
//! and bearer-key authentication.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use ledger::model::{KeyRecord, KeyStatus};
use ledger::time::now_ms;
use ledger::{Amount, ChainId, WalletAddress};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::auth::token::{token_sha256, Claims, TokenError};
use crate::state::AppState;

pub const WALLET_HEADER: &str = "x-session-user-address";
pub const CHAIN_HEADER: &str = "x-chain-id";

/// A caller whose bearer key verified and is active right now.
pub struct Caller {
    pub claims: Claims,
    pub key: KeyRecord,
}

/// Verifies the bearer token (signature and expiry, no database), then loads
/// the key to check it is still active: revocation and supersession take
/// effect on the very next request.
pub async fn authenticate(state: &AppState, req: &HttpRequest) -> Result<Caller, ApiError> {
    let (token, claims) = verified_bearer(state, req)?;
    let now = now_ms();
    let key = state.store.key(&claims.key_id).await?.ok_or_else(|| {
        ApiError::unauthorized(
            "invalid_token",
            "the bearer token is not a valid Compose key",
        )
    })?;
    let stored = key.token_sha256.as_bytes();
    if !bool::from(stored.ct_eq(token_sha256(token).as_bytes())) {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "the bearer token is not a valid Compose key",
        ));
    }
    match key.status_at(now) {
        KeyStatus::Active => Ok(Caller { claims, key }),
        KeyStatus::Revoked => Err(ApiError::unauthorized(
            "key_revoked",
            "the key has been revoked",
        )),
        KeyStatus::Superseded => Err(ApiError::unauthorized(
            "session_superseded",
            "the key's session was replaced by a newer sign-in",
        )),
        KeyStatus::Expired => Err(ApiError::unauthorized("key_expired", "the key has expired")),
    }
}

/// The bearer token and its claims, checked by signature and expiry only
/// (no database): the paid path takes the key's status from its actor.
pub fn verified_bearer<'r>(
    state: &AppState,
    req: &'r HttpRequest,
) -> Result<(&'r str, Claims), ApiError> {
    let token = bearer_token(req)?;
    let claims = state.signer.verify(token, now_ms()).map_err(token_error)?;
    Ok((token, claims))
}

/// The paid path's bearer check, done before the body is read. A key whose
/// actor is running is proven by its token's SHA-256 against the stored hash
/// (only the very token issued matches it; `PaidCall::open` compares again
/// under its lease), so the Ed25519 signature — the costliest step of a call
/// — is checked only when the key's actor has to be loaded, which keeps
/// forged tokens from reaching the store.
pub fn paid_bearer<'r>(
    state: &AppState,
    req: &'r HttpRequest,
) -> Result<(&'r str, Claims), ApiError> {
    let token = bearer_token(req)?;
    let now = now_ms();
    let claims = state
        .signer
        .decode_unverified(token, now)
        .map_err(token_error)?;
    match state.gateway.registry.loaded_token_sha256(&claims.key_id) {
        Some(stored) => {
            if !bool::from(stored.as_bytes().ct_eq(token_sha256(token).as_bytes())) {
                return Err(token_error(TokenError::BadSignature));
            }
        }
        None => {
            state.signer.verify(token, now).map_err(token_error)?;
        }
    }
    Ok((token, claims))
}

fn token_error(error: TokenError) -> ApiError {
    match error {
        TokenError::Expired => ApiError::unauthorized("key_expired", "the key has expired"),
        TokenError::Malformed | TokenError::BadSignature => ApiError::unauthorized(
            "invalid_token",
            "the bearer token is not a valid Compose key",
        ),
    }
}

pub fn bearer_token(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("missing_token", "send Authorization: Bearer <compose key>")
    })?;
    let text = value.to_str().map_err(|_| {
        ApiError::unauthorized("invalid_token", "the Authorization header is not text")
    })?;
    let (scheme, token) = text.split_once(' ').ok_or_else(|| {
        ApiError::unauthorized(
            "invalid_token",
            "the Authorization header must be \"Bearer <token>\"",
        )
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "invalid_token",
            "the Authorization header must be \"Bearer <token>\"",
        ));
    }
    Ok(token.trim())
}

fn header_text<'r>(req: &'r HttpRequest, name: &'static str) -> Result<Option<&'r str>, ApiError> {
    req.headers()
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::bad_request("invalid_header", format!("header {name} is not text"))
            })
        })
        .transpose()
}

/// The wallet named by `x-session-user-address`, required.
pub fn wallet_header(req: &HttpRequest) -> Result<WalletAddress, ApiError> {
    let text = header_text(req, WALLET_HEADER)?.ok_or_else(|| {
        ApiError::bad_request(
            "missing_header",
            format!("header {WALLET_HEADER} is required"),
        )
    })?;
    text.trim()
        .parse()
        .map_err(|e| ApiError::bad_request("invalid_header", format!("header {WALLET_HEADER} {e}")))
}

/// The chain named by `x-chain-id`, if sent; it must be a configured chain.
pub fn chain_header(state: &AppState, req: &HttpRequest) -> Result<Option<ChainId>, ApiError> {
    let Some(text) = header_text(req, CHAIN_HEADER)? else {
        return Ok(None);
    };
    let chain = text
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(ChainId)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_header",
                format!("header {CHAIN_HEADER} must be a positive integer"),
            )
        })?;
    if !state.chains.contains(&chain) {
        return Err(ApiError::bad_request(
            "unsupported_chain",
            format!("chain {chain} is not configured here"),
        ));
    }
    Ok(Some(chain))
}

/// The caller's wallet must be the one the request is about.
pub fn require_same_wallet(caller: &Caller, wallet: &WalletAddress) -> Result<(), ApiError> {
    if caller.key.wallet != *wallet {
        return Err(ApiError::forbidden(
            "wallet_mismatch",
            "the bearer key belongs to another wallet",
        ));
    }
    Ok(())
}

/// Characters a name may not hold: controls, and the bidi overrides,
/// embeddings, isolates and marks that make a name display as something
/// else (U+202E turns `gpt-evil` into `live-tpg` on screen).
pub fn unprintable_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        )
}

/// How long a body may take to arrive when the app sets nothing.
const BODY_TIMEOUT_DEFAULT_MS: u64 = 10_000;

/// Reads a JSON object body of at most `limit_bytes` within
/// `http.body_timeout_ms`, answering 415 for a wrong content type, 413 for
/// too large, 408 for too slow, 400 for malformed JSON.
pub async fn json_object(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit_bytes: usize,
) -> Result<Map<String, Value>, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit_bytes} bytes"),
        )
    };
    if let Some(length) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        if length > limit_bytes {
            return Err(too_large());
        }
    }
    let timeout_ms = req
        .app_data::<web::Data<AppState>>()
        .map_or(BODY_TIMEOUT_DEFAULT_MS, |s| s.settings.http.body_timeout_ms);
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| {
                ApiError::bad_request("invalid_body", "the request body could not be read")
            })?;
            if body.len() + chunk.len() > limit_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), read)
        .await
        .map_err(|_| {
            ApiError::new(
                actix_web::http::StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {timeout_ms} ms"),
            )
        })??;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_json",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// An optional amount field (number or decimal string).
pub fn amount_field(
    body: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<Amount>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => Amount::from_json(value)
            .map(Some)
            .map_err(|e| ApiError::invalid_field(name, e)),
    }
}

/// An optional millisecond timestamp field (integer number or digit string).
pub fn millis_field(
    body: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<i64>, ApiError> {
    let bad = || {
        ApiError::invalid_field(
            name,
            "must be milliseconds since the Unix epoch (an integer)",
        )
    };
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().filter(|ms| *ms >= 0).map(Some).ok_or_else(bad),
        Some(Value::String(s)) => s
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms >= 0)
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// An optional string field.
pub fn string_field<'b>(
    body: &'b Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'b str>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ApiError::invalid_field(name, "must be a string")),
    }
}

/// A required string field.
pub fn required_string<'b>(
    body: &'b Map<String, Value>,
    name: &'static str,
) -> Result<&'b str, ApiError> {
    string_field(body, name)?.ok_or_else(|| ApiError::invalid_field(name, "is required"))
}
