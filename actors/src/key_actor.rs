//! [`KeyActor`]: one key's [`Budget`] behind an actix mailbox, so
//! reservations on a key serialize without locks.
//!
//! Every [`EXPIRY_SWEEP`] the actor releases holds past their deadline and
//! counts them in a shared counter (a metric). It does no I/O.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use ledger::time::now_ms;
use ledger::{Amount, KeyId};

use crate::budget::{Budget, Committed, ReserveError, Reserved, SettleError};
use crate::messages::{Commit, Extend, Release, Reserve, Revoke, Snapshot, Stop};

/// How often expired holds are swept. Holds outlive their deadline by at most
/// this much, which only ever makes a key stricter.
pub const EXPIRY_SWEEP: Duration = Duration::from_millis(500);

/// One key's budget, owned by one actor.
pub struct KeyActor {
    key_id: KeyId,
    budget: Budget,
    expired_holds: Arc<AtomicU64>,
}

impl KeyActor {
    /// `expired_holds` counts holds released by their deadline (shared metric).
    pub fn new(key_id: KeyId, budget: Budget, expired_holds: Arc<AtomicU64>) -> KeyActor {
        KeyActor {
            key_id,
            budget,
            expired_holds,
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
            }
        });
    }
}

impl Handler<Reserve> for KeyActor {
    type Result = Result<Reserved, ReserveError>;

    fn handle(&mut self, msg: Reserve, _ctx: &mut Self::Context) -> Self::Result {
        let held = self.budget.reserve(
            msg.request,
            msg.wanted,
            msg.minimum,
            now_ms(),
            msg.deadline_ms,
        )?;
        let snapshot = self.budget.snapshot();
        Ok(Reserved {
            held,
            limit: snapshot.limit,
            spent: snapshot.spent,
        })
    }
}

impl Handler<Commit> for KeyActor {
    type Result = Result<Committed, SettleError>;

    fn handle(&mut self, msg: Commit, _ctx: &mut Self::Context) -> Self::Result {
        self.budget.commit(&msg.request, msg.final_amount)
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
        self.budget.release(&msg.request)
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
