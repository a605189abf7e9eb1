//! Key-actor throughput: reserve+commit **pairs per second**.
//!
//! One pair is what the paid path does per call: take a lease on the key
//! (`Registry::acquire`), `Lease::reserve` a hold for a fresh request id,
//! `Lease::commit` that same request id, drop the lease. Callers run on the
//! registry's own arbiters (as the key actors do), [`TASKS_PER_ARBITER`]
//! concurrent tasks per arbiter, each looping pairs; the time criterion
//! reports is per pair (`Throughput::Elements(1)`), so its `thrpt` figure is
//! pairs/s.
//!
//! Cases, all in one `cargo bench -p actors --bench reserve_commit` run:
//!
//! * `registry/10k_keys` — 10,000 keys with huge budgets, callers spread over them;
//! * `registry/hot_key` — every caller on one key (one actor, one thread);
//! * `bare_actix/hot_actor` — baseline: one trivial actix actor answering two
//!   no-op messages, called the same way (the cost of actix messaging alone);
//! * `atomic_counter` — baseline: a lock-free budget (`spent + held` in one
//!   `AtomicU64`, compare-exchange to reserve against the limit, `fetch_sub` /
//!   `fetch_add` to commit) driven from two threads.
//!
//! The machine is shared and noisy: compare ratios within one run. The run
//! ends by printing each registry case's pairs/s as a ratio to bare actix's
//! (issue 16's target: at least 0.6×), from criterion's estimates of this
//! run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use actix::prelude::{Actor, Addr, ArbiterHandle, Context, Handler, Message};
use actors::arbiters::ArbiterPool;
use actors::budget::BudgetStatus;
use actors::registry::{KeyLoader, KeyState, LoadFuture, Registry, RegistryLimits};
use criterion::{criterion_group, Criterion, Throughput};
use ledger::time::now_ms;
use ledger::{Amount, KeyId, RequestId};

/// Arbiters of the registry (and of the bare-actix pool): one per core.
const ARBITERS: usize = 2;
/// Concurrent caller tasks per arbiter, each looping pairs.
const TASKS_PER_ARBITER: usize = 64;
/// Keys of the spread-out case.
const KEYS: usize = 10_000;
/// A budget no run exhausts (each pair spends [`FINAL`]).
const LIMIT: u64 = 1_000_000_000_000_000_000;
const WANTED: u64 = 1_000;
const MINIMUM: u64 = 1;
const FINAL: u64 = 600;

fn amount(n: u64) -> Amount {
    Amount::from_atomic(n).unwrap()
}

/// An in-memory store: answers at once, never changes.
struct MemoryLoader {
    keys: HashMap<KeyId, KeyState>,
}

impl MemoryLoader {
    fn with_keys(count: usize) -> (Arc<MemoryLoader>, Arc<Vec<KeyId>>) {
        let ids: Vec<KeyId> = (0..count).map(|_| KeyId::generate()).collect();
        let keys = ids
            .iter()
            .map(|id| {
                let state = KeyState {
                    limit: amount(LIMIT),
                    spent: Amount::ZERO,
                    status: BudgetStatus::Active,
                    expires_at_ms: now_ms() + 24 * 3_600_000,
                    token_sha256: format!("hash-of-{id}"),
                    lease: None,
                    payer: None,
                };
                (id.clone(), state)
            })
            .collect();
        (Arc::new(MemoryLoader { keys }), Arc::new(ids))
    }
}

impl KeyLoader for MemoryLoader {
    fn load<'a>(&'a self, key: &'a KeyId) -> LoadFuture<'a> {
        Box::pin(async move { Ok(self.keys.get(key).cloned()) })
    }
}

/// Runs `TASKS_PER_ARBITER` tasks on each arbiter, `iters` pairs in all,
/// task `t` doing its share through `task(t, pairs)`; returns the wall time
/// from the first spawn to the last task's end.
fn run_on_arbiters<F, Fut>(arbiters: &[ArbiterHandle], iters: u64, task: F) -> Duration
where
    F: Fn(usize, u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks = arbiters.len() * TASKS_PER_ARBITER;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let start = Instant::now();
    for t in 0..tasks {
        let share = iters / tasks as u64 + u64::from((t as u64) < iters % tasks as u64);
        let work = task(t, share);
        let done = done_tx.clone();
        let spawned = arbiters[t % arbiters.len()].spawn(async move {
            work.await;
            done.send(()).unwrap();
        });
        assert!(spawned, "arbiter stopped");
    }
    drop(done_tx);
    for _ in 0..tasks {
        done_rx.recv().expect("a caller task panicked");
    }
    start.elapsed()
}

/// One call as the paid path makes it: lease, reserve, commit, drop the lease.
async fn pair(registry: &Registry, key: &KeyId) {
    let lease = registry.acquire(key).await.unwrap();
    let request = RequestId::generate();
    let deadline_ms = now_ms() + 60_000;
    lease
        .reserve(
            request.clone(),
            amount(WANTED),
            amount(MINIMUM),
            deadline_ms,
        )
        .await
        .unwrap();
    let committed = lease.commit(request, amount(FINAL)).await.unwrap();
    black_box(committed);
}

fn start_registry(keys: usize) -> (Registry, Arc<Vec<KeyId>>) {
    let (loader, ids) = MemoryLoader::with_keys(keys);
    let limits = RegistryLimits {
        in_flight_per_key_max: 100_000,
        loaded_keys_max: keys * 2,
        idle_ms: 24 * 3_600_000,
        idle_sweep_ms: 3_600_000,
    };
    let registry = Registry::start(loader, limits, ARBITERS).unwrap();
    // Start every actor before measuring: a first call's load is not the
    // steady state. The snapshot waits until the actor runs (an actor
    // dropped before its first poll would start during shutdown).
    let chunk = ids.len().div_ceil(ARBITERS * TASKS_PER_ARBITER);
    run_on_arbiters(registry.arbiters(), 0, |t, _| {
        let (registry, ids) = (registry.clone(), ids.clone());
        async move {
            for key in ids.iter().skip(t * chunk).take(chunk) {
                let lease = registry.acquire(key).await.unwrap();
                black_box(lease.snapshot().await.unwrap());
            }
        }
    });
    assert_eq!(registry.loaded(), keys);
    (registry, ids)
}

fn registry_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(1));

    let (registry, ids) = start_registry(KEYS);
    group.bench_function("10k_keys", |b| {
        b.iter_custom(|iters| {
            run_on_arbiters(registry.arbiters(), iters, |t, pairs| {
                let (registry, ids) = (registry.clone(), ids.clone());
                // Each task walks the keys from its own offset.
                let offset = t * (ids.len() / (ARBITERS * TASKS_PER_ARBITER));
                async move {
                    for i in 0..pairs as usize {
                        pair(&registry, &ids[(offset + i) % ids.len()]).await;
                    }
                }
            })
        })
    });
    drop(registry);

    let (registry, ids) = start_registry(1);
    group.bench_function("hot_key", |b| {
        b.iter_custom(|iters| {
            run_on_arbiters(registry.arbiters(), iters, |_, pairs| {
                let (registry, ids) = (registry.clone(), ids.clone());
                async move {
                    for _ in 0..pairs {
                        pair(&registry, &ids[0]).await;
                    }
                }
            })
        })
    });
    group.finish();
}

/// The baseline actor: no budget, no lease, a counter.
struct Counter(u64);

impl Actor for Counter {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "u64")]
struct Hold;

#[derive(Message)]
#[rtype(result = "u64")]
struct Settle;

impl Handler<Hold> for Counter {
    type Result = u64;

    fn handle(&mut self, _msg: Hold, _ctx: &mut Self::Context) -> u64 {
        self.0 += 1;
        self.0
    }
}

impl Handler<Settle> for Counter {
    type Result = u64;

    fn handle(&mut self, _msg: Settle, _ctx: &mut Self::Context) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn bare_actix_benches(c: &mut Criterion) {
    let pool = ArbiterPool::start(ARBITERS).unwrap();
    let addr: Addr<Counter> = Counter::start_in_arbiter(&pool.handles()[0], |_| Counter(0));
    let mut group = c.benchmark_group("bare_actix");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hot_actor", |b| {
        b.iter_custom(|iters| {
            run_on_arbiters(pool.handles(), iters, |_, pairs| {
                let addr = addr.clone();
                async move {
                    for _ in 0..pairs {
                        black_box(addr.send(Hold).await.unwrap());
                        black_box(addr.send(Settle).await.unwrap());
                    }
                }
            })
        })
    });
    group.finish();
}

/// The lock-free baseline: `used` is `spent + held`, `spent` what commits charged.
struct AtomicBudget {
    limit: u64,
    used: AtomicU64,
    spent: AtomicU64,
}

impl AtomicBudget {
    fn reserve(&self, wanted: u64, minimum: u64) -> Option<u64> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let hold = wanted.min(self.limit.saturating_sub(used));
            if hold < minimum {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + hold,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(hold),
                Err(now) => used = now,
            }
        }
    }

    fn commit(&self, hold: u64, final_amount: u64) -> u64 {
        let charged = final_amount.min(hold);
        self.used.fetch_sub(hold - charged, Ordering::AcqRel);
        self.spent.fetch_add(charged, Ordering::AcqRel);
        charged
    }
}

fn atomic_counter_bench(c: &mut Criterion) {
    const THREADS: u64 = 2;
    let budget = AtomicBudget {
        limit: LIMIT,
        used: AtomicU64::new(0),
        spent: AtomicU64::new(0),
    };
    let mut group = c.benchmark_group("atomic_counter");
    group.throughput(Throughput::Elements(1));
    group.bench_function("2_threads", |b| {
        b.iter_custom(|iters| {
            let budget = &budget;
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let pairs = iters / THREADS + u64::from(t < iters % THREADS);
                    s.spawn(move || {
                        for _ in 0..pairs {
                            let hold = budget.reserve(black_box(WANTED), MINIMUM).unwrap();
                            black_box(budget.commit(hold, black_box(FINAL)));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = registry_benches, bare_actix_benches, atomic_counter_bench
}
/// Criterion's mean time per pair of bench `id` in its latest run, in ns.
fn mean_ns(id: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    let path = target.join("criterion").join(id).join("new/estimates.json");
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["mean"]["point_estimate"].as_f64()
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let Some(bare) = mean_ns("bare_actix/hot_actor") else {
        return;
    };
    println!("issue 16: pairs/s ÷ bare actix's, this run (target ≥ 0.6×)");
    for case in ["registry/10k_keys", "registry/hot_key"] {
        if let Some(ns) = mean_ns(case) {
            let ratio = bare / ns;
            let verdict = if ratio >= 0.6 { "MET" } else { "MISSED" };
            println!("  {case}: {ratio:.2}× {verdict}");
        }
    }
}
