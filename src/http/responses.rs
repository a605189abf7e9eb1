//! The error responses that paths share, named in their
//! `#[utoipa::path(responses(...))]` beside the statuses that are theirs
//! alone. Each variant is one status answered with [`ErrorBody`].

use utoipa::IntoResponses;

use super::error::ErrorBody;

/// Every route that can fail: a fault of ours or of a dependency.
#[derive(IntoResponses)]
pub enum ServerError {
    #[response(
        status = "5XX",
        description = "A fault of ours or of a dependency (opaque; see the server log)"
    )]
    Fault(ErrorBody<'static>),
}

/// A route behind a bearer token (its `security` names the scheme).
#[derive(IntoResponses)]
pub enum BearerRefused {
    #[response(
        status = 401,
        description = "No, a malformed or an unknown bearer token"
    )]
    Unauthorized(ErrorBody<'static>),
}

/// A route that reads a JSON body (`extract::json_body`).
#[derive(IntoResponses)]
pub enum BodyRefused {
    #[response(
        status = 400,
        description = "Malformed JSON, or a bad header, field or parameter"
    )]
    Malformed(ErrorBody<'static>),
    #[response(status = 408, description = "The body did not arrive in time")]
    TooSlow(ErrorBody<'static>),
    #[response(status = 413, description = "The body is too large")]
    TooLarge(ErrorBody<'static>),
    #[response(status = 415, description = "The body is not application/json")]
    NotJson(ErrorBody<'static>),
    #[response(status = 422, description = "A field has an unacceptable value")]
    Unacceptable(ErrorBody<'static>),
}

/// A paid call (every `/external/v1` endpoint that holds budget): what its
/// key, its project or the gateway may refuse.
#[derive(IntoResponses)]
pub enum PaidRefused {
    #[response(
        status = 402,
        description = "The budget cannot cover one output token (or, for embeddings, the input), the payer is held back, or the project has no budget"
    )]
    Unpaid(ErrorBody<'static>),
    #[response(status = 403, description = "The key may not pay (role, project)")]
    Forbidden(ErrorBody<'static>),
    #[response(status = 404, description = "No such model")]
    NoModel(ErrorBody<'static>),
    #[response(status = 409, description = "Too many calls in flight on this key")]
    Busy(ErrorBody<'static>),
    #[response(status = 429, description = "Too many calls in flight")]
    TooMany(ErrorBody<'static>),
}
