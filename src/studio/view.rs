//! The JSON view of a Studio API key, as the Composable Studio contract
//! writes it (dates in ISO 8601 with milliseconds). Shared by the HTTP
//! surface and the CLI's `studio bootstrap`.

use chrono::{DateTime, SecondsFormat, Utc};
use ledger::model::ApiKeyRecord;
use serde_json::{json, Value};

/// ISO 8601 with milliseconds, as the Studio contract writes dates.
pub fn iso(ms: i64) -> Value {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| json!(t.to_rfc3339_opts(SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// A key's JSON view, never its value.
pub fn view(key: &ApiKeyRecord) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "type": key.key_type,
        "role": key.role,
        "maskedValue": key.masked_value,
        "account": key.account_id,
        "project": key.project_id,
        "enabled": key.enabled,
        "created_by": key.created_by,
        "updated_by": key.updated_by,
        "created_at": iso(key.created_at_ms),
        "updated_at": iso(key.updated_at_ms),
        "expires_at": key.expires_at_ms.map_or(Value::Null, iso),
    })
}

pub fn with_value(mut view: Value, value: &str) -> Value {
    view["value"] = json!(value);
    view
}
