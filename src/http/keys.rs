//! `/api/keys`: create, list, get and revoke Compose keys, and list a key's
//! charges (docs/reference.md, Compose keys).

use actix_web::{web, HttpRequest, HttpResponse};
use actors::budget::BudgetStatus;
use ledger::model::{KeyRecord, NewKey, Purpose};
use ledger::time::now_ms;
use ledger::{Amount, ChainId, KeyId, WalletAddress};
use serde::Deserialize;
use utoipa::ToSchema;

use super::caller::{authenticate, require_same_wallet, Caller};
use super::error::{ApiError, ErrorBody};
use super::extract::{self, chain_header, json_body, wallet_header, RequestBody};
use super::fields::{self, key_name, required_budget};
use super::responses::{BearerRefused, BodyRefused, ServerError};
use super::views::{ChargeList, ChargeView, CreatedKey, KeyList, KeyView, PayerHeldBack};
use crate::gateway::revocation::stop_keys;
use crate::state::AppState;

/// `POST /api/keys`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateKeyRequest {
    /// Atomic units, greater than zero.
    #[serde(rename = "budgetLimit", default, deserialize_with = "fields::amount")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$", required)]
    budget_limit: Option<Amount>,
    /// `api` (default) or `session`.
    #[serde(default, deserialize_with = "fields::purpose")]
    #[schema(value_type = Option<String>)]
    purpose: Option<Purpose>,
    #[serde(default, deserialize_with = "fields::text")]
    name: Option<String>,
    /// Milliseconds since the Unix epoch.
    #[serde(rename = "expiresAt", default, deserialize_with = "fields::millis")]
    expires_at: Option<i64>,
    /// When present, must equal the `x-chain-id` header.
    #[serde(rename = "chainId", default, deserialize_with = "fields::chain_id")]
    #[schema(value_type = Option<u64>)]
    chain_id: Option<Option<u64>>,
}

impl RequestBody for CreateKeyRequest {}

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
        (status = 402, description = "The wallet's funds cannot cover the budget", body = ErrorBody),
        (status = 403, description = "Another wallet's or chain's key, or not a session key", body = ErrorBody),
        (status = 404, description = "No such chain here", body = ErrorBody),
        (status = 409, description = "The wallet holds too many active keys", body = ErrorBody),
        (status = 429, description = "Too many key creations from this address or for this wallet (Retry-After says when)", body = ErrorBody),
        BearerRefused,
        BodyRefused,
        ServerError,
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
    let body: CreateKeyRequest =
        json_body(&req, payload, state.settings.http.json_body_max_bytes).await?;
    let new_key = key_asked(&state, &caller, wallet, chain, body).await?;
    let (new_key, token) = state.signer.mint(new_key);
    // Checked again in the inserting transaction: a sign-in that supersedes
    // the caller's session meanwhile wins, and this creation is refused.
    let key = state
        .store
        .create_key_by(
            &new_key,
            state.settings.keys.max_active_per_wallet,
            caller.key.session_id.as_ref(),
        )
        .await?;
    tracing::info!(key_id = %key.id, wallet = %key.wallet, chain = %key.chain_id, budget = %key.budget_limit, "key created");
    Ok(HttpResponse::Created().json(CreatedKey::of(&key, &token)))
}

/// The key `body` asks for (not yet minted), its fields checked in order —
/// budget, expiry, chain, purpose, name — then the wallet's funds read.
async fn key_asked(
    state: &AppState,
    caller: &Caller,
    wallet: WalletAddress,
    chain: ChainId,
    body: CreateKeyRequest,
) -> Result<NewKey, ApiError> {
    let budget = required_budget(state, body.budget_limit)?;
    let now = now_ms();
    let keys = &state.settings.keys;
    let mut expires_at_ms = expiry(body.expires_at, now, keys.default_ttl_ms, keys.max_ttl_ms)?;
    if let Some(asked) = body.chain_id {
        if asked.map(ChainId) != Some(chain) {
            return Err(ApiError::bad_request(
                "chain_mismatch",
                format!(
                    "chainId must equal the {} header ({chain})",
                    extract::CHAIN_HEADER
                ),
            ));
        }
    }
    let purpose = body.purpose.unwrap_or(Purpose::Api);
    let session_id = match purpose {
        Purpose::Api => None,
        Purpose::Session => {
            // Bound to the caller's session, and never outliving it.
            expires_at_ms = expires_at_ms.min(caller.key.expires_at_ms);
            caller.key.session_id.clone()
        }
    };
    let name = key_name(state, body.name)?;
    let funds = state.funds_for(&wallet, chain).await?;
    Ok(NewKey {
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
    })
}

/// An optional `expiresAt`, checked against now and the longest lifetime.
fn expiry(
    at: Option<i64>,
    now: i64,
    default_ttl_ms: i64,
    max_ttl_ms: i64,
) -> Result<i64, ApiError> {
    match at {
        None => Ok(now.saturating_add(default_ttl_ms)),
        Some(at) if at <= now => Err(ApiError::invalid_field(
            "expiresAt",
            "must be in the future",
        )),
        Some(at) if at > now.saturating_add(max_ttl_ms) => Err(ApiError::invalid_field(
            "expiresAt",
            format!("must be at most {max_ttl_ms} ms from now"),
        )),
        Some(at) => Ok(at),
    }
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
        (status = 403, description = "Another wallet's key", body = ErrorBody),
        (status = 404, description = "No such chain here", body = ErrorBody),
        BearerRefused,
        ServerError,
    ),
)]
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&state, &req).await?;
    let wallet = wallet_header(&req)?;
    let chain = chain_header(&state, &req)?;
    require_same_wallet(&caller, &wallet)?;
    let keys = state.store.keys_for_wallet(&wallet, chain).await?;
    Ok(HttpResponse::Ok().json(KeyList {
        keys: keys.iter().map(KeyView::of).collect(),
    }))
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
        (status = 403, description = "Another wallet's key", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        BearerRefused,
        ServerError,
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&state, &req).await?;
    let key = owned_key(&state, &caller, &path).await?;
    let mut view = KeyView::of(&key);
    // Why its calls are refused, when settlement holds its payer back.
    view.payer_held_back = state
        .store
        .held_back_payer(&key.wallet, key.chain_id)
        .await?
        .map(|held| PayerHeldBack::of(&held));
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
        (status = 403, description = "Another wallet's key, or an api key revoking another", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        BearerRefused,
        ServerError,
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
    Ok(HttpResponse::Ok().json(KeyView::of(&key)))
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
        (status = 403, description = "Another wallet's key", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        BearerRefused,
        ServerError,
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
    Ok(HttpResponse::Ok().json(ChargeList {
        charges: charges.iter().map(ChargeView::of).collect(),
        key_id: key.id,
    }))
}
