//! Request fields: the serde helpers (`#[serde(default, deserialize_with)]`)
//! that read one field of a body with the precise message a client gets
//! (`extract::json_body` names the field: `{param} {message}`, 422), the
//! Studio enums a request names and a view writes, and the checks shared by
//! more than one body (names, budgets).
//!
//! Every helper reads JSON `null` as absent, as the API always has; amounts
//! come as a JSON number or a digit string (`Amount::from_json`).

use ledger::model::{ApiKeyType, Purpose, Role};
use ledger::Amount;
use serde::de::{Deserialize, Deserializer, Error as _};
use serde_json::Value;

use super::error::ApiError;
use super::views::{ApiKeyTypeName, RoleName};
use crate::state::AppState;

/// The field's value, `None` when absent or `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Option::<Value>::deserialize(d)
}

/// A string.
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match present(d)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(D::Error::custom("must be a string")),
    }
}

/// A boolean.
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match present(d)? {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(D::Error::custom("must be a boolean")),
    }
}

/// An amount in USDC atomic units: a JSON number or a digit string.
pub fn amount<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Amount>, D::Error> {
    present(d)?
        .map(|value| Amount::from_json(&value).map_err(D::Error::custom))
        .transpose()
}

/// Milliseconds since the Unix epoch: an integer number or a digit string.
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let bad = || D::Error::custom("must be milliseconds since the Unix epoch (an integer)");
    match present(d)? {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_i64().filter(|ms| *ms >= 0).map(Some).ok_or_else(bad),
        Some(Value::String(s)) => s
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms >= 0)
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// A Compose key's purpose: `api` or `session`.
pub fn purpose<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Purpose>, D::Error> {
    text(d)?
        .map(|text| {
            Purpose::parse(&text).ok_or_else(|| D::Error::custom("must be \"api\" or \"session\""))
        })
        .transpose()
}

/// A chain id the body repeats: `Some(None)` when it is there but is not
/// a chain id (it then matches no header).
pub fn chain_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Ok(present(d)?.map(|value| value.as_u64()))
}

/// An ISO 8601 date and time, in ms: `Some(None)` for JSON `null` (no
/// expiry), `None` when absent.
pub fn iso_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    match present(d)? {
        None => Ok(Some(None)),
        Some(Value::String(text)) => chrono::DateTime::parse_from_rfc3339(&text)
            .map(|at| Some(Some(at.timestamp_millis())))
            .map_err(|_| D::Error::custom("must be an ISO 8601 date and time")),
        Some(_) => Err(D::Error::custom("must be an ISO 8601 string")),
    }
}

/// A Studio key's type: `sk` or `pk`.
pub fn key_type<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ApiKeyTypeName>, D::Error> {
    text(d)?
        .map(|text| {
            ApiKeyType::parse(&text)
                .map(ApiKeyTypeName::from)
                .ok_or_else(|| D::Error::custom("must be \"sk\" or \"pk\""))
        })
        .transpose()
}

/// A Studio role by name.
pub fn role<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RoleName>, D::Error> {
    text(d)?
        .map(|text| {
            Role::parse(&text).map(RoleName::from).ok_or_else(|| {
                D::Error::custom("must be reader, executor, application, developer or admin")
            })
        })
        .transpose()
}

/// Characters a name may not hold: controls, and the bidi overrides,
/// embeddings, isolates and marks that make a name display as something
/// else (U+202E turns `gpt-evil` into `live-tpg` on screen).
pub fn unprintable_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        )
}

/// A Compose key's `name`: optional (empty), bounded, printable.
pub fn key_name(state: &AppState, name: Option<String>) -> Result<String, ApiError> {
    let name = name.unwrap_or_default();
    let max = state.settings.keys.name_max_chars;
    if name.chars().count() > max {
        return Err(ApiError::invalid_field(
            "name",
            format!("must be at most {max} characters"),
        ));
    }
    if name.chars().any(unprintable_in_name) {
        return Err(ApiError::invalid_field(
            "name",
            "must not contain control or bidi override/isolate characters",
        ));
    }
    Ok(name)
}

/// A Studio key's name: 1 to `studio.name_max_chars` printable characters.
pub fn studio_name(state: &AppState, name: &str) -> Result<String, ApiError> {
    let max = state.settings.studio.name_max_chars;
    if name.trim().is_empty() || name.chars().count() > max || name.chars().any(unprintable_in_name)
    {
        return Err(ApiError::invalid_field(
            "name",
            format!("must be 1 to {max} printable characters (no control or bidi characters)"),
        ));
    }
    Ok(name.to_owned())
}

/// A budget within the configured maximum.
pub fn budget_within_max(state: &AppState, budget: Amount) -> Result<Amount, ApiError> {
    let max = state.settings.keys.budget_max_atomic;
    if budget.atomic() > max {
        return Err(ApiError::invalid_field(
            "budgetLimit",
            format!("must be at most {max} (USDC atomic units)"),
        ));
    }
    Ok(budget)
}

/// A `budgetLimit` a key must have: given, above zero, within the maximum.
pub fn required_budget(state: &AppState, budget: Option<Amount>) -> Result<Amount, ApiError> {
    let budget = budget.ok_or_else(|| ApiError::invalid_field("budgetLimit", "is required"))?;
    if budget.is_zero() {
        return Err(ApiError::invalid_field(
            "budgetLimit",
            "must be greater than zero",
        ));
    }
    budget_within_max(state, budget)
}

/// A field a body must hold.
pub fn required<T>(value: Option<T>, name: &'static str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::invalid_field(name, "is required"))
}
