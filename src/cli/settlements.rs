//! `tollgate settlements list [--status S] [--json]` and `tollgate
//! settlements show BATCH [--json]`: what has settled, for operators — the
//! charges by status, the newest batches, and one batch.

use anyhow::bail;
use serde_json::json;

use crate::settings::Settings;
use crate::startup::open_store;

/// What `settlements` does.
#[derive(Debug, clap::Subcommand)]
pub enum SettlementsCommand {
    /// Charges by status and the newest batches (100 at most).
    List {
        /// Only batches in this status: open, sending, settled or failed.
        #[arg(long, value_parser = ["open", "sending", "settled", "failed"])]
        status: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One batch: its status, totals, payers, charges and transaction.
    Show {
        /// The batch id (see `settlements list`).
        batch: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn settlements(settings: &Settings, command: SettlementsCommand) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let outcome = run(&store, command).await;
    store.close().await;
    outcome
}

async fn run(store: &ledger::Store, command: SettlementsCommand) -> anyhow::Result<()> {
    match command {
        SettlementsCommand::List { status, json } => {
            let counts = store.charge_status_counts().await?;
            let batches = store.settlement_batches(status.as_deref()).await?;
            if json {
                let counts: serde_json::Map<String, serde_json::Value> =
                    counts.into_iter().map(|(s, n)| (s, n.into())).collect();
                println!("{}", json!({ "charges": counts, "batches": batches }));
                return Ok(());
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
        }
        SettlementsCommand::Show { batch, json } => {
            let Some(record) = store.settlement_batch(&batch).await? else {
                bail!("no settlement batch {batch:?} (`tollgate settlements list` shows them)");
            };
            if json {
                println!("{}", serde_json::to_string(&record)?);
            } else {
                println!(
                    "{}: chain {}, {}, {} charges from {} payers, total {}, tx {}",
                    record.id,
                    record.chain_id,
                    record.status,
                    record.charge_count,
                    record.payer_count,
                    record.total,
                    record.tx_hash.as_deref().unwrap_or("none (ledger)")
                );
            }
        }
    }
    Ok(())
}
