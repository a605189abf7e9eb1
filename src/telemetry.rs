//! Logging through `tracing`: text for people, JSON for pipelines. Request
//! spans carry a request id; no handler logs a token or a secret.
//!
//! [`RequestSpans`] decides what a finished request logs: a 5xx is a fault
//! (one ERROR line with its cause); a 4xx is the client's mistake, at most one
//! concise DEBUG line — a burst of refused calls must not flood the log, and
//! no error is ever dumped with its `Debug` form (which could carry request
//! material). An error answer whose cause was logged where it was known
//! carries [`CauseLogged`] in its extensions, and adds no second line.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::HttpMessage;
use ledger::RequestId;
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};
use tracing_subscriber::EnvFilter;

use crate::settings::LogSettings;

/// Installs the global subscriber. `RUST_LOG` overrides `log.filter`. A
/// filter that does not parse is said once (after the subscriber is up,
/// with `info` in its place), never silently ignored.
pub fn init(settings: &LogSettings) {
    let (source, text) = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => ("RUST_LOG", text),
        _ => ("log.filter", settings.filter.clone()),
    };
    let (filter, bad) = match EnvFilter::try_new(&text) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error)),
    };
    // Colours only for a terminal: a log file or collector gets plain text
    // (and a request span's fields are formatted without escape codes).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if settings.format == crate::settings::LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Some(error) = bad {
        tracing::warn!(%source, filter = %text, %error, "the log filter does not parse; logging at info");
    }
}

/// A response extension: the error this response answers had its cause
/// logged where it was known, so the request's end says nothing more of it.
/// Whoever builds the error response sets it (`http::error`).
#[derive(Debug, Clone, Copy)]
pub struct CauseLogged;

/// The request spans of the HTTP server (see the module's doc).
pub struct RequestSpans;

impl RootSpanBuilder for RequestSpans {
    fn on_request_start(request: &ServiceRequest) -> Span {
        // One id per request, ours (time-ordered, never the caller's: a paid
        // call's charge is keyed by it). A paid call takes it from the
        // request's extensions, so its log lines, its `x-request-id`, its
        // charge and its queue event all carry the same id.
        let request_id = RequestId::generate();
        // A caller's own request id, when well-formed, rides on every line
        // of its request beside ours, so a client's report can be found in
        // the log (and it travels with a paid call's event).
        let client_id = client_request_id(request.headers()).unwrap_or("");
        let route = request.match_pattern();
        let peer = request.peer_addr().map(|addr| addr.ip());
        let span = tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = route.as_deref().unwrap_or("default"),
            http.target = %request.uri().path(),
            // The TCP peer, not a forwarded header a client could spoof.
            http.client_ip = peer.map(tracing::field::display),
            http.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
            request_id = %request_id,
            client_request_id = client_id,
        );
        request.extensions_mut().insert(request_id);
        span
    }

    fn on_request_end<B: MessageBody>(
        span: Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        // An error whose cause its maker logged already is said once.
        let (status, error) = match outcome {
            Ok(response) => {
                let response = response.response();
                let logged = response.extensions().get::<CauseLogged>().is_some();
                let error = response.error().filter(|_| !logged);
                (response.status(), error.map(ToString::to_string))
            }
            Err(error) => (
                error.as_response_error().status_code(),
                Some(error.to_string()),
            ),
        };
        let _entered = span.enter();
        match error {
            Some(error) if status.is_server_error() => {
                tracing::error!(status = status.as_u16(), %error, "request failed");
            }
            Some(error) => {
                tracing::debug!(status = status.as_u16(), %error, "request refused");
            }
            // An access line, at DEBUG: free when not enabled.
            None => tracing::debug!(status = status.as_u16(), "request served"),
        }
        drop(_entered);
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

/// The caller's `x-request-id`, when it is well-formed.
pub fn client_request_id(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| ledger::ids::is_client_request_id(id))
}
