//! The JSON views of Compose keys and charges, shared by the handlers that
//! answer with them: budget state, never token material (a token only once,
//! at creation).

use ledger::model::{ChargeRecord, KeyRecord};
use ledger::time::now_ms;
use serde_json::{json, Value};

/// The JSON view of a key: budget state, never token material.
pub fn key_json(key: &KeyRecord) -> Value {
    json!({
        "keyId": key.id,
        "name": key.name,
        "purpose": key.purpose,
        "chainId": key.chain_id,
        "owner": key.wallet,
        "budgetLimit": key.budget_limit,
        "budgetUsed": key.budget_used,
        "budgetRemaining": key.budget_remaining(),
        "status": key.status_at(now_ms()),
        "createdAt": key.created_at_ms,
        "expiresAt": key.expires_at_ms,
        "revokedAt": key.revoked_at_ms,
    })
}

/// A key's JSON view plus its token: only ever at creation.
pub fn created_key_json(key: &KeyRecord, token: &str) -> Value {
    let mut view = key_json(key);
    view["token"] = json!(token);
    view
}

pub fn charge_json(charge: &ChargeRecord) -> Value {
    json!({
        "requestId": charge.request_id,
        "model": charge.model,
        "priceVersion": charge.price_version,
        "inputTokens": charge.input_tokens,
        "outputTokens": charge.output_tokens,
        "amount": charge.amount,
        // What the upstream reported; an estimate when it reported nothing.
        "reportedInputTokens": charge.reported.map(|(input, _)| input),
        "reportedOutputTokens": charge.reported.map(|(_, output)| output),
        "estimated": charge.reported.is_none(),
        "status": charge.status,
        "batchId": charge.batch_id,
        "txHash": charge.tx_hash,
        "createdAt": charge.created_at_ms,
        "clientRequestId": charge.client_request_id,
    })
}
