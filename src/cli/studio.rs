//! `tollgate studio bootstrap`: a Studio account, its first project and the
//! project's first `admin` secret key (printed once); with `--existing`, a
//! new project (and its first admin key) of an account that exists.

use anyhow::{bail, Context};
use clap::Subcommand;
use ledger::model::{AccountRecord, ApiKeyType, ProjectRecord, Role};
use ledger::time::now_ms;
use ledger::{AccountId, ChainId, ProjectId, WalletAddress};

use super::pick_chain;
use crate::settings::Settings;
use crate::startup::open_store;
use crate::studio::issue::{mint, KeySpec};
use crate::studio::secrets::StudioSecrets;
use crate::studio::view::{view, with_value};

#[derive(Debug, Subcommand)]
pub enum StudioCommand {
    /// Create an account and its first project, and print the project's first
    /// `admin` secret key (its value is shown here; `withValue` shows it again).
    /// An account name that exists is refused, unless `--existing` asks to
    /// add the project to it.
    Bootstrap {
        /// The account's name.
        #[arg(long)]
        account: String,
        /// Add the project to the existing account named `--account` (its
        /// funding wallet stays as it is).
        #[arg(long, conflicts_with_all = ["wallet", "chain"])]
        existing: bool,
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

pub async fn studio(settings: &Settings, command: StudioCommand) -> anyhow::Result<()> {
    let StudioCommand::Bootstrap {
        account,
        existing,
        project,
        wallet,
        chain,
    } = command;
    let funding = funding(settings, wallet, chain)?;
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
    let account = if existing {
        store.account_named(&account).await?
    } else {
        AccountRecord {
            id: AccountId::generate(),
            name: account,
            funding,
            created_at_ms: now,
        }
    };
    let project = ProjectRecord {
        id: ProjectId::generate(),
        account_id: account.id.clone(),
        name: project,
        budget_key_id: None,
        created_at_ms: now,
    };
    let (key, value) = mint(&secrets, admin_key_spec(&account, &project, now))?;
    let key = if existing {
        store.add_studio_project(&project, &key).await?
    } else {
        store.bootstrap_studio(&account, &project, &key).await?
    };
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

/// `--wallet` and `--chain`: the account's funding wallet and its chain.
fn funding(
    settings: &Settings,
    wallet: Option<String>,
    chain: Option<u64>,
) -> anyhow::Result<Option<(WalletAddress, ChainId)>> {
    let Some(text) = wallet else {
        return Ok(None);
    };
    let wallet: WalletAddress = text.parse().with_context(|| format!("--wallet {text:?}"))?;
    Ok(Some((wallet, pick_chain(settings, chain)?)))
}

/// The project's first key: an `admin` secret key, made by the CLI.
fn admin_key_spec(account: &AccountRecord, project: &ProjectRecord, now: i64) -> KeySpec {
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
    }
}
