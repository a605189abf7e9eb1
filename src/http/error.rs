//! [`ApiError`]: the one place that maps errors to HTTP.
//!
//! Every error answer has the body `{"error": {"code", "message", "type"}}`
//! (plus `param` naming a bad field and `details` where there is more to
//! say) — OpenAI's error shape, which the Compose surface shares. `type`
//! follows from the status. 4xx messages are precise; 5xx messages are
//! opaque and the cause is logged. Paid-path errors also carry the key's
//! budget headers when the key is known. [`ErrorBody`] is that body, and the
//! schema every error response of the OpenAPI document names.

use std::borrow::Cow;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use ledger::StoreError;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::views::PayerHeldBack;
pub use crate::gateway::error::BudgetView;
use crate::gateway::error::CallFailure;
use crate::state::KeyCreationRefused;
use crate::telemetry::CauseLogged;

/// Sets the `x-compose-key-*` headers of a paid response from a budget view.
pub fn apply_budget(response: &mut HttpResponseBuilder, budget: &BudgetView) {
    response
        .insert_header(("x-compose-key-budget-limit", budget.limit.to_string()))
        .insert_header(("x-compose-key-budget-used", budget.used.to_string()))
        .insert_header((
            "x-compose-key-budget-remaining",
            budget.remaining().to_string(),
        ));
    if let Some(amount) = budget.final_amount {
        response.insert_header(("x-compose-key-final-amount-wei", amount.to_string()));
    }
}

/// The error body of every 4xx and 5xx answer (OpenAI's shape).
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// Machine-readable, e.g. `insufficient_budget`, `invalid_field`.
    pub code: &'a str,
    /// What went wrong and, for a 4xx, how to fix it.
    pub message: &'a str,
    /// OpenAI's error type, from the status.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The request parameter or field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<&'a str>,
    /// More about the refusal (amounts for a 402, `retryAfterMs` for a 429).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<&'a Value>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request parameter or field at fault.
    pub param: Option<Cow<'static, str>>,
    pub details: Option<Value>,
    /// Boxed: most errors carry none, and `Result<_, ApiError>` stays small.
    pub budget: Option<Box<BudgetView>>,
    /// Its cause was logged where it was known (`logged`, `internal`): the
    /// request's end adds no second line for it.
    pub cause_logged: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            details: None,
            budget: None,
            cause_logged: false,
        }
    }

    /// A bad request parameter, OpenAI-style (400, `param` names it).
    pub fn invalid_param(param: &'static str, message: impl std::fmt::Display) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::bad_request("invalid_value", format!("{param} {message}"))
        }
    }

    /// Logs the cause of an answer that does not show it to the client.
    pub fn logged(mut self, cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, code = self.code, "request failed");
        self.cause_logged = true;
        self
    }

    pub fn with_budget(mut self, budget: BudgetView) -> ApiError {
        self.budget = Some(Box::new(budget));
        self
    }

    /// OpenAI's error `type`, from the status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            402 => "insufficient_budget",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            502 | 504 => "upstream_error",
            s if s >= 500 => "api_error",
            _ => "invalid_request_error",
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A well-formed request whose field `param` has an unacceptable value.
    pub fn invalid_field(
        param: impl Into<Cow<'static, str>>,
        message: impl std::fmt::Display,
    ) -> ApiError {
        let param = param.into();
        ApiError {
            message: format!("{param} {message}"),
            param: Some(param),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "")
        }
    }

    /// A too many requests answer that says when to retry, in
    /// `details.retryAfterMs` and `Retry-After`.
    pub fn too_many_requests(
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> ApiError {
        let retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
            .with_details(json!({ "retryAfterMs": retry_after_ms }))
    }

    /// The body this error answers with; `kind` is OpenAI's error type.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                kind: self.kind(),
                param: self.param.as_deref(),
                details: self.details.as_ref(),
            },
        }
    }

    /// A failure that is ours, not the caller's: logged in full, answered opaquely.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError {
            cause_logged: true,
            ..ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error; see the server log",
            )
        }
    }

    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status == StatusCode::PAYMENT_REQUIRED {
            metrics::counter!("tollgate_payment_required_total", "code" => self.code).increment(1);
        }
        let mut response = HttpResponse::build(self.status);
        if let Some(budget) = &self.budget {
            apply_budget(&mut response, budget);
        }
        // A 429 that says how long to wait says it in `Retry-After` too
        // (whole seconds, rounded up).
        let retry_after_ms = self
            .details
            .as_ref()
            .and_then(|d| d["retryAfterMs"].as_u64());
        if let (StatusCode::TOO_MANY_REQUESTS, Some(ms)) = (self.status, retry_after_ms) {
            response.insert_header((header::RETRY_AFTER, ms.div_ceil(1000).max(1).to_string()));
        }
        let mut response = response.json(self.body());
        if self.cause_logged {
            response.extensions_mut().insert(CauseLogged);
        }
        response
    }
}

impl From<KeyCreationRefused> for ApiError {
    fn from(refused: KeyCreationRefused) -> ApiError {
        match refused {
            KeyCreationRefused::TooMany { retry_after, .. } => {
                ApiError::too_many_requests(refused.to_string(), retry_after)
            }
            KeyCreationRefused::ChainUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "chain_unavailable",
                refused.to_string(),
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::InsufficientFunds {
                required,
                available,
                committed,
                on_chain,
            } => {
                let mut details = json!({
                    "required": required,
                    "available": available,
                    "committed": committed,
                    "shortfall": committed.checked_add(required).map(|r| r.saturating_sub(available)),
                });
                let message = match on_chain {
                    None => format!(
                        "the wallet's available funds ({available}) cannot cover this budget ({required}) \
                         on top of what its keys may still spend ({committed}, calls still running on stopped keys included)"
                    ),
                    Some((balance, allowance)) => {
                        // Which one is short: what the settlement contract
                        // may take is the lesser of the two.
                        let short = if allowance < balance { "allowance" } else { "balance" };
                        details["balance"] = json!(balance);
                        details["allowance"] = json!(allowance);
                        details["short"] = json!(short);
                        format!(
                            "the wallet's USDC {short} cannot cover this budget ({required}) on top of \
                             what its keys may still spend and it still owes ({committed} committed; \
                             balance {balance}, allowance to the settlement contract {allowance}, \
                             available {available})"
                        )
                    }
                };
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_funds", message)
                    .with_details(details)
            }
            StoreError::TooManyKeys { max } => ApiError::new(
                StatusCode::CONFLICT,
                "too_many_keys",
                format!("the wallet already has {max} active keys on this chain; revoke one first"),
            ),
            StoreError::TooManyApiKeys { max } => ApiError::new(
                StatusCode::CONFLICT,
                "too_many_keys",
                format!("the project already holds {max} unexpired keys; delete one first"),
            ),
            StoreError::NonceRejected => ApiError::unauthorized(
                "invalid_nonce",
                "the SIWE nonce is unknown, already used or expired; request a new one",
            ),
            StoreError::SessionSuperseded => ApiError::unauthorized(
                "session_superseded",
                "the key's session was replaced by a newer sign-in",
            ),
            StoreError::NotFound => ApiError::not_found("not_found", "not found"),
            other => ApiError::internal(&other),
        }
    }
}

impl From<CallFailure> for ApiError {
    #[allow(clippy::too_many_lines)] // one arm per CallFailure: the table reads best whole
    fn from(failure: CallFailure) -> ApiError {
        let unavailable = |message: &str| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message.to_owned(),
            )
        };
        match failure {
            CallFailure::InvalidParam { param, message } => ApiError {
                message: format!("{param} {message}"),
                param: Some(param),
                ..ApiError::bad_request("invalid_value", "")
            },
            CallFailure::UnsupportedParameter { field, priced } => {
                let why = if priced {
                    "changes what the model bills and is not priced here; the model's \
                     forward_fields setting must name it"
                } else {
                    "is not supported by this gateway"
                };
                ApiError {
                    message: format!("{field} {why}"),
                    param: Some(field.into()),
                    ..ApiError::bad_request("unsupported_parameter", "")
                }
            }
            CallFailure::ModelNotFound(model) => ApiError {
                param: Some("model".into()),
                ..ApiError::not_found(
                    "model_not_found",
                    format!("the model {model:?} does not exist here; see GET /external/v1/models"),
                )
            },
            CallFailure::WrongApi { model, serves } => ApiError {
                param: Some("model".into()),
                ..ApiError::bad_request(
                    "wrong_api",
                    format!(
                        "the model {model:?} is not served by this endpoint; call it at {}",
                        serves.join(" or ")
                    ),
                )
            },
            CallFailure::NoProjectBudget => super::caller::no_budget(),
            CallFailure::InvalidToken => ApiError::unauthorized(
                "invalid_token",
                "the bearer token is not a valid Compose key",
            ),
            CallFailure::KeyRevoked => {
                ApiError::unauthorized("key_revoked", "the key has been revoked")
            }
            CallFailure::SessionSuperseded => ApiError::unauthorized(
                "session_superseded",
                "the key's session was replaced by a newer sign-in",
            ),
            CallFailure::KeyExpired => ApiError::unauthorized("key_expired", "the key has expired"),
            CallFailure::InsufficientBudget {
                remaining,
                available,
                minimum,
                budget,
            } => {
                let error = ApiError::new(
                    StatusCode::PAYMENT_REQUIRED,
                    "insufficient_budget",
                    format!(
                        "the key's available budget ({available} of {remaining} remaining; the rest \
                         is held by calls in flight) cannot cover even a minimal call ({minimum})"
                    ),
                )
                .with_details(
                    json!({ "remaining": remaining, "available": available, "minimum": minimum }),
                );
                match budget {
                    Some(budget) => error.with_budget(budget),
                    None => error,
                }
            }
            CallFailure::PayerHeldBack(held) => payer_held_back(&held),
            CallFailure::TooManyInFlight { max } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!("the key already has {max} calls in flight; retry when one finishes"),
            ),
            CallFailure::TooManyHolds => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "the key has too many calls in flight",
            ),
            CallFailure::AtCapacity => unavailable("the gateway is at capacity; retry shortly"),
            CallFailure::KeyUnavailable { cause } => {
                unavailable("the key could not be loaded; retry shortly").logged(&cause)
            }
            CallFailure::LedgerUnavailable { cause } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger_unavailable",
                "the call could not be recorded; nothing was charged, retry later",
            )
            .logged(&cause),
            CallFailure::UpstreamTimeout => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the model did not answer in time; nothing was charged",
            ),
            CallFailure::UpstreamFailed { cause } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the model failed to answer; nothing was charged",
            )
            .logged(&cause),
            CallFailure::Internal(cause) => ApiError::internal(&cause),
        }
    }
}

/// actix-web's own extractor and routing failures, answered in our shape.
pub fn not_found_route() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

/// 402 `payer_held_back`: the key's payer cannot pay what it owes on chain.
fn payer_held_back(held: &ledger::store::payers::HeldBackPayer) -> ApiError {
    ApiError::new(
        StatusCode::PAYMENT_REQUIRED,
        "payer_held_back",
        format!(
            "the key's wallet owes {} but its {} on chain covers only {} of it: settlement holds \
             it back, and none of its keys spends until it can pay (raise the {} by {})",
            held.owed,
            held.short(),
            held.balance.min(held.allowance),
            held.short(),
            held.shortfall(),
        ),
    )
    .with_details(serde_json::to_value(PayerHeldBack::of(held)).unwrap_or_default())
}
