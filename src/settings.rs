//! Configuration: built-in defaults (`config/default.toml`, compiled in), an
//! optional `--config FILE`, then `TOLLGATE__SECTION__KEY` environment
//! variables. Unknown keys and bad values stop start-up with an error that
//! names the setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use ledger::ChainId;
use serde::Deserialize;

/// The defaults, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: String,
    pub workers: usize,
    pub json_body_max_bytes: usize,
    /// A request body must arrive whole within this long (408 otherwise).
    pub body_timeout_ms: u64,
    /// On shutdown, how long requests and calls in flight may take to
    /// finish (each stage), before the store closes.
    pub shutdown_timeout_ms: u64,
    /// A listener of its own for `/metrics`, `/healthz` and `/readyz`
    /// (`ADDRESS:PORT`); empty: `/metrics` is on `bind`.
    pub admin_bind: String,
    /// The bearer token `/metrics` asks for (compared in constant time;
    /// never logged). Unset: `/metrics` is open to whoever reaches it.
    #[serde(default)]
    pub metrics_token: Option<MetricsToken>,
    /// How often the store's gauges (charges and batches by status, paused
    /// chains) are read in the background; a scrape serves the latest read.
    pub metrics_refresh_ms: u64,
}

/// `http.metrics_token`: its `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct MetricsToken(pub String);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(<redacted>)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    Text,
    /// For log pipelines.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub url: QueueUrl,
    /// The queue paid calls' `CallCompleted` events go to (with RabbitMQ;
    /// its dead letters are the stream `NAME.dead-letters`).
    pub calls_queue: String,
    /// Messages one consumer holds unacknowledged.
    pub prefetch: u16,
    /// Deliveries before a message is dead-lettered.
    pub delivery_limit: u32,
    /// How long a paid call's publish waits for the broker (reconnecting
    /// included) before the call fails with 503 and nothing charged.
    pub publish_timeout_ms: u64,
}

/// Where completed calls are queued: in process, or a RabbitMQ broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum QueueUrl {
    /// `memory://`: the embedded default.
    Memory,
    /// `amqp://user:pass@host:port/vhost`.
    Amqp(String),
}

impl TryFrom<String> for QueueUrl {
    type Error = String;

    fn try_from(url: String) -> Result<QueueUrl, String> {
        if url == "memory://" {
            Ok(QueueUrl::Memory)
        } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
            Ok(QueueUrl::Amqp(url))
        } else {
            Err("queue.url must be memory:// or amqp://…".to_owned())
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The server's own domains (`host[:port]`): a SIWE message must name
    /// one, and its URI must be on one. Empty: the loopback names of the
    /// bound address (a non-loopback bind must configure them). From the
    /// environment as a comma-separated list.
    #[serde(deserialize_with = "list_or_csv")]
    pub siwe_domains: Vec<String>,
    /// Nonce requests and sign-ins per client address: a burst, then a
    /// sustained rate (429 past it).
    pub sign_in_burst: u32,
    pub sign_in_per_s: u32,
    pub signing_key_file: String,
    /// Hex seed; only ever from the environment or a private config file.
    #[serde(default)]
    pub signing_key: Option<String>,
    pub nonce_ttl_ms: i64,
    pub siwe_issued_at_max_age_ms: i64,
    pub clock_skew_ms: i64,
    pub session_ttl_ms: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub default_ttl_ms: i64,
    pub max_ttl_ms: i64,
    pub budget_max_atomic: u64,
    pub max_active_per_wallet: u32,
    pub name_max_chars: usize,
    /// Key creations (`POST /api/keys`) per client address and, apart, per
    /// wallet: a burst, then a sustained rate (429 past it, before the
    /// funding check reads the chain).
    pub create_burst: u32,
    pub create_per_s: u32,
}

/// The paid `/external/v1` path: key actors, upstream calls, bodies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    pub chat_body_max_bytes: usize,
    pub in_flight_per_key_max: u32,
    pub loaded_keys_max: usize,
    pub key_idle_ms: i64,
    pub upstream_connect_timeout_ms: u64,
    pub upstream_timeout_ms: u64,
    pub stream_idle_timeout_ms: u64,
    pub stream_max_ms: u64,
    pub hold_slack_ms: i64,
    /// Actor threads; 0 means one per core.
    pub actor_threads: usize,
}

/// The worker pools (docs/queue.md): with RabbitMQ, what records paid calls'
/// charges from the queue.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// `serve` runs the ledger pools itself; `false` leaves them to
    /// `tollgate worker` processes.
    pub in_process: bool,
    /// Ledger pools (consumers) per process.
    pub ledger_pools: usize,
}

/// Budget leases (docs/leases.md): what each gateway node takes of a key's
/// budget at a time, and how long a silent node's leases last.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    /// A node that stopped renewing its leases (a crash) for this long has
    /// them taken back by the others.
    pub grace_ms: i64,
    /// A top-up takes this many of the calling request's maximum cost, so a
    /// hot key costs the store one update per this many calls.
    pub chunk_calls: u64,
    /// How often a node looks for keys it leases that were revoked or
    /// superseded through another node.
    pub revocation_poll_ms: u64,
}

impl GatewaySettings {
    /// The longest a hold can live: the longest call (a whole stream or a
    /// non-streamed upstream call) plus the slack. A stopped key's unspent
    /// budget stays committed this long unless its calls are seen to drain.
    pub fn hold_max_ms(&self) -> i64 {
        let longest = self.stream_max_ms.max(self.upstream_timeout_ms);
        i64::try_from(longest)
            .unwrap_or(i64::MAX)
            .saturating_add(self.hold_slack_ms.max(0))
    }
}

/// Studio API keys (`/api/v1/apikeys`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudioSettings {
    /// 32-byte master key (hex) sealing `sk` values and keying lookups,
    /// created on first start when missing.
    pub secrets_key_file: String,
    /// Hex master key; only ever from the environment or a private file.
    #[serde(default)]
    pub secrets_key: Option<String>,
    /// How long a JWT from `/apikeys/{id}/token` lives (never past its key).
    pub jwt_ttl_ms: i64,
    /// `ttl` of `GET /apikeys/pk` when none is given, and the most allowed.
    pub pk_ttl_default_s: i64,
    pub pk_ttl_max_s: i64,
    /// Keys one project may hold.
    pub keys_per_project_max: u32,
    pub name_max_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementSettings {
    pub mode: SettlementMode,
    /// How often recorded charges are settled (each pass settles all of
    /// them, in batches).
    pub interval_ms: u64,
    /// The most charges one batch (one store transaction) settles.
    pub batch_max_charges: i64,
    /// `evm`: the longest a held-back payer waits between two checks of its
    /// funds (the wait doubles from `interval_ms` up to this).
    pub held_back_recheck_max_ms: i64,
    /// `evm`: `tollgate reconcile` fails when a payer has been held back
    /// longer than this (money was served that the chain may never collect).
    pub held_back_alert_ms: i64,
    /// `evm`: the most a payer may owe unsettled plus hold in leases at once
    /// (0: no bound beyond its funds on chain).
    pub payer_unsettled_max_atomic: i64,
}

impl SettlementSettings {
    /// [`SettlementSettings::payer_unsettled_max_atomic`] as an amount
    /// (validated at load: never negative).
    pub fn payer_unsettled_max(&self) -> ledger::Amount {
        u64::try_from(self.payer_unsettled_max_atomic)
            .ok()
            .and_then(ledger::Amount::from_atomic)
            .unwrap_or(ledger::Amount::ZERO)
    }
}

/// How charges settle (docs/settlement.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettlementMode {
    /// Prepaid balances credited by an operator.
    Ledger,
    /// The settlement contract on each key's chain.
    Evm,
}

/// One `[chains.ID]` table. The `evm` mode needs everything but `name`
/// set for each chain (`tollgate devnet` writes such a table).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSettings {
    pub name: String,
    /// The chain's JSON-RPC endpoint (http/https).
    #[serde(default)]
    pub rpc_url: Option<String>,
    /// The USDC token's address.
    #[serde(default)]
    pub usdc: Option<String>,
    /// The settlement contract (`workers/contracts/TollgateSettlement.sol`).
    #[serde(default)]
    pub settlement_contract: Option<String>,
    /// Where settled USDC goes; must equal the contract's `treasury`.
    #[serde(default)]
    pub treasury: Option<String>,
    /// The operator's private key (hex): only from the environment or a
    /// private file; or `operator_key_file` naming a file that holds it.
    #[serde(default)]
    pub operator_key: Option<String>,
    #[serde(default)]
    pub operator_key_file: Option<String>,
    /// Blocks a receipt needs (its own included) before a batch counts as
    /// settled.
    #[serde(default = "one_u64")]
    pub confirmations: u64,
    /// Blocks a receipt needs (its own included) before its batch is final:
    /// until then the batch is `confirming`, its charges `batched`, and a
    /// reorg that loses the receipt sends the batch again. Unset: the same
    /// as `confirmations` (the default chain, Avalanche, is final once a
    /// block is accepted; set it on chains that reorganise).
    #[serde(default)]
    pub finality_confirmations: Option<u64>,
    /// A batch closes with this many payers …
    #[serde(default = "batch_max_payers_default")]
    pub batch_max_payers: usize,
    /// … or when its oldest charge is this old.
    #[serde(default = "batch_max_age_ms_default")]
    pub batch_max_age_ms: i64,
    /// A settlement transaction not mined in this long is replaced at the
    /// same nonce with higher fees.
    #[serde(default = "replace_after_ms_default")]
    pub replace_after_ms: i64,
    /// Every RPC call is bounded by this.
    #[serde(default = "rpc_timeout_ms_default")]
    pub rpc_timeout_ms: u64,
    /// The block settlement logs are searched from (the contract's
    /// deployment block).
    #[serde(default)]
    pub from_block: u64,
}

impl std::fmt::Debug for ChainSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainSettings")
            .field("name", &self.name)
            .field("rpc_url", &self.rpc_url)
            .field("usdc", &self.usdc)
            .field("settlement_contract", &self.settlement_contract)
            .field("treasury", &self.treasury)
            .field(
                "operator_key",
                &self.operator_key.as_ref().map(|_| "<secret>"),
            )
            .field("operator_key_file", &self.operator_key_file)
            .finish_non_exhaustive()
    }
}

fn one_u64() -> u64 {
    1
}
fn batch_max_payers_default() -> usize {
    100
}
fn batch_max_age_ms_default() -> i64 {
    10_000
}
fn replace_after_ms_default() -> i64 {
    30_000
}
fn rpc_timeout_ms_default() -> u64 {
    10_000
}

impl ChainSettings {
    /// The chain client's set-up for chain `id` in the `evm` mode; an error
    /// names the first missing or bad setting.
    pub fn evm_config(&self, id: ChainId) -> Result<workers::evm::ChainConfig, SettingsError> {
        let setting = |name: &str| format!("chains.{}.{name}", id.0);
        let required = |value: &Option<String>, name: &str| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| invalid(setting(name), "must be set in the \"evm\" settlement mode"))
        };
        let address = |value: &Option<String>, name: &str| {
            let text = required(value, name)?;
            text.parse::<workers::evm::Address>()
                .map_err(|_| invalid(setting(name), format!("is not an address: {text:?}")))
        };
        let rpc_url = required(&self.rpc_url, "rpc_url")?;
        if !(rpc_url.starts_with("http://") || rpc_url.starts_with("https://")) {
            return Err(invalid(setting("rpc_url"), "must be an http(s):// URL"));
        }
        // Only processes that settle need the key (checked where settlers
        // start); a gateway reads balances and allowances without it.
        let operator_key = match (&self.operator_key, &self.operator_key_file) {
            (Some(key), _) if !key.trim().is_empty() => Some(key.trim().to_owned()),
            (_, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| invalid(setting("operator_key_file"), format!("{file}: {e}")))?
                    .trim()
                    .to_owned(),
            ),
            _ => None,
        };
        within(&setting("confirmations"), self.confirmations, 1, 1_000)?;
        let finality_confirmations = self.finality_confirmations.unwrap_or(self.confirmations);
        within(
            &setting("finality_confirmations"),
            finality_confirmations,
            self.confirmations,
            10_000,
        )?;
        within(
            &setting("batch_max_payers"),
            self.batch_max_payers,
            1,
            ledger::store::chain::EVM_BATCH_PAYERS_MAX,
        )?;
        within(
            &setting("batch_max_age_ms"),
            self.batch_max_age_ms,
            0,
            86_400_000,
        )?;
        within(
            &setting("replace_after_ms"),
            self.replace_after_ms,
            100,
            3_600_000,
        )?;
        within(
            &setting("rpc_timeout_ms"),
            self.rpc_timeout_ms,
            100,
            300_000,
        )?;
        let config = workers::evm::ChainConfig {
            chain_id: id.0,
            rpc_url,
            usdc: address(&self.usdc, "usdc")?,
            settlement_contract: address(&self.settlement_contract, "settlement_contract")?,
            treasury: address(&self.treasury, "treasury")?,
            operator_key,
            confirmations: self.confirmations,
            finality_confirmations,
            rpc_timeout: std::time::Duration::from_millis(self.rpc_timeout_ms),
            from_block: self.from_block,
        };
        // The key must be a key (checked here, so a typo stops start-up).
        workers::evm::ChainClient::new(config.clone())
            .map_err(|e| invalid(setting("operator_key"), e.to_string()))?;
        Ok(config)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// "echo" (built in) or an OpenAI-compatible base URL (…/v1).
    pub upstream: UpstreamSetting,
    /// The model name sent upstream; empty means this model's own name.
    #[serde(default)]
    pub upstream_model: String,
    /// The upstream's API key; only ever from the environment or a private
    /// config file (TOLLGATE__MODELS__NAME__API_KEY).
    #[serde(default)]
    pub api_key: Option<String>,
    pub price_version: String,
    pub input_atomic_per_million: u64,
    pub output_atomic_per_million: u64,
    #[serde(default)]
    pub request_fee_atomic: u64,
    /// The least any call costs (at least 1): no call is free, so a budget
    /// bounds the charges it can write.
    #[serde(default = "one")]
    pub min_charge_atomic: u64,
    /// `max_tokens` when a request names none, and the most it may name.
    pub max_output_tokens: u64,
    /// Echo only: a pause between streamed words (0: none).
    #[serde(default)]
    pub echo_word_delay_ms: u64,
    /// Request fields forwarded to this model beyond the standard ones
    /// (`gateway::request::FORWARDED_FIELDS`): only fields whose cost the
    /// model's prices cover. Any other field is refused (400).
    #[serde(default, deserialize_with = "list_or_csv")]
    pub forward_fields: Vec<String>,
    /// The request fields that carry the output bound upstream; the bound
    /// the hold affords goes in each. Default both, so no upstream can be
    /// asked for more output than the hold pays, whichever it honours.
    #[serde(default = "both_bounds", deserialize_with = "list_or_csv")]
    pub max_tokens_fields: Vec<String>,
    /// A non-streamed answer without `usage` is an upstream error (502,
    /// nothing charged). A stream without usage is charged an estimate of
    /// what it delivered either way, marked as estimated in the ledger.
    #[serde(default = "yes")]
    pub require_usage: bool,
}

impl ModelSettings {
    /// The model's price, as the gateway quotes and the pools re-price.
    pub fn price(&self) -> ledger::pricing::Price {
        ledger::pricing::Price {
            version: self.price_version.clone(),
            input_atomic_per_million: self.input_atomic_per_million,
            output_atomic_per_million: self.output_atomic_per_million,
            request_fee_atomic: self.request_fee_atomic,
            min_charge_atomic: self.min_charge_atomic,
        }
    }
}

/// A model's upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum UpstreamSetting {
    /// The built-in deterministic model.
    Echo,
    /// An OpenAI-compatible base URL (`…/v1`, no trailing slash).
    OpenAi(String),
}

impl TryFrom<String> for UpstreamSetting {
    type Error = String;

    fn try_from(upstream: String) -> Result<UpstreamSetting, String> {
        if upstream == "echo" {
            Ok(UpstreamSetting::Echo)
        } else if upstream.starts_with("http://") || upstream.starts_with("https://") {
            Ok(UpstreamSetting::OpenAi(
                upstream.trim_end_matches('/').to_owned(),
            ))
        } else {
            Err(format!(
                "a model's upstream must be \"echo\" or an http(s):// base URL, got {upstream:?}"
            ))
        }
    }
}

/// A `[chains.ID]` table's name: a chain id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct ChainKey(pub ChainId);

impl TryFrom<String> for ChainKey {
    type Error = String;

    fn try_from(id: String) -> Result<ChainKey, String> {
        match id.parse::<u64>() {
            Ok(n) if n > 0 && i64::try_from(n).is_ok() => Ok(ChainKey(ChainId(n))),
            _ => Err(format!(
                "chains.{id}: the table name must be a chain id (a positive integer)"
            )),
        }
    }
}

fn both_bounds() -> Vec<String> {
    vec!["max_tokens".into(), "max_completion_tokens".into()]
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
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

impl HttpSettings {
    /// Checks the section; answers the address to bind.
    fn validate(&self) -> Result<SocketAddr, SettingsError> {
        let bind = self.bind.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "http.bind",
                format!("must be ADDRESS:PORT, got {:?}", self.bind),
            )
        })?;
        within(
            "http.json_body_max_bytes",
            self.json_body_max_bytes,
            1,
            16 * 1024 * 1024,
        )?;
        within("http.body_timeout_ms", self.body_timeout_ms, 1, 600_000)?;
        within(
            "http.shutdown_timeout_ms",
            self.shutdown_timeout_ms,
            1,
            3_600_000,
        )?;
        if !self.admin_bind.is_empty() && self.admin_bind.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.admin_bind",
                format!("must be ADDRESS:PORT or empty, got {:?}", self.admin_bind),
            ));
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.0.len() < 16) {
            return Err(invalid(
                "http.metrics_token",
                "must be at least 16 characters when set",
            ));
        }
        within(
            "http.metrics_refresh_ms",
            self.metrics_refresh_ms,
            100,
            3_600_000,
        )?;
        Ok(bind)
    }
}

impl StoreSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if ledger::store::Backend::of_url(&self.url).is_none() {
            return Err(invalid(
                "store.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        within("store.max_connections", self.max_connections, 1, 1_000)
    }
}

impl QueueSettings {
    /// The queue's options, as `workers::queue` takes them.
    pub fn options(&self) -> workers::queue::QueueOptions {
        workers::queue::QueueOptions {
            prefetch: self.prefetch,
            delivery_limit: self.delivery_limit,
            publish_timeout: std::time::Duration::from_millis(self.publish_timeout_ms),
        }
    }

    fn validate(&self) -> Result<(), SettingsError> {
        within("queue.prefetch", self.prefetch, 1, 10_000)?;
        within("queue.delivery_limit", self.delivery_limit, 1, 100)?;
        within(
            "queue.publish_timeout_ms",
            self.publish_timeout_ms,
            10,
            600_000,
        )?;
        let name_ok = !self.calls_queue.is_empty()
            && self.calls_queue.len() <= 200
            && self
                .calls_queue
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            return Err(invalid(
                "queue.calls_queue",
                "must be 1 to 200 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        Ok(())
    }
}

impl AuthSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        for (name, value) in [
            ("auth.nonce_ttl_ms", self.nonce_ttl_ms),
            (
                "auth.siwe_issued_at_max_age_ms",
                self.siwe_issued_at_max_age_ms,
            ),
            ("auth.clock_skew_ms", self.clock_skew_ms),
            ("auth.session_ttl_ms", self.session_ttl_ms),
        ] {
            within(name, value, 1, i64::MAX)?;
        }
        within("auth.sign_in_burst", self.sign_in_burst, 1, u32::MAX)?;
        within("auth.sign_in_per_s", self.sign_in_per_s, 1, u32::MAX)
    }
}

impl KeySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        within("keys.max_ttl_ms", self.max_ttl_ms, 1, i64::MAX)?;
        within(
            "keys.default_ttl_ms",
            self.default_ttl_ms,
            1,
            self.max_ttl_ms,
        )?;
        if ledger::Amount::from_atomic(self.budget_max_atomic).is_none() {
            return Err(invalid(
                "keys.budget_max_atomic",
                "is beyond the largest storable amount",
            ));
        }
        within("keys.create_burst", self.create_burst, 1, 1_000_000)?;
        within("keys.create_per_s", self.create_per_s, 1, 1_000_000)?;
        within(
            "keys.max_active_per_wallet",
            self.max_active_per_wallet,
            1,
            u32::MAX,
        )
    }
}

impl StudioSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        within("studio.jwt_ttl_ms", self.jwt_ttl_ms, 1, i64::MAX)?;
        within("studio.pk_ttl_max_s", self.pk_ttl_max_s, 1, 365 * 86_400)?;
        within(
            "studio.pk_ttl_default_s",
            self.pk_ttl_default_s,
            1,
            self.pk_ttl_max_s,
        )?;
        within(
            "studio.keys_per_project_max",
            self.keys_per_project_max,
            1,
            u32::MAX,
        )?;
        within("studio.name_max_chars", self.name_max_chars, 1, usize::MAX)
    }
}

impl SettlementSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        within("settlement.interval_ms", self.interval_ms, 10, 3_600_000)?;
        within(
            "settlement.batch_max_charges",
            self.batch_max_charges,
            1,
            ledger::store::settlement::LEDGER_BATCH_MAX,
        )?;
        within(
            "settlement.held_back_recheck_max_ms",
            self.held_back_recheck_max_ms,
            10,
            86_400_000,
        )?;
        within(
            "settlement.held_back_alert_ms",
            self.held_back_alert_ms,
            0,
            i64::MAX / 2,
        )?;
        within(
            "settlement.payer_unsettled_max_atomic",
            self.payer_unsettled_max_atomic,
            0,
            i64::MAX,
        )?;
        Ok(())
    }
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
        self.validate_gateway()?;
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

    fn validate_gateway(&self) -> Result<(), SettingsError> {
        within("workers.ledger_pools", self.workers.ledger_pools, 1, 64)?;
        let l = &self.leases;
        within("leases.grace_ms", l.grace_ms, 1_000, 86_400_000)?;
        within("leases.chunk_calls", l.chunk_calls, 1, 1_000_000)?;
        within(
            "leases.revocation_poll_ms",
            l.revocation_poll_ms,
            10,
            60_000,
        )?;
        let g = &self.gateway;
        if g.chat_body_max_bytes == 0 || g.chat_body_max_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "gateway.chat_body_max_bytes",
                "must be between 1 and 67108864",
            ));
        }
        if g.in_flight_per_key_max == 0 {
            return Err(invalid(
                "gateway.in_flight_per_key_max",
                "must be at least 1",
            ));
        }
        if g.loaded_keys_max == 0 {
            return Err(invalid("gateway.loaded_keys_max", "must be at least 1"));
        }
        for (name, value) in [
            ("gateway.key_idle_ms", g.key_idle_ms),
            ("gateway.hold_slack_ms", g.hold_slack_ms),
        ] {
            if value <= 0 {
                return Err(invalid(name, "must be a positive number of milliseconds"));
            }
        }
        for (name, value) in [
            (
                "gateway.upstream_connect_timeout_ms",
                g.upstream_connect_timeout_ms,
            ),
            ("gateway.upstream_timeout_ms", g.upstream_timeout_ms),
            ("gateway.stream_idle_timeout_ms", g.stream_idle_timeout_ms),
            ("gateway.stream_max_ms", g.stream_max_ms),
        ] {
            if value == 0 || value > 86_400_000 {
                return Err(invalid(name, "must be between 1 and 86400000 milliseconds"));
            }
        }
        if self.models.is_empty() {
            return Err(invalid("models", "must configure at least one model"));
        }
        for (name, model) in &self.models {
            let setting = |field: &str| format!("models.{name}.{field}");
            if model.max_output_tokens == 0 || model.max_output_tokens > 10_000_000 {
                return Err(invalid(
                    setting("max_output_tokens"),
                    "must be between 1 and 10000000",
                ));
            }
            if model.price_version.is_empty() {
                return Err(invalid(setting("price_version"), "must not be empty"));
            }
            if model.max_tokens_fields.is_empty()
                || model
                    .max_tokens_fields
                    .iter()
                    .any(|f| f != "max_tokens" && f != "max_completion_tokens")
            {
                return Err(invalid(
                    setting("max_tokens_fields"),
                    "must name max_tokens and/or max_completion_tokens",
                ));
            }
            if model.min_charge_atomic == 0
                || ledger::Amount::from_atomic(model.min_charge_atomic).is_none()
            {
                return Err(invalid(
                    setting("min_charge_atomic"),
                    "must be at least 1 (no call is free) and storable",
                ));
            }
            if ledger::Amount::from_atomic(model.request_fee_atomic).is_none() {
                return Err(invalid(
                    setting("request_fee_atomic"),
                    "is beyond the largest storable amount",
                ));
            }
        }
        Ok(())
    }

    /// Each chain's client set-up, in the `evm` mode (empty in `ledger`).
    pub fn evm_chains(&self) -> Result<Vec<workers::evm::ChainConfig>, SettingsError> {
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
            UpstreamSetting::OpenAi("https://api.example.com/v1".into())
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
