//! Operating Tollgate (docs/operations.md): `/metrics`, `/readyz` naming
//! what is not ready, refused calls that do not flood the log, the start-up
//! summary and its warnings, and errors said once with their root cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::process::{spawn_serving_with, spawn_serving_with_config, tollgate};
use common::*;
use ledger::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn metrics_count_requests_by_route_402s_and_ledger_state() {
    let refresh = [("TOLLGATE__HTTP__METRICS_REFRESH_MS", "100")];
    let (app, _mock) = spawn_paid_app_with(Backend::Sqlite, &refresh).await;
    let paid = app.paid_key(1_000).await;
    let response = app
        .chat(
            &paid.token,
            &json!({ "model": "echo", "messages": [{ "role": "user", "content": "count me" }] }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _) = app
        .create_key(
            &paid.session,
            &paid.wallet.hex(),
            &CHAIN.to_string(),
            &json!({ "budgetLimit": 999_000_000_000u64 }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    let (status, _) = app.get_key(&paid.session, &paid.key_id).await;
    assert_eq!(status, StatusCode::OK);
    // The store's gauges are read every 100 ms in the background.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let text = app.metrics_text().await;
    for needle in [
        r#"tollgate_http_requests_total{route="/external/v1/chat/completions",status="200"}"#,
        r#"tollgate_http_requests_total{route="/api/keys/{key_id}",status="200"}"#,
        r#"tollgate_http_request_duration_seconds_bucket{route="/external/v1/chat/completions""#,
        r#"tollgate_payment_required_total{code="insufficient_funds"}"#,
        "tollgate_key_actors_live",
        r#"tollgate_charges{status="#,
        "tollgate_holds_expired_total",
        "tollgate_leases_taken_total",
        "tollgate_leases_returned_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // The paid call opened a hold and committed it.
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert!(value("tollgate_holds_opened_total ") >= 1.0);
    assert!(value(r#"tollgate_holds_closed_total{how="committed"} "#) >= 1.0);
    // Routes are patterns: no key id makes a series of its own.
    assert!(!text.contains(&paid.key_id), "a key id leaked into a label");
}

/// A series' value in a Prometheus text.
fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// `GET /metrics`, with `token` as bearer when given: status and text.
async fn scrape(app: &TestApp, token: Option<&str>) -> (StatusCode, String) {
    let mut request = app.client.get(app.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// `scrapes` scrapes and `probes` readiness probes, all at once.
async fn scrapes_and_probes(
    app: &TestApp,
    token: &str,
    scrapes: usize,
    probes: usize,
) -> (Vec<(StatusCode, String)>, Vec<StatusCode>) {
    let scrapes = (0..scrapes).map(|_| scrape(app, Some(token)));
    let probes = (0..probes).map(|_| async {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        response.status()
    });
    tokio::join!(
        futures_util::future::join_all(scrapes),
        futures_util::future::join_all(probes)
    )
}

/// `/metrics` behind `http.metrics_token`: 401 (JSON error) without it or
/// with another, and a scrape never reads the store — the store's gauges
/// are read once per `http.metrics_refresh_ms` in the background, so 64
/// concurrent scrapes (with readiness probes among them, all ready) add at
/// most the reads that interval allows, and the gauges still follow the
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_from_a_background_read_behind_a_token() {
    const TOKEN: &str = "metrics-token-0123456789";
    let (app, _mock) = spawn_paid_app_with(
        Backend::Postgres,
        &[
            ("TOLLGATE__HTTP__METRICS_TOKEN", TOKEN),
            ("TOLLGATE__HTTP__METRICS_REFRESH_MS", "500"),
        ],
    )
    .await;
    let scrape = |token: Option<&'static str>| scrape(&app, token);
    for token in [None, Some("metrics-token-0123456780"), Some("")] {
        let (status, text) = scrape(token).await;
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_error(&(status, body), 401, "invalid_metrics_token");
        assert!(!text.contains(TOKEN), "the token is never shown");
    }
    let reads = |text: &str| series_value(text, "tollgate_store_gauge_reads_total ");
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let (status, text) = scrape(Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK);
        match reads(&text) {
            Some(n) if n >= 3.0 => break n,
            _ => assert!(Instant::now() < deadline, "the gauges are read: {text}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = Instant::now();
    let (scraped, probed) = scrapes_and_probes(&app, TOKEN, 64, 16).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        probed.iter().all(|status| *status == StatusCode::OK),
        "{probed:?}"
    );
    let after = scraped
        .iter()
        .map(|(status, text)| {
            assert_eq!(*status, StatusCode::OK);
            reads(text).unwrap()
        })
        .fold(before, f64::max);
    assert!(
        after - before <= 2.0 + elapsed / 0.5,
        "64 scrapes in {elapsed:.2} s read the store {} times",
        after - before
    );
    // The gauges follow the store on the interval.
    let paid = app.paid_key(1_000).await;
    let response = app
        .chat(
            &paid.token,
            &json!({ "model": "echo", "messages": [{ "role": "user", "content": "count me" }] }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = scrape(Some(TOKEN)).await;
        if series_value(&text, r#"tollgate_charges{status="pending"} "#).is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the charge reaches the gauge: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `http.admin_bind`: `/metrics` moves to a listener of its own (with
/// `/readyz` and `/healthz`) and is no route on the paid path's listener.
#[tokio::test]
async fn metrics_can_live_on_an_admin_listener_of_their_own() {
    let app = spawn_app_with(
        Backend::Sqlite,
        &[("TOLLGATE__HTTP__ADMIN_BIND", "127.0.0.1:0")],
    )
    .await;
    let (status, body) = json_of(app.client.get(app.url("/metrics")).send().await.unwrap()).await;
    assert_error(&(status, body), 404, "route_not_found");
    let admin = format!(
        "http://127.0.0.1:{}",
        app.admin_port.expect("an admin listener")
    );
    let response = app
        .client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("tollgate_"));
    for path in ["/readyz", "/healthz"] {
        let response = app
            .client
            .get(format!("{admin}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn readyz_names_what_is_not_ready() {
    let (app, _mock) = spawn_paid_app(Backend::Sqlite).await;
    let (status, body) = json_of(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "status": "ready", "store": "ok" }));

    // The evm mode with a chain nobody answers for.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rpc = format!("http://127.0.0.1:{closed}");
    let chain = |field: &str| format!("TOLLGATE__CHAINS__{CHAIN}__{field}");
    let env = [
        ("TOLLGATE__SETTLEMENT__MODE".to_owned(), "evm".to_owned()),
        (chain("RPC_URL"), rpc),
        (
            chain("USDC"),
            "0x5fbdb2315678afecb367f032d93f642f64180aa3".into(),
        ),
        (
            chain("SETTLEMENT_CONTRACT"),
            "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512".into(),
        ),
        (
            chain("TREASURY"),
            "0xa0ee7a142d267c1f36714e4a8f75612f20a79720".into(),
        ),
        (
            chain("OPERATOR_KEY"),
            workers::evm::devnet::ANVIL_KEY_0.into(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = spawn_app_with(Backend::Sqlite, &env).await;
    let started = Instant::now();
    let (status, body) = json_of(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["store"], "ok");
    assert_ne!(body["chains"][CHAIN.to_string()], "ok", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "each check is bounded"
    );
}

/// The JSON log lines of `path` at WARN or above.
fn loud_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| matches!(line["level"].as_str(), Some("WARN" | "ERROR")))
        .collect()
}

#[tokio::test]
async fn refused_calls_do_not_flood_the_log_and_start_up_says_what_it_runs() {
    let dir = TempDir(
        std::env::temp_dir().join(format!("tollgate-ops-{}", uuid::Uuid::now_v7().simple())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let (_server, port) = spawn_serving_with(
        &dir.0,
        "127.0.0.1:0",
        "serve.log",
        &[
            ("TOLLGATE__LOG__FILTER", "info,tollgate::telemetry=debug"),
            ("TOLLGATE_STORE_URL", "sqlite://typo.db"),
        ],
    );
    let log = dir.0.join("serve.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["fields"]["message"] == "tollgate serving")
        .expect("a start-up summary");
    let store = serving["fields"]["store"].as_str().unwrap();
    assert!(store.starts_with("sqlite:///"), "an absolute path: {store}");
    assert_eq!(serving["fields"]["settlement"], "Ledger");
    assert!(serving["fields"]["models"]
        .as_str()
        .unwrap()
        .contains("echo"));
    assert!(serving["fields"]["queue"]
        .as_str()
        .unwrap()
        .starts_with("memory://"));
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["variable"] == "TOLLGATE_STORE_URL"),
        "a single-underscore variable is named: {text}"
    );

    let before = loud_lines(&log).len();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let secret = "compose-not-a-real-token-but-secretish-0123456789";
    for _ in 0..25 {
        let paid = client
            .post(format!("{base}/external/v1/chat/completions"))
            .bearer_auth(secret)
            .json(&json!({ "model": "echo", "messages": [{ "role": "user", "content": "x" }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(paid.status(), StatusCode::UNAUTHORIZED);
        let keys = client
            .get(format!("{base}/api/keys/nope"))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        assert_eq!(keys.status(), StatusCode::UNAUTHORIZED);
        let missing = client
            .get(format!("{base}/no/such/route"))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
    // A caller's well-formed request id rides on its request's log lines.
    let tagged = client
        .get(format!("{base}/api/keys/nope"))
        .header("x-request-id", "client-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(tagged.status(), StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["span"]["client_request_id"] == "client-req-42"),
        "no line carries the client's request id: {text}"
    );
    let after = loud_lines(&log);
    assert_eq!(
        after.len(),
        before,
        "refused calls logged at WARN/ERROR: {:?}",
        &after[before..]
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(secret), "a token reached the log");
}

#[test]
fn errors_are_said_once_with_their_root_cause() {
    // --config naming a folder.
    let output = tollgate()
        .args(["--config", "/tmp", "migrate"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/tmp is a folder"), "{stderr}");
    assert_eq!(stderr.matches("is a folder").count(), 1, "{stderr}");

    // A PostgreSQL nobody listens for: said promptly, with the OS's cause, once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let output = tollgate()
        .arg("migrate")
        .env(
            "TOLLGATE__STORE__URL",
            format!("postgres://postgres@127.0.0.1:{closed}/test"),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = stderr
        .lines()
        .filter(|l| l.starts_with("tollgate:"))
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].to_lowercase().contains("refused"), "{stderr}");
    assert_eq!(
        said[0].matches("refused").count(),
        1,
        "the cause said once: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn studio_bootstrap_refuses_an_account_name_that_exists_or_adds_a_project_when_asked() {
    let app = spawn_app(Backend::Sqlite).await;
    let first = app.bootstrap_studio("acme");
    let output = tollgate()
        .args([
            "studio",
            "bootstrap",
            "--account",
            "acme",
            "--project",
            "second",
        ])
        .envs(app.shared_env())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("\"acme\" exists already").count(),
        1,
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no key printed");
    // A different name still works.
    app.bootstrap_studio("acme-two");

    // Asked, it adds a project (and its first admin key) to the account.
    let second =
        app.bootstrap_studio_with(&["--account", "acme", "--existing", "--project", "second"]);
    assert_eq!(second["account"]["id"], first["account"]["id"]);
    assert_eq!(second["project"]["name"], "second");
    assert_ne!(second["project"]["id"], first["project"]["id"]);
    // Each admin key sees its own project's keys only.
    for (boot, other) in [(&second, &first), (&first, &second)] {
        let response = app
            .client
            .get(app.url("/api/v1/apikeys"))
            .bearer_auth(boot["apikey"]["value"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let (status, keys) = json_of(response).await;
        assert_eq!(status, StatusCode::OK, "{keys}");
        let ids: Vec<&Value> = keys.as_array().unwrap().iter().map(|k| &k["id"]).collect();
        assert_eq!(ids, [&boot["apikey"]["id"]]);
        assert!(!ids.contains(&&other["apikey"]["id"]));
    }
    // Refused, each said once: a project name the account has, an account
    // that does not exist, a wallet for an account that has its own.
    for (args, said) in [
        (
            vec!["--account", "acme", "--existing", "--project", "second"],
            "already has a project named \"second\"",
        ),
        (
            vec!["--account", "nobody", "--existing", "--project", "p"],
            "no Studio account is named \"nobody\"",
        ),
        (
            vec![
                "--account",
                "acme",
                "--existing",
                "--project",
                "p",
                "--wallet",
                "0x0000000000000000000000000000000000000001",
            ],
            "cannot be used with",
        ),
    ] {
        let output = tollgate()
            .args(["studio", "bootstrap"])
            .args(&args)
            .envs(app.shared_env())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert_eq!(stderr.matches(said).count(), 1, "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "no key printed");
    }
}

#[test]
fn a_corrupt_sqlite_file_is_said_once() {
    let dir = std::env::temp_dir().join(format!(
        "tollgate-corrupt-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ledger.db");
    std::fs::write(&file, vec![0x5a; 8192]).unwrap();
    let output = tollgate()
        .arg("migrate")
        .env(
            "TOLLGATE__STORE__URL",
            format!("sqlite://{}", file.display()),
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("tollgate:"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].contains("not a database"), "{stderr}");
    assert_eq!(said[0].matches("not a database").count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn siwe_sign_takes_its_domain_from_the_settings_and_checks_its_arguments() {
    let sign = |args: &[&str], env: &[(&str, &str)]| {
        tollgate()
            .args(["siwe-sign", "--nonce", "abcdefgh12"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    for (args, needle) in [
        (["--domain", "http://127.0.0.1:8080"], "no scheme"),
        (["--budget", "1.5"], "whole number"),
        (["--budget", "lots"], "whole number"),
    ] {
        let output = sign(&args, &[]);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let output = sign(&[], &[("TOLLGATE__AUTH__SIWE_DOMAINS", "app.example.com")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("app.example.com wants you to sign in"),
        "{message}"
    );
    assert!(message.contains("URI: http://app.example.com"), "{message}");
    let output = sign(&[], &[("TOLLGATE__HTTP__BIND", "127.0.0.1:9999")]);
    let body: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:9999 wants"),
        "{body}"
    );
}

#[test]
fn only_a_process_that_settles_needs_the_operator_key() {
    let chain = |field: &str| format!("TOLLGATE__CHAINS__{CHAIN}__{field}");
    let evm = [
        ("TOLLGATE__SETTLEMENT__MODE".to_owned(), "evm".to_owned()),
        (chain("RPC_URL"), "http://127.0.0.1:1".to_owned()),
        (
            chain("USDC"),
            "0x5fbdb2315678afecb367f032d93f642f64180aa3".to_owned(),
        ),
        (
            chain("SETTLEMENT_CONTRACT"),
            "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512".to_owned(),
        ),
        (
            chain("TREASURY"),
            "0xa0ee7a142d267c1f36714e4a8f75612f20a79720".to_owned(),
        ),
    ];
    let dir = std::env::temp_dir().join(format!(
        "tollgate-keyless-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // Embedded `serve` settles itself: without the key it refuses to start,
    // naming the setting.
    let output = tollgate()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .current_dir(&dir)
        .envs(evm.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chains.43113.operator_key"), "{stderr}");
    // A read-only use of the chain settings (reconcile's ledger side runs
    // first, then each chain) loads them without a key.
    let settings = tollgate::settings::Settings::load_with_env(None, evm.iter().cloned()).unwrap();
    let chains = settings.evm_chains().unwrap();
    assert_eq!(chains[0].operator_key, None);
    let client = workers::evm::ChainClient::new(chains[0].clone()).unwrap();
    assert!(!client.can_sign());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A paid call's id follows it: its answer's `x-request-id` is the
/// `request_id` of its log lines (which also carry the caller's own
/// `x-request-id` as `client_request_id`), and both travel with its queue
/// event into its charge and on to the charge's settlement batch. A spoofed
/// id (a line break, too long) is not carried anywhere.
#[tokio::test]
async fn a_request_id_follows_a_paid_call_from_its_log_through_the_queue_to_its_batch() {
    let (url, name) = (amqp_url(), queue_name());
    let queue_env = [
        ("TOLLGATE__QUEUE__URL", url.as_str()),
        ("TOLLGATE__QUEUE__CALLS_QUEUE", name.as_str()),
        ("TOLLGATE__SETTLEMENT__INTERVAL_MS", "200"),
    ];
    // This app's in-process workers record and settle what the gateway
    // below publishes.
    let (app, _mock) = spawn_paid_app_with(Backend::Postgres, &queue_env).await;
    let key = app.paid_key(1_000_000).await;
    let (_gateway, port, dir) = gateway_beside(
        &app,
        &[
            ("TOLLGATE__WORKERS__IN_PROCESS", "false"),
            queue_env[0],
            queue_env[1],
        ],
    );
    let client = reqwest::Client::new();
    let call = |client_id: &'static str| {
        client
            .post(format!("http://127.0.0.1:{port}/external/v1/chat/completions"))
            .bearer_auth(&key.token)
            .header("x-request-id", client_id)
            .json(&json!({ "model": "echo", "messages": [{ "role": "user", "content": "trace me" }] }))
            .send()
    };
    let traced = call("client-7f3a:retry.2").await.unwrap();
    assert_eq!(traced.status(), StatusCode::OK);
    let ours = traced.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let spoofed = call("forged id {\"level\":\"ERROR\"}").await.unwrap();
    assert_eq!(spoofed.status(), StatusCode::OK);
    let spoofed_ours = spoofed.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    // Through the queue into the charges, then into a settlement batch.
    let deadline = Instant::now() + Duration::from_secs(20);
    let charges = loop {
        let response = app
            .client
            .get(app.url(&format!("/api/keys/{}/charges", key.key_id)))
            .bearer_auth(&key.session)
            .send()
            .await
            .unwrap();
        let (_, body) = json_of(response).await;
        let charges = body["charges"].as_array().cloned().unwrap_or_default();
        if charges.len() == 2 && charges.iter().all(|c| c["status"] == "settled") {
            break charges;
        }
        assert!(
            Instant::now() < deadline,
            "not recorded and settled: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_id = |id: &str| {
        charges
            .iter()
            .find(|c| c["requestId"] == id)
            .cloned()
            .unwrap()
    };
    let charge = by_id(&ours);
    assert_eq!(charge["clientRequestId"], "client-7f3a:retry.2");
    assert!(
        charge["batchId"].as_str().is_some_and(|b| !b.is_empty()),
        "{charge}"
    );
    assert_eq!(by_id(&spoofed_ours)["clientRequestId"], Value::Null);

    // The gateway's log lines of the call carry both ids.
    let log = std::fs::read_to_string(dir.0.join("gateway.log")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &Value| line["span"]["request_id"] == ours.as_str())
        .collect();
    assert!(!lines.is_empty(), "no log line carries {ours}:\n{log}");
    assert!(lines
        .iter()
        .all(|line| line["span"]["client_request_id"] == "client-7f3a:retry.2"));
    assert!(!log.contains("forged"), "a spoofed id reached the log");
    delete_queue(&name).await;
}

/// The binary, serving on `app`'s store and keys with `env` (JSON logs at
/// DEBUG in its folder's `gateway.log`).
fn gateway_beside(app: &TestApp, env: &[(&str, &str)]) -> (common::process::Child, u16, TempDir) {
    let dir = TempDir(std::env::temp_dir().join(format!(
        "tollgate-gateway-{}",
        uuid::Uuid::now_v7().simple()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let shared = app.shared_env();
    let mut all: Vec<(&str, &str)> = shared.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(env);
    let (child, port) = spawn_serving_with(&dir.0, "127.0.0.1:0", "gateway.log", &all);
    (child, port, dir)
}

/// An upstream that cannot be reached answers 502 and charges nothing; the
/// log says which model, which host and the OS's cause, once, at ERROR —
/// and never the upstream's API key or the caller's token.
#[tokio::test]
async fn an_unreachable_upstream_is_logged_with_its_model_host_and_os_cause() {
    let app = spawn_app(Backend::Postgres).await;
    let (wallet, session) = app.funded_wallet(2_000_000).await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let upstream = format!("http://127.0.0.1:{port}/v1");
    let model = |field: &str| format!("TOLLGATE__MODELS__DOWNSTAIRS__{field}");
    let settings = [
        (model("UPSTREAM"), upstream.clone()),
        (model("UPSTREAM_MODEL"), "gpt-downstairs".to_owned()),
        (model("API_KEY"), UPSTREAM_KEY.to_owned()),
        (model("PRICE_VERSION"), "test-1".to_owned()),
        (model("INPUT_ATOMIC_PER_MILLION"), "1000000".to_owned()),
        (model("OUTPUT_ATOMIC_PER_MILLION"), "1000000".to_owned()),
        (model("MAX_OUTPUT_TOKENS"), "100".to_owned()),
    ];
    let env: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (_gateway, gateway_port, dir) = gateway_beside(&app, &env);
    let (status, key) = app
        .create_key(
            &session,
            &wallet.hex(),
            &CHAIN.to_string(),
            &json!({ "budgetLimit": 1_000_000 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let token = key["token"].as_str().unwrap();
    let response = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{gateway_port}/external/v1/chat/completions"
        ))
        .bearer_auth(token)
        .json(
            &json!({ "model": "downstairs", "messages": [{ "role": "user", "content": "hello" }] }),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_error(&(status, body), 502, "upstream_error");
    let key_id = key["keyId"].as_str().unwrap();
    assert_eq!(app.spent(key_id).await, (0, 0), "nothing charged");

    let log = std::fs::read_to_string(dir.0.join("gateway.log")).unwrap();
    let errors: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("\"ERROR\""))
        .collect();
    assert_eq!(errors.len(), 1, "one ERROR line:\n{log}");
    let line = errors[0];
    assert!(
        line.contains(&format!("model gpt-downstairs at 127.0.0.1:{port}")),
        "{line}"
    );
    assert!(
        line.contains("Connection refused"),
        "the OS's cause: {line}"
    );
    assert!(
        !log.contains(UPSTREAM_KEY) && !log.contains(token),
        "a secret reached the log"
    );
}

/// Settings layer as documented: the built-in defaults, then a real
/// `--config` file, then `TOLLGATE__…` variables — each layer adds what it
/// names and overrides only that, seen through the running binary.
#[tokio::test]
async fn a_config_file_sits_between_the_defaults_and_the_environment() {
    let dir = TempDir(
        std::env::temp_dir().join(format!("tollgate-layers-{}", uuid::Uuid::now_v7().simple())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("tollgate.toml");
    std::fs::write(
        &file,
        r#"
[store]
url = "sqlite://from-file.db"

[models.filemodel]
upstream = "echo"
price_version = "from-file"
input_atomic_per_million = 1000000
output_atomic_per_million = 1000000
max_output_tokens = 77
"#,
    )
    .unwrap();
    let env = [
        ("TOLLGATE__STORE__URL", "sqlite://from-env.db"),
        ("TOLLGATE__MODELS__FILEMODEL__PRICE_VERSION", "from-env"),
        ("TOLLGATE__LOG__FILTER", "info"),
    ];
    let (_server, port) = spawn_serving_with_config(&dir.0, &file, "serve.log", &env);
    let base = format!("http://127.0.0.1:{port}");
    common::process::wait_ready(&base).await;
    // The start-up summary names the file and what the layers made.
    let log = std::fs::read_to_string(dir.0.join("serve.log")).unwrap();
    let summary: Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == "tollgate serving")
        .unwrap();
    let fields = &summary["fields"];
    assert_eq!(fields["config"], file.display().to_string());
    assert!(
        fields["store"].as_str().unwrap().ends_with("from-env.db"),
        "{fields}"
    );
    assert_eq!(fields["models"], "echo,filemodel");
    assert!(dir.0.join("from-env.db").exists());
    assert!(
        !dir.0.join("from-file.db").exists(),
        "the environment's store wins"
    );

    // The models as a client sees them: the default's echo untouched, the
    // file's model with the file's bound and the environment's price version.
    let boot = tollgate()
        .args(["--config", file.to_str().unwrap(), "studio", "bootstrap"])
        .args(["--account", "layers", "--project", "p"])
        .envs(env)
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );
    let boot: Value = serde_json::from_slice(&boot.stdout).unwrap();
    let response = reqwest::Client::new()
        .get(format!("{base}/external/v1/models"))
        .bearer_auth(boot["apikey"]["value"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let (status, models) = json_of(response).await;
    assert_eq!(status, StatusCode::OK, "{models}");
    let model = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing: {models}"))
    };
    assert_eq!(model("filemodel")["pricing"]["version"], "from-env");
    assert_eq!(model("filemodel")["maxOutputTokens"], 77);
    assert_eq!(model("echo")["pricing"]["version"], "2026-11-01");
}
