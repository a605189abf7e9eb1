//! [`ChatRequest`]: an OpenAI chat-completions body, checked before any
//! budget is touched. Everything else in the body goes upstream untouched.

use serde_json::{Map, Value};

use crate::http::error::ApiError;

/// The most messages one request may carry.
pub const MESSAGES_MAX: usize = 10_000;
/// The longest model name accepted.
const MODEL_NAME_MAX_CHARS: usize = 256;

#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    /// `max_completion_tokens`, else `max_tokens`, when the client sent one.
    pub max_tokens: Option<u64>,
    /// The field the client used (`max_tokens` when it used none).
    pub max_tokens_field: &'static str,
    pub body: Map<String, Value>,
}

impl ChatRequest {
    pub fn parse(body: Map<String, Value>) -> Result<ChatRequest, ApiError> {
        let model = match body.get("model") {
            Some(Value::String(m))
                if !m.is_empty() && m.chars().count() <= MODEL_NAME_MAX_CHARS =>
            {
                m.clone()
            }
            Some(Value::String(_)) => {
                return Err(ApiError::invalid_param(
                    "model",
                    format!("must be 1 to {MODEL_NAME_MAX_CHARS} characters"),
                ))
            }
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_param("model", "is required"))
            }
            Some(_) => return Err(ApiError::invalid_param("model", "must be a string")),
        };
        check_messages(body.get("messages"))?;
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid_param("stream", "must be a boolean")),
        };
        match body.get("stream_options") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "stream_options",
                    "must be an object",
                ))
            }
        }
        match body.get("n") {
            None | Some(Value::Null) => {}
            Some(n) if n.as_u64() == Some(1) => {}
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "n",
                    "must be 1: one choice per paid call",
                ))
            }
        }
        let completion = positive_int(&body, "max_completion_tokens")?;
        let plain = positive_int(&body, "max_tokens")?;
        let (max_tokens, max_tokens_field) = match (completion, plain) {
            (Some(n), _) => (Some(n), "max_completion_tokens"),
            (None, n) => (n, "max_tokens"),
        };
        Ok(ChatRequest {
            model,
            stream,
            max_tokens,
            max_tokens_field,
            body,
        })
    }
}

fn check_messages(messages: Option<&Value>) -> Result<(), ApiError> {
    let messages = match messages {
        None | Some(Value::Null) => return Err(ApiError::invalid_param("messages", "is required")),
        Some(Value::Array(m)) => m,
        Some(_) => return Err(ApiError::invalid_param("messages", "must be an array")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "must not be empty"));
    }
    if messages.len() > MESSAGES_MAX {
        return Err(ApiError::invalid_param(
            "messages",
            format!("must hold at most {MESSAGES_MAX} messages"),
        ));
    }
    for message in messages {
        let Value::Object(message) = message else {
            return Err(ApiError::invalid_param("messages", "must hold objects"));
        };
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::invalid_param(
                "messages",
                "each message needs a string role",
            ));
        }
        match message.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid_param(
                    "messages",
                    "a message's content must be a string or an array of parts",
                ))
            }
        }
    }
    Ok(())
}

fn positive_int(body: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::invalid_param(name, "must be a positive integer")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<ChatRequest, ApiError> {
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
            (r.max_tokens, r.max_tokens_field, r.stream),
            (Some(5), "max_tokens", true)
        );
        let r = parse(
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 5, "max_completion_tokens": 7}),
        )
        .unwrap();
        assert_eq!(
            (r.max_tokens, r.max_tokens_field),
            (Some(7), "max_completion_tokens")
        );
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
            assert_eq!(
                (error.status.as_u16(), error.param),
                (400, Some(param)),
                "{body}"
            );
        }
    }
}
