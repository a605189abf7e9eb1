//! The `evm` settler against a real chain (Anvil, started per test) and the
//! real store: batches settle each payer exactly once and the chain agrees
//! with the ledger; a blacklisted payer fails alone and `replay` settles it
//! once; a payer without allowance waits; an unmined transaction is
//! replaced at a higher fee; a nonce taken by an outside transaction is
//! healed; a paused token pauses the chain until it is unpaused; the
//! contract refuses a reused batch number; Anvil stopped mid-batch and
//! restarted from its saved state; an RPC whose connections keep failing. Needs `npm ci` (Anvil) and
//! PostgreSQL: fails, never skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use ledger::store::Backend;
use ledger::testing::{create_funded_key, test_charge, TestDb};
use ledger::{Amount, ChainId, KeyId, Store, WalletAddress};
use workers::evm::chain::{ChainClient, ChainConfig};
use workers::evm::contracts::{pack_entry, TollgateSettlement};
use workers::evm::devnet::{deploy, Anvil, AnvilOptions, DevChain, DEVNET_CHAIN_ID};
use workers::evm::settler::{EvmSettler, EvmSettlerConfig, Pass};

const CHAIN: ChainId = ChainId(DEVNET_CHAIN_ID);

struct Rig {
    anvil: Anvil,
    dev: DevChain,
    store: Store,
    _db: TestDb,
    client: ChainClient,
}

async fn rig(backend: Backend) -> Rig {
    let anvil = Anvil::start(&AnvilOptions::default())
        .await
        .expect("Anvil (npm ci installs it)");
    rig_on(anvil, backend, None).await
}

/// A rig whose batches are final `finality` blocks deep.
async fn rig_final(backend: Backend, finality: u64) -> Rig {
    let anvil = Anvil::start(&AnvilOptions::default())
        .await
        .expect("Anvil (npm ci installs it)");
    rig_with(anvil, backend, None, finality).await
}

/// A rig on a running Anvil; the settler's client talks to `rpc_url` when
/// given (a proxy in front of Anvil).
async fn rig_on(anvil: Anvil, backend: Backend, rpc_url: Option<String>) -> Rig {
    rig_with(anvil, backend, rpc_url, 1).await
}

async fn rig_with(anvil: Anvil, backend: Backend, rpc_url: Option<String>, finality: u64) -> Rig {
    let deployment = deploy(&anvil.rpc_url).await.expect("deploy the contracts");
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let client = ChainClient::new(ChainConfig {
        chain_id: DEVNET_CHAIN_ID,
        rpc_url: rpc_url.unwrap_or_else(|| anvil.rpc_url.clone()),
        usdc: deployment.usdc,
        settlement_contract: deployment.settlement_contract,
        treasury: deployment.treasury,
        operator_key: Some(deployment.operator_key.clone()),
        confirmations: 1,
        finality_confirmations: finality,
        rpc_timeout: Duration::from_secs(5),
        from_block: 0,
    })
    .unwrap();
    Rig {
        dev: DevChain::new(deployment).unwrap(),
        anvil,
        store,
        _db: db,
        client,
    }
}

impl Rig {
    fn settler(&self, replace_after_ms: i64) -> EvmSettler {
        self.settler_named("test-settler", replace_after_ms)
    }

    fn settler_named(&self, id: &str, replace_after_ms: i64) -> EvmSettler {
        EvmSettler::new(
            self.store.clone(),
            self.client.clone(),
            settler_config(id, replace_after_ms),
        )
    }

    /// A key for `payer` and `amounts` recorded as its charges.
    async fn charge(&self, payer: Address, amounts: &[u64]) -> KeyId {
        let key = KeyId::generate();
        let wallet = WalletAddress::from_bytes(payer.0 .0);
        create_funded_key(
            &self.store,
            &key,
            wallet,
            CHAIN,
            Amount::from_atomic(1_000_000).unwrap(),
        )
        .await;
        for amount in amounts {
            self.store
                .record_charge(&test_charge(&key, Amount::from_atomic(*amount).unwrap()))
                .await
                .unwrap();
        }
        key
    }

    async fn balance(&self, wallet: Address) -> U256 {
        self.dev.usdc_balance(wallet).await.unwrap()
    }

    /// Passes until one answers `until` (at most `max`).
    async fn settle_until(&self, settler: &EvmSettler, until: Pass, max: usize) -> Vec<Pass> {
        let mut seen = Vec::new();
        for _ in 0..max {
            let pass = settler.pass().await.expect("a settlement pass");
            seen.push(pass);
            if pass == until {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never reached {until:?}: {seen:?}");
    }

    async fn statuses(&self, key: &KeyId) -> Vec<String> {
        let mut statuses: Vec<String> = self
            .store
            .charges_for_key(key)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.status)
            .collect();
        statuses.sort();
        statuses.dedup();
        statuses
    }
}

/// The tests' settler: passes every 20 ms, batches of up to 10 payers
/// closed at once.
fn settler_config(id: &str, replace_after_ms: i64) -> EvmSettlerConfig {
    EvmSettlerConfig {
        settler_id: id.into(),
        every: Duration::from_millis(20),
        batch_max_payers: 10,
        batch_max_age_ms: 0,
        replace_after_ms,
        held_back_recheck_max_ms: 60_000,
    }
}

fn account(rig: &Rig, i: usize) -> Address {
    rig.dev.deployment.accounts[i]
}

#[tokio::test]
async fn batches_settle_each_payer_once_and_the_chain_agrees() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let rig = rig(backend).await;
        let payers = [account(&rig, 1), account(&rig, 2), account(&rig, 3)];
        let charges: [&[u64]; 3] = [&[100, 200, 300], &[5_000], &[1, 2, 3, 4]];
        let mut keys = Vec::new();
        for (payer, amounts) in payers.iter().zip(charges) {
            rig.dev.approve(*payer, 1_000_000).await.unwrap();
            keys.push(rig.charge(*payer, amounts).await);
        }
        let treasury = rig.dev.deployment.treasury;
        let before: Vec<U256> =
            futures_util::future::join_all(payers.iter().map(|p| rig.balance(*p))).await;
        let treasury_before = rig.balance(treasury).await;

        let settler = rig.settler(60_000);
        rig.settle_until(&settler, Pass::Settled, 20).await;
        assert_eq!(
            settler.pass().await.unwrap(),
            Pass::Idle,
            "{backend:?}: nothing left"
        );

        let total: u64 = charges.iter().flat_map(|c| c.iter()).sum();
        for ((payer, amounts), before) in payers.iter().zip(charges).zip(&before) {
            let paid = before - rig.balance(*payer).await;
            assert_eq!(
                paid,
                U256::from(amounts.iter().sum::<u64>()),
                "{backend:?}: {payer}"
            );
        }
        assert_eq!(
            rig.balance(treasury).await - treasury_before,
            U256::from(total)
        );
        for key in &keys {
            assert_eq!(rig.statuses(key).await, ["settled"], "{backend:?}");
        }
        let settled = rig.store.settled_txs_since(0, 100).await.unwrap();
        assert_eq!(
            settled.len(),
            keys.len(),
            "each key has its settlement transaction"
        );
        let batches = rig.store.settlement_batches(Some("settled")).await.unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].total, Amount::from_atomic(total).unwrap());
        assert!(rig.client.is_settled(1).await.unwrap());
        // The ledger's own books agree too.
        assert!(rig
            .store
            .reconcile_ledger(Some(CHAIN))
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test]
async fn a_blacklisted_payer_fails_alone_and_replay_settles_it_once() {
    let rig = rig(Backend::Postgres).await;
    let (good, listed, unapproved) = (account(&rig, 1), account(&rig, 2), account(&rig, 3));
    rig.dev.approve(good, 1_000_000).await.unwrap();
    rig.dev.approve(listed, 1_000_000).await.unwrap();
    let good_key = rig.charge(good, &[700]).await;
    let listed_key = rig.charge(listed, &[400, 500]).await;
    let unapproved_key = rig.charge(unapproved, &[60]).await;
    rig.dev.blacklist(listed, true).await.unwrap();
    let listed_before = rig.balance(listed).await;
    let unapproved_before = rig.balance(unapproved).await;

    let settler = rig.settler(60_000);
    rig.settle_until(&settler, Pass::Settled, 20).await;
    assert_eq!(rig.statuses(&good_key).await, ["settled"]);
    assert_eq!(rig.statuses(&listed_key).await, ["failed"]);
    // No allowance: held back, not failed.
    assert_eq!(rig.statuses(&unapproved_key).await, ["pending"]);
    assert_eq!(settler.pass().await.unwrap(), Pass::Idle);
    assert_eq!(rig.balance(listed).await, listed_before);

    // Unblacklisted and replayed: settles exactly once.
    rig.dev.blacklist(listed, false).await.unwrap();
    let failed_batch = rig.store.settlement_batches(Some("settled")).await.unwrap()[0]
        .id
        .clone();
    assert_eq!(
        rig.store.replay_failed(Some(&failed_batch)).await.unwrap(),
        2
    );
    assert_eq!(
        rig.store.replay_failed(Some(&failed_batch)).await.unwrap(),
        0
    );
    rig.settle_until(&settler, Pass::Settled, 20).await;
    assert_eq!(rig.statuses(&listed_key).await, ["settled"]);
    assert_eq!(listed_before - rig.balance(listed).await, U256::from(900));

    // Approving releases the held-back payer.
    rig.dev.approve(unapproved, 1_000).await.unwrap();
    rig.settle_until(&settler, Pass::Settled, 20).await;
    assert_eq!(rig.statuses(&unapproved_key).await, ["settled"]);
    assert_eq!(
        unapproved_before - rig.balance(unapproved).await,
        U256::from(60)
    );
    assert_eq!(settler.pass().await.unwrap(), Pass::Idle);
    assert_eq!(rig.store.replay_failed(None).await.unwrap(), 0);
}

#[tokio::test]
async fn an_unmined_transaction_is_replaced_at_a_higher_fee_and_settles_once() {
    let rig = rig(Backend::Sqlite).await;
    let payer = account(&rig, 4);
    rig.dev.approve(payer, 1_000_000).await.unwrap();
    let key = rig.charge(payer, &[1_234]).await;
    let before = rig.balance(payer).await;
    rig.dev.automine(false).await.unwrap();

    let settler = rig.settler(200);
    assert_eq!(
        settler.pass().await.unwrap(),
        Pass::Waiting,
        "sent, not mined"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(settler.pass().await.unwrap(), Pass::Waiting, "replaced");
    let batch = rig.store.in_flight_batch(CHAIN).await.unwrap().unwrap();
    let txs = rig.store.batch_txs(&batch.id).await.unwrap();
    assert_eq!(txs.len(), 2, "both hashes of the nonce are tracked");
    assert_eq!(txs[0].nonce, txs[1].nonce);
    assert!(
        txs[0].max_fee_per_gas * 8 >= txs[1].max_fee_per_gas * 9,
        "≥ 12.5 % more"
    );
    assert!(txs[0].max_priority_fee_per_gas * 8 >= txs[1].max_priority_fee_per_gas * 9);

    rig.dev.mine().await.unwrap();
    rig.dev.automine(true).await.unwrap();
    rig.settle_until(&settler, Pass::Settled, 20).await;
    assert_eq!(rig.statuses(&key).await, ["settled"]);
    assert_eq!(
        before - rig.balance(payer).await,
        U256::from(1_234),
        "paid once"
    );
    let settled = rig
        .store
        .settlement_batch(&batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        settled.tx_hash.as_deref(),
        Some(txs[0].hash.as_str()),
        "the replacement mined"
    );
}

#[tokio::test]
async fn a_nonce_taken_by_an_outside_transaction_is_healed() {
    let rig = rig(Backend::Sqlite).await;
    let payer = account(&rig, 5);
    rig.dev.approve(payer, 1_000_000).await.unwrap();
    let key = rig.charge(payer, &[777]).await;
    let before = rig.balance(payer).await;
    rig.dev.automine(false).await.unwrap();
    let settler = rig.settler(60_000);
    assert_eq!(settler.pass().await.unwrap(), Pass::Waiting);
    let batch = rig.store.in_flight_batch(CHAIN).await.unwrap().unwrap();
    let ours = rig.store.batch_txs(&batch.id).await.unwrap()[0].clone();

    // Someone else (the operator's key used elsewhere) takes that nonce with
    // a higher fee: our transaction can never be mined.
    rig.dev
        .raw("anvil_dropTransaction", (ours.hash.clone(),))
        .await
        .unwrap();
    let operator = rig.client.operator();
    rig.dev.impersonate(operator).await.unwrap();
    let request = alloy::rpc::types::TransactionRequest::default()
        .from(operator)
        .to(operator)
        .nonce(u64::try_from(ours.nonce).unwrap())
        .gas_limit(21_000)
        .max_fee_per_gas(u128::try_from(ours.max_fee_per_gas).unwrap() * 2)
        .max_priority_fee_per_gas(u128::try_from(ours.max_priority_fee_per_gas).unwrap() * 2);
    let _pending = rig.dev.provider().send_transaction(request).await.unwrap();
    rig.dev.mine().await.unwrap();
    rig.dev.automine(true).await.unwrap();

    rig.settle_until(&settler, Pass::Settled, 20).await;
    assert_eq!(rig.statuses(&key).await, ["settled"]);
    assert_eq!(
        before - rig.balance(payer).await,
        U256::from(777),
        "paid once"
    );
    let txs = rig.store.batch_txs(&batch.id).await.unwrap();
    assert_eq!(txs.len(), 2);
    assert_eq!(
        txs[0].nonce,
        ours.nonce + 1,
        "signed again at the next nonce"
    );
}

#[tokio::test]
async fn a_paused_token_pauses_the_chain_until_it_runs_again() {
    let rig = rig(Backend::Sqlite).await;
    let payer = account(&rig, 6);
    rig.dev.approve(payer, 1_000_000).await.unwrap();
    let key = rig.charge(payer, &[50]).await;
    rig.dev.pause_token(true).await.unwrap();
    let settler = rig.settler(60_000);
    assert_eq!(settler.pass().await.unwrap(), Pass::Paused);
    let accounts = rig.store.chain_accounts().await.unwrap();
    assert!(
        accounts[0]
            .paused_reason
            .as_deref()
            .unwrap_or("")
            .contains("paused"),
        "{accounts:?}"
    );
    assert_eq!(rig.statuses(&key).await, ["batched"], "nothing failed");

    rig.dev.pause_token(false).await.unwrap();
    rig.settle_until(&settler, Pass::Settled, 20).await;
    assert_eq!(rig.statuses(&key).await, ["settled"]);
    assert_eq!(
        rig.store.chain_accounts().await.unwrap()[0].paused_reason,
        None,
        "resumed"
    );
}

#[tokio::test]
async fn the_contract_refuses_a_reused_batch_number_and_anyone_but_the_operator() {
    let rig = rig(Backend::Sqlite).await;
    let payer = account(&rig, 7);
    rig.dev.approve(payer, 1_000_000).await.unwrap();
    let entries = vec![pack_entry(payer, 10).unwrap()];
    let usdc = rig.dev.deployment.usdc;
    let contract = rig.dev.settlement();
    let operator = rig.client.operator();
    rig.dev.impersonate(operator).await.unwrap();
    let first = contract
        .settle(U256::from(9), usdc, entries.clone())
        .from(operator)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(first.status());
    let again = contract
        .settle(U256::from(9), usdc, entries.clone())
        .from(operator)
        .call()
        .await;
    let error = again.expect_err("a reused batch number reverts");
    assert!(format!("{error:?}").contains("0x"), "{error:?}");
    let reason = error
        .as_decoded_interface_error::<TollgateSettlement::TollgateSettlementErrors>()
        .expect("a contract error");
    assert!(matches!(
        reason,
        TollgateSettlement::TollgateSettlementErrors::BatchAlreadySettled(_)
    ));
    let stranger = contract
        .settle(U256::from(10), usdc, entries)
        .from(payer)
        .call()
        .await;
    let reason = stranger
        .expect_err("only the operator settles")
        .as_decoded_interface_error::<TollgateSettlement::TollgateSettlementErrors>()
        .expect("a contract error");
    assert!(matches!(
        reason,
        TollgateSettlement::TollgateSettlementErrors::NotOperator(_)
    ));
    assert!(rig.client.is_settled(9).await.unwrap());
    assert!(!rig.client.is_settled(10).await.unwrap());
}

#[tokio::test]
async fn a_chain_restarted_mid_batch_gets_the_same_transaction_again() {
    let dir =
        std::env::temp_dir().join(format!("tollgate-anvil-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = AnvilOptions {
        port,
        state: Some(state.clone()),
        ..AnvilOptions::default()
    };
    let anvil = Anvil::start(&options).await.unwrap();
    let mut rig = rig_on(anvil, Backend::Sqlite, None).await;
    let payer = account(&rig, 8);
    rig.dev.approve(payer, 1_000_000).await.unwrap();
    let key = rig.charge(payer, &[4_321]).await;
    let before = rig.balance(payer).await;
    rig.dev.automine(false).await.unwrap();
    let settler = rig.settler(60_000);
    assert_eq!(
        settler.pass().await.unwrap(),
        Pass::Waiting,
        "sent, not mined"
    );
    let batch = rig.store.in_flight_batch(CHAIN).await.unwrap().unwrap();
    let signed = rig.store.batch_txs(&batch.id).await.unwrap();

    // The chain goes down with the transaction unmined (SIGTERM: Anvil saves
    // its state), and the settler finds nobody home meanwhile.
    let anvil = std::mem::replace(
        &mut rig.anvil,
        Anvil::start(&AnvilOptions::default()).await.unwrap(),
    );
    anvil.stop();
    assert!(
        settler.pass().await.is_err(),
        "the chain is down: the pass fails, nothing changes"
    );
    assert_eq!(rig.statuses(&key).await, ["batched"]);
    rig.anvil = Anvil::start(&options).await.unwrap();

    rig.settle_until(&settler, Pass::Settled, 50).await;
    assert_eq!(rig.statuses(&key).await, ["settled"]);
    assert_eq!(
        before - rig.balance(payer).await,
        U256::from(4_321),
        "paid once"
    );
    let txs = rig.store.batch_txs(&batch.id).await.unwrap();
    assert_eq!(txs.len(), 1, "no second signature");
    let settled = rig
        .store
        .settlement_batch(&batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settled.tx_hash.as_deref(), Some(signed[0].hash.as_str()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy in front of `upstream` that refuses every third connection
/// and cuts every connection it serves after `life`: an RPC endpoint whose
/// connections keep failing. Answers its URL and how many it broke.
async fn flaky_proxy(
    upstream: u16,
    life: Duration,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = broken.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut client, _)) = listener.accept().await {
            n += 1;
            if n.is_multiple_of(3) {
                counter.fetch_add(1, Ordering::Relaxed);
                drop(client);
                continue;
            }
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                if tokio::time::timeout(life, copy).await.is_err() {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (url, broken)
}

#[tokio::test]
async fn an_rpc_that_keeps_failing_still_settles_each_payer_once() {
    let anvil = Anvil::start(&AnvilOptions::default()).await.unwrap();
    let (proxy, broken) = flaky_proxy(anvil.port, Duration::from_millis(30)).await;
    let rig = rig_on(anvil, Backend::Sqlite, Some(proxy)).await;
    let payers = [account(&rig, 1), account(&rig, 2)];
    let mut keys = Vec::new();
    let mut before = Vec::new();
    for (i, payer) in payers.iter().enumerate() {
        rig.dev.approve(*payer, 1_000_000).await.unwrap();
        before.push(rig.balance(*payer).await);
        keys.push(rig.charge(*payer, &[10 * (i as u64 + 1); 3]).await);
    }
    let settler = rig.settler(60_000);
    let mut passes = 0;
    loop {
        passes += 1;
        assert!(passes < 200, "never settled through the flaky RPC");
        if let Ok(Pass::Settled) = settler.pass().await {
            if rig.store.in_flight_batch(CHAIN).await.unwrap().is_none()
                && settler.pass().await.ok() == Some(Pass::Idle)
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        broken.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the proxy broke nothing"
    );
    for ((payer, key), (before, i)) in payers.iter().zip(&keys).zip(before.iter().zip(1u64..)) {
        assert_eq!(rig.statuses(key).await, ["settled"]);
        assert_eq!(
            *before - rig.balance(*payer).await,
            U256::from(30 * i),
            "paid once"
        );
    }
    assert_eq!(
        rig.store
            .settlement_batches(Some("settled"))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_misconfigured_contract_or_an_operator_out_of_gas_pauses_the_chain() {
    let rig = rig(Backend::Sqlite).await;
    let payer = account(&rig, 3);
    rig.dev.approve(payer, 1_000_000).await.unwrap();
    let key = rig.charge(payer, &[42]).await;
    let contract = rig.dev.settlement();
    let owner = rig.client.operator();
    rig.dev.impersonate(owner).await.unwrap();
    let set_operator = |to: Address| {
        let contract = contract.clone();
        async move {
            let receipt = contract
                .setOperator(to)
                .from(owner)
                .send()
                .await
                .unwrap()
                .get_receipt()
                .await
                .unwrap();
            assert!(receipt.status());
        }
    };
    let settler = rig.settler(60_000);
    let paused = |needle: &'static str| {
        let store = rig.store.clone();
        async move {
            let reason = store.chain_accounts().await.unwrap()[0]
                .paused_reason
                .clone()
                .unwrap_or_default();
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
        }
    };

    // The contract names another operator: paused, nothing fails.
    set_operator(account(&rig, 5)).await;
    assert_eq!(settler.pass().await.unwrap(), Pass::Paused);
    paused("operator").await;
    assert_eq!(rig.statuses(&key).await, ["batched"]);

    // Ours again, but no gas money: still paused, for that reason now.
    set_operator(owner).await;
    let money = rig.dev.provider().get_balance(owner).await.unwrap();
    rig.dev
        .raw("anvil_setBalance", (owner, U256::from(1)))
        .await
        .unwrap();
    assert_eq!(settler.pass().await.unwrap(), Pass::Paused);
    paused("gas").await;

    // Cleared: settles on its own, once.
    rig.dev
        .raw("anvil_setBalance", (owner, money))
        .await
        .unwrap();
    rig.settle_until(&settler, Pass::Settled, 20).await;
    assert_eq!(rig.statuses(&key).await, ["settled"]);
    assert_eq!(
        rig.store.chain_accounts().await.unwrap()[0].paused_reason,
        None
    );
}

#[tokio::test]
async fn a_fresh_ledger_numbers_its_batches_after_those_the_contract_settled() {
    let rig = rig(Backend::Sqlite).await;
    let payer = account(&rig, 2);
    rig.dev.approve(payer, 1_000_000).await.unwrap();
    rig.charge(payer, &[11]).await;
    rig.settle_until(&rig.settler(60_000), Pass::Settled, 20)
        .await;

    // Another ledger (a reset store) on the same contract.
    let db = TestDb::create(Backend::Sqlite).await;
    let store = db.store().await;
    let key = KeyId::generate();
    create_funded_key(
        &store,
        &key,
        WalletAddress::from_bytes(payer.0 .0),
        CHAIN,
        Amount::from_atomic(1_000).unwrap(),
    )
    .await;
    store
        .record_charge(&test_charge(&key, Amount::from_atomic(13).unwrap()))
        .await
        .unwrap();
    let before = rig.balance(payer).await;
    let fresh = EvmSettler::new(
        store.clone(),
        rig.client.clone(),
        settler_config("fresh", 60_000),
    );
    let mut passes = Vec::new();
    for _ in 0..20 {
        let pass = fresh.pass().await.unwrap();
        passes.push(pass);
        if pass == Pass::Settled {
            break;
        }
    }
    assert_eq!(passes.last(), Some(&Pass::Settled), "{passes:?}");
    assert_eq!(before - rig.balance(payer).await, U256::from(13));
    let batch = &store.settlement_batches(Some("settled")).await.unwrap()[0];
    assert_eq!(batch.total, Amount::from_atomic(13).unwrap());
    assert!(rig.client.is_settled(2).await.unwrap(), "numbered after #1");
}

#[tokio::test]
async fn one_settler_per_chain_is_active_the_others_stand_by() {
    let rig = rig(Backend::Postgres).await;
    let payer = account(&rig, 1);
    rig.dev.approve(payer, 1_000_000).await.unwrap();
    let key = rig.charge(payer, &[5]).await;
    let (a, b) = (
        rig.settler_named("a", 60_000),
        rig.settler_named("b", 60_000),
    );
    let (first, second) = tokio::join!(a.pass(), b.pass());
    let passes = [first.unwrap(), second.unwrap()];
    assert_eq!(
        passes.iter().filter(|p| **p == Pass::NotActive).count(),
        1,
        "exactly one stands by: {passes:?}"
    );
    let active = if passes[0] == Pass::NotActive { &b } else { &a };
    rig.settle_until(active, Pass::Settled, 20).await;
    assert_eq!(rig.statuses(&key).await, ["settled"]);
    let standby = if passes[0] == Pass::NotActive { &a } else { &b };
    assert_eq!(standby.pass().await.unwrap(), Pass::NotActive);
}

/// The batch `rig` has in flight, or the newest one.
async fn only_batch(rig: &Rig) -> ledger::store::settlement::BatchRecord {
    let batches = rig.store.settlement_batches(None).await.unwrap();
    assert_eq!(batches.len(), 1, "{batches:?}");
    batches[0].clone()
}

/// Each attempt's outcome, first first (`-`: in flight).
async fn attempt_outcomes(rig: &Rig, batch: &str) -> Vec<String> {
    rig.store
        .batch_attempts(batch)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome.unwrap_or_else(|| "-".into()))
        .collect()
}

/// With automine off, the settler sends the batch; the contract's owner
/// (`owner`) hands the operator role to someone else in the same block, so
/// the settlement reverts (`NotOperator`); the settler sees that receipt.
async fn revert_one_attempt(rig: &Rig, settler: &EvmSettler, owner: Address) {
    rig.dev.automine(false).await.unwrap();
    assert_eq!(settler.pass().await.unwrap(), Pass::Waiting, "sent");
    rig.dev
        .set_operator(owner, account(rig, 5), false)
        .await
        .unwrap();
    rig.dev.mine().await.unwrap();
    rig.dev.automine(true).await.unwrap();
    assert_eq!(settler.pass().await.unwrap(), Pass::Waiting, "revert seen");
}

#[tokio::test]
async fn a_reverted_settlement_is_handled_once_per_attempt_and_never_wedges_the_chain() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let rig = rig(backend).await;
        let payer = account(&rig, 4);
        rig.dev.approve(payer, 1_000_000).await.unwrap();
        let key = rig.charge(payer, &[321]).await;
        let before = rig.balance(payer).await;
        let owner = account(&rig, 8);
        rig.dev.transfer_ownership(owner).await.unwrap();
        let operator = rig.client.operator();
        let settler = rig.settler(60_000);

        // Reverted once, and the operator is no longer ours: the chain is
        // paused, naming why — not re-opened on every pass with nothing sent.
        revert_one_attempt(&rig, &settler, owner).await;
        let batch = only_batch(&rig).await;
        for _ in 0..3 {
            assert_eq!(settler.pass().await.unwrap(), Pass::Paused, "{backend:?}");
        }
        let reason = rig.store.chain_accounts().await.unwrap()[0]
            .paused_reason
            .clone()
            .unwrap_or_default();
        assert!(reason.contains("operator"), "{backend:?}: {reason:?}");
        assert_eq!(attempt_outcomes(&rig, &batch.id).await, ["reverted"]);
        assert_eq!(rig.statuses(&key).await, ["batched"], "nothing failed yet");

        // Each further reverted attempt counts: the third fails the batch.
        rig.dev.set_operator(owner, operator, true).await.unwrap();
        revert_one_attempt(&rig, &settler, owner).await;
        rig.dev.set_operator(owner, operator, true).await.unwrap();
        revert_one_attempt(&rig, &settler, owner).await;
        assert_eq!(
            attempt_outcomes(&rig, &batch.id).await,
            ["reverted", "reverted", "reverted"],
            "{backend:?}"
        );
        assert_eq!(only_batch(&rig).await.status, "failed", "{backend:?}");
        assert_eq!(rig.statuses(&key).await, ["failed"]);
        assert_eq!(rig.balance(payer).await, before, "nothing moved");

        // The operator is ours again; replayed, the charge settles once.
        rig.dev.set_operator(owner, operator, true).await.unwrap();
        assert_eq!(rig.store.replay_failed(Some(&batch.id)).await.unwrap(), 1);
        rig.settle_until(&settler, Pass::Settled, 20).await;
        assert_eq!(rig.statuses(&key).await, ["settled"], "{backend:?}");
        assert_eq!(before - rig.balance(payer).await, U256::from(321));
        assert_eq!(
            rig.store.chain_accounts().await.unwrap()[0].paused_reason,
            None
        );
    }
}

#[tokio::test]
async fn a_successful_receipt_wins_over_a_reverted_retry() {
    let rig = rig(Backend::Postgres).await;
    let payer = account(&rig, 6);
    rig.dev.approve(payer, 1_000_000).await.unwrap();
    let key = rig.charge(payer, &[555]).await;
    let before = rig.balance(payer).await;
    rig.dev.automine(false).await.unwrap();
    let settler = rig.settler(60_000);
    assert_eq!(settler.pass().await.unwrap(), Pass::Waiting, "sent");
    let batch = rig.store.in_flight_batch(CHAIN).await.unwrap().unwrap();
    let first = rig.store.batch_txs(&batch.id).await.unwrap()[0].clone();
    rig.dev.mine().await.unwrap();

    // Before the settler saw the first transaction's receipt, a retry of
    // the same batch was signed at the next nonce (as after a nonce it
    // took for another's); the contract refuses the number again: reverted.
    let entries = vec![pack_entry(payer, 555).unwrap()];
    let fees = rig.client.fees().await.unwrap();
    let batch_no = u64::try_from(batch.batch_no).unwrap();
    let nonce = u64::try_from(first.nonce).unwrap() + 1;
    let retry = rig
        .client
        .sign_settle(batch_no, &entries, nonce, 300_000, fees)
        .await
        .unwrap();
    let record = ledger::store::chain::ChainTx {
        hash: format!("{:#x}", retry.hash),
        nonce: i64::try_from(nonce).unwrap(),
        raw: format!("{}", retry.raw),
        gas_limit: 300_000,
        max_fee_per_gas: i64::try_from(retry.max_fee_per_gas).unwrap(),
        max_priority_fee_per_gas: i64::try_from(retry.max_priority_fee_per_gas).unwrap(),
        created_at_ms: ledger::time::now_ms(),
        broadcast_at_ms: None,
    };
    rig.store
        .record_signed_tx(&batch.id, CHAIN, &record, ledger::time::now_ms())
        .await
        .unwrap();
    rig.client.broadcast(&retry.raw).await.unwrap();
    rig.dev.mine().await.unwrap();
    rig.dev.automine(true).await.unwrap();
    let reverted = rig.client.receipt(retry.hash).await.unwrap().unwrap();
    assert!(!reverted.status(), "the retry reverted");

    rig.settle_until(&settler, Pass::Settled, 10).await;
    let settled = rig
        .store
        .settlement_batch(&batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settled.status, "settled");
    assert_eq!(settled.tx_hash.as_deref(), Some(first.hash.as_str()));
    assert_eq!(rig.statuses(&key).await, ["settled"]);
    assert_eq!(before - rig.balance(payer).await, U256::from(555));
    assert!(
        workers::evm::reconcile::reconcile_chain(&rig.store, &rig.client)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_reorg_before_finality_sends_the_batch_again_and_it_settles_once() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let rig = rig_final(backend, 3).await;
        let payer = account(&rig, 2);
        rig.dev.approve(payer, 1_000_000).await.unwrap();
        let key = rig.charge(payer, &[700, 300]).await;
        let treasury = rig.dev.deployment.treasury;
        let (before, treasury_before) = (rig.balance(payer).await, rig.balance(treasury).await);
        let snapshot = rig.dev.snapshot().await.unwrap();
        let settler = rig.settler(60_000);

        // Mined and proven, not final: provisional.
        rig.settle_until(&settler, Pass::Confirming, 10).await;
        assert_eq!(before - rig.balance(payer).await, U256::from(1_000));
        assert_eq!(only_batch(&rig).await.status, "confirming", "{backend:?}");
        assert_eq!(rig.statuses(&key).await, ["batched"], "{backend:?}");
        assert!(rig
            .store
            .settled_txs_since(0, 100)
            .await
            .unwrap()
            .is_empty());

        // The chain loses the block: the payer has its USDC back.
        rig.dev.revert(&snapshot).await.unwrap();
        assert_eq!(rig.balance(payer).await, before);
        assert!(!rig.client.is_settled(1).await.unwrap());

        // Sent again, confirmed, final after three blocks: settled once.
        rig.settle_until(&settler, Pass::Confirming, 10).await;
        rig.dev.mine_blocks(2).await.unwrap();
        rig.settle_until(&settler, Pass::Settled, 10).await;
        assert_eq!(settler.pass().await.unwrap(), Pass::Idle, "{backend:?}");
        assert_eq!(rig.statuses(&key).await, ["settled"], "{backend:?}");
        assert_eq!(before - rig.balance(payer).await, U256::from(1_000));
        assert_eq!(
            rig.balance(treasury).await - treasury_before,
            U256::from(1_000),
            "{backend:?}: collected"
        );
        let batch = only_batch(&rig).await;
        assert_eq!(batch.status, "settled");
        assert!(rig.client.is_settled(1).await.unwrap());
        assert_eq!(rig.store.settled_txs_since(0, 100).await.unwrap().len(), 1);
        assert!(
            workers::evm::reconcile::reconcile_chain(&rig.store, &rig.client)
                .await
                .unwrap()
                .is_empty(),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn replay_sends_again_a_settled_batch_the_chain_lost_and_never_one_it_has() {
    use workers::evm::reconcile::{reconcile_chain, reopen_if_lost, LostBatch};
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let rig = rig(backend).await;
        let payer = account(&rig, 3);
        rig.dev.approve(payer, 1_000_000).await.unwrap();
        let key = rig.charge(payer, &[900]).await;
        let treasury = rig.dev.deployment.treasury;
        let (before, treasury_before) = (rig.balance(payer).await, rig.balance(treasury).await);
        let snapshot = rig.dev.snapshot().await.unwrap();
        let settler = rig.settler(60_000);
        rig.settle_until(&settler, Pass::Settled, 10).await;
        let batch = only_batch(&rig).await;
        let batch_no = batch.chain_batch_no.unwrap();

        // Settled on chain too: replay leaves it alone.
        assert_eq!(
            reopen_if_lost(&rig.store, &rig.client, &batch.id, batch_no)
                .await
                .unwrap(),
            LostBatch::SettledOnChain
        );
        assert_eq!(rig.statuses(&key).await, ["settled"]);

        // A reorg deeper than finality: `reconcile` sees it, replay sends
        // the batch again under its own number.
        rig.dev.revert(&snapshot).await.unwrap();
        assert_eq!(rig.balance(payer).await, before);
        let differences = reconcile_chain(&rig.store, &rig.client).await.unwrap();
        assert!(!differences.is_empty(), "{backend:?}");
        assert_eq!(
            reopen_if_lost(&rig.store, &rig.client, &batch.id, batch_no)
                .await
                .unwrap(),
            LostBatch::Reopened(1),
            "{backend:?}"
        );
        assert_eq!(rig.statuses(&key).await, ["batched"]);
        rig.settle_until(&settler, Pass::Settled, 10).await;
        assert_eq!(rig.statuses(&key).await, ["settled"], "{backend:?}");
        assert_eq!(before - rig.balance(payer).await, U256::from(900));
        assert_eq!(
            rig.balance(treasury).await - treasury_before,
            U256::from(900)
        );
        assert_eq!(only_batch(&rig).await.status, "settled");
        assert!(rig
            .client
            .is_settled(u64::try_from(batch_no).unwrap())
            .await
            .unwrap());
        assert!(reconcile_chain(&rig.store, &rig.client)
            .await
            .unwrap()
            .is_empty());
        // And once it is back on chain, never again.
        assert_eq!(
            reopen_if_lost(&rig.store, &rig.client, &batch.id, batch_no)
                .await
                .unwrap(),
            LostBatch::SettledOnChain
        );
        assert_eq!(settler.pass().await.unwrap(), Pass::Idle);
    }
}

/// Issue "Settlement integrity", finding 2: payers who cannot pay are held
/// back and read past. With `batch_max_payers = 2`, eight payers without
/// allowance charged first, then an honest funded one: the honest payer
/// settles within a few passes (the settler used to read only the
/// `4 × batch_max_payers` oldest payers, all held back, for good); each
/// held-back payer is checked again only after its backoff.
#[tokio::test]
async fn payers_who_cannot_pay_do_not_starve_the_payers_behind_them() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let rig = rig(backend).await;
        let mut dust = Vec::new();
        for i in 1..=8 {
            let payer = account(&rig, i);
            rig.charge(payer, &[10]).await;
            dust.push(payer);
        }
        // Not account 9: that is the treasury.
        let honest = Address::from([0x42; 20]);
        rig.dev.mint(honest, 1_000_000).await.unwrap();
        rig.dev.approve(honest, 1_000_000).await.unwrap();
        let honest_key = rig.charge(honest, &[500]).await;
        let settler = EvmSettler::new(
            rig.store.clone(),
            rig.client.clone(),
            EvmSettlerConfig {
                // The first backoff: held-back payers wait ten seconds,
                // far longer than this test's passes take.
                every: Duration::from_millis(10_000),
                batch_max_payers: 2,
                ..settler_config("starved", 60_000)
            },
        );
        rig.settle_until(&settler, Pass::Settled, 10).await;
        assert_eq!(rig.statuses(&honest_key).await, ["settled"], "{backend:?}");
        let held = rig.store.held_back_payers(Some(CHAIN)).await.unwrap();
        assert_eq!(held.len(), dust.len(), "{backend:?}: {held:?}");
        assert!(held
            .iter()
            .all(|p| p.short() == "allowance" && p.checks == 1));
        assert!(
            held.iter().all(|p| p.retry_at_ms > p.checked_at_ms),
            "{backend:?}: each waits its backoff"
        );
        // Not due yet: a pass reads past them and has nothing to do.
        assert_eq!(settler.pass().await.unwrap(), Pass::Idle, "{backend:?}");
        let again = rig.store.held_back_payers(Some(CHAIN)).await.unwrap();
        assert!(
            again.iter().all(|p| p.checks == 1),
            "{backend:?}: {again:?}"
        );
        // One approves: once due it is read again, pays, and is released.
        rig.dev.approve(dust[0], 1_000_000).await.unwrap();
        let wallet = format!("{:#x}", dust[0]);
        due_now(&rig, &wallet).await;
        rig.settle_until(&settler, Pass::Settled, 10).await;
        let left = rig.store.held_back_payers(Some(CHAIN)).await.unwrap();
        assert_eq!(left.len(), dust.len() - 1, "{backend:?}");
        assert!(left.iter().all(|p| p.wallet != wallet), "{backend:?}");
    }
}

/// Makes a held-back payer due for its re-check now, as if its backoff had
/// elapsed (holding it back again with no wait).
async fn due_now(rig: &Rig, wallet: &str) {
    let held = rig
        .store
        .held_back_payers(Some(CHAIN))
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.wallet == wallet)
        .unwrap();
    rig.store
        .hold_back_payer(
            CHAIN,
            ledger::store::payers::ShortPayer {
                wallet,
                owed: held.owed,
                balance: held.balance,
                allowance: held.allowance,
            },
            |_| 0,
            ledger::time::now_ms() - 1,
        )
        .await
        .unwrap();
}
