//! Benchmark: charges recorded per second through RabbitMQ and PostgreSQL by
//! the ledger pool, and confirmed publishes per second — the worker issue's
//! pipeline without the gateway in front.
//!
//!   cargo run --release -p workers --example pool_throughput [EVENTS] [POOLS] [RATE] [SECS]
//!
//! Phase 3 publishes a steady RATE of events per second (default 5,000)
//! for SECS seconds (default 5) while the pools record them, and prints the
//! confirmed publish's latency and the lag from completion to commit.
//!
//! Needs PostgreSQL (`TOLLGATE_TEST_POSTGRES_URL`, default the local `test`
//! database: a fresh database is created and dropped) and RabbitMQ
//! (`TOLLGATE_TEST_AMQP_URL`, default guest@127.0.0.1). Prints one line per
//! phase.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ledger::pricing::Price;
use ledger::store::Backend;
use ledger::testing::{create_funded_key, TestDb};
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
    let rate: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);
    let rate_secs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let db = TestDb::create(Backend::Postgres).await;
    let store = db.store().await;
    let chain = ChainId(43113);
    let mut keys = Vec::new();
    for i in 0..KEYS {
        let owner = WalletAddress::from_bytes([u8::try_from(i % 250).unwrap() + 1; 20]);
        let id = KeyId::generate();
        create_funded_key(
            &store,
            &id,
            owner,
            chain,
            Amount::from_atomic(1_000_000).unwrap(),
        )
        .await;
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
    let bodies: Vec<(String, Bytes)> = (0..events).map(|i| event(&keys[i % KEYS])).collect();
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
    let pool = LedgerPool::new(store.clone(), pool_prices());
    let started = Instant::now();
    let runners = start_pools(&pool, &queue, &name, pools).await;
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

    // Phase 3: a steady RATE of calls for SECS seconds (each event stamped
    // with its completion time as it is published), recorded by fresh
    // pools: the confirmed publish's latency, and the lag from completion
    // to the committed charge.
    let pool = LedgerPool::new(store.clone(), pool_prices());
    let runners = start_pools(&pool, &queue, &name, pools).await;
    let ticks = rate_secs * 100;
    let per_tick = rate / 100;
    let mut confirms_us = Vec::with_capacity(ticks * per_tick);
    let mut next = tokio::time::Instant::now();
    let mut publishing = Vec::new();
    for tick in 0..ticks {
        next += Duration::from_millis(10);
        for j in 0..per_tick {
            let (queue, name) = (queue.clone(), name.clone());
            let (id, body) = event(&keys[(tick * per_tick + j) % KEYS]);
            publishing.push(tokio::spawn(async move {
                let sent = Instant::now();
                queue.publish(&name, &id, body).await.unwrap();
                sent.elapsed().as_micros()
            }));
        }
        tokio::time::sleep_until(next).await;
    }
    for publish in publishing {
        confirms_us.push(publish.await.unwrap());
    }
    let steady = (ticks * per_tick) as u64;
    while pool.lag.count() < steady {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    confirms_us.sort_unstable();
    let at = |q: f64| confirms_us[((confirms_us.len() as f64 - 1.0) * q) as usize];
    let bound = |q: f64| {
        pool.lag
            .quantile_ms(q)
            .map_or("> 5000".to_owned(), |ms| format!("≤ {ms}"))
    };
    println!(
        "steady {rate}/s for {rate_secs} s: confirmed publish p50 {} µs, p99 {} µs; lag to the committed charge p50 {} ms, p99 {} ms",
        at(0.5),
        at(0.99),
        bound(0.5),
        bound(0.99)
    );
    for runner in runners {
        runner.abort();
    }
    let _ = queue.delete(&name).await;
}

/// `pools` consumers of `name` running `pool` (each consumer on a
/// connection of its own).
async fn start_pools(
    pool: &LedgerPool,
    queue: &Queue,
    name: &str,
    pools: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut runners = Vec::new();
    for _ in 0..pools {
        let consumer = queue.consume(name).await.unwrap();
        let pool = pool.clone();
        runners.push(tokio::spawn(async move { pool.run(consumer).await }));
    }
    runners
}

/// A `CallCompleted` of 10 atomic units on `key`, completed now.
fn event(key: &KeyId) -> (String, Bytes) {
    let request = RequestId::generate();
    let event = CallCompleted {
        version: EVENT_VERSION,
        request_id: request.to_string(),
        key_id: key.to_string(),
        wallet: String::new(),
        chain_id: 43113,
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
        client_request_id: None,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        reported_cache: None,
    };
    (request.to_string(), Bytes::from(event.to_json()))
}

/// The price the events were quoted with.
fn pool_prices() -> PriceBook {
    let mut prices = PriceBook::new();
    prices.insert(
        ("echo".into(), "v1".into()),
        Price {
            version: "v1".into(),
            input_atomic_per_million: 1_000_000,
            cached_input_atomic_per_million: 1_000_000,
            cache_write_atomic_per_million: 1_000_000,
            output_atomic_per_million: 2_000_000,
            request_fee_atomic: 0,
            min_charge_atomic: 1,
        },
    );
    prices
}
