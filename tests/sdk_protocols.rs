//! The official SDKs (Python `openai` and `anthropic`, pinned in
//! tests/requirements.txt) through Tollgate's `/external`, against `echo`
//! and against the mock upstream speaking each protocol over real sockets
//! (tests/common/mock_upstream.rs); and quirky protocol upstreams as they
//! are found in the wild. In every case what the client received, the
//! `x-compose-key-*` headers and the ledger agree: the charge is the
//! upstream's usage priced (1 atomic unit per input token, 2 per output
//! token), or — where the stream was cut — what was delivered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;

use common::mock_upstream::{self, MockUpstream};
use common::{python, TestApp, UPSTREAM_KEY};
use ledger::model::ChargeRecord;
use ledger::store::Backend;
use ledger::KeyId;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The mock's Responses models (OpenAI protocol) and Messages models
/// (Anthropic protocol), each configured under its own name.
const RESPONSES_MODELS: [&str; 6] = [
    "resp_ok",
    "resp_cut",
    "resp_failed",
    "resp_cached",
    "resp_200_error",
    "emb_ok",
];
const MESSAGES_MODELS: [&str; 6] = [
    "msg_ok",
    "msg_multi_delta",
    "msg_error_after_content",
    "msg_cut",
    "msg_cached",
    "msg_200_error",
];

/// The `*_cached` models' prices of cached and cache-written input: half
/// and 1.25 times the input price (1,000,000 per million).
const CACHED_PER_MILLION: u64 = 500_000;
const CACHE_WRITE_PER_MILLION: u64 = 1_250_000;

/// A charge's price: input at 1 a token (cached input at 0.5, cache writes
/// at 1.25, one ceiling over the three), output at 2.
fn price_of(charge: &ChargeRecord) -> u64 {
    let cached = u64::from(charge.cached_input_tokens);
    let written = u64::from(charge.cache_write_tokens);
    let plain = u64::from(charge.input_tokens) - cached - written;
    let input =
        (plain * 1_000_000 + cached * CACHED_PER_MILLION + written * CACHE_WRITE_PER_MILLION)
            .div_ceil(1_000_000);
    input + 2 * u64::from(charge.output_tokens)
}

async fn spawn(backend: Backend) -> (TestApp, MockUpstream) {
    let mock = mock_upstream::start(TcpListener::bind("127.0.0.1:0").unwrap(), 1, true);
    let mut env: Vec<(String, String)> = Vec::new();
    for (name, protocol) in RESPONSES_MODELS
        .iter()
        .map(|m| (m, "openai"))
        .chain(MESSAGES_MODELS.iter().map(|m| (m, "anthropic")))
    {
        let key = |field: &str| format!("TOLLGATE__MODELS__{}__{field}", name.to_uppercase());
        env.extend([
            (key("UPSTREAM"), mock.base_url.clone()),
            (key("PROTOCOL"), protocol.to_owned()),
            (key("API_KEY"), UPSTREAM_KEY.to_owned()),
            (key("PRICE_VERSION"), "sdk-1".to_owned()),
            (key("INPUT_ATOMIC_PER_MILLION"), "1000000".to_owned()),
            (key("OUTPUT_ATOMIC_PER_MILLION"), "2000000".to_owned()),
            (key("MAX_OUTPUT_TOKENS"), "1000".to_owned()),
        ]);
        if name.ends_with("_cached") {
            env.extend([
                (
                    key("CACHED_INPUT_ATOMIC_PER_MILLION"),
                    CACHED_PER_MILLION.to_string(),
                ),
                (
                    key("CACHE_WRITE_ATOMIC_PER_MILLION"),
                    CACHE_WRITE_PER_MILLION.to_string(),
                ),
            ]);
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = common::spawn_app_with(backend, &env).await;
    (app, mock)
}

/// A section's charge: its `compose.finalAmountWei`, equal to its header
/// when the section has one.
fn amount_of(section: &Value) -> u64 {
    let compose: u64 = section["compose"]["finalAmountWei"]
        .as_str()
        .unwrap_or_else(|| panic!("no compose: {section}"))
        .parse()
        .unwrap();
    if let Some(header) = section["final_amount"].as_str() {
        assert_eq!(
            header.parse::<u64>().unwrap(),
            compose,
            "header and body agree: {section}"
        );
    }
    compose
}

impl TestApp {
    async fn charges_of(&self, key_id: &str) -> Vec<ChargeRecord> {
        self.store
            .charges_for_key(&KeyId::parse(key_id).unwrap())
            .await
            .unwrap()
    }

    /// `budgetUsed` is the sum of the charges, and each charge is its
    /// billed usage priced.
    async fn assert_ledger_consistent(&self, key_id: &str) -> u64 {
        let (used, sum) = self.spent(key_id).await;
        assert_eq!(used, sum, "budgetUsed equals the sum of charges");
        for charge in self.charges_of(key_id).await {
            assert_eq!(
                charge.amount.atomic(),
                price_of(&charge),
                "amount = price(billed usage): {charge:?}"
            );
        }
        used
    }
}

/// Python `openai`'s `responses.create`, `responses.stream` and
/// `embeddings.create`, and `anthropic`'s `messages.create`,
/// `messages.stream` and `messages.count_tokens`, on `echo` and on the
/// mock: each answered, each charged the upstream's usage priced.
async fn the_official_sdks_are_answered_and_charged(backend: Backend) {
    let (app, mock) = spawn(backend).await;
    let key = app.paid_key(100_000).await;
    let openai_base = app.url("/external/v1");
    let anthropic_base = app.url("/external");
    let mut told = 0;

    // Responses on the mock: 7 in, min(3, 5) out = 7 + 6 per call.
    let report = python(
        "responses_client.py",
        &["responses", &openai_base, &key.token, "resp_ok", "3"],
    )
    .await;
    assert!(report["error"].is_null(), "{report}");
    for section in ["create", "stream"] {
        let s = &report[section];
        assert_eq!(s["text"], "ok ok ok", "{section}: {s}");
        assert_eq!(
            (
                s["usage"]["input_tokens"].as_u64(),
                s["usage"]["output_tokens"].as_u64()
            ),
            (Some(7), Some(3))
        );
        assert_eq!(amount_of(s), 13, "{section}");
        told += 13;
    }
    assert_eq!(report["stream"]["terminal"], "response.completed");
    let sent = mock.seen.calls_to("/v1/responses");
    let last = sent.last().unwrap();
    assert_eq!(last.body["max_output_tokens"], 3, "the bound goes upstream");
    assert_eq!(last.body["store"], false, "nothing is stored upstream");
    assert_eq!(
        last.authorization.as_deref(),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );

    // Responses on echo: "hello from python" — 3 in, 3 out.
    let report = python(
        "responses_client.py",
        &["responses", &openai_base, &key.token, "echo"],
    )
    .await;
    assert!(report["error"].is_null(), "{report}");
    for section in ["create", "stream"] {
        assert_eq!(
            amount_of(&report[section]),
            9,
            "{section}: {}",
            report[section]
        );
        told += 9;
    }

    // Embeddings (the SDK asks for base64 and decodes it).
    for (model, amount) in [("emb_ok", 7), ("echo", 2)] {
        let report = python(
            "responses_client.py",
            &["embeddings", &openai_base, &key.token, model],
        )
        .await;
        let e = &report["embeddings"];
        assert_eq!(e["count"], 2, "{report}");
        assert_eq!(amount_of(e), amount, "{model}: {report}");
        told += amount;
    }

    // Messages on the mock: 7 in, min(4, 5) out = 15, both auth styles.
    for auth in ["x-api-key", "bearer"] {
        let report = python(
            "anthropic_client.py",
            &[
                "messages",
                &anthropic_base,
                &key.token,
                "msg_ok",
                "4",
                "--auth",
                auth,
            ],
        )
        .await;
        assert!(report["error"].is_null(), "{auth}: {report}");
        for section in ["create", "stream"] {
            let s = &report[section];
            assert_eq!(s["text"], "ok ok ok ok", "{section}: {s}");
            assert_eq!(s["usage"]["output_tokens"], 4);
            assert_eq!(amount_of(s), 15, "{auth} {section}");
            told += 15;
        }
    }
    let last = mock.seen.calls_to("/v1/messages").pop().unwrap();
    assert_eq!(last.body["max_tokens"], 4);
    assert_eq!(
        last.x_api_key.as_deref(),
        Some(UPSTREAM_KEY),
        "the model's key, not the client's"
    );
    assert!(
        last.authorization.is_none(),
        "the client's key never goes upstream"
    );
    assert!(
        last.anthropic_version.is_some(),
        "the SDK's anthropic-version passes through"
    );

    // Messages on echo, and count_tokens (free) on both.
    let report = python(
        "anthropic_client.py",
        &["messages", &anthropic_base, &key.token, "echo"],
    )
    .await;
    assert!(report["error"].is_null(), "{report}");
    let echo_amount = amount_of(&report["create"]);
    assert_eq!(amount_of(&report["stream"]), echo_amount);
    told += 2 * echo_amount;
    for (model, tokens) in [
        ("msg_ok", 7),
        (
            "echo",
            report["create"]["usage"]["input_tokens"].as_u64().unwrap(),
        ),
    ] {
        let report = python(
            "anthropic_client.py",
            &["count_tokens", &anthropic_base, &key.token, model],
        )
        .await;
        assert_eq!(report["count_tokens"]["input_tokens"], tokens, "{report}");
    }

    assert_eq!(
        app.assert_ledger_consistent(&key.key_id).await,
        told,
        "charged what the clients were told"
    );
}

impl TestApp {
    async fn post(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The key's only charge.
    async fn only_charge(&self, key_id: &str) -> ChargeRecord {
        let mut charges = self.charges_of(key_id).await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        charges.pop().unwrap()
    }
}

/// The `data:` JSON of each SSE event.
fn data_of(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Streams from upstreams that misbehave: cut before their terminal event,
/// failing with usage, reporting usage several times, or an error event
/// after content. Each is charged once, for what was delivered, and what the
/// client saw agrees with the ledger.
async fn quirky_streams_are_charged_for_what_was_delivered(backend: Backend) {
    let (app, _mock) = spawn(backend).await;
    let responses = |model: &str| json!({"model": model, "input": "hello", "stream": true, "max_output_tokens": 100});
    let messages = |model: &str| {
        json!({"model": model, "stream": true, "max_tokens": 100,
                                        "messages": [{"role": "user", "content": "hello"}]})
    };
    // (path, body, the last event's type, the charge's output tokens, reported)
    let cases = [
        // Cut after "ok", " ok": no terminal event; 5 bytes delivered.
        (
            "/external/v1/responses",
            responses("resp_cut"),
            "error",
            5,
            false,
        ),
        // `response.failed` carries usage {7, 2}: charged by it.
        (
            "/external/v1/responses",
            responses("resp_failed"),
            "response.failed",
            2,
            true,
        ),
        // Three cumulative `message_delta`s (1, 3, 5): the last counts.
        (
            "/external/v1/messages",
            messages("msg_multi_delta"),
            "message_stop",
            5,
            true,
        ),
        // An `error` event after "ok", " ok": 5 bytes delivered.
        (
            "/external/v1/messages",
            messages("msg_error_after_content"),
            "error",
            5,
            false,
        ),
        // Cut after two deltas.
        (
            "/external/v1/messages",
            messages("msg_cut"),
            "error",
            5,
            false,
        ),
    ];
    for (path, body, last_type, output, reported) in cases {
        let key = app.paid_key(100_000).await;
        let response = app.post(path, &key.token, &body).await;
        assert_eq!(response.status(), StatusCode::OK, "{body}");
        let events = data_of(&response.text().await.unwrap());
        let last = events.last().unwrap();
        assert_eq!(last["type"], last_type, "{body}: {last}");
        let charge = app.only_charge(&key.key_id).await;
        assert_eq!(
            u64::from(charge.output_tokens),
            output,
            "{body}: {charge:?}"
        );
        assert_eq!(charge.reported.is_some(), reported, "{body}: {charge:?}");
        if last_type != "error" {
            assert_eq!(
                last["compose"]["finalAmountWei"],
                json!(charge.amount.atomic().to_string()),
                "the last event says what the ledger charged"
            );
        }
        if reported {
            assert_eq!(charge.input_tokens, 7, "the upstream's input count");
        }
        app.assert_ledger_consistent(&key.key_id).await;
    }
}

/// Non-streamed quirks: a 200 whose body is an error charges nothing;
/// cached and cache-written input counts are charged as the upstream
/// reported them (Anthropic's cache reads and writes added to the input).
async fn protocol_answers_are_charged_as_reported(backend: Backend) {
    let (app, _mock) = spawn(backend).await;
    let key = app.paid_key(100_000).await;
    for (path, body) in [
        (
            "/external/v1/responses",
            json!({"model": "resp_200_error", "input": "hello"}),
        ),
        (
            "/external/v1/responses",
            json!({"model": "resp_200_error", "input": "hello", "stream": true}),
        ),
        (
            "/external/v1/messages",
            json!({"model": "msg_200_error", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let got = common::json_of(app.post(path, &key.token, &body).await).await;
        common::assert_error(&got, 502, "upstream_error");
    }
    assert_eq!(
        app.spent(&key.key_id).await,
        (0, 0),
        "an error is not charged"
    );

    // The cached prompt is in the request: its bound (a token per byte)
    // covers the 1,000 tokens the upstream reports.
    let long = "hello ".repeat(200);
    let response = app
        .post(
            "/external/v1/responses",
            &key.token,
            &json!({"model": "resp_cached", "input": long, "max_output_tokens": 2}),
        )
        .await;
    let amount = common::header_amount(&response, "x-compose-key-final-amount-wei");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["input_tokens_details"]["cached_tokens"], 800);
    assert_eq!(
        amount,
        200 + 400 + 2 * 2,
        "1,000 input tokens (800 of them cached, at half price), 2 out"
    );

    let response = app.post("/external/v1/messages", &key.token, &json!({"model": "msg_cached", "max_tokens": 2, "messages": [{"role": "user", "content": long}]})).await;
    let amount = common::header_amount(&response, "x-compose-key-final-amount-wei");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (
            body["usage"]["input_tokens"].as_u64(),
            body["usage"]["cache_read_input_tokens"].as_u64(),
            body["usage"]["cache_creation_input_tokens"].as_u64()
        ),
        (Some(100), Some(800), Some(50)),
        "{body}"
    );
    // 100 plain, 800 read at half price, 50 written at 1.25: ⌈562.5⌉; 2 out.
    assert_eq!(amount, 563 + 2 * 2);
    let charges = app.charges_of(&key.key_id).await;
    assert!(
        charges.iter().any(
            |c| (c.input_tokens, c.cached_input_tokens, c.cache_write_tokens) == (950, 800, 50)
        ),
        "the charge records each count: {charges:?}"
    );
    app.assert_ledger_consistent(&key.key_id).await;
}

both_stores!(
    the_official_sdks_are_answered_and_charged,
    quirky_streams_are_charged_for_what_was_delivered,
    protocol_answers_are_charged_as_reported,
);
