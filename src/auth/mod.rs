//! Credentials: Compose key tokens, SIWE sign-in, Ethereum signatures, and
//! the server's signing key.
//!
//! * [`token`] — issue and verify `compose-` tokens (Ed25519, no database).
//! * [`siwe`] — EIP-4361 messages: parse, check, recover the signer.
//! * [`eth`] — EIP-191 hashing and secp256k1 recovery/signing.
//! * [`signing_key`] — load the Ed25519 key, or create and persist it.
//! * [`key_file`] — a 32-byte secret in a private hex file, created on first use.
//! * [`rate_limit`] — per-address token buckets for the free sign-in routes.

pub mod eth;
pub mod key_file;
pub mod rate_limit;
pub mod signing_key;
pub mod siwe;
pub mod token;
