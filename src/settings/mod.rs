//! Configuration: built-in defaults (`config/default.toml`, compiled in), an
//! optional `--config FILE`, then `TOLLGATE__SECTION__KEY` environment
//! variables. Unknown keys and bad values stop start-up with an error that
//! names the setting.
//!
//! This module holds [`Settings`] (every section together), its loading and
//! layering, and the checks that span sections; each section is a file of its
//! own with its struct(s), defaults and `validate`, re-exported here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use ledger::ChainId;
use serde::Deserialize;

mod auth;
mod chains;
mod gateway;
mod http;
mod keys;
mod leases;
mod log;
mod models;
mod queue;
mod settlement;
mod store;
mod studio;
mod workers;

pub use auth::AuthSettings;
pub use chains::{ChainKey, ChainSettings};
pub use gateway::GatewaySettings;
pub use http::{HttpSettings, MetricsToken};
pub use keys::KeySettings;
pub use leases::LeaseSettings;
pub use log::{LogFormat, LogSettings};
pub use models::{ModelSettings, UpstreamSetting, WireProtocol};
pub use queue::{QueueSettings, QueueUrl};
pub use settlement::{SettlementMode, SettlementSettings};
pub use store::StoreSettings;
pub use studio::StudioSettings;
pub use workers::WorkerSettings;

/// The defaults, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: setting `{setting}` {reason}")]
    Invalid { setting: String, reason: String },
}

fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting: setting.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub log: LogSettings,
    pub store: StoreSettings,
    pub queue: QueueSettings,
    pub auth: AuthSettings,
    pub keys: KeySettings,
    pub gateway: GatewaySettings,
    pub leases: LeaseSettings,
    pub workers: WorkerSettings,
    pub studio: StudioSettings,
    pub settlement: SettlementSettings,
    pub chains: BTreeMap<ChainKey, ChainSettings>,
    pub models: BTreeMap<String, ModelSettings>,
}

/// `value` must lie in `low..=high` (in the setting's own units).
fn within<T: PartialOrd + std::fmt::Display>(
    setting: &str,
    value: T,
    low: T,
    high: T,
) -> Result<(), SettingsError> {
    if value < low || value > high {
        return Err(invalid(
            setting,
            format!("must be between {low} and {high}"),
        ));
    }
    Ok(())
}

/// A list from a file, or a comma-separated string from the environment.
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(list) => list,
        ListOrCsv::Csv(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Settings {
    /// Loads the layers and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Settings::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            if path.is_dir() {
                return Err(invalid(
                    "--config",
                    format!("{} is a folder; name a TOML file", path.display()),
                ));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("TOLLGATE__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("TOLLGATE")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let bind = self.http.validate()?;
        self.validate_siwe_domains(bind)?;
        self.store.validate()?;
        self.queue.validate()?;
        self.auth.validate()?;
        self.keys.validate()?;
        self.workers.validate()?;
        self.leases.validate()?;
        self.gateway.validate()?;
        self.validate_models()?;
        self.studio.validate()?;
        self.settlement.validate()?;
        if self.chains.is_empty() {
            return Err(invalid("chains", "must configure at least one chain"));
        }
        if self.settlement.mode == SettlementMode::Evm {
            self.evm_chains()?;
        }
        Ok(())
    }

    /// A non-loopback server must name its SIWE domains: guessing them from
    /// the request (its `Host`) would let a phishing site relay a signature.
    pub fn validate_siwe_domains(&self, bound: SocketAddr) -> Result<(), SettingsError> {
        for domain in &self.auth.siwe_domains {
            if domain.is_empty()
                || domain.contains("://")
                || domain.contains(['/', '@', '?', '#'])
                || domain.contains(char::is_whitespace)
            {
                return Err(invalid(
                    "auth.siwe_domains",
                    format!("{domain:?} is not a host[:port] (no scheme, path or spaces)"),
                ));
            }
        }
        if self.auth.siwe_domains.is_empty() && !bound.ip().is_loopback() {
            return Err(invalid(
                "auth.siwe_domains",
                format!(
                    "must name the domains users sign in to (e.g. [\"app.example.com\"]) \
                     when http.bind ({bound}) is not a loopback address"
                ),
            ));
        }
        Ok(())
    }

    /// The SIWE domains in force for a server bound to `bound`: the
    /// configured ones, else the loopback names of that address.
    pub fn siwe_domains_for(&self, bound: SocketAddr) -> Vec<String> {
        if !self.auth.siwe_domains.is_empty() {
            return self.auth.siwe_domains.clone();
        }
        let port = bound.port();
        let mut domains = vec![bound.to_string(), format!("localhost:{port}")];
        if bound.is_ipv4() {
            domains.push(format!("[::1]:{port}"));
        } else {
            domains.push(format!("127.0.0.1:{port}"));
        }
        domains
    }

    fn validate_models(&self) -> Result<(), SettingsError> {
        if self.models.is_empty() {
            return Err(invalid("models", "must configure at least one model"));
        }
        for (name, model) in &self.models {
            model.validate(name)?;
        }
        Ok(())
    }

    /// Each chain's client set-up, in the `evm` mode (empty in `ledger`).
    pub fn evm_chains(&self) -> Result<Vec<::workers::evm::ChainConfig>, SettingsError> {
        if self.settlement.mode != SettlementMode::Evm {
            return Ok(Vec::new());
        }
        self.chains
            .iter()
            .map(|(id, chain)| chain.evm_config(id.0))
            .collect()
    }

    /// The configured chain ids.
    pub fn chain_ids(&self) -> Vec<ChainId> {
        self.chains.keys().map(|key| key.0).collect()
    }

    /// The default chain: the lowest configured chain id.
    pub fn default_chain(&self) -> Option<ChainId> {
        self.chain_ids().into_iter().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::load_with_env(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let s = load(&[]).unwrap();
        assert_eq!(s.http.bind, "127.0.0.1:8080");
        assert_eq!(s.store.url, "sqlite://data/tollgate.db");
        assert_eq!(s.queue.url, QueueUrl::Memory);
        assert_eq!(s.settlement.mode, SettlementMode::Ledger);
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!(s.models["echo"].upstream, UpstreamSetting::Echo);
        assert_eq!(s.chain_ids(), vec![ChainId(43113)]);
        assert!(s.models.contains_key("echo"));
    }

    #[test]
    fn environment_overrides_and_names_bad_settings() {
        let s = load(&[
            ("TOLLGATE__STORE__URL", "postgres://127.0.0.1/test"),
            ("TOLLGATE__KEYS__MAX_ACTIVE_PER_WALLET", "5"),
        ])
        .unwrap();
        assert_eq!(s.store.url, "postgres://127.0.0.1/test");
        assert_eq!(s.keys.max_active_per_wallet, 5);
        let err = load(&[("TOLLGATE__HTTP__BIND", "not-an-address")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.bind"), "{err}");
        let err = load(&[("TOLLGATE__STORE__MAX_CONNECTIONS", "many")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_connections"), "{err}");
        let err = load(&[("TOLLGATE__SETTLEMENT__MODE", "magic")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("settlement.mode"), "{err}");
        let err = load(&[("TOLLGATE__HTTP__BINDD", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bindd"), "{err}");
    }

    #[test]
    fn cache_prices_default_to_the_input_price() {
        let echo = load(&[]).unwrap().models["echo"].price();
        assert_eq!(echo.cached_input_atomic_per_million, 1_000_000);
        assert_eq!(echo.cache_write_atomic_per_million, 1_000_000);
        let s = load(&[
            (
                "TOLLGATE__MODELS__ECHO__CACHED_INPUT_ATOMIC_PER_MILLION",
                "250000",
            ),
            (
                "TOLLGATE__MODELS__ECHO__CACHE_WRITE_ATOMIC_PER_MILLION",
                "1250000",
            ),
        ])
        .unwrap();
        let price = s.models["echo"].price();
        assert_eq!(
            (
                price.input_atomic_per_million,
                price.cached_input_atomic_per_million,
                price.cache_write_atomic_per_million
            ),
            (1_000_000, 250_000, 1_250_000)
        );
        let err = load(&[(
            "TOLLGATE__MODELS__ECHO__CACHE_WRITE_ATOMIC_PER_MILLION",
            "18446744073709551615",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.contains("cache_write_atomic_per_million"), "{err}");
    }

    #[test]
    fn siwe_domains_never_default_for_a_public_bind() {
        let err = load(&[("TOLLGATE__HTTP__BIND", "0.0.0.0:8080")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.siwe_domains"), "{err}");
        let s = load(&[
            ("TOLLGATE__HTTP__BIND", "0.0.0.0:8080"),
            (
                "TOLLGATE__AUTH__SIWE_DOMAINS",
                "app.example.com, www.example.com",
            ),
        ])
        .unwrap();
        assert_eq!(s.auth.siwe_domains, ["app.example.com", "www.example.com"]);
        let bound = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(
            s.siwe_domains_for(bound),
            ["app.example.com", "www.example.com"]
        );
        let local = load(&[]).unwrap();
        assert_eq!(
            local.siwe_domains_for("127.0.0.1:9000".parse().unwrap()),
            ["127.0.0.1:9000", "localhost:9000", "[::1]:9000"]
        );
        let err = load(&[("TOLLGATE__AUTH__SIWE_DOMAINS", "https://app.example.com")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.siwe_domains"), "{err}");
    }

    #[test]
    fn typed_values_are_parsed_at_load_and_errors_name_them() {
        for (key, value, named) in [
            ("TOLLGATE__LOG__FORMAT", "xml", "format"),
            ("TOLLGATE__QUEUE__URL", "redis://x", "queue.url"),
            ("TOLLGATE__SETTLEMENT__MODE", "magic", "mode"),
            ("TOLLGATE__MODELS__ECHO__UPSTREAM", "ftp://x", "upstream"),
            ("TOLLGATE__CHAINS__ABC__NAME", "x", "chains.abc"),
        ] {
            let err = load(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
        let s = load(&[(
            "TOLLGATE__MODELS__ECHO__UPSTREAM",
            "https://api.example.com/v1/",
        )])
        .unwrap();
        assert_eq!(
            s.models["echo"].upstream,
            UpstreamSetting::Remote("https://api.example.com/v1".into())
        );
        // The evm mode needs each chain's settings, and names the first
        // missing or malformed one.
        let err = load(&[("TOLLGATE__SETTLEMENT__MODE", "evm")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("chains.43113.rpc_url"), "{err}");
        let evm = |extra: &[(&'static str, &'static str)]| {
            let mut env = vec![
                ("TOLLGATE__SETTLEMENT__MODE", "evm"),
                ("TOLLGATE__CHAINS__43113__RPC_URL", "http://127.0.0.1:8545"),
                (
                    "TOLLGATE__CHAINS__43113__USDC",
                    "0x5fbdb2315678afecb367f032d93f642f64180aa3",
                ),
                (
                    "TOLLGATE__CHAINS__43113__SETTLEMENT_CONTRACT",
                    "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512",
                ),
                (
                    "TOLLGATE__CHAINS__43113__TREASURY",
                    "0xa0ee7a142d267c1f36714e4a8f75612f20a79720",
                ),
                (
                    "TOLLGATE__CHAINS__43113__OPERATOR_KEY",
                    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
                ),
            ];
            env.extend_from_slice(extra);
            load(&env)
        };
        let s = evm(&[]).unwrap();
        assert_eq!(s.evm_chains().unwrap().len(), 1);
        // Finality defaults to `confirmations`, and never comes before it.
        let chain = |s: Settings| s.evm_chains().unwrap().remove(0);
        let conf = |n: &'static str| ("TOLLGATE__CHAINS__43113__CONFIRMATIONS", n);
        let fin = |n: &'static str| ("TOLLGATE__CHAINS__43113__FINALITY_CONFIRMATIONS", n);
        assert_eq!(chain(evm(&[conf("4")]).unwrap()).finality_confirmations, 4);
        let set = chain(evm(&[conf("2"), fin("12")]).unwrap());
        assert_eq!((set.confirmations, set.finality_confirmations), (2, 12));
        let err = evm(&[conf("3"), fin("2")]).unwrap_err().to_string();
        assert!(err.contains("chains.43113.finality_confirmations"), "{err}");
        for (key, value, named) in [
            ("TOLLGATE__CHAINS__43113__USDC", "0x12", "chains.43113.usdc"),
            (
                "TOLLGATE__CHAINS__43113__RPC_URL",
                "ws://x",
                "chains.43113.rpc_url",
            ),
            (
                "TOLLGATE__CHAINS__43113__OPERATOR_KEY",
                "nope",
                "chains.43113.operator_key",
            ),
            (
                "TOLLGATE__CHAINS__43113__BATCH_MAX_PAYERS",
                "5000",
                "chains.43113.batch_max_payers",
            ),
        ] {
            let err = evm(&[(key, value)]).unwrap_err().to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
            // A bad key is named, never printed.
            assert!(!err.contains("ac0974bec39a17e3"), "{err}");
        }
    }

    #[test]
    fn the_production_example_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
        let env = [
            (
                "TOLLGATE__CHAINS__43113__OPERATOR_KEY",
                "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
            ),
            ("TOLLGATE__AUTH__SIGNING_KEY_FILE", "/tmp/unused.key"),
        ];
        let s = Settings::load_with_env(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        assert_eq!(s.settlement.mode, SettlementMode::Evm);
        assert_eq!(s.evm_chains().unwrap().len(), 1);
        assert!(matches!(s.queue.url, QueueUrl::Amqp(_)));
        assert!(!s.workers.in_process);
        // A folder is not a file.
        let err = Settings::load_with_env(path.parent(), std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a folder"), "{err}");
    }
}
