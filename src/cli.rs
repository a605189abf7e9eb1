//! The command line: `serve`, `migrate`, `credit`, `studio bootstrap`, `siwe-sign`.
//!
//! Errors here are `anyhow`: this is the binary's edge.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ledger::time::now_ms;
use ledger::{Amount, ChainId, WalletAddress};

use crate::auth::{eth, siwe::SiweMessage};
use crate::settings::Settings;
use crate::startup::{open_store, Application};
use crate::studio::issue::{mint, KeySpec};
use crate::studio::secrets::StudioSecrets;
use crate::studio::view::{view, with_value};
use ledger::model::{AccountRecord, ApiKeyType, ProjectRecord, Role};
use ledger::{AccountId, ProjectId};

/// Anvil's and Hardhat's first dev account: public knowledge, for local use only.
pub const DEV_PRIVATE_KEY: &str =
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Pay-per-call API gateway with budgeted keys settled in USDC"
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (env vars TOLLGATE__SECTION__KEY still win).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server (applies migrations first).
    Serve {
        /// Listen here instead of http.bind, e.g. 0.0.0.0:8080.
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Credit a wallet's prepaid balance (settlement mode "ledger").
    Credit {
        /// The wallet, 0x-prefixed.
        address: String,
        /// USDC atomic units (1000000 = 1 USDC).
        amount: String,
        /// Chain id; defaults to the lowest configured chain.
        #[arg(long)]
        chain: Option<u64>,
        /// A note kept with the credit in the audit trail.
        #[arg(long, default_value = "cli credit")]
        note: String,
    },
    /// Studio API keys (/api/v1/apikeys).
    Studio {
        #[command(subcommand)]
        command: StudioCommand,
    },
    /// Sign a SIWE message for local testing; prints the JSON body for POST /api/sessions.
    SiweSign {
        /// The nonce from GET /api/sessions/nonce.
        #[arg(long, value_parser = parse_nonce)]
        nonce: String,
        /// Hex private key; defaults to Anvil's first, publicly known, dev account.
        #[arg(long, env = "TOLLGATE_DEV_PRIVATE_KEY", hide_env_values = true)]
        private_key: Option<String>,
        /// The domain the server checks (its Host), e.g. 127.0.0.1:8080.
        #[arg(long, default_value = "127.0.0.1:8080")]
        domain: String,
        /// Chain id; defaults to the lowest configured chain.
        #[arg(long)]
        chain: Option<u64>,
        /// The session key's budget, in USDC atomic units.
        #[arg(long, default_value = "0")]
        budget: String,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    crate::telemetry::init(&settings.log);
    match cli.command {
        Command::Serve { bind } => {
            if let Some(bind) = bind {
                bind.parse::<std::net::SocketAddr>()
                    .with_context(|| format!("--bind must be ADDRESS:PORT, got {bind:?}"))?;
                settings.http.bind = bind;
            }
            let app = Application::build(settings.clone()).await?;
            tracing::info!(bind = %settings.http.bind, port = app.port(), store = %ledger::store::redact_url(&settings.store.url), "tollgate serving");
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            open_store(&settings).await?;
            println!(
                "migrations applied to {}",
                ledger::store::redact_url(&settings.store.url)
            );
        }
        Command::Credit {
            address,
            amount,
            chain,
            note,
        } => {
            let wallet: WalletAddress = address
                .parse()
                .with_context(|| format!("address {address:?}"))?;
            let amount =
                Amount::parse_decimal(&amount).map_err(|e| anyhow::anyhow!("amount {e}"))?;
            let chain = pick_chain(&settings, chain)?;
            let store = open_store(&settings).await?;
            let balance = store
                .credit(&wallet, chain, amount, &note, now_ms())
                .await
                .map_err(|e| match e {
                    ledger::StoreError::AmountOverflow => anyhow::anyhow!(
                        "amount must be between 1 and {} and keep the balance storable",
                        ledger::store::balances::CREDIT_MAX
                    ),
                    other => other.into(),
                })?;
            println!(
                "{}",
                serde_json::json!({
                    "address": wallet, "chainId": chain, "credited": amount,
                    "balance": balance.credited.saturating_sub(balance.debited),
                })
            );
        }
        Command::Studio { command } => studio(&settings, command).await?,
        Command::SiweSign {
            nonce,
            private_key,
            domain,
            chain,
            budget,
        } => {
            let key_hex = private_key.unwrap_or_else(|| DEV_PRIVATE_KEY.to_owned());
            let key = eth::signing_key_from_hex(&key_hex)
                .context("--private-key must be 32 bytes of hex")?;
            let chain = pick_chain(&settings, chain)?;
            let now = now_ms();
            let message = SiweMessage {
                domain: domain.clone(),
                address: eth::address_of(key.verifying_key()),
                statement: Some("Sign in to Tollgate.".into()),
                uri: format!("http://{domain}"),
                version: "1".into(),
                chain_id: chain,
                nonce,
                issued_at_ms: now,
                expiration_time_ms: Some(now + 3_600_000),
                not_before_ms: None,
            }
            .render();
            let signature = eth::sign_personal(&key, message.as_bytes())?;
            println!(
                "{}",
                serde_json::json!({ "message": message, "signature": signature, "budgetLimit": budget })
            );
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum StudioCommand {
    /// Create an account and its first project, and print the project's first
    /// `admin` secret key (its value is shown here; `withValue` shows it again).
    Bootstrap {
        /// The account's name.
        #[arg(long)]
        account: String,
        /// The first project's name.
        #[arg(long)]
        project: String,
        /// The wallet that funds the account's project budgets (its prepaid
        /// balance, as for Compose keys); without it projects cannot hold one.
        #[arg(long)]
        wallet: Option<String>,
        /// The funding wallet's chain; defaults to the lowest configured chain.
        #[arg(long)]
        chain: Option<u64>,
    },
}

async fn studio(settings: &Settings, command: StudioCommand) -> anyhow::Result<()> {
    let StudioCommand::Bootstrap {
        account,
        project,
        wallet,
        chain,
    } = command;
    let funding = match wallet {
        None => None,
        Some(text) => {
            let wallet: WalletAddress =
                text.parse().with_context(|| format!("--wallet {text:?}"))?;
            Some((wallet, pick_chain(settings, chain)?))
        }
    };
    for (what, name) in [("--account", &account), ("--project", &project)] {
        let max = settings.studio.name_max_chars;
        if name.trim().is_empty() || name.chars().count() > max {
            bail!("{what} must be 1 to {max} characters");
        }
    }
    let store = open_store(settings).await?;
    let secrets = StudioSecrets::load_or_create(
        settings.studio.secrets_key.as_deref(),
        std::path::Path::new(&settings.studio.secrets_key_file),
    )?;
    let now = now_ms();
    let account = AccountRecord {
        id: AccountId::generate(),
        name: account,
        funding,
        created_at_ms: now,
    };
    let project = ProjectRecord {
        id: ProjectId::generate(),
        account_id: account.id.clone(),
        name: project,
        budget_key_id: None,
        created_at_ms: now,
    };
    let (key, value) = mint(
        &secrets,
        KeySpec {
            account: account.id.clone(),
            project: project.id.clone(),
            name: "bootstrap admin".into(),
            key_type: ApiKeyType::Sk,
            role: Role::Admin,
            expires_at_ms: None,
            by: "user:cli".into(),
            by_role: Role::Admin,
            now_ms: now,
        },
    )?;
    let key = store.bootstrap_studio(&account, &project, &key).await?;
    println!(
        "{}",
        serde_json::json!({
            "account": {
                "id": account.id, "name": account.name,
                "wallet": account.funding.map(|(w, _)| w),
                "chainId": account.funding.map(|(_, c)| c),
            },
            "project": {"id": project.id, "name": project.name},
            "apikey": with_value(view(&key), &value),
        })
    );
    Ok(())
}

fn parse_nonce(text: &str) -> Result<String, String> {
    let ok = (8..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| text.to_owned()).ok_or_else(|| {
        "a nonce is 8 to 64 letters and digits, as GET /api/sessions/nonce returns it".to_owned()
    })
}

fn pick_chain(settings: &Settings, chain: Option<u64>) -> anyhow::Result<ChainId> {
    match chain {
        Some(id) if settings.chain_ids().contains(&ChainId(id)) => Ok(ChainId(id)),
        Some(id) => bail!("chain {id} is not configured (see [chains] in the configuration)"),
        None => settings.default_chain().context("no chain configured"),
    }
}
