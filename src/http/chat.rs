//! `POST /external/v1/chat/completions`: the paid, OpenAI-compatible call,
//! streamed or not (DESIGN §4, §5).
//!
//! Who pays: a Compose key (`compose-…`) its own budget; a Studio key (`sk-`,
//! `pk-` or its JWT, role `executor` and above) its project's budget.
//!
//! Order of checks: the credential (a Compose token's signature, or its hash
//! for a key whose actor runs — no database; a Studio key's row), the body,
//! the model — all before any budget is touched, so bad input changes
//! nothing — then the hold on the key's actor ([`PaidCall::open`]), the
//! upstream, and the charge ([`PaidCall::finish`]).
//!
//! Each call runs in its own task, so a client that leaves cancels nothing
//! that was already asked of the upstream. A stream's task reads the
//! upstream and hands each
//! chunk to the response through a small bounded channel: nothing is
//! buffered whole, a slow client slows the upstream read, and a client that
//! goes away is noticed at once — it pays for the chunks generated until
//! then, and the upstream connection is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use ledger::model::Role;
use ledger::KeyId;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::apikeys::authenticate_studio;
use super::error::ApiError;
use super::extract::{bearer_token, json_object, paid_bearer};
use crate::gateway::call::{Metered, PaidCall, Receipt};
use crate::gateway::request::ChatRequest;
use crate::gateway::{Gateway, Model, Timeouts};
use crate::state::AppState;
use crate::upstream::{output_bytes_of, Chunk, ChunkStream, UpstreamError, UpstreamRequest, Usage};

/// Chunks waiting between the upstream reader and a slow client.
const STREAM_BUFFER_CHUNKS: usize = 16;

pub async fn completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (key_id, token) = payer(&state, &req).await?;
    let body = json_object(&req, payload, state.settings.gateway.chat_body_max_bytes).await?;
    let chat = ChatRequest::parse(body)?;
    let gateway = &state.gateway;
    let Some(model) = gateway.models.get(&chat.model) else {
        return Err(ApiError {
            param: Some("model".into()),
            ..ApiError::not_found(
                "model_not_found",
                format!(
                    "the model {:?} does not exist here; see GET /external/v1/models",
                    chat.model
                ),
            )
        });
    };
    chat.check_fields(&model.forward_fields)?;
    let requested = chat
        .max_tokens
        .unwrap_or(model.max_output_tokens)
        .min(model.max_output_tokens);
    let prompt_tokens_max = model.upstream.prompt_tokens_max(&chat.body);
    let call = PaidCall::open(
        gateway,
        &key_id,
        token,
        model,
        prompt_tokens_max,
        requested,
        chat.stream,
    )
    .await
    .map_err(|error| match token {
        // A Studio key pays from its project's budget key: that key being
        // revoked or expired means the project has no budget, not that the
        // caller's own credential failed.
        None if error.status == StatusCode::UNAUTHORIZED => no_budget(),
        _ => error,
    })?;
    let upstream_request = UpstreamRequest {
        body: chat.body,
        max_tokens: call.max_tokens,
        request_id: call.request.to_string(),
    };
    if chat.stream {
        stream(gateway, model, call, upstream_request, chat.wants_usage).await
    } else {
        complete(gateway, model, call, upstream_request).await
    }
}

/// Whose budget pays, and the Compose token that must match it: a Compose
/// key pays from its own budget (proven by its token); a Studio key of role
/// `executor` or above (sk, pk or JWT) pays from its project's budget key,
/// which has no token of its own.
async fn payer<'r>(
    state: &AppState,
    req: &'r HttpRequest,
) -> Result<(KeyId, Option<&'r str>), ApiError> {
    if bearer_token(req)?.starts_with("compose-") {
        let (token, claims) = paid_bearer(state, req)?;
        return Ok((claims.key_id, Some(token)));
    }
    let caller = authenticate_studio(state, req).await?;
    caller.require_role(Role::Executor)?;
    let project = state
        .store
        .project(&caller.key.account_id, &caller.key.project_id)
        .await?
        .ok_or_else(|| ApiError::internal(&"a key's project is missing"))?;
    let key_id = project.budget_key_id.ok_or_else(no_budget)?;
    Ok((key_id, None))
}

fn no_budget() -> ApiError {
    ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "no_budget",
        "the key's project has no usable budget; an admin key sets one with \
         PUT /api/v1/projects/{id}/budget",
    )
}

/// Waits for the upstream's answer (or a stream's start) within the
/// upstream timeout; on failure releases the call's hold — an upstream
/// failure charges nothing — and answers 502 or 504.
async fn upstream_or_release<T>(
    gateway: &Gateway,
    call: PaidCall,
    answer: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<(PaidCall, T), ApiError> {
    let answer = tokio::time::timeout(gateway.timeouts.upstream, answer)
        .await
        .unwrap_or(Err(UpstreamError::Timeout));
    match answer {
        Ok(answer) => Ok((call, answer)),
        Err(error) => {
            call.release().await;
            Err(upstream_error(error))
        }
    }
}

async fn complete(
    gateway: &Gateway,
    model: &Model,
    call: PaidCall,
    request: UpstreamRequest,
) -> Result<HttpResponse, ApiError> {
    // Its own task: a client that leaves mid-call does not cancel the
    // upstream call, which is then charged for what it answered (as a
    // stream is charged for what it generated) — the upstream bills its work
    // whether or not the client waited for it.
    let gateway = gateway.clone();
    let model = model.name.clone();
    let running = tokio::spawn(async move {
        let Some(model) = gateway.models.get(&model) else {
            return Err(ApiError::internal(&"a configured model vanished"));
        };
        let (call, completion) =
            upstream_or_release(&gateway, call, model.upstream.complete(&request)).await?;
        let metered = match completion.usage {
            Some(usage) => Metered::reported(usage),
            // Usage is mandatory for this model: without it, the answer is
            // an upstream error — withheld, nothing charged.
            None if model.require_usage => {
                call.release().await;
                return Err(upstream_error(UpstreamError::Protocol(
                    "the answer reports no usage".into(),
                )));
            }
            // Else an estimate, marked so: the prompt's bound and the bytes
            // of output in the answer (never past the output bound).
            None => Metered::estimated(Usage {
                prompt_tokens: call.prompt_tokens_max,
                completion_tokens: output_bytes_of(completion.body.get("choices"), "message")
                    .min(call.max_tokens),
            }),
        };
        let request_id = call.request.to_string();
        let receipt = call.finish(metered).await?;
        Ok((completion, receipt, request_id))
    });
    let (mut completion, receipt, request_id) =
        running.await.map_err(|e| ApiError::internal(&e))??;
    // The body's usage is what was billed, so body, headers and ledger agree.
    completion
        .body
        .insert("usage".into(), receipt.usage.to_json());
    completion
        .body
        .insert("compose".into(), receipt.compose_json());
    let mut response = HttpResponse::Ok();
    receipt.budget.apply(&mut response);
    response.insert_header(("x-request-id", request_id));
    Ok(response.json(Value::Object(completion.body)))
}

async fn stream(
    gateway: &Gateway,
    model: &Model,
    call: PaidCall,
    request: UpstreamRequest,
    wants_usage: bool,
) -> Result<HttpResponse, ApiError> {
    let (call, chunks) =
        upstream_or_release(gateway, call, model.upstream.stream(&request)).await?;
    let (sender, receiver) = mpsc::channel::<Bytes>(STREAM_BUFFER_CHUNKS);
    let mut response = HttpResponse::Ok();
    call.opening_budget().apply(&mut response);
    response
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-request-id", call.request.to_string()));
    let last = LastChunk {
        id: format!("chatcmpl-{}", request.request_id),
        model: model.name.clone(),
        wants_usage,
    };
    let cut = Arc::new(AtomicBool::new(false));
    tokio::spawn(pump(
        call,
        chunks,
        sender,
        gateway.timeouts,
        last,
        cut.clone(),
    ));
    // The body ends when the pump drops its sender, which it does by the
    // call's bound (every wait in it is bounded). A client cut off for
    // stalling gets no clean end of the chunked body: it can tell.
    let body = futures_util::stream::unfold(Some(receiver), move |receiver| {
        let cut = cut.clone();
        async move {
            let mut receiver = receiver?;
            match receiver.recv().await {
                Some(bytes) => Some((Ok(bytes), Some(receiver))),
                None if !cut.load(Ordering::Acquire) => None,
                None => Some((Err(stalled_client()), None)),
            }
        }
    });
    Ok(response.streaming(body))
}

/// After a call's bound, how long its last event may take to be handed to
/// the connection (the charge is already written by then).
const FINAL_WRITE_GRACE: Duration = Duration::from_secs(1);

fn stalled_client() -> actix_web::Error {
    actix_web::error::ErrorRequestTimeout("the client stopped reading the stream")
}

/// Hands `bytes` to the response unless the client has not taken what was
/// already sent by `by`: a client that stops reading is cut off there.
async fn send_by(sender: &mpsc::Sender<Bytes>, bytes: Bytes, by: Instant) -> bool {
    matches!(
        tokio::time::timeout_at(by, sender.send(bytes)).await,
        Ok(Ok(()))
    )
}

/// What the last chunk needs: its id and model when the upstream sent no
/// usage chunk to build on, and whether the client asked for `usage`.
struct LastChunk {
    id: String,
    model: String,
    wants_usage: bool,
}

enum Ended {
    Done,
    /// The client went away, or stopped reading until the call's bound.
    ClientGone,
    Failed(UpstreamError),
}

/// Reads the upstream and hands its chunks to the client, all by the call's
/// bound (invariant 8): a client that stops reading is cut off when the
/// bound passes, and charged for what the upstream produced until then —
/// before the hold (which outlives the bound) could expire.
async fn pump(
    call: PaidCall,
    mut chunks: ChunkStream,
    sender: mpsc::Sender<Bytes>,
    timeouts: Timeouts,
    last: LastChunk,
    cut: Arc<AtomicBool>,
) {
    // The stream ends by the call's bound, set when its hold was taken.
    let deadline = call.ends_by;
    // Bytes of output handed on (text, reasoning, refusals, tool arguments):
    // the estimate when the upstream reports no usage.
    let mut output_bytes: u64 = 0;
    // The last usage the upstream reported (cumulative where it sends it on
    // every chunk), and its last usage-only chunk, which goes last.
    let mut usage_seen: Option<Usage> = None;
    let mut usage_chunk: Option<Chunk> = None;
    let ended = loop {
        let wait = (Instant::now() + timeouts.stream_idle).min(deadline);
        let next = tokio::select! {
            _ = sender.closed() => break Ended::ClientGone,
            next = tokio::time::timeout_at(wait, chunks.next()) => next,
        };
        let mut chunk = match next {
            Err(_) => break Ended::Failed(UpstreamError::Timeout),
            Ok(None) => break Ended::Done,
            Ok(Some(Err(error))) => break Ended::Failed(error),
            Ok(Some(Ok(chunk))) => chunk,
        };
        if let Some(usage) = Usage::from_json(&chunk.json) {
            usage_seen = Some(usage);
            if !chunk.has_choices() {
                // Usage only: held back, reported once at the end.
                usage_chunk = Some(chunk);
                continue;
            }
            // Usage beside content: the content goes on, in order.
            chunk.take_usage();
        }
        output_bytes = output_bytes.saturating_add(chunk.output_bytes());
        if !send_by(&sender, sse(&chunk.to_bytes()), deadline).await {
            cut.store(true, Ordering::Release);
            break Ended::ClientGone;
        }
    };
    drop(chunks); // closes the upstream connection: generation stops there
                  // The upstream's own count when it sent one; else an estimate of what
                  // was delivered: the prompt's bound and the output's bytes (a token
                  // covers at least one byte), never past the output bound.
    let metered = match usage_seen {
        Some(usage) => Metered::reported(usage),
        None => Metered::estimated(Usage {
            prompt_tokens: call.prompt_tokens_max,
            completion_tokens: output_bytes.min(call.max_tokens),
        }),
    };
    // The last events: the charge is written by now; they wait at most the
    // grace for a slow client.
    let by = deadline.max(Instant::now()) + FINAL_WRITE_GRACE;
    match ended {
        Ended::Done => match call.finish(metered).await {
            Ok(receipt) => {
                let chunk = final_chunk(usage_chunk, &last, &receipt);
                if !(send_by(&sender, sse(&chunk), by).await
                    && send_by(&sender, Bytes::from_static(b"data: [DONE]\n\n"), by).await)
                {
                    cut.store(true, Ordering::Release);
                }
            }
            Err(error) => {
                let _ = send_by(&sender, error_event(error.code, &error.message), by).await;
            }
        },
        Ended::ClientGone => {
            // The client pays for what was generated before it left.
            if let Err(error) = call.finish(metered).await {
                tracing::error!(code = error.code, "charging an abandoned stream failed");
            }
        }
        Ended::Failed(error) => {
            if output_bytes > 0 || usage_seen.is_some() {
                // Output already reached the client: it is paid for,
                // whatever ended the stream.
                if let Err(charge) = call.finish(metered).await {
                    tracing::error!(code = charge.code, "charging a failed stream failed");
                }
            } else {
                call.release().await; // nothing generated: nothing charged
            }
            let api = upstream_error(error);
            let _ = send_by(&sender, error_event(api.code, &api.message), by).await;
        }
    }
}

fn final_chunk(usage_chunk: Option<Chunk>, last: &LastChunk, receipt: &Receipt) -> Bytes {
    let mut json = match usage_chunk {
        Some(chunk) => chunk.json,
        None => json!({
            "id": last.id,
            "object": "chat.completion.chunk",
            "created": ledger::time::now_ms() / 1000,
            "model": last.model,
            "choices": [],
        }),
    };
    if let Value::Object(map) = &mut json {
        // `usage` (what was billed) only for a client that asked for it.
        if last.wants_usage {
            map.insert("usage".into(), receipt.usage.to_json());
        } else {
            map.remove("usage");
        }
        map.insert("compose".into(), receipt.compose_json());
    }
    Bytes::from(serde_json::to_vec(&json).unwrap_or_default())
}

fn sse(json: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

fn error_event(code: &str, message: &str) -> Bytes {
    let body = json!({"error": {"code": code, "message": message, "type": "upstream_error"}});
    sse(&serde_json::to_vec(&body).unwrap_or_default())
}

/// Upstream failures: 504 for time, 502 otherwise (the caller has released
/// the call's hold).
fn upstream_error(error: UpstreamError) -> ApiError {
    match error {
        UpstreamError::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "the model did not answer in time; nothing was charged",
        ),
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the model failed to answer; nothing was charged",
        )
        .logged(&other),
    }
}
