//! The mock upstream (`tests/common/mock_upstream.rs`) speaks the real
//! protocols: the official Python SDKs (pinned in tests/requirements.txt),
//! through tests/responses_client.py and tests/anthropic_client.py, run
//! directly against it — no gateway in between — and read what each model
//! promises; and the raw wire has the `event:` lines and sequence numbers
//! the real APIs send. The gateway's tests then use the same mock and the
//! same scripts through `/external`.
//!
//! Python and the SDKs must be installed (scripts/test installs them): a test
//! without them fails, it is never skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;

use common::mock_upstream::{
    self, parse_sse, MockUpstream, ANSWER_WORDS, EMBEDDING, MSG_CACHED_USAGE, PROMPT_TOKENS,
    RESP_CACHED_USAGE,
};
use common::python;
use reqwest::StatusCode;
use serde_json::{json, Value};

const KEY: &str = "sk-mock-test-key";

fn mock() -> MockUpstream {
    mock_upstream::start(TcpListener::bind("127.0.0.1:0").unwrap(), 1, true)
}

/// The mock's root: what the Anthropic SDK takes as `base_url`.
fn root(mock: &MockUpstream) -> String {
    mock.base_url.strip_suffix("/v1").unwrap().to_owned()
}

async fn responses(mock: &MockUpstream, model: &str, extra: &[&str]) -> Value {
    let mut args = vec!["responses", &mock.base_url, KEY, model];
    args.extend_from_slice(extra);
    python("responses_client.py", &args).await
}

async fn messages(mock: &MockUpstream, model: &str, extra: &[&str]) -> Value {
    let base = root(mock);
    let mut args = vec!["messages", &base, KEY, model];
    args.extend_from_slice(extra);
    python("anthropic_client.py", &args).await
}

fn ok_words(n: u64) -> String {
    vec!["ok"; n as usize].join(" ")
}

/// The raw events of a Responses stream that completes with `words` deltas.
fn full_response_stream(words: usize, terminal: &str) -> Vec<String> {
    let mut types: Vec<String> = [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    .map(str::to_owned)
    .to_vec();
    types.extend(std::iter::repeat_n(
        "response.output_text.delta".to_owned(),
        words,
    ));
    types.extend(
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            terminal,
        ]
        .map(str::to_owned),
    );
    types
}

#[tokio::test]
async fn responses_ok_create_and_stream_through_the_openai_sdk() {
    let mock = mock();
    let report = responses(&mock, "resp_ok", &[]).await;
    assert_eq!(report["error"], Value::Null, "{report}");
    let usage = json!({"input_tokens": PROMPT_TOKENS, "output_tokens": ANSWER_WORDS,
                       "cached_tokens": 0, "total_tokens": PROMPT_TOKENS + ANSWER_WORDS});
    let create = &report["create"];
    assert_eq!(create["text"], ok_words(ANSWER_WORDS));
    assert_eq!(create["status"], "completed");
    assert_eq!(create["usage"], usage);
    assert_eq!(create["error_field"], Value::Null);
    // Against the mock there is no gateway: no compose field, no headers.
    assert_eq!(create["compose"], Value::Null);
    assert_eq!(create["budget_used"], Value::Null);
    assert_eq!(create["final_amount"], Value::Null);

    let stream = &report["stream"];
    assert_eq!(stream["text"], ok_words(ANSWER_WORDS));
    assert_eq!(stream["final_text"], ok_words(ANSWER_WORDS));
    assert_eq!(stream["terminal"], "response.completed");
    assert_eq!(stream["status"], "completed");
    assert_eq!(stream["usage"], usage);
    assert_eq!(
        stream["types"],
        json!(full_response_stream(
            ANSWER_WORDS as usize,
            "response.completed"
        ))
    );
    let events = stream["types"].as_array().unwrap().len();
    assert_eq!(
        stream["sequence_numbers"],
        json!((0..events).collect::<Vec<_>>())
    );
    assert_eq!(stream["compose"], Value::Null);
    assert_eq!(stream["response_compose"], Value::Null);

    // What the SDK sent, as the mock recorded it.
    let calls = mock.seen.calls_to("/v1/responses");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some("Bearer sk-mock-test-key")
    );
    assert_eq!(calls[0].body["input"], "hello from python");
    assert_eq!(calls[0].body.get("stream"), None);
    assert_eq!(calls[1].body["stream"], true);
    assert_eq!(mock.seen.requests.lock().unwrap().len(), 2);

    // max_output_tokens bounds the words (and the usage).
    let report = responses(&mock, "resp_ok", &["3"]).await;
    assert_eq!(report["create"]["text"], "ok ok ok");
    assert_eq!(report["create"]["usage"]["output_tokens"], 3);
    assert_eq!(report["stream"]["text"], "ok ok ok");
    assert_eq!(report["stream"]["usage"]["output_tokens"], 3);
    assert_eq!(mock.seen.last_call().unwrap().body["max_output_tokens"], 3);
}

#[tokio::test]
async fn responses_failed_incomplete_cut_cached_and_200_errors() {
    let mock = mock();

    let failed = responses(&mock, "resp_failed", &[]).await;
    let usage_2 = json!({"input_tokens": PROMPT_TOKENS, "output_tokens": 2,
                         "cached_tokens": 0, "total_tokens": PROMPT_TOKENS + 2});
    assert_eq!(failed["create"]["status"], "failed", "{failed}");
    assert_eq!(failed["create"]["error_field"]["code"], "server_error");
    assert_eq!(failed["create"]["usage"], usage_2);
    let stream = &failed["stream"];
    assert_eq!(stream["terminal"], "response.failed", "{failed}");
    assert_eq!(stream["text"], "ok ok");
    assert_eq!(stream["status"], "failed");
    assert_eq!(stream["error_field"]["code"], "server_error");
    assert_eq!(stream["usage"], usage_2);
    assert_eq!(stream["final_text"], Value::Null);
    assert_eq!(stream.get("error"), None);

    let incomplete = responses(&mock, "resp_incomplete", &["4"]).await;
    for section in ["create", "stream"] {
        let report = &incomplete[section];
        assert_eq!(report["status"], "incomplete", "{incomplete}");
        assert_eq!(report["incomplete_reason"], "max_output_tokens");
        assert_eq!(report["text"], "ok ok ok ok");
        assert_eq!(report["usage"]["input_tokens"], PROMPT_TOKENS);
        assert_eq!(report["usage"]["output_tokens"], 4);
    }
    assert_eq!(
        incomplete["stream"]["types"],
        json!(full_response_stream(4, "response.incomplete"))
    );

    let cached = responses(&mock, "resp_cached", &[]).await;
    for section in ["create", "stream"] {
        assert_eq!(
            cached[section]["usage"],
            json!({"input_tokens": RESP_CACHED_USAGE.0, "output_tokens": ANSWER_WORDS,
                   "cached_tokens": RESP_CACHED_USAGE.1,
                   "total_tokens": RESP_CACHED_USAGE.0 + ANSWER_WORDS}),
            "{cached}"
        );
    }

    // A cut: the client has the words that came, and an error, no terminal event.
    let cut = responses(&mock, "resp_cut", &[]).await;
    assert_eq!(cut["create"]["error"]["status"], Value::Null, "{cut}");
    assert_eq!(cut["create"]["error"]["exception"], "APIConnectionError");
    let stream = &cut["stream"];
    assert_eq!(stream["text"], "ok ok", "{cut}");
    assert_eq!(stream["terminal"], "response.output_text.delta");
    assert_eq!(stream["usage"], Value::Null);
    assert!(stream["error"]["exception"].is_string(), "{cut}");
    assert_eq!(cut["error"], cut["create"]["error"]);

    // 200 with an error object: no Response fields; no events when streamed.
    let error = responses(&mock, "resp_200_error", &[]).await;
    assert_eq!(error["create"]["status"], Value::Null, "{error}");
    assert_eq!(error["create"]["error_field"]["code"], "server_error");
    assert_eq!(error["create"]["usage"], Value::Null);
    assert_eq!(error["stream"]["types"], json!([]), "{error}");
    assert_eq!(error["stream"]["terminal"], Value::Null);
}

#[tokio::test]
async fn messages_ok_create_and_stream_through_the_anthropic_sdk() {
    let mock = mock();
    let report = messages(&mock, "msg_ok", &[]).await;
    assert_eq!(report["error"], Value::Null, "{report}");
    let usage = json!({"input_tokens": PROMPT_TOKENS, "output_tokens": ANSWER_WORDS,
                       "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    let create = &report["create"];
    assert_eq!(create["type"], "message");
    assert_eq!(create["model"], "msg_ok");
    assert!(create["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(create["text"], ok_words(ANSWER_WORDS));
    assert_eq!(create["stop_reason"], "end_turn");
    assert_eq!(create["usage"], usage);
    assert_eq!(create["compose"], Value::Null);
    assert_eq!(create["budget_used"], Value::Null);

    let stream = &report["stream"];
    assert_eq!(stream["text"], ok_words(ANSWER_WORDS));
    assert_eq!(stream["stop_reason"], "end_turn");
    assert_eq!(stream["usage"], usage);
    assert_eq!(stream["compose"], Value::Null);
    let mut types = vec!["message_start", "content_block_start"];
    types.extend(["content_block_delta"; ANSWER_WORDS as usize]);
    types.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(stream["types"], json!(types));

    // `--auth x-api-key` (the default): X-Api-Key, no Authorization.
    let calls = mock.seen.calls_to("/v1/messages");
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!(call.x_api_key.as_deref(), Some(KEY));
        assert_eq!(call.authorization, None);
        assert!(call.anthropic_version.is_some());
        assert_eq!(call.body["max_tokens"], 1024);
        assert_eq!(call.body["messages"][0]["content"], "hello from python");
    }
    assert_eq!(calls[1].body["stream"], true);

    // `--auth bearer`: Authorization: Bearer, no X-Api-Key.
    let report = messages(
        &mock,
        "msg_ok",
        &["2", "--auth", "bearer", "--only", "create"],
    )
    .await;
    assert_eq!(report["create"]["text"], "ok ok", "{report}");
    assert_eq!(report["create"]["usage"]["output_tokens"], 2);
    assert_eq!(report.get("stream"), None);
    let call = mock.seen.last_call().unwrap();
    assert_eq!(
        call.authorization.as_deref(),
        Some("Bearer sk-mock-test-key")
    );
    assert_eq!(call.x_api_key, None);
    assert_eq!(call.body["max_tokens"], 2);
}

#[tokio::test]
async fn messages_multi_delta_cached_errors_cuts_and_count_tokens() {
    let mock = mock();

    // Three cumulative message_deltas: the SDK (like a correct gateway)
    // keeps the last, not the sum.
    let multi = messages(&mock, "msg_multi_delta", &["--only", "stream"]).await;
    let stream = &multi["stream"];
    assert_eq!(stream["usage"]["output_tokens"], ANSWER_WORDS, "{multi}");
    assert_eq!(stream["usage"]["input_tokens"], PROMPT_TOKENS);
    assert_eq!(stream["text"], ok_words(ANSWER_WORDS));
    let deltas = stream["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| *t == "message_delta")
        .count();
    assert_eq!(deltas, 3);
    let low = messages(&mock, "msg_multi_delta", &["2", "--only", "stream"]).await;
    assert_eq!(low["stream"]["usage"]["output_tokens"], 2, "{low}");

    let cached = messages(&mock, "msg_cached", &[]).await;
    let (input, read, creation) = MSG_CACHED_USAGE;
    for section in ["create", "stream"] {
        assert_eq!(
            cached[section]["usage"],
            json!({"input_tokens": input, "output_tokens": ANSWER_WORDS,
                   "cache_read_input_tokens": read, "cache_creation_input_tokens": creation}),
            "{cached}"
        );
    }

    // An error event after content: the words came, then the SDK raises.
    let error = messages(&mock, "msg_error_after_content", &[]).await;
    assert_eq!(error["create"]["error"]["status"], 529, "{error}");
    assert_eq!(
        error["create"]["error"]["body"]["error"]["type"],
        "overloaded_error"
    );
    let stream = &error["stream"];
    assert_eq!(stream["text"], "ok ok", "{error}");
    assert_eq!(stream["error"]["status"], 200);
    assert_eq!(stream["error"]["body"]["type"], "error");
    assert_eq!(stream["error"]["body"]["error"]["type"], "overloaded_error");
    assert_eq!(stream["usage"], Value::Null);

    let cut = messages(&mock, "msg_cut", &[]).await;
    assert_eq!(
        cut["create"]["error"]["exception"], "APIConnectionError",
        "{cut}"
    );
    assert_eq!(cut["stream"]["text"], "ok ok", "{cut}");
    assert!(cut["stream"]["error"]["exception"].is_string(), "{cut}");
    assert_eq!(
        cut["stream"]["types"],
        json!([
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta"
        ])
    );

    // 200 with an error object: the SDK parses it, without a message's fields.
    let error = messages(&mock, "msg_200_error", &["--only", "create"]).await;
    assert_eq!(error["create"]["type"], "error", "{error}");
    assert_eq!(error["create"]["error_field"]["type"], "api_error");
    assert_eq!(error["create"]["usage"], Value::Null);

    let base = root(&mock);
    let count = python(
        "anthropic_client.py",
        &["count_tokens", &base, KEY, "msg_ok"],
    )
    .await;
    assert_eq!(
        count["count_tokens"]["input_tokens"], PROMPT_TOKENS,
        "{count}"
    );
    assert_eq!(count["count_tokens"]["compose"], Value::Null);
    assert_eq!(count["error"], Value::Null);
    let calls = mock.seen.calls_to("/v1/messages/count_tokens");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["model"], "msg_ok");
    assert_eq!(calls[0].x_api_key.as_deref(), Some(KEY));
}

#[tokio::test]
async fn embeddings_decode_from_base64_through_the_openai_sdk() {
    let mock = mock();
    let report = python(
        "responses_client.py",
        &["embeddings", &mock.base_url, KEY, "emb_ok"],
    )
    .await;
    let embeddings = &report["embeddings"];
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_eq!(embeddings["count"], 2);
    assert_eq!(embeddings["vectors"], json!([EMBEDDING, EMBEDDING]));
    assert_eq!(
        embeddings["usage"],
        json!({"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS})
    );
    assert_eq!(embeddings["model"], "emb_ok");
    assert_eq!(embeddings["compose"], Value::Null);
    // The SDK asked for base64 (and decoded it).
    let call = mock.seen.last_call().unwrap();
    assert_eq!(call.path, "/v1/embeddings");
    assert_eq!(call.body["encoding_format"], "base64");
    assert_eq!(call.body["input"], json!(["a", "b"]));
}

/// The bytes on the wire: every event has an `event:` line naming its type;
/// Responses events number themselves from 0; nothing ends with `[DONE]`;
/// floats when no base64 is asked; `max_tokens` is required.
#[tokio::test]
async fn the_raw_wire_is_as_the_apis_send_it() {
    let mock = mock();
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{}{path}", root(&mock)))
            .json(&body)
            .send()
    };

    let response = post(
        "/v1/responses",
        json!({"model": "resp_ok", "input": "hi", "stream": true}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = parse_sse(&response.text().await.unwrap());
    assert_eq!(
        events.len(),
        full_response_stream(ANSWER_WORDS as usize, "").len()
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(name.as_deref(), data["type"].as_str(), "{data}");
        assert_eq!(data["sequence_number"], i, "{data}");
    }
    let (_, completed) = events.last().unwrap();
    assert_eq!(
        completed["response"]["usage"]["output_tokens"],
        ANSWER_WORDS
    );
    assert_eq!(
        completed["response"]["output"][0]["content"][0]["text"],
        ok_words(ANSWER_WORDS)
    );

    let response = post(
        "/v1/messages",
        json!({"model": "msg_ok", "max_tokens": 3, "stream": true,
               "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    let events = parse_sse(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &events {
        assert_eq!(name.as_deref(), data["type"].as_str(), "{data}");
    }
    assert_eq!(
        events[0].1["message"]["usage"]["input_tokens"],
        PROMPT_TOKENS
    );
    assert_eq!(events[0].1["message"]["content"], json!([]));
    assert_eq!(events[7].1["usage"], json!({"output_tokens": 3}));
    assert_eq!(events[7].1["delta"]["stop_reason"], "end_turn");

    let response = post(
        "/v1/messages",
        json!({"model": "msg_ok", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"type": "error", "error": {"type": "invalid_request_error",
                                          "message": "max_tokens: Field required"}})
    );

    let response = post(
        "/v1/messages",
        json!({"model": "msg_200_error", "max_tokens": 5, "stream": true}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");

    let response = post("/v1/embeddings", json!({"model": "emb_ok", "input": "one"}))
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["data"],
        json!([{"object": "embedding", "index": 0, "embedding": EMBEDDING}])
    );

    // The chat route still records as before, and in `calls` too.
    let response = post(
        "/v1/chat/completions",
        json!({"model": "mock_ok", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let recorded = mock.seen.requests.lock().unwrap().len();
    assert_eq!(recorded, mock.seen.calls.lock().unwrap().len());
    assert_eq!(mock.seen.last_call().unwrap().path, "/v1/chat/completions");
}

/// `resp_long` and `msg_long` (the benchmark's streams) answer as many
/// words as asked, a delta each, where `resp_ok` and `msg_ok` stop at 5.
#[tokio::test]
async fn the_long_models_answer_as_many_words_as_asked() {
    let mock = mock();
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("{}{path}", root(&mock)))
            .json(&body)
            .send()
    };
    let deltas = |events: &[(Option<String>, Value)], kind: &str| {
        events
            .iter()
            .filter(|(name, _)| name.as_deref() == Some(kind))
            .count()
    };
    let user = json!([{"role": "user", "content": "hi"}]);
    for (model, words) in [("resp_long", 64), ("resp_ok", ANSWER_WORDS)] {
        let body = json!({"model": model, "input": "hi", "stream": true, "max_output_tokens": 64});
        let text = post("/v1/responses", body)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events = parse_sse(&text);
        assert_eq!(
            deltas(&events, "response.output_text.delta") as u64,
            words,
            "{model}"
        );
        let (_, completed) = events.last().unwrap();
        assert_eq!(completed["response"]["usage"]["output_tokens"], words);
        let body = json!({"model": model, "input": "hi", "max_output_tokens": 64});
        let answer: Value = post("/v1/responses", body)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer["output"][0]["content"][0]["text"],
            ok_words(words),
            "{model}"
        );
    }
    for (model, words) in [("msg_long", 64), ("msg_ok", ANSWER_WORDS)] {
        let body = json!({"model": model, "max_tokens": 64, "stream": true, "messages": user});
        let text = post("/v1/messages", body)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events = parse_sse(&text);
        assert_eq!(
            deltas(&events, "content_block_delta") as u64,
            words,
            "{model}"
        );
        let body = json!({"model": model, "max_tokens": 64, "messages": user});
        let answer: Value = post("/v1/messages", body)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["usage"]["output_tokens"], words, "{model}");
        assert_eq!(answer["content"][0]["text"], ok_words(words), "{model}");
    }
    let short = json!({"model": "msg_long", "max_tokens": 3, "messages": user});
    let answer: Value = post("/v1/messages", short)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["usage"]["output_tokens"], 3);
}
