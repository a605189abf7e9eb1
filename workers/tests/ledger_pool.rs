//! The ledger pool against the real queue and store: every event becomes
//! exactly one charge — duplicates, redeliveries and a pool killed mid-way
//! included — with `budget_used` equal to the sum of the charges, and poison
//! messages in the dead-letter queue. Runs as SQLite with the in-process
//! queue and as PostgreSQL with RabbitMQ.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use ledger::pricing::Price;
use ledger::store::Backend;
use ledger::testing::{create_funded_key, TestDb};
use ledger::time::now_ms;
use ledger::{Amount, ChainId, KeyId, RequestId, Store, WalletAddress};
use workers::event::{CallCompleted, EVENT_VERSION};
use workers::ledger_pool::{LedgerPool, PriceBook};
use workers::queue::{Queue, QueueOptions};

const CHAIN: ChainId = ChainId(43113);

fn price() -> Price {
    Price {
        version: "v1".into(),
        input_atomic_per_million: 1_000_000,
        cached_input_atomic_per_million: 1_000_000,
        cache_write_atomic_per_million: 1_000_000,
        output_atomic_per_million: 2_000_000,
        request_fee_atomic: 0,
        min_charge_atomic: 1,
    }
}

fn event(key: &KeyId, request: &RequestId) -> CallCompleted {
    // 4 in + 3 out × 2 = 10, as the gateway would quote it.
    CallCompleted {
        version: EVENT_VERSION,
        request_id: request.to_string(),
        key_id: key.to_string(),
        wallet: "0x0707070707070707070707070707070707070707".into(),
        chain_id: CHAIN.0,
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
    }
}

async fn funded_key(store: &Store) -> KeyId {
    let id = KeyId::generate();
    let owner = WalletAddress::from_bytes([7; 20]);
    create_funded_key(
        store,
        &id,
        owner,
        CHAIN,
        Amount::from_atomic(100_000).unwrap(),
    )
    .await;
    id
}

async fn connect(backend: Backend) -> Queue {
    let url = match backend {
        Backend::Sqlite => "memory://".to_owned(),
        Backend::Postgres => std::env::var("TOLLGATE_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
    };
    Queue::connect(&url, QueueOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the queue at {url} is needed for this test: {e}"))
}

/// Waits (with a deadline) until the key has `count` charges.
async fn charges_reach(store: &Store, key: &KeyId, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = store.charges_for_key(key).await.unwrap().len();
        if n >= count {
            assert_eq!(n, count, "no charge twice");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of {count} charges"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn every_event_is_charged_once(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let key = funded_key(&store).await;
    let queue = connect(backend).await;
    let name = format!("calls-{}", uuid::Uuid::now_v7().simple());
    queue.declare(&name).await.unwrap();
    let requests: Vec<RequestId> = (0..100).map(|_| RequestId::generate()).collect();
    // Each event once, the first 20 twice more (a gateway retrying a publish).
    for (i, request) in requests.iter().enumerate() {
        let body = Bytes::from(event(&key, request).to_json());
        let copies = if i < 20 { 3 } else { 1 };
        for _ in 0..copies {
            queue
                .publish(&name, &request.to_string(), body.clone())
                .await
                .unwrap();
        }
    }
    queue
        .publish(&name, "poison", Bytes::from_static(b"{not an event"))
        .await
        .unwrap();
    let mut prices = PriceBook::new();
    prices.insert(("echo".into(), "v1".into()), price());
    let pool = LedgerPool::new(store.clone(), prices);

    // Each pool on its own connection, as separate worker processes are.
    let own_consumer = || async {
        match backend {
            Backend::Sqlite => queue.consume(&name).await.unwrap(),
            Backend::Postgres => connect(backend).await.consume(&name).await.unwrap(),
        }
    };
    // A pool that dies mid-way: whatever it had not acked comes back.
    let first = {
        let (pool, consumer) = (pool.clone(), own_consumer().await);
        tokio::spawn(async move { pool.run(consumer).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    first.abort();
    let _ = first.await;
    // Two pools take over.
    let mut runners = Vec::new();
    for _ in 0..2 {
        let (pool, consumer) = (pool.clone(), own_consumer().await);
        runners.push(tokio::spawn(async move { pool.run(consumer).await }));
    }
    charges_reach(&store, &key, 100).await;
    let charged = store.key(&key).await.unwrap().unwrap().budget_used;
    assert_eq!(
        charged.atomic(),
        100 * 10,
        "budget_used is the sum of the charges"
    );
    let charges = store.charges_for_key(&key).await.unwrap();
    let sum: u64 = charges.iter().map(|c| c.amount.atomic()).sum();
    assert_eq!(sum, 1_000);
    assert!(charges.iter().all(|c| c.reported == Some((4, 3))));
    assert_eq!(
        pool.mismatches.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // The poison message is a dead letter, not a charge.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dead: Vec<String> = queue
            .sweep_dead(&name, 100, &mut |_| false)
            .await
            .unwrap()
            .into_iter()
            .map(|(letter, _)| letter.message_id)
            .collect();
        if !dead.is_empty() || tokio::time::Instant::now() > deadline {
            assert_eq!(dead, ["poison"], "the poison message is dead-lettered");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for runner in runners {
        runner.abort();
    }
    // Clean-up, best effort: the queue's name is unique to this run.
    if let Err(error) = queue.delete(&name).await {
        eprintln!("cleaning up {name}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_with_the_in_process_queue() {
    every_event_is_charged_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_rabbitmq() {
    every_event_is_charged_once(Backend::Postgres).await;
}

/// A caller's request id is a label: carried when well-formed, dropped (the
/// charge kept) when not — never a reason to dead-letter a charge.
#[test]
fn a_bad_client_request_id_is_dropped_not_the_charge() {
    let (key, request) = (KeyId::generate(), RequestId::generate());
    let mut labelled = event(&key, &request);
    labelled.client_request_id = Some("client-7f3a:retry.2".into());
    let (charge, _) = labelled.charge(Some(&price())).unwrap();
    assert_eq!(
        charge.client_request_id.as_deref(),
        Some("client-7f3a:retry.2")
    );
    for bad in ["two words", "line\nbreak", &"a".repeat(65), ""] {
        let mut forged = event(&key, &request);
        forged.client_request_id = Some(bad.to_owned());
        let (charge, _) = forged.charge(Some(&price())).unwrap();
        assert_eq!(charge.client_request_id, None, "{bad:?}");
        assert_eq!(charge.amount.atomic(), 10);
    }
}

/// An event from a gateway before cache prices has no cache counts: it
/// parses, with none, and re-prices as before.
#[test]
fn events_without_cache_counts_still_parse() {
    let (key, request) = (KeyId::generate(), RequestId::generate());
    let current = event(&key, &request);
    let mut json: serde_json::Value = serde_json::from_slice(&current.to_json()).unwrap();
    let fields = json.as_object_mut().unwrap();
    for field in [
        "cached_input_tokens",
        "cache_write_tokens",
        "reported_cache",
    ] {
        fields.remove(field);
    }
    let older = CallCompleted::parse(&serde_json::to_vec(&json).unwrap()).unwrap();
    assert_eq!(older, current);
    let (charge, mismatch) = older.charge(Some(&price())).unwrap();
    assert_eq!(mismatch, None);
    assert_eq!(
        (
            charge.cached_input_tokens,
            charge.cache_write_tokens,
            charge.reported_cache
        ),
        (0, 0, None)
    );
}

/// The pool re-prices an event's cache counts at their own prices, and its
/// charge carries them.
#[test]
fn cache_counts_are_repriced_at_their_prices() {
    let cheap_cache = Price {
        cached_input_atomic_per_million: 250_000,
        cache_write_atomic_per_million: 1_500_000,
        ..price()
    };
    let (key, request) = (KeyId::generate(), RequestId::generate());
    // 8 in, 4 of them cached and 2 written, 3 out: ⌈2×1 + 4×0.25 + 2×1.5⌉ + 3×2 = 12.
    let cached = CallCompleted {
        input_tokens: 8,
        cached_input_tokens: 4,
        cache_write_tokens: 2,
        reported: Some((8, 3)),
        reported_cache: Some((4, 2)),
        quoted_atomic: 12,
        ..event(&key, &request)
    };
    let (charge, mismatch) = cached.charge(Some(&cheap_cache)).unwrap();
    assert_eq!(mismatch, None);
    assert_eq!(
        (
            charge.input_tokens,
            charge.cached_input_tokens,
            charge.cache_write_tokens
        ),
        (8, 4, 2)
    );
    assert_eq!(charge.reported_cache, Some((4, 2)));
    // Quoted as if nothing were cached (8 + 6 = 14): caught.
    let uncached_quote = CallCompleted {
        quoted_atomic: 14,
        ..cached
    };
    let (_, mismatch) = uncached_quote.charge(Some(&cheap_cache)).unwrap();
    assert_eq!(mismatch.map(|m| m.repriced.atomic()), Some(12));
}
