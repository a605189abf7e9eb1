//! Property test: random interleavings of reserve / commit / release / expire
//! / revoke never break `spent + held ≤ limit`, never lose a hold, and keep
//! `spent` equal to the sum of what commits charged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use actors::budget::{Budget, BudgetStatus, ReserveError};
use ledger::{Amount, RequestId};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        wanted: u64,
        minimum: u64,
        ttl_ms: i64,
    },
    Commit {
        pick: usize,
        final_amount: u64,
    },
    Release {
        pick: usize,
    },
    Expire,
    Revoke,
    Tick {
        ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..400, 0u64..50, 1i64..100).prop_map(|(wanted, minimum, ttl_ms)| Op::Reserve { wanted, minimum, ttl_ms }),
        3 => (any::<usize>(), 0u64..500).prop_map(|(pick, final_amount)| Op::Commit { pick, final_amount }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => Just(Op::Expire),
        1 => (1i64..40).prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::Revoke),
    ]
}

fn amount(n: u64) -> Amount {
    Amount::from_atomic(n).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn interleavings_keep_the_invariants(limit in 0u64..2_000, spent in 0u64..500, ops in prop::collection::vec(op(), 1..200)) {
        let mut budget = Budget::new(amount(limit), amount(spent.min(limit)), BudgetStatus::Active, 10_000);
        // The model: open holds with their amounts and deadlines, and spend.
        let mut open: HashMap<RequestId, (u64, i64)> = HashMap::new();
        let mut order: Vec<RequestId> = Vec::new();
        let mut model_spent = spent.min(limit);
        let mut revoked = false;
        let mut now = 0i64;

        for op in ops {
            match op {
                Op::Reserve { wanted, minimum, ttl_ms } => {
                    let request = RequestId::generate();
                    let remaining = limit - model_spent - open.values().map(|(a, _)| a).sum::<u64>();
                    match budget.reserve(request.clone(), amount(wanted), amount(minimum), now, now + ttl_ms) {
                        Ok(held) => {
                            prop_assert!(!revoked);
                            prop_assert_eq!(held.atomic(), wanted.min(remaining));
                            prop_assert!(held.atomic() >= minimum);
                            open.insert(request.clone(), (held.atomic(), now + ttl_ms));
                            order.push(request);
                        }
                        Err(ReserveError::Revoked) => prop_assert!(revoked),
                        Err(ReserveError::InsufficientBudget { .. }) => {
                            prop_assert!(wanted.min(remaining) < minimum || (remaining == 0 && wanted > 0));
                        }
                        Err(other) => prop_assert!(false, "unexpected {other:?}"),
                    }
                }
                Op::Commit { pick, final_amount } => {
                    if order.is_empty() { continue; }
                    let request = order[pick % order.len()].clone();
                    match (budget.commit(&request, amount(final_amount)), open.remove(&request)) {
                        (Ok(c), Some((held, _))) => {
                            prop_assert_eq!(c.charged.atomic(), final_amount.min(held));
                            model_spent += c.charged.atomic();
                        }
                        (Err(_), None) => {}
                        (got, model) => prop_assert!(false, "commit {got:?} vs model {model:?}"),
                    }
                }
                Op::Release { pick } => {
                    if order.is_empty() { continue; }
                    let request = order[pick % order.len()].clone();
                    match (budget.release(&request), open.remove(&request)) {
                        (Ok(freed), Some((held, _))) => prop_assert_eq!(freed.atomic(), held),
                        (Err(_), None) => {}
                        (got, model) => prop_assert!(false, "release {got:?} vs model {model:?}"),
                    }
                }
                Op::Expire => {
                    let expired = budget.expire(now);
                    let before = open.len();
                    open.retain(|_, (_, deadline)| *deadline > now);
                    prop_assert_eq!(expired, before - open.len());
                }
                Op::Revoke => {
                    budget.revoke(BudgetStatus::Revoked);
                    revoked = true;
                }
                Op::Tick { ms } => now += ms,
            }
            let s = budget.snapshot();
            let model_held: u64 = open.values().map(|(a, _)| a).sum();
            prop_assert!(s.spent.atomic() + s.held.atomic() <= limit, "spent + held > limit");
            prop_assert_eq!(s.held.atomic(), model_held, "a hold was lost or invented");
            prop_assert_eq!(s.holds, open.len());
            prop_assert_eq!(s.spent.atomic(), model_spent, "spent is the sum of charges");
        }
    }
}
