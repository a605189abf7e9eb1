//! Settlement in the `ledger` mode, end to end over HTTP on both stores:
//! paid calls' charges are debited from the payer's prepaid balance in
//! batches; each charge once (`status` becomes `settled` with its batch),
//! the balance's `debited` equals the sum of the charges, and the wallet's
//! `available` is the same before and after settling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{header_amount, json_of, spawn_paid_app_with, CHAIN};
use ledger::store::Backend;
use ledger::time::now_ms;
use ledger::ChainId;
use serde_json::json;

async fn paid_charges_settle_against_the_prepaid_balance(backend: Backend) {
    let (app, _mock) =
        spawn_paid_app_with(backend, &[("TOLLGATE__SETTLEMENT__INTERVAL_MS", "100")]).await;
    let key = app.paid_key(1_000).await;
    let chain = ChainId(CHAIN);
    let before = app.store.balance(&key.wallet.address, chain).await.unwrap();
    let mut reported = 0;
    for words in 1..=6 {
        let text: Vec<String> = (0..words).map(|i| format!("w{i}")).collect();
        let body = json!({"model": "echo", "max_tokens": 5,
                          "messages": [{"role": "user", "content": text.join(" ")}]});
        let response = app.chat(&key.token, &body).await;
        assert_eq!(response.status(), 200);
        reported += header_amount(&response, "x-compose-key-final-amount-wei");
    }
    let funding = app
        .store
        .funding(&key.wallet.address, chain, now_ms())
        .await
        .unwrap();
    // Every charge settles within a few intervals.
    let deadline = Instant::now() + Duration::from_secs(10);
    let charges = loop {
        let (status, body) = json_of(
            app.client
                .get(app.url(&format!("/api/keys/{}/charges", key.key_id)))
                .bearer_auth(&key.token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let charges = body["charges"].as_array().unwrap().clone();
        assert_eq!(charges.len(), 6);
        if charges.iter().all(|c| c["status"] == "settled") {
            break charges;
        }
        assert!(Instant::now() < deadline, "not settled: {charges:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = app.store.balance(&key.wallet.address, chain).await.unwrap();
    assert_eq!(
        after.debited.atomic() - before.debited.atomic(),
        reported,
        "the balance was debited exactly the reported charges"
    );
    assert_eq!(after.credited, before.credited);
    let settled = app
        .store
        .funding(&key.wallet.address, chain, now_ms())
        .await
        .unwrap();
    assert_eq!(
        settled.available, funding.available,
        "settling moves nothing out of available"
    );
    assert_eq!(app.spent(&key.key_id).await, (reported, reported));
    // Nothing settles twice: later passes leave the balance alone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = app.store.balance(&key.wallet.address, chain).await.unwrap();
    assert_eq!(later.debited, after.debited);
    // What operators see: `settlements list` and `show`, through the binary.
    let cli = |args: &[&str]| {
        let output = common::process::tollgate()
            .args(args)
            .env("TOLLGATE__STORE__URL", &app.db.url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let listed = cli(&["settlements", "list", "--status", "settled", "--json"]);
    assert_eq!(listed["charges"]["settled"], 6, "{listed}");
    let batch = charges[0]["batchId"]
        .as_str()
        .expect("a settled charge names its batch");
    let batches = listed["batches"].as_array().unwrap();
    assert!(batches.iter().any(|b| b["id"] == batch), "{listed}");
    // The books agree with themselves; a tampered balance is found.
    let reconciled = cli(&["reconcile", "--json"]);
    assert_eq!(reconciled["differences"], json!([]), "{reconciled}");
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&app.db.url).await.unwrap();
        sqlx::query("UPDATE balances SET debited_atomic = debited_atomic + 1 WHERE wallet = $1")
            .bind(key.wallet.address.to_lower_hex())
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let output = common::process::tollgate()
        .args(["reconcile", "--json"])
        .env("TOLLGATE__STORE__URL", &app.db.url)
        .output()
        .unwrap();
    assert!(!output.status.success(), "a difference exits non-zero");
    let found: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let differences = found["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{found}");
    assert!(differences[0]["check"]
        .as_str()
        .unwrap()
        .contains("debited"));
    assert_eq!(
        differences[0]["found"].as_i64().unwrap() - differences[0]["expected"].as_i64().unwrap(),
        1
    );
    let shown = cli(&["settlements", "show", batch, "--json"]);
    assert_eq!(
        (shown["id"].as_str(), shown["status"].as_str()),
        (Some(batch), Some("settled"))
    );
    assert!(shown["chargeCount"].as_i64().unwrap() >= 1);
}

both_stores!(paid_charges_settle_against_the_prepaid_balance);
