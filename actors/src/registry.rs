//! [`Registry`]: finds or starts the one [`KeyActor`] of a key, spreads actors
//! over the [`ArbiterPool`], bounds the calls in flight per key, stops idle
//! actors, and routes revocations to a running actor at once.
//!
//! # Concurrency
//!
//! The registry's map (sharded, `std::sync::Mutex` per shard) guards only
//! *which actor serves a key*, never budget state: that lives inside the
//! actor. A shard lock is held for a hash-map lookup and one atomic
//! increment, never across an `.await`.
//!
//! *Invariant: at most one actor per key.* A key's slot is a
//! [`tokio::sync::OnceCell`], so concurrent first calls wait for one load.
//! A [`Lease`] is taken (the key's in-flight counter incremented) under the
//! shard lock, and eviction removes a slot under the same lock only when that
//! counter is zero — so no call can hold a lease on an evicted actor, and a
//! key's next actor is loaded only after its previous one finished all work.
//! An actor that died (a failed assertion panics it) is replaced the same
//! way: its calls fail, and the first acquire once none is in flight loads
//! the key afresh from the store — stricter, never looser.
//!
//! Actors load their state through a [`KeyLoader`] (the store, in the
//! binary); this crate does no I/O of its own. A key that cannot spend
//! (revoked, expired, or nothing left) is answered from its load and never
//! occupies an actor slot; at `loaded_keys_max` the (approximately) least recently used idle
//! actor makes room.
//!
//! # Fences and drains (invariant 7)
//!
//! Every charge is written while its call holds a [`Lease`] ([`crate::lease`]),
//! so a key with no lease out can never spend again until a new lease is
//! taken. [`Registry::fence`]
//! stops new leases on a key (callers wait) and reports whether any is out:
//! the store may then free the key's unspent budget in the same transaction
//! that revokes it. A revoked key whose calls were still running is reported
//! on [`Registry::drained_keys`] when its last lease ends, so the binary can
//! free its budget then.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use actix::prelude::{Actor, Arbiter, ArbiterHandle};
use ledger::time::now_ms;
use ledger::{Amount, ChainId, KeyId, LeaseId, WalletAddress};
use tokio::sync::{mpsc, OnceCell};

use crate::arbiters::{ArbiterError, ArbiterPool};
use crate::budget::{Budget, BudgetStatus};
use crate::key_actor::{KeyActor, Unspent};
use crate::lease::{FenceLock, FenceSite, KeyEntry};
use crate::messages::{Revoke, Stop};

pub use crate::lease::{CallError, Fence, Lease};

/// Shards of the key map: enough that two cores rarely meet on one lock.
const SHARDS: usize = 64;

/// A key's state as the store knows it, for starting its actor.
#[derive(Debug, Clone)]
pub struct KeyState {
    pub limit: Amount,
    /// What the ledger has recorded as spent.
    pub spent: Amount,
    pub status: BudgetStatus,
    pub expires_at_ms: i64,
    /// SHA-256 (lower-case hex) of the key's token, for the caller to compare.
    pub token_sha256: String,
    /// The budget lease this actor spends from: it starts with
    /// no allowance and grows by [`Lease::grant`]; on stop, what it did not
    /// spend is reported on [`Registry::unspent_leases`]. `None`: the actor
    /// may spend all the key has left (one node alone; tests, benchmarks).
    pub lease: Option<LeaseId>,
    /// The key's wallet and chain (the payer of its charges), when known.
    pub payer: Option<(WalletAddress, ChainId)>,
}

impl KeyState {
    /// Whether a call could spend anything: active, unexpired, budget left.
    /// A key that cannot is answered from this state and gets no actor.
    pub fn can_spend(&self, now_ms: i64) -> bool {
        self.status == BudgetStatus::Active
            && self.expires_at_ms > now_ms
            && self.spent < self.limit
    }
}

/// Why loading a key failed (the store is down, say).
#[derive(Debug, Clone, thiserror::Error)]
#[error("loading the key failed: {0}")]
pub struct LoadError(pub String);

/// What [`KeyLoader::load`] returns.
pub type LoadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<KeyState>, LoadError>> + Send + 'a>>;

/// Where actors get their starting state: `Ok(None)` for an unknown key.
pub trait KeyLoader: Send + Sync + 'static {
    fn load<'a>(&'a self, key: &'a KeyId) -> LoadFuture<'a>;
}

/// The registry's bounds.
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    /// Calls one key may have in flight; more are refused (429), because an
    /// actix mailbox does not bound `send`.
    pub in_flight_per_key_max: u32,
    /// Actors alive at once; past it the least recently used idle actor is
    /// stopped to make room, and only when every actor has a call in flight
    /// is a new key refused (503). Bounds memory.
    pub loaded_keys_max: usize,
    /// An actor with nothing in flight for this long is stopped.
    pub idle_ms: i64,
    /// How often idle actors are looked for.
    pub idle_sweep_ms: u64,
}

/// Where a key's actor is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Round-robin over the registry's own arbiters.
    Pool,
    /// On the arbiter of the call that starts it, when that call runs on
    /// one (actix-web's workers are arbiters, one per core), so its messages
    /// from that worker never cross threads; otherwise round-robin.
    Caller,
}

/// Why no lease could be taken on a key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcquireError {
    #[error("no such key")]
    UnknownKey,
    /// The key is revoked, superseded, expired or has nothing left to spend:
    /// answered from its stored state, without starting an actor.
    #[error("the key cannot spend")]
    CannotSpend(KeyState),
    #[error("the key already has {max} calls in flight")]
    TooManyInFlight { max: u32 },
    #[error("the gateway serves {max} keys at once already")]
    Full { max: usize },
    #[error(transparent)]
    Load(#[from] LoadError),
}

type Slot = Arc<OnceCell<Arc<KeyEntry>>>;

/// One shard of the key map: which actor serves a key, and which keys are
/// fenced (no new leases) while a revocation is being decided.
#[derive(Default)]
struct Shard {
    slots: HashMap<KeyId, Slot, RandomState>,
    fences: HashMap<KeyId, FenceLock, RandomState>,
    /// Keys whose load said they cannot spend. That is final — a key's limit
    /// never changes, its spend only grows, revocation and expiry are for
    /// good — so they are answered from here, with no store read again.
    refused: HashMap<KeyId, KeyState, RandomState>,
}

/// Shards searched for an idle actor to evict at capacity (approximate LRU).
const LRU_SAMPLE_SHARDS: usize = 4;

/// Refused keys remembered per shard; a full shard forgets them all.
const REFUSED_PER_SHARD_MAX: usize = 2_048;

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a key's shard. Seeded, fast: key ids are ours (UUIDv7), and a
    /// caller reaches the map only with a token that names a real key.
    hasher: RandomState,
    loaded: AtomicUsize,
    /// Round-robin over the arbiter pool for new actors.
    next_arbiter: AtomicUsize,
    /// Rotating first shard of the eviction search.
    lru_start: AtomicUsize,
    loader: Arc<dyn KeyLoader>,
    limits: RegistryLimits,
    /// Holds released by their deadline (each one a call that neither
    /// committed nor released), counted by the actors; the metrics of the
    /// operations issue export it.
    expired_holds: Arc<AtomicU64>,
    pool: ArbiterPool,
    placement: Placement,
    drained_tx: mpsc::UnboundedSender<KeyId>,
    drained_rx: Mutex<Option<mpsc::UnboundedReceiver<KeyId>>>,
    unspent_tx: mpsc::UnboundedSender<Unspent>,
    unspent_rx: Mutex<Option<mpsc::UnboundedReceiver<Unspent>>>,
    /// Leased actors started: each reports one [`Unspent`] when it stops.
    leased_started: AtomicU64,
}

/// The key actors of one gateway process. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// Starts `arbiters` arbiters (one per core is the intent) and the idle
    /// sweep; actors go round-robin over the arbiters.
    pub fn start(
        loader: Arc<dyn KeyLoader>,
        limits: RegistryLimits,
        arbiters: usize,
    ) -> Result<Registry, ArbiterError> {
        Registry::start_with(loader, limits, arbiters, Placement::Pool)
    }

    /// As [`Registry::start`], with the actors placed as `placement` says.
    pub fn start_with(
        loader: Arc<dyn KeyLoader>,
        limits: RegistryLimits,
        arbiters: usize,
        placement: Placement,
    ) -> Result<Registry, ArbiterError> {
        let pool = ArbiterPool::start(arbiters)?;
        let (drained_tx, drained_rx) = mpsc::unbounded_channel();
        let (unspent_tx, unspent_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            loaded: AtomicUsize::new(0),
            next_arbiter: AtomicUsize::new(0),
            lru_start: AtomicUsize::new(0),
            loader,
            limits,
            expired_holds: Arc::new(AtomicU64::new(0)),
            pool,
            placement,
            drained_tx,
            drained_rx: Mutex::new(Some(drained_rx)),
            unspent_tx,
            unspent_rx: Mutex::new(Some(unspent_rx)),
            leased_started: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&inner);
        let sweep = Duration::from_millis(limits.idle_sweep_ms.max(1));
        if let Some(first) = inner.pool.handles().first() {
            first.spawn(sweep_idle(weak, sweep));
        }
        Ok(Registry { inner })
    }

    /// A lease on `key`'s actor, starting the actor from the store on first
    /// use. Refused when the key has too many calls in flight or cannot
    /// spend; waits while the key is fenced.
    pub async fn acquire(&self, key: &KeyId) -> Result<Lease, AcquireError> {
        loop {
            let step = {
                let mut shard = self.inner.shard(key);
                if let Some(fence) = shard.fences.get(key) {
                    Step::Wait(fence.clone())
                } else if let Some(state) = shard.refused.get(key) {
                    return Err(AcquireError::CannotSpend(state.clone()));
                } else {
                    let replace = shard
                        .slots
                        .get(key)
                        .and_then(|slot| slot.get())
                        .is_some_and(|entry| entry.replaceable());
                    if replace {
                        // Under the lock and with no lease out: safe to replace.
                        if let Some(entry) = shard.slots.remove(key).as_ref().and_then(|s| s.get())
                        {
                            self.inner.retire(entry);
                        }
                        self.inner.loaded.fetch_sub(1, Ordering::Relaxed);
                    }
                    match shard.slots.get(key) {
                        Some(slot) => match slot.get() {
                            Some(entry) => return self.inner.enter(entry),
                            None => Step::Load(slot.clone()),
                        },
                        None if self.inner.loaded.load(Ordering::Relaxed)
                            >= self.inner.limits.loaded_keys_max =>
                        {
                            Step::MakeRoom
                        }
                        None => {
                            let slot = Slot::default();
                            shard.slots.insert(key.clone(), slot.clone());
                            self.inner.loaded.fetch_add(1, Ordering::Relaxed);
                            Step::Load(slot)
                        }
                    }
                }
            };
            match step {
                // The fence's holder decides the key's fate; then look again.
                Step::Wait(fence) => drop(fence.lock().await),
                Step::MakeRoom => {
                    if !self.inner.evict_least_recently_used() {
                        let max = self.inner.limits.loaded_keys_max;
                        return Err(AcquireError::Full { max });
                    }
                }
                // Loaded outside the lock; the next turn takes the lease under it.
                Step::Load(slot) => {
                    self.inner.init(key, &slot).await?;
                }
            }
        }
    }

    /// Stops new leases on `key` until the returned [`Fence`] is dropped
    /// (callers of [`Registry::acquire`] wait), and says whether any lease is
    /// out: when none is, no charge on the key can be written while the
    /// fence stands, so its unspent budget may be freed at once.
    pub async fn fence(&self, key: &KeyId) -> Fence {
        loop {
            let other = {
                let mut shard = self.inner.shard(key);
                match shard.fences.get(key) {
                    Some(other) => other.clone(),
                    None => {
                        let lock = FenceLock::default();
                        // A new mutex: locking it cannot fail or wait.
                        let Ok(guard) = lock.clone().try_lock_owned() else {
                            continue;
                        };
                        shard.fences.insert(key.clone(), lock.clone());
                        let in_flight = shard
                            .slots
                            .get(key)
                            .and_then(|slot| slot.get())
                            .map_or(0, |entry| entry.in_flight.load(Ordering::SeqCst));
                        // A load in progress holds no lease yet, and takes its
                        // first one under the shard lock: it will wait.
                        let site: Arc<dyn FenceSite> = self.inner.clone();
                        return Fence::new(site, key.clone(), (lock, guard), in_flight == 0);
                    }
                }
            };
            // Another fence on the same key: wait for it to fall.
            drop(other.lock().await);
        }
    }

    /// Revoked keys whose last call in flight has ended since their
    /// revocation reached the actor: their unspent budget may be freed.
    /// Taken once (the binary's drain task); later calls get `None`.
    pub fn drained_keys(&self) -> Option<mpsc::UnboundedReceiver<KeyId>> {
        self.inner
            .drained_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// What retired actors (evicted idle, replaced, or stopped at shutdown)
    /// did not spend of their budget leases, for the binary to return to the
    /// store. Taken once; later calls get `None`.
    pub fn unspent_leases(&self) -> Option<mpsc::UnboundedReceiver<Unspent>> {
        self.inner
            .unspent_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// How many actors with a budget lease were started; each is reported
    /// once as [`Unspent`] when retired, so shutdown knows when all are.
    pub fn leased_actors_started(&self) -> u64 {
        self.inner.leased_started.load(Ordering::SeqCst)
    }

    /// Pushes a revocation (or supersession) to `key`'s actor if one is
    /// running or starting, so the key's next call is refused. A key with no
    /// actor needs nothing: its next actor loads the stored status.
    ///
    /// Returns whether the key is drained: no call is in flight on it, so
    /// none can charge it any more. Otherwise the key is reported on
    /// [`Registry::drained_keys`] when its last call ends.
    pub async fn revoke(&self, key: &KeyId, status: BudgetStatus) -> bool {
        let slot = self.inner.shard(key).slots.get(key).cloned();
        let Some(slot) = slot else { return true };
        // A load in progress may have read the row before the revocation was
        // stored: wait for it, then tell the actor anyway.
        let Ok(entry) = self.inner.init(key, &slot).await else {
            return true;
        };
        if entry.addr.send(Revoke { status }).await.is_err() {
            // A dead actor can take no hold and commit no charge.
            tracing::warn!(key_id = %key, "revocation could not reach the key's actor");
        }
        // From here the actor refuses new holds. Either this sees no lease
        // out, or the last lease's drop sees `revoked` (both SeqCst).
        entry.revoked.store(true, Ordering::SeqCst);
        if entry.in_flight.load(Ordering::SeqCst) == 0 {
            return entry.report_drained();
        }
        false
    }

    /// Whether `key`'s actor is running (started and not evicted).
    pub fn is_loaded(&self, key: &KeyId) -> bool {
        self.inner
            .shard(key)
            .slots
            .get(key)
            .is_some_and(|slot| slot.get().is_some())
    }

    /// Marks `key`'s actor (if running) as out of step with the store: its
    /// next call, once nothing is in flight on it, gets a fresh load.
    pub fn reload(&self, key: &KeyId) {
        if let Some(entry) = self.inner.shard(key).slots.get(key).and_then(|s| s.get()) {
            entry.stale.store(true, Ordering::Release);
        }
    }

    /// The stored token hash of `key` if its actor is running: the paid path
    /// proves a token against it before reading anything else.
    pub fn loaded_token_sha256(&self, key: &KeyId) -> Option<String> {
        let shard = self.inner.shard(key);
        shard
            .slots
            .get(key)
            .and_then(|slot| slot.get())
            .map(|entry| entry.token_sha256.clone())
            .or_else(|| {
                shard
                    .refused
                    .get(key)
                    .map(|state| state.token_sha256.clone())
            })
    }

    /// Leases out across every key: calls between their hold and their
    /// charge. Every charge is written under a lease, so zero means no
    /// charge is on its way to the store (shutdown waits for it).
    pub fn calls_in_flight(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|shard| {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                shard
                    .slots
                    .values()
                    .filter_map(|slot| slot.get())
                    .map(|entry| u64::from(entry.in_flight.load(Ordering::Acquire)))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Holds released by their deadline so far (never committed or released).
    pub fn expired_holds(&self) -> u64 {
        self.inner.expired_holds.load(Ordering::Relaxed)
    }

    /// Actors alive now.
    pub fn loaded(&self) -> usize {
        self.inner.loaded.load(Ordering::Relaxed)
    }

    /// The arbiters the actors run on (benchmarks run callers there too).
    pub fn arbiters(&self) -> &[ArbiterHandle] {
        self.inner.pool.handles()
    }

    /// Stops idle actors now rather than at the next sweep; returns how many.
    pub fn evict_idle(&self) -> usize {
        self.inner.evict_idle(now_ms(), self.inner.limits.idle_ms)
    }

    /// Stops every actor with nothing in flight (shutdown: their unspent
    /// leases go back); returns how many.
    pub fn evict_all_idle(&self) -> usize {
        self.inner.evict_idle(now_ms(), 0)
    }
}

impl Inner {
    /// Stops a removed entry's actor and reports what it did not spend of
    /// its lease. Called with nothing in flight on it (under its shard's
    /// lock), so every commit and release has been answered and the
    /// published figure is final — whether or not the actor's arbiter still
    /// runs.
    fn retire(&self, entry: &KeyEntry) {
        entry.addr.do_send(Stop);
        if let Some((lease_id, unspent)) = &entry.lease {
            let amount =
                Amount::from_atomic(unspent.load(Ordering::Acquire)).unwrap_or(Amount::ZERO);
            // The receiver is gone only when the process is ending: the
            // lease then waits for `leases.grace_ms` (stricter, never looser).
            let _ = self.unspent_tx.send(Unspent {
                key_id: entry.key.clone(),
                lease_id: lease_id.clone(),
                amount,
            });
        }
    }

    fn shard(&self, key: &KeyId) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // A poisoned shard only means a panic elsewhere mid-lookup; the map
        // itself is still consistent (no user code runs under the lock).
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a lease; called with the key's shard locked.
    fn enter(&self, entry: &Arc<KeyEntry>) -> Result<Lease, AcquireError> {
        let max = self.limits.in_flight_per_key_max;
        if entry.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
            entry.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(AcquireError::TooManyInFlight { max });
        }
        entry.last_used_ms.store(now_ms(), Ordering::Relaxed);
        Ok(Lease::new(entry.clone()))
    }

    /// Loads the key and starts its actor once; on failure (a key that
    /// cannot spend included) forgets the slot so the next call tries again.
    async fn init(&self, key: &KeyId, slot: &Slot) -> Result<Arc<KeyEntry>, AcquireError> {
        let result = slot
            .get_or_try_init(|| async {
                // Callers queued behind a load that found the key refused
                // retry the init one after another: answer them from the
                // refused cache instead of loading the key again each.
                if let Some(state) = self.shard(key).refused.get(key).cloned() {
                    return Err(AcquireError::CannotSpend(state));
                }
                let state = self
                    .loader
                    .load(key)
                    .await?
                    .ok_or(AcquireError::UnknownKey)?;
                if !state.can_spend(now_ms()) {
                    let mut shard = self.shard(key);
                    if shard.refused.len() >= REFUSED_PER_SHARD_MAX {
                        shard.refused.clear();
                    }
                    shard.refused.insert(key.clone(), state.clone());
                    return Err(AcquireError::CannotSpend(state));
                }
                Ok::<_, AcquireError>(Arc::new(self.start_actor(key, state)))
            })
            .await
            .cloned();
        if result.is_err() {
            let mut shard = self.shard(key);
            if shard
                .slots
                .get(key)
                .is_some_and(|s| Arc::ptr_eq(s, slot) && s.get().is_none())
            {
                shard.slots.remove(key);
                self.loaded.fetch_sub(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Stops the idle actor (nothing in flight) used least recently, to make
    /// room for a new key. False when every actor has a call in flight.
    fn evict_least_recently_used(&self) -> bool {
        // Approximate LRU, bounded work: the oldest idle actor of a few
        // shards (starting one shard further than the last search), all
        // shards only when those hold none — a full registry does not scan
        // every actor on every new key.
        let start = self.lru_start.fetch_add(1, Ordering::Relaxed);
        let mut oldest: Option<(i64, usize, Arc<KeyEntry>)> = None;
        for step in 0..self.shards.len() {
            if step >= LRU_SAMPLE_SHARDS && oldest.is_some() {
                break;
            }
            let index = (start + step) % self.shards.len();
            let shard = self.shards[index].lock().unwrap_or_else(|p| p.into_inner());
            for entry in shard.slots.values().filter_map(|slot| slot.get()) {
                if entry.in_flight.load(Ordering::Acquire) > 0 {
                    continue;
                }
                let used = entry.last_used_ms.load(Ordering::Relaxed);
                if oldest.as_ref().is_none_or(|(at, _, _)| used < *at) {
                    oldest = Some((used, index, entry.clone()));
                }
            }
        }
        let Some((_, index, victim)) = oldest else {
            return false;
        };
        let mut shard = self.shards[index].lock().unwrap_or_else(|p| p.into_inner());
        // Still idle and still the key's actor? Then it goes, under the lock.
        let current = shard
            .slots
            .get(&victim.key)
            .and_then(|slot| slot.get())
            .is_some_and(|entry| Arc::ptr_eq(entry, &victim));
        if !current || victim.in_flight.load(Ordering::Acquire) > 0 {
            return true; // the map changed under us: look again
        }
        shard.slots.remove(&victim.key);
        self.retire(&victim);
        self.loaded.fetch_sub(1, Ordering::Relaxed);
        true
    }

    fn start_actor(&self, key: &KeyId, state: KeyState) -> KeyEntry {
        let leased = state
            .lease
            .clone()
            .map(|lease| (lease, Arc::new(AtomicU64::new(0))));
        let actor = match &leased {
            Some((_, unspent)) => {
                self.leased_started.fetch_add(1, Ordering::SeqCst);
                let budget =
                    Budget::leased(state.limit, state.spent, state.status, state.expires_at_ms);
                KeyActor::new(key.clone(), budget, self.expired_holds.clone())
                    .with_unspent(unspent.clone())
            }
            None => {
                let budget =
                    Budget::new(state.limit, state.spent, state.status, state.expires_at_ms);
                KeyActor::new(key.clone(), budget, self.expired_holds.clone())
            }
        };
        let caller = match self.placement {
            Placement::Caller => Arbiter::try_current(),
            Placement::Pool => None,
        };
        let handles = self.pool.handles();
        let index = self.next_arbiter.fetch_add(1, Ordering::Relaxed) % handles.len().max(1);
        let addr = match caller.as_ref().or(handles.get(index)) {
            Some(arbiter) => KeyActor::start_in_arbiter(arbiter, |_| actor),
            None => actor.start(),
        };
        KeyEntry {
            key: key.clone(),
            addr,
            token_sha256: state.token_sha256,
            in_flight: AtomicU32::new(0),
            last_used_ms: AtomicI64::new(now_ms()),
            stale: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            drain_reported: AtomicBool::new(false),
            drained: self.drained_tx.clone(),
            lease: leased,
            top_up: Arc::default(),
            payer: state.payer,
        }
    }

    fn evict_idle(&self, now: i64, idle_ms: i64) -> usize {
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.slots.retain(|_, slot| {
                let Some(entry) = slot.get() else { return true };
                let idle = now.saturating_sub(entry.last_used_ms.load(Ordering::Relaxed));
                if entry.in_flight.load(Ordering::Acquire) > 0 || idle < idle_ms {
                    return true;
                }
                // A lost Stop only leaves an unreachable actor.
                self.retire(entry);
                evicted += 1;
                false
            });
        }
        self.loaded.fetch_sub(evicted, Ordering::Relaxed);
        evicted
    }
}

impl FenceSite for Inner {
    fn take_down(&self, key: &KeyId, lock: &FenceLock) {
        let mut shard = self.shard(key);
        if shard
            .fences
            .get(key)
            .is_some_and(|standing| Arc::ptr_eq(standing, lock))
        {
            shard.fences.remove(key);
        }
    }
}

async fn sweep_idle(registry: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let evicted = inner.evict_idle(now_ms(), inner.limits.idle_ms);
        if evicted > 0 {
            tracing::debug!(evicted, "idle key actors stopped");
        }
    }
}

enum Step {
    Wait(FenceLock),
    MakeRoom,
    Load(Slot),
}
