//! A local chain for tests, benchmarks and `tollgate devnet`: Anvil (from
//! the npm package `@foundry-rs/anvil-linux-amd64`, installed by
//! `npm ci`), with the mock USDC and the settlement contract deployed the way
//! the settlement issue describes — owner and operator Anvil's account 0,
//! treasury account 9, 1,000 USDC minted to each of accounts 0–9.
//!
//! [`DevChain`] also does what tests do to wallets on such a chain: approve,
//! blacklist, pause, read balances; and to the chain itself: mining on and
//! off, snapshots and reverts (a reorg), handing the contract's roles on. It impersonates any address (Anvil's
//! `anvil_impersonateAccount`), so a test wallet needs no key on chain.
//!
//! Nothing here is for a real chain: account 0's key is public.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;

use super::contracts::{MockUSDC, TollgateSettlement};

/// Anvil's account 0 key: public, for local chains only.
pub const ANVIL_KEY_0: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// The chain id local chains run with (Avalanche Fuji's).
pub const DEVNET_CHAIN_ID: u64 = 43113;

/// What each of Anvil's ten accounts is minted: 1,000 USDC.
pub const DEVNET_MINT_ATOMIC: u64 = 1_000_000_000;

/// Where the npm package puts Anvil, relative to a folder with `node_modules`.
const ANVIL_IN_NODE_MODULES: &str = "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error(
        "Anvil was not found: run `npm ci` in the repository (it installs \
         @foundry-rs/anvil-linux-amd64), or set TOLLGATE_ANVIL to its path"
    )]
    AnvilMissing,
    #[error("could not start Anvil ({path}): {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("Anvil did not answer on {0} within 15 s")]
    NotReady(String),
    #[error("devnet: {0}")]
    Chain(String),
}

fn chain_error(e: impl std::fmt::Display) -> DevnetError {
    DevnetError::Chain(e.to_string())
}

/// Anvil's binary: `TOLLGATE_ANVIL`, else `node_modules/…` in the current
/// folder or one above it, else beside this crate's repository.
pub fn anvil_binary() -> Result<PathBuf, DevnetError> {
    if let Some(path) = std::env::var_os("TOLLGATE_ANVIL") {
        return Ok(PathBuf::from(path));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    roots.extend(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(Path::to_path_buf),
    );
    roots
        .into_iter()
        .map(|root| root.join(ANVIL_IN_NODE_MODULES))
        .find(|path| path.is_file())
        .ok_or(DevnetError::AnvilMissing)
}

/// How to start Anvil.
#[derive(Debug, Clone, Default)]
pub struct AnvilOptions {
    /// 0: a free port.
    pub port: u16,
    /// Load the chain from this file at start and save it there on exit
    /// (`--state`): a restart continues the same chain.
    pub state: Option<PathBuf>,
    /// The chain id Anvil answers with; `None`: [`DEVNET_CHAIN_ID`].
    pub chain_id: Option<u64>,
}

/// A running Anvil; killed when dropped.
#[derive(Debug)]
pub struct Anvil {
    child: std::process::Child,
    pub port: u16,
    pub rpc_url: String,
}

impl Anvil {
    /// Starts Anvil on 127.0.0.1 (chain 43113, ten unlocked dev accounts,
    /// instant mining) and waits until it answers.
    pub async fn start(options: &AnvilOptions) -> Result<Anvil, DevnetError> {
        let binary = anvil_binary()?;
        let port = match options.port {
            0 => free_port().map_err(|source| DevnetError::Spawn {
                path: binary.display().to_string(),
                source,
            })?,
            port => port,
        };
        let mut command = std::process::Command::new(&binary);
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--chain-id",
                &options.chain_id.unwrap_or(DEVNET_CHAIN_ID).to_string(),
            ])
            .args(["--accounts", "10", "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(state) = &options.state {
            command.arg("--state").arg(state);
        }
        let child = command.spawn().map_err(|source| DevnetError::Spawn {
            path: binary.display().to_string(),
            source,
        })?;
        let rpc_url = format!("http://127.0.0.1:{port}");
        let anvil = Anvil {
            child,
            port,
            rpc_url,
        };
        anvil.wait_ready().await?;
        Ok(anvil)
    }

    async fn wait_ready(&self) -> Result<(), DevnetError> {
        let provider = provider(&self.rpc_url)?;
        for _ in 0..150 {
            if provider.get_chain_id().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(DevnetError::NotReady(self.rpc_url.clone()))
    }

    /// Stops Anvil the way Ctrl-C does (SIGTERM: it saves `--state`), and
    /// waits for it.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let _ = self.child.wait();
    }

    /// Kills Anvil at once (SIGKILL: nothing saved).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until Anvil exits (it runs until interrupted).
    pub fn wait(mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn provider(rpc_url: &str) -> Result<RootProvider, DevnetError> {
    let url = rpc_url.parse().map_err(chain_error)?;
    Ok(RootProvider::new_http(url))
}

/// The contracts deployed on a local chain, and its accounts.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub rpc_url: String,
    pub usdc: Address,
    pub settlement_contract: Address,
    /// Owner of both contracts and the settlement operator (account 0).
    pub operator: Address,
    pub operator_key: String,
    pub treasury: Address,
    /// Anvil's ten dev accounts.
    pub accounts: Vec<Address>,
}

/// Deploys mock USDC and the settlement contract from account 0 and mints
/// [`DEVNET_MINT_ATOMIC`] to each dev account.
pub async fn deploy(rpc_url: &str) -> Result<Deployment, DevnetError> {
    let signer: PrivateKeySigner = ANVIL_KEY_0.parse().map_err(chain_error)?;
    let operator = signer.address();
    let url = rpc_url.parse().map_err(chain_error)?;
    let deployer = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer))
        .connect_http(url);
    let accounts = deployer.get_accounts().await.map_err(chain_error)?;
    let treasury = *accounts
        .get(9)
        .ok_or_else(|| DevnetError::Chain("Anvil has fewer than ten accounts".into()))?;
    let usdc = MockUSDC::deploy(&deployer).await.map_err(chain_error)?;
    let settlement = TollgateSettlement::deploy(&deployer, operator, treasury)
        .await
        .map_err(chain_error)?;
    for account in &accounts {
        usdc.mint(*account, U256::from(DEVNET_MINT_ATOMIC))
            .send()
            .await
            .map_err(chain_error)?
            .get_receipt()
            .await
            .map_err(chain_error)?;
    }
    Ok(Deployment {
        rpc_url: rpc_url.to_owned(),
        usdc: *usdc.address(),
        settlement_contract: *settlement.address(),
        operator,
        operator_key: ANVIL_KEY_0.to_owned(),
        treasury,
        accounts,
    })
}

/// What tests do to a local chain.
#[derive(Debug, Clone)]
pub struct DevChain {
    pub deployment: Deployment,
    provider: RootProvider,
}

impl DevChain {
    pub fn new(deployment: Deployment) -> Result<DevChain, DevnetError> {
        let provider = provider(&deployment.rpc_url)?;
        Ok(DevChain {
            deployment,
            provider,
        })
    }

    pub fn provider(&self) -> &RootProvider {
        &self.provider
    }

    /// The settlement contract, called through this chain's provider (send
    /// `.from(…)` an address [`DevChain::impersonate`] made usable).
    pub fn settlement(&self) -> TollgateSettlement::TollgateSettlementInstance<RootProvider> {
        TollgateSettlement::new(self.deployment.settlement_contract, self.provider.clone())
    }

    /// Lets transactions `from` this address through without its key.
    pub async fn impersonate(&self, who: Address) -> Result<(), DevnetError> {
        self.raw("anvil_impersonateAccount", (who,)).await.map(drop)
    }

    /// Sends a transaction as `from` (impersonated; given gas money first)
    /// and waits for its receipt. Errors when it reverts.
    async fn send_as(&self, from: Address, to: Address, input: Vec<u8>) -> Result<(), DevnetError> {
        let request = self.request_as(from, to, input, 1).await?;
        let receipt = self
            .provider
            .send_transaction(request)
            .await
            .map_err(chain_error)?
            .with_timeout(Some(Duration::from_secs(30)))
            .get_receipt()
            .await
            .map_err(chain_error)?;
        if !receipt.status() {
            return Err(DevnetError::Chain(format!(
                "a transaction from {from} reverted"
            )));
        }
        Ok(())
    }

    /// Like [`DevChain::send_as`], without waiting: the transaction is in
    /// the pool (with automine off, the next block mines it before any
    /// transaction bidding less than `tip_times` the network's fees).
    async fn send_unmined_as(
        &self,
        from: Address,
        to: Address,
        input: Vec<u8>,
        tip_times: u128,
    ) -> Result<(), DevnetError> {
        let request = self.request_as(from, to, input, tip_times).await?;
        self.provider
            .send_transaction(request)
            .await
            .map_err(chain_error)
            .map(drop)
    }

    /// A transaction from `from` (impersonated, given gas money) bidding
    /// `tip_times` the network's fee estimate.
    async fn request_as(
        &self,
        from: Address,
        to: Address,
        input: Vec<u8>,
        tip_times: u128,
    ) -> Result<TransactionRequest, DevnetError> {
        self.raw("anvil_setBalance", (from, U256::from(10u128.pow(20))))
            .await?;
        self.impersonate(from).await?;
        // The network's own estimate, never a multiple of it unless asked:
        // Anvil's gas price follows what recent transactions paid, so
        // bidding twice it each time would double it transaction after
        // transaction.
        let fees = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(chain_error)?;
        Ok(TransactionRequest::default()
            .with_from(from)
            .with_to(to)
            .with_input(input)
            .with_gas_limit(500_000)
            .with_max_fee_per_gas(fees.max_fee_per_gas.saturating_mul(tip_times))
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas.saturating_mul(tip_times)))
    }

    /// An Anvil RPC (`anvil_*`, `evm_*`) with JSON parameters.
    pub async fn raw<P>(
        &self,
        method: &'static str,
        params: P,
    ) -> Result<serde_json::Value, DevnetError>
    where
        P: serde::Serialize + Clone + Send + Sync + std::fmt::Debug + Unpin + 'static,
    {
        self.provider
            .raw_request::<P, serde_json::Value>(method.into(), params)
            .await
            .map_err(chain_error)
    }

    fn owner(&self) -> Address {
        self.deployment.operator
    }

    /// `wallet` approves the settlement contract for `amount` (replacing any
    /// earlier allowance).
    pub async fn approve(&self, wallet: Address, amount: u64) -> Result<(), DevnetError> {
        self.approve_spender(wallet, self.deployment.settlement_contract, amount)
            .await
    }

    /// `wallet` approves `spender` for `amount`.
    pub async fn approve_spender(
        &self,
        wallet: Address,
        spender: Address,
        amount: u64,
    ) -> Result<(), DevnetError> {
        let call = MockUSDC::approveCall {
            spender,
            value: U256::from(amount),
        };
        self.send_as(wallet, self.deployment.usdc, call.abi_encode())
            .await
    }

    /// Mints `amount` to `wallet`.
    pub async fn mint(&self, wallet: Address, amount: u64) -> Result<(), DevnetError> {
        let call = MockUSDC::mintCall {
            to: wallet,
            amount: U256::from(amount),
        };
        self.send_as(self.owner(), self.deployment.usdc, call.abi_encode())
            .await
    }

    pub async fn blacklist(&self, wallet: Address, listed: bool) -> Result<(), DevnetError> {
        let input = if listed {
            MockUSDC::blacklistCall { account: wallet }.abi_encode()
        } else {
            MockUSDC::unBlacklistCall { account: wallet }.abi_encode()
        };
        self.send_as(self.owner(), self.deployment.usdc, input)
            .await
    }

    pub async fn pause_token(&self, paused: bool) -> Result<(), DevnetError> {
        let input = if paused {
            MockUSDC::pauseCall {}.abi_encode()
        } else {
            MockUSDC::unpauseCall {}.abi_encode()
        };
        self.send_as(self.owner(), self.deployment.usdc, input)
            .await
    }

    /// A wallet's USDC balance (atomic units).
    pub async fn usdc_balance(&self, wallet: Address) -> Result<U256, DevnetError> {
        MockUSDC::new(self.deployment.usdc, self.provider.clone())
            .balanceOf(wallet)
            .call()
            .await
            .map_err(chain_error)
    }

    /// Turns instant mining on or off (off: transactions wait in the pool).
    pub async fn automine(&self, on: bool) -> Result<(), DevnetError> {
        self.raw("evm_setAutomine", (on,)).await.map(|_| ())
    }

    /// Mines one block now.
    pub async fn mine(&self) -> Result<(), DevnetError> {
        self.raw("evm_mine", ()).await.map(|_| ())
    }

    /// Mines `blocks` empty blocks now.
    pub async fn mine_blocks(&self, blocks: u64) -> Result<(), DevnetError> {
        self.raw("anvil_mine", (U256::from(blocks),))
            .await
            .map(|_| ())
    }

    /// Snapshots the chain (`evm_snapshot`), for [`DevChain::revert`].
    pub async fn snapshot(&self) -> Result<String, DevnetError> {
        let id = self.raw("evm_snapshot", ()).await?;
        id.as_str()
            .map(str::to_owned)
            .ok_or_else(|| DevnetError::Chain(format!("evm_snapshot answered {id}")))
    }

    /// Takes the chain back to `snapshot` (`evm_revert`): every block since
    /// is gone, and the transactions in them — a reorg that deep.
    pub async fn revert(&self, snapshot: &str) -> Result<(), DevnetError> {
        match self.raw("evm_revert", (snapshot.to_owned(),)).await? {
            serde_json::Value::Bool(true) => Ok(()),
            other => Err(DevnetError::Chain(format!("evm_revert answered {other}"))),
        }
    }

    /// Hands the settlement contract's ownership from its deployer to `to`.
    pub async fn transfer_ownership(&self, to: Address) -> Result<(), DevnetError> {
        let call = TollgateSettlement::transferOwnershipCall { owner_: to };
        self.send_as(
            self.owner(),
            self.deployment.settlement_contract,
            call.abi_encode(),
        )
        .await
    }

    /// `owner` makes `operator` the settlement contract's operator. With
    /// `mined` false it is only sent, bidding ten times the network's fees
    /// (with automine off, the next block mines it before a settlement
    /// bidding the market).
    pub async fn set_operator(
        &self,
        owner: Address,
        operator: Address,
        mined: bool,
    ) -> Result<(), DevnetError> {
        let input = TollgateSettlement::setOperatorCall {
            operator_: operator,
        }
        .abi_encode();
        let contract = self.deployment.settlement_contract;
        if mined {
            self.send_as(owner, contract, input).await
        } else {
            self.send_unmined_as(owner, contract, input, 10).await
        }
    }
}
