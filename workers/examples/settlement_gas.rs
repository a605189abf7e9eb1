//! Benchmark: gas per settled payer and per charge, and settlement
//! throughput, on a local chain (Anvil from `npm ci`) — the settlement
//! issue's benchmark.
//!
//!   cargo run --release -p workers --example settlement_gas [CHARGES]
//!
//! Part 1 (gas): batches of 1, 10, 100 and 500 payers through the settlement
//! contract, against one plain `transferFrom` transaction per payer (100
//! payers). Payers and treasury hold non-zero balances and allowances
//! before and after (as real USDC holders do), and one warm-up batch first
//! (a fresh bitmap word costs 17,100 more once every 256 batches; reported
//! apart). Gas per charge divides by the charges a payer's sum stands for:
//! the contract sees one amount per payer, however many charges made it.
//!
//! Part 2 (throughput): CHARGES (default 100,000) charges of 500 payers
//! recorded in PostgreSQL (`TOLLGATE_TEST_POSTGRES_URL`, a fresh database),
//! then settled by the `evm` settler on the same chain; prints charges/s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::sol_types::SolCall;
use ledger::store::Backend;
use ledger::testing::{create_funded_key, test_charge, TestDb};
use ledger::{Amount, ChainId, KeyId, WalletAddress};
use workers::evm::chain::{ChainClient, ChainConfig};
use workers::evm::contracts::{pack_entry, MockUSDC};
use workers::evm::devnet::{deploy, Anvil, AnvilOptions, DevChain, DEVNET_CHAIN_ID};
use workers::evm::settler::{EvmSettler, EvmSettlerConfig, Pass};

const PAYERS: usize = 500;
const AMOUNT: u128 = 1_000;

fn payer(i: usize) -> Address {
    let mut bytes = [0xabu8; 20];
    bytes[12..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    Address::from(bytes)
}

async fn mined_gas(client: &ChainClient, signed: &workers::evm::chain::SignedTx) -> u64 {
    client.broadcast(&signed.raw).await.unwrap();
    for _ in 0..200 {
        if let Some(receipt) = client.receipt(signed.hash).await.unwrap() {
            assert!(receipt.status(), "reverted");
            return receipt.gas_used;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not mined");
}

#[tokio::main]
async fn main() {
    let charges: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let anvil = Anvil::start(&AnvilOptions::default())
        .await
        .expect("Anvil: npm ci");
    let deployment = deploy(&anvil.rpc_url).await.unwrap();
    let dev = DevChain::new(deployment.clone()).unwrap();
    let client = ChainClient::new(ChainConfig {
        chain_id: DEVNET_CHAIN_ID,
        rpc_url: anvil.rpc_url.clone(),
        usdc: deployment.usdc,
        settlement_contract: deployment.settlement_contract,
        treasury: deployment.treasury,
        operator_key: Some(deployment.operator_key.clone()),
        confirmations: 1,
        finality_confirmations: 1,
        rpc_timeout: Duration::from_secs(10),
        from_block: 0,
    })
    .unwrap();
    let operator = client.operator();
    let started = Instant::now();
    for i in 0..PAYERS {
        let p = payer(i);
        dev.mint(p, 1_000_000_000).await.unwrap();
        dev.approve(p, 1_000_000_000).await.unwrap();
        if i < 100 {
            if let Err(e) = dev.approve_spender(p, operator, 1_000_000_000).await {
                panic!("payer {i} {p}: {e}");
            }
        }
    }
    eprintln!(
        "set-up: {PAYERS} payers funded and approved in {:?}",
        started.elapsed()
    );

    let mut batch_no = 0u64;
    let mut nonce = client.mined_nonce().await.unwrap();
    let fees = client.fees().await.unwrap();
    let mut settle = |n: usize| {
        batch_no += 1;
        let entries: Vec<_> = (0..n)
            .map(|i| pack_entry(payer(i), AMOUNT).unwrap())
            .collect();
        (batch_no, entries)
    };
    // Warm-up: the bitmap word of batches 1–255 is written once.
    let (no, entries) = settle(1);
    let gas = client.estimate_gas(no, &entries).await.unwrap();
    let signed = client
        .sign_settle(no, &entries, nonce, gas, fees)
        .await
        .unwrap();
    let first = mined_gas(&client, &signed).await;
    nonce += 1;
    println!("gas: first batch of a bitmap word (1 payer): {first}");

    let mut measured = Vec::new();
    for n in [1usize, 10, 100, 500] {
        let (no, entries) = settle(n);
        let gas = client.estimate_gas(no, &entries).await.unwrap();
        let signed = client
            .sign_settle(no, &entries, nonce, gas, fees)
            .await
            .unwrap();
        let used = mined_gas(&client, &signed).await;
        nonce += 1;
        measured.push((n, used));
        println!(
            "gas: batch of {n:>3} payers: {used:>9} total, {:>6} per payer, {:>6} per charge at 1 charge/payer, {:>5} per charge at 10 charges/payer",
            used / n as u64,
            used / n as u64,
            used / (10 * n as u64)
        );
    }
    let g100 = measured.iter().find(|(n, _)| *n == 100).unwrap().1;
    let g500 = measured.iter().find(|(n, _)| *n == 500).unwrap().1;
    let per_payer = (g500 - g100) / 400;
    let fixed = g100 - 100 * per_payer;
    println!("gas: marginal per payer {per_payer}, fixed per batch {fixed} (fit of 100 and 500 payers; the 21,000 base included)");

    // One plain transferFrom transaction per payer, from the operator.
    let provider = dev.provider().clone();
    let mut plain = 0u64;
    for i in 0..100 {
        let call = MockUSDC::transferFromCall {
            from: payer(i),
            to: deployment.treasury,
            value: U256::from(AMOUNT),
        };
        let request = alloy::rpc::types::TransactionRequest::default()
            .from(operator)
            .to(deployment.usdc)
            .input(call.abi_encode().into());
        dev.impersonate(operator).await.unwrap();
        use alloy::providers::Provider;
        let receipt = provider
            .send_transaction(request)
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(receipt.status());
        plain += receipt.gas_used;
    }
    println!(
        "gas: one plain transferFrom transaction per payer: {} per payer (100 payers)",
        plain / 100
    );
    println!(
        "gas: targets — ≤ 18,000 per payer at 100 payers: {} ({}); ≤ 50,000 fixed per batch: {} ({}); ≤ 1,800 per charge at 10 charges/payer (100 payers): {} ({})",
        g100 / 100,
        if g100 / 100 <= 18_000 { "MET" } else { "MISSED" },
        fixed,
        if fixed <= 50_000 { "MET" } else { "MISSED" },
        g100 / 1_000,
        if g100 / 1_000 <= 1_800 { "MET" } else { "MISSED" },
    );

    // Part 2: throughput of the settler, store and chain together.
    let db = TestDb::create(Backend::Postgres).await;
    let store = db.store().await;
    let chain = ChainId(DEVNET_CHAIN_ID);
    let mut keys = Vec::new();
    for i in 0..PAYERS {
        let key = KeyId::generate();
        let wallet = WalletAddress::from_bytes(payer(i).0 .0);
        create_funded_key(
            &store,
            &key,
            wallet,
            chain,
            Amount::from_atomic(1_000_000_000).unwrap(),
        )
        .await;
        keys.push(key);
    }
    let mut batch = Vec::new();
    for c in 0..charges {
        batch.push(test_charge(
            &keys[c % PAYERS],
            Amount::from_atomic(3).unwrap(),
        ));
        if batch.len() == 256 {
            store.record_charges(&batch).await.unwrap();
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.record_charges(&batch).await.unwrap();
    }
    let settler = EvmSettler::new(
        store.clone(),
        client.clone(),
        EvmSettlerConfig {
            settler_id: "bench".into(),
            every: Duration::from_millis(1),
            batch_max_payers: PAYERS,
            batch_max_age_ms: 0,
            replace_after_ms: 60_000,
            held_back_recheck_max_ms: 60_000,
        },
    );
    let started = Instant::now();
    let mut batches = 0;
    loop {
        match settler.pass().await.unwrap() {
            Pass::Settled => batches += 1,
            Pass::Idle => break,
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let counts = store.charge_status_counts().await.unwrap();
    assert_eq!(
        counts,
        vec![("settled".to_owned(), charges as i64)],
        "{counts:?}"
    );
    println!(
        "throughput: {charges} charges of {PAYERS} payers settled in {batches} batches in {:.2} s: {:.0} charges/s",
        elapsed.as_secs_f64(),
        charges as f64 / elapsed.as_secs_f64()
    );
}
