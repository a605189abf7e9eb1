//! SIWE sessions: `GET /api/sessions/nonce` and `POST /api/sessions`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use actors::budget::BudgetStatus;
use ledger::model::{NewKey, NewSession, Purpose, SignIn};
use ledger::time::now_ms;
use ledger::{Amount, KeyId, SessionId, WalletAddress};
use rand::distributions::{Alphanumeric, DistString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{json_body, RequestBody};
use super::fields::{self, budget_within_max, key_name, required};
use super::responses::{BodyRefused, ServerError};
use super::views::KeyView;
use crate::auth::siwe::{self, SiweError, SiweExpectations, SiweMessage};
use crate::gateway::revocation::stop_keys;
use crate::state::AppState;

/// `GET /api/sessions/nonce`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NonceView {
    nonce: String,
    /// Milliseconds since the Unix epoch.
    #[serde(rename = "expiresAt")]
    expires_at: i64,
}

/// `POST /api/sessions`: a SIWE (EIP-4361) message and its signature.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignInRequest {
    #[serde(default, deserialize_with = "fields::text")]
    #[schema(value_type = String, required)]
    message: Option<String>,
    /// 0x-prefixed 65-byte secp256k1 signature.
    #[serde(default, deserialize_with = "fields::text")]
    #[schema(value_type = String, required)]
    signature: Option<String>,
    /// The session key's budget (atomic units); 0 when absent.
    #[serde(rename = "budgetLimit", default, deserialize_with = "fields::amount")]
    #[schema(value_type = Option<String>, pattern = r"^[0-9]{1,39}$")]
    budget_limit: Option<Amount>,
    #[serde(default, deserialize_with = "fields::text")]
    name: Option<String>,
    /// Milliseconds since the Unix epoch; at most the session's lifetime.
    #[serde(rename = "expiresAt", default, deserialize_with = "fields::millis")]
    expires_at: Option<i64>,
}

impl RequestBody for SignInRequest {}

/// `POST /api/sessions`: the session key, created.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    #[schema(inline)]
    #[serde(flatten)]
    key: KeyView,
    token: String,
    #[serde(rename = "sessionId")]
    #[schema(value_type = String)]
    session_id: SessionId,
    /// The signer's address.
    #[schema(value_type = String)]
    address: WalletAddress,
}

/// Length of an issued nonce: 24 alphanumerics, ~143 bits.
const NONCE_CHARS: usize = 24;

/// Refuses a client over its sign-in rate (nonces and sign-ins together):
/// both are free to call, and each writes to the store.
fn within_rate(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(peer) = req.peer_addr() else {
        return Ok(()); // not a TCP peer (in-process test requests)
    };
    state.sign_in_limiter.check(peer.ip()).map_err(|limited| {
        ApiError::too_many_requests(
            "too many sign-in requests from this address; retry shortly",
            limited.retry_after,
        )
    })
}

/// `GET /api/sessions/nonce`: a fresh single-use nonce.
#[utoipa::path(
    get,
    path = "/api/sessions/nonce",
    operation_id = "sessionNonce",
    tag = "compose",
    responses(
        (status = 200, description = "A single-use nonce for a SIWE message", body = NonceView),
        (status = 429, description = "Too many sign-in requests from this address", body = ErrorBody),
        ServerError,
    ),
)]
pub async fn nonce(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    within_rate(&state, &req)?;
    let nonce = Alphanumeric.sample_string(&mut rand::rngs::OsRng, NONCE_CHARS);
    let now = now_ms();
    let ttl = state.settings.auth.nonce_ttl_ms;
    state.store.issue_nonce(&nonce, now, now - ttl).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(NonceView {
            nonce,
            expires_at: now + ttl,
        }))
}

fn siwe_error(error: SiweError) -> ApiError {
    match error {
        SiweError::Malformed(m) => ApiError::invalid_field("message", m),
        SiweError::Signature(e) => ApiError::invalid_field("signature", e),
        SiweError::Domain { .. } => ApiError::unauthorized("domain_mismatch", error.to_string()),
        SiweError::Uri { .. } => ApiError::unauthorized("uri_mismatch", error.to_string()),
        SiweError::Chain(_) => ApiError::unauthorized("unsupported_chain", error.to_string()),
        SiweError::Time(_) => ApiError::unauthorized("message_expired", error.to_string()),
        SiweError::WrongSigner => ApiError::unauthorized("invalid_signature", error.to_string()),
    }
}

/// `POST /api/sessions {message, signature, budgetLimit?, expiresAt?, name?}`:
/// verifies the SIWE signature and issues a `session`-purpose key, which
/// supersedes the wallet+chain's previous session.
#[utoipa::path(
    post,
    path = "/api/sessions",
    operation_id = "signIn",
    tag = "compose",
    request_body(content = SignInRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Signed in: the session key, with its token", body = SessionView),
        (status = 401, description = "The message's domain, uri, chain, time, nonce or signer is refused", body = ErrorBody),
        (status = 402, description = "The wallet's funds cannot cover the budget", body = ErrorBody),
        (status = 409, description = "The wallet holds too many active keys", body = ErrorBody),
        (status = 429, description = "Too many sign-in requests from this address", body = ErrorBody),
        BodyRefused,
        ServerError,
    ),
)]
pub async fn sign_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    within_rate(&state, &req)?;
    let body: SignInRequest =
        json_body(&req, payload, state.settings.http.json_body_max_bytes).await?;
    let now = now_ms();
    let session_id = SessionId::generate();
    let (siwe, new_key) = session_key(&state, body, now, &session_id).await?;
    let (key, token) = state.signer.mint(new_key);
    let sign_in = supersede(&state, siwe, key, session_id, now).await?;
    let (session, key) = (sign_in.session, sign_in.key);
    tracing::info!(session_id = %session.id, wallet = %session.wallet, chain = %session.chain_id, "signed in");
    Ok(HttpResponse::Created().json(SessionView {
        key: KeyView::of(&key),
        token,
        session_id: session.id,
        address: session.wallet,
    }))
}

/// The checked sign-in and the session key it asks for (not yet minted):
/// the fields, the SIWE message and its signature, then the expiry asked.
async fn session_key(
    state: &AppState,
    body: SignInRequest,
    now: i64,
    session_id: &SessionId,
) -> Result<(SiweMessage, NewKey), ApiError> {
    let message = required(body.message, "message")?;
    let signature = required(body.signature, "signature")?;
    let budget = budget_within_max(state, body.budget_limit.unwrap_or(Amount::ZERO))?;
    let name = key_name(state, body.name)?;
    let auth = &state.settings.auth;
    let chain_configured = |chain| state.chains.contains(&chain);
    let siwe = siwe::verify(
        &message,
        &signature,
        &SiweExpectations {
            // The server's own domains, never the request's Host: a phishing
            // site relays a signature with whatever Host it likes.
            domains: &auth.siwe_domains,
            now_ms: now,
            issued_at_max_age_ms: auth.siwe_issued_at_max_age_ms,
            clock_skew_ms: auth.clock_skew_ms,
            chain_configured: &chain_configured,
        },
    )
    .map_err(siwe_error)?;
    let mut expires_at_ms = now.saturating_add(auth.session_ttl_ms);
    if let Some(at) = siwe.expiration_time_ms {
        expires_at_ms = expires_at_ms.min(at);
    }
    if let Some(at) = body.expires_at {
        if at <= now {
            return Err(ApiError::invalid_field(
                "expiresAt",
                "must be in the future",
            ));
        }
        expires_at_ms = expires_at_ms.min(at);
    }
    let funds = state.funds_for(&siwe.address, siwe.chain_id).await?;
    let key = NewKey {
        id: KeyId::generate(),
        token_sha256: String::new(),
        wallet: siwe.address,
        chain_id: siwe.chain_id,
        purpose: Purpose::Session,
        session_id: Some(session_id.clone()),
        name: if name.is_empty() {
            "session".to_owned()
        } else {
            name
        },
        budget_limit: budget,
        created_at_ms: now,
        expires_at_ms,
        funds,
    };
    Ok((siwe, key))
}

/// Creates the session of `key` (minted), superseding the wallet+chain's
/// previous one: the replaced session's keys stop on their next call, not
/// after a TTL; those with no call in flight free their budget for this
/// sign-in.
async fn supersede(
    state: &AppState,
    siwe: SiweMessage,
    key: NewKey,
    session_id: SessionId,
    now: i64,
) -> Result<SignIn, ApiError> {
    let replaced = state
        .store
        .active_session_keys(&key.wallet, key.chain_id)
        .await?;
    let max_active_keys = state.settings.keys.max_active_per_wallet;
    let store = state.store.clone();
    let nonce_issued_after_ms = now - state.settings.auth.nonce_ttl_ms;
    let sign_in = stop_keys(
        &state.gateway.registry,
        &state.store,
        replaced,
        BudgetStatus::Superseded,
        move |drained_keys| async move {
            let new_session = NewSession {
                id: session_id,
                nonce: siwe.nonce,
                nonce_issued_after_ms,
                key,
                drained_keys,
            };
            let sign_in = store.create_session(&new_session, max_active_keys).await?;
            let stopped = sign_in.superseded_keys.clone();
            Ok((sign_in, stopped))
        },
    )
    .await?;
    Ok(sign_in)
}
