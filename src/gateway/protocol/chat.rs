//! Chat completions: [`ChatRequest`], an OpenAI chat-completions body
//! checked before any budget is touched, and the chat shapes of a paid
//! answer (its `usage`, its last chunk).
//!
//! Only known fields go upstream ([`FORWARDED_FIELDS`], plus what a model's
//! `forward_fields` adds): a field the gateway does not know could change
//! what the upstream bills (`service_tier`, `web_search_options`,
//! `prediction`, audio `modalities`, `best_of`, `top_logprobs`, …) past what
//! the hold priced, so any other field is refused (400, naming it).

use serde_json::{Map, Value};

use super::super::error::CallFailure;
use super::{Api, Parsed};

/// The most messages one request may carry.
pub const MESSAGES_MAX: usize = 10_000;
/// The longest model name accepted.
pub(super) const MODEL_NAME_MAX_CHARS: usize = 256;

/// The request fields forwarded to every upstream: none changes the price of
/// a call beyond its tokens, whose bounds the hold pays for.
pub const FORWARDED_FIELDS: [&str; 20] = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "seed",
    "user",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
];

/// Fields known to change what an upstream bills beyond tokens; refused
/// unless a model's configuration forwards (and so prices) them.
pub(super) const PRICED_FIELDS: [&str; 8] = [
    "service_tier",
    "web_search_options",
    "prediction",
    "modalities",
    "audio",
    "best_of",
    "top_logprobs",
    "store",
];

#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    /// The output bound the client asked for: the smaller of
    /// `max_completion_tokens` and `max_tokens` when it sent both.
    pub max_tokens: Option<u64>,
    /// `stream_options.include_usage`: whether the client wants a usage chunk.
    pub wants_usage: bool,
    pub body: Map<String, Value>,
}

impl ChatRequest {
    pub fn parse(body: Map<String, Value>) -> Result<ChatRequest, CallFailure> {
        let model = super::model_name(&body)?;
        check_messages(body.get("messages"))?;
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(CallFailure::invalid_param("stream", "must be a boolean")),
        };
        let wants_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) => match options.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(CallFailure::invalid_param(
                        "stream_options",
                        "include_usage must be a boolean",
                    ))
                }
            },
            Some(_) => {
                return Err(CallFailure::invalid_param(
                    "stream_options",
                    "must be an object",
                ))
            }
        };
        match body.get("n") {
            None | Some(Value::Null) => {}
            Some(n) if n.as_u64() == Some(1) => {}
            Some(_) => {
                return Err(CallFailure::invalid_param(
                    "n",
                    "must be 1: one choice per paid call",
                ))
            }
        }
        let completion = positive_int(&body, "max_completion_tokens")?;
        let plain = positive_int(&body, "max_tokens")?;
        let max_tokens = match (completion, plain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(ChatRequest {
            model,
            stream,
            max_tokens,
            wants_usage,
            body,
        })
    }

    /// The protocol-neutral request.
    pub fn parsed(self) -> Parsed {
        Parsed {
            api: Api::Chat,
            model: self.model,
            stream: self.stream,
            max_tokens: self.max_tokens,
            wants_usage: self.wants_usage,
            body: self.body,
        }
    }
}

/// A last chunk to carry the charge when the upstream sent no usage chunk.
pub(super) fn last_chunk(meta: &super::StreamMeta) -> Value {
    serde_json::json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": ledger::time::now_ms() / 1000,
        "model": meta.model,
        "choices": [],
    })
}

/// Sets a chat body's or chunk's `usage` to what was billed, or removes it
/// (`None`: a stream whose client did not ask for usage).
pub(super) fn set_usage(map: &mut Map<String, Value>, usage: Option<crate::upstream::Usage>) {
    match usage {
        Some(usage) => {
            map.insert("usage".into(), usage.to_json());
        }
        None => {
            map.remove("usage");
        }
    }
}

fn check_messages(messages: Option<&Value>) -> Result<(), CallFailure> {
    let messages = match messages {
        None | Some(Value::Null) => {
            return Err(CallFailure::invalid_param("messages", "is required"))
        }
        Some(Value::Array(m)) => m,
        Some(_) => return Err(CallFailure::invalid_param("messages", "must be an array")),
    };
    if messages.is_empty() {
        return Err(CallFailure::invalid_param("messages", "must not be empty"));
    }
    if messages.len() > MESSAGES_MAX {
        return Err(CallFailure::invalid_param(
            "messages",
            format!("must hold at most {MESSAGES_MAX} messages"),
        ));
    }
    for message in messages {
        let Value::Object(message) = message else {
            return Err(CallFailure::invalid_param("messages", "must hold objects"));
        };
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(CallFailure::invalid_param(
                "messages",
                "each message needs a string role",
            ));
        }
        match message.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => {
                return Err(CallFailure::invalid_param(
                    "messages",
                    "a message's content must be a string or an array of parts",
                ))
            }
        }
    }
    Ok(())
}

pub(super) fn positive_int(
    body: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, CallFailure> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(CallFailure::invalid_param(
                name,
                "must be a positive integer",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<ChatRequest, CallFailure> {
        let Value::Object(map) = body else { panic!() };
        ChatRequest::parse(map)
    }

    #[test]
    fn valid_requests_parse() {
        let r = parse(
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 5, "stream": true}),
        )
        .unwrap();
        assert_eq!(
            (r.max_tokens, r.stream, r.wants_usage),
            (Some(5), true, false)
        );
        let r = parse(
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 5, "max_completion_tokens": 7,
                             "stream_options": {"include_usage": true}}),
        )
        .unwrap();
        assert_eq!(
            (r.max_tokens, r.wants_usage),
            (Some(5), true),
            "the smaller bound"
        );
        assert!(r.parsed().check_fields(&[]).is_ok());
    }

    #[test]
    fn only_known_fields_pass() {
        let user = json!([{"role": "user", "content": "hi"}]);
        for field in [
            "service_tier",
            "web_search_options",
            "best_of",
            "frobnicate",
        ] {
            let r = parse(json!({"model": "m", "messages": user, field: 1}))
                .unwrap()
                .parsed();
            let error = r.check_fields(&[]).unwrap_err();
            assert!(
                matches!(&error, CallFailure::UnsupportedParameter { field: f, .. } if f == field),
                "{error:?}"
            );
            assert!(
                r.check_fields(&[field.to_owned()]).is_ok(),
                "configured: {field}"
            );
        }
    }

    #[test]
    fn bad_requests_name_the_parameter() {
        let user = json!([{"role": "user", "content": "hi"}]);
        for (body, param) in [
            (json!({"messages": user}), "model"),
            (json!({"model": 3, "messages": user}), "model"),
            (json!({"model": "echo"}), "messages"),
            (json!({"model": "echo", "messages": []}), "messages"),
            (
                json!({"model": "echo", "messages": [{"content": "x"}]}),
                "messages",
            ),
            (
                json!({"model": "echo", "messages": user, "max_tokens": -1}),
                "max_tokens",
            ),
            (
                json!({"model": "echo", "messages": user, "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"model": "echo", "messages": user, "max_tokens": 1.5}),
                "max_tokens",
            ),
            (
                json!({"model": "echo", "messages": user, "stream": "yes"}),
                "stream",
            ),
            (json!({"model": "echo", "messages": user, "n": 2}), "n"),
        ] {
            let error = parse(body.clone()).unwrap_err();
            assert!(
                matches!(&error, CallFailure::InvalidParam { param: p, .. } if p == param),
                "{body}: {error:?}"
            );
        }
    }
}
