//! `[models.NAME]`: each model's upstream, price and request fields.

use serde::Deserialize;

use super::{invalid, list_or_csv, SettingsError};

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
    /// Input tokens the upstream read from its prompt cache (OpenAI's
    /// `cached_tokens`); default `input_atomic_per_million`.
    #[serde(default)]
    pub cached_input_atomic_per_million: Option<u64>,
    /// Input tokens the upstream wrote to its prompt cache (Anthropic's
    /// `cache_creation_input_tokens`); default `input_atomic_per_million`.
    #[serde(default)]
    pub cache_write_atomic_per_million: Option<u64>,
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
    /// (`gateway::protocol::chat::FORWARDED_FIELDS`): only fields whose cost the
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
    /// What the upstream speaks: `openai` (chat completions, responses,
    /// embeddings) or `anthropic` (messages, count_tokens). `echo` serves
    /// every API whatever this says.
    #[serde(default)]
    pub protocol: WireProtocol,
}

pub use crate::upstream::WireProtocol;

impl ModelSettings {
    /// The model's price, as the gateway quotes and the pools re-price.
    pub fn price(&self) -> ledger::pricing::Price {
        ledger::pricing::Price {
            version: self.price_version.clone(),
            input_atomic_per_million: self.input_atomic_per_million,
            cached_input_atomic_per_million: self
                .cached_input_atomic_per_million
                .unwrap_or(self.input_atomic_per_million),
            cache_write_atomic_per_million: self
                .cache_write_atomic_per_million
                .unwrap_or(self.input_atomic_per_million),
            output_atomic_per_million: self.output_atomic_per_million,
            request_fee_atomic: self.request_fee_atomic,
            min_charge_atomic: self.min_charge_atomic,
        }
    }

    /// Checks the `[models.NAME]` table of model `name`.
    pub(super) fn validate(&self, name: &str) -> Result<(), SettingsError> {
        let setting = |field: &str| format!("models.{name}.{field}");
        if self.max_output_tokens == 0 || self.max_output_tokens > 10_000_000 {
            return Err(invalid(
                setting("max_output_tokens"),
                "must be between 1 and 10000000",
            ));
        }
        if self.price_version.is_empty() {
            return Err(invalid(setting("price_version"), "must not be empty"));
        }
        if self.max_tokens_fields.is_empty()
            || self
                .max_tokens_fields
                .iter()
                .any(|f| f != "max_tokens" && f != "max_completion_tokens")
        {
            return Err(invalid(
                setting("max_tokens_fields"),
                "must name max_tokens and/or max_completion_tokens",
            ));
        }
        if self.min_charge_atomic == 0
            || ledger::Amount::from_atomic(self.min_charge_atomic).is_none()
        {
            return Err(invalid(
                setting("min_charge_atomic"),
                "must be at least 1 (no call is free) and storable",
            ));
        }
        let prices = [
            (
                "input_atomic_per_million",
                Some(self.input_atomic_per_million),
            ),
            (
                "cached_input_atomic_per_million",
                self.cached_input_atomic_per_million,
            ),
            (
                "cache_write_atomic_per_million",
                self.cache_write_atomic_per_million,
            ),
            (
                "output_atomic_per_million",
                Some(self.output_atomic_per_million),
            ),
        ];
        for (field, price) in prices {
            if price.is_some_and(|price| ledger::Amount::from_atomic(price).is_none()) {
                return Err(invalid(
                    setting(field),
                    "is beyond the largest storable amount",
                ));
            }
        }
        if ledger::Amount::from_atomic(self.request_fee_atomic).is_none() {
            return Err(invalid(
                setting("request_fee_atomic"),
                "is beyond the largest storable amount",
            ));
        }
        Ok(())
    }
}

/// A model's upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum UpstreamSetting {
    /// The built-in deterministic model.
    Echo,
    /// A base URL (`…/v1`, no trailing slash) speaking the model's `protocol`.
    Remote(String),
}

impl TryFrom<String> for UpstreamSetting {
    type Error = String;

    fn try_from(upstream: String) -> Result<UpstreamSetting, String> {
        if upstream == "echo" {
            Ok(UpstreamSetting::Echo)
        } else if upstream.starts_with("http://") || upstream.starts_with("https://") {
            Ok(UpstreamSetting::Remote(
                upstream.trim_end_matches('/').to_owned(),
            ))
        } else {
            Err(format!(
                "a model's upstream must be \"echo\" or an http(s):// base URL, got {upstream:?}"
            ))
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
