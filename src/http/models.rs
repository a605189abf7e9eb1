//! `GET /external/v1/models`: the models a key may call, in OpenAI's list
//! shape, each with its price (atomic USDC per million tokens).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::caller::{authenticate, authenticate_studio, bearer_token};
use super::error::ApiError;
use crate::state::AppState;
use ledger::model::Role;

/// Any key that may make paid calls: an active Compose key, or a Studio key
/// of role `executor` and above.
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
