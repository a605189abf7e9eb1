//! Benchmark: charges recorded per second through RabbitMQ and PostgreSQL by
//! the ledger pool, and confirmed publishes per second — the worker issue's
//! pipeline without the gateway in front.
//!
//!   cargo run --release -p workers --example pool_throughput [EVENTS] [POOLS]
//!
//! Needs PostgreSQL (`TOLLGATE_TEST_POSTGRES_URL`, default the local `test`
//! database: a fresh database is created and dropped) and RabbitMQ
//! (`TOLLGATE_TEST_AMQP_URL`, default guest@127.0.0.1). Prints one line per
//! phase.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ledger::model::{NewKey, Purpose};
use ledger::pricing::Price;
use ledger::store::Backend;
use ledger::testing::{set_credited, TestDb};
use ledger::time::now_ms;
use ledger::{Amount, ChainId, KeyId, RequestId, WalletAddress};
use workers::event::{CallCompleted, EVENT_VERSION};
use workers::ledger_pool::{LedgerPool, PriceBook};
use workers::queue::{Queue, QueueOptions};

const KEYS: usize = 100;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let pools: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let db = TestDb::create(Backend::Postgres).await;
    let store = db.store().await;
    let chain = ChainId(43113);
    let mut keys = Vec::new();
    for i in 0..KEYS {
        let owner = WalletAddress::from_bytes([u8::try_from(i % 250).unwrap() + 1; 20]);
        set_credited(
            &store,
            &owner,
            chain,
            Amount::from_atomic(1_000_000_000).unwrap(),
        )
        .await;
        let id = KeyId::generate();
        store
            .create_key(
                &NewKey {
                    token_sha256: format!("hash-of-{id}"),
                    id: id.clone(),
                    wallet: owner,
                    chain_id: chain,
                    purpose: Purpose::Api,
                    session_id: None,
                    name: "bench".into(),
                    budget_limit: Amount::from_atomic(1_000_000).unwrap(),
                    created_at_ms: now_ms(),
                    expires_at_ms: now_ms() + 3_600_000,
                },
                KEYS as u32,
            )
            .await
            .unwrap();
        keys.push(id);
    }
    let url = std::env::var("TOLLGATE_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let options = QueueOptions {
        prefetch: 500,
        ..QueueOptions::default()
    };
    let queue = Queue::connect(&url, options).await.unwrap();
    let name = format!("bench-{}", uuid::Uuid::now_v7().simple());
    queue.declare(&name).await.unwrap();

    // Phase 1: confirmed publishes, 500 in flight at a time.
    let started = Instant::now();
    let bodies: Vec<(String, Bytes)> = (0..events)
        .map(|i| {
            let request = RequestId::generate();
            let event = CallCompleted {
                version: EVENT_VERSION,
                request_id: request.to_string(),
                key_id: keys[i % KEYS].to_string(),
                wallet: String::new(),
                chain_id: chain.0,
                model: "echo".into(),
                price_version: "v1".into(),
                input_tokens: 4,
                output_tokens: 3,
                reported: Some((4, 3)),
                quoted_atomic: 10,
                hold_atomic: 50,
                started_at_ms: now_ms(),
                completed_at_ms: now_ms(),
                lease_id: None,
            };
            (request.to_string(), Bytes::from(event.to_json()))
        })
        .collect();
    for chunk in bodies.chunks(500) {
        let publishes = chunk
            .iter()
            .map(|(id, body)| queue.publish(&name, id, body.clone()));
        for result in futures_util::future::join_all(publishes).await {
            result.unwrap();
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    println!(
        "confirmed publishes: {events} in {publish_secs:.2} s = {:.0}/s (500 in flight on one channel)",
        events as f64 / publish_secs
    );

    // Phase 2: the pools drain the queue into PostgreSQL.
    let mut prices = PriceBook::new();
    prices.insert(
        ("echo".into(), "v1".into()),
        Price {
            version: "v1".into(),
            input_atomic_per_million: 1_000_000,
            output_atomic_per_million: 2_000_000,
            request_fee_atomic: 0,
            min_charge_atomic: 1,
        },
    );
    let pool = LedgerPool::new(store.clone(), prices);
    let started = Instant::now();
    let mut runners = Vec::new();
    for _ in 0..pools {
        let own = Queue::connect(&url, options).await.unwrap();
        let consumer = own.consume(&name).await.unwrap();
        let pool = pool.clone();
        runners.push(tokio::spawn(async move { pool.run(consumer).await }));
    }
    loop {
        let mut recorded = 0;
        for key in &keys {
            recorded += store.key(key).await.unwrap().unwrap().budget_used.atomic() / 10;
        }
        if recorded as usize >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let record_secs = started.elapsed().as_secs_f64();
    println!(
        "charges recorded: {events} in {record_secs:.2} s = {:.0}/s ({pools} pools, batches ≤ 256, PostgreSQL)",
        events as f64 / record_secs
    );
    for runner in runners {
        runner.abort();
    }
    let _ = queue.delete(&name).await;
}
