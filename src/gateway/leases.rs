//! [`LeaseKeeper`]: this gateway node's side of budget leases (docs/leases.md).
//!
//! Each key actor spends from a lease of its own in the store (its id comes
//! with the actor's load, see [`super::loader`]). The keeper:
//!
//! * tops a lease up ([`LeaseKeeper::top_up`]): a call whose hold the
//!   allowance cannot cover takes a chunk — `leases.chunk_calls` times the
//!   call's maximum cost — in one guarded store update, and a call that
//!   leaves the allowance low starts one in the background;
//! * returns what a stopped actor did not spend (idle eviction, shutdown);
//! * renews this node's heartbeat (its leases live while it is fresh) every
//!   eighth of `leases.grace_ms`, and takes back the leases of nodes silent
//!   for the grace, and returned leases' cover no charge claimed within it;
//! * looks every `leases.revocation_poll_ms` for keys it leases that another
//!   node revoked or superseded, and pushes the stop to their actors;
//! * refuses to spend ([`LeaseKeeper::check_renewed`]) once its own leases
//!   went unrenewed for half the grace: by the grace, another node may have
//!   taken them back;
//! * in the `evm` mode, caps every take by the payer's funds on chain and
//!   keeps this node's copy of the payers settlement holds back
//!   ([`super::payers`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::budget::BudgetStatus;
use actors::key_actor::Unspent;
use actors::registry::{Lease, Registry};
use ledger::time::now_ms;
use ledger::{Amount, KeyId, Store, StoreError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use workers::queue::Queue;

use super::payers::{FundsError, PayerFences, PayerFunds};
use super::NamedTask;
use crate::settings::LeaseSettings;

/// Renewals per `leases.grace_ms`: a node refuses to spend after half the
/// grace without one, so a few slow renewals (a busy store, a starved
/// process) do not stop a healthy node.
const RENEWALS_PER_GRACE: i64 = 8;

/// Revoked leases remembered as already pushed to their actors.
const PUSHED_MAX: usize = 10_000;

/// This node's budget leases. Cheap to clone.
#[derive(Clone)]
pub struct LeaseKeeper {
    store: Store,
    node_id: Arc<str>,
    settings: LeaseSettings,
    /// When this node's leases were last renewed (ms since epoch).
    renewed_at_ms: Arc<AtomicI64>,
    /// Unspent allowances returned to the store (or found unreturnable).
    returns_done: Arc<AtomicU64>,
    /// Store updates that granted budget (a metric, and the benchmark's).
    pub takes: Arc<AtomicU64>,
    stopping: watch::Sender<bool>,
    returning: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Payers' funds on chain (`evm`): every take is capped by them.
    funds: PayerFunds,
    /// Payers held back by settlement: refused before any hold.
    pub fences: PayerFences,
    /// Queue mode: the charges queue, whose drain gates reclaiming.
    charges_queue: Option<(Queue, Arc<str>)>,
}

/// Why a call could not get its lease topped up.
#[derive(Debug, thiserror::Error)]
pub enum TopUpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this node's leases went unrenewed for {0} ms")]
    Unrenewed(i64),
    #[error("the store did not grant a lease top-up in time")]
    Slow,
    #[error(transparent)]
    Funds(#[from] FundsError),
}

impl LeaseKeeper {
    /// A keeper for node `node_id` (unique per process start).
    pub fn new(store: Store, node_id: &str, settings: LeaseSettings) -> LeaseKeeper {
        LeaseKeeper {
            store,
            node_id: Arc::from(node_id),
            settings,
            renewed_at_ms: Arc::new(AtomicI64::new(now_ms())),
            returns_done: Arc::default(),
            takes: Arc::default(),
            stopping: watch::channel(false).0,
            returning: Arc::default(),
            funds: PayerFunds::default(),
            fences: PayerFences::default(),
            charges_queue: None,
        }
    }

    /// Queue mode: this node's charges reach the ledger through `name` on
    /// `queue`, after their calls were answered. A lease's cover is then
    /// taken back only once that queue was seen drained after the lease's
    /// node went silent (or returned it): its charges may still be on their
    /// way until then.
    pub fn with_charges_queue(mut self, queue: Queue, name: &str) -> LeaseKeeper {
        self.charges_queue = Some((queue, Arc::from(name)));
        self
    }

    /// With payers' funds on chain (the `evm` mode): each take is capped by
    /// what the payer can still pay, and held-back payers are fenced.
    pub fn with_payer_funds(mut self, funds: PayerFunds) -> LeaseKeeper {
        self.funds = funds;
        self
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The chunk a top-up takes for a call holding up to `wanted` that is
    /// `short` of it: `chunk_calls` such calls, at least the shortfall.
    pub fn chunk_for(&self, wanted: Amount, short: Amount) -> Amount {
        let calls = wanted
            .atomic()
            .saturating_mul(self.settings.chunk_calls)
            .min(Amount::MAX.atomic());
        Amount::from_atomic(calls).unwrap_or(Amount::MAX).max(short)
    }

    /// The allowance below which a call starts a background top-up: a
    /// quarter of a chunk.
    pub fn low_water(&self, wanted: Amount) -> Amount {
        let quarter = self.settings.chunk_calls.div_ceil(4);
        Amount::from_atomic(
            wanted
                .atomic()
                .saturating_mul(quarter)
                .min(Amount::MAX.atomic()),
        )
        .unwrap_or(Amount::MAX)
    }

    /// Refuses to spend when this node's leases went unrenewed for half the
    /// grace (the store is unreachable): past the grace another node may
    /// take them back, and what this node holds in memory would be spent
    /// twice.
    pub fn check_renewed(&self) -> Result<(), TopUpError> {
        let silent_ms = now_ms().saturating_sub(self.renewed_at_ms.load(Ordering::Relaxed));
        if silent_ms > self.settings.grace_ms / 2 {
            return Err(TopUpError::Unrenewed(silent_ms));
        }
        Ok(())
    }

    /// Takes up to `chunk` for `lease`'s budget lease — at least `need`
    /// when the key has it, else a share of what is left (`Store::take_lease`)
    /// — and grants it to the key's actor. Answers what was granted: zero
    /// when the store had nothing for it (the key is stopped, or the lease
    /// closed: the actor is then reloaded).
    pub async fn top_up(
        &self,
        lease: &Lease,
        key: &KeyId,
        chunk: Amount,
        need: Amount,
    ) -> Result<Amount, TopUpError> {
        self.check_renewed()?;
        let Some(lease_id) = lease.budget_lease() else {
            return Ok(Amount::ZERO);
        };
        let spendable = match lease.payer() {
            Some((wallet, chain)) => self
                .funds
                .spendable(&wallet, chain)
                .await?
                .map(|spendable| (wallet, chain, spendable)),
            None => None,
        };
        let taken = match spendable {
            Some((wallet, chain, spendable)) => {
                self.store
                    .take_lease_funded(
                        lease_id,
                        key,
                        &self.node_id,
                        (chunk, need),
                        (&wallet, chain, spendable),
                        now_ms(),
                    )
                    .await?
            }
            None => {
                self.store
                    .take_lease(lease_id, key, &self.node_id, chunk, need, now_ms())
                    .await?
            }
        };
        self.grant(lease, key, taken).await
    }

    /// [`LeaseKeeper::top_up`] in a task of its own, holding `running` (the
    /// key's top-up lock) and a share of the call's lease until it is done,
    /// and waits for it at most `wait`. A top-up is never cancelled half-way:
    /// a chunk the store granted always reaches the actor, or it would stay
    /// leased, unspent, for as long as this node lives.
    pub async fn top_up_within(
        &self,
        lease: &Lease,
        key: &KeyId,
        chunk: Amount,
        need: Amount,
        running: tokio::sync::OwnedMutexGuard<()>,
        wait: Duration,
    ) -> Result<Amount, TopUpError> {
        let (keeper, key, shared) = (self.clone(), key.clone(), lease.share());
        let topping_up = tokio::spawn(async move {
            let _running = running;
            keeper.top_up(&shared, &key, chunk, need).await
        });
        match tokio::time::timeout(wait, topping_up).await {
            Ok(Ok(topped_up)) => topped_up,
            Ok(Err(join)) => Err(TopUpError::Store(StoreError::Setup(join.to_string()))),
            Err(_) => Err(TopUpError::Slow),
        }
    }

    /// Gives the actor what a take granted.
    async fn grant(
        &self,
        lease: &Lease,
        key: &KeyId,
        taken: Option<ledger::store::leases::LeaseGrant>,
    ) -> Result<Amount, TopUpError> {
        let Some(grant) = taken else {
            // Closed under the actor (reclaimed after a long store outage),
            // or the key stopped: a fresh load settles which.
            lease.mark_stale();
            return Ok(Amount::ZERO);
        };
        self.takes.fetch_add(1, Ordering::Relaxed);
        // Not `grant.used`: it may hold charges of this actor's calls that
        // the actor has not committed yet (store first, actor second).
        if let Err(error) = lease.grant(grant.granted, grant.used_elsewhere()).await {
            // The grant is leased in the store but the actor is gone: it
            // comes back a grace after the lease is returned (stricter,
            // never looser).
            tracing::warn!(key_id = %key, %error, "a lease grant could not reach its actor");
            return Ok(Amount::ZERO);
        }
        Ok(grant.granted)
    }

    /// Tops up `key`'s lease in the background, when no top-up of it runs
    /// already: a call (holding `lease`) left its allowance below the
    /// low-water mark.
    ///
    /// The task works on a share of the call's own lease, taken before it
    /// is spawned: the actor it grants to is the call's, and it counts as a
    /// call in flight until done, so a shutdown waits for it before the
    /// actors return their leases. (It used to acquire the key afresh when
    /// it ran: scheduled after a shutdown had retired the actor, that
    /// started a new one whose grant nobody returned — a lease stranded
    /// until its grace, seen in `tests/nodes.rs` under load.)
    pub fn top_up_soon(&self, lease: &Lease, key: &KeyId, chunk: Amount) {
        let Some(running) = lease.try_top_up_lock() else {
            return;
        };
        let (keeper, lease, key) = (self.clone(), lease.share(), key.clone());
        tokio::spawn(async move {
            let _running = running;
            if let Err(error) = keeper.top_up(&lease, &key, chunk, Amount::ZERO).await {
                tracing::warn!(key_id = %key, %error, "a background lease top-up failed");
            }
        });
    }

    /// Starts the keeper's tasks: returning unspent allowances, and the
    /// renew / reclaim / revocation loop.
    pub fn start(&self, registry: &Registry) -> Vec<NamedTask> {
        let mut tasks = Vec::new();
        if let Some(unspent) = registry.unspent_leases() {
            let returning = tokio::spawn(self.clone().return_unspent(unspent));
            *self.returning.lock().unwrap_or_else(|p| p.into_inner()) = Some(returning);
        }
        tasks.push((
            "lease keeper",
            tokio::spawn(self.clone().keep(registry.clone())),
        ));
        tasks
    }

    /// Shutdown: stops every idle actor so each returns what it did not
    /// spend, and waits (up to `timeout`) until all those returns are in the
    /// store. Calls in flight must be over before.
    pub async fn return_all(&self, registry: &Registry, timeout: Duration) {
        registry.evict_all_idle();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.returns_done.load(Ordering::SeqCst) < registry.leased_actors_started() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    pending = registry.leased_actors_started()
                        - self.returns_done.load(Ordering::SeqCst),
                    "leases not returned at the shutdown deadline; they return after leases.grace_ms"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.stopping.send(true);
        let returning = self
            .returning
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(returning) = returning {
            let _ = tokio::time::timeout(timeout, returning).await;
        }
    }

    async fn return_unspent(self, mut unspent: mpsc::UnboundedReceiver<Unspent>) {
        let mut stopping = self.stopping.subscribe();
        loop {
            let next = tokio::select! {
                next = unspent.recv() => next,
                _ = stopping.wait_for(|stop| *stop) => unspent.try_recv().ok(),
            };
            let Some(Unspent {
                key_id,
                lease_id,
                amount,
            }) = next
            else {
                return;
            };
            match self
                .store
                .return_lease(&lease_id, &key_id, amount, now_ms())
                .await
            {
                Ok(Some(returned)) if returned == amount => {}
                Ok(Some(returned)) => {
                    tracing::warn!(%key_id, %lease_id, %amount, %returned, "a lease covered less than its actor had unspent; returned what it covered")
                }
                Ok(None) => {
                    tracing::warn!(%key_id, %lease_id, %amount, "a lease was no longer open to return to")
                }
                Err(error) => {
                    tracing::warn!(%key_id, %lease_id, %error, "returning a lease failed; it returns after leases.grace_ms")
                }
            }
            self.returns_done.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Leases taken (or grown) and returned by this node so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.takes.load(Ordering::Relaxed),
            self.returns_done.load(Ordering::Relaxed),
        )
    }

    async fn keep(self, registry: Registry) {
        let poll = Duration::from_millis(self.settings.revocation_poll_ms);
        let renew_every_ms = (self.settings.grace_ms / RENEWALS_PER_GRACE).max(1);
        // The first tick renews at once: this node's heartbeat exists from
        // its start.
        let mut renewed_last = 0;
        let mut drained_at = None;
        let mut pushed = HashSet::new();
        let mut stopping = self.stopping.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            self.push_revocations(&registry, &mut pushed).await;
            if self.funds.on_chain() {
                if let Err(error) = self.fences.refresh(&self.store).await {
                    tracing::warn!(%error, "reading the payers held back by settlement failed");
                }
            }
            let now = now_ms();
            if now.saturating_sub(renewed_last) >= renew_every_ms {
                renewed_last = now;
                self.renew_and_reclaim(now, &mut drained_at).await;
            }
        }
    }

    /// Stops, on this node, keys it leases that another node stopped.
    async fn push_revocations(&self, registry: &Registry, pushed: &mut HashSet<String>) {
        let stopped = match self.store.stopped_leased_keys(&self.node_id).await {
            Ok(stopped) => stopped,
            Err(error) => {
                tracing::warn!(%error, "looking for keys revoked elsewhere failed");
                return;
            }
        };
        if pushed.len() > PUSHED_MAX {
            pushed.clear();
        }
        for key in stopped {
            if !pushed.insert(key.lease_id.as_str().to_owned()) {
                continue;
            }
            let status = if key.status == "superseded" {
                BudgetStatus::Superseded
            } else {
                BudgetStatus::Revoked
            };
            registry.revoke(&key.key_id, status).await;
            tracing::info!(key_id = %key.key_id, status = %key.status, "a key stopped through another node is refused here");
        }
    }

    async fn renew_and_reclaim(&self, now: i64, drained_at: &mut Option<i64>) {
        match self.store.renew_leases(&self.node_id, now).await {
            Ok(()) => self.renewed_at_ms.store(now, Ordering::Relaxed),
            Err(error) => tracing::warn!(%error, "renewing this node's leases failed"),
        }
        let Some(seen) = self.reclaim_cutoff(now, drained_at).await else {
            if let Err(error) = self.store.forget_spent_leases().await {
                tracing::warn!(%error, "forgetting fully charged leases failed");
            }
            return;
        };
        let cutoff = seen.saturating_sub(self.settings.grace_ms);
        let reclaimed = match self.charges_queue {
            None => self.store.reclaim_leases(cutoff).await,
            // A returned lease's cover is charges on their way: never taken.
            Some(_) => self.store.reclaim_silent_leases(cutoff).await,
        };
        match reclaimed {
            Ok(0) => {}
            Ok(reclaimed) => tracing::info!(reclaimed, "took back leases of nodes gone silent"),
            Err(error) => tracing::warn!(%error, "taking back silent nodes' leases failed"),
        }
    }

    /// The instant by which every charge of a lease silent (or returned) a
    /// grace before it is in the ledger: now, when charges are written before
    /// their calls answer; in queue mode, the previous of two consecutive
    /// passes that found the charges queue drained (`None` until there are
    /// two: nothing is taken back while charges may still be on their way).
    async fn reclaim_cutoff(&self, now: i64, drained_at: &mut Option<i64>) -> Option<i64> {
        let Some((queue, name)) = &self.charges_queue else {
            return Some(now);
        };
        match queue.ready_count(name).await {
            Ok(0) => drained_at.replace(now),
            Ok(waiting) => {
                tracing::debug!(waiting, "charges still queued: no lease is taken back yet");
                drained_at.take();
                None
            }
            Err(error) => {
                tracing::warn!(%error, "the charges queue's depth could not be read: no lease is taken back");
                drained_at.take();
                None
            }
        }
    }
}
