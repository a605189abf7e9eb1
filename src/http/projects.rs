//! `/api/v1/projects/{id}/budget`: a Studio project's USDC budget, which its
//! keys of role `executor` and above spend on `/external/v1`.
//!
//! The budget is a Compose key row owned by the account's funding wallet
//! (`tollgate studio bootstrap --wallet`), with no token: it goes through the
//! same funding check when set, and the same key actor, holds and charges
//! when spent. Setting a new budget replaces the old one: the old key is
//! revoked (its charges stay) and a new one starts at zero spent.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actors::budget::BudgetStatus;
use ledger::model::{KeyRecord, KeyStatus, NewKey, ProjectRecord, Purpose, Role};
use ledger::time::now_ms;
use ledger::{Amount, ChainId, KeyId, ProjectId, WalletAddress};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::caller::{authenticate_studio, own_project, StudioCaller};
use super::error::{ApiError, ErrorBody};
use super::extract::{json_body, RequestBody};
use super::fields::{self, required_budget};
use super::responses::{BearerRefused, BodyRefused, ServerError};
use crate::auth::token::token_sha256;
use crate::gateway::revocation::stop_keys;
use crate::state::AppState;

/// `PUT /api/v1/projects/{id}/budget`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SetBudgetRequest {
    #[serde(rename = "budgetLimit", default, deserialize_with = "fields::amount")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$", required)]
    budget_limit: Option<Amount>,
}

impl RequestBody for SetBudgetRequest {}

/// A Studio project's budget: the Compose key it spends from.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectBudget {
    #[serde(rename = "projectId")]
    #[schema(value_type = String)]
    project_id: ProjectId,
    #[serde(rename = "keyId")]
    #[schema(value_type = String)]
    key_id: KeyId,
    #[serde(rename = "budgetLimit")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    budget_limit: Amount,
    #[serde(rename = "budgetUsed")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    budget_used: Amount,
    #[serde(rename = "budgetRemaining")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    budget_remaining: Amount,
    #[schema(value_type = String)]
    status: KeyStatus,
    #[serde(rename = "chainId")]
    #[schema(value_type = u64)]
    chain_id: ChainId,
    #[schema(value_type = String)]
    owner: WalletAddress,
}

impl ProjectBudget {
    fn of(project: &ProjectRecord, key: &KeyRecord) -> ProjectBudget {
        ProjectBudget {
            project_id: project.id.clone(),
            key_id: key.id.clone(),
            budget_limit: key.budget_limit,
            budget_used: key.budget_used,
            budget_remaining: key.budget_remaining(),
            status: key.status_at(now_ms()),
            chain_id: key.chain_id,
            owner: key.wallet,
        }
    }
}

/// `GET /api/v1/projects/{id}/budget` (reader and above).
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/budget",
    operation_id = "getProjectBudget",
    tag = "studio",
    security(("studio_key" = [])),
    params(
        ("id" = String, Path, description = "A Studio project id"),
    ),
    responses(
        (status = 200, description = "The project's budget", body = ProjectBudget),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 404, description = "No such project, or it has no budget", body = ErrorBody),
        BearerRefused,
        ServerError,
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate_studio(&state, &req).await?;
    caller.require(Role::Reader)?;
    let project = own_project(&state, &caller, &path).await?;
    let no_budget = || ApiError::not_found("no_budget", "the project has no budget");
    let key_id = project.budget_key_id.clone().ok_or_else(no_budget)?;
    let key = state.store.key(&key_id).await?.ok_or_else(no_budget)?;
    Ok(HttpResponse::Ok().json(ProjectBudget::of(&project, &key)))
}

/// `PUT /api/v1/projects/{id}/budget` `{"budgetLimit"}` (admin only).
#[utoipa::path(
    put,
    path = "/api/v1/projects/{id}/budget",
    operation_id = "setProjectBudget",
    tag = "studio",
    security(("studio_key" = [])),
    params(
        ("id" = String, Path, description = "A Studio project id"),
    ),
    request_body(content = SetBudgetRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The project's budget, set", body = ProjectBudget),
        (status = 402, description = "The wallet's funds cannot cover the budget", body = ErrorBody),
        (status = 403, description = "Only an admin sets a budget", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 409, description = "The project's budget changed meanwhile", body = ErrorBody),
        BearerRefused,
        BodyRefused,
        ServerError,
    ),
)]
pub async fn set(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate_studio(&state, &req).await?;
    caller.require(Role::Admin)?;
    let project = own_project(&state, &caller, &path).await?;
    let body: SetBudgetRequest =
        json_body(&req, payload, state.settings.http.json_body_max_bytes).await?;
    let budget = required_budget(&state, body.budget_limit)?;
    let new_key = budget_key(&state, &caller, &project, budget).await?;
    // The budget being replaced stops taking calls; its unspent part stays
    // committed against the wallet until no call can charge it (invariant 7),
    // which is at once when none is in flight.
    let store = state.store.clone();
    let max_active_keys = state.settings.keys.max_active_per_wallet;
    let replaced: Vec<KeyId> = project.budget_key_id.iter().cloned().collect();
    let for_change = project.clone();
    let key = stop_keys(
        &state.gateway.registry,
        &state.store,
        replaced,
        BudgetStatus::Revoked,
        move |drained| async move {
            let (key, previous) = store
                .set_project_budget(&for_change, &new_key, max_active_keys, &drained)
                .await?;
            Ok((key, previous.into_iter().collect()))
        },
    )
    .await?;
    tracing::info!(project = %project.id, key_id = %key.id, budget = %key.budget_limit, by = %caller.key.id, "project budget set");
    Ok(HttpResponse::Ok().json(ProjectBudget::of(&project, &key)))
}

/// The budget key of `project`: owned by its account's funding wallet,
/// after the funding check.
async fn budget_key(
    state: &AppState,
    caller: &StudioCaller,
    project: &ProjectRecord,
    budget: Amount,
) -> Result<NewKey, ApiError> {
    let account = state
        .store
        .account(&caller.key.account_id)
        .await?
        .ok_or_else(|| ApiError::internal(&"a key's account is missing"))?;
    let (wallet, chain) = account.funding.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_funding_wallet",
            "the account has no funding wallet (tollgate studio bootstrap --wallet)",
        )
    })?;
    // No token is ever issued for a budget key: its stored hash is of random
    // bytes nobody holds, so it can only be spent through Studio keys.
    let mut unheld = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut unheld);
    let now = now_ms();
    Ok(NewKey {
        id: KeyId::generate(),
        token_sha256: token_sha256(&hex::encode(unheld)),
        wallet,
        chain_id: chain,
        purpose: Purpose::Api,
        session_id: None,
        name: format!("studio project {}", project.id),
        budget_limit: budget,
        created_at_ms: now,
        expires_at_ms: now.saturating_add(state.settings.keys.max_ttl_ms),
        funds: state.funds_for(&wallet, chain).await?,
    })
}
