//! [`KeyActor`]: one key's [`Budget`] behind an actix mailbox, so
//! reservations on a key serialize without locks.
//!
//! Every [`EXPIRY_SWEEP`] the actor releases holds past their deadline and
//! counts them in a shared counter (a metric). It does no I/O: a leased
//! budget's grants come in as [`Grant`] messages, and after every message
//! the actor publishes what it could give back (its allowance no call holds)
//! in a shared atomic, which the registry reads when it retires the actor —
//! even when the actor's arbiter is already gone (shutdown).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use ledger::time::now_ms;
use ledger::{Amount, KeyId, LeaseId};

use crate::budget::{Budget, Committed, ReserveError, Reserved, SettleError};
use crate::messages::{
    Absorb, Commit, Extend, Forfeit, Grant, Release, Reserve, Revoke, Snapshot, Stop,
};

/// What a retired actor did not spend of its budget lease (the registry
/// reports it, see `Registry::unspent_leases`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unspent {
    pub key_id: KeyId,
    pub lease_id: LeaseId,
    pub amount: Amount,
}

/// How often expired holds are swept. Holds outlive their deadline by at most
/// this much, which only ever makes a key stricter.
pub const EXPIRY_SWEEP: Duration = Duration::from_millis(500);

/// After the store granted nothing, how long calls hold what the allowance
/// has instead of asking again.
pub const DRY_MS: i64 = 250;

/// One key's budget, owned by one actor.
pub struct KeyActor {
    key_id: KeyId,
    budget: Budget,
    expired_holds: Arc<AtomicU64>,
    /// A leased budget's returnable allowance, published after each message.
    unspent: Option<Arc<AtomicU64>>,
}

impl KeyActor {
    /// `expired_holds` counts holds released by their deadline (shared metric).
    pub fn new(key_id: KeyId, budget: Budget, expired_holds: Arc<AtomicU64>) -> KeyActor {
        KeyActor {
            key_id,
            budget,
            expired_holds,
            unspent: None,
        }
    }

    /// Publishes the budget's returnable allowance (see
    /// [`Budget::returnable`]) in `unspent` after every message: the budget
    /// spends from a lease ([`Budget::leased`]).
    pub fn with_unspent(mut self, unspent: Arc<AtomicU64>) -> Self {
        unspent.store(self.budget.returnable().atomic(), Ordering::Release);
        self.unspent = Some(unspent);
        self
    }

    fn publish(&self) {
        if let Some(unspent) = &self.unspent {
            unspent.store(self.budget.returnable().atomic(), Ordering::Release);
        }
    }
}

impl Actor for KeyActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(EXPIRY_SWEEP, |actor, _ctx| {
            let expired = actor.budget.expire(now_ms());
            if expired > 0 {
                actor.expired_holds.fetch_add(expired as u64, Ordering::Relaxed);
                tracing::warn!(key_id = %actor.key_id, expired, "holds expired without commit or release");
                actor.publish();
            }
        });
    }
}

impl Handler<Grant> for KeyActor {
    type Result = ();

    fn handle(&mut self, msg: Grant, _ctx: &mut Self::Context) {
        self.budget.grant(msg.amount, msg.used_elsewhere);
        if msg.amount.is_zero() {
            self.budget.mark_dry(now_ms().saturating_add(DRY_MS));
        }
        self.publish();
    }
}

impl Handler<Reserve> for KeyActor {
    type Result = Result<Reserved, ReserveError>;

    fn handle(&mut self, msg: Reserve, _ctx: &mut Self::Context) -> Self::Result {
        let now = now_ms();
        if msg.grow {
            if let Some(short) = self.budget.allowance_short(msg.wanted, now) {
                return Err(ReserveError::AllowanceShort { short });
            }
        }
        let held =
            self.budget
                .reserve(msg.request, msg.wanted, msg.minimum, now, msg.deadline_ms)?;
        self.publish();
        let snapshot = self.budget.snapshot();
        let top_up = snapshot.remaining() < msg.low_water
            && self.budget.allowance_short(msg.low_water, now).is_some();
        Ok(Reserved {
            held,
            limit: snapshot.limit,
            spent: snapshot.spent,
            top_up,
        })
    }
}

impl Handler<Commit> for KeyActor {
    type Result = Result<Committed, SettleError>;

    fn handle(&mut self, msg: Commit, _ctx: &mut Self::Context) -> Self::Result {
        let committed = self.budget.commit(&msg.request, msg.final_amount);
        self.publish();
        committed
    }
}

impl Handler<Extend> for KeyActor {
    type Result = Result<(), SettleError>;

    fn handle(&mut self, msg: Extend, _ctx: &mut Self::Context) -> Self::Result {
        self.budget.extend(&msg.request, msg.deadline_ms)
    }
}

impl Handler<Release> for KeyActor {
    type Result = Result<Amount, SettleError>;

    fn handle(&mut self, msg: Release, _ctx: &mut Self::Context) -> Self::Result {
        let released = self.budget.release(&msg.request);
        self.publish();
        released
    }
}

impl Handler<Forfeit> for KeyActor {
    type Result = Result<Amount, SettleError>;

    fn handle(&mut self, msg: Forfeit, _ctx: &mut Self::Context) -> Self::Result {
        let forfeited = self.budget.forfeit(&msg.request);
        self.publish();
        forfeited
    }
}

impl Handler<Absorb> for KeyActor {
    type Result = ();

    fn handle(&mut self, msg: Absorb, _ctx: &mut Self::Context) {
        self.budget.absorb(msg.amount);
        self.publish();
    }
}

impl Handler<Revoke> for KeyActor {
    type Result = ();

    fn handle(&mut self, msg: Revoke, _ctx: &mut Self::Context) {
        self.budget.revoke(msg.status);
    }
}

impl Handler<Stop> for KeyActor {
    type Result = ();

    fn handle(&mut self, _msg: Stop, ctx: &mut Self::Context) {
        // The registry evicts only keys with nothing in flight, so no hold
        // can be lost here; if one is, it only ever made the key stricter.
        debug_assert!(!self.budget.has_holds(), "evicted with holds open");
        ctx.stop();
    }
}

impl Handler<Snapshot> for KeyActor {
    type Result = actix::MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        actix::MessageResult(self.budget.snapshot())
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Handler<crate::messages::Panic> for KeyActor {
    type Result = ();

    fn handle(&mut self, _msg: crate::messages::Panic, _ctx: &mut Self::Context) {
        panic!("key {}: a test made its actor panic", self.key_id);
    }
}
