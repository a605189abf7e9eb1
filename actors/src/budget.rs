//! [`Budget`]: one key's budget as a pure state machine — reserve, commit,
//! release, expire, revoke — with its invariants asserted after every change.
//!
//! A hold is the most a call in flight may cost. `spent` is what committed
//! calls cost. `allowance` is what this budget may still hold or spend: the
//! whole unspent budget ([`Budget::new`]), or — on a gateway node that
//! spends from budget leases ([`Budget::leased`]) — what the
//! node's lease covers and it has not spent, grown by [`Budget::grant`]. At
//! every moment `held ≤ allowance`, `spent + allowance ≤ limit` (so
//! `spent + held ≤ limit`), `held` is the sum of the open holds, and what
//! this budget's own calls spent plus its allowance never exceeds what it
//! was given (its grants, or for an unleased budget its starting
//! allowance). The state machine knows nothing of actors, clocks or I/O:
//! callers pass `now_ms`, so tests (and the property test) drive it exactly.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use ledger::{Amount, RequestId};

/// The most holds one key may have open: a bound on memory per key that no
/// honest client reaches (the registry's in-flight bound is far lower).
pub const HOLDS_MAX: usize = 10_000;

/// A key's lifecycle as its budget sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetStatus {
    Active,
    Revoked,
    /// A session key whose session was replaced by a newer sign-in.
    Superseded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    amount: Amount,
    deadline_ms: i64,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("the key has been revoked")]
    Revoked,
    #[error("the key's session was replaced by a newer sign-in")]
    Superseded,
    #[error("the key has expired")]
    Expired,
    #[error("the remaining budget ({remaining}) cannot cover even a minimal call ({minimum})")]
    InsufficientBudget { remaining: Amount, minimum: Amount },
    #[error("a hold for this request already exists")]
    DuplicateRequest,
    /// A leased budget's allowance cannot cover the call, and the key may
    /// have more in the store: take `short` more (a grant), then reserve.
    #[error("the lease is {short} short of the call")]
    AllowanceShort { short: Amount },
    #[error("the key has too many calls in flight")]
    TooManyHolds,
}

/// Why a commit or release found nothing to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    #[error("no open hold for this request (released, expired or never made)")]
    UnknownHold,
}

/// What a reservation held, and the key's budget as it stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// The hold: at most what was wanted, at least the minimum.
    pub held: Amount,
    pub limit: Amount,
    /// Committed spend, not counting holds.
    pub spent: Amount,
    /// A leased budget's allowance fell below the low-water mark the call
    /// gave: time to top it up (before it runs dry).
    pub top_up: bool,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// What the call is charged: the final amount, never more than its hold.
    pub charged: Amount,
    pub limit: Amount,
    /// The key's committed spend after this call.
    pub spent: Amount,
    /// What the key may still reserve after this call.
    pub remaining: Amount,
}

/// A point-in-time view of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSnapshot {
    pub limit: Amount,
    pub spent: Amount,
    pub held: Amount,
    pub holds: usize,
    pub status: BudgetStatus,
    pub expires_at_ms: i64,
    /// What may still be held or spent (holds included).
    pub allowance: Amount,
}

impl BudgetSnapshot {
    /// What the key may still reserve here.
    pub fn remaining(&self) -> Amount {
        self.allowance.saturating_sub(self.held)
    }
}

/// One key's budget.
#[derive(Debug, Clone)]
pub struct Budget {
    limit: Amount,
    spent: Amount,
    held: Amount,
    holds: HashMap<RequestId, Hold, RandomState>,
    status: BudgetStatus,
    expires_at_ms: i64,
    allowance: Amount,
    /// Spends from budget leases: the allowance grows by grants.
    leased: bool,
    /// Until then (ms since epoch) the store is known to have nothing to
    /// grant (other nodes hold the rest): calls are not sent to ask again.
    dry_until_ms: i64,
    /// All the allowance this budget was ever given: its starting allowance
    /// plus every grant. `allowance + spent_here ≤ granted`.
    granted: Amount,
    /// What this budget's own calls spent out of its allowance (commits,
    /// and the absorbed charges as far as they left it).
    spent_here: Amount,
    /// The most the key had spent, as this budget last heard, that its own
    /// calls did not spend (its spend at load, then each grant's figure).
    used_elsewhere: Amount,
    /// Holds forfeited (their charge may or may not have landed): counted
    /// as spent until the key is loaded again — stricter, never looser.
    forfeited: Amount,
}

impl Budget {
    /// A budget as loaded from the store that may spend all it has left:
    /// `spent` is what the ledger has recorded (never above `limit`: the
    /// store's CHECK holds that).
    pub fn new(limit: Amount, spent: Amount, status: BudgetStatus, expires_at_ms: i64) -> Budget {
        let spent = spent.min(limit);
        let budget = Budget {
            limit,
            spent,
            held: Amount::ZERO,
            holds: HashMap::default(),
            status,
            expires_at_ms,
            allowance: limit.saturating_sub(spent),
            leased: false,
            dry_until_ms: 0,
            granted: limit.saturating_sub(spent),
            spent_here: Amount::ZERO,
            used_elsewhere: spent,
            forfeited: Amount::ZERO,
        };
        budget.assert_invariants();
        budget
    }

    /// A budget that spends only what its node leased from the store: it
    /// starts with no allowance, and [`Budget::grant`] adds each chunk.
    pub fn leased(
        limit: Amount,
        spent: Amount,
        status: BudgetStatus,
        expires_at_ms: i64,
    ) -> Budget {
        let mut budget = Budget::new(limit, spent, status, expires_at_ms);
        budget.allowance = Amount::ZERO;
        budget.granted = Amount::ZERO;
        budget.leased = true;
        budget.assert_invariants();
        budget
    }

    /// What the key may still reserve here.
    pub fn remaining(&self) -> Amount {
        self.allowance.saturating_sub(self.held)
    }

    /// For a leased budget that could take more from the store: how much
    /// more a call wanting `wanted` needs. `None` when the allowance covers
    /// it, the budget is not leased or cannot spend, or — as far as this
    /// node knows — the key has nothing left beyond its allowance.
    pub fn allowance_short(&self, wanted: Amount, now_ms: i64) -> Option<Amount> {
        let remaining = self.remaining();
        let unleased = self
            .limit
            .saturating_sub(self.spent)
            .saturating_sub(self.allowance);
        let can_spend = self.status == BudgetStatus::Active && now_ms < self.expires_at_ms;
        let may_ask = now_ms >= self.dry_until_ms;
        (self.leased && can_spend && may_ask && remaining < wanted && !unleased.is_zero())
            .then(|| wanted.saturating_sub(remaining))
    }

    /// The store granted nothing (other nodes' leases hold the rest): until
    /// `until_ms`, calls hold what the allowance has rather than ask again —
    /// a flood of refused calls must not become a flood of store writes.
    pub fn mark_dry(&mut self, until_ms: i64) {
        self.dry_until_ms = self.dry_until_ms.max(until_ms);
    }

    /// Adds `amount` of a lease to the allowance. `used_elsewhere` is what
    /// the key had spent that this budget's calls did not, as the store
    /// answered the take: its `budget_used` less what this budget's lease
    /// had been charged, read together (`LeaseGrant::used_elsewhere`). The
    /// key's reported spend catches up to it plus this budget's own spend.
    ///
    /// Not `budget_used` itself: a call writes its charge to the store
    /// before it commits here, so a take in between reads a `budget_used`
    /// that holds the charge while the call's hold is still in the
    /// allowance — counted from the store and again at the commit, the
    /// charge would count twice, and the allowance look past the limit.
    pub fn grant(&mut self, amount: Amount, used_elsewhere: Amount) {
        debug_assert!(self.leased, "only a leased budget takes grants");
        self.granted = self.granted.checked_add(amount).unwrap_or(Amount::MAX);
        self.allowance = self.allowance.checked_add(amount).unwrap_or(self.limit);
        // Spend from elsewhere only grows (the store's `budget_used` grows
        // by every charge, this lease's `charged` only by its own).
        self.used_elsewhere = self.used_elsewhere.max(used_elsewhere);
        // The store grants within `limit − used − leased`, and this lease's
        // cover (all it was granted less its charges) is part of `leased`:
        // everything it was granted fits beside what others spent.
        debug_assert!(
            self.used_elsewhere
                .checked_add(self.granted)
                .is_some_and(|sum| sum <= self.limit),
            "the store granted past the limit: {} granted here, {} spent elsewhere, limit {}",
            self.granted,
            self.used_elsewhere,
            self.limit
        );
        // So with `allowance + spent_here ≤ granted`, the key's spend as
        // this budget knows it — each charge once — leaves the allowance
        // within the limit.
        let known = self
            .used_elsewhere
            .checked_add(self.spent_here)
            .and_then(|sum| sum.checked_add(self.forfeited))
            .unwrap_or(self.limit);
        let ceiling = self.limit.saturating_sub(known);
        debug_assert!(
            self.allowance <= ceiling,
            "a grant past the limit: allowance {} > {}",
            self.allowance,
            ceiling
        );
        self.spent = self.spent.max(known).min(self.limit);
        self.fit_within_limit();
        self.assert_invariants();
    }

    /// What a stopping leased budget gives back to its lease: the allowance
    /// no call holds.
    pub fn returnable(&self) -> Amount {
        self.remaining()
    }

    /// Holds up to `wanted` for `request`, and at least `minimum`: when the
    /// remaining budget is below `wanted` the hold is what remains (the caller
    /// then lowers the call's maximum to fit). Returns the amount held.
    pub fn reserve(
        &mut self,
        request: RequestId,
        wanted: Amount,
        minimum: Amount,
        now_ms: i64,
        deadline_ms: i64,
    ) -> Result<Amount, ReserveError> {
        match self.status {
            BudgetStatus::Active => {}
            BudgetStatus::Revoked => return Err(ReserveError::Revoked),
            BudgetStatus::Superseded => return Err(ReserveError::Superseded),
        }
        if now_ms >= self.expires_at_ms {
            return Err(ReserveError::Expired);
        }
        if self.holds.contains_key(&request) {
            return Err(ReserveError::DuplicateRequest);
        }
        if self.holds.len() >= HOLDS_MAX {
            return Err(ReserveError::TooManyHolds);
        }
        let remaining = self.remaining();
        let amount = wanted.min(remaining);
        if amount < minimum || (amount.is_zero() && !wanted.is_zero()) {
            return Err(ReserveError::InsufficientBudget { remaining, minimum });
        }
        // `amount <= remaining` so the sum stays within the allowance.
        self.held = self.held.checked_add(amount).unwrap_or(self.allowance);
        self.holds.insert(
            request,
            Hold {
                amount,
                deadline_ms,
            },
        );
        self.assert_invariants();
        Ok(amount)
    }

    /// Turns `request`'s hold into spend: charges `final_amount`, capped at
    /// the hold, and frees the rest. A revoked key still commits the calls it
    /// had in flight: their cost was incurred before the revocation.
    pub fn commit(
        &mut self,
        request: &RequestId,
        final_amount: Amount,
    ) -> Result<Committed, SettleError> {
        let hold = self.holds.remove(request).ok_or(SettleError::UnknownHold)?;
        let charged = final_amount.min(hold.amount);
        assert!(
            charged <= hold.amount,
            "charge ≤ hold broken: charged {} > hold {}",
            charged,
            hold.amount
        );
        self.held = self.held.saturating_sub(hold.amount);
        // `charged <= hold.amount` and the hold was within the allowance.
        self.allowance = self.allowance.saturating_sub(charged);
        self.spent_here = self.spent_here.checked_add(charged).unwrap_or(self.limit);
        self.spent = self
            .spent
            .checked_add(charged)
            .unwrap_or(self.limit)
            .min(self.limit);
        self.assert_invariants();
        Ok(Committed {
            charged,
            limit: self.limit,
            spent: self.spent,
            remaining: self.remaining(),
        })
    }

    /// Frees `request`'s hold without charging (upstream failed).
    pub fn release(&mut self, request: &RequestId) -> Result<Amount, SettleError> {
        let hold = self.holds.remove(request).ok_or(SettleError::UnknownHold)?;
        self.held = self.held.saturating_sub(hold.amount);
        self.assert_invariants();
        Ok(hold.amount)
    }

    /// Ends `request`'s hold without knowing whether its charge was recorded
    /// (a publish whose confirm never came may still land): the hold leaves
    /// the allowance as if spent, but the key's reported spend does not grow.
    /// Stricter, never looser: the lease still covers the amount, and a
    /// charge that never lands comes back when the lease is reclaimed.
    pub fn forfeit(&mut self, request: &RequestId) -> Result<Amount, SettleError> {
        let hold = self.holds.remove(request).ok_or(SettleError::UnknownHold)?;
        self.held = self.held.saturating_sub(hold.amount);
        self.allowance = self.allowance.saturating_sub(hold.amount);
        self.forfeited = self
            .forfeited
            .checked_add(hold.amount)
            .unwrap_or(self.limit);
        self.assert_invariants();
        Ok(hold.amount)
    }

    /// Counts a charge the ledger recorded but no hold of this budget
    /// committed (its hold had expired): it leaves the allowance and joins
    /// the spend, so this node never spends that budget again.
    pub fn absorb(&mut self, amount: Amount) {
        let free = self.allowance.saturating_sub(self.held);
        self.allowance = self.allowance.saturating_sub(amount.min(free));
        // Only what left the allowance is this budget's own spend: the rest
        // (other calls hold it) was never counted here.
        self.spent_here = self
            .spent_here
            .checked_add(amount.min(free))
            .unwrap_or(self.limit);
        self.spent = self
            .spent
            .checked_add(amount)
            .unwrap_or(self.limit)
            .min(self.limit);
        // The ledger took the charge within the key's limit.
        self.fit_within_limit();
        self.assert_invariants();
    }

    /// Restores `spent + allowance ≤ limit` after the view of `spent` moved:
    /// the allowance shrinks to what the limit leaves (never below what
    /// calls hold), and should the holds alone pass it, the reported spend
    /// gives way — stricter, never looser.
    fn fit_within_limit(&mut self) {
        let ceiling = self.limit.saturating_sub(self.spent);
        self.allowance = self.allowance.min(ceiling).max(self.held);
        if self
            .spent
            .checked_add(self.allowance)
            .is_none_or(|sum| sum > self.limit)
        {
            self.spent = self.limit.saturating_sub(self.allowance);
        }
    }

    /// Moves a hold's deadline later (never earlier): its call is still
    /// writing its charge, and the hold must not expire under it.
    pub fn extend(&mut self, request: &RequestId, deadline_ms: i64) -> Result<(), SettleError> {
        let hold = self
            .holds
            .get_mut(request)
            .ok_or(SettleError::UnknownHold)?;
        hold.deadline_ms = hold.deadline_ms.max(deadline_ms);
        self.assert_invariants();
        Ok(())
    }

    /// Frees every hold whose deadline has passed; returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.holds.len();
        self.holds.retain(|_, hold| hold.deadline_ms > now_ms);
        self.held = self.holds.values().fold(Amount::ZERO, |sum, h| {
            sum.checked_add(h.amount).unwrap_or(sum)
        });
        self.assert_invariants();
        before - self.holds.len()
    }

    /// Refuses every later reservation (`status` says why: revoked or
    /// superseded). Holds in flight may still commit. Idempotent.
    pub fn revoke(&mut self, status: BudgetStatus) {
        debug_assert_ne!(status, BudgetStatus::Active, "revoking needs a reason");
        if status != BudgetStatus::Active {
            self.status = status;
        }
        self.assert_invariants();
    }

    pub fn snapshot(&self) -> BudgetSnapshot {
        BudgetSnapshot {
            limit: self.limit,
            spent: self.spent,
            held: self.held,
            holds: self.holds.len(),
            status: self.status,
            expires_at_ms: self.expires_at_ms,
            allowance: self.allowance,
        }
    }

    /// Whether any call is in flight.
    pub fn has_holds(&self) -> bool {
        !self.holds.is_empty()
    }

    /// Invariant 1 and the bookkeeping behind it, after every change. The
    /// cheap checks run in production (a failure stops the key's actor, and
    /// the registry reloads the key from the store: stricter, never looser);
    /// the sum over the open holds runs in debug builds only.
    fn assert_invariants(&self) {
        assert!(
            self.held <= self.allowance,
            "held ≤ allowance broken: held {} > allowance {}",
            self.held,
            self.allowance
        );
        // With `held ≤ allowance` this is `spent + held ≤ limit`.
        assert!(
            self.spent
                .checked_add(self.allowance)
                .is_some_and(|used| used <= self.limit),
            "spent + allowance ≤ limit broken: spent {} + allowance {} > limit {}",
            self.spent,
            self.allowance,
            self.limit
        );
        assert!(
            self.allowance
                .checked_add(self.spent_here)
                .and_then(|sum| sum.checked_add(self.forfeited))
                .is_some_and(|sum| sum <= self.granted),
            "allowance + spent_here + forfeited ≤ granted broken: {} + {} + {} > {}",
            self.allowance,
            self.spent_here,
            self.forfeited,
            self.granted
        );
        assert!(
            self.holds.len() <= HOLDS_MAX,
            "holds ≤ HOLDS_MAX broken: {} open",
            self.holds.len()
        );
        debug_assert_eq!(
            Some(self.held),
            self.holds
                .values()
                .try_fold(Amount::ZERO, |sum, h| sum.checked_add(h.amount)),
            "held must equal the sum of open holds"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(n: u64) -> Amount {
        Amount::from_atomic(n).unwrap()
    }

    fn budget(limit: u64) -> Budget {
        Budget::new(amount(limit), Amount::ZERO, BudgetStatus::Active, 1_000)
    }

    #[test]
    fn reserve_commit_charges_at_most_the_hold() {
        let mut b = budget(100);
        let r = RequestId::generate();
        assert_eq!(
            b.reserve(r.clone(), amount(40), amount(1), 0, 500),
            Ok(amount(40))
        );
        assert_eq!(b.remaining(), amount(60));
        let c = b.commit(&r, amount(55)).unwrap();
        assert_eq!(c.charged, amount(40), "capped at the hold");
        assert_eq!((c.spent, c.remaining), (amount(40), amount(60)));
        assert_eq!(
            b.commit(&r, amount(1)),
            Err(SettleError::UnknownHold),
            "a hold commits once"
        );
    }

    #[test]
    fn reserve_lowers_to_what_remains_and_refuses_below_minimum() {
        let mut b = budget(100);
        assert_eq!(
            b.reserve(RequestId::generate(), amount(80), amount(1), 0, 500),
            Ok(amount(80))
        );
        assert_eq!(
            b.reserve(RequestId::generate(), amount(80), amount(5), 0, 500),
            Ok(amount(20))
        );
        assert_eq!(
            b.reserve(RequestId::generate(), amount(80), amount(1), 0, 500),
            Err(ReserveError::InsufficientBudget {
                remaining: Amount::ZERO,
                minimum: amount(1)
            })
        );
    }

    #[test]
    fn release_and_expire_free_holds() {
        let mut b = budget(100);
        let (r1, r2) = (RequestId::generate(), RequestId::generate());
        b.reserve(r1.clone(), amount(30), amount(1), 0, 100)
            .unwrap();
        b.reserve(r2.clone(), amount(30), amount(1), 0, 200)
            .unwrap();
        assert_eq!(b.release(&r1), Ok(amount(30)));
        assert_eq!(b.expire(150), 0);
        assert_eq!(b.expire(200), 1);
        assert_eq!(b.remaining(), amount(100));
        assert_eq!(
            b.commit(&r2, amount(1)),
            Err(SettleError::UnknownHold),
            "an expired hold cannot commit"
        );
    }

    #[test]
    fn revoked_and_expired_keys_refuse_reservations_but_commit_in_flight_calls() {
        let mut b = budget(100);
        let r = RequestId::generate();
        b.reserve(r.clone(), amount(10), amount(1), 0, 500).unwrap();
        b.revoke(BudgetStatus::Revoked);
        assert_eq!(
            b.reserve(RequestId::generate(), amount(1), amount(1), 0, 500),
            Err(ReserveError::Revoked)
        );
        assert_eq!(b.commit(&r, amount(7)).unwrap().spent, amount(7));
        let mut b = budget(100);
        assert_eq!(
            b.reserve(RequestId::generate(), amount(1), amount(1), 1_000, 2_000),
            Err(ReserveError::Expired)
        );
    }

    #[test]
    fn a_leased_budget_spends_only_its_grants_and_returns_the_rest() {
        let mut b = Budget::leased(amount(100), amount(10), BudgetStatus::Active, 1_000);
        assert_eq!(b.remaining(), Amount::ZERO, "no allowance before a grant");
        assert_eq!(b.allowance_short(amount(30), 0), Some(amount(30)));
        assert!(
            b.reserve(RequestId::generate(), amount(30), amount(1), 0, 500)
                .is_err(),
            "nothing to hold before a grant"
        );
        b.grant(amount(40), amount(10));
        assert_eq!(b.allowance_short(amount(30), 0), None);
        let r = RequestId::generate();
        assert_eq!(
            b.reserve(r.clone(), amount(30), amount(1), 0, 500),
            Ok(amount(30))
        );
        assert_eq!(
            b.allowance_short(amount(30), 0),
            Some(amount(20)),
            "10 left of the grant, 50 more unleased"
        );
        let c = b.commit(&r, amount(25)).unwrap();
        assert_eq!((c.spent, c.remaining), (amount(35), amount(15)));
        // Another node spent 20: the store says so at the next grant (10
        // before this budget's lease, 20 since, none of it on the lease).
        b.grant(amount(5), amount(30));
        assert_eq!(b.snapshot().spent, amount(55));
        assert_eq!(b.returnable(), amount(20));
        // Once everything unleased is granted, a short call is clamped, not
        // sent for more.
        b.grant(amount(25), amount(30));
        assert_eq!(b.allowance_short(amount(90), 0), None);
        assert_eq!(b.returnable(), amount(45));
    }

    #[test]
    fn forfeited_and_absorbed_amounts_are_never_spent_again() {
        let mut b = Budget::leased(amount(100), Amount::ZERO, BudgetStatus::Active, 1_000);
        b.grant(amount(100), Amount::ZERO);
        let r = RequestId::generate();
        b.reserve(r.clone(), amount(30), amount(1), 0, 500).unwrap();
        assert_eq!(b.forfeit(&r), Ok(amount(30)));
        assert_eq!(b.remaining(), amount(70), "the forfeited hold is gone");
        assert_eq!(b.snapshot().spent, Amount::ZERO, "but not reported spent");
        assert_eq!(b.returnable(), amount(70));
        b.absorb(amount(20));
        assert_eq!(
            (b.remaining(), b.snapshot().spent),
            (amount(50), amount(20))
        );
    }

    #[test]
    fn a_grant_taken_between_a_charge_and_its_commit_counts_the_charge_once() {
        // Two nodes share a key of 360 in chunks of 120 (4 calls of 30).
        let mut b = Budget::leased(amount(360), Amount::ZERO, BudgetStatus::Active, 1_000);
        b.grant(amount(120), Amount::ZERO);
        // The other node takes 120 and spends it: the store's used is 120.
        let calls: Vec<RequestId> = (0..4).map(|_| RequestId::generate()).collect();
        for r in &calls {
            b.reserve(r.clone(), amount(30), amount(30), 0, 500)
                .unwrap();
        }
        // Store first: this node's four charges land (used 240, this
        // lease charged 120), then a top-up takes the last 120 — and its
        // grant reaches the actor before the four commits do.
        let (used, lease_charged) = (amount(240), amount(120));
        b.grant(amount(120), used.saturating_sub(lease_charged));
        assert_eq!(b.snapshot().spent, amount(120), "the four not counted yet");
        for r in &calls {
            b.commit(r, amount(30)).unwrap();
        }
        let s = b.snapshot();
        assert_eq!(
            (s.spent, s.remaining()),
            (amount(240), amount(120)),
            "each charge counted once, the last chunk spendable"
        );
        // The same take answered after the commits (or, in queue mode, a
        // charge committed before it lands) counts the same.
        let mut b = Budget::leased(amount(360), Amount::ZERO, BudgetStatus::Active, 1_000);
        b.grant(amount(120), Amount::ZERO);
        for r in &calls {
            b.reserve(r.clone(), amount(30), amount(30), 0, 500)
                .unwrap();
            b.commit(r, amount(30)).unwrap();
        }
        b.grant(amount(120), used.saturating_sub(lease_charged));
        let s = b.snapshot();
        assert_eq!((s.spent, s.remaining()), (amount(240), amount(120)));
    }

    /// A forfeited hold (its charge may have landed: the lease's `charged`
    /// then holds it, so the store's figure leaves it out) counts as spent
    /// at the next grant — stricter, never looser — not as nothing.
    #[test]
    fn a_forfeited_hold_counts_as_spent_at_the_next_grant() {
        let mut b = Budget::leased(amount(100), Amount::ZERO, BudgetStatus::Active, 1_000);
        b.grant(amount(50), Amount::ZERO);
        let r = RequestId::generate();
        b.reserve(r.clone(), amount(30), amount(30), 0, 500)
            .unwrap();
        b.forfeit(&r).unwrap();
        // The charge landed: used 30, all of it on this lease.
        b.grant(amount(10), amount(30).saturating_sub(amount(30)));
        let s = b.snapshot();
        assert_eq!((s.spent, s.remaining()), (amount(30), amount(30)));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the store granted past the limit")]
    fn a_grant_past_what_others_left_is_caught() {
        let mut b = Budget::leased(amount(360), Amount::ZERO, BudgetStatus::Active, 1_000);
        b.grant(amount(120), Amount::ZERO);
        // Others spent 240 and 120 is leased here: nothing was left to grant.
        b.grant(amount(120), amount(240));
    }

    #[test]
    fn a_dry_store_is_not_asked_again_for_a_while() {
        let mut b = Budget::leased(amount(100), Amount::ZERO, BudgetStatus::Active, 10_000);
        assert!(b.allowance_short(amount(10), 0).is_some());
        b.mark_dry(250);
        assert_eq!(b.allowance_short(amount(10), 249), None);
        assert!(b.allowance_short(amount(10), 250).is_some());
    }

    #[test]
    fn an_unleased_budget_never_asks_for_grants() {
        let mut b = budget(100);
        assert_eq!(b.allowance_short(amount(1_000), 0), None);
        b.revoke(BudgetStatus::Revoked);
        let mut leased = Budget::leased(amount(100), Amount::ZERO, BudgetStatus::Active, 1_000);
        leased.revoke(BudgetStatus::Revoked);
        assert_eq!(
            leased.allowance_short(amount(1), 0),
            None,
            "a revoked key takes no more"
        );
    }

    #[test]
    fn duplicate_requests_are_refused() {
        let mut b = budget(100);
        let r = RequestId::generate();
        b.reserve(r.clone(), amount(1), amount(1), 0, 500).unwrap();
        assert_eq!(
            b.reserve(r, amount(1), amount(1), 0, 500),
            Err(ReserveError::DuplicateRequest)
        );
    }
}
