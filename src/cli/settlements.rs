//! `tollgate settlements list [--status S] [--json]`, `tollgate settlements
//! show BATCH [--json]` and `tollgate settlements replay BATCH | --all-failed`:
//! what has settled, for operators — the charges by status, paused chains
//! and why, the newest batches, one batch (payers, attempts, transactions),
//! and sending failed charges again — or, in the `evm` mode, a batch the
//! ledger calls settled that the chain does not have (a reorg deeper than
//! `finality_confirmations`: `reconcile` reports it), once the contract
//! confirms the batch number is not settled.

use anyhow::bail;
use serde_json::json;

use crate::settings::Settings;
use crate::startup::open_store;

/// What `settlements` does.
#[derive(Debug, clap::Subcommand)]
pub enum SettlementsCommand {
    /// Charges by status and the newest batches (100 at most).
    List {
        /// Only batches in this status: batched (in flight: open, sending or
        /// confirming), open, sending, confirming (mined, not yet final),
        /// settled or failed.
        #[arg(long, value_parser = ["batched", "open", "sending", "confirming", "settled", "failed"])]
        status: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One batch: its status, totals, payers, attempts and transactions.
    Show {
        /// The batch id (see `settlements list`).
        batch: String,
        #[arg(long)]
        json: bool,
    },
    /// Send failed charges again (e.g. after a payer restored its allowance
    /// or was unblacklisted): they return to pending and settle in a new
    /// batch. A failed charge never moved money, so none settles twice. A
    /// settled on-chain batch the chain lost (a reorg) is sent again under
    /// its own number, after the contract confirms it is not settled.
    Replay {
        /// The batch whose failed charges to replay (or the settled batch
        /// the chain lost).
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        batch: Option<String>,
        /// Every failed charge of every batch.
        #[arg(long)]
        all_failed: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn settlements(settings: &Settings, command: SettlementsCommand) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let outcome = run(settings, &store, command).await;
    store.close().await;
    outcome
}

async fn run(
    settings: &Settings,
    store: &ledger::Store,
    command: SettlementsCommand,
) -> anyhow::Result<()> {
    match command {
        SettlementsCommand::List { status, json } => list(store, status.as_deref(), json).await,
        SettlementsCommand::Show { batch, json } => show(store, &batch, json).await,
        SettlementsCommand::Replay {
            batch,
            all_failed: _,
            json,
        } => replay(settings, store, batch, json).await,
    }
}

/// `list`: the charges by status, the paused chains and the newest batches.
async fn list(store: &ledger::Store, status: Option<&str>, json: bool) -> anyhow::Result<()> {
    let counts = store.charge_status_counts().await?;
    let batches = store.settlement_batches(status).await?;
    let paused: Vec<(i64, String)> = store
        .chain_accounts()
        .await?
        .into_iter()
        .filter_map(|a| Some((a.chain_id, a.paused_reason?)))
        .collect();
    if json {
        let counts: serde_json::Map<String, serde_json::Value> =
            counts.into_iter().map(|(s, n)| (s, n.into())).collect();
        let paused: Vec<_> = paused
            .iter()
            .map(|(chain, reason)| json!({ "chainId": chain, "reason": reason }))
            .collect();
        println!(
            "{}",
            json!({ "charges": counts, "pausedChains": paused, "batches": batches })
        );
        return Ok(());
    }
    for (chain, reason) in &paused {
        println!("chain {chain}: settlement PAUSED: {reason}");
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!(
        "charges: {}",
        if counts.is_empty() {
            "none".to_owned()
        } else {
            counts.join(", ")
        }
    );
    for b in &batches {
        println!(
            "{}  chain {}  {}  {} charges  {} payers  total {}{}",
            b.id,
            b.chain_id,
            b.status,
            b.charge_count,
            b.payer_count,
            b.total,
            b.last_error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `show BATCH`: the batch, its payers and its attempts.
async fn show(store: &ledger::Store, batch: &str, json: bool) -> anyhow::Result<()> {
    let Some(record) = store.settlement_batch(batch).await? else {
        bail!("no settlement batch {batch:?} (`tollgate settlements list` shows them)");
    };
    let payers = store.batch_payers(batch).await?;
    let attempts = store.batch_attempts(batch).await?;
    if json {
        let mut view = serde_json::to_value(&record)?;
        view["payers"] = serde_json::to_value(&payers)?;
        view["attempts"] = serde_json::to_value(&attempts)?;
        println!("{view}");
        return Ok(());
    }
    println!(
        "{}: chain {}, {}, {} charges from {} payers, total {}, tx {}",
        record.id,
        record.chain_id,
        record.status,
        record.charge_count,
        record.payer_count,
        record.total,
        record.tx_hash.as_deref().unwrap_or("none")
    );
    if let Some(error) = &record.last_error {
        println!("  last error: {error}");
    }
    for p in &payers {
        println!(
            "  payer {}  {}  {} charges  {}",
            p.payer, p.amount, p.charge_count, p.outcome
        );
    }
    for a in &attempts {
        println!(
            "  attempt {}  tx {}  {}{}",
            a.attempt,
            a.tx_hash.as_deref().unwrap_or("-"),
            a.outcome.as_deref().unwrap_or("in flight"),
            a.error
                .as_deref()
                .map(|e| format!("  {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `replay BATCH | --all-failed`: failed charges back to pending — or, for
/// a settled on-chain batch, [`replay_lost`].
async fn replay(
    settings: &Settings,
    store: &ledger::Store,
    batch: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(id) = &batch {
        let Some(record) = store.settlement_batch(id).await? else {
            bail!("no settlement batch {id:?} (`tollgate settlements list` shows them)");
        };
        if let (true, Some(batch_no)) = (record.status == "settled", record.chain_batch_no) {
            return replay_lost(settings, store, &record, batch_no, json).await;
        }
    }
    let replayed = store.replay_failed(batch.as_deref()).await?;
    if json {
        println!("{}", json!({ "replayed": replayed, "batch": batch }));
    } else {
        println!("{replayed} failed charge(s) back to pending; the settler batches them again");
    }
    Ok(())
}

/// `replay BATCH` of a settled on-chain batch: re-opened only when the
/// contract says its number is not settled (never pay twice).
async fn replay_lost(
    settings: &Settings,
    store: &ledger::Store,
    record: &ledger::store::settlement::BatchRecord,
    batch_no: i64,
    json: bool,
) -> anyhow::Result<()> {
    use workers::evm::reconcile::{reopen_if_lost, LostBatch};
    let chain = ledger::ChainId(u64::try_from(record.chain_id)?);
    let clients = crate::pools::chain_clients(settings)?;
    let Some(client) = clients.get(&chain) else {
        bail!(
            "batch {} is on chain {}, which has no evm settings here",
            record.id,
            record.chain_id
        );
    };
    match reopen_if_lost(store, client, &record.id, batch_no).await? {
        LostBatch::SettledOnChain => bail!(
            "batch {} (#{batch_no}) is settled on chain too: nothing to replay",
            record.id
        ),
        LostBatch::Reopened(charges) if json => {
            println!(
                "{}",
                json!({ "reopened": charges, "batch": record.id, "batchNo": batch_no })
            );
        }
        LostBatch::Reopened(0) => println!(
            "batch {} (#{batch_no}) is not settled on chain, and none of its payers had paid: \
             nothing to send again (its failed charges replay with --all-failed)",
            record.id
        ),
        LostBatch::Reopened(charges) => println!(
            "batch {} (#{batch_no}) is not settled on chain: re-opened with {charges} charge(s); \
             the settler sends it again under the same number",
            record.id
        ),
    }
    Ok(())
}
