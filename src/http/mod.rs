//! The HTTP API (actix-web): one file per resource.
//!
//! * [`sessions`] — `GET /api/sessions/nonce`, `POST /api/sessions` (SIWE).
//! * [`keys`] — `/api/keys`: create, list, get, revoke, charges.
//! * [`apikeys`] — `/api/v1/apikeys` (Studio keys) and `/.well-known/jwks.json`.
//! * [`projects`] — `/api/v1/projects/{id}/budget`: a Studio project's budget.
//! * [`chat`] — `POST /external/v1/chat/completions`, the paid call.
//! * [`apis`] — the paid call in the Responses, Messages (and its free
//!   `count_tokens`) and embeddings APIs.
//! * [`paid`] — what the paid endpoints share: who pays, framing answers.
//! * [`models`] — `GET /external/v1/models`.
//! * [`health`] — `/healthz`, `/readyz`, `/metrics`.
//! * [`openapi`] — `GET /openapi.json`, assembled from the handlers' paths;
//!   no other file imports it.
//! * [`caller`] — who is calling (Compose key, Studio key or JWT), the budget
//!   a paid call spends from, the project a Studio key acts on. No handler
//!   file imports another.
//! * [`extract`] — headers, and bounded JSON bodies read into their typed
//!   request (`json_body`).
//! * [`fields`] — the serde helpers that read a request's fields with
//!   precise messages, the Studio enums, the checks bodies share.
//! * [`views`] — the views of Compose keys, charges and Studio keys.
//! * [`responses`] — the error responses the documented paths share.
//! * [`error`] — [`error::ApiError`], the one mapping of errors to responses,
//!   and its body.
//!
//! Each request body is a `Deserialize` type and each answer a `Serialize`
//! one, declared beside its handler (or in [`views`] when shared), and the
//! same types are the document's schemas (`ToSchema`).

use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, Responder};

pub mod apikeys;
pub mod apis;
pub mod caller;
pub mod chat;
pub mod error;
pub mod extract;
pub mod fields;
pub mod health;
pub mod keys;
pub mod models;
pub mod openapi;
pub mod paid;
pub mod projects;
pub mod responses;
pub mod sessions;
pub mod views;

/// One route: a method, the full path (actix's `{name}` segments, which are
/// OpenAPI's too) and its handler.
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    route: actix_web::Route,
}

fn at<F, Args>(method: Method, path: &'static str, handler: F) -> Endpoint
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    Endpoint {
        route: web::method(method.clone()).to(handler),
        method,
        path,
    }
}

/// Every route, in matching order: the paid call first (the hot path matches
/// it at the first try), `/apikeys/pk` before `/apikeys/{id}` (which would
/// take "pk" as an id). The tests below check that the document has each.
pub fn endpoints() -> Vec<Endpoint> {
    use Method as M;
    vec![
        at(M::POST, "/external/v1/chat/completions", chat::completions),
        at(M::POST, "/external/v1/responses", apis::responses),
        at(M::POST, "/external/v1/messages", apis::messages),
        at(
            M::POST,
            "/external/v1/messages/count_tokens",
            apis::count_tokens,
        ),
        at(M::POST, "/external/v1/embeddings", apis::embeddings),
        at(M::GET, "/external/v1/models", models::list),
        at(M::GET, "/api/sessions/nonce", sessions::nonce),
        at(M::POST, "/api/sessions", sessions::sign_in),
        at(M::POST, "/api/keys", keys::create),
        at(M::GET, "/api/keys", keys::list),
        at(M::GET, "/api/keys/{key_id}", keys::get),
        at(M::DELETE, "/api/keys/{key_id}", keys::revoke),
        at(M::GET, "/api/keys/{key_id}/charges", keys::charges),
        at(M::GET, "/api/v1/apikeys", apikeys::list),
        at(M::POST, "/api/v1/apikeys", apikeys::create),
        at(M::GET, "/api/v1/apikeys/pk", apikeys::public_key),
        at(M::GET, "/api/v1/apikeys/{id}", apikeys::get),
        at(M::PUT, "/api/v1/apikeys/{id}", apikeys::update),
        at(M::DELETE, "/api/v1/apikeys/{id}", apikeys::delete),
        at(M::GET, "/api/v1/apikeys/{id}/token", apikeys::token),
        at(M::GET, "/api/v1/projects/{id}/budget", projects::get),
        at(M::PUT, "/api/v1/projects/{id}/budget", projects::set),
        at(M::GET, "/.well-known/jwks.json", apikeys::jwks),
        at(M::GET, "/healthz", health::healthz),
        at(M::GET, "/readyz", health::readyz),
        at(M::GET, "/metrics", health::metrics),
        at(M::GET, "/openapi.json", openapi::document),
    ]
}

/// Registers every route of [`endpoints`]; anything else is a JSON 404.
pub fn routes(cfg: &mut web::ServiceConfig) {
    for endpoint in endpoints() {
        cfg.route(endpoint.path, endpoint.route);
    }
    cfg.default_service(web::to(|| async {
        Err::<actix_web::HttpResponse, _>(error::not_found_route())
    }));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    fn document() -> serde_json::Value {
        serde_json::from_str(super::openapi::json()).expect("the document is JSON")
    }

    /// The routes the server registers and the operations the document
    /// names are the same set: a route added without its `#[utoipa::path]`
    /// (or listed in `paths(...)` without being routed) fails here.
    #[test]
    fn every_route_is_documented_and_every_documented_route_is_routed() {
        let routed: BTreeSet<(String, String)> = super::endpoints()
            .iter()
            .map(|e| (e.method.as_str().to_ascii_lowercase(), e.path.to_owned()))
            .collect();
        let document = document();
        let mut documented = BTreeSet::new();
        for (path, operations) in document["paths"].as_object().expect("paths") {
            for method in operations.as_object().expect("operations").keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        assert_eq!(routed.len(), super::endpoints().len(), "a route twice");
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from the document: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented but not routed: {unrouted:?}"
        );
    }
}
