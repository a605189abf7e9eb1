//! The records the store reads and writes: keys, sessions, balances, charges.

use serde::Serialize;

use crate::{Amount, ChainId, KeyId, LeaseId, RequestId, SessionId, WalletAddress};

/// What a Compose key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// External apps: an independent budget.
    Api,
    /// First-party app sessions: works only while its session is the active one.
    Session,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Api => "api",
            Purpose::Session => "session",
        }
    }

    pub fn parse(text: &str) -> Option<Purpose> {
        match text {
            "api" => Some(Purpose::Api),
            "session" => Some(Purpose::Session),
            _ => None,
        }
    }
}

/// A key's stored status. Expiry is not stored: it follows from `expires_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    /// A session key whose session was replaced by a newer sign-in.
    Superseded,
    /// Reported only, never stored: `expires_at_ms` has passed.
    Expired,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Superseded => "superseded",
            KeyStatus::Expired => "expired",
        }
    }

    pub(crate) fn parse_stored(text: &str) -> Option<KeyStatus> {
        match text {
            "active" => Some(KeyStatus::Active),
            "revoked" => Some(KeyStatus::Revoked),
            "superseded" => Some(KeyStatus::Superseded),
            _ => None,
        }
    }
}

/// One Compose key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    /// Lower-case hex SHA-256 of the token; the token itself is never stored.
    pub token_sha256: String,
    pub wallet: WalletAddress,
    pub chain_id: ChainId,
    pub purpose: Purpose,
    pub session_id: Option<SessionId>,
    pub name: String,
    pub budget_limit: Amount,
    pub budget_used: Amount,
    pub status: KeyStatus,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl KeyRecord {
    /// What the key may still spend.
    pub fn budget_remaining(&self) -> Amount {
        self.budget_limit.saturating_sub(self.budget_used)
    }

    /// The status as of `now_ms`: a stored `active` key past its expiry is `expired`.
    pub fn status_at(&self, now_ms: i64) -> KeyStatus {
        match self.status {
            KeyStatus::Active if now_ms >= self.expires_at_ms => KeyStatus::Expired,
            status => status,
        }
    }
}

/// A key about to be created. The caller has validated every field.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: KeyId,
    pub token_sha256: String,
    pub wallet: WalletAddress,
    pub chain_id: ChainId,
    pub purpose: Purpose,
    pub session_id: Option<SessionId>,
    pub name: String,
    pub budget_limit: Amount,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// What funds the wallet: its prepaid balance, or its token balance
    /// and allowance read from the chain just before.
    pub funds: Funds,
}

/// What a key's budget is checked against when it is created (invariant 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Funds {
    /// `ledger` mode: the wallet's prepaid balance in the store.
    #[default]
    Prepaid,
    /// `evm` mode: the wallet's token balance and its allowance to the
    /// settlement contract, as read from the chain (clamped to
    /// [`Amount::MAX`]).
    OnChain { balance: Amount, allowance: Amount },
}

/// One SIWE session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: SessionId,
    pub wallet: WalletAddress,
    pub chain_id: ChainId,
    pub active: bool,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// A sign-in about to become the wallet+chain's active session.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    /// The SIWE nonce the signed message carried; consumed by this sign-in.
    pub nonce: String,
    /// Nonces issued before this instant are expired.
    pub nonce_issued_after_ms: i64,
    /// The session key issued with the session (purpose `session`).
    pub key: NewKey,
    /// Keys of the session being replaced that the gateway has fenced with
    /// no call in flight: their unspent budget is freed in the sign-in's own
    /// transaction. Every other superseded key stays committed until its
    /// calls drain (invariant 7).
    pub drained_keys: Vec<crate::KeyId>,
}

/// A wallet's prepaid funds on one chain, and what its keys have claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Funding {
    /// Credited minus debited minus charges not yet settled.
    pub available: Amount,
    /// What the wallet's active keys may still spend.
    pub committed: Amount,
    /// Charges recorded and not yet settled (owed, not yet paid).
    pub unsettled: Amount,
}

impl Funding {
    /// What a new key's budget may be at most.
    pub fn free(&self) -> Amount {
        self.available.saturating_sub(self.committed)
    }
}

/// What a sign-in made and what it superseded.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub session: SessionRecord,
    /// The new session's key.
    pub key: KeyRecord,
    /// Keys of the replaced session, now `superseded`: running actors must
    /// be told at once.
    pub superseded_keys: Vec<KeyId>,
}

/// A prepaid balance row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub credited: Amount,
    pub debited: Amount,
}

/// A priced call about to be written to the ledger.
#[derive(Debug, Clone)]
pub struct NewCharge {
    pub request_id: RequestId,
    pub key_id: KeyId,
    pub model: String,
    pub price_version: String,
    /// The usage billed: `amount` is exactly its price.
    pub input_tokens: u32,
    /// Of `input_tokens`, those read from the upstream's prompt cache and
    /// those written to it (`cached + cache_write ≤ input`), each at its
    /// own price (`ledger::pricing`).
    pub cached_input_tokens: u32,
    pub cache_write_tokens: u32,
    pub output_tokens: u32,
    pub amount: Amount,
    /// The usage the upstream reported (input, output); `None` when it
    /// reported none and the billed usage is the gateway's estimate.
    pub reported: Option<(u32, u32)>,
    /// Of the reported input, the cached and cache-written tokens; `None`
    /// exactly when `reported` is.
    pub reported_cache: Option<(u32, u32)>,
    pub created_at_ms: i64,
    /// The budget lease the call was spent from (`None`: no lease; the
    /// charge must then fit what no lease of the key covers).
    pub lease: Option<LeaseId>,
    /// The caller's own `x-request-id`, when well-formed (a label that
    /// travels with the charge; never its identity).
    pub client_request_id: Option<String>,
}

/// What writing a charge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeWrite {
    /// The charge is new and the key's `budget_used` grew by its amount.
    Recorded,
    /// A charge with this request id already existed; nothing changed.
    Duplicate,
}

/// What writing one charge of a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// New; the key's `budget_used` grew by its amount.
    Recorded,
    /// A charge with this request id already existed; nothing changed.
    Duplicate,
    /// It would have taken the key past its limit; nothing changed.
    OverBudget,
    /// An answered call's charge past its key's limit
    /// ([`crate::store::Store::record_answered_charges`]): recorded all the
    /// same, flagged `overdrawn`, and counted in the key's
    /// `overdrawn_atomic` instead of its `budget_used`.
    Overdrawn,
    /// No such key; nothing changed.
    UnknownKey,
}

/// One charge as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRecord {
    pub request_id: RequestId,
    pub key_id: KeyId,
    pub model: String,
    pub price_version: String,
    /// The usage billed.
    pub input_tokens: u32,
    /// Of `input_tokens`, the cached and the cache-written ones.
    pub cached_input_tokens: u32,
    pub cache_write_tokens: u32,
    pub output_tokens: u32,
    pub amount: Amount,
    /// The usage the upstream reported; `None`: the charge is an estimate.
    pub reported: Option<(u32, u32)>,
    /// Of the reported input, the cached and cache-written tokens; `None`
    /// for an estimate, and for charges recorded before migration 0012.
    pub reported_cache: Option<(u32, u32)>,
    pub status: String,
    pub batch_id: Option<String>,
    pub tx_hash: Option<String>,
    pub created_at_ms: i64,
    pub client_request_id: Option<String>,
}

/// A Studio key's type (Composable Studio `ApiKeyTypes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKeyType {
    /// Secret key: server side only; its value can be read back (`withValue`).
    Sk,
    /// Public key: usable from browsers; always `executor`; shown once.
    Pk,
}

impl ApiKeyType {
    /// The role a key of this type acts with when its record asks for
    /// `role`: a public key is always an executor (a CHECK in the store says
    /// so too); a secret key has the role it was given.
    pub fn acting_role(self, role: Role) -> Role {
        match self {
            ApiKeyType::Pk => Role::Executor,
            ApiKeyType::Sk => role,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiKeyType::Sk => "sk",
            ApiKeyType::Pk => "pk",
        }
    }

    pub fn parse(text: &str) -> Option<ApiKeyType> {
        match text {
            "sk" => Some(ApiKeyType::Sk),
            "pk" => Some(ApiKeyType::Pk),
            _ => None,
        }
    }
}

/// A Studio project role, weakest first: the order is the privilege order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads only.
    Reader,
    /// Reads and executes (paid calls). Every public key has this role.
    Executor,
    /// Executes and mints public keys.
    Application,
    /// Manages keys, but deletes nothing.
    Developer,
    /// Anything in its project.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Reader,
        Role::Executor,
        Role::Application,
        Role::Developer,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Executor => "executor",
            Role::Application => "application",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// One Studio account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub id: crate::AccountId,
    pub name: String,
    /// The wallet (on `chain_id`) that funds the account's project budgets.
    pub funding: Option<(WalletAddress, ChainId)>,
    pub created_at_ms: i64,
}

/// One Studio project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    pub id: crate::ProjectId,
    pub account_id: crate::AccountId,
    pub name: String,
    /// The Compose key row that holds the project's USDC budget, if set.
    pub budget_key_id: Option<KeyId>,
    pub created_at_ms: i64,
}

/// One Studio API key as stored: never its value in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: crate::ApiKeyId,
    pub account_id: crate::AccountId,
    pub project_id: crate::ProjectId,
    pub name: String,
    pub key_type: ApiKeyType,
    pub role: Role,
    pub enabled: bool,
    /// Keyed hash of the value, to find a presented key.
    pub value_hash: String,
    /// The sealed value (`sk` only).
    pub value_sealed: Option<String>,
    pub masked_value: String,
    /// `user:<id>` or `apikey:<id>`.
    pub created_by: String,
    pub updated_by: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// While disabled: the highest role that disabled it, the least role
    /// that may enable it again (invariant 9).
    pub disabled_by_role: Option<Role>,
    /// While it has an expiry: the highest role that set or shortened it,
    /// the least role that may lengthen or remove it (invariant 9).
    pub expiry_set_by_role: Option<Role>,
}

impl ApiKeyRecord {
    /// Whether the key may be used at `now_ms`: enabled and not expired.
    pub fn usable_at(&self, now_ms: i64) -> bool {
        self.enabled && self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}

/// A change to a Studio key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ApiKeyUpdate {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub enabled: Option<bool>,
    /// `Some(None)` clears the expiry.
    pub expires_at_ms: Option<Option<i64>>,
    /// Who restricted the key, as [`ApiKeyRecord::disabled_by_role`];
    /// `Some(None)` clears it. Set by whoever decides the change (the HTTP
    /// API), along with `enabled`.
    pub disabled_by_role: Option<Option<Role>>,
    /// As [`ApiKeyRecord::expiry_set_by_role`]; `Some(None)` clears it.
    pub expiry_set_by_role: Option<Option<Role>>,
}
