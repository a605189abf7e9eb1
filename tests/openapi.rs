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
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The checks every answer must pass (schemathesis' names).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// One answer the fuzzer got: the request's method and path (no query), and
/// the status.
#[derive(Debug)]
struct Answer {
    method: String,
    path: String,
    status: u16,
}

/// Runs schemathesis against `app` with `Authorization: Bearer <token>` on
/// the operations whose path matches `operations`, with the environment
/// `env` (for `tests/fuzz/guard_hooks.py`); panics with its report when a
/// check fails, else returns every answer it got (from its HAR report).
fn schemathesis(app: &TestApp, token: &str, operations: &str, env: &[(&str, &str)]) -> Vec<Answer> {
    let har = app.file("fuzz.har");
    let hooks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/guard_hooks.py");
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
            "--report",
            "har",
            "--report-har-path",
            &har.display().to_string(),
            "--no-color",
        ])
        .env("SCHEMATHESIS_HOOKS", hooks)
        .envs(env.iter().copied())
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
    answers(
        app,
        &std::fs::read(&har).expect("schemathesis wrote its HAR report"),
    )
}

/// The answers in a HAR report of requests to `app`.
fn answers(app: &TestApp, har: &[u8]) -> Vec<Answer> {
    let har: Value = serde_json::from_slice(har).unwrap();
    let base = app.url("");
    har["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let url = entry["request"]["url"].as_str().unwrap();
            let path = url.strip_prefix(&base).unwrap_or(url);
            Answer {
                method: entry["request"]["method"].as_str().unwrap().to_owned(),
                path: path.split('?').next().unwrap().to_owned(),
                status: u16::try_from(entry["response"]["status"].as_u64().unwrap()).unwrap(),
            }
        })
        .collect()
}

/// Whether `path` is an instance of the template `template` (`{x}` matches
/// one non-empty segment).
fn instance_of(path: &str, template: &str) -> bool {
    let (path, template): (Vec<_>, Vec<_>) =
        (path.split('/').collect(), template.split('/').collect());
    path.len() == template.len()
        && path.iter().zip(&template).all(|(p, t)| {
            if t.starts_with('{') {
                !p.is_empty()
            } else {
                p == t
            }
        })
}

/// Asserts that every one of `operations` (method, path template) got at
/// least one success: the fuzzer reached past authentication to the handler.
fn each_succeeded(answers: &[Answer], operations: &[(&str, &str)]) {
    for (method, template) in operations {
        let mine: Vec<_> = answers
            .iter()
            .filter(|a| a.method == *method && instance_of(&a.path, template))
            .collect();
        assert!(
            mine.iter().any(|a| (200..300).contains(&a.status)),
            "{method} {template}: no success in {} answers: {:?}",
            mine.len(),
            mine.iter().map(|a| a.status).collect::<Vec<_>>()
        );
    }
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
    let wallet = Wallet::random();
    let studio = app.bootstrap_studio_with(&[
        "--account",
        "fuzz",
        "--project",
        "main",
        "--wallet",
        &wallet.hex(),
    ]);
    app.credit(&wallet, 1_000_000).await;
    let project = studio["project"]["id"].as_str().unwrap().to_owned();
    let admin_id = studio["apikey"]["id"].as_str().unwrap().to_owned();
    let admin = studio["apikey"]["value"].as_str().unwrap().to_owned();
    // A second admin key of the project, for the fuzzer to disable, demote
    // and delete in place of its own (tests/fuzz/guard_hooks.py).
    let (status, decoy) = app
        .studio(
            Method::POST,
            "/apikeys",
            &admin,
            Some(&json!({ "name": "decoy", "type": "sk", "role": "admin" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let decoy_id = decoy["id"].as_str().unwrap().to_owned();
    // A budget on the project, so that reading it has something to show.
    let (status, _) = app
        .studio(
            Method::PUT,
            &format!("/projects/{project}/budget"),
            &admin,
            Some(&json!({ "budgetLimit": 1_000 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // The Compose surface, the paid path and operations with the session key.
    schemathesis(
        &app,
        &paid.session,
        "^/(api/(sessions|keys)|external|healthz|readyz|metrics|openapi)",
        &[],
    );
    // The Studio surface with the Studio admin key, which the run keeps: so
    // every Studio operation is fuzzed past authentication, and each one
    // answers with a success at least once.
    let answers = schemathesis(
        &app,
        &admin,
        "^/(api/v1/|\\.well-known|external/v1/models)",
        &[
            ("TOLLGATE_FUZZ_GUARDED_IDS", &admin_id),
            ("TOLLGATE_FUZZ_DECOY_ID", &decoy_id),
            ("TOLLGATE_FUZZ_PROJECT_ID", &project),
        ],
    );
    each_succeeded(
        &answers,
        &[
            ("GET", "/api/v1/apikeys"),
            ("POST", "/api/v1/apikeys"),
            ("GET", "/api/v1/apikeys/{id}"),
            ("PUT", "/api/v1/apikeys/{id}"),
            ("DELETE", "/api/v1/apikeys/{id}"),
            ("GET", "/api/v1/apikeys/{id}/token"),
            ("GET", "/api/v1/apikeys/pk"),
            ("GET", "/api/v1/projects/{id}/budget"),
            ("PUT", "/api/v1/projects/{id}/budget"),
            ("GET", "/.well-known/jwks.json"),
        ],
    );
    let refused = answers.iter().filter(|a| a.status == 401).count();
    eprintln!("studio: {} answers, {refused} of them 401", answers.len());
    // The key the run used still opens the door. A fresh client: the
    // fuzzer's run blocked this runtime, so the pooled connection's close
    // by the server's keep-alive timer was never read.
    let after = reqwest::Client::new()
        .get(app.url("/api/v1/apikeys"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);

    // Whatever the fuzzer did, every key's budgetUsed is still the sum of
    // its charges.
    let (used, charged) = app.spent(&paid.key_id).await;
    assert_eq!(used, charged);
}
