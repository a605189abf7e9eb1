//! End-to-end: the Compose key lifecycle over HTTP, and every bad input the
//! API must refuse without changing anything. Each case runs against SQLite
//! and PostgreSQL with a real secp256k1 wallet signing SIWE.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_error, json_of, spawn_app, spawn_app_with, Cases, Wallet, CHAIN};
use ledger::store::Backend;
use ledger::time::now_ms;
use serde_json::json;

async fn key_lifecycle(backend: Backend) {
    let app = spawn_app(backend).await;
    let (wallet, session) = app.funded_wallet(5_000_000).await;

    // Create: the seed's request, amounts as strings in the response.
    let (status, created) = app
        .create_key(
            &session,
            &wallet.hex(),
            "43113",
            &json!({
                "budgetLimit": 1000000, "expiresAt": now_ms() + 86_400_000,
                "chainId": 43113, "purpose": "api", "name": "OpenCode"
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["budgetLimit"], "1000000");
    assert_eq!(created["budgetUsed"], "0");
    assert_eq!(created["budgetRemaining"], "1000000");
    assert_eq!(created["purpose"], "api");
    assert_eq!(created["chainId"], 43113);
    assert_eq!(created["name"], "OpenCode");
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("compose-"));
    let key_id = created["keyId"].as_str().unwrap();

    // The token is never stored, only its hash.
    let stored = app
        .store
        .key(&ledger::KeyId::parse(key_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(stored.token_sha256, token);
    // SHA-256 of the token's bytes, lower-case hex, computed here (not with
    // the product's own helper).
    use sha2::Digest;
    let expected = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    assert_eq!(stored.token_sha256, expected);

    // List: budget state, no token material; both the session key and the api key.
    let (status, listed) = app.list_keys(&session, &wallet.hex()).await;
    assert_eq!(status, 200, "{listed}");
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.get("token").is_none()));
    assert!(!listed.to_string().contains("compose-"));
    // The api key itself may list its wallet's keys too.
    assert_eq!(app.list_keys(token, &wallet.hex()).await.0, 200);

    // Get one, with the session key or the key itself.
    let (status, one) = app.get_key(&session, key_id).await;
    assert_eq!(status, 200);
    assert_eq!(one["keyId"], key_id);
    assert_eq!(one["status"], "active");
    assert_eq!(one["budgetRemaining"], "1000000");
    assert_eq!(app.get_key(token, key_id).await.0, 200);

    // Charges: none yet, in the documented shape.
    let charges = json_of(
        app.client
            .get(app.url(&format!("/api/keys/{key_id}/charges")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(charges.0, 200);
    assert_eq!(charges.1["charges"], json!([]));

    // Revoke; the key is refused on its very next call.
    let (status, revoked) = app.revoke_key(&session, key_id).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert_error(&app.get_key(token, key_id).await, 401, "key_revoked");
    // Revoking again is idempotent.
    assert_eq!(
        app.revoke_key(&session, key_id).await.1["status"],
        "revoked"
    );
    // Its budget is no longer committed: the full balance is free again.
    let (status, big) = app
        .create_key(
            &session,
            &wallet.hex(),
            "43113",
            &json!({ "budgetLimit": "5000000" }),
        )
        .await;
    assert_eq!(status, 201, "{big}");
}

async fn funding_check_answers_402_with_details(backend: Backend) {
    let app = spawn_app(backend).await;
    let wallet = Wallet::random();
    let session = app.sign_in(&wallet).await;
    // No balance at all.
    let got = app
        .create_key(
            &session,
            &wallet.hex(),
            "43113",
            &json!({ "budgetLimit": "1" }),
        )
        .await;
    assert_error(&got, 402, "insufficient_funds");
    assert_eq!(got.1["error"]["details"]["available"], "0");
    app.credit(&wallet, 3_000_000).await;
    assert_eq!(
        app.create_key(
            &session,
            &wallet.hex(),
            "43113",
            &json!({ "budgetLimit": "2000000" })
        )
        .await
        .0,
        201
    );
    let got = app
        .create_key(
            &session,
            &wallet.hex(),
            "43113",
            &json!({ "budgetLimit": "1500000" }),
        )
        .await;
    assert_error(&got, 402, "insufficient_funds");
    let details = &got.1["error"]["details"];
    assert_eq!(details["required"], "1500000");
    assert_eq!(details["available"], "3000000");
    assert_eq!(details["committed"], "2000000");
    assert_eq!(details["shortfall"], "500000");
    assert_eq!(
        app.key_count(&wallet).await,
        2,
        "a refused key is not created"
    );
}

/// `tollgate credit` from the command line is seen by the running server at once.
async fn cli_credit_is_seen_without_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let wallet = Wallet::random();
    let session = app.sign_in(&wallet).await;
    let body = json!({ "budgetLimit": "700000" });
    assert_error(
        &app.create_key(&session, &wallet.hex(), "43113", &body)
            .await,
        402,
        "insufficient_funds",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["credit", &wallet.hex(), "700000", "--chain", "43113"])
        .env("TOLLGATE__STORE__URL", &app.db.url)
        .env("TOLLGATE__LOG__FILTER", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["balance"], "700000");
    assert_eq!(
        app.create_key(&session, &wallet.hex(), "43113", &body)
            .await
            .0,
        201
    );
    // Bad CLI input fails with a message and credits nothing.
    for args in [
        vec!["credit", "0x123", "5"],
        vec!["credit", &wallet.hex(), "1.5"],
        vec!["credit", &wallet.hex(), "0"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(&args)
            .env("TOLLGATE__STORE__URL", &app.db.url)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(!output.stderr.is_empty());
    }
    let balance = app
        .store
        .balance(&wallet.address, ledger::ChainId(CHAIN))
        .await
        .unwrap();
    assert_eq!(balance.credited.atomic(), 700_000);
}

async fn sessions_supersede_older_sessions(backend: Backend) {
    let app = spawn_app(backend).await;
    let (wallet, first) = app.funded_wallet(1_000_000).await;
    // A session-purpose key made through POST /api/keys is bound to the session.
    let (status, bound) = app
        .create_key(
            &first,
            &wallet.hex(),
            "43113",
            &json!({ "budgetLimit": "1000", "purpose": "session" }),
        )
        .await;
    assert_eq!(status, 201, "{bound}");
    let bound_token = bound["token"].as_str().unwrap().to_owned();
    let (status, api) = app
        .create_key(
            &first,
            &wallet.hex(),
            "43113",
            &json!({ "budgetLimit": "1000" }),
        )
        .await;
    assert_eq!(status, 201);
    let api_token = api["token"].as_str().unwrap().to_owned();

    let second = app.sign_in(&wallet).await;
    assert_error(
        &app.list_keys(&first, &wallet.hex()).await,
        401,
        "session_superseded",
    );
    assert_error(
        &app.list_keys(&bound_token, &wallet.hex()).await,
        401,
        "session_superseded",
    );
    // API keys have independent lives.
    assert_eq!(app.list_keys(&api_token, &wallet.hex()).await.0, 200);
    assert_eq!(app.list_keys(&second, &wallet.hex()).await.0, 200);
}

/// The session key's budget comes from budgetLimit and passes the funding check.
async fn session_budget_is_funded(backend: Backend) {
    let app = spawn_app(backend).await;
    let wallet = Wallet::random();
    let message = app.siwe_message(&wallet).await;
    let got = app
        .sign_in_with(&wallet, &message, json!({ "budgetLimit": "5000" }))
        .await;
    assert_error(&got, 402, "insufficient_funds");
    // The refused sign-in left its nonce unused: the same message works once funded.
    app.credit(&wallet, 5_000).await;
    let (status, body) = app
        .sign_in_with(&wallet, &message, json!({ "budgetLimit": "5000" }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["budgetLimit"], "5000");
    assert_eq!(body["purpose"], "session");
    assert_eq!(body["address"], wallet.hex());
}

async fn bad_key_requests_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let (wallet, session) = app.funded_wallet(10_000_000).await;
    let me = wallet.hex();
    let initial = app.key_count(&wallet).await;
    let mut cases = Cases::default();

    // Bodies that are not a JSON object, or too large.
    let raw = |body: String, content_type: &'static str| {
        app.client
            .post(app.url("/api/keys"))
            .bearer_auth(&session)
            .header("x-session-user-address", &me)
            .header("x-chain-id", "43113")
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(70_000));
    for (case, body, content_type, status, code) in [
        (
            "truncated JSON",
            "{\"budgetLimit\": ".to_owned(),
            "application/json",
            400,
            "invalid_json",
        ),
        (
            "a JSON array",
            "[1]".to_owned(),
            "application/json",
            400,
            "invalid_json",
        ),
        (
            "not JSON",
            "budgetLimit=1".to_owned(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            "over 64 KiB",
            huge,
            "application/json",
            413,
            "body_too_large",
        ),
    ] {
        let got = json_of(raw(body, content_type).await.unwrap()).await;
        cases.error(case, &got, status, code, None);
    }

    // Fields, each refused by name.
    let later = now_ms() - 1;
    for (case, body, param) in [
        ("budget zero", json!({"budgetLimit": 0}), "budgetLimit"),
        ("budget \"0\"", json!({"budgetLimit": "0"}), "budgetLimit"),
        ("budget negative", json!({"budgetLimit": -5}), "budgetLimit"),
        ("budget \"-5\"", json!({"budgetLimit": "-5"}), "budgetLimit"),
        (
            "budget fractional",
            json!({"budgetLimit": 1.5}),
            "budgetLimit",
        ),
        (
            "budget \"1.5\"",
            json!({"budgetLimit": "1.5"}),
            "budgetLimit",
        ),
        (
            "budget \"1e6\"",
            json!({"budgetLimit": "1e6"}),
            "budgetLimit",
        ),
        (
            "budget beyond u64",
            json!({"budgetLimit": "18446744073709551616"}),
            "budgetLimit",
        ),
        (
            "budget beyond the maximum",
            json!({"budgetLimit": 1_000_000_000_001u64}),
            "budgetLimit",
        ),
        (
            "budget a boolean",
            json!({"budgetLimit": true}),
            "budgetLimit",
        ),
        ("budget null", json!({"budgetLimit": null}), "budgetLimit"),
        ("budget missing", json!({}), "budgetLimit"),
        (
            "expiresAt past",
            json!({"budgetLimit": "1", "expiresAt": later}),
            "expiresAt",
        ),
        (
            "expiresAt text",
            json!({"budgetLimit": "1", "expiresAt": "soon"}),
            "expiresAt",
        ),
        (
            "purpose unknown",
            json!({"budgetLimit": "1", "purpose": "admin"}),
            "purpose",
        ),
        (
            "name too long",
            json!({"budgetLimit": "1", "name": "x".repeat(129)}),
            "name",
        ),
        (
            "name with a bidi override",
            json!({"budgetLimit": "1", "name": "a\u{202E}b"}),
            "name",
        ),
    ] {
        let got = app.create_key(&session, &me, "43113", &body).await;
        cases.error(case, &got, 422, "invalid_field", Some(param));
    }

    // Headers and whose key it is.
    let other = Wallet::random().hex();
    let one = json!({"budgetLimit": "1"});
    for (case, wallet, chain, body, status, code) in [
        (
            "chainId other than the header's",
            me.as_str(),
            "43113",
            json!({"budgetLimit": "1", "chainId": 1}),
            400,
            "chain_mismatch",
        ),
        (
            "wallet header malformed",
            "0x1234",
            "43113",
            one.clone(),
            400,
            "invalid_header",
        ),
        (
            "chain header not a number",
            me.as_str(),
            "abc",
            one.clone(),
            400,
            "invalid_header",
        ),
        (
            "chain not configured",
            me.as_str(),
            "1",
            one.clone(),
            400,
            "unsupported_chain",
        ),
        (
            "another wallet",
            other.as_str(),
            "43113",
            one.clone(),
            403,
            "wallet_mismatch",
        ),
    ] {
        let got = app.create_key(&session, wallet, chain, &body).await;
        cases.error(case, &got, status, code, None);
    }
    let missing = |header: &'static str| {
        let mut request = app
            .client
            .post(app.url("/api/keys"))
            .bearer_auth(&session)
            .json(&one);
        if header != "x-session-user-address" {
            request = request.header("x-session-user-address", &me);
        }
        if header != "x-chain-id" {
            request = request.header("x-chain-id", "43113");
        }
        request.send()
    };
    for header in ["x-session-user-address", "x-chain-id"] {
        let got = json_of(missing(header).await.unwrap()).await;
        cases.error(
            &format!("{header} missing"),
            &got,
            400,
            "missing_header",
            None,
        );
    }

    // An api key may not mint keys.
    let (_, api) = app.create_key(&session, &me, "43113", &one).await;
    let api_token = api["token"].as_str().unwrap();
    let got = app.create_key(api_token, &me, "43113", &one).await;
    cases.error(
        "an api key minting a key",
        &got,
        403,
        "session_key_required",
        None,
    );
    cases.finish();

    assert_eq!(
        app.key_count(&wallet).await,
        initial + 1,
        "bad requests created no key (only the api key made on purpose)"
    );
}

async fn bad_tokens_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (wallet, session) = app.funded_wallet(1_000_000).await;
    let me = wallet.hex();

    // Missing, garbage, tampered, foreign-signed: each refused, by name.
    let mut cases = Cases::default();
    let missing = json_of(
        app.client
            .get(app.url("/api/keys"))
            .header("x-session-user-address", &me)
            .send()
            .await
            .unwrap(),
    )
    .await;
    cases.error("no token", &missing, 401, "missing_token", None);
    let mut tampered = session.clone().into_bytes();
    let i = tampered.len() - 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let foreign =
        tollgate::auth::token::TokenSigner::new(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
    let forged = foreign.issue(&tollgate::auth::token::Claims {
        key_id: ledger::KeyId::generate(),
        wallet: wallet.address,
        chain_id: ledger::ChainId(CHAIN),
        purpose: ledger::model::Purpose::Session,
        session_id: None,
        expires_at_ms: now_ms() + 60_000,
    });
    for (case, token) in [
        ("garbage", "garbage"),
        ("a compose- prefix on garbage", "compose-abc.def"),
        ("a tampered signature", tampered.as_str()),
        ("signed by another server", forged.as_str()),
    ] {
        let got = app.list_keys(token, &me).await;
        cases.error(case, &got, 401, "invalid_token", None);
    }
    cases.finish();

    // Expired.
    let (status, short) = app
        .create_key(
            &session,
            &me,
            "43113",
            &json!({ "budgetLimit": "1", "expiresAt": now_ms() + 1_200 }),
        )
        .await;
    assert_eq!(status, 201, "{short}");
    let short_token = short["token"].as_str().unwrap();
    let expired = common::eventually(std::time::Duration::from_secs(5), || async {
        app.list_keys(short_token, &me).await.0 == 401
    })
    .await;
    assert!(expired, "the key must expire");
    assert_error(&app.list_keys(short_token, &me).await, 401, "key_expired");
    assert_eq!(
        app.get_key(&session, short["keyId"].as_str().unwrap())
            .await
            .1["status"],
        "expired"
    );

    // Another wallet's key: readable by neither get nor revoke.
    let other = Wallet::random();
    let other_session = app.sign_in(&other).await;
    let (_, mine) = app
        .create_key(&session, &me, "43113", &json!({ "budgetLimit": "1" }))
        .await;
    let mine_id = mine["keyId"].as_str().unwrap();
    let mut cases = Cases::default();
    let got = app.get_key(&other_session, mine_id).await;
    cases.error(
        "another wallet reads my key",
        &got,
        403,
        "wallet_mismatch",
        None,
    );
    let got = app.revoke_key(&other_session, mine_id).await;
    cases.error(
        "another wallet revokes my key",
        &got,
        403,
        "wallet_mismatch",
        None,
    );
    let got = app.list_keys(&other_session, &me).await;
    cases.error(
        "another wallet lists my keys",
        &got,
        403,
        "wallet_mismatch",
        None,
    );
    let got = app.get_key(&session, "does-not-exist").await;
    cases.error("an unknown id", &got, 404, "key_not_found", None);
    let got = app.get_key(&session, "bad%20id").await;
    cases.error("a malformed id", &got, 404, "key_not_found", None);
    cases.finish();
    assert_eq!(
        app.get_key(&session, mine_id).await.1["status"],
        "active",
        "the other wallet changed nothing"
    );
    // An api key may revoke itself but not a sibling.
    let (_, sibling) = app
        .create_key(&session, &me, "43113", &json!({ "budgetLimit": "1" }))
        .await;
    let mine_token = mine["token"].as_str().unwrap();
    assert_error(
        &app.revoke_key(mine_token, sibling["keyId"].as_str().unwrap())
            .await,
        403,
        "session_key_required",
    );
    assert_eq!(app.revoke_key(mine_token, mine_id).await.0, 200);
    assert_error(&app.get_key(mine_token, mine_id).await, 401, "key_revoked");
}

async fn bad_sign_ins_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let wallet = Wallet::random();
    let sign =
        |text: &str| tollgate::auth::eth::sign_personal(&wallet.key, text.as_bytes()).unwrap();

    // Replayed nonce.
    let message = app.siwe_message(&wallet).await;
    assert_eq!(app.sign_in_with(&wallet, &message, json!({})).await.0, 201);
    assert_error(
        &app.sign_in_with(&wallet, &message, json!({})).await,
        401,
        "invalid_nonce",
    );
    // A nonce the server never issued.
    let mut invented = app.siwe_message(&wallet).await;
    invented.nonce = "abcdefgh12345678".into();
    assert_error(
        &app.sign_in_with(&wallet, &invented, json!({})).await,
        401,
        "invalid_nonce",
    );

    // Wrong signer: signed by another wallet.
    let message = app.siwe_message(&wallet).await;
    let impostor = Wallet::random();
    let text = message.render();
    let forged = tollgate::auth::eth::sign_personal(&impostor.key, text.as_bytes()).unwrap();
    assert_error(
        &app.post_session(&json!({ "message": text, "signature": forged }))
            .await,
        401,
        "invalid_signature",
    );
    // The failed attempts did not burn the nonce.
    assert_eq!(
        app.post_session(&json!({ "message": text, "signature": sign(&text) }))
            .await
            .0,
        201
    );

    // Messages the server must refuse, each by what is wrong with it.
    let mut cases = Cases::default();
    type Tamper = fn(&mut tollgate::auth::siwe::SiweMessage);
    let refusals: [(&str, Tamper, &str); 7] = [
        (
            "another domain",
            |m| m.domain = "evil.example".into(),
            "domain_mismatch",
        ),
        (
            "a URI elsewhere",
            |m| m.uri = "https://evil.example/".into(),
            "uri_mismatch",
        ),
        (
            "an unconfigured chain",
            |m| m.chain_id = ledger::ChainId(1),
            "unsupported_chain",
        ),
        (
            "issued an hour ago",
            |m| m.issued_at_ms = now_ms() - 3_600_000,
            "message_expired",
        ),
        (
            "issued in an hour",
            |m| m.issued_at_ms = now_ms() + 3_600_000,
            "message_expired",
        ),
        (
            "expired",
            |m| m.expiration_time_ms = Some(now_ms() - 1),
            "message_expired",
        ),
        (
            "not before in an hour",
            |m| m.not_before_ms = Some(now_ms() + 3_600_000),
            "message_expired",
        ),
    ];
    for (case, tamper, code) in refusals {
        let mut m = app.siwe_message(&wallet).await;
        tamper(&mut m);
        let got = app.sign_in_with(&wallet, &m, json!({})).await;
        cases.error(case, &got, 401, code, None);
    }

    // Malformed bodies, each refused by the field at fault.
    let text = app.siwe_message(&wallet).await.render();
    let signed = sign(&text);
    for (case, body, param) in [
        (
            "not a SIWE message",
            json!({"message": "hello", "signature": sign("hello")}),
            "message",
        ),
        (
            "a short signature",
            json!({"message": text, "signature": "0x1234"}),
            "signature",
        ),
        ("no message", json!({"signature": signed}), "message"),
        (
            "a negative budget",
            json!({"message": text, "signature": signed, "budgetLimit": -1}),
            "budgetLimit",
        ),
        (
            "expiresAt past",
            json!({"message": text, "signature": signed, "expiresAt": now_ms() - 5}),
            "expiresAt",
        ),
    ] {
        let got = app.post_session(&body).await;
        cases.error(case, &got, 422, "invalid_field", Some(param));
    }
    cases.finish();

    // Only the two successful sign-ins made keys; the latest session is the active one.
    assert_eq!(app.key_count(&wallet).await, 2);
}

/// Configured SIWE domains replace the loopback defaults; the message's
/// domain and its URI must both be on one.
async fn configured_siwe_domain_is_enforced(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[(
            "TOLLGATE__AUTH__SIWE_DOMAINS",
            "app.tollgate.test, www.tollgate.test",
        )],
    )
    .await;
    let wallet = Wallet::random();
    let message = app.siwe_message(&wallet).await;
    assert_error(
        &app.sign_in_with(&wallet, &message, json!({})).await,
        401,
        "domain_mismatch",
    );
    let mut message = app.siwe_message(&wallet).await;
    message.domain = "app.tollgate.test".into();
    assert_error(
        &app.sign_in_with(&wallet, &message, json!({})).await,
        401,
        "uri_mismatch",
    );
    let mut message = app.siwe_message(&wallet).await;
    message.domain = "app.tollgate.test".into();
    message.uri = "https://www.tollgate.test/login".into();
    assert_eq!(app.sign_in_with(&wallet, &message, json!({})).await.0, 201);
}

async fn unknown_routes_and_health(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_error(
        &json_of(app.client.get(app.url("/nope")).send().await.unwrap()).await,
        404,
        "route_not_found",
    );
    let (status, body) = json_of(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status.as_u16(), body["store"].as_str()), (200, Some("ok")));
    assert_eq!(
        json_of(app.client.get(app.url("/healthz")).send().await.unwrap())
            .await
            .0,
        200
    );
}

both_stores!(
    key_lifecycle,
    funding_check_answers_402_with_details,
    cli_credit_is_seen_without_restart,
    sessions_supersede_older_sessions,
    session_budget_is_funded,
    bad_key_requests_change_nothing,
    bad_tokens_are_refused,
    bad_sign_ins_are_refused,
    configured_siwe_domain_is_enforced,
    unknown_routes_and_health,
);
