//! Request parsing shared by the handlers: headers, bounded JSON bodies,
//! and bearer-key authentication.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use ledger::{Amount, ChainId, WalletAddress};
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::state::AppState;

pub const WALLET_HEADER: &str = "x-session-user-address";
pub const CHAIN_HEADER: &str = "x-chain-id";

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

/// Validates `name`: optional, bounded, no control characters.
pub fn name_field(state: &AppState, body: &Map<String, Value>) -> Result<String, ApiError> {
    let name = string_field(body, "name")?.unwrap_or("");
    let max = state.settings.keys.name_max_chars;
    if name.chars().count() > max {
        return Err(ApiError::invalid_field(
            "name",
            format!("must be at most {max} characters"),
        ));
    }
    if name.chars().any(unprintable_in_name) {
        return Err(ApiError::invalid_field(
            "name",
            "must not contain control or bidi override/isolate characters",
        ));
    }
    Ok(name.to_owned())
}

/// Validates an optional `expiresAt` against now and the longest lifetime.
pub fn expiry_field(
    body: &Map<String, Value>,
    now: i64,
    default_ttl_ms: i64,
    max_ttl_ms: i64,
) -> Result<i64, ApiError> {
    match millis_field(body, "expiresAt")? {
        None => Ok(now.saturating_add(default_ttl_ms)),
        Some(at) if at <= now => Err(ApiError::invalid_field(
            "expiresAt",
            "must be in the future",
        )),
        Some(at) if at > now.saturating_add(max_ttl_ms) => Err(ApiError::invalid_field(
            "expiresAt",
            format!("must be at most {max_ttl_ms} ms from now"),
        )),
        Some(at) => Ok(at),
    }
}

/// Validates a budget against the configured maximum.
pub fn budget_within_max(state: &AppState, budget: Amount) -> Result<Amount, ApiError> {
    let max = state.settings.keys.budget_max_atomic;
    if budget.atomic() > max {
        return Err(ApiError::invalid_field(
            "budgetLimit",
            format!("must be at most {max} (USDC atomic units)"),
        ));
    }
    Ok(budget)
}
