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
use chrono::DateTime;
use ledger::model::{ApiKeyRecord, ApiKeyType, ApiKeyUpdate, Role};
use ledger::time::now_ms;
use ledger::ApiKeyId;
use serde_json::{json, Map, Value};

use super::caller::{apikey_not_found, authenticate_studio, own_project, StudioCaller};
use super::error::ApiError;
use super::extract;
#[allow(unused_imports)] // named by the #[utoipa::path] attributes
use super::openapi::{
    ApiKeyView, CreateApiKeyRequest, Deleted, ErrorBody, Jwks, PublicKeyView, TokenView,
    UpdateApiKeyRequest,
};
use crate::state::AppState;
use crate::studio::issue::{mint, KeySpec};
use crate::studio::jwt::JwtClaims;
use crate::studio::view::{iso, view, with_value};

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

/// An optional ISO 8601 date in the future, in ms; JSON `null` clears it.
fn expiry(body: &Map<String, Value>) -> Result<Option<Option<i64>>, ApiError> {
    match body.get("expires_at") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(text)) => {
            let at = DateTime::parse_from_rfc3339(text)
                .map_err(|_| {
                    ApiError::invalid_field("expires_at", "must be an ISO 8601 date and time")
                })?
                .timestamp_millis();
            if at <= now_ms() {
                return Err(ApiError::invalid_field(
                    "expires_at",
                    "must be in the future",
                ));
            }
            Ok(Some(Some(at)))
        }
        Some(_) => Err(ApiError::invalid_field(
            "expires_at",
            "must be an ISO 8601 string",
        )),
    }
}

fn name(state: &AppState, body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    extract::string_field(body, "name")?
        .map(|name| valid_name(state, name))
        .transpose()
}

/// A key's name: 1 to `studio.name_max_chars` printable characters.
fn valid_name(state: &AppState, name: &str) -> Result<String, ApiError> {
    let max = state.settings.studio.name_max_chars;
    if name.trim().is_empty()
        || name.chars().count() > max
        || name.chars().any(extract::unprintable_in_name)
    {
        return Err(ApiError::invalid_field(
            "name",
            format!("must be 1 to {max} printable characters (no control or bidi characters)"),
        ));
    }
    Ok(name.to_owned())
}

fn role_field(body: &Map<String, Value>) -> Result<Option<Role>, ApiError> {
    extract::string_field(body, "role")?
        .map(|text| {
            Role::parse(text).ok_or_else(|| {
                ApiError::invalid_field(
                    "role",
                    "must be reader, executor, application, developer or admin",
                )
            })
        })
        .transpose()
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
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
    ),
)]
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = authenticate_studio(&state, &req).await?;
    caller.require(Role::Reader)?;
    let keys = state
        .store
        .apikeys(&caller.key.account_id, &caller.key.project_id)
        .await?;
    Ok(HttpResponse::Ok().json(keys.iter().map(view).collect::<Vec<_>>()))
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
        (status = 400, description = "Malformed JSON or a bad field", body = ErrorBody),
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The caller's role is too low for this key", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "The project holds too many keys", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not application/json", body = ErrorBody),
        (status = 422, description = "A field has an unacceptable value", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate_studio(&state, &req).await?;
    caller.require(Role::Developer)?;
    let body = extract::json_object(&req, payload, state.settings.http.json_body_max_bytes).await?;
    let name =
        name(&state, &body)?.ok_or_else(|| ApiError::invalid_field("name", "is required"))?;
    let key_type = ApiKeyType::parse(extract::required_string(&body, "type")?)
        .ok_or_else(|| ApiError::invalid_field("type", "must be \"sk\" or \"pk\""))?;
    let role = match (key_type, role_field(&body)?) {
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
    let expires_at_ms = expiry(&body)?.flatten();
    let (record, value) = issue(&state, &caller, name, key_type, role, expires_at_ms).await?;
    Ok(HttpResponse::Created().json(with_value(view(&record), &value)))
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
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 404, description = "No such key in the caller's project", body = ErrorBody),
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
    let mut body = view(&key);
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
            body = with_value(body, &value);
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
        (status = 400, description = "Malformed JSON or a bad field", body = ErrorBody),
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The caller's role is too low for this change", body = ErrorBody),
        (status = 404, description = "No such key in the caller's project", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not application/json", body = ErrorBody),
        (status = 422, description = "A field has an unacceptable value", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
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
    let body = extract::json_object(&req, payload, state.settings.http.json_body_max_bytes).await?;
    if let Some(field) = body
        .keys()
        .find(|k| !["name", "role", "enabled", "expires_at"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid_field(
            "body",
            format!("has an unknown field {field:?}"),
        ));
    }
    let enabled = match body.get("enabled") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(ApiError::invalid_field("enabled", "must be a boolean")),
    };
    let asked = ApiKeyUpdate {
        name: name(&state, &body)?,
        role: role_field(&body)?,
        enabled,
        expires_at_ms: expiry(&body)?,
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
    Ok(HttpResponse::Ok().json(view(&updated)))
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
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "Only an admin deletes", body = ErrorBody),
        (status = 404, description = "No such key in the caller's project", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
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
    Ok(HttpResponse::Ok().json(json!({ "acknowledged": true, "deletedCount": deleted })))
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
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 404, description = "No such key in the caller's project", body = ErrorBody),
        (status = 422, description = "The key is disabled or expired", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
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
    Ok(HttpResponse::Ok().json(json!({ "token": token })))
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
        (status = 401, description = "No, a malformed or an unknown bearer token", body = ErrorBody),
        (status = 403, description = "The caller's role is too low", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 409, description = "The project holds too many keys", body = ErrorBody),
        (status = 422, description = "A bad name", body = ErrorBody),
        (status = "5XX", description = "A fault of ours or of a dependency (opaque; see the server log)", body = ErrorBody),
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
        Some(text) => valid_name(&state, text)?,
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
    Ok(HttpResponse::Ok().json(json!({
        "value": value,
        "expires_at": record.expires_at_ms.map_or(Value::Null, iso),
    })))
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
    HttpResponse::Ok().json(state.studio.jwt.jwks())
}
