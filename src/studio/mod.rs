//! Studio API keys (Composable Studio `/api/v1/apikeys`): the pieces below
//! the HTTP handlers, which need no database.
//!
//! * [`view`] — a key's JSON view (the HTTP surface and the CLI share it).
//! * [`secrets`] — key values (`sk-`/`pk-`), their keyed lookup hash, sealing
//!   at rest (AES-256-GCM) and the masked listing form.
//! * [`jwt`] — EdDSA JWTs a key exchanges itself for, and the JWKS that
//!   verifies them.
//! * [`issue`] — minting a key: value, lookup hash, seal, masked form.

pub mod issue;
pub mod jwt;
pub mod secrets;
pub mod view;
