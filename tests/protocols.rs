//! The paid call in every API a key is for — Responses, Messages (and its
//! free `count_tokens`) and embeddings beside chat completions — over HTTP
//! against the real server and store (docs/paid-path.md). For each: what the
//! client received, the `x-compose-key-*` headers and the ledger agree, and
//! `budgetUsed` is the sum of the charges.
//!
//! `echo` prices: 1 atomic unit per input token, 2 per output token; a word
//! is a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{header_amount, spawn_paid_app, spawn_paid_app_with, TestApp};
use ledger::store::Backend;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

/// One SSE event: its `event:` name (if any) and its `data:` JSON.
#[derive(Debug)]
struct Event {
    name: Option<String>,
    data: Value,
}

/// The events of an SSE body.
fn events(text: &str) -> Vec<Event> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            Event {
                name,
                data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
            }
        })
        .collect()
}

impl TestApp {
    async fn post_api(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Asserts the ledger agrees with itself and returns `budgetUsed`.
    async fn used_is_sum_of_charges(&self, key_id: &str) -> u64 {
        let (used, sum) = self.spent(key_id).await;
        assert_eq!(used, sum, "budgetUsed equals the sum of charges");
        used
    }
}

const RESPONSES: &str = "/external/v1/responses";
const MESSAGES: &str = "/external/v1/messages";
const COUNT_TOKENS: &str = "/external/v1/messages/count_tokens";
const EMBEDDINGS: &str = "/external/v1/embeddings";

/// The final amount of an answer, from its header, checked against its
/// body's `compose`.
async fn charged(response: Response) -> (u64, Value) {
    assert_eq!(response.status(), StatusCode::OK);
    let amount = header_amount(&response, "x-compose-key-final-amount-wei");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["compose"]["finalAmountWei"],
        json!(amount.to_string()),
        "{body}"
    );
    (amount, body)
}

/// Responses, streamed and not, on `echo`: the bound in
/// `max_output_tokens`, usage in Responses' shape, the terminal event with
/// the charge, and the events named as the SDKs read them.
async fn responses_are_answered_and_charged(backend: Backend) {
    let (app, _mock) = spawn_paid_app(backend).await;
    let key = app.paid_key(10_000).await;
    let ask = json!({"model": "echo", "input": "one two three", "instructions": "be brief",
                     "max_output_tokens": 2});
    let (amount, body) = charged(app.post_api(RESPONSES, &key.token, &ask).await).await;
    // 5 words in (input and instructions), 2 out: 5 + 2×2.
    assert_eq!(amount, 9);
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "incomplete", "cut at the bound: {body}");
    assert_eq!(body["output"][0]["content"][0]["text"], "one two");
    assert_eq!(
        (
            body["usage"]["input_tokens"].as_u64(),
            body["usage"]["output_tokens"].as_u64()
        ),
        (Some(5), Some(2))
    );

    let mut ask = json!({"model": "echo", "input": [{"role": "user", "content": "four five six"}], "stream": true});
    let response = app.post_api(RESPONSES, &key.token, &ask).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = events(&response.text().await.unwrap());
    for event in &events {
        assert_eq!(
            event.name.as_deref(),
            event.data["type"].as_str(),
            "event: names the type"
        );
    }
    let text: String = events
        .iter()
        .filter(|e| e.data["type"] == "response.output_text.delta")
        .map(|e| e.data["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "four five six");
    let last = &events.last().unwrap().data;
    assert_eq!(last["type"], "response.completed");
    assert_eq!(last["response"]["usage"]["output_tokens"], 3);
    // 3 in + 3 out × 2.
    assert_eq!(last["compose"]["finalAmountWei"], "9");
    assert_eq!(app.used_is_sum_of_charges(&key.key_id).await, 18);

    ask["model"] = json!("no-such-model");
    let refused = common::json_of(app.post_api(RESPONSES, &key.token, &ask).await).await;
    common::assert_error(&refused, 404, "model_not_found");
}

/// Messages, streamed and not, on `echo`, with the key as `x-api-key` (as
/// Anthropic's SDKs send it) or a bearer token; `count_tokens` is free.
async fn messages_are_answered_and_charged(backend: Backend) {
    let (app, _mock) = spawn_paid_app(backend).await;
    let key = app.paid_key(10_000).await;
    let ask = json!({"model": "echo", "max_tokens": 100, "system": "s1 s2",
                     "messages": [{"role": "user", "content": "a b c d"}]});
    let response = app
        .client
        .post(app.url(MESSAGES))
        .header("x-api-key", &key.token)
        .header("anthropic-version", "2023-06-01")
        .json(&ask)
        .send()
        .await
        .unwrap();
    let (amount, body) = charged(response).await;
    // 6 words in (system and message), 4 out: 6 + 4×2.
    assert_eq!(amount, 14);
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"][0]["text"], "a b c d");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(
        (
            body["usage"]["input_tokens"].as_u64(),
            body["usage"]["output_tokens"].as_u64()
        ),
        (Some(6), Some(4))
    );

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let response = app.post_api(MESSAGES, &key.token, &streamed).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = events(&response.text().await.unwrap());
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.data["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(kinds.last(), Some(&"message_stop"));
    assert!(
        kinds.contains(&"ping") && kinds.contains(&"message_delta"),
        "{kinds:?}"
    );
    for event in &events {
        assert_eq!(event.name.as_deref(), event.data["type"].as_str());
    }
    let text: String = events
        .iter()
        .filter_map(|e| e.data["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "a b c d");
    assert_eq!(
        events.last().unwrap().data["compose"]["finalAmountWei"],
        "14"
    );

    let used = app.used_is_sum_of_charges(&key.key_id).await;
    assert_eq!(used, 28);
    let count = app
        .client
        .post(app.url(COUNT_TOKENS))
        .header("x-api-key", &key.token)
        .json(&json!({"model": "echo", "system": "s1 s2", "messages": ask["messages"]}))
        .send()
        .await
        .unwrap();
    let (status, counted) = common::json_of(count).await;
    assert_eq!(
        (status, counted["input_tokens"].as_u64()),
        (StatusCode::OK, Some(6)),
        "{counted}"
    );
    assert_eq!(
        app.used_is_sum_of_charges(&key.key_id).await,
        used,
        "count_tokens is free"
    );

    // `x-api-key` is Anthropic's: the other endpoints want a bearer token.
    let response = app
        .client
        .post(app.url(RESPONSES))
        .header("x-api-key", &key.token)
        .json(&json!({"model": "echo", "input": "hi"}))
        .send()
        .await
        .unwrap();
    common::assert_error(&common::json_of(response).await, 401, "missing_token");
}

/// Embeddings: input tokens only, the hold from the input bound; the
/// vectors come as floats or, as the official client asks, base64.
async fn embeddings_are_charged_for_their_input(backend: Backend) {
    let (app, _mock) = spawn_paid_app(backend).await;
    let key = app.paid_key(10_000).await;
    let ask = json!({"model": "echo", "input": ["a b", "c"]});
    let (amount, body) = charged(app.post_api(EMBEDDINGS, &key.token, &ask).await).await;
    assert_eq!(amount, 3, "3 words in, nothing out");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert!(body["data"][0]["embedding"].is_array());
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let ask = json!({"model": "echo", "input": "d e f g", "encoding_format": "base64"});
    let (amount, body) = charged(app.post_api(EMBEDDINGS, &key.token, &ask).await).await;
    assert_eq!(amount, 4);
    assert!(body["data"][0]["embedding"].is_string());
    assert_eq!(app.used_is_sum_of_charges(&key.key_id).await, 7);
}

/// Bad input gets a 400 naming the field — unbounded Responses fields,
/// billed built-in and server tools, a Messages call without `max_tokens`,
/// a model called through an API its upstream does not speak — and nothing
/// is held, sent upstream or charged.
async fn refusals_name_the_field_and_change_nothing(backend: Backend) {
    let (app, mock) = spawn_paid_app_with(
        backend,
        &[
            (
                "TOLLGATE__MODELS__CLAUDE__UPSTREAM",
                "http://127.0.0.1:9/v1",
            ),
            ("TOLLGATE__MODELS__CLAUDE__PROTOCOL", "anthropic"),
            ("TOLLGATE__MODELS__CLAUDE__PRICE_VERSION", "t"),
            (
                "TOLLGATE__MODELS__CLAUDE__INPUT_ATOMIC_PER_MILLION",
                "1000000",
            ),
            (
                "TOLLGATE__MODELS__CLAUDE__OUTPUT_ATOMIC_PER_MILLION",
                "2000000",
            ),
            ("TOLLGATE__MODELS__CLAUDE__MAX_OUTPUT_TOKENS", "100"),
        ],
    )
    .await;
    let key = app.paid_key(10_000).await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            RESPONSES,
            json!({"model": "echo", "input": "hi", "previous_response_id": "resp_1"}),
            "unsupported_parameter",
            "previous_response_id",
        ),
        (
            RESPONSES,
            json!({"model": "echo", "input": "hi", "conversation": "conv_1"}),
            "unsupported_parameter",
            "conversation",
        ),
        (
            RESPONSES,
            json!({"model": "echo", "input": "hi", "prompt": {"id": "pmpt_1"}}),
            "unsupported_parameter",
            "prompt",
        ),
        (
            RESPONSES,
            json!({"model": "echo", "input": "hi", "tools": [{"type": "web_search"}]}),
            "unsupported_parameter",
            "tools[type=web_search]",
        ),
        (
            RESPONSES,
            json!({"model": "echo", "input": "hi", "tools": [{"type": "image_generation"}]}),
            "unsupported_parameter",
            "tools[type=image_generation]",
        ),
        (
            RESPONSES,
            json!({"model": "echo"}),
            "invalid_value",
            "input",
        ),
        (
            RESPONSES,
            json!({"model": "echo", "input": "hi", "max_output_tokens": 0}),
            "invalid_value",
            "max_output_tokens",
        ),
        (
            RESPONSES,
            json!({"model": "claude", "input": "hi"}),
            "wrong_api",
            "model",
        ),
        (
            MESSAGES,
            json!({"model": "echo", "messages": user}),
            "invalid_value",
            "max_tokens",
        ),
        (
            MESSAGES,
            json!({"model": "echo", "messages": user, "max_tokens": 5, "mcp_servers": []}),
            "unsupported_parameter",
            "mcp_servers",
        ),
        (
            MESSAGES,
            json!({"model": "echo", "messages": user, "max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "unsupported_parameter",
            "tools[type=web_search_20250305]",
        ),
        (
            MESSAGES,
            json!({"model": "echo", "messages": [{"role": 7, "content": "x"}], "max_tokens": 5}),
            "invalid_value",
            "messages",
        ),
        (
            MESSAGES,
            json!({"model": "mock_ok", "messages": user, "max_tokens": 5}),
            "wrong_api",
            "model",
        ),
        (
            COUNT_TOKENS,
            json!({"model": "mock_ok", "messages": user}),
            "wrong_api",
            "model",
        ),
        (
            EMBEDDINGS,
            json!({"model": "echo", "input": []}),
            "invalid_value",
            "input",
        ),
        (
            EMBEDDINGS,
            json!({"model": "echo", "input": "x", "stream": true}),
            "unsupported_parameter",
            "stream",
        ),
        (
            EMBEDDINGS,
            json!({"model": "claude", "input": "x"}),
            "wrong_api",
            "model",
        ),
    ];
    for (path, body, code, param) in cases {
        let got = common::json_of(app.post_api(path, &key.token, &body).await).await;
        common::assert_error(&got, 400, code);
        assert_eq!(got.1["error"]["param"], param, "{path} {body}: {}", got.1);
    }
    let wrong = common::json_of(
        app.post_api(
            RESPONSES,
            &key.token,
            &json!({"model": "claude", "input": "hi"}),
        )
        .await,
    )
    .await;
    let message = wrong.1["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/external/v1/messages"),
        "names the endpoint that serves it: {message}"
    );
    assert!(
        mock.seen.requests.lock().unwrap().is_empty(),
        "nothing went upstream"
    );
    assert_eq!(app.spent(&key.key_id).await, (0, 0));
}

/// A key that cannot afford one output token (or, for embeddings, its
/// input) gets 402 on every paid endpoint, and nothing is charged.
async fn a_key_that_cannot_pay_is_refused_on_every_endpoint(backend: Backend) {
    let (app, _mock) = spawn_paid_app(backend).await;
    let key = app.paid_key(11).await;
    // Ten words: 10 in + one token out (2) = 12 > 11.
    let ten = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11";
    for (path, body) in [
        (
            "/external/v1/chat/completions",
            json!({"model": "echo", "messages": [{"role": "user", "content": ten}]}),
        ),
        (RESPONSES, json!({"model": "echo", "input": ten})),
        (
            MESSAGES,
            json!({"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": ten}]}),
        ),
        (EMBEDDINGS, json!({"model": "echo", "input": ten})),
    ] {
        let got = common::json_of(app.post_api(path, &key.token, &body).await).await;
        common::assert_error(&got, 402, "insufficient_budget");
    }
    assert_eq!(app.spent(&key.key_id).await, (0, 0));
}

/// Messages' required `max_tokens` is lowered to what the budget affords:
/// the answer stops there, and the key is spent exactly to its limit.
async fn messages_max_tokens_is_lowered_to_the_budget(backend: Backend) {
    let (app, _mock) = spawn_paid_app(backend).await;
    // 10 words in (10) + 4 out (8): 18 affords exactly 4 of the 10 words.
    let key = app.paid_key(18).await;
    let ask = json!({"model": "echo", "max_tokens": 1000,
                     "messages": [{"role": "user", "content": "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"}]});
    let (amount, body) = charged(app.post_api(MESSAGES, &key.token, &ask).await).await;
    assert_eq!(amount, 18);
    assert_eq!(body["content"][0]["text"], "w0 w1 w2 w3");
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["compose"]["budgetRemaining"], "0");
    assert_eq!(app.used_is_sum_of_charges(&key.key_id).await, 18);
}

/// The requests the coding agents send, as captured from Codex CLI 0.171
/// (Responses: `client_metadata`, a `namespace` of function tools,
/// `include`, `reasoning`, `prompt_cache_key`) and Claude Code 2.1 (Messages
/// at `?beta=true` with `anthropic-beta`: a mid-conversation `system`
/// message, `output_config`, adaptive `thinking`, `context_management`),
/// are answered and charged; Codex's `web_search` tool is refused by name
/// (its README setup turns it off).
async fn the_coding_agents_requests_are_served(backend: Backend) {
    let (app, _mock) = spawn_paid_app(backend).await;
    let key = app.paid_key(100_000).await;
    let function = json!({"type": "function", "name": "shell", "strict": false,
                          "parameters": {"type": "object", "properties": {}}});
    let mut codex = json!({
        "model": "echo", "stream": true, "store": false, "tool_choice": "auto",
        "parallel_tool_calls": true, "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "s-1",
        "client_metadata": {"x-codex-installation-id": "i-1"},
        "instructions": "You are Codex.",
        "input": [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
                  {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "say hi"}]}],
        "tools": [function, {"type": "namespace", "name": "multi_agent_v1", "tools": [function]}],
    });
    let response = app.post_api(RESPONSES, &key.token, &codex).await;
    assert_eq!(response.status(), StatusCode::OK);
    let codex_events = events(&response.text().await.unwrap());
    assert_eq!(
        codex_events.last().unwrap().data["type"],
        "response.completed"
    );
    codex["tools"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "web_search"}));
    let refused = common::json_of(app.post_api(RESPONSES, &key.token, &codex).await).await;
    common::assert_error(&refused, 400, "unsupported_parameter");
    assert_eq!(refused.1["error"]["param"], "tools[type=web_search]");

    let claude = json!({
        "model": "echo", "max_tokens": 32000, "stream": true,
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "say hi"}]},
                     {"role": "system", "content": "reminder"}],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}}],
        "metadata": {"user_id": "u-1"}, "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
    });
    let response = app
        .client
        .post(app.url("/external/v1/messages?beta=true"))
        .bearer_auth(&key.token)
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .json(&claude)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let claude_events = events(&response.text().await.unwrap());
    let last = &claude_events.last().unwrap().data;
    assert_eq!(last["type"], "message_stop");
    assert!(last["compose"]["finalAmountWei"].is_string());
    app.used_is_sum_of_charges(&key.key_id).await;
}

/// Attack: `count_tokens` is free, so a flood of it meets the sign-in rate
/// limit (429 with `retry-after`); a revoked key is refused at once; and it
/// never touches a budget.
async fn free_count_tokens_is_bounded(backend: Backend) {
    let (app, _mock) = spawn_paid_app_with(
        backend,
        &[
            ("TOLLGATE__AUTH__SIGN_IN_BURST", "5"),
            ("TOLLGATE__AUTH__SIGN_IN_PER_S", "1"),
        ],
    )
    .await;
    let key = app.paid_key(1_000).await;
    let body = json!({"model": "echo", "messages": [{"role": "user", "content": "a b"}]});
    let mut limited = None;
    for i in 0..20 {
        let response = app.post_api(COUNT_TOKENS, &key.token, &body).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            limited = Some(i);
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
    }
    let limited = limited.expect("a flood of count_tokens never met the limit");
    assert!(
        limited >= 5,
        "the burst is served first: limited after {limited}"
    );
    assert_eq!(app.spent(&key.key_id).await, (0, 0));

    let (app, _mock) = spawn_paid_app(backend).await;
    let key = app.paid_key(1_000).await;
    let (status, _) = app.revoke_key(&key.session, &key.key_id).await;
    assert_eq!(status, StatusCode::OK);
    let got = common::json_of(app.post_api(COUNT_TOKENS, &key.token, &body).await).await;
    common::assert_error(&got, 401, "key_revoked");
}

both_stores!(
    responses_are_answered_and_charged,
    messages_are_answered_and_charged,
    embeddings_are_charged_for_their_input,
    refusals_name_the_field_and_change_nothing,
    a_key_that_cannot_pay_is_refused_on_every_endpoint,
    messages_max_tokens_is_lowered_to_the_budget,
    the_coding_agents_requests_are_served,
    free_count_tokens_is_bounded,
);
