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
//! The call itself runs below HTTP (`gateway::paid`), and `http::paid`
//! frames its answer; this file documents the operation.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};
use utoipa::{PartialSchema, ToSchema};

use super::error::ApiError;
use super::paid;
use super::responses::{BearerRefused, BodyRefused, PaidRefused, ServerError};
use crate::gateway::protocol::Api;
use crate::state::AppState;

/// An OpenAI chat completion request, as the document lists it: its JSON
/// object passes to `ChatRequest::parse` whole (the upstream gets the
/// fields it forwards). The document lists only the fields Tollgate reads.
pub struct ChatCompletionRequest;

/// An OpenAI chat completion, as the upstream answered it, with Tollgate's
/// `compose` object (the charge) added.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct ChatCompletion(Map<String, Value>);

/// A property of type `kind`, or `null` when `nullable`.
pub(super) fn typed(kind: Type, nullable: bool) -> ObjectBuilder {
    let kinds = if nullable {
        SchemaType::from_iter([kind, Type::Null])
    } else {
        SchemaType::new(kind)
    };
    ObjectBuilder::new().schema_type(kinds)
}

/// An optional count (`u64`).
pub(super) fn count() -> ObjectBuilder {
    typed(Type::Integer, true)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
}

/// Any JSON object.
pub(super) fn object(nullable: bool) -> ObjectBuilder {
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
        PaidRefused,
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
    paid::call(&state, &req, payload, Api::Chat).await
}
