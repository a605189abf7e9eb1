//! What the `evm` mode asks of a chain's RPC endpoint (the operator's, often
//! paid per call), against Anvil behind a proxy that counts each JSON-RPC
//! call: readiness probes and key creations, which anyone may send, cost a
//! bounded number of calls; and a chain that answers with another chain id
//! than the one configured is refused at start-up and not ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use common::*;
use ledger::store::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tollgate::settings::Settings;
use workers::evm::devnet::{deploy, Anvil, AnvilOptions, DevChain};

/// JSON-RPC calls seen by method.
#[derive(Default)]
struct Calls(Mutex<HashMap<String, usize>>);

impl Calls {
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }

    fn of(&self, method: &str) -> usize {
        self.0.lock().unwrap().get(method).copied().unwrap_or(0)
    }
}

/// Where the proxy forwards to; switched by the tests.
type Upstream = Arc<Mutex<String>>;

/// An HTTP JSON-RPC proxy in front of `upstream` that counts every call
/// (each element of a batch); 502 while the upstream does not answer.
/// Answers its URL.
fn counting_proxy(upstream: Upstream) -> (String, Arc<Calls>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(Calls::default());
    let data = web::Data::new((calls.clone(), upstream, reqwest::Client::new()));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(forward))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (url, calls)
}

async fn forward(
    data: web::Data<(Arc<Calls>, Upstream, reqwest::Client)>,
    body: web::Bytes,
) -> HttpResponse {
    let (calls, upstream, client) = &**data;
    if let Ok(request) = serde_json::from_slice::<Value>(&body) {
        let each = match &request {
            Value::Array(batch) => batch.clone(),
            one => vec![one.clone()],
        };
        let mut seen = calls.0.lock().unwrap();
        for call in each {
            let method = call["method"].as_str().unwrap_or("?").to_owned();
            *seen.entry(method).or_default() += 1;
        }
    }
    let upstream = upstream.lock().unwrap().clone();
    let sent = client
        .post(upstream)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let Ok(answer) = sent else {
        return HttpResponse::BadGateway().finish();
    };
    let status = answer.status().as_u16();
    let body = answer.bytes().await.unwrap_or_default();
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/json")
        .body(body)
}

/// Anvil (answering for `chain_id`) with the contracts deployed.
async fn chain(chain_id: Option<u64>) -> (Anvil, DevChain) {
    let options = AnvilOptions {
        chain_id,
        ..AnvilOptions::default()
    };
    let anvil = Anvil::start(&options)
        .await
        .expect("Anvil (npm ci installs it)");
    let deployment = deploy(&anvil.rpc_url).await.expect("deploy the contracts");
    (anvil, DevChain::new(deployment).unwrap())
}

/// The `evm` mode's settings for chain `CHAIN` served by `rpc_url`; the
/// settler's passes an hour apart, so only the requests count.
fn evm_env(dev: &DevChain, rpc_url: &str) -> Vec<(String, String)> {
    let d = &dev.deployment;
    let chain = |field: &str| format!("TOLLGATE__CHAINS__{CHAIN}__{field}");
    vec![
        ("TOLLGATE__SETTLEMENT__MODE".into(), "evm".into()),
        ("TOLLGATE__SETTLEMENT__INTERVAL_MS".into(), "3600000".into()),
        (chain("RPC_URL"), rpc_url.to_owned()),
        (chain("USDC"), format!("{:#x}", d.usdc)),
        (
            chain("SETTLEMENT_CONTRACT"),
            format!("{:#x}", d.settlement_contract),
        ),
        (chain("TREASURY"), format!("{:#x}", d.treasury)),
        (chain("OPERATOR_KEY"), d.operator_key.clone()),
    ]
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// 200 readiness probes in a row cost the RPC endpoint at most the calls
/// of one check a second; key creations past `keys.create_burst` are
/// answered 429 (JSON error, `Retry-After`) before the funding check reads
/// the chain, so 40 refused creations cost at most the burst's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_refused_key_creations_cost_the_rpc_a_bounded_number_of_calls() {
    let (anvil, dev) = chain(None).await;
    let (proxy, calls) = counting_proxy(Arc::new(Mutex::new(anvil.rpc_url.clone())));
    let mut env = evm_env(&dev, &proxy);
    env.push(("TOLLGATE__KEYS__CREATE_BURST".into(), "5".into()));
    env.push(("TOLLGATE__KEYS__CREATE_PER_S".into(), "1".into()));
    let app = spawn_app_with(Backend::Sqlite, &borrowed(&env)).await;

    let before = calls.total();
    let started = Instant::now();
    for _ in 0..200 {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let seconds = started.elapsed().as_secs_f64();
    let probed = calls.total() - before;
    assert!(
        (probed as f64) <= 2.0 * (seconds + 2.0),
        "200 probes in {seconds:.1} s made {probed} RPC calls"
    );

    let wallet = Wallet::random();
    let session = app.sign_in(&wallet).await;
    let (before, started) = (calls.total(), Instant::now());
    let (mut refused_for_funds, mut limited) = (0, 0);
    for _ in 0..40 {
        let response = app
            .client
            .post(app.url("/api/keys"))
            .bearer_auth(&session)
            .header("x-session-user-address", wallet.hex())
            .header("x-chain-id", CHAIN.to_string())
            .json(&json!({ "budgetLimit": 1_000_000 }))
            .send()
            .await
            .unwrap();
        let retry_after = response.headers().get("retry-after").cloned();
        let got = json_of(response).await;
        match got.0.as_u16() {
            402 => refused_for_funds += 1,
            429 => {
                assert_error(&got, 429, "too_many_requests");
                assert!(got.1["error"]["details"]["retryAfterMs"].as_u64().is_some());
                let seconds: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
                assert!((1..=2).contains(&seconds), "Retry-After: {seconds}");
                limited += 1;
            }
            _ => panic!("unexpected answer {got:?}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let created = calls.total() - before;
    assert!(limited >= 30, "{limited} of 40 answered 429");
    assert!(
        (created as f64) <= 5.0 + seconds + 1.0,
        "{refused_for_funds} creations refused for funds in {seconds:.1} s made {created} RPC calls"
    );
    assert_eq!(calls.of("eth_sendRawTransaction"), 0);
}

/// Settings of an app on a fresh SQLite store, with `extra` (for building
/// the application by hand).
fn settings_with(db: &ledger::testing::TestDb, extra: &[(String, String)]) -> Settings {
    let dir =
        std::env::temp_dir().join(format!("tollgate-chain-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| dir.join(name).display().to_string();
    let mut env: Vec<(String, String)> = vec![
        ("TOLLGATE__STORE__URL".into(), db.url.clone()),
        (
            "TOLLGATE__AUTH__SIGNING_KEY_FILE".into(),
            file("signing.key"),
        ),
        (
            "TOLLGATE__STUDIO__SECRETS_KEY_FILE".into(),
            file("studio.key"),
        ),
        ("TOLLGATE__LOG__FILTER".into(), "warn".into()),
    ];
    env.extend(extra.iter().cloned());
    Settings::load_with_env(None, env).unwrap()
}

/// An RPC endpoint answering for chain 1 where chain `CHAIN` is configured:
/// start-up refuses, naming `chains.CHAIN.rpc_url`. When it only turns
/// out so later (the endpoint did not answer at start-up, then answers for
/// chain 1), `/readyz` says `wrong_chain` (503) and the settler pauses the
/// chain with the reason (the funding check refuses to read funds there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_endpoint_of_another_chain_is_refused_not_ready_and_pauses_settlement() {
    let (anvil, dev) = chain(Some(1)).await;
    let db = ledger::testing::TestDb::create(Backend::Sqlite).await;
    let settings = settings_with(&db, &evm_env(&dev, &anvil.rpc_url));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = tollgate::startup::Application::build_on(settings, listener).await;
    let error = refused
        .err()
        .expect("start-up refuses another chain's RPC")
        .to_string();
    let setting = format!("chains.{CHAIN}.rpc_url");
    assert!(
        error.contains(&setting) && error.contains("chain 1"),
        "{error}"
    );

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream: Upstream = Arc::new(Mutex::new(format!("http://{closed}")));
    let (proxy, _) = counting_proxy(upstream.clone());
    let mut env = evm_env(&dev, &proxy);
    env.push(("TOLLGATE__SETTLEMENT__INTERVAL_MS".into(), "100".into()));
    env.push((
        format!("TOLLGATE__CHAINS__{CHAIN}__RPC_TIMEOUT_MS"),
        "300".into(),
    ));
    let app = spawn_app_with(Backend::Sqlite, &borrowed(&env)).await;
    *upstream.lock().unwrap() = anvil.rpc_url.clone();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = json_of(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
        if got.1["chains"][CHAIN.to_string()] == "wrong_chain" {
            assert_eq!(got.0, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(got.1["status"], "not_ready");
            break;
        }
        assert!(Instant::now() < deadline, "readiness: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let paused = loop {
        let accounts = app.store.chain_accounts().await.unwrap();
        if let Some(reason) = accounts.iter().find_map(|a| a.paused_reason.clone()) {
            break reason;
        }
        assert!(Instant::now() < deadline, "the settler pauses the chain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        paused.contains(&setting) && paused.contains("answers for chain 1"),
        "{paused}"
    );
}
