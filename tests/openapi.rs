//! The OpenAPI document (`GET /openapi.json`) against the running server:
//! schemathesis (pinned in `tests/requirements.txt`) generates requests for
//! every operation from the document and checks that none answers 5xx, and
//! that every answer's status, content type and body are the documented
//! ones. It runs once with a Compose session key and once with a Studio
//! admin key, so authenticated operations are reached past their 401; the
//! ledger must still add up afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;
use ledger::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The checks every answer must pass (schemathesis' names).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// Runs schemathesis against `app` with `Authorization: Bearer <token>`;
/// panics with its report when a check fails.
fn schemathesis(app: &TestApp, token: &str, operations: &str) {
    let output = Command::new("python3")
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())",
            "run",
            &app.url("/openapi.json"),
            "--checks",
            CHECKS,
            "--include-path-regex",
            operations,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--seed",
            "20261129",
            // One worker: hypothesis on CPython 3.11 can fail inside `ast`
            // when several threads describe strategies at once.
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its cache folder (.schemathesis) goes with the app's, not the clone.
        .current_dir(app.file("."))
        .output()
        .expect("python3 runs (scripts/test installs schemathesis from tests/requirements.txt)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !report.contains("No module named"),
        "schemathesis is not installed: run scripts/test (it pip-installs tests/requirements.txt)\n{report}"
    );
    assert!(output.status.success(), "schemathesis failed:\n{report}");
    // It ran operations, not nothing.
    assert!(report.contains("passed"), "{report}");
}

#[tokio::test]
async fn the_document_is_served_and_every_operation_keeps_to_it() {
    let (app, _mock) = spawn_paid_app(Backend::Sqlite).await;
    let response = reqwest::get(app.url("/openapi.json")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(document["paths"]["/external/v1/chat/completions"]["post"].is_object());

    // A paying key with calls behind it, so that list and charge views have
    // something to show.
    let paid = app.paid_key(5_000_000).await;
    for _ in 0..2 {
        let response = app
            .chat(
                &paid.token,
                &json!({ "model": "echo", "messages": [{ "role": "user", "content": "hi" }] }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let studio = app.bootstrap_studio("fuzz");
    let admin = studio["apikey"]["value"].as_str().unwrap().to_owned();

    // The Compose surface, the paid path and operations with the session key;
    // the Studio surface with the Studio admin key.
    schemathesis(
        &app,
        &paid.session,
        "^/(api/(sessions|keys)|external|healthz|readyz|metrics|openapi)",
    );
    schemathesis(&app, &admin, "^/(api/v1/|\\.well-known|external/v1/models)");

    // Whatever the fuzzer did, every key's budgetUsed is still the sum of
    // its charges.
    let (used, charged) = app.spent(&paid.key_id).await;
    assert_eq!(used, charged);
}
