//! One paid call's run below HTTP: the upstream, within its bounds, and the
//! charge. [`complete`] answers a non-streamed call; [`stream`] starts a
//! stream and hands its events — the upstream's chunks, the last chunk with
//! the call's charge, or a failure — to whoever frames them (`http::chat`
//! frames them as SSE).
//!
//! Each call runs in its own task, so a client that leaves cancels nothing
//! that was already asked of the upstream. A stream's task reads the
//! upstream and hands each chunk on through a small bounded channel: nothing
//! is buffered whole, a slow client slows the upstream read, and a client
//! that goes away is noticed at once — it pays for what was generated until
//! then, and the upstream connection is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::call::{Metered, PaidCall, Receipt};
use super::error::{BudgetView, CallFailure};
use super::{Gateway, Model, Timeouts};
use crate::upstream::{output_bytes_of, Chunk, ChunkStream, UpstreamError, UpstreamRequest, Usage};

/// Chunks waiting between the upstream reader and a slow client.
const STREAM_BUFFER_CHUNKS: usize = 16;

/// After a call's bound, how long its last event may take to be handed to
/// the connection (the charge is already written by then).
const FINAL_WRITE_GRACE: Duration = Duration::from_secs(1);

/// A non-streamed call's answer: the upstream's body with the billed
/// `usage` and the `compose` object, and what the call was charged.
pub struct Answer {
    pub body: Map<String, Value>,
    pub receipt: Receipt,
    pub request_id: String,
}

/// A started stream.
pub struct Stream {
    /// The key's budget as the call started (the opening headers).
    pub opening: BudgetView,
    pub request_id: String,
    /// The stream's events, in order; the channel closes when it ends.
    pub events: mpsc::Receiver<StreamEvent>,
    /// Set when the client stopped reading until the call's bound and was
    /// cut off: the stream must not end cleanly.
    pub cut: Arc<AtomicBool>,
}

/// What a stream hands on, as JSON text for the framer.
#[derive(Debug)]
pub enum StreamEvent {
    /// One upstream chunk (its own bytes where they could be kept).
    Chunk(Bytes),
    /// The last chunk: the billed usage (if the client asked) and `compose`.
    /// The stream ends cleanly after it.
    Last(Bytes),
    /// The stream failed after it started; what was delivered is charged.
    Failed(CallFailure),
}

/// Runs a non-streamed call in its own task: a client that leaves mid-call
/// does not cancel the upstream call, which is then charged for what it
/// answered (as a stream is charged for what it generated) — the upstream
/// bills its work whether or not the client waited for it.
pub async fn complete(
    gateway: &Gateway,
    model: &Model,
    call: PaidCall,
    request: UpstreamRequest,
) -> Result<Answer, CallFailure> {
    let gateway = gateway.clone();
    let model = model.name.clone();
    let running = tokio::spawn(async move {
        let Some(model) = gateway.models.get(&model) else {
            return Err(CallFailure::internal("a configured model vanished"));
        };
        let (call, completion) =
            upstream_or_release(&gateway, call, model.upstream.complete(&request)).await?;
        let metered = match completion.usage {
            Some(usage) => Metered::reported(usage),
            // Usage is mandatory for this model: without it, the answer is
            // an upstream error — withheld, nothing charged.
            None if model.require_usage => {
                call.release().await;
                return Err(upstream_failure(UpstreamError::Protocol(
                    "the answer reports no usage".into(),
                )));
            }
            // Else an estimate, marked so: the prompt's bound and the bytes
            // of output in the answer (never past the output bound).
            None => Metered::estimated(Usage {
                prompt_tokens: call.prompt_tokens_max,
                completion_tokens: output_bytes_of(completion.body.get("choices"), "message")
                    .min(call.max_tokens),
                ..Usage::default()
            }),
        };
        let request_id = call.request.to_string();
        let receipt = call.finish(metered).await?;
        let mut body = completion.body;
        // The body's usage is what was billed, so body, headers and ledger agree.
        body.insert("usage".into(), receipt.usage.to_json());
        body.insert("compose".into(), receipt.compose_json());
        Ok(Answer {
            body,
            receipt,
            request_id,
        })
    });
    running.await.map_err(CallFailure::internal)?
}

/// Starts a streamed call: waits for the upstream's first answer (or
/// releases the hold and fails), then pumps the stream in its own task.
pub async fn stream(
    gateway: &Gateway,
    model: &Model,
    call: PaidCall,
    request: UpstreamRequest,
    wants_usage: bool,
) -> Result<Stream, CallFailure> {
    let (call, chunks) =
        upstream_or_release(gateway, call, model.upstream.stream(&request)).await?;
    let (sender, events) = mpsc::channel::<StreamEvent>(STREAM_BUFFER_CHUNKS);
    let last = LastChunk {
        id: format!("chatcmpl-{}", request.request_id),
        model: model.name.clone(),
        wants_usage,
    };
    let cut = Arc::new(AtomicBool::new(false));
    let started = Stream {
        opening: call.opening_budget(),
        request_id: call.request.to_string(),
        events,
        cut: cut.clone(),
    };
    tokio::spawn(pump(call, chunks, sender, gateway.timeouts, last, cut));
    Ok(started)
}

/// Waits for the upstream's answer (or a stream's start) within the
/// upstream timeout; on failure releases the call's hold — an upstream
/// failure charges nothing.
async fn upstream_or_release<T>(
    gateway: &Gateway,
    call: PaidCall,
    answer: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<(PaidCall, T), CallFailure> {
    let answer = tokio::time::timeout(gateway.timeouts.upstream, answer)
        .await
        .unwrap_or(Err(UpstreamError::Timeout));
    match answer {
        Ok(answer) => Ok((call, answer)),
        Err(error) => {
            call.release().await;
            Err(upstream_failure(error))
        }
    }
}

/// Hands `event` on unless the client has not taken what was already sent
/// by `by`: a client that stops reading is cut off there.
async fn send_by(sender: &mpsc::Sender<StreamEvent>, event: StreamEvent, by: Instant) -> bool {
    matches!(
        tokio::time::timeout_at(by, sender.send(event)).await,
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
    sender: mpsc::Sender<StreamEvent>,
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
        if !send_by(&sender, StreamEvent::Chunk(chunk.to_bytes()), deadline).await {
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
            ..Usage::default()
        }),
    };
    // The last events: the charge is written by now; they wait at most the
    // grace for a slow client.
    let by = deadline.max(Instant::now()) + FINAL_WRITE_GRACE;
    match ended {
        Ended::Done => match call.finish(metered).await {
            Ok(receipt) => {
                let chunk = final_chunk(usage_chunk, &last, &receipt);
                if !send_by(&sender, StreamEvent::Last(chunk), by).await {
                    cut.store(true, Ordering::Release);
                }
            }
            Err(failure) => {
                let _ = send_by(&sender, StreamEvent::Failed(failure), by).await;
            }
        },
        Ended::ClientGone => {
            // The client pays for what was generated before it left.
            if let Err(failure) = call.finish(metered).await {
                tracing::error!(%failure, "charging an abandoned stream failed");
            }
        }
        Ended::Failed(error) => {
            if output_bytes > 0 || usage_seen.is_some() {
                // Output already reached the client: it is paid for,
                // whatever ended the stream.
                if let Err(failure) = call.finish(metered).await {
                    tracing::error!(%failure, "charging a failed stream failed");
                }
            } else {
                call.release().await; // nothing generated: nothing charged
            }
            let _ = send_by(&sender, StreamEvent::Failed(upstream_failure(error)), by).await;
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

/// Upstream failures: a timeout, or anything else (its cause is logged).
fn upstream_failure(error: UpstreamError) -> CallFailure {
    match error {
        UpstreamError::Timeout => CallFailure::UpstreamTimeout,
        other => CallFailure::UpstreamFailed {
            cause: other.to_string(),
        },
    }
}
