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
use ledger::model::{KeyRecord, NewKey, ProjectRecord, Purpose, Role};
use ledger::time::now_ms;
use ledger::KeyId;
use rand::RngCore;
use serde_json::json;

use super::caller::{authenticate_studio, own_project};
use super::error::ApiError;
use super::extract;
use super::extract::budget_within_max;
#[allow(unused_imports)] // named by the #[utoipa::path] attributes
use super::openapi::{ErrorBody, ProjectBudget, SetBudgetRequest};
use crate::auth::token::token_sha256;
use crate::gateway::revocation::stop_keys;
use crate::state::AppState;

fn budget_json(project: &ProjectRecord, key: &KeyRecord) -> serde_json::Value {
    json!({
        "projectId": project.id,
        "keyId": key.id,
        "budgetLimit": key.budget_limit,
        "budgetUsed": key.budget_used,
        "budgetRemaining": key.budget_remaining(),
        "status": key.status_at(now_ms()),
        "chainId": key.chain_id,
        "owner": key.wallet,
    })
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
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 404, description = "No such project, or it has no budget", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
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
    Ok(HttpResponse::Ok().json(budget_json(&project, &key)))
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
        (status = 400, description = "Malformed JSON or a bad field", body = ErrorBody),
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 402, description = "The wallet's funds cannot cover the budget", body = ErrorBody),
        (status = 403, description = "Only an admin sets a budget", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The project's budget changed meanwhile", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not application/json", body = ErrorBody),
        (status = 422, description = "A field has an unacceptable value", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
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
    let body = extract::json_object(&req, payload, state.settings.http.json_body_max_bytes).await?;
    let budget = extract::amount_field(&body, "budgetLimit")?
        .ok_or_else(|| ApiError::invalid_field("budgetLimit", "is required"))?;
    if budget.is_zero() {
        return Err(ApiError::invalid_field(
            "budgetLimit",
            "must be greater than zero",
        ));
    }
    let budget = budget_within_max(&state, budget)?;
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
    let new_key = NewKey {
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
    };
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
    Ok(HttpResponse::Ok().json(budget_json(&project, &key)))
}
