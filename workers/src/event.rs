//! [`CallCompleted`]: what a gateway publishes when a paid call finishes, and
//! what the ledger pool turns into a charge — the queue's message body
//! (JSON), one per call, identified by its request id.

use ledger::model::NewCharge;
use ledger::pricing::{Billed, Price, Tokens};
use ledger::{Amount, KeyId, LeaseId, RequestId};
use serde::{Deserialize, Serialize};

use crate::sink::CallContext;

/// The event's shape; a pool refuses (dead-letters) others.
pub const EVENT_VERSION: u32 = 1;

/// A finished paid call, as priced by the gateway that ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCompleted {
    pub version: u32,
    pub request_id: String,
    pub key_id: String,
    /// The payer: the key's wallet and chain.
    pub wallet: String,
    pub chain_id: u64,
    pub model: String,
    pub price_version: String,
    /// The usage the gateway billed.
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// The usage the upstream reported (`None`: the billed usage is an estimate).
    pub reported: Option<(u32, u32)>,
    /// What the gateway quoted the client: the amount charged.
    pub quoted_atomic: u64,
    /// The call's hold: no bill passes it.
    pub hold_atomic: u64,
    pub started_at_ms: i64,
    pub completed_at_ms: i64,
    /// The budget lease the call was spent from (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// The caller's own `x-request-id` (absent: it sent none, or an older
    /// gateway published the event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    /// Of the billed `input_tokens`, those read from the upstream's prompt
    /// cache and those written to it (absent, from an older gateway: none).
    #[serde(default)]
    pub cached_input_tokens: u32,
    #[serde(default)]
    pub cache_write_tokens: u32,
    /// Of the reported input, the cached and cache-written tokens (absent:
    /// an estimate, or an older gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_cache: Option<(u32, u32)>,
}

/// Why an event cannot become a charge (it goes to the dead-letter queue).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event is not a CallCompleted: {0}")]
    Malformed(String),
    #[error("event version {0} is not {EVENT_VERSION}")]
    Version(u32),
    #[error("the event's ids or amounts are invalid: {0}")]
    Invalid(&'static str),
}

/// A re-priced event whose amount differs from the gateway's quote (the
/// quote is charged; the difference is logged and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuoteMismatch {
    pub quoted: Amount,
    pub repriced: Amount,
}

impl CallCompleted {
    /// The event of a charge the gateway priced, for the queue.
    pub fn of_charge(charge: &NewCharge, call: &CallContext) -> CallCompleted {
        CallCompleted {
            version: EVENT_VERSION,
            request_id: charge.request_id.to_string(),
            key_id: charge.key_id.to_string(),
            wallet: call
                .payer
                .map(|(wallet, _)| wallet.to_lower_hex())
                .unwrap_or_default(),
            chain_id: call.payer.map_or(0, |(_, chain)| chain.0),
            model: charge.model.clone(),
            price_version: charge.price_version.clone(),
            input_tokens: charge.input_tokens,
            output_tokens: charge.output_tokens,
            reported: charge.reported,
            quoted_atomic: charge.amount.atomic(),
            hold_atomic: call.hold.atomic(),
            started_at_ms: call.started_at_ms,
            completed_at_ms: charge.created_at_ms,
            lease_id: charge.lease.as_ref().map(|lease| lease.to_string()),
            client_request_id: charge.client_request_id.clone(),
            cached_input_tokens: charge.cached_input_tokens,
            cache_write_tokens: charge.cache_write_tokens,
            reported_cache: charge.reported_cache,
        }
    }

    pub fn parse(body: &[u8]) -> Result<CallCompleted, EventError> {
        let event: CallCompleted =
            serde_json::from_slice(body).map_err(|e| EventError::Malformed(e.to_string()))?;
        if event.version != EVENT_VERSION {
            return Err(EventError::Version(event.version));
        }
        Ok(event)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The charge this event records: the gateway's quote, after re-pricing
    /// the billed usage with `price` (the version the event names, when the
    /// pool knows it) to catch a quote that disagrees.
    pub fn charge(
        &self,
        price: Option<&Price>,
    ) -> Result<(NewCharge, Option<QuoteMismatch>), EventError> {
        let request_id =
            RequestId::parse(&self.request_id).ok_or(EventError::Invalid("request_id"))?;
        let key_id = KeyId::parse(&self.key_id).ok_or(EventError::Invalid("key_id"))?;
        let lease = match &self.lease_id {
            Some(lease) => Some(LeaseId::parse(lease).ok_or(EventError::Invalid("lease_id"))?),
            None => None,
        };
        // A label, never worth a charge: one this worker would not have
        // accepted (a newer gateway's rule, a hand-made event) is dropped,
        // not dead-lettered with the charge.
        let client_request_id = match &self.client_request_id {
            Some(id) if !ledger::ids::is_client_request_id(id) => {
                tracing::warn!(request_id = %self.request_id, "an event's client_request_id is not well-formed; recorded without it");
                None
            }
            id => id.clone(),
        };
        let quoted =
            Amount::from_atomic(self.quoted_atomic).ok_or(EventError::Invalid("quoted"))?;
        let hold = Amount::from_atomic(self.hold_atomic).ok_or(EventError::Invalid("hold"))?;
        if quoted > hold {
            return Err(EventError::Invalid("a quote above its hold"));
        }
        let billed = self.billed_tokens();
        let mismatch = price.and_then(|price| {
            let Billed { amount, .. } = price.bill(billed, hold);
            (amount != quoted).then_some(QuoteMismatch {
                quoted,
                repriced: amount,
            })
        });
        let charge = NewCharge {
            request_id,
            key_id,
            model: self.model.clone(),
            price_version: self.price_version.clone(),
            input_tokens: self.input_tokens,
            // Within `input_tokens`, a `u32`.
            cached_input_tokens: u32::try_from(billed.cached()).unwrap_or(u32::MAX),
            cache_write_tokens: u32::try_from(billed.cache_write()).unwrap_or(u32::MAX),
            output_tokens: self.output_tokens,
            amount: quoted,
            reported: self.reported,
            reported_cache: self.reported_cache,
            created_at_ms: self.completed_at_ms,
            lease,
            client_request_id,
        };
        Ok((charge, mismatch))
    }

    /// The usage the gateway billed, as the pricing takes it: cache counts
    /// past the input (no gateway sends them) are cut to fit it.
    fn billed_tokens(&self) -> Tokens {
        Tokens::new(
            u64::from(self.input_tokens),
            u64::from(self.cached_input_tokens),
            u64::from(self.cache_write_tokens),
            u64::from(self.output_tokens),
        )
    }
}
