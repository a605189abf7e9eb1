//! [`AppState`]: what every HTTP handler shares, and the checks made before
//! a key is created ([`KeyCreationRefused`], which `http::error` answers).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ledger::model::Funds;
use ledger::{ChainId, Store, WalletAddress};
use workers::evm::ChainClient;

use crate::settled_txs::SettledTxs;

use crate::auth::rate_limit::RateLimiter;
use crate::auth::token::TokenSigner;
use crate::gateway::Gateway;
use crate::settings::Settings;
use crate::studio::jwt::JwtSigner;
use crate::studio::secrets::StudioSecrets;

/// Shared by all workers; cheap to clone (everything inside is shared).
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub signer: TokenSigner,
    pub settings: Arc<Settings>,
    /// The configured chains, for header and SIWE checks.
    pub chains: Arc<HashSet<ChainId>>,
    /// The paid path: key actors, ledger writer, models.
    pub gateway: Gateway,
    /// Studio API keys: sealing and lookup secrets, the JWT signer.
    pub studio: StudioKeys,
    /// Nonce requests and sign-ins, per client address.
    pub sign_in_limiter: Arc<RateLimiter>,
    /// `count_tokens` is free to call, so it is rate-limited as sign-ins are.
    pub count_tokens_limiter: Arc<RateLimiter>,
    /// Key creations, per client address and per wallet.
    pub key_creation_limiters: Arc<(RateLimiter, RateLimiter<WalletAddress>)>,
    /// `/readyz`'s latest answer, reused for a second.
    pub readiness: ReadinessCache,
    /// `evm` mode: each chain's client (the funding check reads balances
    /// and allowances through it). Empty in the `ledger` mode.
    pub chain_clients: Arc<HashMap<ChainId, ChainClient>>,
    /// Each key's latest settlement transaction (`x-compose-key-tx-hash`).
    pub settled_txs: SettledTxs,
    /// The broker, in the queue mode (`/readyz` checks it).
    pub queue: Option<workers::queue::Queue>,
    /// The store's gauges, read in the background for `/metrics`.
    pub store_gauges: crate::metrics::StoreGaugeCache,
}

/// `/readyz`'s latest answer. A probe that finds none fresh checks while
/// holding the lock, so concurrent probes wait for that one check.
pub type ReadinessCache = Arc<tokio::sync::Mutex<Option<CheckedReadiness>>>;

/// One readiness check: when it was made, and what each dependency
/// answered — `ok`, `unavailable` or `timeout` (a chain also `wrong_chain`).
#[derive(Debug, Clone)]
pub struct CheckedReadiness {
    pub at: std::time::Instant,
    pub store: &'static str,
    /// Checked only when calls go through RabbitMQ.
    pub queue: Option<&'static str>,
    /// Each chain (its id) in the `evm` mode.
    pub chains: Vec<(String, &'static str)>,
}

impl CheckedReadiness {
    /// Whether every dependency checked answered `ok`.
    pub fn ready(&self) -> bool {
        self.store == "ok"
            && self.queue.is_none_or(|q| q == "ok")
            && self.chains.iter().all(|(_, status)| *status == "ok")
    }
}

/// What the Studio surface needs beyond the store.
#[derive(Clone)]
pub struct StudioKeys {
    pub secrets: Arc<StudioSecrets>,
    pub jwt: JwtSigner,
}

impl AppState {
    pub fn new(
        store: Store,
        signer: TokenSigner,
        settings: Settings,
        gateway: Gateway,
        studio: StudioKeys,
    ) -> AppState {
        let chains = settings.chain_ids().into_iter().collect();
        let sign_in_limiter = Arc::new(RateLimiter::new(
            settings.auth.sign_in_burst,
            settings.auth.sign_in_per_s,
        ));
        let count_tokens_limiter = Arc::new(RateLimiter::new(
            settings.auth.sign_in_burst,
            settings.auth.sign_in_per_s,
        ));
        let keys = &settings.keys;
        let key_creation_limiters = Arc::new((
            RateLimiter::new(keys.create_burst, keys.create_per_s),
            RateLimiter::new(keys.create_burst, keys.create_per_s),
        ));
        AppState {
            store,
            signer,
            settings: Arc::new(settings),
            chains: Arc::new(chains),
            gateway,
            studio,
            sign_in_limiter,
            count_tokens_limiter,
            key_creation_limiters,
            readiness: Default::default(),
            chain_clients: Arc::new(HashMap::new()),
            settled_txs: SettledTxs::default(),
            queue: None,
            store_gauges: crate::metrics::StoreGaugeCache::default(),
        }
    }

    /// With the `evm` mode's chain clients and the settled transactions
    /// they produce.
    pub fn with_chain_clients(
        mut self,
        clients: HashMap<ChainId, ChainClient>,
        settled_txs: SettledTxs,
    ) -> AppState {
        self.chain_clients = Arc::new(clients);
        self.settled_txs = settled_txs;
        self
    }

    /// With the cache its `/metrics` serves the store's gauges from.
    pub fn with_store_gauges(mut self, cache: crate::metrics::StoreGaugeCache) -> AppState {
        self.store_gauges = cache;
        self
    }

    /// With the queue mode's broker.
    pub fn with_queue(mut self, queue: Option<workers::queue::Queue>) -> AppState {
        self.queue = queue;
        self
    }

    /// Refuses a key creation past `keys.create_burst` / `create_per_s`
    /// from this client address (`peer`) or for this wallet, before
    /// anything reads the chain.
    pub fn limit_key_creation(
        &self,
        peer: Option<std::net::IpAddr>,
        wallet: &WalletAddress,
    ) -> Result<(), KeyCreationRefused> {
        let (by_address, by_wallet) = &*self.key_creation_limiters;
        let refused = match peer.map(|ip| by_address.check(ip)) {
            Some(Err(limited)) => Some((limited, "this address")),
            _ => by_wallet.take(*wallet).err().map(|l| (l, "this wallet")),
        };
        match refused {
            None => Ok(()),
            Some((limited, whose)) => Err(KeyCreationRefused::TooMany {
                whose,
                retry_after: limited.retry_after,
            }),
        }
    }

    /// What funds `wallet` on `chain` for a new key: its prepaid balance
    /// (`ledger`), or its token balance and allowance read from the chain
    /// now (`evm`; refused when the chain cannot be read).
    pub async fn funds_for(
        &self,
        wallet: &WalletAddress,
        chain: ChainId,
    ) -> Result<Funds, KeyCreationRefused> {
        let Some(client) = self.chain_clients.get(&chain) else {
            return Ok(Funds::Prepaid);
        };
        let address = workers::evm::Address::from(*wallet.as_bytes());
        let funds = client.funds_of(address).await.map_err(|error| {
            tracing::warn!(%chain, %error, "could not read a wallet's funds on chain");
            KeyCreationRefused::ChainUnavailable
        })?;
        Ok(Funds::OnChain {
            balance: workers::evm::ledger_amount(funds.balance),
            allowance: workers::evm::ledger_amount(funds.allowance),
        })
    }
}

/// Why a key (or a session, or a project budget) is not created before the
/// store is asked: the caller is over its creation rate, or the chain that
/// says what funds the wallet could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyCreationRefused {
    /// Past `keys.create_burst` / `create_per_s` for `whose` ("this
    /// address" or "this wallet"); a try after `retry_after` may pass.
    #[error("too many key creations from {whose}; retry shortly")]
    TooMany {
        whose: &'static str,
        retry_after: std::time::Duration,
    },
    /// The wallet's balance and allowance could not be read (logged).
    #[error("the chain could not be read to check the wallet's funds; try again")]
    ChainUnavailable,
}
