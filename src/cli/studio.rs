//! `tollgate studio bootstrap`: a Studio account, its first project and the
//! project's first `admin` secret key (printed once).

use anyhow::{bail, Context};
use clap::Subcommand;
use ledger::model::{AccountRecord, ApiKeyType, ProjectRecord, Role};
use ledger::time::now_ms;
use ledger::{AccountId, ProjectId, WalletAddress};

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

pub async fn studio(settings: &Settings, command: StudioCommand) -> anyhow::Result<()> {
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
