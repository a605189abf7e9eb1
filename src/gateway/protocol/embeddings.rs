//! OpenAI embeddings (`POST /external/v1/embeddings`): input tokens only.
//! The hold is the input bound's price (and the request fee): there is no
//! output to bound, so no output bound goes upstream.

use serde_json::{Map, Value};

use super::super::error::CallFailure;
use super::{model_name, Api, Parsed};
use crate::upstream::Usage;

/// The most inputs one request may embed (OpenAI's own limit).
const INPUTS_MAX: usize = 2_048;

/// The request fields forwarded to every embeddings upstream.
pub const FORWARDED_FIELDS: [&str; 5] = ["model", "input", "encoding_format", "dimensions", "user"];

/// An embeddings request, checked: `input` is a non-empty string, or 1 to
/// 2,048 strings or token arrays.
pub(super) fn parse(body: Map<String, Value>) -> Result<Parsed, CallFailure> {
    let model = model_name(&body)?;
    let token = |v: &Value| v.is_u64();
    let ok = match body.get("input") {
        None | Some(Value::Null) => return Err(CallFailure::invalid_param("input", "is required")),
        Some(Value::String(text)) => !text.is_empty(),
        Some(Value::Array(items)) => {
            !items.is_empty()
                && items.len() <= INPUTS_MAX
                && (items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty()))
                    || items.iter().all(token)
                    || items.iter().all(|i| {
                        i.as_array()
                            .is_some_and(|t| !t.is_empty() && t.iter().all(token))
                    }))
        }
        Some(_) => false,
    };
    if !ok {
        return Err(CallFailure::invalid_param(
            "input",
            format!("must be a non-empty string, or 1 to {INPUTS_MAX} non-empty strings or token arrays"),
        ));
    }
    match body.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" || f == "base64" => {}
        Some(_) => {
            return Err(CallFailure::invalid_param(
                "encoding_format",
                "must be \"float\" or \"base64\"",
            ))
        }
    }
    Ok(Parsed {
        api: Api::Embeddings,
        model,
        stream: false,
        max_tokens: Some(0),
        wants_usage: false,
        body,
    })
}

/// Sets the answer's `usage` to what was billed.
pub(super) fn set_usage(body: &mut Map<String, Value>, billed: Usage) {
    body.insert(
        "usage".into(),
        serde_json::json!({"prompt_tokens": billed.prompt_tokens, "total_tokens": billed.prompt_tokens}),
    );
}
