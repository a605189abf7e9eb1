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
//!
//! Actors load their state through a [`KeyLoader`] (the store, in the
//! binary); this crate does no I/O of its own.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use actix::prelude::{Actor, Addr, Arbiter, ArbiterHandle, MailboxError};
use ledger::time::now_ms;
use ledger::{Amount, KeyId, RequestId};
use tokio::sync::OnceCell;

use crate::arbiters::{ArbiterError, ArbiterPool};
use crate::budget::{
    Budget, BudgetSnapshot, BudgetStatus, Committed, ReserveError, Reserved, SettleError,
};
use crate::key_actor::KeyActor;
use crate::messages::{Commit, Release, Reserve, Revoke, Snapshot, Stop};

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
    /// Actors alive at once; past it new keys are refused (503) until idle
    /// ones are evicted. Bounds memory.
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
    #[error("the key already has {max} calls in flight")]
    TooManyInFlight { max: u32 },
    #[error("the gateway serves {max} keys at once already")]
    Full { max: usize },
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Why an actor call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    #[error(transparent)]
    Settle(#[from] SettleError),
    /// The actor is gone (it panicked); its key answers 503 until the
    /// registry replaces it, which happens once nothing is in flight on it.
    #[error("the key's actor is unavailable")]
    Unavailable,
}

impl From<MailboxError> for CallError {
    fn from(_: MailboxError) -> CallError {
        CallError::Unavailable
    }
}

/// One running actor and what the registry tracks of it.
struct KeyEntry {
    addr: Addr<KeyActor>,
    token_sha256: String,
    in_flight: AtomicU32,
    last_used_ms: AtomicI64,
    /// Set when the actor's state is known to disagree with the store: the
    /// next acquire with nothing in flight replaces it with a fresh load.
    stale: AtomicBool,
}

type Slot = Arc<OnceCell<Arc<KeyEntry>>>;

struct Inner {
    shards: Box<[Mutex<HashMap<KeyId, Slot>>]>,
    hasher: std::collections::hash_map::RandomState,
    loaded: AtomicUsize,
    next_arbiter: AtomicUsize,
    loader: Arc<dyn KeyLoader>,
    limits: RegistryLimits,
    expired_holds: Arc<AtomicU64>,
    pool: ArbiterPool,
    placement: Placement,
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
        let inner = Arc::new(Inner {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            loaded: AtomicUsize::new(0),
            next_arbiter: AtomicUsize::new(0),
            loader,
            limits,
            expired_holds: Arc::new(AtomicU64::new(0)),
            pool,
            placement,
        });
        let weak = Arc::downgrade(&inner);
        let sweep = Duration::from_millis(limits.idle_sweep_ms.max(1));
        if let Some(first) = inner.pool.handles().first() {
            first.spawn(sweep_idle(weak, sweep));
        }
        Ok(Registry { inner })
    }

    /// A lease on `key`'s actor, starting the actor from the store on first
    /// use. Refused when the key has too many calls in flight.
    pub async fn acquire(&self, key: &KeyId) -> Result<Lease, AcquireError> {
        loop {
            let slot = {
                let mut shard = self.inner.shard(key);
                let stale = shard
                    .get(key)
                    .and_then(|slot| slot.get())
                    .is_some_and(|entry| {
                        entry.stale.load(Ordering::Acquire)
                            && entry.in_flight.load(Ordering::Acquire) == 0
                    });
                if stale {
                    // Under the lock and with no lease out: safe to replace.
                    if let Some(entry) = shard.remove(key).as_ref().and_then(|s| s.get()) {
                        entry.addr.do_send(Stop);
                    }
                    self.inner.loaded.fetch_sub(1, Ordering::Relaxed);
                }
                match shard.get(key) {
                    Some(slot) => match slot.get() {
                        Some(entry) => return self.inner.enter(entry),
                        None => slot.clone(),
                    },
                    None => {
                        let max = self.inner.limits.loaded_keys_max;
                        if self.inner.loaded.load(Ordering::Relaxed) >= max {
                            return Err(AcquireError::Full { max });
                        }
                        let slot = Slot::default();
                        shard.insert(key.clone(), slot.clone());
                        self.inner.loaded.fetch_add(1, Ordering::Relaxed);
                        slot
                    }
                }
            };
            // Loaded outside the lock; the next turn takes the lease under it.
            self.inner.init(key, &slot).await?;
        }
    }

    /// Pushes a revocation (or supersession) to `key`'s actor if one is
    /// running or starting, so the key's next call is refused. A key with no
    /// actor needs nothing: its next actor loads the stored status.
    pub async fn revoke(&self, key: &KeyId, status: BudgetStatus) {
        let slot = self.inner.shard(key).get(key).cloned();
        let Some(slot) = slot else { return };
        // A load in progress may have read the row before the revocation was
        // stored: wait for it, then tell the actor anyway.
        if let Ok(entry) = self.inner.init(key, &slot).await {
            if entry.addr.send(Revoke { status }).await.is_err() {
                tracing::warn!(key_id = %key, "revocation could not reach the key's actor");
            }
        }
    }

    /// Whether `key`'s actor is running (started and not evicted).
    pub fn is_loaded(&self, key: &KeyId) -> bool {
        self.inner
            .shard(key)
            .get(key)
            .is_some_and(|slot| slot.get().is_some())
    }

    /// Actors alive now.
    pub fn loaded(&self) -> usize {
        self.inner.loaded.load(Ordering::Relaxed)
    }

    /// Holds released by their deadline since start (a metric: each one is a
    /// call that neither committed nor released).
    pub fn expired_holds(&self) -> u64 {
        self.inner.expired_holds.load(Ordering::Relaxed)
    }

    /// The arbiters the actors run on (benchmarks run callers there too).
    pub fn arbiters(&self) -> &[ArbiterHandle] {
        self.inner.pool.handles()
    }

    /// Stops idle actors now rather than at the next sweep; returns how many.
    pub fn evict_idle(&self) -> usize {
        self.inner.evict_idle(now_ms())
    }
}

impl Inner {
    fn shard(&self, key: &KeyId) -> MutexGuard<'_, HashMap<KeyId, Slot>> {
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
        Ok(Lease {
            entry: entry.clone(),
        })
    }

    /// Loads the key and starts its actor once; on failure forgets the slot
    /// so the next call tries again.
    async fn init(&self, key: &KeyId, slot: &Slot) -> Result<Arc<KeyEntry>, AcquireError> {
        let result = slot
            .get_or_try_init(|| async {
                let state = self
                    .loader
                    .load(key)
                    .await?
                    .ok_or(AcquireError::UnknownKey)?;
                Ok::<_, AcquireError>(Arc::new(self.start_actor(key, state)))
            })
            .await
            .cloned();
        if result.is_err() {
            let mut shard = self.shard(key);
            if shard
                .get(key)
                .is_some_and(|s| Arc::ptr_eq(s, slot) && s.get().is_none())
            {
                shard.remove(key);
                self.loaded.fetch_sub(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn start_actor(&self, key: &KeyId, state: KeyState) -> KeyEntry {
        let budget = Budget::new(state.limit, state.spent, state.status, state.expires_at_ms);
        let actor = KeyActor::new(key.clone(), budget, self.expired_holds.clone());
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
            addr,
            token_sha256: state.token_sha256,
            in_flight: AtomicU32::new(0),
            last_used_ms: AtomicI64::new(now_ms()),
            stale: AtomicBool::new(false),
        }
    }

    fn evict_idle(&self, now: i64) -> usize {
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, slot| {
                let Some(entry) = slot.get() else { return true };
                let idle = now.saturating_sub(entry.last_used_ms.load(Ordering::Relaxed));
                if entry.in_flight.load(Ordering::Acquire) > 0 || idle < self.limits.idle_ms {
                    return true;
                }
                // Not money: a lost Stop only leaves an unreachable actor.
                entry.addr.do_send(Stop);
                evicted += 1;
                false
            });
        }
        self.loaded.fetch_sub(evicted, Ordering::Relaxed);
        evicted
    }
}

async fn sweep_idle(registry: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let evicted = inner.evict_idle(now_ms());
        if evicted > 0 {
            tracing::debug!(evicted, "idle key actors stopped");
        }
    }
}

/// A call's right to use a key's actor; counts towards the key's in-flight
/// bound until dropped.
pub struct Lease {
    entry: Arc<KeyEntry>,
}

impl Lease {
    /// Marks the key's actor as out of step with the store (a charge it did
    /// not commit, or one the store refused): it is reloaded once no call is
    /// in flight on it.
    pub fn mark_stale(&self) {
        self.entry.stale.store(true, Ordering::Release);
    }

    /// The stored SHA-256 (hex) of the key's token.
    pub fn token_sha256(&self) -> &str {
        &self.entry.token_sha256
    }

    pub async fn reserve(
        &self,
        request: RequestId,
        wanted: Amount,
        minimum: Amount,
        deadline_ms: i64,
    ) -> Result<Reserved, CallError> {
        let reserve = Reserve {
            request,
            wanted,
            minimum,
            deadline_ms,
        };
        Ok(self.entry.addr.send(reserve).await??)
    }

    pub async fn commit(
        &self,
        request: RequestId,
        final_amount: Amount,
    ) -> Result<Committed, CallError> {
        let commit = Commit {
            request,
            final_amount,
        };
        Ok(self.entry.addr.send(commit).await??)
    }

    pub async fn release(&self, request: RequestId) -> Result<Amount, CallError> {
        Ok(self.entry.addr.send(Release { request }).await??)
    }

    pub async fn snapshot(&self) -> Result<BudgetSnapshot, CallError> {
        Ok(self.entry.addr.send(Snapshot).await?)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let before = self.entry.in_flight.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "in-flight count underflow");
    }
}
