//! `/api/v1/apikeys`: Studio API keys, field for field as the Composable
//! Studio contract documents them (docs/reference.md, "Studio"), and
//! `GET /.well-known/jwks.json`.
//!
//! Every route authenticates the caller's own key ([`StudioCaller`]: an `sk`
//! or `pk` value, or a JWT from `/token`), then checks its role:
//!
//! | route | least role |
//! |---|---|
//! | `GET /apikeys`, `GET /apikeys/{id}` | reader |
//! | `GET /apikeys/{id}?withValue=true` | developer |
//! | `GET /apikeys/{id}/token` | reader for its own key, developer for another |
//! | `GET /apikeys/pk` | application |
//! | `POST /apikeys`, `PUT /apikeys/{id}` | developer |
//! | `DELETE /apikeys/{id}` | admin |
//!
//! A caller never creates, edits or mints a token for a key with a role above
//! its own, and sees only keys of its own account and project: another
//! project's or account's key answers 404 like a missing one. A JWT caller
//! acts with, and mints at most, min(its role, its key's current role).
//!
//! Invariant 9 on `PUT` (`StudioCaller::may_update`, decided on the row
//! under its lock): a restriction — a disable, an expiry set or shortened —
//! records the highest role that made it, and is lifted (enable, expiry
//! lengthened or removed) only by a role at least as high, whatever the key's
//! role meanwhile.

use actix_web::{web, HttpRequest, HttpResponse};
use ledger::model::{ApiKeyRecord, ApiKeyType, ApiKeyUpdate, Role};
use ledger::time::now_ms;
use ledger::ApiKeyId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::caller::{apikey_not_found, authenticate_studio, own_project, StudioCaller};
use super::error::{ApiError, ErrorBody};
use super::extract::{json_body, RequestBody};
use super::fields::{self, required, studio_name};
use super::responses::{BearerRefused, BodyRefused, ServerError};
use super::views::{iso, ApiKeyTypeName, ApiKeyView, RoleName};
use crate::state::AppState;
use crate::studio::issue::{mint, KeySpec};
use crate::studio::jwt::JwtClaims;

/// `POST /api/v1/apikeys`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateApiKeyRequest {
    #[serde(default, deserialize_with = "fields::text")]
    #[schema(value_type = String, min_length = 1, max_length = 128, required)]
    name: Option<String>,
    /// `sk` (secret) or `pk` (public).
    #[serde(rename = "type", default, deserialize_with = "fields::key_type")]
    #[schema(value_type = ApiKeyTypeName, required)]
    kind: Option<ApiKeyTypeName>,
    /// Required for an `sk`; a `pk` is always an executor.
    #[serde(default, deserialize_with = "fields::role")]
    role: Option<RoleName>,
    /// ISO 8601 in the future, or null for no expiry.
    #[serde(default, deserialize_with = "fields::iso_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<i64>>,
}

impl RequestBody for CreateApiKeyRequest {}

/// `PUT /api/v1/apikeys/{id}`: each field optional, no other.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiKeyRequest {
    #[serde(default, deserialize_with = "fields::text")]
    #[schema(min_length = 1, max_length = 128)]
    name: Option<String>,
    #[serde(default, deserialize_with = "fields::role")]
    role: Option<RoleName>,
    #[serde(default, deserialize_with = "fields::flag")]
    enabled: Option<bool>,
    /// ISO 8601 in the future, or null to remove the expiry.
    #[serde(default, deserialize_with = "fields::iso_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<i64>>,
}

impl RequestBody for UpdateApiKeyRequest {}

/// `DELETE /api/v1/apikeys/{id}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deleted {
    acknowledged: bool,
    #[serde(rename = "deletedCount")]
    deleted_count: u64,
}

/// `GET /api/v1/apikeys/{id}/token`: a short-lived JWT for the key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenView {
    token: String,
}

/// `GET /api/v1/apikeys/pk`: a public key's value and expiry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyView {
    value: String,
    expires_at: Option<String>,
}

/// `GET /.well-known/jwks.json`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Jwks {
    #[schema(value_type = Vec<Object>)]
    keys: Vec<Value>,
}

/// The key named in the path, in the caller's account and project.
async fn target(
    state: &AppState,
    caller: &StudioCaller,
    id: &str,
) -> Result<ApiKeyRecord, ApiError> {
    let id = ApiKeyId::parse(id).ok_or_else(apikey_not_found)?;
    let key = state
        .store
        .apikey(&caller.key.account_id, &id)
        .await?
        .ok_or_else(apikey_not_found)?;
    if key.project_id != caller.key.project_id {
        return Err(apikey_not_found());
    }
    Ok(key)
}

/// An expiry asked for (`Some(None)`: none), which must be in the future.
fn future(expires_at: Option<Option<i64>>) -> Result<Option<Option<i64>>, ApiError> {
    if let Some(Some(at)) = expires_at {
        if at <= now_ms() {
            return Err(ApiError::invalid_field(
                "expires_at",
                "must be in the future",
            ));
        }
    }
    Ok(expires_at)
}

/// Mints a key in the caller's project (within its bound) and stores it.
async fn issue(
    state: &AppState,
    caller: &StudioCaller,
    name: String,
    key_type: ApiKeyType,
    role: Role,
    expires_at_ms: Option<i64>,
) -> Result<(ApiKeyRecord, String), ApiError> {
    let account = &caller.key.account_id;
    let project = &caller.key.project_id;
    let (record, value) = mint(
        &state.studio.secrets,
        KeySpec {
            account: account.clone(),
            project: project.clone(),
            name,
            key_type,
            role,
            expires_at_ms,
            by: caller.audit(),
            by_role: caller.role,
            now_ms: now_ms(),
        },
    )
    .map_err(|e| ApiError::internal(&e))?;
    let record = state
        .store
        .create_apikey(&record, state.settings.studio.keys_per_project_max)
        .await?;
    tracing::info!(apikey = %record.id, by = %caller.key.id, role = record.role.as_str(), "studio key created");
    Ok((record, value))
}

/// `GET /api/v1/apikeys`: the caller's project's keys, masked.
#[utoipa::path(
    get,
    path = "/api/v1/apikeys",
    operation_id = "listApiKeys",
    tag = "studio",
    security(("studio_key" = [])),
    responses(
        (status = 200, description = "The project's keys, masked", body = Vec<ApiKeyView>),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        BearerRefused,
        ServerError,
    ),
)]
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = authenticate_studio(&state, &req).await?;
    caller.require(Role::Reader)?;
    let keys = state
        .store
        .apikeys(&caller.key.account_id, &caller.key.project_id)
        .await?;
    Ok(HttpResponse::Ok().json(keys.iter().map(ApiKeyView::of).collect::<Vec<_>>()))
}

/// `POST /api/v1/apikeys` `{name, type, role, expires_at}` → 201 with the
/// key and, this once, its value.
#[utoipa::path(
    post,
    path = "/api/v1/apikeys",
    operation_id = "createApiKey",
    tag = "studio",
    security(("studio_key" = [])),
    request_body(content = CreateApiKeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The key, with its value", body = ApiKeyView),
        (status = 403, description = "The caller's role is too low for this key", body = ErrorBody),
        (status = 409, description = "The project holds too many keys", body = ErrorBody),
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
    let caller = authenticate_studio(&state, &req).await?;
    caller.require(Role::Developer)?;
    let body: CreateApiKeyRequest =
        json_body(&req, payload, state.settings.http.json_body_max_bytes).await?;
    let name = studio_name(&state, &required(body.name, "name")?)?;
    let key_type = ApiKeyType::from(required(body.kind, "type")?);
    let role = match (key_type, body.role.map(Role::from)) {
        (ApiKeyType::Sk, Some(role)) => role,
        (ApiKeyType::Sk, None) => return Err(ApiError::invalid_field("role", "is required")),
        (ApiKeyType::Pk, None | Some(Role::Executor)) => Role::Executor,
        (ApiKeyType::Pk, Some(_)) => {
            return Err(ApiError::invalid_field(
                "role",
                "of a public key is always executor",
            ))
        }
    };
    caller.may_grant(role)?;
    let expires_at_ms = future(body.expires_at)?.flatten();
    let (record, value) = issue(&state, &caller, name, key_type, role, expires_at_ms).await?;
    Ok(HttpResponse::Created().json(ApiKeyView::of(&record).with_value(&value)))
}

#[derive(serde::Deserialize)]
pub struct GetQuery {
    #[serde(rename = "withValue")]
    with_value: Option<String>,
}

/// `GET /api/v1/apikeys/{id}[?withValue=true]`.
#[utoipa::path(
    get,
    path = "/api/v1/apikeys/{id}",
    operation_id = "getApiKey",
    tag = "studio",
    security(("studio_key" = [])),
    params(
        ("id" = String, Path, description = "A Studio API key id"),
        ("withValue" = Option<String>, Query, description = "true to include a secret key's value"),
    ),
    responses(
        (status = 200, description = "The key (its value with withValue=true)", body = ApiKeyView),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 404, description = "No such key in the caller's project", body = ErrorBody),
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
    let query = web::Query::<GetQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::bad_request("invalid_query", "the query string is malformed"))?;
    let reveal = match query.with_value.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError {
                param: Some("withValue".into()),
                ..ApiError::bad_request("invalid_query", "withValue must be true or false")
            })
        }
    };
    let key = target(&state, &caller, &path).await?;
    let mut body = ApiKeyView::of(&key);
    if reveal {
        caller.require(Role::Developer)?;
        caller.may_grant(key.role)?;
        // Only secret keys keep a value to give back.
        if let Some(sealed) = &key.value_sealed {
            let value = state
                .studio
                .secrets
                .open(sealed, key.id.as_str())
                .map_err(|e| ApiError::internal(&e))?;
            body = body.with_value(&value);
        }
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `PUT /api/v1/apikeys/{id}` `{name, role, enabled, expires_at}`.
#[utoipa::path(
    put,
    path = "/api/v1/apikeys/{id}",
    operation_id = "updateApiKey",
    tag = "studio",
    security(("studio_key" = [])),
    params(
        ("id" = String, Path, description = "A Studio API key id"),
    ),
    request_body(content = UpdateApiKeyRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The key, updated", body = ApiKeyView),
        (status = 403, description = "The caller's role is too low for this change", body = ErrorBody),
        (status = 404, description = "No such key in the caller's project", body = ErrorBody),
        BearerRefused,
        BodyRefused,
        ServerError,
    ),
)]
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate_studio(&state, &req).await?;
    caller.require(Role::Developer)?;
    let body: UpdateApiKeyRequest =
        json_body(&req, payload, state.settings.http.json_body_max_bytes).await?;
    let asked = ApiKeyUpdate {
        name: body
            .name
            .map(|name| studio_name(&state, &name))
            .transpose()?,
        role: body.role.map(Role::from),
        enabled: body.enabled,
        expires_at_ms: future(body.expires_at)?,
        ..ApiKeyUpdate::default()
    };
    let key = target(&state, &caller, &path).await?;
    // Decided on the row as it is under its lock, so a concurrent change
    // (say an admin's disable) is never overwritten by a stale decision.
    let updated = state
        .store
        .update_apikey_with(
            &key.account_id,
            &key.id,
            &caller.audit(),
            now_ms(),
            |current| caller.may_update(current, &asked),
        )
        .await?
        .ok_or_else(apikey_not_found)?;
    tracing::info!(apikey = %updated.id, by = %caller.key.id, "studio key updated");
    Ok(HttpResponse::Ok().json(ApiKeyView::of(&updated)))
}

/// `DELETE /api/v1/apikeys/{id}` → `{"acknowledged": true, "deletedCount": 1}`.
#[utoipa::path(
    delete,
    path = "/api/v1/apikeys/{id}",
    operation_id = "deleteApiKey",
    tag = "studio",
    security(("studio_key" = [])),
    params(
        ("id" = String, Path, description = "A Studio API key id"),
    ),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 403, description = "Only an admin deletes", body = ErrorBody),
        (status = 404, description = "No such key in the caller's project", body = ErrorBody),
        BearerRefused,
        ServerError,
    ),
)]
pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate_studio(&state, &req).await?;
    caller.require(Role::Admin)?;
    let key = target(&state, &caller, &path).await?;
    let deleted = state.store.delete_apikey(&key.account_id, &key.id).await?;
    if deleted == 0 {
        return Err(apikey_not_found());
    }
    tracing::info!(apikey = %key.id, by = %caller.key.id, "studio key deleted");
    Ok(HttpResponse::Ok().json(Deleted {
        acknowledged: true,
        deleted_count: deleted,
    }))
}

/// `GET /api/v1/apikeys/{id}/token` → `{"token"}`: a JWT for the key, signed
/// with the server's Ed25519 key, verifiable with `/.well-known/jwks.json`.
#[utoipa::path(
    get,
    path = "/api/v1/apikeys/{id}/token",
    operation_id = "apiKeyToken",
    tag = "studio",
    security(("studio_key" = [])),
    params(
        ("id" = String, Path, description = "A Studio API key id"),
    ),
    responses(
        (status = 200, description = "A short-lived JWT for the key", body = TokenView),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 404, description = "No such key in the caller's project", body = ErrorBody),
        (status = 422, description = "The key is disabled or expired", body = ErrorBody),
        BearerRefused,
        ServerError,
    ),
)]
pub async fn token(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate_studio(&state, &req).await?;
    caller.require_role(Role::Reader)?;
    let key = target(&state, &caller, &path).await?;
    if key.id != caller.key.id {
        caller.require(Role::Developer)?;
        caller.may_grant(key.role)?;
    }
    let now = now_ms();
    if !key.usable_at(now) {
        return Err(ApiError::invalid_field(
            "id",
            "names a disabled or expired key",
        ));
    }
    let mut expires_at_ms = now.saturating_add(state.settings.studio.jwt_ttl_ms);
    if let Some(at) = key.expires_at_ms {
        expires_at_ms = expires_at_ms.min(at);
    }
    // The token acts with the key's role, and never above the caller's —
    // for its own key too: a JWT exchanged for a new one keeps its grant
    // (`caller.role` is already min(JWT role, key's current role)).
    let role = key.key_type.acting_role(key.role).min(caller.role);
    let token = state.studio.jwt.issue(&JwtClaims {
        key_id: key.id.to_string(),
        account: key.account_id.to_string(),
        project: key.project_id.to_string(),
        role: role.as_str().to_owned(),
        key_type: key.key_type.as_str().to_owned(),
        issued_at_s: now / 1000,
        expires_at_s: expires_at_ms / 1000,
    });
    Ok(HttpResponse::Ok().json(TokenView { token }))
}

#[derive(serde::Deserialize)]
pub struct PkQuery {
    name: Option<String>,
    #[serde(rename = "projectId")]
    project_id: Option<String>,
    ttl: Option<String>,
}

/// `GET /api/v1/apikeys/pk?name&projectId&ttl` → `{"value", "expires_at"}`:
/// a short-lived public key (an executor) for the caller's project.
#[utoipa::path(
    get,
    path = "/api/v1/apikeys/pk",
    operation_id = "createPublicKey",
    tag = "studio",
    security(("studio_key" = [])),
    params(
        ("name" = Option<String>, Query, description = "The key's name"),
        ("projectId" = Option<String>, Query, description = "The caller's own project"),
        ("ttl" = Option<String>, Query, description = "Lifetime in whole seconds"),
    ),
    responses(
        (status = 200, description = "A short-lived public key", body = PublicKeyView),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 409, description = "The project holds too many keys", body = ErrorBody),
        (status = 422, description = "A bad name", body = ErrorBody),
        BearerRefused,
        ServerError,
    ),
)]
pub async fn public_key(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate_studio(&state, &req).await?;
    caller.require(Role::Application)?;
    let query = web::Query::<PkQuery>::from_query(req.query_string())
        .map_err(|_| ApiError::bad_request("invalid_query", "the query string is malformed"))?;
    let studio = &state.settings.studio;
    let ttl_s = match query.ttl.as_deref() {
        None => studio.pk_ttl_default_s,
        Some(text) => match text.parse::<i64>() {
            Ok(ttl) if ttl > 0 && ttl <= studio.pk_ttl_max_s => ttl,
            _ => {
                return Err(ApiError {
                    param: Some("ttl".into()),
                    ..ApiError::bad_request(
                        "invalid_query",
                        format!(
                            "ttl must be whole seconds from 1 to {}",
                            studio.pk_ttl_max_s
                        ),
                    )
                })
            }
        },
    };
    if let Some(project) = query.project_id.as_deref() {
        own_project(&state, &caller, project).await?;
    }
    let name = match query.name.as_deref() {
        None => format!("public key {}", &ApiKeyId::generate().as_str()[..12]),
        Some(text) => studio_name(&state, text)?,
    };
    let expires_at_ms = now_ms().saturating_add(ttl_s.saturating_mul(1000));
    let (record, value) = issue(
        &state,
        &caller,
        name,
        ApiKeyType::Pk,
        Role::Executor,
        Some(expires_at_ms),
    )
    .await?;
    Ok(HttpResponse::Ok().json(PublicKeyView {
        value,
        expires_at: record.expires_at_ms.and_then(iso),
    }))
}

/// `GET /.well-known/jwks.json`: the public key that verifies our JWTs.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    operation_id = "jwks",
    tag = "studio",
    responses(
        (status = 200, description = "The key that verifies Tollgate's JWTs", body = Jwks),
    ),
)]
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    let keys = match state.studio.jwt.jwks() {
        Value::Object(mut set) => match set.remove("keys") {
            Some(Value::Array(keys)) => keys,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    HttpResponse::Ok().json(Jwks { keys })
}
