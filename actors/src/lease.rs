//! [`Lease`]: a call's claim on its key's actor — every message a call sends
//! goes through it, and it counts toward the key's in-flight bound until
//! dropped — and [`Fence`], which holds new leases back while a revocation
//! is decided.
//!
//! Every charge is written while its call holds a lease, so a key with no
//! lease out can never be charged again (invariant 7): a fence that finds
//! none out lets the store free the key's unspent budget at once, and a
//! revoked key's last lease to end reports it drained.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::{Addr, MailboxError};
use ledger::{Amount, ChainId, KeyId, LeaseId, RequestId, WalletAddress};
use tokio::sync::mpsc;

use crate::budget::{BudgetSnapshot, Committed, ReserveError, Reserved, SettleError};
use crate::key_actor::KeyActor;
use crate::messages::{Absorb, Commit, Extend, Forfeit, Grant, Release, Reserve, Snapshot};

/// Why an actor call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    #[error(transparent)]
    Settle(#[from] SettleError),
    /// The actor is gone (it panicked: a failed assertion stops it); its key
    /// answers 503 until the registry replaces it with a fresh load from the
    /// store, at the first acquire once nothing is in flight on it.
    #[error("the key's actor is unavailable")]
    Unavailable,
}

impl From<MailboxError> for CallError {
    fn from(_: MailboxError) -> CallError {
        CallError::Unavailable
    }
}

/// One running actor and what the registry tracks of it.
pub(crate) struct KeyEntry {
    pub(crate) key: KeyId,
    pub(crate) addr: Addr<KeyActor>,
    pub(crate) token_sha256: String,
    pub(crate) in_flight: AtomicU32,
    pub(crate) last_used_ms: AtomicI64,
    /// Set when the actor's state is known to disagree with the store: the
    /// next acquire with nothing in flight replaces it with a fresh load.
    pub(crate) stale: AtomicBool,
    /// Set once a revocation reached the actor: when the last lease ends,
    /// the key is reported drained (once, see `drain_reported`).
    pub(crate) revoked: AtomicBool,
    pub(crate) drain_reported: AtomicBool,
    pub(crate) drained: mpsc::UnboundedSender<KeyId>,
    /// The budget lease the actor spends from, if any, and what of it the
    /// actor could give back now (published by the actor after each message).
    pub(crate) lease: Option<(LeaseId, Arc<AtomicU64>)>,
    /// One top-up of the lease at a time per key.
    pub(crate) top_up: Arc<tokio::sync::Mutex<()>>,
    pub(crate) payer: Option<(WalletAddress, ChainId)>,
}

impl KeyEntry {
    /// Whether the next acquire replaces this actor with a fresh load: it is
    /// out of step with the store (`stale`) or dead (its mailbox closed: it
    /// panicked, as a failed assertion does), and no lease is out on it —
    /// so a fence still sees every call that could charge the key, and the
    /// next actor starts only after every call on this one ended. The fresh
    /// actor starts from the store, which holds what was durably spent and
    /// leased: the dead actor's holds are gone, so it can only be stricter.
    pub(crate) fn replaceable(&self) -> bool {
        (self.stale.load(Ordering::Acquire) || !self.addr.connected())
            && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Reports the key drained unless that was done already.
    pub(crate) fn report_drained(&self) -> bool {
        !self.drain_reported.swap(true, Ordering::SeqCst)
    }
}

/// A call's right to use a key's actor; counts towards the key's in-flight
/// bound until dropped.
pub struct Lease {
    entry: Arc<KeyEntry>,
}

impl Lease {
    /// A lease on `entry`, whose in-flight count the caller has taken.
    pub(crate) fn new(entry: Arc<KeyEntry>) -> Lease {
        Lease { entry }
    }

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

    /// Holds up to `wanted` (at least `minimum`) of what the actor may
    /// spend, lowering the hold to what there is.
    pub async fn reserve(
        &self,
        request: RequestId,
        wanted: Amount,
        minimum: Amount,
        deadline_ms: i64,
    ) -> Result<Reserved, CallError> {
        self.send_reserve(Reserve {
            request,
            wanted,
            minimum,
            deadline_ms,
            grow: false,
            low_water: Amount::ZERO,
        })
        .await
    }

    /// As [`Lease::reserve`], but a leased actor whose allowance is short of
    /// `wanted` while the key may have more answers
    /// [`ReserveError::AllowanceShort`] (take a grant, then reserve), and
    /// [`Reserved::top_up`] says when the allowance left is below `low_water`.
    pub async fn reserve_growing(
        &self,
        request: RequestId,
        wanted: Amount,
        minimum: Amount,
        deadline_ms: i64,
        low_water: Amount,
    ) -> Result<Reserved, CallError> {
        self.send_reserve(Reserve {
            request,
            wanted,
            minimum,
            deadline_ms,
            grow: true,
            low_water,
        })
        .await
    }

    async fn send_reserve(&self, reserve: Reserve) -> Result<Reserved, CallError> {
        Ok(self.entry.addr.send(reserve).await??)
    }

    /// A second lease on the same actor, for work a call hands to a task of
    /// its own (a lease top-up that must finish even if the call gives up
    /// waiting): the actor stays until both are dropped. Counts toward the
    /// key's calls in flight, above the bound (one per key at a time).
    pub fn share(&self) -> Lease {
        self.entry.in_flight.fetch_add(1, Ordering::AcqRel);
        Lease::new(self.entry.clone())
    }

    /// The key's wallet and chain, when its loader knew them.
    pub fn payer(&self) -> Option<(WalletAddress, ChainId)> {
        self.entry.payer
    }

    /// The budget lease the key's actor spends from, if it spends from one.
    pub fn budget_lease(&self) -> Option<&LeaseId> {
        self.entry.lease.as_ref().map(|(lease, _)| lease)
    }

    /// Adds `amount` (taken from the store for [`Lease::budget_lease`]) to
    /// the actor's allowance; `used_elsewhere` is the key's spend as the
    /// store answered, less what [`Lease::budget_lease`] had been charged
    /// (see `Budget::grant`).
    pub async fn grant(&self, amount: Amount, used_elsewhere: Amount) -> Result<(), CallError> {
        Ok(self
            .entry
            .addr
            .send(Grant {
                amount,
                used_elsewhere,
            })
            .await?)
    }

    /// Serializes top-ups of the key's lease on this node: a call that
    /// finds its allowance short takes this, looks again, and only then
    /// asks the store.
    pub async fn top_up_lock(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.entry.top_up.clone().lock_owned().await
    }

    /// As [`Lease::top_up_lock`], `None` when a top-up is already running.
    pub fn try_top_up_lock(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.entry.top_up.clone().try_lock_owned().ok()
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

    /// Keeps `request`'s hold until `deadline_ms` at least.
    pub async fn extend(&self, request: RequestId, deadline_ms: i64) -> Result<(), CallError> {
        Ok(self
            .entry
            .addr
            .send(Extend {
                request,
                deadline_ms,
            })
            .await??)
    }

    /// Ends `request`'s hold not knowing whether its charge was recorded:
    /// the amount is never spent again on this actor (`Budget::forfeit`).
    pub async fn forfeit(&self, request: RequestId) -> Result<Amount, CallError> {
        Ok(self.entry.addr.send(Forfeit { request }).await??)
    }

    /// Counts a charge recorded without a hold to commit it
    /// (`Budget::absorb`).
    pub async fn absorb(&self, amount: Amount) -> Result<(), CallError> {
        Ok(self.entry.addr.send(Absorb { amount }).await?)
    }

    pub async fn release(&self, request: RequestId) -> Result<Amount, CallError> {
        Ok(self.entry.addr.send(Release { request }).await??)
    }

    pub async fn snapshot(&self) -> Result<BudgetSnapshot, CallError> {
        Ok(self.entry.addr.send(Snapshot).await?)
    }

    /// Makes the key's actor panic, as a failed assertion would (tests only).
    #[cfg(any(test, feature = "test-support"))]
    pub async fn panic_actor(&self) -> Result<(), CallError> {
        Ok(self.entry.addr.send(crate::messages::Panic).await?)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let before = self.entry.in_flight.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "in-flight count underflow");
        if before == 1 && self.entry.revoked.load(Ordering::SeqCst) && self.entry.report_drained() {
            // The receiver is gone only when the gateway is shutting down.
            let _ = self.entry.drained.send(self.entry.key.clone());
        }
    }
}

/// A fence's lock: held by the fence, waited on by the calls it holds back.
pub(crate) type FenceLock = Arc<tokio::sync::Mutex<()>>;

/// Where a fence stands: the registry takes it down when the fence drops.
pub(crate) trait FenceSite: Send + Sync {
    /// Removes `lock` as `key`'s fence, unless another fence replaced it.
    fn take_down(&self, key: &KeyId, lock: &FenceLock);
}

/// While it stands, no new lease is taken on its key. See
/// [`crate::registry::Registry::fence`].
pub struct Fence {
    site: Arc<dyn FenceSite>,
    key: KeyId,
    lock: FenceLock,
    _guard: tokio::sync::OwnedMutexGuard<()>,
    /// No call was in flight on the key when the fence went up.
    pub drained: bool,
}

impl Fence {
    /// A fence on `key` holding `lock` (locked by `guard`), put up at `site`.
    pub(crate) fn new(
        site: Arc<dyn FenceSite>,
        key: KeyId,
        (lock, guard): (FenceLock, tokio::sync::OwnedMutexGuard<()>),
        drained: bool,
    ) -> Fence {
        Fence {
            site,
            key,
            lock,
            _guard: guard,
            drained,
        }
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.site.take_down(&self.key, &self.lock);
        // Waiters wake when the guard drops, right after this.
    }
}
