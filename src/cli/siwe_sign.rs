//! `tollgate siwe-sign`: a signed SIWE sign-in body, for local testing.

use anyhow::Context;
use ledger::time::now_ms;

use super::pick_chain;
use crate::auth::{eth, siwe::SiweMessage};
use crate::settings::Settings;

/// Anvil's and Hardhat's first dev account: public knowledge, for local use only.
pub const DEV_PRIVATE_KEY: &str =
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

pub fn siwe_sign(
    settings: &Settings,
    nonce: String,
    private_key: Option<String>,
    domain: Option<String>,
    chain: Option<u64>,
    budget: String,
) -> anyhow::Result<()> {
    // The server's own domain: the first of `auth.siwe_domains`, else the
    // address `serve` binds (what it accepts when none are configured).
    let domain = match domain {
        Some(domain) => domain,
        None => settings
            .auth
            .siwe_domains
            .first()
            .cloned()
            .unwrap_or_else(|| settings.http.bind.clone()),
    };
    let key_hex = private_key.unwrap_or_else(|| DEV_PRIVATE_KEY.to_owned());
    let key =
        eth::signing_key_from_hex(&key_hex).context("--private-key must be 32 bytes of hex")?;
    let chain = pick_chain(settings, chain)?;
    let now = now_ms();
    let message = SiweMessage {
        domain: domain.clone(),
        address: eth::address_of(key.verifying_key()),
        statement: Some("Sign in to Tollgate.".into()),
        uri: format!("http://{domain}"),
        version: "1".into(),
        chain_id: chain,
        nonce,
        issued_at_ms: now,
        expiration_time_ms: Some(now + 3_600_000),
        not_before_ms: None,
    }
    .render();
    let signature = eth::sign_personal(&key, message.as_bytes())?;
    println!(
        "{}",
        serde_json::json!({ "message": message, "signature": signature, "budgetLimit": budget })
    );
    Ok(())
}

/// `--domain`: a `host[:port]`, as a SIWE message names it (no scheme, path
/// or spaces).
pub fn parse_domain(text: &str) -> Result<String, String> {
    if text.contains("://") {
        return Err("a domain has no scheme: give host[:port], e.g. 127.0.0.1:8080".to_owned());
    }
    if text.is_empty() || text.contains(['/', '@', '?', '#']) || text.contains(char::is_whitespace)
    {
        return Err("a domain is host[:port], with no path or spaces".to_owned());
    }
    Ok(text.to_owned())
}

/// `--budget`: USDC atomic units, a whole number.
pub fn parse_budget(text: &str) -> Result<String, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.parse::<u64>().is_err()
    {
        return Err(
            "the budget is a whole number of USDC atomic units (1000000 = 1 USDC)".to_owned(),
        );
    }
    Ok(text.to_owned())
}

pub fn parse_nonce(text: &str) -> Result<String, String> {
    let ok = (8..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| text.to_owned()).ok_or_else(|| {
        "a nonce is 8 to 64 letters and digits, as GET /api/sessions/nonce returns it".to_owned()
    })
}
