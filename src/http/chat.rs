//! `POST /external/v1/chat/completions`: the paid, OpenAI-compatible call,
//! streamed or not (docs/reference.md, docs/paid-path.md).
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
//! The call itself runs below HTTP (`gateway::run`); this file frames its
//! answer as JSON, or its stream's events as Server-Sent Events.

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use ledger::{KeyId, RequestId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};
use utoipa::{PartialSchema, ToSchema};

use super::caller::{no_budget, payer};
use super::error::{apply_budget, ApiError, ErrorBody, ErrorDetail};
use super::extract::{json_body, RequestBody};
use super::responses::{BearerRefused, BodyRefused, ServerError};
use crate::gateway::call::{CallAsk, PaidCall};
use crate::gateway::error::CallFailure;
use crate::gateway::request::ChatRequest;
use crate::gateway::run::{self, StreamEvent};
use crate::gateway::Model;
use crate::state::AppState;
use crate::telemetry::client_request_id;
use crate::upstream::UpstreamRequest;

/// An OpenAI chat completion request: its JSON object, passed to
/// `ChatRequest::parse` whole (the upstream gets the fields it forwards).
/// The document lists only the fields Tollgate reads.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct ChatCompletionRequest(Map<String, Value>);

impl RequestBody for ChatCompletionRequest {
    fn from_object(object: Map<String, Value>) -> Result<Self, ApiError> {
        Ok(ChatCompletionRequest(object))
    }
}

/// An OpenAI chat completion, as the upstream answered it, with Tollgate's
/// `compose` object (the charge) added.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ChatCompletion(Map<String, Value>);

/// A property of type `kind`, or `null` when `nullable`.
fn typed(kind: Type, nullable: bool) -> ObjectBuilder {
    let kinds = if nullable {
        SchemaType::from_iter([kind, Type::Null])
    } else {
        SchemaType::new(kind)
    };
    ObjectBuilder::new().schema_type(kinds)
}

/// An optional count (`u64`).
fn count() -> ObjectBuilder {
    typed(Type::Integer, true)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
}

/// Any JSON object.
fn object(nullable: bool) -> ObjectBuilder {
    typed(Type::Object, nullable)
}

impl PartialSchema for ChatCompletionRequest {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some(
                "An OpenAI chat completion request. Only the fields Tollgate reads are\n\
                 listed; others pass to the upstream when the model forwards them.",
            ))
            .property("model", typed(Type::String, false))
            .required("model")
            .property("messages", ArrayBuilder::new().items(object(false)))
            .required("messages")
            .property("max_tokens", count())
            .property("max_completion_tokens", count())
            .property("stream", typed(Type::Boolean, true))
            .into()
    }
}

impl ToSchema for ChatCompletionRequest {
    fn name() -> std::borrow::Cow<'static, str> {
        "ChatCompletionRequest".into()
    }
}

impl PartialSchema for ChatCompletion {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some(
                "An OpenAI chat completion, as the upstream answered it, with Tollgate's\n\
                 `compose` object (the charge) added.",
            ))
            .property("id", typed(Type::String, true))
            .property("object", typed(Type::String, true))
            .property(
                "choices",
                ArrayBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
                    .items(object(false)),
            )
            .property("usage", object(true))
            .property("compose", object(true))
            .into()
    }
}

impl ToSchema for ChatCompletion {
    fn name() -> std::borrow::Cow<'static, str> {
        "ChatCompletion".into()
    }
}

#[utoipa::path(
    post,
    path = "/external/v1/chat/completions",
    operation_id = "createChatCompletion",
    tag = "paid",
    security(("compose_key" = []), ("studio_key" = [])),
    request_body(content = ChatCompletionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The completion (JSON), or a stream of server-sent events when stream is true", body = ChatCompletion, headers(("x-compose-key-budget-limit" = String, description = "The key's budget (atomic units)"), ("x-compose-key-budget-used" = String, description = "Spent so far, this call included"), ("x-compose-key-budget-remaining" = String, description = "What is left"))),
        (status = 402, description = "The key's budget cannot cover the call's maximum cost", body = ErrorBody),
        (status = 403, description = "The key may not pay (role, project)", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 409, description = "Too many calls in flight on this key", body = ErrorBody),
        (status = 429, description = "Too many calls in flight", body = ErrorBody),
        BearerRefused,
        BodyRefused,
        ServerError,
    ),
)]
pub async fn completions(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (key_id, token) = payer(&state, &req).await?;
    let body: ChatCompletionRequest =
        json_body(&req, payload, state.settings.gateway.chat_body_max_bytes).await?;
    let chat = ChatRequest::parse(body.0)?;
    let gateway = &state.gateway;
    let Some(model) = gateway.models.get(&chat.model) else {
        return Err(CallFailure::ModelNotFound(chat.model).into());
    };
    chat.check_fields(&model.forward_fields)?;
    let requested = chat
        .max_tokens
        .unwrap_or(model.max_output_tokens)
        .min(model.max_output_tokens);
    let prompt_tokens_max = model.upstream.prompt_tokens_max(&chat.body);
    // The request's own id (see `telemetry::RequestSpans`): its log lines,
    // its `x-request-id`, its charge and its queue event share it.
    let request = req
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate);
    let ask = CallAsk {
        request,
        client_request_id: client_request_id(req.headers()).map(str::to_owned),
        model,
        prompt_tokens_max,
        requested_max_tokens: requested,
        stream: chat.stream,
    };
    let call = PaidCall::open(gateway, &key_id, token, ask)
        .await
        .map_err(|failure| match (token, failure) {
            // A Studio key pays from its project's budget key: that key being
            // revoked or expired means the project has no budget, not that the
            // caller's own credential failed.
            (
                None,
                CallFailure::KeyRevoked
                | CallFailure::SessionSuperseded
                | CallFailure::KeyExpired
                | CallFailure::InvalidToken,
            ) => no_budget(),
            (_, failure) => ApiError::from(failure),
        })?;
    let upstream_request = UpstreamRequest {
        body: chat.body,
        max_tokens: call.max_tokens,
        request_id: call.request.to_string(),
    };
    if chat.stream {
        streamed(
            &state,
            model,
            call,
            upstream_request,
            chat.wants_usage,
            &key_id,
        )
        .await
    } else {
        let answer = run::complete(gateway, model, call, upstream_request).await?;
        let mut response = HttpResponse::Ok();
        apply_budget(&mut response, &answer.receipt.budget);
        tx_hash_header(&state, &mut response, &key_id);
        response.insert_header(("x-request-id", answer.request_id));
        Ok(response.json(ChatCompletion(answer.body)))
    }
}

/// A streamed call's answer: its opening headers, then each of its events
/// as Server-Sent Events.
async fn streamed(
    state: &AppState,
    model: &Model,
    call: PaidCall,
    upstream_request: UpstreamRequest,
    wants_usage: bool,
    key_id: &KeyId,
) -> Result<HttpResponse, ApiError> {
    let started = run::stream(&state.gateway, model, call, upstream_request, wants_usage).await?;
    let mut response = HttpResponse::Ok();
    apply_budget(&mut response, &started.opening);
    tx_hash_header(state, &mut response, key_id);
    response
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-request-id", started.request_id));
    // The body ends when the call's task drops its sender, which it does by
    // the call's bound. A client cut off for stalling gets no clean end of
    // the chunked body: it can tell.
    let cut = started.cut;
    let body = futures_util::stream::unfold(Some(started.events), move |events| {
        let cut = cut.clone();
        async move {
            let mut events = events?;
            match events.recv().await {
                Some(event) => Some((Ok(frame(event)), Some(events))),
                None if !cut.load(std::sync::atomic::Ordering::Acquire) => None,
                None => Some((Err(stalled_client()), None)),
            }
        }
    });
    Ok(response.streaming(body))
}

/// One stream event as Server-Sent Events: a chunk; the last chunk and
/// `[DONE]` in one write; or an `error` event (and no `[DONE]`).
fn frame(event: StreamEvent) -> Bytes {
    match event {
        StreamEvent::Chunk(json) => sse(&json),
        StreamEvent::Last(json) => {
            let mut bytes = sse(&json).to_vec();
            bytes.extend_from_slice(b"data: [DONE]\n\n");
            Bytes::from(bytes)
        }
        StreamEvent::Failed(failure) => {
            // The status is sent already: the event says what failed, as
            // the upstream's fault.
            let api = ApiError::from(failure);
            let body = ErrorBody {
                error: ErrorDetail {
                    code: api.code,
                    message: &api.message,
                    kind: "upstream_error",
                    param: None,
                    details: None,
                },
            };
            sse(&serde_json::to_vec(&body).unwrap_or_default())
        }
    }
}

fn sse(json: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

fn stalled_client() -> actix_web::Error {
    actix_web::error::ErrorRequestTimeout("the client stopped reading the stream")
}

/// `x-compose-key-tx-hash`: the paying key's latest settlement transaction,
/// once it has one (its charge for this call settles later).
fn tx_hash_header(state: &AppState, response: &mut actix_web::HttpResponseBuilder, key: &KeyId) {
    if let Some(hash) = state.settled_txs.get(key.as_str()) {
        response.insert_header(("x-compose-key-tx-hash", hash.as_ref()));
    }
}
