//! OpenAI's Responses API (`POST /external/v1/responses`): what a request
//! may hold and the Responses shapes of a paid answer.
//!
//! A call is one self-contained request: its cost must be bounded by what
//! it carries. So fields that pull in input the request does not hold
//! (`previous_response_id`, `conversation`, a stored `prompt`), work done
//! apart from the call (`background`) or billed apart from its tokens
//! (`service_tier`, built-in tools the upstream runs and bills on its own:
//! web and file search, code interpreter, image generation, computer use,
//! remote MCP) are refused with a 400 naming them, unless the model's
//! `forward_fields` names them (its prices then cover them). Function,
//! custom and local-shell tools run on the client: their calls are output
//! tokens like any other. The afforded output bound goes upstream in
//! `max_output_tokens`, and `store` is false upstream unless the model
//! forwards `store`.

use serde_json::{Map, Value};

use super::super::error::CallFailure;
use super::chat::{positive_int, MESSAGES_MAX};
use super::{check_tools, flag, model_name, Api, Parsed};
use crate::upstream::Usage;

/// The request fields forwarded to every Responses upstream: none changes
/// a call's price beyond its tokens.
pub const FORWARDED_FIELDS: [&str; 22] = [
    "model",
    "input",
    "instructions",
    "stream",
    "stream_options",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "reasoning",
    "metadata",
    "user",
    "include",
    "truncation",
    "store",
    "safety_identifier",
    "prompt_cache_key",
    "max_tool_calls",
    // Codex CLI's turn metadata: opaque to the upstream's billing.
    "client_metadata",
];

/// Fields whose cost the request cannot bound: refused unless a model's
/// `forward_fields` names (and so prices) them.
pub const PRICED_FIELDS: [&str; 6] = [
    "previous_response_id",
    "conversation",
    "prompt",
    "background",
    "service_tier",
    "top_logprobs",
];

/// Tool types that run on the client (their calls are output tokens); a
/// `namespace` groups tools, each checked in turn.
const CLIENT_TOOLS: [&str; 6] = [
    "function",
    "custom",
    "local_shell",
    "shell",
    "apply_patch",
    "namespace",
];

/// A tool the upstream runs and bills apart from tokens: any but the
/// client's own — and a `shell` with an `environment` is OpenAI's hosted
/// shell, whose container is billed apart.
pub(super) fn billed_tool(kind: &str, tool: &Value) -> bool {
    !CLIENT_TOOLS.contains(&kind) || (kind == "shell" && tool.get("environment").is_some())
}

/// Input items that pull in what the request does not carry (an
/// `item_reference` to a stored item): refused as `previous_response_id` is,
/// unless the model forwards `input[type=item_reference]`.
fn check_input_items(
    body: &Map<String, Value>,
    model_fields: &[String],
) -> Result<(), CallFailure> {
    const FIELD: &str = "input[type=item_reference]";
    let items = body.get("input").and_then(Value::as_array);
    let referenced = items
        .into_iter()
        .flatten()
        .any(|item| item.get("type").and_then(Value::as_str) == Some("item_reference"));
    if referenced && !model_fields.iter().any(|f| f == FIELD) {
        return Err(CallFailure::UnsupportedParameter {
            field: FIELD.into(),
            priced: true,
        });
    }
    Ok(())
}

/// The checks of a Responses request that depend on the model's fields.
pub(super) fn check_model_fields(
    body: &Map<String, Value>,
    model_fields: &[String],
) -> Result<(), CallFailure> {
    check_input_items(body, model_fields)
}

/// A Responses request, checked.
pub(super) fn parse(body: Map<String, Value>) -> Result<Parsed, CallFailure> {
    let model = model_name(&body)?;
    match body.get("input") {
        Some(Value::String(text)) if !text.is_empty() => {}
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MESSAGES_MAX => {
            if !items.iter().all(Value::is_object) {
                return Err(CallFailure::invalid_param("input", "must hold objects"));
            }
        }
        None | Some(Value::Null) => return Err(CallFailure::invalid_param("input", "is required")),
        Some(_) => {
            return Err(CallFailure::invalid_param(
                "input",
                format!("must be a non-empty string or an array of 1 to {MESSAGES_MAX} items"),
            ))
        }
    }
    match body.get("instructions") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => {
            return Err(CallFailure::invalid_param(
                "instructions",
                "must be a string",
            ))
        }
    }
    check_tools(&body, true)?;
    Ok(Parsed {
        api: Api::Responses,
        model,
        stream: flag(&body, "stream")?,
        max_tokens: positive_int(&body, "max_output_tokens")?,
        wants_usage: false,
        body,
    })
}

/// Sets a response's `usage` counts to what was billed, keeping the
/// upstream's details (reasoning tokens).
pub(super) fn set_usage(response: &mut Map<String, Value>, billed: Usage) {
    let usage = response
        .entry("usage")
        .or_insert_with(|| Value::Object(Map::new()));
    if !usage.is_object() {
        *usage = Value::Object(Map::new());
    }
    usage["input_tokens"] = billed.prompt_tokens.into();
    usage["output_tokens"] = billed.completion_tokens.into();
    usage["total_tokens"] = billed
        .prompt_tokens
        .saturating_add(billed.completion_tokens)
        .into();
    // Whatever the upstream put there, the details are an object now (an
    // index into a number or a string would panic).
    let Value::Object(usage) = usage else { return };
    let details = usage
        .entry("input_tokens_details")
        .or_insert_with(|| Value::Object(Map::new()));
    if !details.is_object() {
        *details = Value::Object(Map::new());
    }
    details["cached_tokens"] = billed.cached_tokens.into();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(body: Value) -> Result<Parsed, CallFailure> {
        let Value::Object(map) = body else { panic!() };
        Parsed::of(Api::Responses, map)
    }

    #[test]
    fn requests_parse_and_unbounded_fields_are_refused_by_name() {
        let ok =
            parsed(json!({"model": "m", "input": "hi", "max_output_tokens": 9, "stream": true}))
                .unwrap();
        assert_eq!((ok.max_tokens, ok.stream), (Some(9), true));
        assert!(ok.check_fields(&[]).is_ok());
        for (field, body) in [
            (
                "previous_response_id",
                json!({"model": "m", "input": "hi", "previous_response_id": "r"}),
            ),
            (
                "conversation",
                json!({"model": "m", "input": "hi", "conversation": "c"}),
            ),
            (
                "prompt",
                json!({"model": "m", "input": "hi", "prompt": {"id": "p"}}),
            ),
            (
                "background",
                json!({"model": "m", "input": "hi", "background": true}),
            ),
            (
                "tools[type=web_search]",
                json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]}),
            ),
            (
                "tools[type=code_interpreter]",
                json!({"model": "m", "input": "hi", "tools": [{"type": "code_interpreter"}]}),
            ),
            (
                "tools[type=file_search]",
                json!({"model": "m", "input": "hi", "tools": [{"type": "namespace", "name": "n",
                    "tools": [{"type": "function", "name": "f"}, {"type": "file_search"}]}]}),
            ),
        ] {
            let error = parsed(body).unwrap().check_fields(&[]).unwrap_err();
            assert!(
                matches!(&error, CallFailure::UnsupportedParameter { field: f, priced: true } if f == field),
                "{field}: {error:?}"
            );
        }
        let tool = parsed(json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}))
            .unwrap();
        assert!(
            tool.check_fields(&["tools[type=web_search]".into()])
                .is_ok(),
            "a priced tool"
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        for (body, param) in [
            (json!({"input": "hi"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": ""}), "input"),
            (json!({"model": "m", "input": [1]}), "input"),
            (
                json!({"model": "m", "input": "hi", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": "hi", "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "input": "hi", "tools": [{"name": "f"}]}),
                "tools",
            ),
        ] {
            let error = parsed(body.clone()).unwrap_err();
            assert!(
                matches!(&error, CallFailure::InvalidParam { param: p, .. } if p == param),
                "{body}: {error:?}"
            );
        }
    }

    #[test]
    fn hosted_shells_and_stored_items_are_refused_and_odd_usage_never_panics() {
        let shell =
            parsed(json!({"model": "m", "input": "hi", "tools": [{"type": "shell"}]})).unwrap();
        assert!(shell.check_fields(&[]).is_ok(), "the client's shell");
        let hosted = parsed(json!({"model": "m", "input": "hi",
            "tools": [{"type": "shell", "environment": {"type": "container_auto"}}]}))
        .unwrap();
        let error = hosted.check_fields(&[]).unwrap_err();
        assert!(
            matches!(&error, CallFailure::UnsupportedParameter { field, .. } if field == "tools[type=shell]"),
            "{error:?}"
        );
        let referenced =
            parsed(json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}))
                .unwrap();
        let error = referenced.check_fields(&[]).unwrap_err();
        assert!(
            matches!(&error, CallFailure::UnsupportedParameter { field, .. } if field == "input[type=item_reference]"),
            "{error:?}"
        );
        assert!(referenced
            .check_fields(&["input[type=item_reference]".into()])
            .is_ok());

        for odd in [json!(0), json!("x"), json!([1])] {
            let mut response = json!({"usage": {"input_tokens_details": odd}});
            let response = response.as_object_mut().unwrap();
            set_usage(response, Usage::new(5, 2, 1, 0));
            assert_eq!(
                response["usage"]["input_tokens_details"]["cached_tokens"],
                1
            );
        }
        let mut response = json!({"usage": 7});
        set_usage(response.as_object_mut().unwrap(), Usage::new(5, 2, 0, 0));
        assert_eq!(response["usage"]["output_tokens"], 2);
    }
}
