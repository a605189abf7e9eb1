//! What every paid endpoint shares: who pays, the call's ids, and its
//! answer framed for HTTP — JSON with the `x-compose-key-*` headers, or a
//! stream as Server-Sent Events (chat: `data:` lines and `[DONE]`;
//! Responses and Messages: an `event:` line naming each event's type).
//!
//! Each endpoint is parse → [`Gateway::call`](crate::gateway::Gateway::call)
//! → [`answer`]; this file and `http::error` are all they share.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use ledger::{KeyId, RequestId};
use serde_json::{Map, Value};

use super::caller::payer;
use super::error::{apply_budget, ApiError};
use super::extract::{json_body, RequestBody};
use crate::gateway::paid::{CallIds, Outcome};
use crate::gateway::protocol::{failure_event, Api, Parsed};
use crate::gateway::run::{Stream, StreamEvent};
use crate::state::AppState;
use crate::telemetry::client_request_id;

/// A paid request's JSON object, read whole (bounded) and passed to its
/// API's parser, which names any field at fault.
#[derive(Debug, serde::Deserialize)]
#[serde(transparent)]
pub struct PaidBody(pub Map<String, Value>);

impl RequestBody for PaidBody {
    fn from_object(object: Map<String, Value>) -> Result<Self, ApiError> {
        Ok(PaidBody(object))
    }
}

/// Headers a client's call passes to an upstream that reads them.
const PASSED_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

/// The paid call of one endpoint: the credential first (before the body is
/// read), then the body as `api`'s request, the model, the hold, the
/// upstream and the charge; its answer framed.
pub async fn call(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    api: Api,
) -> Result<HttpResponse, ApiError> {
    let payer = payer(state, req).await?;
    let body: PaidBody =
        json_body(req, payload, state.settings.gateway.chat_body_max_bytes).await?;
    let parsed = Parsed::of(api, body.0)?;
    let ask = state.gateway.ask(parsed, passed_headers(req))?;
    let outcome = state.gateway.call(&payer, call_ids(req), ask).await?;
    Ok(answer(state, payer.key(), outcome))
}

/// The client's headers its upstream reads.
pub fn passed_headers(req: &HttpRequest) -> Vec<(&'static str, String)> {
    PASSED_HEADERS
        .iter()
        .filter_map(|name| {
            let value = req.headers().get(*name)?.to_str().ok()?;
            Some((*name, value.to_owned()))
        })
        .collect()
}

/// The request's own id (see `telemetry::RequestSpans`): its log lines,
/// its `x-request-id`, its charge and its queue event share it.
fn call_ids(req: &HttpRequest) -> CallIds {
    CallIds {
        request: req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::generate),
        client_request_id: client_request_id(req.headers()).map(str::to_owned),
    }
}

/// A paid call's answer: the budget headers, the settlement's latest
/// transaction, and the body — JSON, or the stream's events.
fn answer(state: &AppState, key: &KeyId, outcome: Outcome) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if let Some(hash) = state.settled_txs.get(key.as_str()) {
        // The paying key's latest settlement (this call's settles later).
        response.insert_header(("x-compose-key-tx-hash", hash.as_ref()));
    }
    match outcome {
        Outcome::Answer(answer) => {
            apply_budget(&mut response, &answer.receipt.budget);
            response.insert_header(("x-request-id", answer.request_id));
            response.json(answer.body)
        }
        Outcome::Stream(stream) => {
            apply_budget(&mut response, &stream.opening);
            response
                .content_type("text/event-stream")
                .insert_header(("cache-control", "no-cache"))
                .insert_header(("x-request-id", stream.request_id.clone()));
            response.streaming(events(stream))
        }
    }
}

/// A stream's events as SSE. The body ends when the call's task drops its
/// sender, which it does by the call's bound. A client cut off for stalling
/// gets no clean end of the chunked body: it can tell.
fn events(
    stream: Stream,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> + 'static {
    let Stream {
        api, events, cut, ..
    } = stream;
    futures_util::stream::unfold(Some(events), move |events| {
        let cut = cut.clone();
        async move {
            let mut events = events?;
            match events.recv().await {
                Some(event) => Some((Ok(frame(api, event)), Some(events))),
                None if !cut.load(std::sync::atomic::Ordering::Acquire) => None,
                None => Some((Err(stalled_client()), None)),
            }
        }
    })
}

/// One stream event as Server-Sent Events: an event; the last one (chat:
/// and `[DONE]`) in one write; or an error event in the API's shape.
fn frame(api: Api, event: StreamEvent) -> Bytes {
    match event {
        StreamEvent::Chunk(event) => sse(event.kind.as_deref(), &event.json),
        StreamEvent::Last(event) => {
            let mut bytes = sse(event.kind.as_deref(), &event.json).to_vec();
            if api == Api::Chat {
                bytes.extend_from_slice(b"data: [DONE]\n\n");
            }
            Bytes::from(bytes)
        }
        StreamEvent::Failed(failure) => {
            // The status is sent already: the event says what failed, as
            // the upstream's fault.
            let error = ApiError::from(failure);
            let event = failure_event(api, error.code, &error.message);
            let kind = event.get("type").and_then(serde_json::Value::as_str);
            sse(kind, &serde_json::to_vec(&event).unwrap_or_default())
        }
    }
}

/// `data: <json>`, preceded by `event: <kind>` for a named event (Responses
/// and Messages), as their SDKs read it. A name that is not a plain word —
/// it is the upstream's — is left out, so no upstream can start an event
/// of its own.
fn sse(kind: Option<&str>, json: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(json.len() + 48);
    let plain = |k: &&str| {
        k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
    };
    if let Some(kind) = kind.filter(plain) {
        event.extend_from_slice(b"event: ");
        event.extend_from_slice(kind.as_bytes());
        event.push(b'\n');
    }
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

fn stalled_client() -> actix_web::Error {
    actix_web::error::ErrorRequestTimeout("the client stopped reading the stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_named_by_their_type_and_nothing_else() {
        let framed = sse(Some("message_stop"), br#"{"type":"message_stop"}"#);
        assert_eq!(
            &framed[..],
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        );
        // An upstream cannot start an event of its own through `type`.
        let framed = sse(Some("x\ndata: {}"), br#"{}"#);
        assert_eq!(&framed[..], b"data: {}\n\n");
        assert_eq!(&sse(None, br#"{"a":1}"#)[..], b"data: {\"a\":1}\n\n");
    }
}
