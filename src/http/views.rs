//! The views of Compose keys, their charges and Studio keys (with the
//! Studio enums a request names too) that more than one file uses: budget state, never token material (a token
//! only once, at creation). Each is the `Serialize` type the handler writes
//! and the `ToSchema` type the OpenAPI document names.

use ledger::model::{ApiKeyRecord, ApiKeyType, ChargeRecord, KeyRecord, KeyStatus, Purpose, Role};
use ledger::store::payers::HeldBackPayer;
use ledger::time::now_ms;
use ledger::{AccountId, Amount, ApiKeyId, ChainId, KeyId, ProjectId, RequestId, WalletAddress};
use serde::Serialize;
use utoipa::ToSchema;

/// A Compose key: its budget state, never its token (except at creation).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    #[serde(rename = "keyId")]
    #[schema(value_type = String)]
    pub key_id: KeyId,
    pub name: String,
    /// `api` or `session`.
    #[schema(value_type = String)]
    pub purpose: Purpose,
    #[serde(rename = "chainId")]
    #[schema(value_type = u64)]
    pub chain_id: ChainId,
    /// The wallet that owns the key.
    #[schema(value_type = String)]
    pub owner: WalletAddress,
    #[serde(rename = "budgetLimit")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    pub budget_limit: Amount,
    #[serde(rename = "budgetUsed")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    pub budget_used: Amount,
    #[serde(rename = "budgetRemaining")]
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    pub budget_remaining: Amount,
    /// `active`, `revoked`, `superseded` or `expired`.
    #[schema(value_type = String)]
    pub status: KeyStatus,
    #[serde(rename = "createdAt")]
    pub created_at: i64,
    #[serde(rename = "expiresAt")]
    pub expires_at: i64,
    #[serde(rename = "revokedAt")]
    pub revoked_at: Option<i64>,
    /// Present (on a key read by id) when settlement holds the key's payer
    /// back: its calls answer 402 `payer_held_back` until its charges settle.
    #[serde(rename = "payerHeldBack", skip_serializing_if = "Option::is_none")]
    pub payer_held_back: Option<PayerHeldBack>,
}

impl KeyView {
    pub fn of(key: &KeyRecord) -> KeyView {
        KeyView {
            key_id: key.id.clone(),
            name: key.name.clone(),
            purpose: key.purpose,
            chain_id: key.chain_id,
            owner: key.wallet,
            budget_limit: key.budget_limit,
            budget_used: key.budget_used,
            budget_remaining: key.budget_remaining(),
            status: key.status_at(now_ms()),
            created_at: key.created_at_ms,
            expires_at: key.expires_at_ms,
            revoked_at: key.revoked_at_ms,
            payer_held_back: None,
        }
    }
}

/// Why settlement holds a payer back: its funds on chain cannot pay what it
/// owes.
#[derive(Debug, Serialize, ToSchema)]
pub struct PayerHeldBack {
    /// Always `payer_held_back`.
    pub reason: &'static str,
    /// `balance` or `allowance`: the smaller of the two.
    pub short: &'static str,
    /// What its pending charges add up to.
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    pub owed: Amount,
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    pub balance: Amount,
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    pub allowance: Amount,
    /// How much more it needs.
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    pub shortfall: Amount,
    /// When it was held back (ms since epoch).
    pub since: i64,
}

impl PayerHeldBack {
    pub fn of(held: &HeldBackPayer) -> PayerHeldBack {
        PayerHeldBack {
            reason: "payer_held_back",
            short: held.short(),
            owed: held.owed,
            balance: held.balance,
            allowance: held.allowance,
            shortfall: held.shortfall(),
            since: held.since_ms,
        }
    }
}

/// A key just created: its view plus its token, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[schema(inline)]
    #[serde(flatten)]
    pub key: KeyView,
    /// The bearer token (`compose-…`).
    pub token: String,
}

impl CreatedKey {
    pub fn of(key: &KeyRecord, token: &str) -> CreatedKey {
        CreatedKey {
            key: KeyView::of(key),
            token: token.to_owned(),
        }
    }
}

/// `GET /api/keys`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

/// One recorded charge of a key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargeView {
    #[serde(rename = "requestId")]
    #[schema(value_type = String)]
    pub request_id: RequestId,
    pub model: String,
    #[serde(rename = "priceVersion")]
    pub price_version: String,
    #[serde(rename = "inputTokens")]
    #[schema(value_type = u64)]
    pub input_tokens: u32,
    /// Of `inputTokens`, those read from the upstream's prompt cache.
    #[serde(rename = "cachedInputTokens")]
    #[schema(value_type = u64)]
    pub cached_input_tokens: u32,
    /// Of `inputTokens`, those written to the upstream's prompt cache.
    #[serde(rename = "cacheWriteTokens")]
    #[schema(value_type = u64)]
    pub cache_write_tokens: u32,
    #[serde(rename = "outputTokens")]
    #[schema(value_type = u64)]
    pub output_tokens: u32,
    #[schema(value_type = String, pattern = r"^[0-9]{1,39}$")]
    pub amount: Amount,
    /// What the upstream reported; an estimate when it reported nothing.
    #[serde(rename = "reportedInputTokens")]
    #[schema(value_type = Option<u64>)]
    pub reported_input_tokens: Option<u32>,
    #[serde(rename = "reportedOutputTokens")]
    #[schema(value_type = Option<u64>)]
    pub reported_output_tokens: Option<u32>,
    /// Of the reported input, the cached and the cache-written tokens.
    #[serde(rename = "reportedCachedInputTokens")]
    #[schema(value_type = Option<u64>)]
    pub reported_cached_input_tokens: Option<u32>,
    #[serde(rename = "reportedCacheWriteTokens")]
    #[schema(value_type = Option<u64>)]
    pub reported_cache_write_tokens: Option<u32>,
    /// True when the upstream reported no usage and the tokens are estimated.
    pub estimated: bool,
    /// `pending`, `batched`, `settled` or `failed`.
    pub status: String,
    #[serde(rename = "batchId")]
    pub batch_id: Option<String>,
    /// The settlement transaction (`evm` mode).
    #[serde(rename = "txHash")]
    pub tx_hash: Option<String>,
    #[serde(rename = "createdAt")]
    pub created_at: i64,
    /// The caller's own `x-request-id` of the call, when it sent one.
    #[serde(rename = "clientRequestId")]
    pub client_request_id: Option<String>,
}

impl ChargeView {
    pub fn of(charge: &ChargeRecord) -> ChargeView {
        ChargeView {
            request_id: charge.request_id.clone(),
            model: charge.model.clone(),
            price_version: charge.price_version.clone(),
            input_tokens: charge.input_tokens,
            cached_input_tokens: charge.cached_input_tokens,
            cache_write_tokens: charge.cache_write_tokens,
            output_tokens: charge.output_tokens,
            amount: charge.amount,
            reported_input_tokens: charge.reported.map(|(input, _)| input),
            reported_output_tokens: charge.reported.map(|(_, output)| output),
            reported_cached_input_tokens: charge.reported_cache.map(|(cached, _)| cached),
            reported_cache_write_tokens: charge.reported_cache.map(|(_, write)| write),
            estimated: charge.reported.is_none(),
            status: charge.status.clone(),
            batch_id: charge.batch_id.clone(),
            tx_hash: charge.tx_hash.clone(),
            created_at: charge.created_at_ms,
            client_request_id: charge.client_request_id.clone(),
        }
    }
}

/// `GET /api/keys/{key_id}/charges`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChargeList {
    #[serde(rename = "keyId")]
    #[schema(value_type = String)]
    pub key_id: KeyId,
    pub charges: Vec<ChargeView>,
}

/// A Studio API key (the Composable Studio contract's field names; dates in
/// ISO 8601 with milliseconds), as `crate::studio::view` writes it for the
/// CLI too.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    #[schema(value_type = String)]
    pub id: ApiKeyId,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ApiKeyTypeName,
    pub role: RoleName,
    #[serde(rename = "maskedValue")]
    pub masked_value: String,
    #[schema(value_type = String)]
    pub account: AccountId,
    #[schema(value_type = String)]
    pub project: ProjectId,
    pub enabled: bool,
    pub created_by: String,
    pub updated_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Only at creation, and with `?withValue=true` for a secret key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl ApiKeyView {
    /// A key's view, never its value.
    pub fn of(key: &ApiKeyRecord) -> ApiKeyView {
        ApiKeyView {
            id: key.id.clone(),
            name: key.name.clone(),
            kind: key.key_type.into(),
            role: key.role.into(),
            masked_value: key.masked_value.clone(),
            account: key.account_id.clone(),
            project: key.project_id.clone(),
            enabled: key.enabled,
            created_by: key.created_by.clone(),
            updated_by: key.updated_by.clone(),
            created_at: iso(key.created_at_ms),
            updated_at: iso(key.updated_at_ms),
            expires_at: key.expires_at_ms.and_then(iso),
            value: None,
        }
    }

    /// With its value: at creation, or asked for with `withValue=true`.
    pub fn with_value(self, value: &str) -> ApiKeyView {
        ApiKeyView {
            value: Some(value.to_owned()),
            ..self
        }
    }
}

/// A Studio key's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiKeyTypeName {
    /// Secret: server side only.
    Sk,
    /// Public: browser side, always an executor.
    Pk,
}

impl From<ApiKeyType> for ApiKeyTypeName {
    fn from(kind: ApiKeyType) -> ApiKeyTypeName {
        match kind {
            ApiKeyType::Sk => ApiKeyTypeName::Sk,
            ApiKeyType::Pk => ApiKeyTypeName::Pk,
        }
    }
}

impl From<ApiKeyTypeName> for ApiKeyType {
    fn from(kind: ApiKeyTypeName) -> ApiKeyType {
        match kind {
            ApiKeyTypeName::Sk => ApiKeyType::Sk,
            ApiKeyTypeName::Pk => ApiKeyType::Pk,
        }
    }
}

/// A Studio key's role, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    Reader,
    Executor,
    Application,
    Developer,
    Admin,
}

impl From<Role> for RoleName {
    fn from(role: Role) -> RoleName {
        match role {
            Role::Reader => RoleName::Reader,
            Role::Executor => RoleName::Executor,
            Role::Application => RoleName::Application,
            Role::Developer => RoleName::Developer,
            Role::Admin => RoleName::Admin,
        }
    }
}

impl From<RoleName> for Role {
    fn from(role: RoleName) -> Role {
        match role {
            RoleName::Reader => Role::Reader,
            RoleName::Executor => Role::Executor,
            RoleName::Application => Role::Application,
            RoleName::Developer => Role::Developer,
            RoleName::Admin => Role::Admin,
        }
    }
}

/// ISO 8601 with milliseconds, as the Studio contract writes dates.
pub fn iso(ms: i64) -> Option<String> {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at_ms: Option<i64>) -> ApiKeyRecord {
        ApiKeyRecord {
            id: ApiKeyId::generate(),
            account_id: AccountId::generate(),
            project_id: ProjectId::generate(),
            name: "ci".to_owned(),
            key_type: ApiKeyType::Sk,
            role: Role::Developer,
            enabled: true,
            value_hash: "h".to_owned(),
            value_sealed: None,
            masked_value: "sk-…abcd".to_owned(),
            created_by: "user:1".to_owned(),
            updated_by: "apikey:2".to_owned(),
            created_at_ms: 1_700_000_000_123,
            updated_at_ms: 1_700_000_000_456,
            expires_at_ms,
            disabled_by_role: None,
            expiry_set_by_role: None,
        }
    }

    /// The HTTP view of a Studio key and the CLI's (`studio::view`) write
    /// the same JSON, with and without its value.
    #[test]
    fn the_studio_key_view_is_the_clis() {
        for key in [record(None), record(Some(1_900_000_000_000))] {
            let http = serde_json::to_value(ApiKeyView::of(&key)).unwrap();
            assert_eq!(http, crate::studio::view::view(&key));
            let http = serde_json::to_value(ApiKeyView::of(&key).with_value("sk-x")).unwrap();
            assert_eq!(
                http,
                crate::studio::view::with_value(crate::studio::view::view(&key), "sk-x")
            );
        }
    }
}
