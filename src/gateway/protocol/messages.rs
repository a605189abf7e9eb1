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

/// Client tools, by their type's prefix (`bash_20250124`, …): the client
/// runs them, and their calls are output tokens. Every other typed tool is
/// a server tool the upstream runs and bills apart (web search and fetch,
/// code execution, MCP, an advisor model, …).
const CLIENT_TOOLS: [&str; 5] = ["custom", "bash_", "text_editor_", "computer_", "memory_"];

/// A tool the upstream runs and bills apart from tokens (a tool with no
/// `type` is a custom one).
pub(super) fn billed_tool(kind: &str, _tool: &Value) -> bool {
    !kind.is_empty() && !CLIENT_TOOLS.iter().any(|prefix| kind.starts_with(prefix))
}

/// `anthropic-beta` features that change what the upstream bills beyond
/// the model's prices (long-context premiums, an advisor model, server-side
/// compaction whose tokens the usage does not count): refused unless the
/// model's `forward_fields` names `anthropic-beta[<feature>]`.
const PRICED_BETAS: [&str; 3] = ["context-1m", "advisor-tool", "compact-"];

/// Refuses a priced beta feature the model does not forward, and
/// compaction edits in `context_management` (named
/// `context_management[type=compact_…]`).
pub fn check_betas(
    betas: Option<&str>,
    body: &Map<String, Value>,
    model_fields: &[String],
) -> Result<(), CallFailure> {
    let allowed = |field: &str| model_fields.iter().any(|f| f == field);
    for beta in betas.into_iter().flat_map(|b| b.split(',')).map(str::trim) {
        let field = format!("anthropic-beta[{beta}]");
        if PRICED_BETAS.iter().any(|p| beta.starts_with(p)) && !allowed(&field) {
            return Err(CallFailure::UnsupportedParameter {
                field,
                priced: true,
            });
        }
    }
    let edits = body
        .get("context_management")
        .and_then(|c| c.get("edits"))
        .and_then(Value::as_array);
    for edit in edits.into_iter().flatten() {
        let kind = edit.get("type").and_then(Value::as_str).unwrap_or("");
        let field = format!("context_management[type={kind}]");
        if !kind.starts_with("clear_") && !allowed(&field) {
            return Err(CallFailure::UnsupportedParameter {
                field,
                priced: true,
            });
        }
    }
    Ok(())
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
    // A count never goes down: a shrinking one is an upstream's error, and
    // the larger count is what was delivered.
    let count = |field: &str| delta.get(field).and_then(Value::as_u64);
    let read = count("cache_read_input_tokens").unwrap_or(before.cached_tokens);
    let write = count("cache_creation_input_tokens").unwrap_or(before.cache_write_tokens);
    let input = count("input_tokens").map_or(before.prompt_tokens, |input| {
        input.saturating_add(read).saturating_add(write)
    });
    Usage::new(
        input.max(before.prompt_tokens),
        count("output_tokens")
            .unwrap_or(0)
            .max(before.completion_tokens),
        read,
        write,
    )
}

/// Whether a `message_delta`'s usage reports output (then it is the
/// upstream's count; `null` or `{}` is not).
pub(super) fn reports_output(delta_usage: &Value) -> bool {
    delta_usage.get("output_tokens").is_some_and(Value::is_u64)
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

    #[test]
    fn only_client_tools_priced_betas_and_compaction_are_checked() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let with_tools = |tools: Value| {
            parsed(json!({"model": "m", "messages": user, "max_tokens": 3, "tools": tools}))
                .unwrap()
        };
        let client = with_tools(json!([{"type": "bash_20250124", "name": "bash"},
            {"type": "text_editor_20250728", "name": "e"}, {"type": "custom", "name": "c"}]));
        assert!(client.check_fields(&[]).is_ok());
        let advisor = with_tools(json!([{"type": "advisor_20260301", "model": "x"}]));
        let error = advisor.check_fields(&[]).unwrap_err();
        assert!(
            matches!(&error, CallFailure::UnsupportedParameter { field, .. } if field == "tools[type=advisor_20260301]"),
            "{error:?}"
        );

        let body = json!({"context_management": {"edits": [{"type": "clear_thinking_20251015"}]}});
        let body = body.as_object().unwrap();
        assert!(check_betas(
            Some("claude-code-20250219, interleaved-thinking-2025-05-14"),
            body,
            &[]
        )
        .is_ok());
        let error = check_betas(Some("a, context-1m-2025-08-07"), body, &[]).unwrap_err();
        assert!(
            matches!(&error, CallFailure::UnsupportedParameter { field, .. } if field == "anthropic-beta[context-1m-2025-08-07]"),
            "{error:?}"
        );
        assert!(check_betas(
            Some("context-1m-2025-08-07"),
            body,
            &["anthropic-beta[context-1m-2025-08-07]".into()]
        )
        .is_ok());
        let compact = json!({"context_management": {"edits": [{"type": "compact_20260112"}]}});
        let error = check_betas(None, compact.as_object().unwrap(), &[]).unwrap_err();
        assert!(
            matches!(&error, CallFailure::UnsupportedParameter { field, .. } if field == "context_management[type=compact_20260112]"),
            "{error:?}"
        );
    }

    #[test]
    fn a_usage_never_goes_down_and_an_empty_one_reports_nothing() {
        let start = Usage::from_messages(&json!({"input_tokens": 10}));
        assert_eq!(
            start,
            Some(Usage::new(10, 0, 0, 0)),
            "message_start may count no output"
        );
        let high = cumulative(start, &json!({"output_tokens": 9}));
        assert_eq!(
            cumulative(Some(high), &json!({"output_tokens": 2})).completion_tokens,
            9
        );
        assert!(!reports_output(&json!({})) && !reports_output(&Value::Null));
        assert!(reports_output(&json!({"output_tokens": 0})));
    }
}
