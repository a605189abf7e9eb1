//! Request parsing shared by the handlers: headers, and bounded JSON bodies
//! read into their typed request ([`json_body`], the one place bodies are
//! read).

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use ledger::{ChainId, WalletAddress};
use serde::de::DeserializeOwned;
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

/// How long a body may take to arrive when the app sets nothing.
const BODY_TIMEOUT_DEFAULT_MS: u64 = 10_000;

/// A request body [`json_body`] reads from its JSON object: by default
/// deserialized field by field ([`typed`]); a body passed on whole (the
/// paid call's) keeps its object.
pub trait RequestBody: Sized {
    fn from_object(object: Map<String, Value>) -> Result<Self, ApiError>
    where
        Self: DeserializeOwned,
    {
        typed(&Value::Object(object))
    }
}

/// Reads a JSON object body of at most `limit_bytes` within
/// `http.body_timeout_ms` into `T`, answering 415 for a wrong content type,
/// 413 for too large, 408 for too slow, 400 for malformed JSON or not an
/// object, then 422 naming the field whose value `T` refuses (see
/// [`typed`]): a malformed body is a 400 whatever its fields.
pub async fn json_body<T: RequestBody + DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit_bytes: usize,
) -> Result<T, ApiError> {
    T::from_object(json_object(req, payload, limit_bytes).await?)
}

/// `T` from a JSON object, or 422 `invalid_field` naming (`param`) the
/// field whose value `T` refuses, with its `fields` helper's message — or
/// naming `body` for a field a closed `T` does not have.
pub fn typed<T: DeserializeOwned>(object: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(object).map_err(|error| {
        let path = error.path().to_string();
        let fields = field_names::<T>();
        if fields.contains(&path.as_str()) {
            return ApiError::invalid_field(path, error.into_inner());
        }
        // Not one of its fields: a closed `T` refuses a field it does not
        // have (serde names that field's path).
        let unknown = object
            .as_object()
            .and_then(|o| o.keys().find(|k| !fields.contains(&k.as_str())));
        match unknown {
            Some(unknown) => {
                ApiError::invalid_field("body", format!("has an unknown field {unknown:?}"))
            }
            None => ApiError::invalid_field("body", error.into_inner()),
        }
    })
}

/// The fields serde reads for the struct `T` (none for another type): a
/// deserializer that records what `T` asks for and gives nothing.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Names<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut fields));
    fields
}

/// Reads a JSON object body (see [`json_body`]).
async fn json_object(
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

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::http::fields;

    /// An open body, as `POST /api/keys`' is.
    #[derive(Debug, Deserialize)]
    struct Open {
        #[serde(rename = "budgetLimit", default, deserialize_with = "fields::amount")]
        budget_limit: Option<ledger::Amount>,
        #[serde(rename = "expiresAt", default, deserialize_with = "fields::millis")]
        expires_at: Option<i64>,
    }

    /// A closed body, as `PUT /api/v1/apikeys/{id}`'s is.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Closed {
        #[serde(default, deserialize_with = "fields::flag")]
        enabled: Option<bool>,
        #[serde(default, deserialize_with = "fields::iso_time")]
        expires_at: Option<Option<i64>>,
    }

    fn refusal<T: DeserializeOwned + std::fmt::Debug>(body: Value) -> (u16, String, String) {
        let error = typed::<T>(&body).expect_err("refused");
        let param = error.param.as_deref().unwrap_or_default().to_owned();
        (error.status.as_u16(), param, error.message)
    }

    /// A field's refusal names it, in its helper's words.
    #[test]
    fn a_refused_field_is_named_with_its_message() {
        assert_eq!(
            refusal::<Open>(json!({"budgetLimit": true})),
            (
                422,
                "budgetLimit".to_owned(),
                "budgetLimit must be a decimal integer (digits only)".to_owned()
            )
        );
        assert_eq!(
            refusal::<Open>(json!({"budgetLimit": 1, "expiresAt": "soon"})),
            (
                422,
                "expiresAt".to_owned(),
                "expiresAt must be milliseconds since the Unix epoch (an integer)".to_owned()
            )
        );
        assert_eq!(
            refusal::<Closed>(json!({"enabled": "no"})).2,
            "enabled must be a boolean"
        );
    }

    /// A closed body refuses a field it does not have, naming `body`; an
    /// open one ignores it.
    #[test]
    fn an_unknown_field_is_refused_only_by_a_closed_body() {
        assert_eq!(
            refusal::<Closed>(json!({"owner": "me"})),
            (
                422,
                "body".to_owned(),
                "body has an unknown field \"owner\"".to_owned()
            )
        );
        let open = typed::<Open>(&json!({"budgetLimit": "1", "owner": "me"})).unwrap();
        assert_eq!(
            (open.budget_limit.map(|a| a.atomic()), open.expires_at),
            (Some(1), None)
        );
        // `null` reads as absent, except for an expiry, where it clears.
        let cleared = typed::<Closed>(&json!({"enabled": null, "expires_at": null})).unwrap();
        assert_eq!((cleared.enabled, cleared.expires_at), (None, Some(None)));
    }
}
