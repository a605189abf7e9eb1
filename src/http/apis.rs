//! The paid endpoints beyond chat completions, each the same paid call in
//! its own API (docs/paid-path.md):
//!
//! * `POST /external/v1/responses` — OpenAI's Responses API.
//! * `POST /external/v1/messages` — Anthropic Messages (the key as
//!   `x-api-key` or `Authorization: Bearer`; `anthropic-version` and
//!   `anthropic-beta` pass through).
//! * `POST /external/v1/messages/count_tokens` — free, but it needs a key
//!   that may pay and is rate-limited as sign-ins are.
//! * `POST /external/v1/embeddings` — input tokens only.

use actix_web::{web, HttpRequest, HttpResponse};
use ledger::model::Role;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use super::caller::{authenticate, authenticate_studio, bearer_token};
use super::chat::{count, object, typed};
use super::error::{ApiError, ErrorBody};
use super::extract::json_body;
use super::paid::{self, PaidBody};
use super::responses::{BearerRefused, BodyRefused, PaidRefused, ServerError};
use crate::gateway::protocol::{messages, model_name, Api, Parsed};
use crate::state::AppState;
use utoipa::openapi::schema::Type;

/// Declares a body type documented by `$schema` (its JSON passes whole to
/// its API's parser, or comes whole from the upstream).
macro_rules! documented {
    ($name:ident, $schema:expr) => {
        #[doc = concat!("The `", stringify!($name), "` schema of the document.")]
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema.into()
            }
        }
        impl ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
        }
    };
}

documented!(
    ResponseRequest,
    ObjectBuilder::new()
        .description(Some(
            "An OpenAI Responses request. Only the fields Tollgate reads are listed; \
             fields whose cost the request cannot bound are refused (400)."
        ))
        .property("model", typed(Type::String, false))
        .required("model")
        .property("input", typed(Type::String, false))
        .required("input")
        .property("instructions", typed(Type::String, true))
        .property("max_output_tokens", count())
        .property("stream", typed(Type::Boolean, true))
);
documented!(
    Response,
    ObjectBuilder::new()
        .description(Some(
            "A Responses `response` as the upstream answered it, its usage what was \
             billed, with Tollgate's `compose` object (the charge)."
        ))
        .property("id", typed(Type::String, true))
        .property("object", typed(Type::String, true))
        .property("usage", object(true))
        .property("compose", object(true))
);
documented!(
    MessageRequest,
    ObjectBuilder::new()
        .description(Some(
            "An Anthropic Messages request. `max_tokens` is lowered to what the \
             budget affords."
        ))
        .property("model", typed(Type::String, false))
        .required("model")
        .property("messages", ArrayBuilder::new().items(object(false)))
        .required("messages")
        .property("max_tokens", count())
        .required("max_tokens")
        .property("stream", typed(Type::Boolean, true))
);
documented!(
    Message,
    ObjectBuilder::new()
        .description(Some(
            "An Anthropic `message`, its usage what was billed, with Tollgate's \
             `compose` object."
        ))
        .property("id", typed(Type::String, true))
        .property("type", typed(Type::String, true))
        .property("usage", object(true))
        .property("compose", object(true))
);
documented!(
    CountTokensRequest,
    ObjectBuilder::new()
        .description(Some(
            "A Messages request's model, messages, system and tools."
        ))
        .property("model", typed(Type::String, false))
        .required("model")
        .property("messages", ArrayBuilder::new().items(object(false)))
        .required("messages")
);
documented!(
    TokenCount,
    ObjectBuilder::new()
        .description(Some("The upstream's count of the request's input tokens."))
        .property("input_tokens", count())
        .required("input_tokens")
);
documented!(
    EmbeddingRequest,
    ObjectBuilder::new()
        .description(Some(
            "An OpenAI embeddings request: a string, or strings or token arrays."
        ))
        .property("model", typed(Type::String, false))
        .required("model")
        .property("input", typed(Type::String, false))
        .required("input")
);
documented!(
    EmbeddingList,
    ObjectBuilder::new()
        .description(Some(
            "The upstream's embeddings, its usage what was billed, with Tollgate's \
             `compose` object."
        ))
        .property("object", typed(Type::String, true))
        .property("data", ArrayBuilder::new().items(object(false)))
        .property("usage", object(true))
        .property("compose", object(true))
);

#[utoipa::path(
    post,
    path = "/external/v1/responses",
    operation_id = "createResponse",
    tag = "paid",
    security(("compose_key" = []), ("studio_key" = [])),
    request_body(content = ResponseRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The response (JSON), or its events (SSE) when stream is true", body = Response),
        PaidRefused,
        BearerRefused,
        BodyRefused,
        ServerError,
    ),
)]
pub async fn responses(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    paid::call(&state, &req, payload, Api::Responses).await
}

#[utoipa::path(
    post,
    path = "/external/v1/messages",
    operation_id = "createMessage",
    tag = "paid",
    security(("compose_key" = []), ("studio_key" = []), ("anthropic_key" = [])),
    request_body(content = MessageRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The message (JSON), or its events (SSE) when stream is true", body = Message),
        PaidRefused,
        BearerRefused,
        BodyRefused,
        ServerError,
    ),
)]
pub async fn messages(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    paid::call(&state, &req, payload, Api::Messages).await
}

#[utoipa::path(
    post,
    path = "/external/v1/embeddings",
    operation_id = "createEmbeddings",
    tag = "paid",
    security(("compose_key" = []), ("studio_key" = [])),
    request_body(content = EmbeddingRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The embeddings", body = EmbeddingList),
        PaidRefused,
        BearerRefused,
        BodyRefused,
        ServerError,
    ),
)]
pub async fn embeddings(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    paid::call(&state, &req, payload, Api::Embeddings).await
}

/// Free, so: within the caller's rate first, then a key that may pay (a
/// running Compose key, or a Studio key of role `executor` and above), the
/// body, and a model that serves Messages. Nothing is held or charged.
#[utoipa::path(
    post,
    path = "/external/v1/messages/count_tokens",
    operation_id = "countMessageTokens",
    tag = "paid",
    security(("compose_key" = []), ("studio_key" = []), ("anthropic_key" = [])),
    request_body(content = CountTokensRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The input's token count", body = TokenCount),
        (status = 403, description = "The key may not pay (role, project)", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 429, description = "Too many requests from this address", body = ErrorBody),
        BearerRefused,
        BodyRefused,
        ServerError,
    ),
)]
pub async fn count_tokens(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if let Some(peer) = req.peer_addr() {
        state
            .count_tokens_limiter
            .check(peer.ip())
            .map_err(|limited| {
                ApiError::too_many_requests(
                    "too many count_tokens requests from this address; retry shortly",
                    limited.retry_after,
                )
            })?;
    }
    if bearer_token(&req)?.starts_with("compose-") {
        authenticate(&state, &req).await?;
    } else {
        authenticate_studio(&state, &req)
            .await?
            .require_role(Role::Executor)?;
    }
    let body: PaidBody =
        json_body(&req, payload, state.settings.gateway.chat_body_max_bytes).await?;
    let mut body = body.0;
    messages::check_request(&body)?;
    // `count_tokens` takes no `max_tokens`; the model's fields are checked
    // as a Messages call's would be.
    body.remove("max_tokens");
    let parsed = Parsed {
        api: Api::Messages,
        model: model_name(&body)?,
        stream: false,
        max_tokens: None,
        wants_usage: false,
        body,
    };
    let model = state.gateway.model_for(&parsed)?;
    let count = state
        .gateway
        .count_tokens(&model, parsed.body, paid::passed_headers(&req))
        .await?;
    Ok(HttpResponse::Ok().json(count))
}
