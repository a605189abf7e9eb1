//! End to end over HTTP: the Studio `/api/v1/apikeys` surface on SQLite and
//! PostgreSQL — documented shapes, the role × route matrix, accounts kept
//! apart, keys refused the moment they are disabled, deleted or expired,
//! JWTs verified offline with the JWKS by an independent library, and bad
//! input refused precisely with nothing changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{spawn_app, spawn_app_with, TestApp};
use ledger::store::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ROLES: [&str; 5] = ["reader", "executor", "application", "developer", "admin"];

impl TestApp {
    /// `GET /external/v1/models` with `bearer`: what a public key may call.
    async fn models(&self, bearer: &str) -> (StatusCode, Value) {
        let request = self
            .client
            .get(self.url("/external/v1/models"))
            .bearer_auth(bearer);
        common::json_of(request.send().await.unwrap()).await
    }

    /// Creates a key with `admin`'s value: (id, value).
    async fn studio_key(&self, admin: &str, key_type: &str, role: &str) -> (String, String) {
        let (status, body) = self
            .studio(
                Method::POST,
                "/apikeys",
                admin,
                Some(&json!({"name": format!("{role} key"), "type": key_type, "role": role})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["value"].as_str().unwrap().to_owned(),
        )
    }

    async fn studio_key_count(&self, admin: &str) -> usize {
        let (status, body) = self.studio(Method::GET, "/apikeys", admin, None).await;
        assert_eq!(status, StatusCode::OK);
        body.as_array().unwrap().len()
    }
}

fn is_iso(value: &Value) -> bool {
    value.as_str().is_some_and(|t| {
        chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.ends_with('Z') && t.len() == 24
    })
}

fn admin_of(bootstrap: &Value) -> (String, String) {
    (
        bootstrap["apikey"]["id"].as_str().unwrap().to_owned(),
        bootstrap["apikey"]["value"].as_str().unwrap().to_owned(),
    )
}

/// Every route answers in the documented shape.
async fn routes_answer_in_the_documented_shapes(backend: Backend) {
    let app = spawn_app(backend).await;
    let boot = app.bootstrap_studio("acme");
    let (admin_id, admin) = admin_of(&boot);
    assert_eq!(boot["apikey"]["role"], "admin");
    assert!(admin.starts_with("sk-"));

    let (status, created) = app
        .studio(
            Method::POST,
            "/apikeys",
            &admin,
            Some(
                &json!({"name": "My API Key", "type": "sk", "role": "developer",
                         "expires_at": "2099-04-19T12:34:56.000Z"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    for field in [
        "id",
        "name",
        "type",
        "role",
        "account",
        "project",
        "enabled",
        "created_by",
        "updated_by",
        "created_at",
        "updated_at",
        "expires_at",
    ] {
        assert!(created.get(field).is_some(), "{field} missing: {created}");
    }
    assert_eq!(created["name"], "My API Key");
    assert_eq!(
        (created["type"].clone(), created["role"].clone()),
        (json!("sk"), json!("developer"))
    );
    assert_eq!(created["account"], boot["account"]["id"]);
    assert_eq!(created["project"], boot["project"]["id"]);
    assert_eq!(created["enabled"], true);
    assert_eq!(created["created_by"], format!("apikey:{admin_id}"));
    assert_eq!(created["expires_at"], "2099-04-19T12:34:56.000Z");
    assert!(is_iso(&created["created_at"]) && is_iso(&created["updated_at"]));
    let id = created["id"].as_str().unwrap();
    let value = created["value"].as_str().unwrap();

    let (status, list) = app.studio(Method::GET, "/apikeys", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<&Value> = list.as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 2);
    for key in &listed {
        assert!(key.get("value").is_none(), "a listing never shows values");
        let masked = key["maskedValue"].as_str().unwrap();
        assert!(masked.starts_with("sk-xxxx"), "{masked}");
    }
    let mine = listed.iter().find(|k| k["id"] == id).unwrap();
    assert!(mine["maskedValue"]
        .as_str()
        .unwrap()
        .ends_with(&value[value.len() - 4..]));

    let (status, got) = app
        .studio(Method::GET, &format!("/apikeys/{id}"), &admin, None)
        .await;
    assert_eq!((status, got.get("value")), (StatusCode::OK, None));
    let (status, got) = app
        .studio(
            Method::GET,
            &format!("/apikeys/{id}?withValue=true"),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (status, got["value"].as_str()),
        (StatusCode::OK, Some(value))
    );

    let (status, updated) = app
        .studio(
            Method::PUT,
            &format!("/apikeys/{id}"),
            &admin,
            Some(
                &json!({"name": "My Updated API Key", "role": "admin", "enabled": false,
                         "expires_at": "2099-05-01T00:00:00.000Z"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "My Updated API Key");
    assert_eq!(
        (updated["role"].clone(), updated["enabled"].clone()),
        (json!("admin"), json!(false))
    );
    assert_eq!(updated["expires_at"], "2099-05-01T00:00:00.000Z");
    assert_eq!(updated["updated_by"], format!("apikey:{admin_id}"));

    let (status, token) = app
        .studio(
            Method::GET,
            &format!("/apikeys/{admin_id}/token"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(token["token"].as_str().unwrap().split('.').count(), 3);

    let before = ledger::time::now_ms();
    let (status, pk) = app
        .studio(
            Method::GET,
            "/apikeys/pk?name=Browser&ttl=120",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{pk}");
    assert!(pk["value"].as_str().unwrap().starts_with("pk-"));
    let expires = chrono::DateTime::parse_from_rfc3339(pk["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert!(
        (before + 119_000..=before + 121_000).contains(&expires),
        "ttl honoured"
    );
    let (status, pk_default) = app.studio(Method::GET, "/apikeys/pk", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let expires = chrono::DateTime::parse_from_rfc3339(pk_default["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert!(
        (before + 3_599_000..=before + 3_601_000).contains(&expires),
        "default ttl 3600 s"
    );

    let (status, deleted) = app
        .studio(Method::DELETE, &format!("/apikeys/{id}"), &admin, None)
        .await;
    assert_eq!(
        (status, deleted),
        (
            StatusCode::OK,
            json!({"acknowledged": true, "deletedCount": 1})
        )
    );
    let (status, answer) = app
        .studio(Method::GET, &format!("/apikeys/{id}"), &admin, None)
        .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("apikey_not_found"))
    );

    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
}

/// What each role may do, route by route, and a public key (an executor
/// meant for browsers) only exchanges itself for a JWT; every refusal is a
/// 403 with a JSON error.
async fn the_role_matrix_is_enforced_on_every_route(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = admin_of(&app.bootstrap_studio("acme"));
    let mut callers: Vec<(String, String, String)> = Vec::new();
    for role in ROLES {
        let (id, value) = app.studio_key(&admin, "sk", role).await;
        callers.push((format!("sk {role}"), id, value));
    }
    let (status, pk) = app.studio(Method::GET, "/apikeys/pk", &admin, None).await;
    assert_eq!(status, StatusCode::OK);
    let pk_value = pk["value"].as_str().unwrap().to_owned();
    let (_, listed) = app.studio(Method::GET, "/apikeys", &admin, None).await;
    let pk_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["type"] == "pk")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    callers.push(("pk".into(), pk_id, pk_value));

    // (route, least role; "admin"-only for delete), pk counts as executor.
    let least = |route: &str| match route {
        "list" | "get" | "token-own" => "reader",
        "pk" => "application",
        "with-value" | "create" | "update" | "token-other" => "developer",
        "delete" => "admin",
        _ => unreachable!(),
    };
    let rank = |role: &str| ROLES.iter().position(|r| *r == role).unwrap();
    for (who, own_id, value) in &callers {
        let role = who.strip_prefix("sk ").unwrap_or("executor");
        let public = who == "pk";
        for route in [
            "list",
            "get",
            "with-value",
            "create",
            "update",
            "delete",
            "token-own",
            "token-other",
            "pk",
        ] {
            // A fresh reader key to act on, so every call has a target.
            let (target, _) = app.studio_key(&admin, "sk", "reader").await;
            let (method, path, body) = match route {
                "list" => (Method::GET, "/apikeys".to_owned(), None),
                "get" => (Method::GET, format!("/apikeys/{target}"), None),
                "with-value" => (
                    Method::GET,
                    format!("/apikeys/{target}?withValue=true"),
                    None,
                ),
                "create" => (
                    Method::POST,
                    "/apikeys".to_owned(),
                    Some(json!({"name": "made", "type": "sk", "role": "reader"})),
                ),
                "update" => (
                    Method::PUT,
                    format!("/apikeys/{target}"),
                    Some(json!({"name": "renamed"})),
                ),
                "delete" => (Method::DELETE, format!("/apikeys/{target}"), None),
                "token-own" => (Method::GET, format!("/apikeys/{own_id}/token"), None),
                "token-other" => (Method::GET, format!("/apikeys/{target}/token"), None),
                "pk" => (Method::GET, "/apikeys/pk?ttl=60".to_owned(), None),
                _ => unreachable!(),
            };
            let (status, answer) = app.studio(method, &path, value, body.as_ref()).await;
            // A public key only exchanges itself for a JWT (and pays).
            let allowed = rank(role) >= rank(least(route)) && (!public || route == "token-own");
            if allowed {
                assert!(status.is_success(), "{who} {route}: {status} {answer}");
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{who} {route}: {answer}");
                assert_eq!(
                    answer["error"]["code"], "insufficient_role",
                    "{who} {route}"
                );
            }
        }
    }
}

/// A key never grants, edits, reveals or tokenizes a role above its own.
async fn no_key_reaches_above_its_own_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin_id, admin) = admin_of(&app.bootstrap_studio("acme"));
    let (_, developer) = app.studio_key(&admin, "sk", "developer").await;
    let (reader_id, _) = app.studio_key(&admin, "sk", "reader").await;
    let refusals = [
        (
            Method::POST,
            "/apikeys".to_owned(),
            Some(json!({"name": "x", "type": "sk", "role": "admin"})),
        ),
        (
            Method::PUT,
            format!("/apikeys/{admin_id}"),
            Some(json!({"enabled": false})),
        ),
        (
            Method::PUT,
            format!("/apikeys/{reader_id}"),
            Some(json!({"role": "admin"})),
        ),
        (
            Method::GET,
            format!("/apikeys/{admin_id}?withValue=true"),
            None,
        ),
        (Method::GET, format!("/apikeys/{admin_id}/token"), None),
    ];
    let before = app.studio_key_count(&admin).await;
    for (method, path, body) in refusals {
        let (status, answer) = app
            .studio(method.clone(), &path, &developer, body.as_ref())
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "role_above_caller");
    }
    assert_eq!(app.studio_key_count(&admin).await, before);
    let (_, admin_view) = app
        .studio(Method::GET, &format!("/apikeys/{admin_id}"), &admin, None)
        .await;
    assert_eq!(
        admin_view["enabled"], true,
        "the admin key was not disabled"
    );

    // Enabling, disabling and expiry need a role above the key's, or admin:
    // a developer cannot re-enable a peer an admin disabled, nor lift or
    // change its own expiry.
    let (peer_id, _) = app.studio_key(&admin, "sk", "developer").await;
    let (developer_id, developer) = app.studio_key(&admin, "sk", "developer").await;
    let off = json!({"enabled": false});
    let on = json!({"enabled": true});
    let forever = json!({"expires_at": null});
    let peer = format!("/apikeys/{peer_id}");
    assert_eq!(
        app.studio(Method::PUT, &peer, &admin, Some(&off)).await.0,
        StatusCode::OK
    );
    let own = format!("/apikeys/{developer_id}");
    for (path, body) in [(&peer, &on), (&own, &forever), (&own, &off)] {
        let got = app.studio(Method::PUT, path, &developer, Some(body)).await;
        common::assert_error(&got, 403, "insufficient_role");
    }
    // Below its own role it may: a developer disables a reader.
    let reader = format!("/apikeys/{reader_id}");
    let (status, view) = app
        .studio(Method::PUT, &reader, &developer, Some(&off))
        .await;
    assert_eq!(
        (status, view["enabled"].clone()),
        (StatusCode::OK, json!(false))
    );
}

/// Another account's keys and projects are out of reach: 404, as if absent.
async fn accounts_are_kept_apart(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.bootstrap_studio("first");
    let (first_admin_id, first_admin) = admin_of(&first);
    let (_, second_admin) = admin_of(&app.bootstrap_studio("second"));
    let path = format!("/apikeys/{first_admin_id}");
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (Method::GET, format!("{path}?withValue=true"), None),
        (Method::PUT, path.clone(), Some(json!({"enabled": false}))),
        (Method::DELETE, path.clone(), None),
        (Method::GET, format!("{path}/token"), None),
    ] {
        let (status, answer) = app
            .studio(method.clone(), &path, &second_admin, body.as_ref())
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
        assert_eq!(answer["error"]["code"], "apikey_not_found");
    }
    let project = first["project"]["id"].as_str().unwrap();
    let (status, answer) = app
        .studio(
            Method::GET,
            &format!("/apikeys/pk?projectId={project}"),
            &second_admin,
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("project_not_found"))
    );
    assert_eq!(
        app.studio_key_count(&second_admin).await,
        1,
        "sees only its own key"
    );
    assert_eq!(
        app.studio_key_count(&first_admin).await,
        1,
        "the first account is untouched"
    );
}

/// A disabled key is refused on its next call (its JWTs too), a deleted one
/// likewise, and a public key's ttl is honoured to the second.
async fn keys_stop_the_moment_they_are_disabled_deleted_or_expired(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = admin_of(&app.bootstrap_studio("acme"));
    let (id, reader) = app.studio_key(&admin, "sk", "reader").await;
    let (_, token) = app
        .studio(Method::GET, &format!("/apikeys/{id}/token"), &reader, None)
        .await;
    let jwt = token["token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.studio(Method::GET, "/apikeys", &jwt, None).await.0,
        StatusCode::OK,
        "JWTs are bearer tokens"
    );
    let disable = json!({"enabled": false});
    let (status, _) = app
        .studio(
            Method::PUT,
            &format!("/apikeys/{id}"),
            &admin,
            Some(&disable),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for bearer in [&reader, &jwt] {
        let (status, answer) = app.studio(Method::GET, "/apikeys", bearer, None).await;
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("key_disabled"))
        );
    }
    let enable = json!({"enabled": true});
    let (status, enabled) = app
        .studio(
            Method::PUT,
            &format!("/apikeys/{id}"),
            &admin,
            Some(&enable),
        )
        .await;
    assert_eq!(
        (status, &enabled["enabled"]),
        (StatusCode::OK, &json!(true))
    );
    assert_eq!(
        app.studio(Method::GET, "/apikeys", &reader, None).await.0,
        StatusCode::OK
    );
    let (status, deleted) = app
        .studio(Method::DELETE, &format!("/apikeys/{id}"), &admin, None)
        .await;
    assert_eq!(
        (status, deleted),
        (
            StatusCode::OK,
            json!({"acknowledged": true, "deletedCount": 1})
        )
    );
    for bearer in [&reader, &jwt] {
        let (status, answer) = app.studio(Method::GET, "/apikeys", bearer, None).await;
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("invalid_api_key"))
        );
    }

    let (_, pk) = app
        .studio(Method::GET, "/apikeys/pk?ttl=1", &admin, None)
        .await;
    let pk = pk["value"].as_str().unwrap().to_owned();
    assert_eq!(app.models(&pk).await.0, StatusCode::OK);
    let expired = common::eventually(std::time::Duration::from_secs(5), || async {
        app.models(&pk).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(expired, "a 1 s public key must expire");
    let (status, answer) = app.models(&pk).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("key_expired"))
    );
}

/// A JWT from `/token` verifies offline with the JWKS in an independent
/// library (jsonwebtoken), carries the key's claims, and is refused once
/// tampered with or expired.
async fn jwts_verify_offline_and_expire(backend: Backend) {
    let app = spawn_app_with(backend, &[("TOLLGATE__STUDIO__JWT_TTL_MS", "1500")]).await;
    let boot = app.bootstrap_studio("acme");
    let (admin_id, admin) = admin_of(&boot);
    let (_, token) = app
        .studio(
            Method::GET,
            &format!("/apikeys/{admin_id}/token"),
            &admin,
            None,
        )
        .await;
    let jwt = token["token"].as_str().unwrap().to_owned();
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("the JWT's kid is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&["tollgate"]);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(&jwt, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["key_id"], admin_id.as_str());
    assert_eq!(claims["account"], boot["account"]["id"]);
    assert_eq!(claims["project"], boot["project"]["id"]);
    assert_eq!(
        (claims["role"].clone(), claims["type"].clone()),
        (json!("admin"), json!("sk"))
    );
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());

    // Tampered: another role in the payload, same signature.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    let mut payload = claims.clone();
    payload["role"] = json!("admin2");
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string());
    let tampered = parts.join(".");
    assert!(jsonwebtoken::decode::<Value>(&tampered, &key, &validation).is_err());
    assert_eq!(
        app.studio(Method::GET, "/apikeys", &tampered, None).await.0,
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(
        app.studio(Method::GET, "/apikeys", &jwt, None).await.0,
        StatusCode::OK
    );
    // Its `exp` is whole seconds: wait for it to pass, with a deadline.
    let expired = common::eventually(std::time::Duration::from_secs(5), || async {
        app.studio(Method::GET, "/apikeys", &jwt, None).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(expired, "the JWT must expire");
    let (status, answer) = app.studio(Method::GET, "/apikeys", &jwt, None).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("invalid_token"))
    );
}

/// Bad input: each a precise 4xx with a JSON error, and nothing changes.
async fn bad_input_is_refused_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin_id, admin) = admin_of(&app.bootstrap_studio("acme"));
    let before = app.studio_key_count(&admin).await;
    let create = |body: Value| (Method::POST, "/apikeys".to_owned(), Some(body));
    let cases = [
        (
            create(json!({"name": "x", "type": "xk", "role": "reader"})),
            422,
            "invalid_field",
        ),
        (
            create(json!({"name": "x", "type": "sk", "role": "owner"})),
            422,
            "invalid_field",
        ),
        (
            create(json!({"name": "x", "type": "sk"})),
            422,
            "invalid_field",
        ),
        (
            create(json!({"type": "sk", "role": "reader"})),
            422,
            "invalid_field",
        ),
        (
            create(json!({"name": "x", "type": "pk", "role": "admin"})),
            422,
            "invalid_field",
        ),
        (
            create(json!({"name": "x", "type": "sk", "role": "reader", "expires_at": "tomorrow"})),
            422,
            "invalid_field",
        ),
        (
            create(
                json!({"name": "x", "type": "sk", "role": "reader", "expires_at": "2001-01-01T00:00:00Z"}),
            ),
            422,
            "invalid_field",
        ),
        (create(json!(["not", "an", "object"])), 400, "invalid_json"),
        (
            (
                Method::PUT,
                format!("/apikeys/{admin_id}"),
                Some(json!({"owner": "me"})),
            ),
            422,
            "invalid_field",
        ),
        (
            (
                Method::PUT,
                format!("/apikeys/{admin_id}"),
                Some(json!({"enabled": "no"})),
            ),
            422,
            "invalid_field",
        ),
        (
            (Method::GET, "/apikeys/pk?ttl=0".to_owned(), None),
            400,
            "invalid_query",
        ),
        (
            (Method::GET, "/apikeys/pk?ttl=-5".to_owned(), None),
            400,
            "invalid_query",
        ),
        (
            (Method::GET, "/apikeys/pk?ttl=2592001".to_owned(), None),
            400,
            "invalid_query",
        ),
        (
            (Method::GET, "/apikeys/pk?ttl=soon".to_owned(), None),
            400,
            "invalid_query",
        ),
        (
            (Method::GET, "/apikeys/01234567unknown".to_owned(), None),
            404,
            "apikey_not_found",
        ),
        (
            (Method::DELETE, "/apikeys/01234567unknown".to_owned(), None),
            404,
            "apikey_not_found",
        ),
        (
            (
                Method::GET,
                format!("/apikeys/{admin_id}?withValue=maybe"),
                None,
            ),
            400,
            "invalid_query",
        ),
    ];
    for ((method, path, body), status, code) in cases {
        let got = app
            .studio(method.clone(), &path, &admin, body.as_ref())
            .await;
        common::assert_error(&got, status, code);
        let _ = (method, path);
    }
    let response = app
        .client
        .post(app.url("/api/v1/apikeys"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    common::assert_error(&common::json_of(response).await, 400, "invalid_json");
    let response = app
        .client
        .post(app.url("/api/v1/apikeys"))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for bearer in ["sk-not-a-key", "garbage", "eyJhbGciOiJub25lIn0.e30.x"] {
        let got = app.studio(Method::GET, "/apikeys", bearer, None).await;
        assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{bearer}");
        let code = got.1["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "invalid_token" || code == "invalid_api_key",
            "{bearer}: {}",
            got.1
        );
    }
    assert_eq!(
        app.studio_key_count(&admin).await,
        before,
        "nothing was created"
    );
    let (_, admin_view) = app
        .studio(Method::GET, &format!("/apikeys/{admin_id}"), &admin, None)
        .await;
    assert_eq!(
        (admin_view["role"].clone(), admin_view["enabled"].clone()),
        (json!("admin"), json!(true))
    );
}

/// Studio keys of role executor and above spend their project's budget on
/// the paid path, through the same key actors and ledger as Compose keys;
/// only an admin key sets the budget, and only within the account wallet's
/// funds.
async fn studio_keys_spend_their_projects_budget(backend: Backend) {
    let app = spawn_app(backend).await;
    let wallet = common::Wallet::random();
    let boot = app.bootstrap_studio_with(&[
        "--account",
        "acme",
        "--project",
        "main",
        "--wallet",
        &wallet.hex(),
    ]);
    app.credit(&wallet, 1_000).await;
    let (_, admin) = admin_of(&boot);
    let project = boot["project"]["id"].as_str().unwrap();
    let budget_path = format!("/projects/{project}/budget");
    let (status, budget) = app
        .studio(
            Method::PUT,
            &budget_path,
            &admin,
            Some(&json!({"budgetLimit": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{budget}");
    assert_eq!(
        (budget["budgetLimit"].clone(), budget["budgetUsed"].clone()),
        (json!("60"), json!("0"))
    );
    let budget_key = budget["keyId"].as_str().unwrap().to_owned();

    let (_, reader) = app.studio_key(&admin, "sk", "reader").await;
    let (executor_id, executor) = app.studio_key(&admin, "sk", "executor").await;
    let (_, developer) = app.studio_key(&admin, "sk", "developer").await;
    let (_, pk) = app.studio(Method::GET, "/apikeys/pk", &admin, None).await;
    let pk = pk["value"].as_str().unwrap().to_owned();
    let (_, jwt) = app
        .studio(
            Method::GET,
            &format!("/apikeys/{executor_id}/token"),
            &executor,
            None,
        )
        .await;
    let jwt = jwt["token"].as_str().unwrap().to_owned();
    let three_words = json!({"model": "echo", "messages": [{"role": "user", "content": "a b c"}]});

    let response = app.chat(&reader, &three_words).await;
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "a reader may not execute"
    );
    for bearer in [&executor, &pk, &jwt, &developer] {
        let response = app.chat(bearer, &three_words).await;
        assert_eq!(response.status(), StatusCode::OK);
        // 3 words in + 3 out × 2 = 9.
        assert_eq!(
            common::header_amount(&response, "x-compose-key-final-amount-wei"),
            9
        );
    }
    let (_, budget) = app.studio(Method::GET, &budget_path, &reader, None).await;
    assert_eq!(budget["budgetUsed"], "36");
    assert_eq!(
        app.spent(&budget_key).await,
        (36, 36),
        "charged in the ledger"
    );

    // 24 left: a 30-word prompt cannot fit even one output token.
    let long = json!({"model": "echo", "messages": [{"role": "user", "content": vec!["w"; 30].join(" ")}]});
    let response = app.chat(&executor, &long).await;
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);

    // Only an admin sets budgets, and only within the wallet's funds.
    let (status, answer) = app
        .studio(
            Method::PUT,
            &budget_path,
            &developer,
            Some(&json!({"budgetLimit": 10})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(answer["error"]["code"], "insufficient_role", "{answer}");
    let got = app
        .studio(
            Method::PUT,
            &budget_path,
            &admin,
            Some(&json!({"budgetLimit": 2_000})),
        )
        .await;
    common::assert_error(&got, 402, "insufficient_funds");
    let (_, unchanged) = app.studio(Method::GET, &budget_path, &admin, None).await;
    assert_eq!(unchanged["keyId"], budget_key.as_str());

    // A disabled key stops paying at once.
    let path = format!("/apikeys/{executor_id}");
    let (status, disabled) = app
        .studio(Method::PUT, &path, &admin, Some(&json!({"enabled": false})))
        .await;
    assert_eq!(
        (status, &disabled["enabled"]),
        (StatusCode::OK, &json!(false))
    );
    assert_eq!(
        app.chat(&executor, &three_words).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A new budget replaces the old one, whose key is refused from then on.
    let (status, renewed) = app
        .studio(
            Method::PUT,
            &budget_path,
            &admin,
            Some(&json!({"budgetLimit": 100})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(renewed["keyId"], budget_key.as_str());
    assert_eq!(renewed["budgetUsed"], "0");
    let response = app.chat(&pk, &three_words).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        common::header_amount(&response, "x-compose-key-budget-used"),
        9
    );
    assert_eq!(
        app.spent(&budget_key).await,
        (36, 36),
        "the old budget's charges stay"
    );

    // The wallet owner may revoke the budget key itself (it is their key):
    // Studio keys then find no budget, rather than a credential error.
    let session = app.sign_in(&wallet).await;
    let (status, _) = app
        .revoke_key(&session, renewed["keyId"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = common::json_of(app.chat(&pk, &three_words).await).await;
    common::assert_error(&got, 402, "no_budget");

    // An account without a funding wallet has no budget to spend or set.
    let (_, other_admin) = admin_of(&app.bootstrap_studio("poor"));
    let got = common::json_of(app.chat(&other_admin, &three_words).await).await;
    common::assert_error(&got, 402, "no_budget");
    let other = app.bootstrap_studio_with(&["--account", "poor2", "--project", "p"]);
    let (_, other_admin) = admin_of(&other);
    let other_path = format!(
        "/projects/{}/budget",
        other["project"]["id"].as_str().unwrap()
    );
    let got = app
        .studio(
            Method::PUT,
            &other_path,
            &other_admin,
            Some(&json!({"budgetLimit": 10})),
        )
        .await;
    common::assert_error(&got, 409, "no_funding_wallet");
    // Another account's project is out of reach.
    let got = app
        .studio(Method::GET, &budget_path, &other_admin, None)
        .await;
    common::assert_error(&got, 404, "project_not_found");
}

/// A JWT's claims, read without verifying (the server verified it).
fn claims_of(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn in_days(days: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::days(days))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn ms_of(date: &Value) -> Option<i64> {
    date.as_str().map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    })
}

/// Finding 5 (invariant 9): a developer cannot undo an admin's disable by
/// demoting the key below itself, re-enabling it and promoting it back —
/// nor lift an admin's expiry that way. The restricting role is recorded;
/// lifting needs a role at least as high. An admin still lifts its own
/// restrictions, and a developer its own.
async fn a_restriction_is_lifted_only_by_a_role_as_high_as_its_setter(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = admin_of(&app.bootstrap_studio("acme"));
    let (_, developer) = app.studio_key(&admin, "sk", "developer").await;
    let (dev2_id, dev2) = app.studio_key(&admin, "sk", "developer").await;
    let dev2_path = format!("/apikeys/{dev2_id}");
    let (app, admin, dev2_path) = (&app, &admin, &dev2_path);
    let put = move |bearer: &str, body: Value| {
        let bearer = bearer.to_owned();
        async move {
            app.studio(Method::PUT, dev2_path, &bearer, Some(&body))
                .await
        }
    };
    let state = move || async move {
        let (status, view) = app.studio(Method::GET, dev2_path, admin, None).await;
        assert_eq!(status, StatusCode::OK);
        (
            view["role"].clone(),
            view["enabled"].clone(),
            view["expires_at"].clone(),
        )
    };

    // The reported sequence: each step was a 200, and dev2 worked again.
    assert_eq!(
        put(admin, json!({"enabled": false})).await.0,
        StatusCode::OK
    );
    let (status, view) = put(&developer, json!({"role": "reader"})).await;
    assert_eq!(status, StatusCode::OK, "demoting stays allowed: {view}");
    let got = put(&developer, json!({"enabled": true, "expires_at": null})).await;
    common::assert_error(&got, 403, "insufficient_role");
    assert_eq!(
        state().await,
        (json!("reader"), json!(false), Value::Null),
        "the refused step changed nothing"
    );
    let (status, _) = put(&developer, json!({"role": "developer"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = app.studio(Method::GET, "/apikeys", &dev2, None).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("key_disabled")),
        "dev2 stays disabled"
    );
    // Disabling again (a developer may restrict further) keeps the admin's mark.
    assert_eq!(
        put(&developer, json!({"role": "reader"})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        put(&developer, json!({"enabled": false})).await.0,
        StatusCode::OK
    );
    let got = put(&developer, json!({"enabled": true})).await;
    common::assert_error(&got, 403, "insufficient_role");
    // The admin lifts its own restriction.
    let (status, view) = put(admin, json!({"enabled": true, "role": "developer"})).await;
    assert_eq!(
        (status, view["enabled"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert_eq!(
        app.studio(Method::GET, "/apikeys", &dev2, None).await.0,
        StatusCode::OK
    );

    // The expiry variant: an admin's expiry is not lengthened nor removed by
    // a developer, whatever the key's role meanwhile.
    let admin_expiry = in_days(10);
    let (status, _) = put(admin, json!({"expires_at": admin_expiry})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        put(&developer, json!({"role": "reader"})).await.0,
        StatusCode::OK
    );
    for body in [
        json!({"expires_at": null}),
        json!({"expires_at": in_days(20)}),
        json!({"enabled": true, "expires_at": null}),
    ] {
        let got = put(&developer, body.clone()).await;
        common::assert_error(&got, 403, "insufficient_role");
        let (role, enabled, expires) = state().await;
        assert_eq!(
            (role, enabled, ms_of(&expires)),
            (json!("reader"), json!(true), ms_of(&json!(admin_expiry))),
            "{body} changed nothing"
        );
    }
    // Shortening is a further restriction: allowed, and still the admin's to lift.
    let shorter = in_days(5);
    assert_eq!(
        put(&developer, json!({"expires_at": shorter})).await.0,
        StatusCode::OK
    );
    let got = put(&developer, json!({"expires_at": in_days(8)})).await;
    common::assert_error(&got, 403, "insufficient_role");
    assert_eq!(ms_of(&state().await.2), ms_of(&json!(shorter)));
    // The admin lifts it.
    let (status, view) = put(admin, json!({"expires_at": null})).await;
    assert_eq!(
        (status, view["expires_at"].clone()),
        (StatusCode::OK, Value::Null)
    );

    // A developer lifts what a developer set.
    assert_eq!(
        put(
            &developer,
            json!({"enabled": false, "expires_at": in_days(3)})
        )
        .await
        .0,
        StatusCode::OK
    );
    let (status, view) = put(&developer, json!({"enabled": true, "expires_at": null})).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (view["enabled"].clone(), view["expires_at"].clone()),
        (json!(true), Value::Null)
    );
}

/// Invariant 9, property style: whatever sequence of PUTs a developer (its
/// own key, a key it made, or its JWT) sends, each step allowed or not, a
/// key an admin disabled and gave an expiry never ends enabled, nor with an
/// expiry later than the admin's.
async fn no_sequence_of_developer_steps_lifts_an_admin_restriction(backend: Backend) {
    use rand::{Rng, SeedableRng};
    let app = spawn_app(backend).await;
    let (_, admin) = admin_of(&app.bootstrap_studio("acme"));
    let (developer_id, developer) = app.studio_key(&admin, "sk", "developer").await;
    let (_, helper) = app.studio_key(&developer, "sk", "developer").await;
    let (_, token) = app
        .studio(
            Method::GET,
            &format!("/apikeys/{developer_id}/token"),
            &developer,
            None,
        )
        .await;
    let jwt = token["token"].as_str().unwrap().to_owned();
    let actors = [developer, helper, jwt];
    let roles = ["reader", "executor", "application", "developer"];
    let (mut allowed, mut refused) = (0, 0);
    for seed in 0..4_u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (target_id, _) = app
            .studio_key(&admin, "sk", roles[(seed % 4) as usize])
            .await;
        let path = format!("/apikeys/{target_id}");
        let admin_expiry = in_days(10);
        let limit = ms_of(&json!(admin_expiry)).unwrap();
        let (status, _) = app
            .studio(
                Method::PUT,
                &path,
                &admin,
                Some(&json!({"enabled": false, "expires_at": admin_expiry})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        for step in 0..30 {
            let mut body = serde_json::Map::new();
            if rng.gen_bool(0.5) {
                body.insert("role".into(), json!(roles[rng.gen_range(0..roles.len())]));
            }
            if rng.gen_bool(0.5) {
                body.insert("enabled".into(), json!(rng.gen_bool(0.5)));
            }
            if rng.gen_bool(0.5) {
                let expiry = match rng.gen_range(0..3) {
                    0 => Value::Null,
                    _ => json!(in_days(rng.gen_range(1..30))),
                };
                body.insert("expires_at".into(), expiry);
            }
            let actor = &actors[rng.gen_range(0..actors.len())];
            let body = Value::Object(body);
            let (status, answer) = app.studio(Method::PUT, &path, actor, Some(&body)).await;
            match status {
                StatusCode::OK => allowed += 1,
                StatusCode::FORBIDDEN => refused += 1,
                _ => panic!("seed {seed} step {step} {body}: {status} {answer}"),
            }
            let (_, view) = app.studio(Method::GET, &path, &admin, None).await;
            assert_eq!(
                view["enabled"], false,
                "seed {seed} step {step} {body} re-enabled the key"
            );
            let expiry = ms_of(&view["expires_at"]);
            assert!(
                expiry.is_some_and(|at| at <= limit),
                "seed {seed} step {step} {body} lifted the expiry: {view}"
            );
        }
    }
    assert!(
        allowed > 10 && refused > 10,
        "{allowed} allowed, {refused} refused"
    );
}

/// Finding 7 (invariant 9): a JWT acts with, and mints, at most the role it
/// was issued with, even after its key was promoted.
async fn a_jwt_never_raises_its_own_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = admin_of(&app.bootstrap_studio("acme"));
    let (id, executor) = app.studio_key(&admin, "sk", "executor").await;
    let token_path = format!("/apikeys/{id}/token");
    let (status, token) = app.studio(Method::GET, &token_path, &executor, None).await;
    assert_eq!(status, StatusCode::OK);
    let jwt = token["token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&jwt)["role"], "executor");

    let (status, _) = app
        .studio(
            Method::PUT,
            &format!("/apikeys/{id}"),
            &admin,
            Some(&json!({"role": "developer"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let create = json!({"name": "made by a JWT", "type": "sk", "role": "reader"});
    let before = app.studio_key_count(&admin).await;

    // The old JWT still acts as an executor...
    let got = app
        .studio(Method::POST, "/apikeys", &jwt, Some(&create))
        .await;
    common::assert_error(&got, 403, "insufficient_role");
    // ...and exchanging it gives an executor JWT, not a developer one.
    let (status, token) = app.studio(Method::GET, &token_path, &jwt, None).await;
    assert_eq!(status, StatusCode::OK, "{token}");
    let renewed = token["token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&renewed)["role"], "executor");
    let got = app
        .studio(Method::POST, "/apikeys", &renewed, Some(&create))
        .await;
    common::assert_error(&got, 403, "insufficient_role");
    assert_eq!(
        app.studio_key_count(&admin).await,
        before,
        "nothing was created"
    );

    // The key's own value now acts, and mints, as the developer it is.
    let (_, token) = app.studio(Method::GET, &token_path, &executor, None).await;
    assert_eq!(
        claims_of(token["token"].as_str().unwrap())["role"],
        "developer"
    );
    // A JWT never mints above the key's current role either: demoted to reader.
    let (status, _) = app
        .studio(
            Method::PUT,
            &format!("/apikeys/{id}"),
            &admin,
            Some(&json!({"role": "reader"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, token) = app.studio(Method::GET, &token_path, &jwt, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        claims_of(token["token"].as_str().unwrap())["role"],
        "reader"
    );
}

/// A Studio key pays from its project's budget on every paid API — the
/// Responses API, Messages (its key as `x-api-key`, as Anthropic's SDKs send
/// it) and embeddings — and before its project has a budget each answers
/// 402 `no_budget`.
async fn studio_keys_pay_on_every_api(backend: Backend) {
    let app = spawn_app(backend).await;
    let wallet = common::Wallet::random();
    let boot = app.bootstrap_studio_with(&[
        "--account",
        "acme",
        "--project",
        "main",
        "--wallet",
        &wallet.hex(),
    ]);
    app.credit(&wallet, 1_000).await;
    let (_, admin) = admin_of(&boot);
    let (_, executor) = app.studio_key(&admin, "sk", "executor").await;
    let user = json!([{"role": "user", "content": "a b c"}]);
    let calls = [
        (
            "/external/v1/responses",
            json!({"model": "echo", "input": "a b c"}),
            false,
            9,
        ),
        (
            "/external/v1/messages",
            json!({"model": "echo", "max_tokens": 9, "messages": user}),
            true,
            9,
        ),
        (
            "/external/v1/embeddings",
            json!({"model": "echo", "input": "a b c"}),
            false,
            3,
        ),
    ];
    let send = |path: &str, body: &Value, anthropic: bool| {
        let request = app.client.post(app.url(path)).json(body);
        let request = if anthropic {
            request.header("x-api-key", &executor)
        } else {
            request.bearer_auth(&executor)
        };
        request.send()
    };
    for (path, body, anthropic, _) in &calls {
        let got = common::json_of(send(path, body, *anthropic).await.unwrap()).await;
        common::assert_error(&got, 402, "no_budget");
    }
    let project = boot["project"]["id"].as_str().unwrap();
    let (status, budget) = app
        .studio(
            Method::PUT,
            &format!("/projects/{project}/budget"),
            &admin,
            Some(&json!({"budgetLimit": 100})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{budget}");
    // 3 words in, 3 out: 9 each; embeddings 3.
    for (path, body, anthropic, amount) in &calls {
        let response = send(path, body, *anthropic).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            common::header_amount(&response, "x-compose-key-final-amount-wei"),
            *amount
        );
    }
    let budget_key = budget["keyId"].as_str().unwrap();
    assert_eq!(app.spent(budget_key).await, (21, 21));
}

both_stores!(
    routes_answer_in_the_documented_shapes,
    the_role_matrix_is_enforced_on_every_route,
    no_key_reaches_above_its_own_role,
    accounts_are_kept_apart,
    keys_stop_the_moment_they_are_disabled_deleted_or_expired,
    jwts_verify_offline_and_expire,
    bad_input_is_refused_and_changes_nothing,
    studio_keys_spend_their_projects_budget,
    studio_keys_pay_on_every_api,
    a_restriction_is_lifted_only_by_a_role_as_high_as_its_setter,
    no_sequence_of_developer_steps_lifts_an_admin_restriction,
    a_jwt_never_raises_its_own_role,
);
