//! One paid call's run below HTTP, in any API: the upstream, within its
//! bounds, and the charge. [`complete`] answers a non-streamed call;
//! [`stream`] starts a stream and hands its events — the upstream's, the
//! last one with the call's charge, or a failure — to whoever frames them
//! (`http::paid` frames them as SSE). What each API's events report is read
//! by its [`StreamMeter`].
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

use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::call::{Metered, PaidCall, Receipt};
use super::error::{BudgetView, CallFailure};
use super::protocol::{self, Api, SseEvent, Step, StreamMeta, StreamMeter};
use super::{Gateway, Model, Timeouts};
use crate::upstream::{ChunkStream, UpstreamError, UpstreamRequest, Usage};

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
    /// The API its events are in.
    pub api: Api,
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
    /// One upstream event (its own bytes where they could be kept).
    Chunk(SseEvent),
    /// The last event, with the billed usage and `compose`. The stream
    /// ends cleanly after it.
    Last(SseEvent),
    /// The stream failed after it started; what was delivered is charged.
    Failed(CallFailure),
}

/// Runs a non-streamed call in its own task: a client that leaves mid-call
/// does not cancel the upstream call, which is then charged for what it
/// answered (as a stream is charged for what it generated) — the upstream
/// bills its work whether or not the client waited for it.
pub async fn complete(
    gateway: &Gateway,
    model: Arc<Model>,
    call: PaidCall,
    request: UpstreamRequest,
) -> Result<Answer, CallFailure> {
    let gateway = gateway.clone();
    let running = tokio::spawn(async move {
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
                completion_tokens: protocol::answer_output_bytes(request.api, &completion.body)
                    .min(call.max_tokens),
                ..Usage::default()
            }),
        };
        let request_id = call.request.to_string();
        let receipt = call.finish(metered).await?;
        let mut body = completion.body;
        protocol::answer_body(request.api, &mut body, &receipt);
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
    model: Arc<Model>,
    call: PaidCall,
    request: UpstreamRequest,
    wants_usage: bool,
) -> Result<Stream, CallFailure> {
    let (call, chunks) =
        upstream_or_release(gateway, call, model.upstream.stream(&request)).await?;
    let (sender, events) = mpsc::channel::<StreamEvent>(STREAM_BUFFER_CHUNKS);
    let meta = StreamMeta {
        id: format!("chatcmpl-{}", request.request_id),
        model: model.name.clone(),
    };
    let cut = Arc::new(AtomicBool::new(false));
    let started = Stream {
        api: request.api,
        opening: call.opening_budget(),
        request_id: call.request.to_string(),
        events,
        cut: cut.clone(),
    };
    let pumping = Pump {
        meter: StreamMeter::new(request.api, wants_usage),
        meta,
        sender,
        cut,
    };
    tokio::spawn(pumping.run(call, chunks, gateway.timeouts));
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

/// A stream's pump: what it reads the stream with and hands it to.
struct Pump {
    meter: StreamMeter,
    meta: StreamMeta,
    sender: mpsc::Sender<StreamEvent>,
    cut: Arc<AtomicBool>,
}

enum Ended {
    Done,
    /// The client went away, or stopped reading until the call's bound.
    ClientGone,
    Failed(UpstreamError),
}

impl Pump {
    /// Reads the upstream and hands its events to the client, all by the
    /// call's bound (invariant 8): a client that stops reading is cut off
    /// when the bound passes, and charged for what the upstream produced
    /// until then — before the hold (which outlives the bound) could expire.
    async fn run(mut self, call: PaidCall, mut chunks: ChunkStream, timeouts: Timeouts) {
        // The stream ends by the call's bound, set when its hold was taken.
        let deadline = call.ends_by;
        let ended = loop {
            let wait = (Instant::now() + timeouts.stream_idle).min(deadline);
            let next = tokio::select! {
                _ = self.sender.closed() => break Ended::ClientGone,
                next = tokio::time::timeout_at(wait, chunks.next()) => next,
            };
            let chunk = match next {
                Err(_) => break Ended::Failed(UpstreamError::Timeout),
                Ok(None) if self.meter.ended_well() => break Ended::Done,
                Ok(None) => {
                    break Ended::Failed(UpstreamError::Protocol(
                        "the stream ended before its last event".into(),
                    ))
                }
                Ok(Some(Err(error))) => break Ended::Failed(error),
                Ok(Some(Ok(chunk))) => chunk,
            };
            let (step, chunk) = self.meter.observe(chunk);
            if step == Step::Last {
                break Ended::Done;
            }
            let Some(chunk) = chunk else { continue };
            let event = StreamEvent::Chunk(self.meter.event(&chunk));
            if !send_by(&self.sender, event, deadline).await {
                self.cut.store(true, Ordering::Release);
                break Ended::ClientGone;
            }
        };
        drop(chunks); // closes the upstream connection: generation stops there
        let metered = self.meter.metered(call.prompt_tokens_max, call.max_tokens);
        // The last events: the charge is written by now; they wait at most
        // the grace for a slow client.
        let by = deadline.max(Instant::now()) + FINAL_WRITE_GRACE;
        match ended {
            Ended::Done => self.finish(call, metered, by).await,
            Ended::ClientGone => {
                // The client pays for what was generated before it left.
                if let Err(failure) = call.finish(metered).await {
                    tracing::error!(%failure, "charging an abandoned stream failed");
                }
            }
            Ended::Failed(error) => {
                if self.meter.delivered() {
                    // Output already reached the client: it is paid for,
                    // whatever ended the stream.
                    if let Err(failure) = call.finish(metered).await {
                        tracing::error!(%failure, "charging a failed stream failed");
                    }
                } else {
                    call.release().await; // nothing generated: nothing charged
                }
                let failed = StreamEvent::Failed(upstream_failure(error));
                let _ = send_by(&self.sender, failed, by).await;
            }
        }
    }

    /// A stream that ended well: charged, then its last event (with the
    /// charge) handed on.
    async fn finish(self, call: PaidCall, metered: Metered, by: Instant) {
        match call.finish(metered).await {
            Ok(receipt) => {
                let last = self.meter.last_event(&self.meta, &receipt);
                if !send_by(&self.sender, StreamEvent::Last(last), by).await {
                    self.cut.store(true, Ordering::Release);
                }
            }
            Err(failure) => {
                let _ = send_by(&self.sender, StreamEvent::Failed(failure), by).await;
            }
        }
    }
}

/// Upstream failures: a timeout, or anything else (its cause is logged).
pub fn upstream_failure(error: UpstreamError) -> CallFailure {
    match error {
        UpstreamError::Timeout => CallFailure::UpstreamTimeout,
        other => CallFailure::UpstreamFailed {
            cause: other.to_string(),
        },
    }
}
