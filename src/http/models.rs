//! `GET /external/v1/models`: the models a key may call, in OpenAI's list
//! shape, each with its price (atomic USDC per million tokens).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::caller::{authenticate, authenticate_studio, bearer_token};
use super::error::ApiError;
#[allow(unused_imports)] // named by the #[utoipa::path] attributes
use super::openapi::{ErrorBody, ModelList};
use crate::state::AppState;
use ledger::model::Role;

/// Any key that may make paid calls: an active Compose key, or a Studio key
/// of role `executor` and above.
#[utoipa::path(
    get,
    path = "/external/v1/models",
    operation_id = "listModels",
    tag = "paid",
    security(("compose_key" = []), ("studio_key" = [])),
    responses(
        (status = 200, description = "The models and their prices", body = ModelList),
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
    ),
)]
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if bearer_token(&req)?.starts_with("compose-") {
        authenticate(&state, &req).await?;
    } else {
        authenticate_studio(&state, &req)
            .await?
            .require_role(Role::Executor)?;
    }
    let mut names: Vec<&String> = state.gateway.models.keys().collect();
    names.sort();
    let data: Vec<_> = names
        .into_iter()
        .filter_map(|name| state.gateway.models.get(name))
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "tollgate",
                "pricing": {
                    "version": m.price.version,
                    "inputAtomicPerMillion": m.price.input_atomic_per_million.to_string(),
                    "outputAtomicPerMillion": m.price.output_atomic_per_million.to_string(),
                    "requestFeeAtomic": m.price.request_fee_atomic.to_string(),
                },
                "maxOutputTokens": m.max_output_tokens,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "object": "list", "data": data })))
}
