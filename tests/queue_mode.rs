//! The queue mode end to end (docs/queue.md): `queue.url = amqp://…` on the real
//! RabbitMQ and PostgreSQL. A paid call publishes its `CallCompleted` event
//! and answers once the broker confirmed it; the ledger pools — inside
//! `serve`, or in `tollgate worker` processes — record each charge once.
//! Every reported final amount ends in the ledger exactly once, and
//! `budget_used` equals the sum of the charges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::process::{spawn_serving_with, spawn_worker, tollgate, wait_ready};
use common::{
    amqp_url, call_thirty, delete_queue, header_amount, queue_name, spawn_paid_app_with, thirty,
    PaidKey, TempDir, TestApp,
};
use ledger::store::Backend;
use serde_json::json;

/// Waits (10 s at most) until the key's `budget_used` and the sum of its
/// charges are both `expected` (read while pools write, the two may be a
/// commit apart; never past `expected`).
async fn ledger_reaches(app: &TestApp, key: &PaidKey, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (used, charged) = app.spent(&key.key_id).await;
        if (used, charged) == (expected, expected) {
            return;
        }
        assert!(
            used <= expected && charged <= expected && Instant::now() < deadline,
            "the ledger shows {used} (charges {charged}), the calls reported {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_calls_are_recorded_once_through_rabbitmq() {
    let (url, name) = (amqp_url(), queue_name());
    let (app, _mock) = spawn_paid_app_with(
        Backend::Postgres,
        &[
            ("TOLLGATE__QUEUE__URL", url.as_str()),
            ("TOLLGATE__QUEUE__CALLS_QUEUE", name.as_str()),
        ],
    )
    .await;
    const BUDGET: u64 = 3_000;
    let key = app.paid_key(BUDGET).await;
    // Three times the budget, 16 at a time, streamed and not.
    let mut workers = Vec::new();
    for worker in 0..16 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/external/v1/chat/completions"),
            key.token.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut reported = 0;
            for call in 0..19 {
                let mut body = thirty();
                body["stream"] = json!((worker + call) % 3 == 0);
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    200 if body["stream"] == json!(true) => {
                        let text = response.text().await.unwrap();
                        let last = common::sse_events(&text)
                            .into_iter()
                            .rev()
                            .find(|e| e.contains("finalAmountWei"))
                            .expect("the last chunk has the charge");
                        let event: serde_json::Value = serde_json::from_str(&last).unwrap();
                        reported += event["compose"]["finalAmountWei"]
                            .as_str()
                            .unwrap()
                            .parse::<u64>()
                            .unwrap();
                    }
                    200 => reported += header_amount(&response, "x-compose-key-final-amount-wei"),
                    402 => {}
                    other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
                }
            }
            reported
        }));
    }
    let mut reported = 0;
    for worker in workers {
        reported += worker.await.unwrap();
    }
    assert!(
        reported <= BUDGET && reported + 2 * 30 >= BUDGET,
        "reported {reported}"
    );
    ledger_reaches(&app, &key, reported).await;
    // Every event delivered again (a publisher's retry, a redelivery): the
    // ledger does not change.
    let id = ledger::KeyId::parse(&key.key_id).unwrap();
    let charges = app.store.charges_for_key(&id).await.unwrap();
    let queue = workers::queue::Queue::connect(&url, Default::default())
        .await
        .unwrap();
    for charge in &charges {
        let again = workers::event::CallCompleted {
            version: workers::event::EVENT_VERSION,
            request_id: charge.request_id.to_string(),
            key_id: charge.key_id.to_string(),
            wallet: key.wallet.address.to_lower_hex(),
            chain_id: common::CHAIN,
            model: charge.model.clone(),
            price_version: charge.price_version.clone(),
            input_tokens: charge.input_tokens,
            output_tokens: charge.output_tokens,
            reported: charge.reported,
            quoted_atomic: charge.amount.atomic(),
            hold_atomic: charge.amount.atomic(),
            started_at_ms: charge.created_at_ms,
            completed_at_ms: charge.created_at_ms,
            lease_id: None,
            client_request_id: None,
            cached_input_tokens: charge.cached_input_tokens,
            cache_write_tokens: charge.cache_write_tokens,
            reported_cache: charge.reported_cache,
        };
        queue
            .publish(&name, charge.request_id.as_str(), again.to_json().into())
            .await
            .unwrap();
    }
    // Published after the first copies were recorded: once the queue is
    // drained, nothing changed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !queue_drained(&name).await {
        assert!(
            Instant::now() < deadline,
            "the duplicates were not consumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.spent(&key.key_id).await, (reported, reported));
    assert_eq!(
        app.store.charges_for_key(&id).await.unwrap().len(),
        charges.len()
    );
    delete_queue(&name).await;
}

/// Every paid API in queue mode: Responses, Messages and embeddings calls
/// (streamed and not, on `echo` and through the mock's Responses route) are
/// published, recorded once by the pool, and sum to what the clients were
/// told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_is_recorded_once_through_rabbitmq() {
    let (url, name) = (amqp_url(), queue_name());
    let (app, _mock) = spawn_paid_app_with(
        Backend::Postgres,
        &[
            ("TOLLGATE__QUEUE__URL", url.as_str()),
            ("TOLLGATE__QUEUE__CALLS_QUEUE", name.as_str()),
        ],
    )
    .await;
    let key = app.paid_key(10_000).await;
    let user = json!([{"role": "user", "content": "one two three"}]);
    let calls = [
        (
            "/external/v1/responses",
            json!({"model": "echo", "input": "one two three"}),
        ),
        (
            "/external/v1/responses",
            json!({"model": "echo", "input": "one two three", "stream": true}),
        ),
        (
            "/external/v1/responses",
            json!({"model": "mock_ok", "input": "hello", "max_output_tokens": 3}),
        ),
        (
            "/external/v1/messages",
            json!({"model": "echo", "max_tokens": 10, "messages": user}),
        ),
        (
            "/external/v1/messages",
            json!({"model": "echo", "max_tokens": 10, "messages": user, "stream": true}),
        ),
        (
            "/external/v1/embeddings",
            json!({"model": "echo", "input": ["one two", "three"]}),
        ),
    ];
    let mut reported = 0;
    for (path, body) in calls {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(&key.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path} {body}");
        if body["stream"] == json!(true) {
            let text = response.text().await.unwrap();
            let last = text
                .split("\n\n")
                .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
                .last()
                .unwrap();
            let event: serde_json::Value = serde_json::from_str(last).unwrap();
            reported += event["compose"]["finalAmountWei"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap();
        } else {
            reported += header_amount(&response, "x-compose-key-final-amount-wei");
        }
    }
    // echo: 3 + 3×2 four times, embeddings 3; the mock: 7 + 3×2.
    assert_eq!(reported, 4 * 9 + 3 + 13);
    ledger_reaches(&app, &key, reported).await;
    delete_queue(&name).await;
}

/// Queue mode: an event carries its call's cached input tokens, and the
/// pool that re-prices it (at the cached-input price) records the very
/// amount the client was told, with the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_input_tokens_are_charged_at_their_price_through_rabbitmq() {
    // The mock's 7 prompt tokens, 4 of them cached at a quarter of the
    // input price, and 5 output tokens: ⌈3 × 1 + 4 × 0.25⌉ + 5 × 2.
    const CACHED_CALL_ATOMIC: u64 = 14;
    let (url, name) = (amqp_url(), queue_name());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mock = common::mock_upstream::start(listener, 1, true);
    let model = |field: &str| format!("TOLLGATE__MODELS__QUIRK_CACHED__{field}");
    let env = [
        ("TOLLGATE__QUEUE__URL".to_owned(), url.clone()),
        ("TOLLGATE__QUEUE__CALLS_QUEUE".to_owned(), name.clone()),
        (model("UPSTREAM"), mock.base_url.clone()),
        (model("PRICE_VERSION"), "test-1".to_owned()),
        (model("INPUT_ATOMIC_PER_MILLION"), "1000000".to_owned()),
        (
            model("CACHED_INPUT_ATOMIC_PER_MILLION"),
            "250000".to_owned(),
        ),
        (model("OUTPUT_ATOMIC_PER_MILLION"), "2000000".to_owned()),
        (model("MAX_OUTPUT_TOKENS"), "1000".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = common::spawn_app_with(Backend::Postgres, &env).await;
    let key = app.paid_key(1_000).await;
    let mut told = 0;
    for stream in [false, true] {
        let body = json!({"model": "quirk_cached", "stream": stream, "max_tokens": 100,
                          "messages": [{"role": "user", "content": "hello"}]});
        let response = app.chat(&key.token, &body).await;
        assert_eq!(response.status(), 200);
        if stream {
            let text = response.text().await.unwrap();
            assert!(text.contains(&format!("\"finalAmountWei\":\"{CACHED_CALL_ATOMIC}\"")));
        } else {
            let amount = header_amount(&response, "x-compose-key-final-amount-wei");
            assert_eq!(amount, CACHED_CALL_ATOMIC);
        }
        told += CACHED_CALL_ATOMIC;
    }
    ledger_reaches(&app, &key, told).await;
    let id = ledger::KeyId::parse(&key.key_id).unwrap();
    let charges = app.store.charges_for_key(&id).await.unwrap();
    assert_eq!(charges.len(), 2);
    for charge in charges {
        assert_eq!(
            (
                charge.input_tokens,
                charge.cached_input_tokens,
                charge.cache_write_tokens
            ),
            (7, 4, 0)
        );
        assert_eq!(charge.reported_cache, Some((4, 0)));
        assert_eq!(charge.amount.atomic(), CACHED_CALL_ATOMIC);
    }
    delete_queue(&name).await;
}

/// Whether `name` holds no message, ready or unacknowledged, and its
/// dead-letter queue none either (`rabbitmqctl`).
async fn queue_drained(name: &str) -> bool {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "name", "messages"])
        .output()
        .expect("rabbitmqctl lists the broker's queues");
    let text = String::from_utf8_lossy(&output.stdout);
    let dead = format!("{name}.dead-letters");
    let counts: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(queue, _)| *queue == name || *queue == dead)
        .map(|(_, messages)| messages.trim())
        .collect();
    counts.len() == 2 && counts.iter().all(|messages| *messages == "0")
}

/// `serve` with `workers.in_process = false` records nothing itself: its
/// calls' events wait in RabbitMQ until a `tollgate worker` runs. A worker
/// killed with SIGKILL mid-way and started again, beside a second one,
/// leaves every charge recorded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_record_what_serve_published_across_a_sigkill_and_a_sigterm() {
    let (url, name) = (amqp_url(), queue_name());
    let queue_env = [
        ("TOLLGATE__QUEUE__URL", url.as_str()),
        ("TOLLGATE__QUEUE__CALLS_QUEUE", name.as_str()),
    ];
    let mut env = queue_env.to_vec();
    env.push(("TOLLGATE__WORKERS__IN_PROCESS", "false"));
    let (app, _mock) = spawn_paid_app_with(Backend::Postgres, &env).await;
    const CALLS: u64 = 400;
    let key = app.paid_key(CALLS * 30).await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/external/v1/chat/completions"),
            key.token.clone(),
        );
        calls.push(tokio::spawn(async move {
            let mut reported = 0;
            for _ in 0..CALLS / 8 {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&thirty())
                    .send()
                    .await
                    .unwrap();
                if response.status().as_u16() != 200 {
                    let status = response.status();
                    panic!("{status}: {}", response.text().await.unwrap_or_default());
                }
                reported += header_amount(&response, "x-compose-key-final-amount-wei");
            }
            reported
        }));
    }
    let mut reported = 0;
    for call in calls {
        reported += call.await.unwrap();
    }
    assert_eq!(reported, CALLS * 30);
    // Every call answered, nothing recorded yet: the charges are in the queue.
    assert_eq!(app.spent(&key.key_id).await, (0, 0));
    let dir = TempDir(
        std::env::temp_dir().join(format!("tollgate-worker-{}", uuid::Uuid::now_v7().simple())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut worker_env = queue_env.to_vec();
    worker_env.push(("TOLLGATE__STORE__URL", app.db.url.as_str()));
    // Small batches in flight, so the kill lands mid-way.
    worker_env.push(("TOLLGATE__QUEUE__PREFETCH", "20"));
    worker_env.push(("TOLLGATE__WORKERS__LEDGER_POOLS", "1"));
    let mut first = spawn_worker(&dir.0, "first.log", &worker_env);
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.spent(&key.key_id).await.0 == 0 {
        assert!(Instant::now() < deadline, "the worker recorded nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.crash();
    let midway = app.spent(&key.key_id).await.0;
    // A second worker is stopped the way an operator stops one (SIGTERM)
    // once it has written something: it exits 0 at once, and what it held
    // unacknowledged goes back to the queue for the third.
    let mut second = spawn_worker(&dir.0, "second.log", &worker_env);
    while midway < reported && app.spent(&key.key_id).await.0 == midway {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "the second worker recorded nothing"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pid = second.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopping = Instant::now();
    let exit = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "the worker did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        exit.success(),
        "a worker stopped by SIGTERM exits 0: {exit:?}"
    );
    let stopped_at = app.spent(&key.key_id).await.0;
    let _third = spawn_worker(&dir.0, "third.log", &worker_env);
    ledger_reaches(&app, &key, reported).await;
    let charges = app
        .store
        .charges_for_key(&ledger::KeyId::parse(&key.key_id).unwrap())
        .await
        .unwrap();
    assert_eq!(
        charges.len() as u64,
        CALLS,
        "one charge per call (recorded {midway} before the kill, {stopped_at} at the SIGTERM)"
    );
    delete_queue(&name).await;
}

/// Runs `tollgate dlq ARGS` against the app's store and queue: (success,
/// stdout lines).
fn dlq(app: &TestApp, queue: &str, args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let output = tollgate()
        .arg("dlq")
        .args(args)
        .env("TOLLGATE__STORE__URL", &app.db.url)
        .env("TOLLGATE__QUEUE__URL", amqp_url())
        .env("TOLLGATE__QUEUE__CALLS_QUEUE", queue)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    (output.status.success(), lines, stdout)
}

/// Poison messages reach the dead-letter queue with their reason; `dlq
/// list` shows what the pool makes of each, and once the cause is fixed
/// `dlq retry` records the event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_and_retried_once_fixed() {
    let (url, name) = (amqp_url(), queue_name());
    let (app, _mock) = spawn_paid_app_with(
        Backend::Postgres,
        &[
            ("TOLLGATE__QUEUE__URL", url.as_str()),
            ("TOLLGATE__QUEUE__CALLS_QUEUE", name.as_str()),
        ],
    )
    .await;
    let queue = workers::queue::Queue::connect(&url, Default::default())
        .await
        .unwrap();
    // Junk, and a valid event for a key this store does not know (yet).
    queue
        .publish(&name, "junk", bytes::Bytes::from_static(b"{not json"))
        .await
        .unwrap();
    let ghost = ledger::KeyId::generate();
    let request = ledger::RequestId::generate();
    let now = ledger::time::now_ms();
    let event = workers::event::CallCompleted {
        version: workers::event::EVENT_VERSION,
        request_id: request.to_string(),
        key_id: ghost.to_string(),
        wallet: String::new(),
        chain_id: common::CHAIN,
        model: "echo".into(),
        price_version: "2026-11-01".into(),
        input_tokens: 10,
        output_tokens: 10,
        reported: Some((10, 10)),
        quoted_atomic: 30,
        hold_atomic: 30,
        started_at_ms: now,
        completed_at_ms: now,
        lease_id: None,
        client_request_id: None,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        reported_cache: None,
    };
    queue
        .publish(&name, request.as_str(), event.to_json().into())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let (ok, lines, _) = dlq(&app, &name, &["list"]);
        assert!(ok);
        if lines.len() == 2 {
            break lines;
        }
        assert!(Instant::now() < deadline, "dead letters: {lines:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let find = |id: &str| {
        listed
            .iter()
            .find(|l| l["messageId"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(find("junk")["reason"], "rejected");
    assert!(find("junk")["diagnosis"]
        .as_str()
        .unwrap()
        .contains("not a CallCompleted"));
    let ghost_letter = find(request.as_str());
    assert_eq!(
        ghost_letter["diagnosis"],
        "the key does not exist in this store"
    );
    assert_eq!(ghost_letter["amountAtomic"], "30");
    // The fix: the key exists now (say, its store was restored).
    ledger::testing::create_funded_key(
        &app.store,
        &ghost,
        ledger::WalletAddress::from_bytes([7; 20]),
        ledger::ChainId(common::CHAIN),
        ledger::Amount::from_atomic(100).unwrap(),
    )
    .await;
    let (ok, _, out) = dlq(&app, &name, &["retry", request.as_str()]);
    assert!(ok, "{out}");
    assert!(out.contains("1 dead letter(s) put back"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (used, charged) = app.spent(ghost.as_str()).await;
        if (used, charged) == (30, 30) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retried event was not recorded: {used}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Retried once more: it is no longer a dead letter.
    let (ok, _, _) = dlq(&app, &name, &["retry", request.as_str()]);
    assert!(!ok, "nothing left to retry under that id");
    let (_, lines, _) = dlq(&app, &name, &["list"]);
    assert_eq!(lines.len(), 1, "only the junk remains: {lines:?}");
    assert_eq!(
        app.spent(ghost.as_str()).await,
        (30, 30),
        "recorded exactly once"
    );
    delete_queue(&name).await;
}

/// The queue lags longer than `leases.grace_ms` (no worker runs). A gateway
/// spends a key whole, then dies (SIGKILL) or is stopped (SIGTERM); a
/// gateway started after it waits out the grace and finds the key still
/// spent — the dead or returned lease's cover is not taken back while its
/// charges wait in the queue (taken back, the key would be spent twice). A
/// worker then records every charge once, none overdrawn or dead-lettered,
/// and `reconcile` finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_queue_never_lets_a_key_be_spent_twice_after_its_gateway_stops() {
    for signal in ["KILL", "TERM"] {
        lagging_queue_after(signal).await;
    }
}

async fn lagging_queue_after(signal: &str) {
    let (url, name) = (amqp_url(), queue_name());
    let grace_ms: u64 = 1_500;
    let grace = grace_ms.to_string();
    let settings = [
        ("TOLLGATE__QUEUE__URL", url.as_str()),
        ("TOLLGATE__QUEUE__CALLS_QUEUE", name.as_str()),
        ("TOLLGATE__WORKERS__IN_PROCESS", "false"),
        ("TOLLGATE__LEASES__GRACE_MS", grace.as_str()),
        ("TOLLGATE__LEASES__CHUNK_CALLS", "8"),
    ];
    let (app, _mock) = spawn_paid_app_with(Backend::Postgres, &settings).await;
    const BUDGET: u64 = 3_000;
    let key = app.paid_key(BUDGET).await;
    // A second key A spends only a little of: its unspent cover must come
    // back once the queue drained.
    let partly = app.paid_key(BUDGET).await;
    let dir = TempDir(
        std::env::temp_dir().join(format!("tollgate-lag-{}", uuid::Uuid::now_v7().simple())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let shared = app.shared_env();
    let mut env: Vec<(&str, &str)> = shared.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("TOLLGATE__LOG__FILTER", "info"));
    env.extend(settings);

    // Gateway A spends the key whole; its charges wait in the queue.
    let (mut first, port) = spawn_serving_with(&dir.0, "127.0.0.1:0", "a.log", &env);
    let a = format!("http://127.0.0.1:{port}");
    wait_ready(&a).await;
    let mut served = 0;
    for _ in 0..BUDGET / 30 + 10 {
        let (status, amount, _) = call_thirty(&app.client, &a, &key.token).await;
        if status != 200 {
            assert_eq!(status, 402, "{signal}");
            break;
        }
        served += amount;
    }
    assert_eq!(served, BUDGET, "{signal}: A spends the key whole");
    let mut partly_served = 0;
    for _ in 0..10 {
        let (status, amount, _) = call_thirty(&app.client, &a, &partly.token).await;
        assert_eq!(status, 200, "{signal}");
        partly_served += amount;
    }
    assert_eq!(app.spent(&key.key_id).await, (0, 0), "nothing recorded yet");
    if signal == "KILL" {
        first.crash();
    } else {
        let pid = first.0.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let exit = first.0.wait().unwrap();
        assert!(exit.success(), "{signal}: {exit:?}");
    }

    // Gateway B, past the grace (and a few of its reclaim passes): the key
    // is still spent.
    let (_second, port) = spawn_serving_with(&dir.0, "127.0.0.1:0", "b.log", &env);
    let b = format!("http://127.0.0.1:{port}");
    wait_ready(&b).await;
    tokio::time::sleep(Duration::from_millis(grace_ms * 3)).await;
    for _ in 0..5 {
        let (status, amount, _) = call_thirty(&app.client, &b, &key.token).await;
        served += amount;
        assert_eq!(status, 402, "{signal}: B spent a key A had spent whole");
    }
    assert_eq!(served, BUDGET, "{signal}: served once, in all");

    // A worker records every charge once: none refused, none overdrawn.
    let mut worker_env = env.clone();
    worker_env.push(("TOLLGATE__WORKERS__LEDGER_POOLS", "1"));
    let _worker = spawn_worker(&dir.0, "worker.log", &worker_env);
    ledger_reaches(&app, &key, BUDGET).await;
    assert!(
        common::eventually(Duration::from_secs(10), || queue_drained(&name)).await,
        "{signal}: the queue drains with no dead letter"
    );
    // Drained: what A leased of the second key and did not spend is B's
    // again (a killed A's open lease taken back, a stopped A's returned at
    // once), and no more than the key's limit is ever served.
    let deadline = Instant::now() + Duration::from_secs(15);
    while partly_served < BUDGET && Instant::now() < deadline {
        let (status, amount, _) = call_thirty(&app.client, &b, &partly.token).await;
        partly_served += amount;
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(partly_served, BUDGET, "{signal}: all of it came back, once");
    let (status, _, _) = call_thirty(&app.client, &b, &partly.token).await;
    assert_eq!(status, 402, "{signal}: and no more");
    ledger_reaches(&app, &partly, BUDGET).await;
    let differences = app.store.reconcile_ledger(None).await.unwrap();
    assert!(differences.is_empty(), "{signal}: {differences:?}");
    delete_queue(&name).await;
}
