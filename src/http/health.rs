//! Liveness and readiness. `/healthz`: the process is up. `/readyz`: it can
//! serve — the store answers, the broker (queue mode) answers, and in the
//! `evm` mode each chain's RPC answers for the configured chain id; each
//! within a second, checked at once, and the answer reused for a second.
//! 503 names what failed. `/metrics`: the Prometheus text, behind
//! `http.metrics_token` when set, and only on `http.admin_bind`'s listener
//! when that is set.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use crate::state::{AppState, CheckedReadiness};

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// `GET /readyz`: each dependency `ok`, `unavailable` or `timeout`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness<'a> {
    /// `ready` or `not_ready`.
    status: &'static str,
    store: &'static str,
    /// Present when calls go through RabbitMQ.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<&'static str>,
    /// Present in `evm` mode: chain id → status.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Option<Object>)]
    chains: BTreeMap<&'a str, &'static str>,
}

impl Readiness<'_> {
    fn of(checked: &CheckedReadiness) -> Readiness<'_> {
        Readiness {
            status: if checked.ready() {
                "ready"
            } else {
                "not_ready"
            },
            store: checked.store,
            queue: checked.queue,
            chains: checked
                .chains
                .iter()
                .map(|(id, status)| (id.as_str(), *status))
                .collect(),
        }
    }
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process is up", body = Health),
    ),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// `"ok"`, or why not (never a secret: errors name a component, not a URL).
async fn check<E: std::fmt::Display>(
    what: &str,
    probe: impl Future<Output = Result<(), E>>,
) -> &'static str {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => "ok",
        Ok(Err(error)) => {
            tracing::warn!(component = what, %error, "not ready");
            "unavailable"
        }
        Err(_) => {
            tracing::warn!(component = what, "not ready: no answer within 1 s");
            "timeout"
        }
    }
}

/// A chain's RPC endpoint answers, within the bound, for the configured
/// chain id: `ok`, `wrong_chain`, or as [`check`] says.
async fn chain_status(client: &workers::evm::ChainClient) -> &'static str {
    let mut wrong = false;
    let status = check("chain", async {
        let answered = client.answered_chain_id().await?;
        let matches = client.chain_id_is(answered);
        wrong = matches.is_err();
        matches
    })
    .await;
    if wrong {
        "wrong_chain"
    } else {
        status
    }
}

/// The process can serve (see the module's doc).
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Store, queue and chains answer", body = Readiness),
        (status = 503, description = "A dependency does not answer; the body names it", body = Readiness),
    ),
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut cached = state.readiness.lock().await;
    let checked = match &*cached {
        Some(checked) if checked.at.elapsed() < READY_FOR => checked.clone(),
        _ => {
            let checked = readiness(&state).await;
            *cached = Some(checked.clone());
            checked
        }
    };
    drop(cached);
    let body = Readiness::of(&checked);
    if checked.ready() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// How long one readiness answer is reused. A probe is anyone's to send,
/// and each check is a store query, a broker round trip and an RPC call to
/// each chain (the operator's paid endpoint): however many probe, each
/// runs at most once this often.
const READY_FOR: Duration = Duration::from_secs(1);

/// Checks the store, the broker and each chain at once.
async fn readiness(state: &AppState) -> CheckedReadiness {
    let store = check("store", state.store.ping());
    let queue = async {
        match &state.queue {
            None => None,
            Some(queue) => {
                Some(check("queue", queue.declare(&state.settings.queue.calls_queue)).await)
            }
        }
    };
    let chains = futures_util::future::join_all(
        state
            .chain_clients
            .iter()
            .map(|(id, client)| async move { (id.0.to_string(), chain_status(client).await) }),
    );
    let (store, queue, chains) = tokio::join!(store, queue, chains);
    CheckedReadiness {
        at: Instant::now(),
        store,
        queue,
        chains,
    }
}

/// `GET /metrics`: Prometheus exposition (see `crate::metrics`).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus exposition", body = String, content_type = "text/plain"),
        (status = 401, description = "http.metrics_token is set and the bearer token is not it", body = ErrorBody),
        (status = 404, description = "Served on http.admin_bind's listener only", body = ErrorBody),
        (status = 503, description = "No metrics recorder in this process", body = ErrorBody),
    ),
)]
pub async fn metrics(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let settings = &state.settings.http;
    if !settings.admin_bind.is_empty() && request.app_data::<AdminListener>().is_none() {
        // As if there were no such route here.
        return super::error::not_found_route().error_response();
    }
    if let Some(token) = &settings.metrics_token {
        if !bearer_matches(&request, &token.0) {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_metrics_token",
                "/metrics needs the bearer token of http.metrics_token",
            )
            .error_response();
            response.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    match crate::metrics::render(&state.gateway, &state.store_gauges) {
        Some(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(text),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "no metrics recorder in this process",
        )
        .error_response(),
    }
}

/// Marks the app of the `http.admin_bind` listener.
#[derive(Debug, Clone, Copy)]
pub struct AdminListener;

/// Whether the request's bearer token (read as on every route,
/// `caller::bearer_token`) is `expected`: the SHA-256 of both compared in
/// constant time (so neither the value nor its length shows in the time
/// taken).
fn bearer_matches(request: &HttpRequest, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let presented = super::caller::bearer_token(request).unwrap_or_default();
    let presented: [u8; 32] = Sha256::digest(presented).into();
    let expected: [u8; 32] = Sha256::digest(expected).into();
    bool::from(presented.ct_eq(&expected))
}
