//! Minting a Studio key: its value, the keyed hash the store finds it by,
//! the sealed copy (`sk` only) and the masked form — in one place, for the
//! HTTP API and for `tollgate studio bootstrap`.

use ledger::model::{ApiKeyRecord, ApiKeyType, Role};
use ledger::{AccountId, ApiKeyId, ProjectId};

use super::secrets::{masked, new_value, SecretsError, StudioSecrets};

/// What a new key is, before it has a value.
pub struct KeySpec {
    pub account: AccountId,
    pub project: ProjectId,
    pub name: String,
    pub key_type: ApiKeyType,
    pub role: Role,
    pub expires_at_ms: Option<i64>,
    /// `user:<id>` or `apikey:<id>`: who creates it.
    pub by: String,
    /// The role it creates the key with: the one that set its expiry, if any.
    pub by_role: Role,
    pub now_ms: i64,
}

/// A new key's record (ready to store) and its value (to show once).
pub fn mint(
    secrets: &StudioSecrets,
    spec: KeySpec,
) -> Result<(ApiKeyRecord, String), SecretsError> {
    // A public key is always an executor (the store's CHECK says so too).
    let role = spec.key_type.acting_role(spec.role);
    let id = ApiKeyId::generate();
    let value = new_value(spec.key_type);
    let value_sealed = match spec.key_type {
        // Sealed under the key's id, so a sealed value cannot move rows.
        ApiKeyType::Sk => Some(secrets.seal(&value, id.as_str())?),
        ApiKeyType::Pk => None,
    };
    let record = ApiKeyRecord {
        value_hash: secrets.lookup_hash(&value),
        value_sealed,
        masked_value: masked(&value),
        id,
        account_id: spec.account,
        project_id: spec.project,
        name: spec.name,
        key_type: spec.key_type,
        role,
        enabled: true,
        created_by: spec.by.clone(),
        updated_by: spec.by,
        created_at_ms: spec.now_ms,
        updated_at_ms: spec.now_ms,
        expires_at_ms: spec.expires_at_ms,
        disabled_by_role: None,
        // An expiry given at creation is a restriction by the creator's role.
        expiry_set_by_role: spec.expires_at_ms.map(|_| spec.by_role),
    };
    Ok((record, value))
}
