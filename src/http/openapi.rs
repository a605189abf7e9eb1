//! The OpenAPI 3.1 document served at `GET /openapi.json`, assembled by
//! `utoipa` from the `#[utoipa::path]` attribute on every handler; the
//! schemas are the handlers' own request and view types (`ToSchema` beside
//! their `Deserialize`/`Serialize`), and the shared error responses are
//! [`super::responses`]. This file only assembles: no handler imports it.
//!
//! Closed views (`additionalProperties: false`) make a field a handler adds
//! without documenting it fail the schemathesis run (`tests/openapi.rs`),
//! and a route that `http::endpoints` registers without a path here fails
//! `every_route_is_documented_and_every_documented_route_is_routed` (in
//! `http`'s tests).

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};

/// The bearer schemes: one `Authorization: Bearer` header, whose token says
/// which (a Compose key `compose-…`, a Studio `sk-…`/`pk-…`, or a Studio JWT).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "compose_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A Compose key: `compose-…`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "studio_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A Studio key (`sk-…`, `pk-…`) or a JWT from /token"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "anthropic_key",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "x-api-key",
                    "A Compose or Studio key as Anthropic's SDKs send it (Messages only)",
                ),
            )),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`http.metrics_token`, when the operator set one"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate",
        description = "Pay-per-call access to OpenAI-compatible models through budgeted keys, settled in USDC.",
    ),
    paths(
        super::sessions::nonce,
        super::sessions::sign_in,
        super::keys::create,
        super::keys::list,
        super::keys::get,
        super::keys::revoke,
        super::keys::charges,
        super::apikeys::list,
        super::apikeys::create,
        super::apikeys::public_key,
        super::apikeys::get,
        super::apikeys::update,
        super::apikeys::delete,
        super::apikeys::token,
        super::apikeys::jwks,
        super::projects::get,
        super::projects::set,
        super::chat::completions,
        super::apis::responses,
        super::apis::messages,
        super::apis::count_tokens,
        super::apis::embeddings,
        super::models::list,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        document,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security),
)]
pub struct ApiDoc;

/// The document, rendered once.
pub fn json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")),
)]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> serde_json::Value {
        serde_json::from_str(json()).expect("the document is JSON")
    }

    #[test]
    fn is_openapi_3_1() {
        let document = document();
        let version = document["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3.1"), "openapi {version}");
        assert!(document["components"]["schemas"]["KeyView"].is_object());
        assert!(document["components"]["securitySchemes"]["compose_key"].is_object());
    }

    /// Every operation documents its errors with the error body, and every
    /// one that refuses a bearer token names its bearer scheme.
    #[test]
    fn every_operation_documents_its_errors() {
        let document = document();
        for (path, operations) in document["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                let responses = operation["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path} has no success response"
                );
                for (status, response) in responses {
                    if status.starts_with('4') {
                        let schema = &response["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
                let bearer = responses
                    .get("401")
                    .and_then(|r| r["description"].as_str())
                    .is_some_and(|d| d.contains("bearer"));
                if bearer {
                    assert!(
                        operation["security"].is_array(),
                        "{method} {path} has no security"
                    );
                }
            }
        }
    }
}
