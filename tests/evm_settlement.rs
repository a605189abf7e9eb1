//! Settlement on chain, end to end (docs/settlement.md, "On chain"): a
//! server in the `evm` mode on a real local chain (Anvil with mock USDC and
//! the settlement contract, started per test) and PostgreSQL.
//!
//! * Key creation answers 402 with balance and allowance details for a wallet
//!   without allowance and for one without balance.
//! * Paid calls through `/external/v1` settle in batches: the USDC moved from
//!   each payer equals the sum of its settled charges and its `budgetUsed`,
//!   the treasury received their total, each charge lists its `txHash`,
//!   later calls carry `x-compose-key-tx-hash`, and `tollgate reconcile`
//!   exits 0 — and non-zero once the ledger and the chain disagree.
//! * The settler killed between signing and broadcast, and between
//!   broadcast and receipt: on restart each batch settles exactly once, with
//!   the same signed bytes.
//! * A settlement reverted because the operator role moved while it was
//!   unmined: the chain pauses naming the operator; fixed, it settles once.
//! * A settlement the chain lost (a reorg, `evm_revert`): `reconcile` exits
//!   non-zero, `settlements replay BATCH` asks the chain and sends the batch
//!   again; the payer pays once, and a second replay is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::process::{spawn_serving_with, tollgate};
use common::*;
use ledger::store::Backend;
use ledger::testing::{create_funded_key, test_charge};
use ledger::{Amount, ChainId, KeyId};
use reqwest::StatusCode;
use serde_json::json;
use workers::evm::devnet::{deploy, Anvil, AnvilOptions, DevChain};
use workers::evm::Address;

struct Chain {
    _anvil: Anvil,
    dev: DevChain,
}

async fn chain() -> Chain {
    let anvil = Anvil::start(&AnvilOptions::default())
        .await
        .expect("Anvil (npm ci installs it)");
    let deployment = deploy(&anvil.rpc_url).await.expect("deploy the contracts");
    Chain {
        dev: DevChain::new(deployment).unwrap(),
        _anvil: anvil,
    }
}

impl Chain {
    /// The `evm` mode's settings for this chain.
    fn env(&self) -> Vec<(String, String)> {
        let d = &self.dev.deployment;
        let chain = |field: &str| format!("TOLLGATE__CHAINS__{CHAIN}__{field}");
        vec![
            ("TOLLGATE__SETTLEMENT__MODE".into(), "evm".into()),
            ("TOLLGATE__SETTLEMENT__INTERVAL_MS".into(), "100".into()),
            (chain("RPC_URL"), d.rpc_url.clone()),
            (chain("USDC"), format!("{:#x}", d.usdc)),
            (
                chain("SETTLEMENT_CONTRACT"),
                format!("{:#x}", d.settlement_contract),
            ),
            (chain("TREASURY"), format!("{:#x}", d.treasury)),
            (chain("OPERATOR_KEY"), d.operator_key.clone()),
            (chain("BATCH_MAX_AGE_MS"), "0".into()),
            (chain("BATCH_MAX_PAYERS"), "10".into()),
        ]
    }

    async fn usdc(&self, wallet: Address) -> u64 {
        u64::try_from(self.dev.usdc_balance(wallet).await.unwrap()).unwrap()
    }
}

fn address(wallet: &Wallet) -> Address {
    Address::from(*wallet.address.as_bytes())
}

/// `tollgate ARGS` against `app`'s store, with the chain's settings `env`
/// and `extra` on top: (success, stdout).
fn tollgate_cli(
    app: &TestApp,
    env: &[(String, String)],
    extra: &[(&str, &str)],
    args: &[&str],
) -> (bool, String) {
    let output = tollgate()
        .args(args)
        .env("TOLLGATE__STORE__URL", &app.db.url)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test]
async fn paid_calls_settle_on_chain_and_the_books_agree() {
    let chain = chain().await;
    let env = chain.env();
    let (app, _mock) = spawn_paid_app_with(Backend::Postgres, &borrowed(&env)).await;
    let treasury = chain.dev.deployment.treasury;
    let chain_id = CHAIN.to_string();

    // Funding check against the chain: no allowance, then no balance.
    let (alice, bob, carol) = (Wallet::random(), Wallet::random(), Wallet::random());
    chain.dev.mint(address(&alice), 10_000_000).await.unwrap();
    chain.dev.mint(address(&bob), 10_000_000).await.unwrap();
    let alice_session = app.sign_in(&alice).await;
    let (status, body) = app
        .create_key(
            &alice_session,
            &alice.hex(),
            &chain_id,
            &json!({ "budgetLimit": 1_000_000 }),
        )
        .await;
    assert_error(&(status, body.clone()), 402, "insufficient_funds");
    let details = &body["error"]["details"];
    assert_eq!(details["short"], "allowance", "{body}");
    assert_eq!(details["balance"], "10000000", "{body}");
    assert_eq!(details["allowance"], "0", "{body}");
    let carol_session = app.sign_in(&carol).await;
    chain.dev.approve(address(&carol), 5_000_000).await.unwrap();
    let (status, body) = app
        .create_key(
            &carol_session,
            &carol.hex(),
            &chain_id,
            &json!({ "budgetLimit": 1_000_000 }),
        )
        .await;
    assert_error(&(status, body.clone()), 402, "insufficient_funds");
    assert_eq!(body["error"]["details"]["short"], "balance", "{body}");

    // With allowance: budgets fit min(balance, allowance) together.
    chain.dev.approve(address(&alice), 5_000_000).await.unwrap();
    let mut keys = Vec::new();
    for (wallet, session) in [(&alice, &alice_session), (&bob, &app.sign_in(&bob).await)] {
        if wallet.address == bob.address {
            chain.dev.approve(address(&bob), 5_000_000).await.unwrap();
        }
        let (status, body) = app
            .create_key(
                session,
                &wallet.hex(),
                &chain_id,
                &json!({ "budgetLimit": 2_000_000 }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        keys.push((
            address(wallet),
            body["keyId"].as_str().unwrap().to_owned(),
            body["token"].as_str().unwrap().to_owned(),
        ));
    }
    let (status, body) = app
        .create_key(
            &alice_session,
            &alice.hex(),
            &chain_id,
            &json!({ "budgetLimit": 3_500_000 }),
        )
        .await;
    assert_error(&(status, body), 402, "insufficient_funds");

    let before: Vec<u64> =
        futures_util::future::join_all(keys.iter().map(|k| chain.usdc(k.0))).await;
    let treasury_before = chain.usdc(treasury).await;
    let mut reported = std::collections::HashMap::new();
    for round in 0..6 {
        for (_, _, token) in &keys {
            let response = app
                .chat(token, &json!({ "model": "echo", "messages": [
                    { "role": "user", "content": format!("round {round} of settling on chain") }] }))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            let amount = header_amount(&response, "x-compose-key-final-amount-wei");
            let id = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            reported.insert(id, amount);
        }
    }
    assert_eq!(app.charges_missing(&reported).await, 0);

    // Every charge settles on chain.
    let settled = eventually(Duration::from_secs(30), || async {
        app.store
            .charge_status_counts()
            .await
            .unwrap()
            .iter()
            .all(|(status, _)| status == "settled")
    })
    .await;
    assert!(
        settled,
        "{:?}",
        app.store.charge_status_counts().await.unwrap()
    );

    let mut total = 0;
    for ((payer, key_id, _), before) in keys.iter().zip(&before) {
        let (used, charged) = app.spent(key_id).await;
        assert_eq!(used, charged, "budgetUsed = Σ charges");
        assert_eq!(
            before - chain.usdc(*payer).await,
            charged,
            "USDC moved = Σ settled charges"
        );
        total += charged;
        let (status, body) = json_of(
            app.client
                .get(app.url(&format!("/api/keys/{key_id}/charges")))
                .bearer_auth(if *payer == address(&alice) {
                    &alice_session
                } else {
                    ""
                })
                .send()
                .await
                .unwrap(),
        )
        .await;
        if *payer == address(&alice) {
            assert_eq!(status, StatusCode::OK, "{body}");
            for charge in body["charges"].as_array().unwrap() {
                assert_eq!(charge["status"], "settled", "{charge}");
                assert!(
                    charge["txHash"]
                        .as_str()
                        .is_some_and(|h| h.starts_with("0x")),
                    "{charge}"
                );
            }
        }
    }
    assert_eq!(chain.usdc(treasury).await - treasury_before, total);

    // Later calls name the key's latest settlement transaction.
    let hashed = eventually(Duration::from_secs(5), || async {
        let response = app
            .chat(
                &keys[0].2,
                &json!({ "model": "echo", "messages": [{ "role": "user", "content": "hash" }] }),
            )
            .await;
        response
            .headers()
            .get("x-compose-key-tx-hash")
            .is_some_and(|h| h.to_str().unwrap().starts_with("0x") && h.len() == 66)
    })
    .await;
    assert!(hashed, "x-compose-key-tx-hash never appeared");
    eventually(Duration::from_secs(30), || async {
        app.store
            .charge_status_counts()
            .await
            .unwrap()
            .iter()
            .all(|(s, _)| s == "settled")
    })
    .await;

    // The operator's view: the books agree with the chain …
    let reconcile = || tollgate_cli(&app, &env, &[], &["reconcile", "--json"]);
    let (clean, out) = reconcile();
    assert!(clean, "{out}");
    // … and not once the ledger says a payer paid less than the chain moved.
    let batch = app.store.settlement_batches(Some("settled")).await.unwrap()[0]
        .id
        .clone();
    let charge = app
        .store
        .charges_for_key(&KeyId::parse(&keys[0].1).unwrap())
        .await
        .unwrap()[0]
        .clone();
    sqlx::query("UPDATE charges SET status = 'failed' WHERE request_id = $1")
        .bind(charge.request_id.to_string())
        .execute(&sqlx::PgPool::connect(&app.db.url).await.unwrap())
        .await
        .unwrap();
    let (dirty, out) = reconcile();
    assert!(!dirty);
    assert!(out.contains("invariant 4"), "{out}");
    let _ = batch;
}

/// Charges of three payers recorded straight into the store the binary uses.
async fn pending_charges(store: &ledger::Store, chain: &Chain, payers: &[Address]) -> u64 {
    let mut total = 0;
    for (i, payer) in payers.iter().enumerate() {
        chain.dev.approve(*payer, 1_000_000).await.unwrap();
        let key = KeyId::generate();
        let wallet = ledger::WalletAddress::from_bytes(payer.0 .0);
        create_funded_key(
            store,
            &key,
            wallet,
            ChainId(CHAIN),
            Amount::from_atomic(1_000_000).unwrap(),
        )
        .await;
        let amount = 100 * (i as u64 + 1);
        total += amount;
        store
            .record_charge(&test_charge(&key, Amount::from_atomic(amount).unwrap()))
            .await
            .unwrap();
    }
    total
}

/// Runs `serve` on the store until every charge settled; `crash_at` makes
/// its settler die at that point first (the process exits there).
#[tokio::test]
async fn a_settler_killed_mid_batch_settles_it_exactly_once_on_restart() {
    for crash_at in ["after_sign", "after_broadcast"] {
        let chain = chain().await;
        let db = ledger::testing::TestDb::create(Backend::Postgres).await;
        let store = db.store().await;
        let payers: Vec<Address> = chain.dev.deployment.accounts[1..4].to_vec();
        let before: Vec<u64> =
            futures_util::future::join_all(payers.iter().map(|p| chain.usdc(*p))).await;
        let total = pending_charges(&store, &chain, &payers).await;
        let treasury_before = chain.usdc(chain.dev.deployment.treasury).await;

        let dir = TempDir(
            std::env::temp_dir().join(format!("tollgate-evm-{}", uuid::Uuid::now_v7().simple())),
        );
        std::fs::create_dir_all(&dir.0).unwrap();
        let mut env = chain.env();
        env.push(("TOLLGATE__STORE__URL".into(), db.url.clone()));
        let mut crashing = env.clone();
        crashing.push(("TOLLGATE_TEST_CRASH_AT".into(), crash_at.into()));
        let (mut first, _) =
            spawn_serving_with(&dir.0, "127.0.0.1:0", "first.log", &borrowed(&crashing));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(status) = first.0.try_wait().unwrap() {
                break status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{crash_at}: never reached"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            code,
            Some(86),
            "{crash_at}: the settler died at its crash point"
        );
        let batch = store.settlement_batches(None).await.unwrap()[0].clone();
        assert_eq!(batch.status, "sending", "{crash_at}");
        let signed = store.batch_txs(&batch.id).await.unwrap();
        assert_eq!(signed.len(), 1);
        assert_eq!(
            signed[0].broadcast_at_ms.is_some(),
            crash_at == "after_broadcast"
        );

        let (_second, _) = spawn_serving_with(&dir.0, "127.0.0.1:0", "second.log", &borrowed(&env));
        let settled = eventually(Duration::from_secs(20), || async {
            store
                .settlement_batch(&batch.id)
                .await
                .unwrap()
                .unwrap()
                .status
                == "settled"
        })
        .await;
        assert!(
            settled,
            "{crash_at}: the batch never settled after the restart"
        );
        let record = store.settlement_batch(&batch.id).await.unwrap().unwrap();
        assert_eq!(
            record.tx_hash.as_deref(),
            Some(signed[0].hash.as_str()),
            "{crash_at}: the same bytes"
        );
        assert_eq!(
            store.batch_txs(&batch.id).await.unwrap().len(),
            1,
            "{crash_at}: nothing signed again"
        );
        for ((payer, before), i) in payers.iter().zip(&before).zip(1u64..) {
            assert_eq!(
                before - chain.usdc(*payer).await,
                100 * i,
                "{crash_at}: {payer} paid once"
            );
        }
        assert_eq!(
            chain.usdc(chain.dev.deployment.treasury).await - treasury_before,
            total
        );
    }
}

/// A wallet with `usdc` minted and approved, signed in, with a key of
/// `budget`: (wallet, session, key id, token).
async fn wallet_with_key(
    app: &TestApp,
    chain: &Chain,
    usdc: u64,
    budget: u64,
) -> (Wallet, String, String, String) {
    let wallet = Wallet::random();
    chain.dev.mint(address(&wallet), usdc).await.unwrap();
    chain.dev.approve(address(&wallet), usdc).await.unwrap();
    let session = app.sign_in(&wallet).await;
    let (status, body) = app
        .create_key(
            &session,
            &wallet.hex(),
            &CHAIN.to_string(),
            &json!({ "budgetLimit": budget }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let key_id = body["keyId"].as_str().unwrap().to_owned();
    let token = body["token"].as_str().unwrap().to_owned();
    (wallet, session, key_id, token)
}

#[tokio::test]
async fn a_blacklisted_payer_fails_alone_and_the_cli_replays_it_once() {
    let chain = chain().await;
    let env = chain.env();
    let (app, _mock) = spawn_paid_app_with(Backend::Sqlite, &borrowed(&env)).await;
    let (good, _, good_key, good_token) = wallet_with_key(&app, &chain, 5_000_000, 1_000_000).await;
    let (bad, bad_session, bad_key, bad_token) =
        wallet_with_key(&app, &chain, 5_000_000, 1_000_000).await;
    chain.dev.blacklist(address(&bad), true).await.unwrap();
    let before = (
        chain.usdc(address(&good)).await,
        chain.usdc(address(&bad)).await,
    );
    for token in [&good_token, &bad_token, &bad_token] {
        let response = app
            .chat(token, &json!({ "model": "echo", "messages": [{ "role": "user", "content": "one two three" }] }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let cli = |args: &[&str]| tollgate_cli(&app, &env, &[], args);
    let status_of = |key: String| {
        let store = app.store.clone();
        async move {
            let id = KeyId::parse(&key).unwrap();
            let mut statuses: Vec<String> = store
                .charges_for_key(&id)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.status)
                .collect();
            statuses.dedup();
            statuses
        }
    };
    let outcome = eventually(Duration::from_secs(20), || async {
        status_of(good_key.clone()).await == ["settled"]
            && status_of(bad_key.clone()).await == ["failed"]
    })
    .await;
    assert!(
        outcome,
        "good {:?}, bad {:?}",
        status_of(good_key.clone()).await,
        status_of(bad_key.clone()).await
    );
    assert_eq!(
        chain.usdc(address(&bad)).await,
        before.1,
        "the blacklisted payer paid nothing"
    );
    let (good_used, _) = app.spent(&good_key).await;
    assert_eq!(
        before.0 - chain.usdc(address(&good)).await,
        good_used,
        "the rest of its batch settled"
    );

    // The operator sees why, fixes it, and replays.
    let (ok, out) = cli(&["settlements", "list", "--status", "settled", "--json"]);
    assert!(ok, "{out}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let batch = listed["batches"][0]["id"].as_str().unwrap().to_owned();
    let (ok, out) = cli(&["settlements", "show", &batch, "--json"]);
    assert!(ok, "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let outcomes: Vec<&str> = shown["payers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "failed").count(),
        1,
        "{shown}"
    );
    assert!(shown["attempts"][0]["txHash"].as_str().is_some(), "{shown}");
    // Until then the payer that did not pay is fenced, and reconcile says
    // money was served that the chain did not collect.
    let (_, view) = app.get_key(&bad_session, &bad_key).await;
    assert_eq!(view["payerHeldBack"]["short"], "balance", "{view}");
    // The gateway's copy of the fence is at most a poll behind the store's.
    tokio::time::sleep(Duration::from_millis(750)).await;
    let response = app
        .chat(
            &bad_token,
            &json!({ "model": "echo", "messages": [{ "role": "user", "content": "more" }] }),
        )
        .await;
    let (status, body) = json_of(response).await;
    assert_error(&(status, body), 402, "payer_held_back");
    let (ok, out) = cli(&["reconcile"]);
    assert!(!ok && out.contains("failed to pay"), "{out}");
    chain.dev.blacklist(address(&bad), false).await.unwrap();
    let (ok, out) = cli(&["settlements", "replay", "--all-failed", "--json"]);
    assert!(ok, "{out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["replayed"],
        2,
        "{out}"
    );
    let replayed = eventually(Duration::from_secs(20), || async {
        status_of(bad_key.clone()).await == ["settled"]
    })
    .await;
    assert!(replayed, "{:?}", status_of(bad_key.clone()).await);
    let (bad_used, bad_charged) = app.spent(&bad_key).await;
    assert_eq!(bad_used, bad_charged);
    assert_eq!(
        before.1 - chain.usdc(address(&bad)).await,
        bad_charged,
        "paid exactly once"
    );
    let (ok, out) = cli(&["settlements", "replay", "--all-failed", "--json"]);
    assert!(ok && out.contains("\"replayed\":0"), "{out}");
    let (ok, out) = cli(&["reconcile"]);
    assert!(ok, "{out}");
    // Paid up, its key resumes by itself.
    let resumed = eventually(Duration::from_secs(5), || async {
        let response = app
            .chat(
                &bad_token,
                &json!({ "model": "echo", "messages": [{ "role": "user", "content": "again" }] }),
            )
            .await;
        response.status() == StatusCode::OK
    })
    .await;
    assert!(resumed, "the payer that paid up is still fenced");
    let _ = good;
}

#[tokio::test]
async fn a_settlement_the_chain_lost_is_reported_and_the_cli_sends_it_again_once() {
    let chain = chain().await;
    let env = chain.env();
    let (app, _mock) = spawn_paid_app_with(Backend::Postgres, &borrowed(&env)).await;
    let (wallet, _, key_id, token) = wallet_with_key(&app, &chain, 5_000_000, 1_000_000).await;
    let payer = address(&wallet);
    let treasury = chain.dev.deployment.treasury;
    let (before, treasury_before) = (chain.usdc(payer).await, chain.usdc(treasury).await);
    let snapshot = chain.dev.snapshot().await.unwrap();
    for _ in 0..3 {
        let response = app
            .chat(&token, &json!({ "model": "echo", "messages": [{ "role": "user", "content": "one two three" }] }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let cli = |args: &[&str]| tollgate_cli(&app, &env, &[], args);
    let (_, charged) = app.spent(&key_id).await;
    let id = KeyId::parse(&key_id).unwrap();
    let settled = || async {
        let charges = app.store.charges_for_key(&id).await.unwrap();
        charges.iter().all(|c| c.status == "settled") && before - chain.usdc(payer).await == charged
    };
    assert!(
        eventually(Duration::from_secs(20), settled).await,
        "settled once"
    );

    // A reorg takes the settlement away: the ledger says settled, the chain
    // does not, and the payer has its USDC back.
    chain.dev.revert(&snapshot).await.unwrap();
    assert_eq!(chain.usdc(payer).await, before);
    let (ok, out) = cli(&["reconcile"]);
    assert!(!ok && out.contains("not on chain"), "{out}");
    let (ok, out) = cli(&["settlements", "list", "--status", "settled", "--json"]);
    assert!(ok, "{out}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let batches: Vec<String> = listed["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();

    // Replay asks the chain, re-opens each batch; they settle again, once.
    let mut reopened = 0;
    for batch in &batches {
        let (ok, out) = cli(&["settlements", "replay", batch, "--json"]);
        assert!(ok, "{out}");
        reopened += serde_json::from_str::<serde_json::Value>(&out).unwrap()["reopened"]
            .as_u64()
            .unwrap();
    }
    assert_eq!(reopened, 3, "every charge of the lost batches");
    assert!(
        eventually(Duration::from_secs(20), settled).await,
        "sent again"
    );
    let (ok, out) = cli(&["reconcile"]);
    assert!(ok, "{out}");
    assert_eq!(chain.usdc(treasury).await - treasury_before, charged);
    let (ok, out) = cli(&["settlements", "replay", &batches[0], "--json"]);
    assert!(!ok, "settled on chain: nothing to replay: {out}");
    assert_eq!(
        before - chain.usdc(payer).await,
        charged,
        "paid exactly once"
    );
}

/// A paid call on `token` with a small output bound (its hold); answers the
/// status, the error code if any, and the amount charged.
async fn small_call(app: &TestApp, token: &str, n: usize) -> (StatusCode, String, u64) {
    let response = app
        .chat(
            token,
            &json!({ "model": "echo", "max_tokens": 16, "messages": [
                { "role": "user", "content": format!("call {n}") }] }),
        )
        .await;
    let status = response.status();
    if status == StatusCode::OK {
        let amount = header_amount(&response, "x-compose-key-final-amount-wei");
        return (status, String::new(), amount);
    }
    let (_, body) = json_of(response).await;
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    (status, code, 0)
}

/// The settings of a chain whose echo calls cost 0.1 USDC each (so a few
/// USDC are a few dozen calls), whose leases are eight calls' worth, and
/// whose batches close when their oldest charge is `batch_age_ms` old.
fn costly_calls_env(chain: &Chain, batch_age_ms: u64) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = chain
        .env()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("BATCH_MAX_AGE_MS"))
        .collect();
    env.extend([
        (
            format!("TOLLGATE__CHAINS__{CHAIN}__BATCH_MAX_AGE_MS"),
            batch_age_ms.to_string(),
        ),
        (
            "TOLLGATE__MODELS__ECHO__REQUEST_FEE_ATOMIC".to_owned(),
            "100000".to_owned(),
        ),
        ("TOLLGATE__LEASES__CHUNK_CALLS".to_owned(), "8".to_owned()),
        (
            "TOLLGATE__SETTLEMENT__HELD_BACK_RECHECK_MAX_MS".to_owned(),
            "300".to_owned(),
        ),
        (
            "TOLLGATE__HTTP__METRICS_REFRESH_MS".to_owned(),
            "200".to_owned(),
        ),
    ]);
    env
}

/// The value of the sample `name{chain="CHAIN"}` on `/metrics`.
async fn chain_gauge(app: &TestApp, name: &str) -> Option<f64> {
    let text = app.metrics_text().await;
    let prefix = format!("{name}{{chain=\"{CHAIN}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

/// A payer who approves, creates a
/// key, then takes its allowance back can spend at most the lease its key
/// already held (every take re-reads its funds); the settler holds it back,
/// which fences its keys on every call (`payer_held_back`, also in `GET
/// /api/keys/{id}`); `reconcile` names it and fails once it is held back
/// longer than the alert age; and once it approves again its charges settle
/// and its key spends again.
#[tokio::test]
async fn a_payer_who_withdraws_its_allowance_spends_at_most_its_lease_and_is_fenced() {
    let chain = chain().await;
    // Batches close 4 s after their first charge: the spending below is
    // over before the settler looks, so what stops it is the lease's cap.
    let env = costly_calls_env(&chain, 4_000);
    let (app, _mock) = spawn_paid_app_with(Backend::Postgres, &borrowed(&env)).await;
    let alice = Wallet::random();
    chain.dev.mint(address(&alice), 10_000_000).await.unwrap();
    chain.dev.approve(address(&alice), 5_000_000).await.unwrap();
    let session = app.sign_in(&alice).await;
    let (status, body) = app
        .create_key(
            &session,
            &alice.hex(),
            &CHAIN.to_string(),
            &json!({ "budgetLimit": 5_000_000 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let key_id = body["keyId"].as_str().unwrap().to_owned();
    let token = body["token"].as_str().unwrap().to_owned();
    let mut served = 0;
    for n in 0..3 {
        let (status, code, amount) = small_call(&app, &token, n).await;
        assert_eq!(status, StatusCode::OK, "{code}");
        served += amount;
    }

    // The payer takes its promise back; what its key's lease covers then is
    // all it can still spend.
    chain.dev.approve(address(&alice), 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let key = KeyId::parse(&key_id).unwrap();
    let cover = app.store.key_leased(&key).await.unwrap().atomic();
    let mut after = 0;
    let mut refusal = None;
    for n in 3..200 {
        let (status, code, amount) = small_call(&app, &token, n).await;
        if status != StatusCode::OK {
            refusal = Some((status, code));
            break;
        }
        after += amount;
    }
    let (status, code) = refusal.expect("the withdrawn payer was never refused");
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYMENT_REQUIRED, "insufficient_budget")
    );
    assert!(
        after <= cover,
        "served {after} after the withdrawal, its lease covered {cover}"
    );
    println!("exposure: {after} atomic served after the withdrawal, lease cover {cover}, {served} before");

    // Settlement holds it back, and that fences the key on every call.
    let fenced = eventually(Duration::from_secs(20), || async {
        small_call(&app, &token, 999).await.1 == "payer_held_back"
    })
    .await;
    assert!(fenced, "the held-back payer's key was never fenced");
    let counted = eventually(Duration::from_secs(5), || async {
        chain_gauge(&app, "tollgate_payers_held_back").await == Some(1.0)
    })
    .await;
    assert!(counted, "/metrics never counted the held-back payer");
    let owed_gauge = chain_gauge(&app, "tollgate_payers_held_back_owed_atomic").await;
    assert!(owed_gauge.is_some_and(|owed| owed > 0.0), "{owed_gauge:?}");
    let (status, view) = app.get_key(&session, &key_id).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let held = &view["payerHeldBack"];
    assert_eq!(held["short"], "allowance", "{view}");
    assert_eq!(held["allowance"], "0", "{view}");
    assert!(
        held["owed"].as_str().unwrap().parse::<u64>().unwrap() > 0,
        "{view}"
    );

    // The operator's view: named, and a failure once held back too long.
    let reconcile = |alert_ms: &str| {
        let alert = [("TOLLGATE__SETTLEMENT__HELD_BACK_ALERT_MS", alert_ms)];
        tollgate_cli(&app, &env, &alert, &["reconcile", "--json"])
    };
    let (patient, out) = reconcile("3600000");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["heldBack"][0]["wallet"],
        alice.hex().to_lowercase(),
        "{report}"
    );
    assert!(patient, "{report}");
    let (strict, out) = reconcile("0");
    assert!(!strict, "{out}");

    // It pays again: its charges settle and its key resumes by itself.
    chain.dev.approve(address(&alice), 5_000_000).await.unwrap();
    let resumed = eventually(Duration::from_secs(20), || async {
        small_call(&app, &token, 1_000).await.0 == StatusCode::OK
    })
    .await;
    assert!(resumed, "the payer never resumed after approving again");
    let cleared = eventually(Duration::from_secs(5), || async {
        chain_gauge(&app, "tollgate_payers_held_back").await == Some(0.0)
    })
    .await;
    assert!(cleared, "/metrics still counts the payer that resumed");
    let (status, view) = app.get_key(&session, &key_id).await;
    assert_eq!(status, StatusCode::OK);
    assert!(view.get("payerHeldBack").is_none(), "{view}");
}

#[tokio::test]
async fn a_reverted_settlement_pauses_the_chain_naming_why_and_it_settles_once_fixed() {
    let chain = chain().await;
    let env = chain.env();
    let (app, _mock) = spawn_paid_app_with(Backend::Sqlite, &borrowed(&env)).await;
    let (wallet, _, key_id, token) = wallet_with_key(&app, &chain, 5_000_000, 1_000_000).await;
    let payer = address(&wallet);
    let before = chain.usdc(payer).await;
    let operator = chain.dev.deployment.operator;
    let owner = address(&Wallet::random());
    chain.dev.transfer_ownership(owner).await.unwrap();

    // The settlement is sent with mining off; the operator role moves in
    // the same block: it reverts.
    chain.dev.automine(false).await.unwrap();
    let response = app
        .chat(&token, &json!({ "model": "echo", "messages": [{ "role": "user", "content": "one two three" }] }))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let sent = eventually(Duration::from_secs(20), || async {
        match app.store.in_flight_batch(ChainId(CHAIN)).await.unwrap() {
            Some(batch) => !app.store.batch_txs(&batch.id).await.unwrap().is_empty(),
            None => false,
        }
    })
    .await;
    assert!(sent, "the settler never sent the batch");
    let batch = app
        .store
        .in_flight_batch(ChainId(CHAIN))
        .await
        .unwrap()
        .unwrap();
    chain
        .dev
        .set_operator(owner, address(&Wallet::random()), false)
        .await
        .unwrap();
    chain.dev.mine().await.unwrap();
    chain.dev.automine(true).await.unwrap();

    // Handled once: the chain pauses, naming the operator; nothing is lost.
    let paused = eventually(Duration::from_secs(20), || async {
        app.store.chain_accounts().await.unwrap()[0]
            .paused_reason
            .as_deref()
            .is_some_and(|r| r.contains("operator"))
    })
    .await;
    assert!(
        paused,
        "not paused: {:?}",
        app.store.chain_accounts().await.unwrap()
    );
    let outcomes = |batch: String| {
        let store = app.store.clone();
        async move {
            let attempts = store.batch_attempts(&batch).await.unwrap();
            attempts
                .into_iter()
                .map(|a| a.outcome.unwrap_or_else(|| "-".into()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(outcomes(batch.id.clone()).await, ["reverted"]);

    // The operator is ours again: it resumes and settles once.
    chain.dev.set_operator(owner, operator, true).await.unwrap();
    let id = KeyId::parse(&key_id).unwrap();
    let settled = eventually(Duration::from_secs(20), || async {
        let charges = app.store.charges_for_key(&id).await.unwrap();
        charges.iter().all(|c| c.status == "settled")
    })
    .await;
    assert!(settled, "{:?}", outcomes(batch.id.clone()).await);
    let (_, charged) = app.spent(&key_id).await;
    assert_eq!(before - chain.usdc(payer).await, charged, "paid once");
    assert_eq!(outcomes(batch.id.clone()).await, ["reverted", "settled"]);
    assert_eq!(
        app.store.chain_accounts().await.unwrap()[0].paused_reason,
        None
    );
}
