//! The paid path against OpenAI-compatible upstreams as they are found in the
//! wild (docs/paid-path.md; invariant 8: what a client received is paid
//! for, and what is not received is not). Each quirk is a model of the mock
//! upstream (`tests/common/mock_upstream.rs`, real sockets, kept-alive
//! connections, chunked SSE). For every case the test checks what the client
//! received, what the ledger charged and what the headers said, and that
//! `budgetUsed` equals the sum of the charges.
//!
//! Prices: 1 atomic unit per input token, 2 per output token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;

use common::mock_upstream::{self, MockUpstream, PROMPT_TOKENS};
use common::{header_amount, spawn_app_with, sse_events, TestApp};
use ledger::model::ChargeRecord;
use ledger::store::Backend;
use ledger::KeyId;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `quirk_cached`'s price of a cached input token, per million: a quarter
/// of its other input tokens' (1 atomic unit each). Its mock answers with
/// 7 prompt tokens, 4 of them cached, and 5 output tokens (2 units each):
/// `⌈3 × 1 + 4 × 0.25⌉ + 5 × 2` = [`CACHED_CALL_ATOMIC`], where the same
/// usage uncached costs 17.
const CACHED_INPUT_PRICE: u64 = 250_000;

/// What a `quirk_cached` call costs (see [`CACHED_INPUT_PRICE`]).
const CACHED_CALL_ATOMIC: u64 = 14;

/// A configured model: its name, the mock model it calls, extra settings.
type QuirkModel = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The server with each quirk as a model of its own name, plus `lenient`
/// (`quirk_no_usage` with `require_usage = false`), `completion_only`
/// (`quirk_max_tokens` told to take the bound in `max_completion_tokens`
/// only), `tiered` (`mock_ok`, forwarding `service_tier`) and `quirk_cached`
/// (its cached input tokens at [`CACHED_INPUT_PRICE`]).
async fn spawn_quirks(backend: Backend) -> (TestApp, MockUpstream) {
    let mock = mock_upstream::start(TcpListener::bind("127.0.0.1:0").unwrap(), 1, true);
    let mut env: Vec<(String, String)> = vec![
        (
            "TOLLGATE__GATEWAY__UPSTREAM_TIMEOUT_MS".into(),
            "2000".into(),
        ),
        (
            "TOLLGATE__GATEWAY__STREAM_IDLE_TIMEOUT_MS".into(),
            "800".into(),
        ),
    ];
    let cached_price = CACHED_INPUT_PRICE.to_string();
    let models: [QuirkModel; 13] = [
        ("quirk_tools", "quirk_tools", &[]),
        ("quirk_max_tokens", "quirk_max_tokens", &[]),
        ("quirk_stall", "quirk_stall", &[]),
        ("quirk_200_error", "quirk_200_error", &[]),
        ("quirk_usage_every_chunk", "quirk_usage_every_chunk", &[]),
        ("quirk_float_usage", "quirk_float_usage", &[]),
        ("quirk_huge_usage", "quirk_huge_usage", &[]),
        ("quirk_no_usage", "quirk_no_usage", &[]),
        ("mock_broken_stream", "mock_broken_stream", &[]),
        ("lenient", "quirk_no_usage", &[("REQUIRE_USAGE", "false")]),
        (
            "completion_only",
            "quirk_max_tokens",
            &[("MAX_TOKENS_FIELDS", "max_completion_tokens")],
        ),
        ("tiered", "mock_ok", &[("FORWARD_FIELDS", "service_tier")]),
        ("quirk_cached", "quirk_cached", &[]),
    ];
    for (name, upstream_model, extra) in models {
        let key = |field: &str| format!("TOLLGATE__MODELS__{}__{field}", name.to_uppercase());
        env.extend([
            (key("UPSTREAM"), mock.base_url.clone()),
            (key("UPSTREAM_MODEL"), upstream_model.to_owned()),
            (key("PRICE_VERSION"), "quirks-1".to_owned()),
            (key("INPUT_ATOMIC_PER_MILLION"), "1000000".to_owned()),
            (key("OUTPUT_ATOMIC_PER_MILLION"), "2000000".to_owned()),
            (key("MAX_OUTPUT_TOKENS"), "1000".to_owned()),
        ]);
        env.extend(extra.iter().map(|(k, v)| (key(k), (*v).to_owned())));
        if name == "quirk_cached" {
            env.push((key("CACHED_INPUT_ATOMIC_PER_MILLION"), cached_price.clone()));
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    (spawn_app_with(backend, &env).await, mock)
}

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "max_tokens": 100,
           "messages": [{"role": "user", "content": "hello"}]})
}

impl TestApp {
    async fn charges_of(&self, key_id: &str) -> Vec<ChargeRecord> {
        self.store
            .charges_for_key(&KeyId::parse(key_id).unwrap())
            .await
            .unwrap()
    }

    /// The ledger agrees with itself: `budgetUsed` is the sum of the
    /// charges, and each charge is exactly its billed usage's price.
    async fn assert_ledger_consistent(&self, key_id: &str) {
        let (used, sum) = self.spent(key_id).await;
        assert_eq!(used, sum, "budgetUsed equals the sum of charges");
        for charge in self.charges_of(key_id).await {
            assert_eq!(
                charge.amount.atomic(),
                u64::from(charge.input_tokens) + 2 * u64::from(charge.output_tokens),
                "amount = price(billed usage): {charge:?}"
            );
        }
    }
}

/// The text of a stream's content deltas, in order.
fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Finding 1: usage is requested for every stream whatever the client sent
/// (`null` here, as the official client sends for `stream_options=None`),
/// and tool-call output is paid by the upstream's count.
async fn usage_is_always_requested(backend: Backend) {
    let (app, mock) = spawn_quirks(backend).await;
    let key = app.paid_key(10_000).await;
    let mut body = ask("quirk_tools", true);
    body["stream_options"] = Value::Null;
    let response = app.chat(&key.token, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = sse_events(&response.text().await.unwrap());
    let tool_chunks = events
        .iter()
        .filter(|e| e.contains("\"tool_calls\""))
        .count();
    assert_eq!(tool_chunks, 10, "every tool-call piece reached the client");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(
        last.get("usage").is_none(),
        "the client did not ask for usage"
    );
    // 7 in + 100 out × 2, as the upstream counted.
    assert_eq!(last["compose"]["finalAmountWei"], "207");
    let seen = mock.seen.requests.lock().unwrap().clone();
    assert_eq!(
        seen.last().unwrap().0["stream_options"]["include_usage"],
        true
    );
    let charges = app.charges_of(&key.key_id).await;
    assert_eq!(charges[0].reported, Some((PROMPT_TOKENS as u32, 100)));
    app.assert_ledger_consistent(&key.key_id).await;
}

/// Finding 2: the afforded bound goes in every length field the upstream
/// may honour, so an upstream reading only `max_tokens` cannot generate
/// past what the hold pays; a model may name one field only.
async fn the_bound_goes_in_every_length_field(backend: Backend) {
    let (app, mock) = spawn_quirks(backend).await;
    let key = app.paid_key(10_000).await;
    let body = json!({"model": "quirk_max_tokens", "max_completion_tokens": 1,
                      "messages": [{"role": "user", "content": "hello"}]});
    let response = app.chat(&key.token, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_amount(&response, "x-compose-key-final-amount-wei"),
        9
    );
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"], "ok",
        "one token"
    );
    let seen = mock.seen.requests.lock().unwrap().clone();
    let sent = &seen.last().unwrap().0;
    assert_eq!(
        (&sent["max_tokens"], &sent["max_completion_tokens"]),
        (&json!(1), &json!(1))
    );

    let response = app.chat(&key.token, &ask("completion_only", false)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let sent = mock.seen.requests.lock().unwrap().last().unwrap().0.clone();
    assert_eq!(sent["max_completion_tokens"], 100);
    assert!(
        sent.get("max_tokens").is_none(),
        "the model names one field"
    );
    app.assert_ledger_consistent(&key.key_id).await;
}

/// Finding 3: output that reached the client is paid, whatever ends the
/// stream — an upstream that stalls past the idle timeout, or cuts the
/// connection. Without usage the charge is an estimate (the prompt's bound
/// and the output's bytes), marked so in the ledger.
async fn delivered_output_is_paid_whatever_ends_the_stream(backend: Backend) {
    let (app, _mock) = spawn_quirks(backend).await;
    for model in ["quirk_stall", "mock_broken_stream"] {
        let key = app.paid_key(10_000).await;
        let response = app.chat(&key.token, &ask(model, true)).await;
        assert_eq!(response.status(), StatusCode::OK, "{model}");
        let events = sse_events(&response.text().await.unwrap());
        let received = streamed_text(&events);
        assert!(!received.is_empty(), "{model}: words went out");
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "upstream_error", "{model}");
        assert!(!events.iter().any(|e| e == "[DONE]"));
        let charges = app.charges_of(&key.key_id).await;
        assert_eq!(charges.len(), 1, "{model}: the delivered words are charged");
        assert_eq!(charges[0].reported, None, "{model}: an estimate, marked");
        assert!(
            u64::from(charges[0].output_tokens) >= received.len() as u64,
            "{model}: {} output tokens for {:?}",
            charges[0].output_tokens,
            received
        );
        app.assert_ledger_consistent(&key.key_id).await;
    }
}

/// Finding 4: a 200 that is not a completion (an error object, or JSON
/// where a stream was asked) is an upstream error: 502, nothing charged.
async fn an_answer_that_is_not_a_completion_is_not_charged(backend: Backend) {
    let (app, _mock) = spawn_quirks(backend).await;
    let key = app.paid_key(10_000).await;
    for stream in [false, true] {
        let response = app.chat(&key.token, &ask("quirk_200_error", stream)).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_GATEWAY,
            "stream: {stream}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "upstream_error");
        assert!(body.get("compose").is_none());
    }
    assert_eq!(app.spent(&key.key_id).await, (0, 0));
}

/// Finding 5: content in chunks that also carry (cumulative) usage reaches
/// the client in order, and usage is reported once, at the end.
async fn content_beside_usage_reaches_the_client(backend: Backend) {
    let (app, _mock) = spawn_quirks(backend).await;
    let key = app.paid_key(10_000).await;
    let mut body = ask("quirk_usage_every_chunk", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = app.chat(&key.token, &body).await;
    let events = sse_events(&response.text().await.unwrap());
    assert_eq!(streamed_text(&events), " w0 w1 w2 w3 w4 w5 w6 w7 w8 w9");
    let with_usage: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|c| c.get("usage").is_some_and(|u| !u.is_null()))
        .collect();
    assert_eq!(with_usage.len(), 1, "usage reported once");
    assert_eq!(with_usage[0]["usage"]["completion_tokens"], 10);
    assert_eq!(with_usage[0]["compose"]["finalAmountWei"], "27");
    assert_eq!(app.spent(&key.key_id).await, (27, 27));
    app.assert_ledger_consistent(&key.key_id).await;
}

/// Finding 6: without usage a non-streamed answer is an upstream error for
/// a model that requires usage (the default); a model that does not gets an
/// estimate, marked in the ledger and the answer, never above the hold.
async fn missing_usage_is_an_error_or_a_marked_estimate(backend: Backend) {
    let (app, _mock) = spawn_quirks(backend).await;
    let key = app.paid_key(100_000).await;
    let response = app.chat(&key.token, &ask("quirk_no_usage", false)).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(app.spent(&key.key_id).await, (0, 0));

    let response = app.chat(&key.token, &ask("lenient", false)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let amount = header_amount(&response, "x-compose-key-final-amount-wei");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["compose"]["estimated"], true);
    let charges = app.charges_of(&key.key_id).await;
    assert_eq!(charges[0].reported, None);
    assert_eq!(charges[0].amount.atomic(), amount);
    let listed: Value = app
        .client
        .get(app.url(&format!("/api/keys/{}/charges", key.key_id)))
        .bearer_auth(&key.session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["charges"][0]["estimated"], true, "{listed}");
    assert!(listed["charges"][0]["reportedOutputTokens"].is_null());
    // The answer's 5 words, "ok ok ok ok ok", are 14 bytes of output.
    assert_eq!(charges[0].output_tokens, 14);
    assert_eq!(
        answer["usage"]["completion_tokens"], 14,
        "the answer says what was billed"
    );
    app.assert_ledger_consistent(&key.key_id).await;
}

/// Finding 7: each charge stores the usage reported and the usage billed,
/// with the amount exactly the billed usage's price; integer-valued floats
/// are usage; a 402's headers and body agree.
async fn ledger_rows_agree_with_their_amounts(backend: Backend) {
    let (app, _mock) = spawn_quirks(backend).await;
    let key = app.paid_key(100_000).await;
    let response = app.chat(&key.token, &ask("quirk_float_usage", false)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_amount(&response, "x-compose-key-final-amount-wei"),
        17
    );

    let response = app.chat(&key.token, &ask("quirk_huge_usage", false)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let amount = header_amount(&response, "x-compose-key-final-amount-wei");
    let answer: Value = response.json().await.unwrap();
    let charges = app.charges_of(&key.key_id).await;
    let huge = charges
        .iter()
        .find(|c| c.amount.atomic() == amount)
        .unwrap();
    assert_eq!(huge.reported, Some((1_000_000, 1_000_000)));
    assert!(
        huge.input_tokens < 1_000_000 && huge.output_tokens <= 100,
        "{huge:?}"
    );
    assert_eq!(
        answer["usage"]["completion_tokens"], huge.output_tokens,
        "the answer's usage is the usage billed"
    );
    app.assert_ledger_consistent(&key.key_id).await;

    // A 402: the body's `remaining` is the headers' `budget-remaining`.
    let small = app.paid_key(3).await;
    let response = app
        .chat(&small.token, &ask("quirk_float_usage", false))
        .await;
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let remaining = header_amount(&response, "x-compose-key-budget-remaining");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["details"]["remaining"], remaining.to_string());
}

/// Finding 8: only known fields reach the upstream; a field that changes
/// what the upstream bills is refused unless the model forwards (prices) it.
async fn only_known_fields_reach_the_upstream(backend: Backend) {
    let (app, mock) = spawn_quirks(backend).await;
    let key = app.paid_key(10_000).await;
    let before = mock.seen.requests.lock().unwrap().len();
    for (model, field) in [
        ("quirk_float_usage", "service_tier"),
        ("quirk_float_usage", "frobnicate"),
    ] {
        let mut body = ask(model, false);
        body[field] = json!("priority");
        let response = app.chat(&key.token, &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{field}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["param"], field);
        assert_eq!(body["error"]["code"], "unsupported_parameter");
    }
    assert_eq!(
        mock.seen.requests.lock().unwrap().len(),
        before,
        "nothing went upstream"
    );
    assert_eq!(app.spent(&key.key_id).await, (0, 0));

    let mut body = ask("tiered", false);
    body["service_tier"] = json!("priority");
    let response = app.chat(&key.token, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let sent = mock.seen.requests.lock().unwrap().last().unwrap().0.clone();
    assert_eq!(
        sent["service_tier"], "priority",
        "forwarded where configured"
    );
    app.assert_ledger_consistent(&key.key_id).await;
}

/// Finding 9: an upstream's cached prompt tokens (OpenAI's
/// `usage.prompt_tokens_details.cached_tokens`, a part of `prompt_tokens`)
/// are charged at the model's cached-input price — one ceiling over the
/// input's parts — and the header, the body's usage, the ledger's row, the
/// charges listing and `budgetUsed` all say so, streamed and not. The
/// models listing shows the price, and the cache-write price defaulting to
/// the input price.
async fn cached_input_tokens_are_charged_at_their_price(backend: Backend) {
    let (app, _mock) = spawn_quirks(backend).await;
    let key = app.paid_key(10_000).await;
    let response = app.chat(&key.token, &ask("quirk_cached", false)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header_amount(&response, "x-compose-key-final-amount-wei"),
        CACHED_CALL_ATOMIC
    );
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    assert_eq!(
        answer["compose"]["budgetUsed"],
        CACHED_CALL_ATOMIC.to_string()
    );

    let mut body = ask("quirk_cached", true);
    body["stream_options"] = json!({"include_usage": true});
    let response = app.chat(&key.token, &body).await;
    let events = sse_events(&response.text().await.unwrap());
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(
        last["compose"]["finalAmountWei"],
        CACHED_CALL_ATOMIC.to_string()
    );
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    let spent = 2 * CACHED_CALL_ATOMIC;
    assert_eq!(app.spent(&key.key_id).await, (spent, spent));

    let charges = app.charges_of(&key.key_id).await;
    assert_eq!(charges.len(), 2);
    for charge in &charges {
        assert_eq!(
            (
                charge.input_tokens,
                charge.cached_input_tokens,
                charge.cache_write_tokens,
                charge.output_tokens
            ),
            (PROMPT_TOKENS as u32, 4, 0, 5)
        );
        assert_eq!(charge.reported, Some((PROMPT_TOKENS as u32, 5)));
        assert_eq!(charge.reported_cache, Some((4, 0)));
        assert_eq!(charge.amount.atomic(), CACHED_CALL_ATOMIC);
    }
    let listed: Value = app
        .client
        .get(app.url(&format!("/api/keys/{}/charges", key.key_id)))
        .bearer_auth(&key.session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = &listed["charges"][0];
    assert_eq!(
        (
            &listed["cachedInputTokens"],
            &listed["cacheWriteTokens"],
            &listed["reportedCachedInputTokens"],
            &listed["reportedCacheWriteTokens"]
        ),
        (&json!(4), &json!(0), &json!(4), &json!(0)),
        "{listed}"
    );

    let models: Value = app
        .client
        .get(app.url("/external/v1/models"))
        .bearer_auth(&key.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pricing = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "quirk_cached")
        .unwrap()["pricing"]
        .clone();
    assert_eq!(
        pricing["cachedInputAtomicPerMillion"],
        CACHED_INPUT_PRICE.to_string()
    );
    assert_eq!(pricing["cacheWriteAtomicPerMillion"], "1000000");
    assert_eq!(pricing["inputAtomicPerMillion"], "1000000");
}

both_stores!(
    usage_is_always_requested,
    the_bound_goes_in_every_length_field,
    delivered_output_is_paid_whatever_ends_the_stream,
    an_answer_that_is_not_a_completion_is_not_charged,
    content_beside_usage_reaches_the_client,
    missing_usage_is_an_error_or_a_marked_estimate,
    ledger_rows_agree_with_their_amounts,
    only_known_fields_reach_the_upstream,
    cached_input_tokens_are_charged_at_their_price,
);
