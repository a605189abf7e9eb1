//! The actor answers each message with the budget's answer, and concurrent
//! reservations from many tasks never hold past the limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Actor;
use actors::budget::{Budget, BudgetStatus, ReserveError, SettleError};
use actors::key_actor::KeyActor;
use actors::messages::{Commit, Extend, Release, Reserve, Revoke, Snapshot};
use ledger::time::now_ms;
use ledger::{Amount, KeyId, RequestId};

fn amount(n: u64) -> Amount {
    Amount::from_atomic(n).unwrap()
}

fn start(limit: u64, expired: Arc<AtomicU64>) -> actix::Addr<KeyActor> {
    let budget = Budget::new(
        amount(limit),
        Amount::ZERO,
        BudgetStatus::Active,
        now_ms() + 60_000,
    );
    KeyActor::new(KeyId::generate(), budget, expired).start()
}

#[actix::test]
async fn concurrent_reservations_never_exceed_the_limit() {
    // Budget for exactly 10 maximum-cost calls, asked for by 100 at once.
    let addr = start(1_000, Arc::new(AtomicU64::new(0)));
    let mut calls = Vec::new();
    for _ in 0..100 {
        let addr = addr.clone();
        calls.push(actix::spawn(async move {
            let request = RequestId::generate();
            let deadline_ms = now_ms() + 10_000;
            let held = addr
                .send(Reserve {
                    request: request.clone(),
                    wanted: amount(100),
                    minimum: amount(100),
                    deadline_ms,
                    grow: false,
                    low_water: Amount::ZERO,
                })
                .await
                .unwrap();
            match held {
                Ok(_) => Some(
                    addr.send(Commit {
                        request,
                        final_amount: amount(100),
                    })
                    .await
                    .unwrap()
                    .unwrap()
                    .charged,
                ),
                Err(ReserveError::InsufficientBudget { .. }) => None,
                Err(other) => panic!("{other:?}"),
            }
        }));
    }
    let mut charged = Amount::ZERO;
    let mut succeeded = 0;
    for call in calls {
        if let Some(c) = call.await.unwrap() {
            charged = charged.checked_add(c).unwrap();
            succeeded += 1;
        }
    }
    assert_eq!(succeeded, 10);
    let snapshot = addr.send(Snapshot).await.unwrap();
    assert_eq!(snapshot.spent, charged);
    assert_eq!(snapshot.spent, amount(1_000));
    assert_eq!(snapshot.held, Amount::ZERO);
}

#[actix::test]
async fn release_revoke_and_expiry_through_the_mailbox() {
    let expired = Arc::new(AtomicU64::new(0));
    let addr = start(100, expired.clone());
    let r = RequestId::generate();
    addr.send(Reserve {
        request: r.clone(),
        wanted: amount(60),
        minimum: amount(1),
        deadline_ms: now_ms() + 10_000,
        grow: false,
        low_water: Amount::ZERO,
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        addr.send(Release { request: r }).await.unwrap(),
        Ok(amount(60))
    );

    // A hold whose deadline passes is swept and counted.
    let short = RequestId::generate();
    addr.send(Reserve {
        request: short.clone(),
        wanted: amount(50),
        minimum: amount(1),
        deadline_ms: now_ms() + 100,
        grow: false,
        low_water: Amount::ZERO,
    })
    .await
    .unwrap()
    .unwrap();
    // The sweep runs every EXPIRY_SWEEP: wait for it, with a deadline.
    let deadline = std::time::Instant::now() + actors::key_actor::EXPIRY_SWEEP * 10;
    while expired.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(expired.load(Ordering::Relaxed), 1);
    assert_eq!(addr.send(Snapshot).await.unwrap().held, Amount::ZERO);
    assert_eq!(
        addr.send(Commit {
            request: short,
            final_amount: amount(1)
        })
        .await
        .unwrap(),
        Err(SettleError::UnknownHold),
        "an expired hold cannot be committed"
    );

    addr.send(Revoke {
        status: BudgetStatus::Revoked,
    })
    .await
    .unwrap();
    let refused = addr
        .send(Reserve {
            request: RequestId::generate(),
            wanted: amount(1),
            minimum: amount(1),
            deadline_ms: now_ms() + 10_000,
            grow: false,
            low_water: Amount::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(refused, Err(ReserveError::Revoked));
    assert_eq!(
        addr.send(Snapshot).await.unwrap().status,
        BudgetStatus::Revoked
    );
}

/// A hold whose call is still writing its charge is extended, and then
/// outlives its first deadline: the expiry sweep leaves it, the commit lands.
#[actix::test]
async fn an_extended_hold_outlives_its_first_deadline() {
    let expired = Arc::new(AtomicU64::new(0));
    let addr = start(100, expired.clone());
    let request = RequestId::generate();
    addr.send(Reserve {
        request: request.clone(),
        wanted: amount(40),
        minimum: amount(1),
        deadline_ms: now_ms() + 200,
        grow: false,
        low_water: Amount::ZERO,
    })
    .await
    .unwrap()
    .unwrap();
    addr.send(Extend {
        request: request.clone(),
        deadline_ms: now_ms() + 60_000,
    })
    .await
    .unwrap()
    .unwrap();
    // Past the first deadline and two sweeps.
    tokio::time::sleep(std::time::Duration::from_millis(200) + actors::key_actor::EXPIRY_SWEEP * 2)
        .await;
    assert_eq!(expired.load(Ordering::Relaxed), 0);
    assert_eq!(addr.send(Snapshot).await.unwrap().held, amount(40));
    let committed = addr
        .send(Commit {
            request: request.clone(),
            final_amount: amount(30),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(committed.charged, amount(30));
    // An unknown hold cannot be extended.
    assert_eq!(
        addr.send(Extend {
            request,
            deadline_ms: now_ms() + 60_000,
        })
        .await
        .unwrap(),
        Err(SettleError::UnknownHold)
    );
}
