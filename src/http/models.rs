//! `GET /external/v1/models`: the models a key may call, in OpenAI's list
//! shape, each with its price (atomic USDC per million tokens) and the APIs
//! that serve it.

use actix_web::{web, HttpRequest, HttpResponse};
use ledger::model::Role;
use serde::Serialize;
use utoipa::ToSchema;

use super::caller::{authenticate, authenticate_studio, bearer_token};
use super::error::{ApiError, ErrorBody};
use super::responses::{BearerRefused, ServerError};
use crate::gateway::Model;
use crate::state::AppState;

/// `GET /external/v1/models`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelList {
    /// Always `list`.
    object: &'static str,
    data: Vec<ModelView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelView {
    id: String,
    /// Always `model`.
    object: &'static str,
    created: i64,
    owned_by: &'static str,
    pricing: ModelPricing,
    #[serde(rename = "maxOutputTokens")]
    max_output_tokens: u64,
    /// The APIs that serve it (`chat.completions`, `responses`, `messages`,
    /// `embeddings`): its upstream's protocol.
    apis: Vec<&'static str>,
}

/// A model's price (atomic units as digit strings).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelPricing {
    version: String,
    #[serde(rename = "inputAtomicPerMillion")]
    #[schema(pattern = r"^[0-9]{1,39}$")]
    input_atomic_per_million: String,
    /// Input tokens read from the upstream's prompt cache.
    #[serde(rename = "cachedInputAtomicPerMillion")]
    #[schema(pattern = r"^[0-9]{1,39}$")]
    cached_input_atomic_per_million: String,
    /// Input tokens written to the upstream's prompt cache.
    #[serde(rename = "cacheWriteAtomicPerMillion")]
    #[schema(pattern = r"^[0-9]{1,39}$")]
    cache_write_atomic_per_million: String,
    #[serde(rename = "outputAtomicPerMillion")]
    #[schema(pattern = r"^[0-9]{1,39}$")]
    output_atomic_per_million: String,
    #[serde(rename = "requestFeeAtomic")]
    #[schema(pattern = r"^[0-9]{1,39}$")]
    request_fee_atomic: String,
}

impl ModelView {
    fn of(model: &Model) -> ModelView {
        let price = &model.price;
        ModelView {
            id: model.name.clone(),
            object: "model",
            created: 0,
            owned_by: "tollgate",
            pricing: ModelPricing {
                version: price.version.clone(),
                input_atomic_per_million: price.input_atomic_per_million.to_string(),
                cached_input_atomic_per_million: price.cached_input_atomic_per_million.to_string(),
                cache_write_atomic_per_million: price.cache_write_atomic_per_million.to_string(),
                output_atomic_per_million: price.output_atomic_per_million.to_string(),
                request_fee_atomic: price.request_fee_atomic.to_string(),
            },
            max_output_tokens: model.max_output_tokens,
            apis: model.apis().iter().map(|api| api.name()).collect(),
        }
    }
}

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
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        BearerRefused,
        ServerError,
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
    let data = names
        .into_iter()
        .filter_map(|name| state.gateway.models.get(name))
        .map(|model| ModelView::of(model))
        .collect();
    Ok(HttpResponse::Ok().json(ModelList {
        object: "list",
        data,
    }))
}
