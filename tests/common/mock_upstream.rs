//! A mock OpenAI-compatible upstream on a real socket, for the tests and the
//! gateway benchmark: `POST /v1/chat/completions`, streamed (SSE) or not;
//! plus the OpenAI Responses API (`POST /v1/responses`), the Anthropic
//! Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`) and
//! OpenAI embeddings (`POST /v1/embeddings`), each as the official Python
//! SDKs expect them on the wire (tests/mock_protocols.rs proves it).
//!
//! What it does is chosen by the `model` the gateway sends. Chat completions:
//! * `mock_ok` — answers `ok` words, `min(max_tokens, 5)` of them, with usage
//!   `{prompt_tokens: 7, completion_tokens: n}`; streams a chunk per word
//!   and, when asked with `stream_options.include_usage`, a usage chunk.
//! * `mock_500` — answers 500 with an OpenAI error body.
//! * `mock_delayed` — answers as `mock_ok`, after 400 ms.
//! * `mock_slow` — answers after 5 s (longer than the tests' timeout).
//! * `mock_broken_stream` — streams two words, then cuts the connection.
//! * `quirk_*` — upstreams as they are found in the wild (tests/upstream_quirks.rs):
//!   `quirk_tools` streams 10 tool-call argument pieces of 20 bytes and
//!   usage `{7, 100}` only when asked; `quirk_max_tokens` honours only
//!   `max_tokens` (300 words without it); `quirk_stall` streams 3 words and
//!   then nothing; `quirk_200_error` answers 200 with an error object (JSON
//!   also when a stream was asked); `quirk_usage_every_chunk` puts
//!   cumulative usage in every word's chunk (vLLM); `quirk_float_usage`
//!   reports `7.0`/`5.0`; `quirk_huge_usage` reports 10⁶/10⁶ tokens;
//!   `quirk_no_usage` reports none.
//! * `mock_flood` — streams `max_tokens` chunks of [`FLOOD_CHUNK_BYTES`]
//!   each (one token a chunk), as fast as they are read: megabytes, more
//!   than socket buffers hold for a client that stops reading.
//!
//!
//! Responses (`/v1/responses`), `n = min(max_output_tokens (absent: 5), 5)`
//! words `ok`; streams are `event: <type>` / `data: <json>` with a
//! `sequence_number` in every event, and no `[DONE]`:
//! * `resp_ok` (and any model not below) — a `completed` Response, usage
//!   `{input_tokens: 7 (cached 0), output_tokens: n}`; streamed as
//!   `response.created`, `response.in_progress`, `response.output_item.added`,
//!   `response.content_part.added`, n × `response.output_text.delta` (`ok`,
//!   ` ok`, …), `response.output_text.done`, `response.content_part.done`,
//!   `response.output_item.done`, `response.completed` (with the usage).
//! * `resp_cut` — streams up to 2 deltas, then cuts the connection (no
//!   terminal event); not streamed, cuts the JSON body half way.
//! * `resp_failed` — streams up to 2 deltas, then `response.failed`
//!   (status `failed`, `error.code` `server_error`, usage `{7, 2}`); not
//!   streamed, a `failed` Response with that error and usage.
//! * `resp_incomplete` — as `resp_ok`, but status `incomplete`,
//!   `incomplete_details.reason` `max_output_tokens`, terminal event
//!   `response.incomplete`; usage `{7, n}`.
//! * `resp_long` — as `resp_ok`, but `n = min(max_output_tokens (absent:
//!   300), 300)`: a stream as long as asked, one delta a word (the
//!   benchmark's streams, as `quirk_max_tokens` is for chat).
//! * `resp_cached` — as `resp_ok`, with usage `{input_tokens: 1000
//!   (input_tokens_details.cached_tokens 800), output_tokens: n}`.
//! * `resp_200_error` — 200 with an OpenAI error object (JSON also when a
//!   stream was asked).
//!
//! Anthropic Messages (`/v1/messages`), `n = min(max_tokens, 5)` words;
//! `max_tokens` is required (400 `invalid_request_error` without it); streams
//! carry `event:` lines as Anthropic sends them:
//! * `msg_ok` (and any model not below) — a Message, `stop_reason`
//!   `end_turn`, usage `{input_tokens: 7, output_tokens: n, cache_* 0}`;
//!   streamed as `message_start` (usage `{7, 1}`), `content_block_start`,
//!   `ping`, n × `content_block_delta` (`ok`, ` ok`, …), `content_block_stop`,
//!   `message_delta` (usage `{output_tokens: n}`), `message_stop`.
//! * `msg_long` — as `msg_ok`, but `n = min(max_tokens, 300)`: a stream
//!   as long as asked (the benchmark's, as `quirk_max_tokens` is for chat).
//! * `msg_multi_delta` — as `msg_ok`, but streams three `message_delta`s
//!   with cumulative `output_tokens` 1, 3, n (each ≤ n): the last counts.
//! * `msg_error_after_content` — streams 2 deltas, then `event: error`
//!   (`overloaded_error`) and ends; not streamed, 529 `overloaded_error`.
//! * `msg_cut` — streams 2 deltas, then cuts the connection; not streamed,
//!   cuts the JSON body half way.
//! * `msg_cached` — usage `{input_tokens: 100, cache_read_input_tokens: 800,
//!   cache_creation_input_tokens: 50, output_tokens: n}` (in
//!   `message_start` when streamed).
//! * `msg_200_error` — 200 with an Anthropic error object (`api_error`),
//!   JSON also when a stream was asked.
//! * `/v1/messages/count_tokens` — `{"input_tokens": 7}` for any model.
//!
//! Embeddings (`/v1/embeddings`), any model (`emb_ok`): one embedding per
//! input (a string, or an array of strings or of token arrays), each
//! [`EMBEDDING`]; as base64 of little-endian `f32`s when asked with
//! `encoding_format: "base64"` (what the official Python SDK sends), usage
//! `{prompt_tokens: 7, total_tokens: 7}`.
//!
//! Every request body and its `Authorization` header are kept for asserts
//! (`Seen::requests`), and every request's path, auth and Anthropic headers
//! with its body (`Seen::calls`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use serde_json::{json, Value};

pub const PROMPT_TOKENS: u64 = 7;
pub const ANSWER_WORDS: u64 = 5;
/// The most words `resp_long` and `msg_long` answer (and `quirk_max_tokens`
/// without a `max_tokens`).
pub const LONG_ANSWER_WORDS: u64 = 300;
pub const FLOOD_CHUNK_BYTES: usize = 4096;

/// The embedding the mock answers for every input.
pub const EMBEDDING: [f32; 3] = [0.5, 0.25, 0.125];
/// The input tokens of a `msg_cached` answer: uncached, read from the cache,
/// written to it.
pub const MSG_CACHED_USAGE: (u64, u64, u64) = (100, 800, 50);
/// The input tokens of a `resp_cached` answer: all of them, and those cached.
pub const RESP_CACHED_USAGE: (u64, u64) = (1000, 800);

/// What the mock received.
#[derive(Default)]
pub struct Seen {
    /// Every request's body and `Authorization` header.
    pub requests: Mutex<Vec<(Value, Option<String>)>>,
    /// Every request, with its path and the headers an upstream checks.
    pub calls: Mutex<Vec<Call>>,
}

/// A request the mock received.
#[derive(Clone, Debug)]
pub struct Call {
    /// E.g. `/v1/messages`.
    pub path: String,
    pub authorization: Option<String>,
    pub x_api_key: Option<String>,
    pub anthropic_version: Option<String>,
    pub anthropic_beta: Option<String>,
    pub body: Value,
}

impl Seen {
    /// The calls to `path`, oldest first.
    pub fn calls_to(&self, path: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|call| call.path == path)
            .cloned()
            .collect()
    }

    /// The last call, to any path.
    pub fn last_call(&self) -> Option<Call> {
        self.calls.lock().unwrap().last().cloned()
    }

    fn record(&self, req: &HttpRequest, body: &Value) {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        self.requests
            .lock()
            .unwrap()
            .push((body.clone(), header("authorization")));
        self.calls.lock().unwrap().push(Call {
            path: req.path().to_owned(),
            authorization: header("authorization"),
            x_api_key: header("x-api-key"),
            anthropic_version: header("anthropic-version"),
            anthropic_beta: header("anthropic-beta"),
            body: body.clone(),
        });
    }
}

pub struct MockUpstream {
    pub base_url: String,
    pub seen: Arc<Seen>,
}

/// Starts the mock on `listener` with `workers` threads; serves until the
/// process ends. `keep` = false skips recording (the benchmark).
pub fn start(listener: TcpListener, workers: usize, keep: bool) -> MockUpstream {
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let data = web::Data::new((seen.clone(), keep));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/chat/completions", web::post().to(chat))
            .route("/v1/responses", web::post().to(responses))
            .route("/v1/messages", web::post().to(messages))
            .route("/v1/messages/count_tokens", web::post().to(count_tokens))
            .route("/v1/embeddings", web::post().to(embeddings))
    })
    .workers(workers)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    MockUpstream {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        seen,
    }
}

async fn chat(
    data: web::Data<(Arc<Seen>, bool)>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    let body = body.into_inner();
    if data.1 {
        data.0.record(&req, &body);
    }
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let max_tokens = body["max_tokens"]
        .as_u64()
        .or(body["max_completion_tokens"].as_u64())
        .unwrap_or(16);
    let words = max_tokens.min(ANSWER_WORDS);
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    match model.as_str() {
        "mock_500" => HttpResponse::InternalServerError().json(
            json!({"error": {"message": "upstream exploded", "type": "server_error", "code": null}}),
        ),
        "mock_delayed" => {
            tokio::time::sleep(Duration::from_millis(400)).await;
            HttpResponse::Ok().json(completion(&model, words))
        }
        "mock_slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            HttpResponse::Ok().json(completion(&model, words))
        }
        "mock_broken_stream" => {
            let chunks = vec![
                Ok::<_, std::io::Error>(event(&chunk(&model, "ok"))),
                Ok(event(&chunk(&model, " ok"))),
                Err(std::io::Error::other("connection cut")),
            ];
            // Paced, so the head and first words are on the wire before the cut.
            let paced = futures_util::stream::iter(chunks).then(|item| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                item
            });
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(paced)
        }
        "quirk_tools" => {
            let mut chunks: Vec<Result<web::Bytes, std::io::Error>> = (0..10)
                .map(|i| {
                    Ok(event(&json!({
                        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                        "model": model,
                        "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
                            "function": {"arguments": format!("{{\"k{i}\":\"{}\"}}", "x".repeat(12))}}]},
                            "finish_reason": null}]
                    })))
                })
                .collect();
            if include_usage {
                chunks.push(Ok(event(&json!({
                    "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                    "model": model, "choices": [],
                    "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 100,
                              "total_tokens": PROMPT_TOKENS + 100}
                }))));
            }
            chunks.push(Ok(web::Bytes::from_static(b"data: [DONE]\n\n")));
            sse_response(chunks)
        }
        "quirk_max_tokens" => {
            let words = body["max_tokens"].as_u64().unwrap_or(LONG_ANSWER_WORDS);
            if !stream {
                return HttpResponse::Ok().json(completion(&model, words));
            }
            let mut chunks: Vec<Result<web::Bytes, std::io::Error>> = (0..words)
                .map(|_| Ok(event(&chunk(&model, " ok"))))
                .collect();
            chunks.push(Ok(event(&usage_chunk(&model, words))));
            chunks.push(Ok(web::Bytes::from_static(b"data: [DONE]\n\n")));
            sse_response(chunks)
        }
        "quirk_stall" => {
            let words = futures_util::stream::iter(
                ["ok", " ok", " ok"].map(|w| Ok::<_, std::io::Error>(event(&chunk(&model, w)))),
            );
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(words.chain(futures_util::stream::pending()))
        }
        "quirk_200_error" => HttpResponse::Ok().json(
            json!({"error": {"message": "quota exceeded", "type": "insufficient_quota", "code": null}}),
        ),
        "quirk_usage_every_chunk" => {
            let mut chunks: Vec<Result<web::Bytes, std::io::Error>> = (0..10u64)
                .map(|i| {
                    let mut c = chunk(&model, &format!(" w{i}"));
                    c["usage"] = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": i + 1,
                                        "total_tokens": PROMPT_TOKENS + i + 1});
                    Ok(event(&c))
                })
                .collect();
            chunks.push(Ok(web::Bytes::from_static(b"data: [DONE]\n\n")));
            sse_response(chunks)
        }
        "quirk_float_usage" | "quirk_huge_usage" | "quirk_no_usage" => {
            let mut answer = completion(&model, words);
            match model.as_str() {
                "quirk_float_usage" => {
                    answer["usage"] = json!({"prompt_tokens": 7.0, "completion_tokens": 5.0,
                                             "total_tokens": 12.0});
                }
                "quirk_huge_usage" => {
                    answer["usage"] = json!({"prompt_tokens": 1_000_000,
                                             "completion_tokens": 1_000_000,
                                             "total_tokens": 2_000_000});
                }
                _ => {
                    if let Value::Object(map) = &mut answer {
                        map.remove("usage");
                    }
                }
            }
            HttpResponse::Ok().json(answer)
        }
        "quirk_cached" => {
            // As `mock_ok`, its usage saying that 4 of the 7 prompt tokens
            // were read from the upstream's prompt cache (OpenAI's shape).
            let cached = json!({"cached_tokens": 4, "audio_tokens": 0});
            if !stream {
                let mut answer = completion(&model, words);
                answer["usage"]["prompt_tokens_details"] = cached;
                return HttpResponse::Ok().json(answer);
            }
            let mut chunks: Vec<Result<web::Bytes, std::io::Error>> = (0..words)
                .map(|_| Ok(event(&chunk(&model, " ok"))))
                .collect();
            let mut usage = usage_chunk(&model, words);
            usage["usage"]["prompt_tokens_details"] = cached;
            chunks.push(Ok(event(&usage)));
            chunks.push(Ok(web::Bytes::from_static(b"data: [DONE]\n\n")));
            sse_response(chunks)
        }
        "mock_flood" => {
            let text = "x".repeat(FLOOD_CHUNK_BYTES);
            let mut chunks: Vec<Result<web::Bytes, std::io::Error>> = (0..max_tokens)
                .map(|_| Ok(event(&chunk(&model, &text))))
                .collect();
            if include_usage {
                chunks.push(Ok(event(&usage_chunk(&model, max_tokens))));
            }
            chunks.push(Ok(web::Bytes::from_static(b"data: [DONE]\n\n")));
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(futures_util::stream::iter(chunks))
        }
        _ if stream => {
            let mut chunks: Vec<Result<web::Bytes, std::io::Error>> = (0..words)
                .map(|i| Ok(event(&chunk(&model, if i == 0 { "ok" } else { " ok" }))))
                .collect();
            if include_usage {
                chunks.push(Ok(event(&usage_chunk(&model, words))));
            }
            chunks.push(Ok(web::Bytes::from_static(b"data: [DONE]\n\n")));
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(futures_util::stream::iter(chunks))
        }
        _ => HttpResponse::Ok().json(completion(&model, words)),
    }
}

fn completion(model: &str, words: u64) -> Value {
    let content = vec!["ok"; words as usize].join(" ");
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": words,
                  "total_tokens": PROMPT_TOKENS + words}
    })
}

fn chunk(model: &str, text: &str) -> Value {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]
    })
}

/// The last chunk of a stream asked with `include_usage`.
fn usage_chunk(model: &str, completion_tokens: u64) -> Value {
    json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
        "model": model, "choices": [],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens,
                  "total_tokens": PROMPT_TOKENS + completion_tokens}
    })
}

fn sse_response(chunks: Vec<Result<web::Bytes, std::io::Error>>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(futures_util::stream::iter(chunks))
}

fn event(json: &Value) -> web::Bytes {
    web::Bytes::from(format!("data: {json}\n\n"))
}

type Chunks = Vec<Result<web::Bytes, std::io::Error>>;

/// The request body as JSON, or the 400 an upstream answers (with an
/// Anthropic error body when `anthropic`).
fn json_body(body: &[u8], anthropic: bool) -> Result<Value, Box<HttpResponse>> {
    serde_json::from_slice(body).map_err(|e| {
        let message = format!("invalid JSON body: {e}");
        Box::new(HttpResponse::BadRequest().json(if anthropic {
            anthropic_error("invalid_request_error", &message)
        } else {
            json!({"error": {"message": message, "type": "invalid_request_error",
                             "param": null, "code": null}})
        }))
    })
}

/// `items`, 50 ms apart (so the head and the first events are on the wire),
/// then a cut connection: no terminal chunk.
fn cut_after(content_type: &str, items: Vec<web::Bytes>) -> HttpResponse {
    let items: Chunks = items
        .into_iter()
        .map(Ok)
        .chain([Err(std::io::Error::other("connection cut"))])
        .collect();
    let paced = futures_util::stream::iter(items).then(|item| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        item
    });
    HttpResponse::Ok()
        .content_type(content_type.to_owned())
        .streaming(paced)
}

/// `json` cut half way, as a body.
fn half_of(json: &Value) -> web::Bytes {
    let text = json.to_string().into_bytes();
    web::Bytes::copy_from_slice(&text[..text.len() / 2])
}

/// `"ok"`, `" ok"`, …: `words` text deltas that join into `ok ok …`.
fn ok_deltas(words: u64) -> Vec<&'static str> {
    (0..words)
        .map(|i| if i == 0 { "ok" } else { " ok" })
        .collect()
}

fn ok_text(words: u64) -> String {
    vec!["ok"; words as usize].join(" ")
}

// ---- OpenAI Responses API ---------------------------------------------------

const RESPONSE_ID: &str = "resp_mock0123456789";
const RESPONSE_ITEM_ID: &str = "msg_mock0123456789";
const CREATED_AT: u64 = 1_700_000_000;

async fn responses(
    data: web::Data<(Arc<Seen>, bool)>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let body = match json_body(&body, false) {
        Ok(body) => body,
        Err(answer) => return *answer,
    };
    if data.1 {
        data.0.record(&req, &body);
    }
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let most = if model == "resp_long" {
        LONG_ANSWER_WORDS
    } else {
        ANSWER_WORDS
    };
    let words = body["max_output_tokens"].as_u64().unwrap_or(most).min(most);
    let stream = body["stream"].as_bool().unwrap_or(false);
    let full = |status: &str, usage: Value| {
        let item_status = if status == "incomplete" {
            "incomplete"
        } else {
            "completed"
        };
        let mut response = response_object(
            &body,
            status,
            json!([message_item(&ok_text(words), item_status)]),
            usage,
        );
        if status == "incomplete" {
            response["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        response
    };
    match model.as_str() {
        "resp_200_error" => HttpResponse::Ok().json(json!({"error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error", "param": null, "code": "server_error"}})),
        "resp_cut" => {
            let partial = words.min(2);
            if stream {
                let mut events = ResponseEvents::new(&body);
                events.opening();
                events.deltas(partial);
                cut_after("text/event-stream", events.items)
            } else {
                cut_after(
                    "application/json",
                    vec![half_of(&full(
                        "completed",
                        response_usage(PROMPT_TOKENS, 0, words),
                    ))],
                )
            }
        }
        "resp_failed" => {
            let partial = words.min(2);
            let mut failed = response_object(
                &body,
                "failed",
                json!([]),
                response_usage(PROMPT_TOKENS, 0, partial),
            );
            failed["error"] = json!({"code": "server_error",
                                     "message": "The model failed to finish the response (mock)."});
            if !stream {
                return HttpResponse::Ok().json(failed);
            }
            let mut events = ResponseEvents::new(&body);
            events.opening();
            events.deltas(partial);
            events.push("response.failed", json!({"response": failed}));
            sse_response(events.items.into_iter().map(Ok).collect())
        }
        _ => {
            let (status, usage) = match model.as_str() {
                "resp_incomplete" => ("incomplete", response_usage(PROMPT_TOKENS, 0, words)),
                "resp_cached" => (
                    "completed",
                    response_usage(RESP_CACHED_USAGE.0, RESP_CACHED_USAGE.1, words),
                ),
                _ => ("completed", response_usage(PROMPT_TOKENS, 0, words)),
            };
            let response = full(status, usage);
            if !stream {
                return HttpResponse::Ok().json(response);
            }
            let item_status = if status == "incomplete" {
                "incomplete"
            } else {
                "completed"
            };
            let mut events = ResponseEvents::new(&body);
            events.opening();
            events.deltas(words);
            events.closing(&ok_text(words), item_status);
            let terminal = if status == "incomplete" {
                "response.incomplete"
            } else {
                "response.completed"
            };
            events.push(terminal, json!({"response": response}));
            sse_response(events.items.into_iter().map(Ok).collect())
        }
    }
}

/// A Response object, as `POST /v1/responses` answers and stream events carry.
fn response_object(request: &Value, status: &str, output: Value, usage: Value) -> Value {
    let or = |field: &str, default: Value| {
        let value = &request[field];
        if value.is_null() {
            default
        } else {
            value.clone()
        }
    };
    json!({
        "id": RESPONSE_ID, "object": "response", "created_at": CREATED_AT,
        "status": status,
        "completed_at": if status == "completed" { json!(CREATED_AT + 1) } else { Value::Null },
        "background": false,
        "error": null, "incomplete_details": null,
        "instructions": request["instructions"].clone(),
        "max_output_tokens": request["max_output_tokens"].clone(),
        "max_tool_calls": null,
        "model": request["model"].clone(),
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "service_tier": "default",
        "store": or("store", json!(true)),
        "temperature": or("temperature", json!(1.0)),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": or("tool_choice", json!("auto")),
        "tools": or("tools", json!([])),
        "top_logprobs": 0,
        "top_p": or("top_p", json!(1.0)),
        "truncation": "disabled",
        "usage": usage,
        "user": null,
        "metadata": or("metadata", json!({})),
    })
}

fn message_item(text: &str, status: &str) -> Value {
    json!({"id": RESPONSE_ITEM_ID, "type": "message", "status": status, "role": "assistant",
           "content": [output_text(text)]})
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn response_usage(input: u64, cached: u64, output: u64) -> Value {
    json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
           "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": input + output})
}

/// A Responses stream being written: `event: <type>` / `data: <json>`, the
/// JSON carrying `type` and a `sequence_number` from 0.
struct ResponseEvents {
    in_progress: Value,
    items: Vec<web::Bytes>,
}

impl ResponseEvents {
    fn new(request: &Value) -> Self {
        Self {
            in_progress: response_object(request, "in_progress", json!([]), Value::Null),
            items: Vec::new(),
        }
    }

    fn push(&mut self, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.items.len());
        self.items
            .push(web::Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
    }

    /// Created, in progress, the message item and its text part added.
    fn opening(&mut self) {
        let response = self.in_progress.clone();
        self.push("response.created", json!({"response": response}));
        self.push("response.in_progress", json!({"response": response}));
        self.push(
            "response.output_item.added",
            json!({"output_index": 0,
            "item": {"id": RESPONSE_ITEM_ID, "type": "message", "status": "in_progress",
                     "role": "assistant", "content": []}}),
        );
        self.push(
            "response.content_part.added",
            json!({"item_id": RESPONSE_ITEM_ID,
            "output_index": 0, "content_index": 0, "part": output_text("")}),
        );
    }

    fn deltas(&mut self, words: u64) {
        for delta in ok_deltas(words) {
            self.push(
                "response.output_text.delta",
                json!({"item_id": RESPONSE_ITEM_ID,
                "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}),
            );
        }
    }

    /// The text, its part and its item done.
    fn closing(&mut self, text: &str, item_status: &str) {
        self.push(
            "response.output_text.done",
            json!({"item_id": RESPONSE_ITEM_ID,
            "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
        );
        self.push(
            "response.content_part.done",
            json!({"item_id": RESPONSE_ITEM_ID,
            "output_index": 0, "content_index": 0, "part": output_text(text)}),
        );
        self.push(
            "response.output_item.done",
            json!({"output_index": 0,
            "item": message_item(text, item_status)}),
        );
    }
}

// ---- Anthropic Messages API -------------------------------------------------

const MESSAGE_ID: &str = "msg_mock01AbCdEfGhIjKlMnOp";

fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

async fn messages(
    data: web::Data<(Arc<Seen>, bool)>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let body = match json_body(&body, true) {
        Ok(body) => body,
        Err(answer) => return *answer,
    };
    if data.1 {
        data.0.record(&req, &body);
    }
    let Some(max_tokens) = body["max_tokens"].as_u64() else {
        return HttpResponse::BadRequest().json(anthropic_error(
            "invalid_request_error",
            "max_tokens: Field required",
        ));
    };
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let words = if model == "msg_long" {
        max_tokens.min(LONG_ANSWER_WORDS)
    } else {
        max_tokens.min(ANSWER_WORDS)
    };
    let stream = body["stream"].as_bool().unwrap_or(false);
    let (input, cache_read, cache_creation) = if model == "msg_cached" {
        MSG_CACHED_USAGE
    } else {
        (PROMPT_TOKENS, 0, 0)
    };
    let usage = |output: u64| {
        json!({"input_tokens": input, "cache_creation_input_tokens": cache_creation,
               "cache_read_input_tokens": cache_read, "output_tokens": output})
    };
    let message = |content: Value, stop_reason: Value, output: u64| {
        json!({"id": MESSAGE_ID, "type": "message", "role": "assistant", "model": body["model"].clone(),
               "content": content, "stop_reason": stop_reason, "stop_sequence": null,
               "usage": usage(output)})
    };
    let done = message(
        json!([{"type": "text", "text": ok_text(words)}]),
        json!("end_turn"),
        words,
    );
    let mut events = Vec::new();
    let mut push = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        events.push(web::Bytes::from(format!("event: {kind}\ndata: {data}\n\n")));
    };
    // message_start, the text block started, a ping, `deltas` text deltas.
    let opening = |push: &mut dyn FnMut(&str, Value), deltas: u64| {
        push(
            "message_start",
            json!({"message": message(json!([]), Value::Null, words.min(1))}),
        );
        push(
            "content_block_start",
            json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
        );
        push("ping", json!({}));
        for delta in ok_deltas(deltas) {
            push(
                "content_block_delta",
                json!({"index": 0, "delta": {"type": "text_delta", "text": delta}}),
            );
        }
    };
    match model.as_str() {
        "msg_200_error" => {
            HttpResponse::Ok().json(anthropic_error("api_error", "Internal server error"))
        }
        "msg_error_after_content" if !stream => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(529).unwrap())
                .json(anthropic_error("overloaded_error", "Overloaded"))
        }
        "msg_error_after_content" => {
            opening(&mut push, words.min(2));
            push(
                "error",
                json!({"error": {"type": "overloaded_error", "message": "Overloaded"}}),
            );
            sse_response(events.into_iter().map(Ok).collect())
        }
        "msg_cut" if !stream => cut_after("application/json", vec![half_of(&done)]),
        "msg_cut" => {
            opening(&mut push, words.min(2));
            cut_after("text/event-stream", events)
        }
        _ if !stream => HttpResponse::Ok().json(done),
        _ => {
            opening(&mut push, words);
            push("content_block_stop", json!({"index": 0}));
            let outputs = if model == "msg_multi_delta" {
                vec![words.min(1), words.min(3), words]
            } else {
                vec![words]
            };
            let last = outputs.len() - 1;
            for (i, output) in outputs.into_iter().enumerate() {
                let stop_reason = if i == last {
                    json!("end_turn")
                } else {
                    Value::Null
                };
                push(
                    "message_delta",
                    json!({"delta": {"stop_reason": stop_reason, "stop_sequence": null},
                                             "usage": {"output_tokens": output}}),
                );
            }
            push("message_stop", json!({}));
            sse_response(events.into_iter().map(Ok).collect())
        }
    }
}

async fn count_tokens(
    data: web::Data<(Arc<Seen>, bool)>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let body = match json_body(&body, true) {
        Ok(body) => body,
        Err(answer) => return *answer,
    };
    if data.1 {
        data.0.record(&req, &body);
    }
    HttpResponse::Ok().json(json!({"input_tokens": PROMPT_TOKENS}))
}

// ---- OpenAI embeddings ------------------------------------------------------

async fn embeddings(
    data: web::Data<(Arc<Seen>, bool)>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let body = match json_body(&body, false) {
        Ok(body) => body,
        Err(answer) => return *answer,
    };
    if data.1 {
        data.0.record(&req, &body);
    }
    // A string or a token array is one input; an array of them, one each.
    let inputs = match &body["input"] {
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => 1,
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let embedding = if body["encoding_format"] == "base64" {
        use base64::Engine as _;
        let bytes: Vec<u8> = EMBEDDING.iter().flat_map(|f| f.to_le_bytes()).collect();
        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(EMBEDDING)
    };
    let items: Vec<Value> = (0..inputs)
        .map(|index| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    HttpResponse::Ok().json(json!({
        "object": "list", "data": items, "model": body["model"].clone(),
        "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS}
    }))
}

/// The events of an SSE body: each event's `event:` name (if any) and its
/// `data:` (parsed as JSON; a `data:` that is not JSON, such as `[DONE]`,
/// comes as a JSON string).
pub fn parse_sse(text: &str) -> Vec<(Option<String>, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            let data = data.join("\n");
            let json = serde_json::from_str(&data).unwrap_or(Value::String(data));
            (name, json)
        })
        .collect()
}
