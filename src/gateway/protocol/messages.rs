//! Anthropic Messages (`POST /external/v1/messages`, and the free
//! `/messages/count_tokens`): what a request may hold, how its stream
//! reports usage, and the Messages shapes of a paid answer.
//!
//! `max_tokens` is required, as in Anthropic's API, and lowered to what the
//! budget affords. Server tools the upstream runs and bills apart from
//! tokens (web search and fetch, code execution, MCP connectors) and
//! `service_tier`, `mcp_servers` and `container` are refused unless the
//! model's `forward_fields` names them; client tools (custom, bash, text
//! editor, computer use) are output tokens like any other.
//!
//! A stream's usage: `message_start.message.usage` has the input (with the
//! cache reads and writes); each `message_delta.usage` is cumulative — the
//! last one counts, never their sum.

use serde_json::{Map, Value};

use super::super::error::CallFailure;
use super::chat::{positive_int, MESSAGES_MAX};
use super::{check_tools, entries, flag, model_name, Api, Parsed};
use crate::upstream::Usage;

/// The request fields forwarded to every Messages upstream.
pub const FORWARDED_FIELDS: [&str; 15] = [
    "model",
    "messages",
    "system",
    "max_tokens",
    "stream",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
    "context_management",
    // `effort`: how much thinking, all of it output tokens within the bound.
    "output_config",
];

/// Fields billed apart from tokens: refused unless forwarded by the model.
pub const PRICED_FIELDS: [&str; 3] = ["service_tier", "mcp_servers", "container"];

/// Server tools, by their type's prefix (`web_search_20250305`, …).
const SERVER_TOOLS: [&str; 4] = ["web_search", "web_fetch", "code_execution", "mcp"];

/// A tool the upstream runs and bills apart from tokens.
pub(super) fn billed_tool(kind: &str) -> bool {
    SERVER_TOOLS.iter().any(|prefix| kind.starts_with(prefix))
}

/// A Messages request, checked.
pub(super) fn parse(body: Map<String, Value>) -> Result<Parsed, CallFailure> {
    let model = model_name(&body)?;
    check_request(&body)?;
    let max_tokens = positive_int(&body, "max_tokens")?
        .ok_or_else(|| CallFailure::invalid_param("max_tokens", "is required"))?;
    Ok(Parsed {
        api: Api::Messages,
        model,
        stream: flag(&body, "stream")?,
        max_tokens: Some(max_tokens),
        wants_usage: false,
        body,
    })
}

/// The checks a `count_tokens` body shares: messages, system, tools.
pub fn check_request(body: &Map<String, Value>) -> Result<(), CallFailure> {
    for message in entries(body, "messages", MESSAGES_MAX)? {
        // `user`, `assistant`, and `system` mid-conversation (a beta
        // Claude Code uses): the upstream judges the roles it takes.
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(CallFailure::invalid_param(
                "messages",
                "each message needs a string role",
            ));
        }
        if !message
            .get("content")
            .is_some_and(|c| c.is_string() || c.is_array())
        {
            return Err(CallFailure::invalid_param(
                "messages",
                "a message's content must be a string or an array of blocks",
            ));
        }
    }
    match body.get("system") {
        None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
        Some(_) => {
            return Err(CallFailure::invalid_param(
                "system",
                "must be a string or an array of blocks",
            ))
        }
    }
    check_tools(body, false)
}

/// The usage after a `message_delta`: its counts are cumulative and
/// replace the earlier ones (output always; input and cache counts when it
/// carries them).
pub(super) fn cumulative(before: Option<Usage>, delta: &Value) -> Usage {
    let before = before.unwrap_or_default();
    let count = |field: &str| delta.get(field).and_then(Value::as_u64);
    let read = count("cache_read_input_tokens").unwrap_or(before.cached_tokens);
    let write = count("cache_creation_input_tokens").unwrap_or(before.cache_write_tokens);
    let input = count("input_tokens").map_or(before.prompt_tokens, |input| {
        input.saturating_add(read).saturating_add(write)
    });
    Usage::new(
        input,
        count("output_tokens").unwrap_or(before.completion_tokens),
        read,
        write,
    )
}

/// Sets a message's `usage` to what was billed (`input_tokens` without the
/// cache parts, as Anthropic reports it).
pub(super) fn set_usage(body: &mut Map<String, Value>, billed: Usage) {
    body.insert(
        "usage".into(),
        crate::upstream::echo::messages_usage(billed),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(body: Value) -> Result<Parsed, CallFailure> {
        let Value::Object(map) = body else { panic!() };
        Parsed::of(Api::Messages, map)
    }

    #[test]
    fn max_tokens_is_required_and_server_tools_are_refused_by_name() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let error = parsed(json!({"model": "m", "messages": user})).unwrap_err();
        assert!(
            matches!(&error, CallFailure::InvalidParam { param, .. } if param == "max_tokens"),
            "{error:?}"
        );
        let ok = parsed(json!({"model": "m", "messages": user, "max_tokens": 3, "tools": [{"name": "f", "input_schema": {}}]})).unwrap();
        assert_eq!(ok.max_tokens, Some(3));
        assert!(ok.check_fields(&[]).is_ok(), "a custom tool");
        for (field, extra) in [
            (
                "tools[type=web_search_20250305]",
                json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            ),
            ("mcp_servers", json!({"mcp_servers": []})),
            ("service_tier", json!({"service_tier": "auto"})),
        ] {
            let mut body = json!({"model": "m", "messages": user, "max_tokens": 3});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let error = parsed(body).unwrap().check_fields(&[]).unwrap_err();
            assert!(
                matches!(&error, CallFailure::UnsupportedParameter { field: f, priced: true } if f == field),
                "{field}: {error:?}"
            );
        }
    }

    #[test]
    fn the_last_message_delta_counts_never_the_sum() {
        let start = Usage::from_messages(&json!({"input_tokens": 10, "output_tokens": 1,
            "cache_read_input_tokens": 80, "cache_creation_input_tokens": 5}));
        assert_eq!(start, Some(Usage::new(95, 1, 80, 5)));
        let mid = cumulative(start, &json!({"output_tokens": 3}));
        let end = cumulative(Some(mid), &json!({"output_tokens": 7}));
        assert_eq!(end, Usage::new(95, 7, 80, 5));
    }
}
