//! The HTTP API (actix-web): one file per resource.
//!
//! * [`sessions`] — `GET /api/sessions/nonce`, `POST /api/sessions` (SIWE).
//! * [`keys`] — `/api/keys`: create, list, get, revoke, charges.
//! * [`apikeys`] — `/api/v1/apikeys` (Studio keys) and `/.well-known/jwks.json`.
//! * [`projects`] — `/api/v1/projects/{id}/budget`: a Studio project's budget.
//! * [`chat`] — `POST /external/v1/chat/completions`, the paid call.
//! * [`models`] — `GET /external/v1/models`.
//! * [`health`] — `/healthz`, `/readyz`.
//! * [`caller`] — who is calling (Compose key, Studio key or JWT), the budget
//!   a paid call spends from, the project a Studio key acts on. No handler
//!   file imports another.
//! * [`extract`] — headers, bounded JSON bodies and fields.
//! * [`views`] — the JSON views of Compose keys and charges.
//! * [`error`] — [`error::ApiError`], the one mapping of errors to responses.

use actix_web::web;

pub mod apikeys;
pub mod caller;
pub mod chat;
pub mod error;
pub mod extract;
pub mod health;
pub mod keys;
pub mod models;
pub mod projects;
pub mod sessions;
pub mod views;

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .route("/apikeys", web::get().to(apikeys::list))
            .route("/apikeys", web::post().to(apikeys::create))
            // Before `/apikeys/{id}`, which would take "pk" as an id.
            .route("/apikeys/pk", web::get().to(apikeys::public_key))
            .route("/apikeys/{id}", web::get().to(apikeys::get))
            .route("/apikeys/{id}", web::put().to(apikeys::update))
            .route("/apikeys/{id}", web::delete().to(apikeys::delete))
            .route("/apikeys/{id}/token", web::get().to(apikeys::token))
            .route("/projects/{id}/budget", web::get().to(projects::get))
            .route("/projects/{id}/budget", web::put().to(projects::set)),
    )
    .route("/.well-known/jwks.json", web::get().to(apikeys::jwks))
    .service(
        web::scope("/api")
            .route("/sessions/nonce", web::get().to(sessions::nonce))
            .route("/sessions", web::post().to(sessions::sign_in))
            .route("/keys", web::post().to(keys::create))
            .route("/keys", web::get().to(keys::list))
            .route("/keys/{key_id}", web::get().to(keys::get))
            .route("/keys/{key_id}", web::delete().to(keys::revoke))
            .route("/keys/{key_id}/charges", web::get().to(keys::charges)),
    )
    .service(
        web::scope("/external/v1")
            .route("/chat/completions", web::post().to(chat::completions))
            .route("/models", web::get().to(models::list)),
    )
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/metrics", web::get().to(health::metrics))
    .default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(error::not_found_route())
    }));
}
