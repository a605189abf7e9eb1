//! The registry starts one actor per key however many callers arrive at once,
//! bounds calls in flight, pushes revocations, evicts idle actors and reloads
//! them from the loader — on plain tokio, as the HTTP server runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actors::budget::{BudgetStatus, ReserveError};
use actors::registry::{
    AcquireError, CallError, KeyLoader, KeyState, LoadFuture, Registry, RegistryLimits,
};
use ledger::time::now_ms;
use ledger::{Amount, KeyId, RequestId};

fn amount(n: u64) -> Amount {
    Amount::from_atomic(n).unwrap()
}

/// An in-memory "store" that counts loads.
#[derive(Default)]
struct MemoryLoader {
    keys: Mutex<HashMap<KeyId, KeyState>>,
    loads: AtomicUsize,
}

impl MemoryLoader {
    fn add(&self, limit: u64, spent: u64) -> KeyId {
        let id = KeyId::generate();
        self.keys.lock().unwrap().insert(
            id.clone(),
            KeyState {
                limit: amount(limit),
                spent: amount(spent),
                status: BudgetStatus::Active,
                expires_at_ms: now_ms() + 3_600_000,
                token_sha256: format!("hash-of-{id}"),
                lease: None,
                payer: None,
            },
        );
        id
    }
}

impl KeyLoader for MemoryLoader {
    fn load<'a>(&'a self, key: &'a KeyId) -> LoadFuture<'a> {
        Box::pin(async move {
            self.loads.fetch_add(1, Ordering::SeqCst);
            // Make concurrent first calls overlap with the load.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok(self.keys.lock().unwrap().get(key).cloned())
        })
    }
}

fn limits(in_flight: u32) -> RegistryLimits {
    RegistryLimits {
        in_flight_per_key_max: in_flight,
        loaded_keys_max: 1_000,
        idle_ms: 60_000,
        idle_sweep_ms: 60_000,
    }
}

fn registry(loader: &Arc<MemoryLoader>, limits: RegistryLimits) -> Registry {
    Registry::start(loader.clone(), limits, 2).unwrap()
}

#[tokio::test]
async fn a_leased_actor_spends_its_grants_and_reports_the_rest_when_retired() {
    let loader = Arc::new(MemoryLoader::default());
    let key = loader.add(1_000, 100);
    let lease_id = ledger::LeaseId::generate();
    loader.keys.lock().unwrap().get_mut(&key).unwrap().lease = Some(lease_id.clone());
    let registry = registry(&loader, limits(10));
    let mut unspent = registry.unspent_leases().unwrap();
    let lease = registry.acquire(&key).await.unwrap();
    assert_eq!(lease.budget_lease(), Some(&lease_id));
    // Nothing granted yet: the actor asks for the whole call.
    let request = RequestId::generate();
    let short = lease
        .reserve_growing(
            request.clone(),
            amount(30),
            amount(1),
            now_ms() + 10_000,
            amount(0),
        )
        .await;
    assert_eq!(
        short.unwrap_err(),
        CallError::Reserve(ReserveError::AllowanceShort { short: amount(30) })
    );
    lease.grant(amount(100), amount(100)).await.unwrap();
    let reserved = lease
        .reserve_growing(
            request.clone(),
            amount(30),
            amount(1),
            now_ms() + 10_000,
            amount(80),
        )
        .await
        .unwrap();
    assert_eq!(reserved.held, amount(30));
    assert!(reserved.top_up, "70 left is below the low-water mark of 80");
    lease.commit(request, amount(25)).await.unwrap();
    drop(lease);
    assert_eq!(registry.evict_all_idle(), 1);
    let reported = unspent
        .try_recv()
        .expect("a retired leased actor is reported");
    assert_eq!(
        (reported.key_id, reported.lease_id, reported.amount),
        (key, lease_id, amount(75))
    );
    assert_eq!(registry.leased_actors_started(), 1);
}

#[tokio::test]
async fn concurrent_first_calls_start_one_actor() {
    let loader = Arc::new(MemoryLoader::default());
    let key = loader.add(1_000, 0);
    let registry = registry(&loader, limits(1_000));
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (registry, key) = (registry.clone(), key.clone());
        calls.push(tokio::spawn(async move {
            let lease = registry.acquire(&key).await.unwrap();
            assert_eq!(lease.token_sha256(), format!("hash-of-{key}"));
            let request = RequestId::generate();
            lease
                .reserve(request.clone(), amount(10), amount(10), now_ms() + 10_000)
                .await
                .unwrap();
            lease.commit(request, amount(10)).await.unwrap().charged
        }));
    }
    let mut total = Amount::ZERO;
    for call in calls {
        total = total.checked_add(call.await.unwrap()).unwrap();
    }
    assert_eq!(
        loader.loads.load(Ordering::SeqCst),
        1,
        "one load, one actor"
    );
    assert_eq!(registry.loaded(), 1);
    // Had two actors been started, each would have counted only its share.
    let snapshot = registry
        .acquire(&key)
        .await
        .unwrap()
        .snapshot()
        .await
        .unwrap();
    assert_eq!((snapshot.spent, total), (amount(500), amount(500)));
}

#[tokio::test]
async fn ten_times_the_budget_in_concurrent_calls_never_overspends() {
    const K: u64 = 7;
    let loader = Arc::new(MemoryLoader::default());
    let key = loader.add(100 * K, 0);
    let registry = registry(&loader, limits(1_000));
    let mut calls = Vec::new();
    for _ in 0..10 * K {
        let (registry, key) = (registry.clone(), key.clone());
        calls.push(tokio::spawn(async move {
            let lease = registry.acquire(&key).await.unwrap();
            let request = RequestId::generate();
            match lease
                .reserve(request.clone(), amount(100), amount(100), now_ms() + 10_000)
                .await
            {
                Ok(reserved) => Some(lease.commit(request, reserved.held).await.unwrap().charged),
                Err(CallError::Reserve(ReserveError::InsufficientBudget { .. })) => None,
                Err(other) => panic!("{other:?}"),
            }
        }));
    }
    let mut charged = Vec::new();
    for call in calls {
        charged.extend(call.await.unwrap());
    }
    let total = charged
        .iter()
        .try_fold(Amount::ZERO, |sum, a| sum.checked_add(*a))
        .unwrap();
    assert_eq!(charged.len() as u64, K, "exactly K calls fit");
    assert_eq!(total, amount(100 * K));
}

#[tokio::test]
async fn calls_in_flight_are_bounded_per_key() {
    let loader = Arc::new(MemoryLoader::default());
    let key = loader.add(1_000, 0);
    let registry = registry(&loader, limits(3));
    let leases: Vec<_> = futures_leases(&registry, &key, 3).await;
    match registry.acquire(&key).await {
        Err(AcquireError::TooManyInFlight { max: 3 }) => {}
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a fourth call was let in"),
    }
    drop(leases);
    assert!(registry.acquire(&key).await.is_ok(), "freed on drop");
}

async fn futures_leases(
    registry: &Registry,
    key: &KeyId,
    n: usize,
) -> Vec<actors::registry::Lease> {
    let mut leases = Vec::new();
    for _ in 0..n {
        leases.push(registry.acquire(key).await.unwrap());
    }
    leases
}

#[tokio::test]
async fn revocation_reaches_a_running_actor_at_once() {
    let loader = Arc::new(MemoryLoader::default());
    let key = loader.add(1_000, 0);
    let registry = registry(&loader, limits(10));
    let lease = registry.acquire(&key).await.unwrap();
    let in_flight = RequestId::generate();
    lease
        .reserve(in_flight.clone(), amount(10), amount(1), now_ms() + 10_000)
        .await
        .unwrap();
    registry.revoke(&key, BudgetStatus::Superseded).await;
    assert_eq!(
        lease
            .reserve(
                RequestId::generate(),
                amount(1),
                amount(1),
                now_ms() + 10_000
            )
            .await,
        Err(CallError::Reserve(ReserveError::Superseded))
    );
    // The call already in flight still commits what it cost.
    assert_eq!(
        lease.commit(in_flight, amount(4)).await.unwrap().spent,
        amount(4)
    );
    // Revoking a key with no actor starts nothing.
    let other = loader.add(1_000, 0);
    registry.revoke(&other, BudgetStatus::Revoked).await;
    assert_eq!(registry.loaded(), 1);
}

#[tokio::test]
async fn idle_actors_are_evicted_and_reload_their_state() {
    let loader = Arc::new(MemoryLoader::default());
    let key = loader.add(1_000, 100);
    let registry = registry(
        &loader,
        RegistryLimits {
            idle_ms: 0,
            ..limits(10)
        },
    );
    let lease = registry.acquire(&key).await.unwrap();
    assert_eq!(registry.evict_idle(), 0, "a key in use is never evicted");
    drop(lease);
    assert_eq!(registry.evict_idle(), 1);
    assert_eq!(registry.loaded(), 0);
    // The store moved on meanwhile (another writer recorded spend).
    loader.keys.lock().unwrap().get_mut(&key).unwrap().spent = amount(600);
    let snapshot = registry
        .acquire(&key)
        .await
        .unwrap()
        .snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.spent, amount(600));
    assert_eq!(loader.loads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unknown_keys_are_refused_and_not_remembered() {
    let loader = Arc::new(MemoryLoader::default());
    let registry = registry(&loader, limits(10));
    let missing = KeyId::generate();
    assert!(matches!(
        registry.acquire(&missing).await,
        Err(AcquireError::UnknownKey)
    ));
    assert_eq!(registry.loaded(), 0);
    let full = Registry::start(
        loader.clone(),
        RegistryLimits {
            loaded_keys_max: 1,
            ..limits(10)
        },
        1,
    )
    .unwrap();
    let (a, b) = (loader.add(10, 0), loader.add(10, 0));
    let _held = full.acquire(&a).await.unwrap();
    assert!(matches!(
        full.acquire(&b).await,
        Err(AcquireError::Full { max: 1 })
    ));
}

#[tokio::test]
async fn stale_actors_are_reloaded_once_nothing_is_in_flight() {
    let loader = Arc::new(MemoryLoader::default());
    let key = loader.add(1_000, 0);
    let registry = registry(&loader, limits(10));
    let first = registry.acquire(&key).await.unwrap();
    let second = registry.acquire(&key).await.unwrap();
    first.mark_stale();
    drop(first);
    // The store moved on; a call still in flight keeps the old actor.
    loader.keys.lock().unwrap().get_mut(&key).unwrap().spent = amount(700);
    let third = registry.acquire(&key).await.unwrap();
    assert_eq!(third.snapshot().await.unwrap().spent, Amount::ZERO);
    drop((second, third));
    // Nothing in flight now: the next call gets a fresh load.
    let fresh = registry.acquire(&key).await.unwrap();
    assert_eq!(fresh.snapshot().await.unwrap().spent, amount(700));
    assert_eq!(loader.loads.load(Ordering::SeqCst), 2);
    assert_eq!(registry.loaded(), 1);
}

/// A failed assertion panics the key's actor: every call on it fails (none
/// is charged on the dead actor), and once no call is in flight the key is
/// loaded afresh from the store, whose figures bound it from then on.
#[tokio::test]
async fn a_panicked_actor_fails_its_calls_and_the_key_reloads_from_the_store() {
    let loader = Arc::new(MemoryLoader::default());
    let key = loader.add(100, 0);
    let registry = registry(&loader, limits(10));
    let deadline = now_ms() + 10_000;
    let in_flight = registry.acquire(&key).await.unwrap();
    let request = RequestId::generate();
    in_flight
        .reserve(request.clone(), amount(30), amount(30), deadline)
        .await
        .unwrap();
    let crashing = registry.acquire(&key).await.unwrap();
    assert_eq!(crashing.panic_actor().await, Err(CallError::Unavailable));
    drop(crashing);
    // The call in flight cannot commit on the dead actor.
    assert_eq!(
        in_flight.commit(request, amount(30)).await.unwrap_err(),
        CallError::Unavailable
    );
    // While a call is in flight on it, the dead actor stays and refuses.
    let meanwhile = registry.acquire(&key).await.unwrap();
    assert_eq!(
        meanwhile
            .reserve(RequestId::generate(), amount(1), amount(1), deadline)
            .await
            .unwrap_err(),
        CallError::Unavailable
    );
    assert_eq!(loader.loads.load(Ordering::SeqCst), 1);
    drop((in_flight, meanwhile));
    // The store has the charge the call wrote before its commit failed.
    loader.keys.lock().unwrap().get_mut(&key).unwrap().spent = amount(30);
    let fresh = registry.acquire(&key).await.unwrap();
    assert_eq!(loader.loads.load(Ordering::SeqCst), 2, "a fresh load");
    assert_eq!(registry.loaded(), 1);
    let snapshot = fresh.snapshot().await.unwrap();
    assert_eq!((snapshot.spent, snapshot.held), (amount(30), Amount::ZERO));
    // Spendable up to the limit the store leaves, and not past it.
    let reserved = fresh
        .reserve(RequestId::generate(), amount(70), amount(70), deadline)
        .await
        .unwrap();
    assert_eq!(reserved.held, amount(70));
    assert_eq!(
        fresh
            .reserve(RequestId::generate(), amount(1), amount(1), deadline)
            .await
            .unwrap_err(),
        CallError::Reserve(ReserveError::InsufficientBudget {
            remaining: Amount::ZERO,
            minimum: amount(1)
        })
    );
}

#[tokio::test]
async fn a_fence_reports_calls_in_flight_and_holds_new_ones_back() {
    let loader = Arc::new(MemoryLoader::default());
    let key = loader.add(1_000, 0);
    let registry = registry(&loader, limits(10));
    let running = registry.acquire(&key).await.unwrap();
    let fence = registry.fence(&key).await;
    assert!(!fence.drained, "a call is in flight");
    let waiting = {
        let (registry, key) = (registry.clone(), key.clone());
        tokio::spawn(async move { registry.acquire(&key).await.map(|_| ()) })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "no new lease while the fence stands"
    );
    drop(running);
    drop(fence);
    waiting.await.unwrap().unwrap();
    // Nothing in flight now: a new fence says so.
    assert!(registry.fence(&key).await.drained);
}

#[tokio::test]
async fn a_revoked_key_is_reported_drained_when_its_last_call_ends() {
    let loader = Arc::new(MemoryLoader::default());
    let (busy, idle) = (loader.add(1_000, 0), loader.add(1_000, 0));
    let registry = registry(&loader, limits(10));
    let mut drained = registry.drained_keys().unwrap();
    assert!(registry.drained_keys().is_none(), "taken once");
    let lease = registry.acquire(&busy).await.unwrap();
    lease
        .reserve(
            RequestId::generate(),
            amount(10),
            amount(1),
            now_ms() + 60_000,
        )
        .await
        .unwrap();
    drop(registry.acquire(&idle).await.unwrap());
    assert!(
        registry.revoke(&idle, BudgetStatus::Revoked).await,
        "nothing in flight"
    );
    assert!(!registry.revoke(&busy, BudgetStatus::Revoked).await);
    assert!(
        drained.try_recv().is_err(),
        "not drained while the call runs"
    );
    drop(lease);
    let reported = tokio::time::timeout(std::time::Duration::from_secs(1), drained.recv())
        .await
        .unwrap();
    assert_eq!(reported, Some(busy));
    assert!(
        drained.try_recv().is_err(),
        "reported once; idle was answered directly"
    );
}

#[tokio::test]
async fn a_full_registry_evicts_its_least_recently_used_idle_actor() {
    let loader = Arc::new(MemoryLoader::default());
    let registry = registry(
        &loader,
        RegistryLimits {
            loaded_keys_max: 2,
            ..limits(10)
        },
    );
    let (a, b, c) = (loader.add(10, 0), loader.add(10, 0), loader.add(10, 0));
    drop(registry.acquire(&a).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let busy = registry.acquire(&b).await.unwrap();
    drop(registry.acquire(&c).await.unwrap());
    assert_eq!(registry.loaded(), 2);
    assert!(
        !registry.is_loaded(&a),
        "the idle, least recently used one went"
    );
    assert!(registry.is_loaded(&b) && registry.is_loaded(&c));
    drop(busy);
}

#[tokio::test]
async fn keys_that_cannot_spend_get_no_actor() {
    let loader = Arc::new(MemoryLoader::default());
    let spent = loader.add(10, 10);
    let registry = registry(&loader, limits(10));
    for _ in 0..3 {
        assert!(matches!(
            registry.acquire(&spent).await,
            Err(AcquireError::CannotSpend(state)) if state.spent == state.limit
        ));
    }
    assert_eq!(registry.loaded(), 0);
    assert_eq!(
        loader.loads.load(Ordering::SeqCst),
        1,
        "a key that cannot spend is read once, then answered from memory"
    );
    assert_eq!(
        registry.loaded_token_sha256(&spent).as_deref(),
        Some(format!("hash-of-{spent}").as_str()),
        "its token is proven by hash, not by a signature check"
    );
    // Concurrent first calls on another such key: one load, not one each
    // (callers queued behind a refused load are answered from memory).
    let revoked = loader.add(10, 0);
    loader
        .keys
        .lock()
        .unwrap()
        .get_mut(&revoked)
        .unwrap()
        .status = BudgetStatus::Revoked;
    let before = loader.loads.load(Ordering::SeqCst);
    let calls = (0..10).map(|_| registry.acquire(&revoked));
    for result in futures_util::future::join_all(calls).await {
        assert!(matches!(result, Err(AcquireError::CannotSpend(_))));
    }
    assert_eq!(loader.loads.load(Ordering::SeqCst) - before, 1);
}

/// Invariant 7's foundation under concurrency: once a fence reports a key
/// drained, no call on that key can reserve (and so charge) anything — with
/// many callers racing the fence and the revocation that follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_reserved_after_a_drained_fence() {
    use std::sync::atomic::AtomicBool;
    for round in 0..20 {
        let loader = Arc::new(MemoryLoader::default());
        let key = loader.add(1_000_000, 0);
        let registry = registry(&loader, limits(64));
        let fenced_drained = Arc::new(AtomicBool::new(false));
        let late_reserves = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let (registry, key) = (registry.clone(), key.clone());
                let (fenced_drained, late) = (fenced_drained.clone(), late_reserves.clone());
                tokio::spawn(async move {
                    for _ in 0..50 {
                        let Ok(lease) = registry.acquire(&key).await else {
                            continue;
                        };
                        let reserved = lease
                            .reserve(
                                RequestId::generate(),
                                amount(1),
                                amount(1),
                                now_ms() + 60_000,
                            )
                            .await;
                        if reserved.is_ok() {
                            // A hold taken after the key was reported drained
                            // would be a charge nobody counted.
                            if fenced_drained.load(Ordering::SeqCst) {
                                late.fetch_add(1, Ordering::SeqCst);
                            }
                            tokio::task::yield_now().await;
                        }
                        drop(lease);
                    }
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(round % 5)).await;
        // Fence until no call is in flight; then, as stop_keys does, the
        // store records the revocation and the actor is told, all before the
        // fence falls (a caller that loads the key later reads it revoked).
        loop {
            let fence = registry.fence(&key).await;
            if fence.drained {
                fenced_drained.store(true, Ordering::SeqCst);
                loader.keys.lock().unwrap().get_mut(&key).unwrap().status = BudgetStatus::Revoked;
                assert!(registry.revoke(&key, BudgetStatus::Revoked).await);
                drop(fence);
                break;
            }
            drop(fence);
            tokio::task::yield_now().await;
        }
        for caller in callers {
            caller.await.unwrap();
        }
        assert_eq!(
            late_reserves.load(Ordering::SeqCst),
            0,
            "round {round}: a hold was taken after the key was reported drained"
        );
    }
}
