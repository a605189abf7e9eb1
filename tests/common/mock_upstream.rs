//! A mock OpenAI-compatible upstream on a real socket, for the tests and the
//! gateway benchmark: `POST /v1/chat/completions`, streamed (SSE) or not.
//!
//! What it does is chosen by the `model` the gateway sends:
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
//! Every request body and its `Authorization` header are kept for asserts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use serde_json::{json, Value};

pub const PROMPT_TOKENS: u64 = 7;
pub const ANSWER_WORDS: u64 = 5;
pub const FLOOD_CHUNK_BYTES: usize = 4096;

/// What the mock received.
#[derive(Default)]
pub struct Seen {
    pub requests: Mutex<Vec<(Value, Option<String>)>>,
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
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        data.0.requests.lock().unwrap().push((body.clone(), auth));
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
            let words = body["max_tokens"].as_u64().unwrap_or(300);
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
