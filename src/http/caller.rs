//! Who is calling, resolved in one place: a Compose bearer key ([`Caller`],
//! [`authenticate`]; on the paid path [`paid_bearer`], proven by its hash or
//! signature before any body is read), a Studio key or JWT ([`StudioCaller`],
//! [`authenticate_studio`]), the budget a paid call spends from ([`payer`]),
//! and the project a Studio key acts on ([`own_project`]). Handlers receive
//! a resolved caller; none resolves one itself.

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::HttpRequest;
use ledger::model::{
    ApiKeyRecord, ApiKeyType, ApiKeyUpdate, KeyRecord, KeyStatus, ProjectRecord, Role,
};
use ledger::time::now_ms;
use ledger::{ApiKeyId, ProjectId, WalletAddress};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::auth::token::{token_sha256, Claims, TokenError};
use crate::gateway::error::CallFailure;
use crate::gateway::paid::Payer;
use crate::state::AppState;
use crate::studio::jwt::looks_like_jwt;

/// A caller whose bearer key verified and is active right now.
pub struct Caller {
    pub claims: Claims,
    pub key: KeyRecord,
}

/// Verifies the bearer token (signature and expiry, no database), then loads
/// the key to check it is still active: revocation and supersession take
/// effect on the very next request.
pub async fn authenticate(state: &AppState, req: &HttpRequest) -> Result<Caller, ApiError> {
    let (token, claims) = verified_bearer(state, req)?;
    let now = now_ms();
    let key = state
        .store
        .key(&claims.key_id)
        .await?
        .ok_or(CallFailure::InvalidToken)?;
    let stored = key.token_sha256.as_bytes();
    if !bool::from(stored.ct_eq(token_sha256(token).as_bytes())) {
        return Err(CallFailure::InvalidToken.into());
    }
    // The same refusals, in the same words, as the paid path's.
    match key.status_at(now) {
        KeyStatus::Active => Ok(Caller { claims, key }),
        KeyStatus::Revoked => Err(CallFailure::KeyRevoked.into()),
        KeyStatus::Superseded => Err(CallFailure::SessionSuperseded.into()),
        KeyStatus::Expired => Err(CallFailure::KeyExpired.into()),
    }
}

/// The bearer token and its claims, checked by signature and expiry only
/// (no database): the paid path takes the key's status from its actor.
pub fn verified_bearer<'r>(
    state: &AppState,
    req: &'r HttpRequest,
) -> Result<(&'r str, Claims), ApiError> {
    let token = bearer_token(req)?;
    let claims = state.signer.verify(token, now_ms()).map_err(token_error)?;
    Ok((token, claims))
}

/// The paid path's bearer check, done before the body is read. A key whose
/// actor is running is proven by its token's SHA-256 against the stored hash
/// (only the very token issued matches it; `PaidCall::open` compares again
/// under its lease), so the Ed25519 signature — the costliest step of a call
/// — is checked only when the key's actor has to be loaded, which keeps
/// forged tokens from reaching the store.
pub fn paid_bearer<'r>(
    state: &AppState,
    req: &'r HttpRequest,
) -> Result<(&'r str, Claims), ApiError> {
    let token = bearer_token(req)?;
    let now = now_ms();
    let claims = state
        .signer
        .decode_unverified(token, now)
        .map_err(token_error)?;
    match state.gateway.registry.loaded_token_sha256(&claims.key_id) {
        Some(stored) => {
            if !bool::from(stored.as_bytes().ct_eq(token_sha256(token).as_bytes())) {
                return Err(token_error(TokenError::BadSignature));
            }
        }
        None => {
            state.signer.verify(token, now).map_err(token_error)?;
        }
    }
    Ok((token, claims))
}

fn token_error(error: TokenError) -> ApiError {
    match error {
        TokenError::Expired => CallFailure::KeyExpired.into(),
        TokenError::Malformed | TokenError::BadSignature => CallFailure::InvalidToken.into(),
    }
}

pub fn bearer_token(req: &HttpRequest) -> Result<&str, ApiError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return anthropic_key(req).ok_or_else(|| {
            ApiError::unauthorized("missing_token", "send Authorization: Bearer <key>")
        });
    };
    let text = value.to_str().map_err(|_| {
        ApiError::unauthorized("invalid_token", "the Authorization header is not text")
    })?;
    let not_bearer = || {
        ApiError::unauthorized(
            "invalid_token",
            "the Authorization header must be \"Bearer <token>\"",
        )
    };
    let (scheme, token) = text.split_once(' ').ok_or_else(not_bearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(not_bearer());
    }
    Ok(token.trim())
}

/// Anthropic's SDKs send the key as `x-api-key`: accepted on the Messages
/// endpoints, when no `Authorization` header came.
fn anthropic_key(req: &HttpRequest) -> Option<&str> {
    if !req.path().starts_with("/external/v1/messages") {
        return None;
    }
    let key = req.headers().get("x-api-key")?.to_str().ok()?.trim();
    (!key.is_empty()).then_some(key)
}

/// The caller's wallet must be the one the request is about.
pub fn require_same_wallet(caller: &Caller, wallet: &WalletAddress) -> Result<(), ApiError> {
    if caller.key.wallet != *wallet {
        return Err(ApiError::forbidden(
            "wallet_mismatch",
            "the bearer key belongs to another wallet",
        ));
    }
    Ok(())
}

/// Who is calling: their own key, and the role it acts with.
pub struct StudioCaller {
    pub key: ApiKeyRecord,
    /// The key's role, lowered to a JWT's role when the JWT says less.
    pub role: Role,
}

impl StudioCaller {
    /// Key management and reads: a secret key of at least `least`. A public
    /// key (browser-side, always an executor) may only make paid calls and
    /// exchange itself for a JWT, never see or touch the project's keys.
    pub fn require(&self, least: Role) -> Result<(), ApiError> {
        if self.key.key_type == ApiKeyType::Pk {
            return Err(ApiError::forbidden(
                "insufficient_role",
                "a public key may only make paid calls and exchange itself for a JWT",
            ));
        }
        self.require_role(least)
    }

    /// A role of at least `least`, whatever the key's type.
    pub fn require_role(&self, least: Role) -> Result<(), ApiError> {
        if self.role < least {
            return Err(ApiError::forbidden(
                "insufficient_role",
                format!(
                    "this needs role {} or above; the key is {}",
                    least.as_str(),
                    self.role.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// A key may hand out at most its own role.
    pub fn may_grant(&self, role: Role) -> Result<(), ApiError> {
        if role > self.role {
            return Err(ApiError::forbidden(
                "role_above_caller",
                format!(
                    "a {} key cannot grant or act on role {}",
                    self.role.as_str(),
                    role.as_str()
                ),
            ));
        }
        Ok(())
    }

    /// The change `asked` may make to `key`, with who restricted it, or why
    /// not. Enabling, disabling or changing an expiry overrides what a key
    /// above decided: it needs a role above the key's (or admin), and a key
    /// never re-enables or extends itself. Invariant 9: a restriction (a
    /// disable, an expiry set or shortened) records the highest role that
    /// set it, and only a role at least as high lifts it (enable; expiry
    /// lengthened or removed) — whatever the key's role meanwhile, so no
    /// sequence of allowed steps (say, demote, enable, promote back) reaches
    /// what the caller could not set directly.
    pub fn may_update(
        &self,
        key: &ApiKeyRecord,
        asked: &ApiKeyUpdate,
    ) -> Result<ApiKeyUpdate, ApiError> {
        if key.project_id != self.key.project_id {
            return Err(apikey_not_found());
        }
        self.may_grant(key.role)?;
        let lifecycle = asked.enabled.is_some() || asked.expires_at_ms.is_some();
        if lifecycle && self.role != Role::Admin && (self.role <= key.role || key.id == self.key.id)
        {
            return Err(ApiError::forbidden(
                "insufficient_role",
                "enabling, disabling or changing the expiry of a key needs a role above the key's, or admin",
            ));
        }
        if let Some(role) = asked.role {
            self.may_grant(role)?;
            if key.key_type == ApiKeyType::Pk && role != Role::Executor {
                return Err(ApiError::invalid_field(
                    "role",
                    "of a public key is always executor",
                ));
            }
        }
        let mut update = asked.clone();
        // A restriction further restricted stays with the highest role.
        let restricted_by =
            |previous: Option<Role>| previous.map_or(self.role, |r| r.max(self.role));
        let disabled_by = key.disabled_by_role.filter(|_| !key.enabled);
        let expiry_set_by = key
            .expiry_set_by_role
            .filter(|_| key.expires_at_ms.is_some());
        if let Some(enabled) = asked.enabled {
            if enabled && !key.enabled {
                // Disabled by someone unknown (before roles were recorded):
                // an admin's to lift.
                self.may_lift(disabled_by.unwrap_or(Role::Admin), "disabled")?;
            }
            update.disabled_by_role = Some((!enabled).then(|| restricted_by(disabled_by)));
        }
        if let Some(expires_at_ms) = asked.expires_at_ms {
            let lifts = match (key.expires_at_ms, expires_at_ms) {
                (Some(_), None) => true,
                (Some(current), Some(asked)) => asked > current,
                (None, _) => false,
            };
            if lifts {
                self.may_lift(expiry_set_by.unwrap_or(Role::Admin), "given its expiry")?;
            }
            update.expiry_set_by_role = Some(expires_at_ms.map(|_| restricted_by(expiry_set_by)));
        }
        Ok(update)
    }

    /// Lifting a restriction set by `by` needs a role at least as high.
    fn may_lift(&self, by: Role, what: &str) -> Result<(), ApiError> {
        if self.role < by {
            return Err(ApiError::forbidden(
                "insufficient_role",
                format!(
                    "a key {what} by role {} is lifted only by that role or above; the caller is {}",
                    by.as_str(),
                    self.role.as_str()
                ),
            ));
        }
        Ok(())
    }

    pub fn audit(&self) -> String {
        format!("apikey:{}", self.key.id)
    }
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::unauthorized(code, message.to_owned())
}

/// Authenticates an `sk`/`pk` value (by its keyed hash) or a JWT (by its
/// signature, then its key's row): a disabled, deleted or expired key is
/// refused on its very next request.
pub async fn authenticate_studio(
    state: &AppState,
    req: &HttpRequest,
) -> Result<StudioCaller, ApiError> {
    let token = bearer_token(req)?;
    let now = now_ms();
    let (key, jwt_role) = if looks_like_jwt(token) {
        let claims =
            state.studio.jwt.verify(token, now / 1000).map_err(|_| {
                unauthorized("invalid_token", "the JWT is not valid or has expired")
            })?;
        let (Some(account), Some(id)) = (
            ledger::AccountId::parse(&claims.account),
            ApiKeyId::parse(&claims.key_id),
        ) else {
            return Err(unauthorized("invalid_token", "the JWT is not valid"));
        };
        let role = Role::parse(&claims.role)
            .ok_or_else(|| unauthorized("invalid_token", "the JWT is not valid"))?;
        let key = state.store.apikey(&account, &id).await?;
        (key, Some(role))
    } else if token.starts_with("sk-") || token.starts_with("pk-") {
        // Found by its keyed hash (an index lookup on an HMAC output reveals
        // nothing of the value), then compared in constant time.
        let hash = state.studio.secrets.lookup_hash(token);
        let key = state
            .store
            .apikey_by_hash(&hash)
            .await?
            .filter(|key| bool::from(key.value_hash.as_bytes().ct_eq(hash.as_bytes())));
        (key, None)
    } else {
        return Err(unauthorized(
            "invalid_token",
            "send Authorization: Bearer <sk-…, pk-… or a JWT from /apikeys/{id}/token>",
        ));
    };
    let key = key.ok_or_else(|| unauthorized("invalid_api_key", "no such API key"))?;
    if !key.enabled {
        return Err(unauthorized("key_disabled", "the API key is disabled"));
    }
    if !key.usable_at(now) {
        return Err(unauthorized("key_expired", "the API key has expired"));
    }
    // A public key is always an executor; a JWT never acts above its grant.
    let mut role = key.key_type.acting_role(key.role);
    if let Some(granted) = jwt_role {
        role = role.min(granted);
    }
    Ok(StudioCaller { key, role })
}

/// The caller's own project, named by id: another account's (or an unknown
/// one) is 404, another project of the account 403.
pub async fn own_project(
    state: &AppState,
    caller: &StudioCaller,
    id: &str,
) -> Result<ProjectRecord, ApiError> {
    let missing = || ApiError::not_found("project_not_found", "no such project in this account");
    let id = ProjectId::parse(id).ok_or_else(missing)?;
    let project = state
        .store
        .project(&caller.key.account_id, &id)
        .await?
        .ok_or_else(missing)?;
    if project.id != caller.key.project_id {
        return Err(ApiError::forbidden(
            "project_mismatch",
            "a key acts only on its own project",
        ));
    }
    Ok(project)
}

/// Whose budget pays, and the Compose token that must match it: a Compose
/// key pays from its own budget (proven by its token); a Studio key of role
/// `executor` or above (sk, pk or JWT) pays from its project's budget key,
/// which has no token of its own.
pub async fn payer(state: &AppState, req: &HttpRequest) -> Result<Payer, ApiError> {
    if bearer_token(req)?.starts_with("compose-") {
        let (token, claims) = paid_bearer(state, req)?;
        return Ok(Payer::ComposeKey {
            key: claims.key_id,
            token: token.to_owned(),
        });
    }
    let caller = authenticate_studio(state, req).await?;
    caller.require_role(Role::Executor)?;
    let project = state
        .store
        .project(&caller.key.account_id, &caller.key.project_id)
        .await?
        .ok_or_else(|| ApiError::internal(&"a key's project is missing"))?;
    let budget_key = project.budget_key_id.ok_or_else(no_budget)?;
    Ok(Payer::Project { budget_key })
}

pub fn no_budget() -> ApiError {
    ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "no_budget",
        "the key's project has no usable budget; an admin key sets one with \
         PUT /api/v1/projects/{id}/budget",
    )
}

/// Another project's or account's key answers like a missing one.
pub fn apikey_not_found() -> ApiError {
    ApiError::not_found(
        "apikey_not_found",
        "no API key with this id in this project",
    )
}
