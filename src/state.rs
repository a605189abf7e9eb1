//! [`AppState`]: what every HTTP handler shares.

use std::collections::HashSet;
use std::sync::Arc;

use ledger::{ChainId, Store};

use crate::auth::rate_limit::RateLimiter;
use crate::auth::token::TokenSigner;
use crate::gateway::Gateway;
use crate::settings::Settings;
use crate::studio::jwt::JwtSigner;
use crate::studio::secrets::StudioSecrets;

/// Shared by all workers; cheap to clone (everything inside is shared).
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub signer: TokenSigner,
    pub settings: Arc<Settings>,
    /// The configured chains, for header and SIWE checks.
    pub chains: Arc<HashSet<ChainId>>,
    /// The paid path: key actors, ledger writer, models.
    pub gateway: Gateway,
    /// Studio API keys: sealing and lookup secrets, the JWT signer.
    pub studio: StudioKeys,
    /// Nonce requests and sign-ins, per client address.
    pub sign_in_limiter: Arc<RateLimiter>,
}

/// What the Studio surface needs beyond the store.
#[derive(Clone)]
pub struct StudioKeys {
    pub secrets: Arc<StudioSecrets>,
    pub jwt: JwtSigner,
}

impl AppState {
    pub fn new(
        store: Store,
        signer: TokenSigner,
        settings: Settings,
        gateway: Gateway,
        studio: StudioKeys,
    ) -> AppState {
        let chains = settings.chain_ids().into_iter().collect();
        let sign_in_limiter = Arc::new(RateLimiter::new(
            settings.auth.sign_in_burst,
            settings.auth.sign_in_per_s,
        ));
        AppState {
            store,
            signer,
            settings: Arc::new(settings),
            chains: Arc::new(chains),
            gateway,
            studio,
            sign_in_limiter,
        }
    }
}
