//! `/api/keys`: create, list, get and revoke Compose keys, and list a key's
//! charges (docs/reference.md, Compose keys).

use actix_web::{web, HttpRequest, HttpResponse};
use actors::budget::BudgetStatus;
use ledger::model::{KeyRecord, NewKey, Purpose};
use ledger::time::now_ms;
use ledger::{ChainId, KeyId};
use serde_json::{json, Value};

use super::caller::{authenticate, require_same_wallet, Caller};
use super::error::{held_back_details, ApiError};
use super::extract::{self, chain_header, wallet_header};
use super::extract::{budget_within_max, expiry_field, name_field};
#[allow(unused_imports)] // named by the #[utoipa::path] attributes
use super::openapi::{ChargeList, CreateKeyRequest, CreatedKey, ErrorBody, KeyList, KeyView};
use super::views::{charge_json, created_key_json, key_json};
use crate::gateway::revocation::stop_keys;
use crate::state::AppState;

/// `POST /api/keys`: a session key of the wallet creates a key after the
/// funding check.
#[utoipa::path(
    post,
    path = "/api/keys",
    operation_id = "createKey",
    tag = "compose",
    security(("compose_key" = [])),
    params(
        ("x-session-user-address" = String, Header, description = "The wallet the bearer key belongs to"),
        ("x-chain-id" = u64, Header, description = "An EVM chain id configured here"),
    ),
    request_body(content = CreateKeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The key, with its token (shown this once)", body = CreatedKey),
        (status = 400, description = "Malformed JSON or a bad field", body = ErrorBody),
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 402, description = "The wallet's funds cannot cover the budget", body = ErrorBody),
        (status = 403, description = "Another wallet's or chain's key, or not a session key", body = ErrorBody),
        (status = 404, description = "No such chain here", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The wallet holds too many active keys", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not application/json", body = ErrorBody),
        (status = 422, description = "A field has an unacceptable value", body = ErrorBody),
        (status = 429, description = "Too many key creations from this address or for this wallet (Retry-After says when)", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&state, &req).await?;
    state.limit_key_creation(req.peer_addr().map(|p| p.ip()), &caller.key.wallet)?;
    let wallet = wallet_header(&req)?;
    let chain = chain_header(&state, &req)?.ok_or_else(|| {
        ApiError::bad_request(
            "missing_header",
            format!("header {} is required", extract::CHAIN_HEADER),
        )
    })?;
    require_same_wallet(&caller, &wallet)?;
    if caller.key.chain_id != chain {
        return Err(ApiError::forbidden(
            "chain_mismatch",
            "the bearer key belongs to another chain",
        ));
    }
    if caller.key.purpose != Purpose::Session {
        return Err(ApiError::forbidden(
            "session_key_required",
            "only a session key (from POST /api/sessions) may create keys",
        ));
    }
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
    let now = now_ms();
    let keys = &state.settings.keys;
    let mut expires_at_ms = expiry_field(&body, now, keys.default_ttl_ms, keys.max_ttl_ms)?;
    match body.get("chainId") {
        None | Some(Value::Null) => {}
        Some(value) => {
            if value.as_u64().map(ChainId) != Some(chain) {
                return Err(ApiError::bad_request(
                    "chain_mismatch",
                    format!(
                        "chainId must equal the {} header ({chain})",
                        extract::CHAIN_HEADER
                    ),
                ));
            }
        }
    }
    let purpose = match extract::string_field(&body, "purpose")? {
        None => Purpose::Api,
        Some(text) => Purpose::parse(text)
            .ok_or_else(|| ApiError::invalid_field("purpose", "must be \"api\" or \"session\""))?,
    };
    let session_id = match purpose {
        Purpose::Api => None,
        Purpose::Session => {
            // Bound to the caller's session, and never outliving it.
            expires_at_ms = expires_at_ms.min(caller.key.expires_at_ms);
            caller.key.session_id.clone()
        }
    };
    let name = name_field(&state, &body)?;
    let funds = state.funds_for(&wallet, chain).await?;
    let (new_key, token) = state.signer.mint(NewKey {
        id: KeyId::generate(),
        token_sha256: String::new(),
        wallet,
        chain_id: chain,
        purpose,
        session_id,
        name,
        budget_limit: budget,
        created_at_ms: now,
        expires_at_ms,
        funds,
    });
    // Checked again in the inserting transaction: a sign-in that supersedes
    // the caller's session meanwhile wins, and this creation is refused.
    let key = state
        .store
        .create_key_by(
            &new_key,
            keys.max_active_per_wallet,
            caller.key.session_id.as_ref(),
        )
        .await?;
    tracing::info!(key_id = %key.id, wallet = %key.wallet, chain = %key.chain_id, budget = %key.budget_limit, "key created");
    Ok(HttpResponse::Created().json(created_key_json(&key, &token)))
}

/// `GET /api/keys`: the wallet's keys (filtered by `x-chain-id` when sent).
#[utoipa::path(
    get,
    path = "/api/keys",
    operation_id = "listKeys",
    tag = "compose",
    security(("compose_key" = [])),
    params(
        ("x-session-user-address" = String, Header, description = "The wallet the bearer key belongs to"),
        ("x-chain-id" = Option<u64>, Header, description = "An EVM chain id configured here"),
    ),
    responses(
        (status = 200, description = "The wallet's keys", body = KeyList),
        (status = 400, description = "A missing or malformed header", body = ErrorBody),
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "Another wallet's key", body = ErrorBody),
        (status = 404, description = "No such chain here", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
    ),
)]
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&state, &req).await?;
    let wallet = wallet_header(&req)?;
    let chain = chain_header(&state, &req)?;
    require_same_wallet(&caller, &wallet)?;
    let keys = state.store.keys_for_wallet(&wallet, chain).await?;
    Ok(HttpResponse::Ok().json(json!({ "keys": keys.iter().map(key_json).collect::<Vec<_>>() })))
}

/// Loads the key named in the path, which must belong to the caller's wallet.
async fn owned_key(state: &AppState, caller: &Caller, key_id: &str) -> Result<KeyRecord, ApiError> {
    let missing = || ApiError::not_found("key_not_found", "no key with this id");
    let id = KeyId::parse(key_id).ok_or_else(missing)?;
    let key = state.store.key(&id).await?.ok_or_else(missing)?;
    if key.wallet != caller.key.wallet {
        return Err(ApiError::forbidden(
            "wallet_mismatch",
            "the key belongs to another wallet",
        ));
    }
    Ok(key)
}

/// `GET /api/keys/{keyId}`.
#[utoipa::path(
    get,
    path = "/api/keys/{key_id}",
    operation_id = "getKey",
    tag = "compose",
    security(("compose_key" = [])),
    params(
        ("key_id" = String, Path, description = "A Compose key id"),
    ),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "Another wallet's key", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&state, &req).await?;
    let key = owned_key(&state, &caller, &path).await?;
    let mut view = key_json(&key);
    // Why its calls are refused, when settlement holds its payer back.
    if let Some(held) = state
        .store
        .held_back_payer(&key.wallet, key.chain_id)
        .await?
    {
        view["payerHeldBack"] = held_back_details(&held);
    }
    Ok(HttpResponse::Ok().json(view))
}

/// `DELETE /api/keys/{keyId}`: revokes. Allowed to the wallet's session key,
/// or to the key itself; ownership comes from the signed token, not a header.
#[utoipa::path(
    delete,
    path = "/api/keys/{key_id}",
    operation_id = "revokeKey",
    tag = "compose",
    security(("compose_key" = [])),
    params(
        ("key_id" = String, Path, description = "A Compose key id"),
    ),
    responses(
        (status = 200, description = "The key, revoked", body = KeyView),
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "Another wallet's key, or an api key revoking another", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
    ),
)]
pub async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&state, &req).await?;
    let key = owned_key(&state, &caller, &path).await?;
    if caller.key.purpose != Purpose::Session && caller.key.id != key.id {
        return Err(ApiError::forbidden(
            "session_key_required",
            "an api key may revoke only itself; use a session key",
        ));
    }
    // Refused from the key's next paid call on: its actor is told at once.
    // Its unspent budget returns to the wallet once no call can charge it.
    let store = state.store.clone();
    let id = key.id.clone();
    let key = stop_keys(
        &state.gateway.registry,
        &state.store,
        vec![key.id],
        BudgetStatus::Revoked,
        move |drained| async move {
            let key = store
                .revoke_key_draining(&id, now_ms(), drained.contains(&id))
                .await?;
            let stopped = vec![key.id.clone()];
            Ok((key, stopped))
        },
    )
    .await?;
    tracing::info!(key_id = %key.id, by = %caller.claims.key_id, "key revoked");
    Ok(HttpResponse::Ok().json(key_json(&key)))
}

/// `GET /api/keys/{keyId}/charges`.
#[utoipa::path(
    get,
    path = "/api/keys/{key_id}/charges",
    operation_id = "keyCharges",
    tag = "compose",
    security(("compose_key" = [])),
    params(
        ("key_id" = String, Path, description = "A Compose key id"),
    ),
    responses(
        (status = 200, description = "The key's charges, oldest first", body = ChargeList),
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "Another wallet's key", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
    ),
)]
pub async fn charges(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&state, &req).await?;
    let key = owned_key(&state, &caller, &path).await?;
    let charges = state.store.charges_for_key(&key.id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "keyId": key.id,
        "charges": charges.iter().map(charge_json).collect::<Vec<_>>(),
    })))
}
