//! The group-commit writer on both stores: many concurrent callers, replays
//! among them, and every charge lands exactly once with `budget_used` equal
//! to the sum of the charges. On SQLite the writer is a thread with its own
//! connection, and a batch it cannot write whole (a replay, a key past its
//! limit, an unknown key) goes through the pool: these cases mix both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ledger::model::{ChargeOutcome, NewCharge};
use ledger::store::Backend;
use ledger::testing::{create_funded_key, TestDb};
use ledger::time::now_ms;
use ledger::{Amount, ChainId, KeyId, RequestId, Store, WalletAddress};
use workers::ledger_writer::LedgerWriter;

const CHAIN: ChainId = ChainId(43113);

/// A fresh store of `backend` and a funded key of `budget_atomic` on it.
async fn store_with_key(backend: Backend, owner: u8, budget_atomic: u64) -> (TestDb, Store, KeyId) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let key = create_funded_key(
        &store,
        &KeyId::generate(),
        WalletAddress::from_bytes([owner; 20]),
        CHAIN,
        Amount::from_atomic(budget_atomic).unwrap(),
    )
    .await;
    (db, store, key.id)
}

/// A charge of `amount` on `key`, with its own request id.
fn charge_of(key: &KeyId, amount: u64) -> NewCharge {
    NewCharge {
        request_id: RequestId::generate(),
        key_id: key.clone(),
        model: "echo".into(),
        price_version: "v1".into(),
        input_tokens: 1,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        output_tokens: 1,
        amount: Amount::from_atomic(amount).unwrap(),
        reported: None,
        reported_cache: None,
        created_at_ms: now_ms(),
        lease: None,
        client_request_id: None,
    }
}

async fn concurrent_callers_write_each_charge_once(backend: Backend) {
    let (_db, store, key) = store_with_key(backend, 7, 10_000).await;
    let writer = LedgerWriter::start(store.clone());
    // 300 distinct calls of 10 each (3,000), every one sent twice at once.
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let charge = NewCharge {
            input_tokens: i,
            cached_input_tokens: i / 2,
            cache_write_tokens: i / 4,
            reported: (i % 2 == 0).then_some((i, 1)),
            reported_cache: (i % 2 == 0).then_some((i / 2, i / 4)),
            ..charge_of(&key, 10)
        };
        for _ in 0..2 {
            let (writer, charge) = (writer.clone(), charge.clone());
            tasks.push(tokio::spawn(async move { writer.record(charge).await }));
        }
    }
    let (mut recorded, mut duplicate) = (0, 0);
    for task in tasks {
        match task.await.unwrap().unwrap() {
            ChargeOutcome::Recorded => recorded += 1,
            ChargeOutcome::Duplicate => duplicate += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((recorded, duplicate), (300, 300));
    let charges = store.charges_for_key(&key).await.unwrap();
    let sum: u64 = charges.iter().map(|c| c.amount.atomic()).sum();
    assert_eq!((charges.len(), sum), (300, 3_000));
    // Every count as written (SQLite: by the writer's own connection).
    for c in &charges {
        let i = c.input_tokens;
        assert_eq!(
            (c.cached_input_tokens, c.cache_write_tokens),
            (i / 2, i / 4)
        );
        assert_eq!(c.reported_cache, (i % 2 == 0).then_some((i / 2, i / 4)));
    }
    assert_eq!(
        store.key(&key).await.unwrap().unwrap().budget_used.atomic(),
        sum,
        "budget_used equals the sum of the charges"
    );
}

/// 40 concurrent charges of 10 on a key of 250, and 8 on a key that does
/// not exist: exactly 25 fit, the rest are refused one by one, and nothing
/// else is lost — each caller hears its own charge's outcome.
async fn refusals_are_answered_charge_by_charge(backend: Backend) {
    let (_db, store, key) = store_with_key(backend, 8, 250).await;
    let (writer, writing) = LedgerWriter::spawn(store.clone());
    let unknown = KeyId::generate();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let charge = if i % 6 == 5 {
            charge_of(&unknown, 10)
        } else {
            charge_of(&key, 10)
        };
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move { writer.record(charge).await }));
    }
    let (mut recorded, mut over, mut unknown_key) = (0, 0, 0);
    for task in tasks {
        match task.await.unwrap().unwrap() {
            ChargeOutcome::Recorded => recorded += 1,
            ChargeOutcome::OverBudget => over += 1,
            ChargeOutcome::UnknownKey => unknown_key += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((recorded, over, unknown_key), (25, 15, 8));
    let record = store.key(&key).await.unwrap().unwrap();
    assert_eq!(record.budget_used.atomic(), 250);
    assert_eq!(store.charges_for_key(&key).await.unwrap().len(), 25);
    // The writer ends once its last handle is gone.
    drop(writer);
    tokio::time::timeout(std::time::Duration::from_secs(10), writing)
        .await
        .expect("the writer ends when its handles are dropped")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refusals_are_answered_charge_by_charge() {
    refusals_are_answered_charge_by_charge(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusals_are_answered_charge_by_charge() {
    refusals_are_answered_charge_by_charge(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_callers_write_each_charge_once() {
    concurrent_callers_write_each_charge_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_callers_write_each_charge_once() {
    concurrent_callers_write_each_charge_once(Backend::Postgres).await;
}
