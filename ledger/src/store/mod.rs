//! [`Store`]: one API over PostgreSQL and SQLite.
//!
//! Queries go through sqlx's `Any` driver with runtime-checked SQL written in
//! the dialect both databases share (`$1` placeholders, `ON CONFLICT`,
//! `RETURNING`, BIGINT/TEXT columns). The same store test suite runs against
//! both databases, which is what keeps that promise.
//!
//! Each submodule holds the statements of one concern, one function per
//! statement or per transaction:
//!
//! * [`balances`] — prepaid balances, credits, the funding check.
//! * [`keys`] — Compose keys.
//! * [`sessions`] — SIWE nonces and sessions.
//! * [`batches`] — on-chain settlement batches: claimed charges, attempts,
//!   confirming and re-opened batches, each payer's outcome.
//! * [`outbox`] — each chain's operator account (nonce, batch number,
//!   settler, pause) and the signed transactions, persisted before broadcast.
//! * [`chain`] — both of those under one path.
//! * [`charges`] — the charges written once per paid call.
//! * [`charge_connection`] — the same charges' common case, written by a
//!   thread through a SQLite connection of its own (the embedded mode's
//!   group commit).
//! * [`leases`] — budget leases: what each gateway node may spend of a key.
//! * [`payers`] — payers held back by the `evm` settler, and what a payer's
//!   funds on chain still cover of new leases.
//! * [`settlement`] — the `ledger` mode's settlement: batches of charges
//!   debited from prepaid balances.
//! * [`studio`] — Studio accounts, projects and API keys.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use crate::{Amount, ChainId, StoreError, WalletAddress};

pub mod balances;
pub mod batches;
pub mod charge_connection;
pub mod charges;
pub mod keys;
pub mod leases;
pub(crate) mod migrate;
pub mod outbox;
pub mod payers;
pub mod sessions;
pub mod settlement;
pub mod studio;

/// The store's side of settlement on an EVM chain, under one path: its
/// batches ([`batches`]) and its operator accounts and outbox ([`outbox`]).
pub mod chain {
    pub use super::batches::*;
    pub use super::outbox::*;
}

/// The migrations in `migrations/`, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How long a statement waits for SQLite's write lock before failing. Writers
/// hold it for one short transaction, so seconds mean something is wrong.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// How long a caller waits for a free pooled connection.
const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// The database a store URL names: `sqlite:…` or `postgres(ql)://…`.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// How long a key's unspent budget stays committed against its wallet after
/// the key stops (revoked, superseded, expired) when nobody reports its calls
/// drained: the longest a hold can live. The binary sets it from its
/// timeouts ([`Store::with_hold_max_ms`]); this default matches theirs.
pub const HOLD_MAX_MS_DEFAULT: i64 = 630_000;

/// The system of record. Cheap to clone: it shares one connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    hold_max_ms: i64,
    /// The gateway node this store handle serves (budget leases).
    node_id: std::sync::Arc<str>,
    /// This node's charges reach the ledger through a queue: its own leases
    /// may still cover charges on their way.
    charges_queued: bool,
    /// The SQLite file, for connections of its own outside the pool
    /// ([`Store::charge_connection`]); `None` on PostgreSQL.
    sqlite_path: Option<std::sync::Arc<std::path::Path>>,
}

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://…`) with at most
    /// `max_connections` pooled connections. A SQLite file and its folder are
    /// created when missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend =
            Backend::of_url(url).ok_or_else(|| StoreError::UnsupportedUrl(redact_url(url)))?;
        let (url, sqlite_path) = match backend {
            Backend::Sqlite => {
                let (url, path) = prepare_sqlite_url(url)?;
                (url, Some(std::sync::Arc::from(path)))
            }
            Backend::Postgres => (url.to_owned(), None),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        // One plain connection first: an unreachable server or a file that
        // is not a database is said once, as the OS or SQLite says it
        // ("Connection refused", "file is not a database"), at once — not
        // as the pool's "timed out" after its acquire timeout, nor logged
        // again on each of its retries.
        let first = async {
            use sqlx::Connection;
            let mut conn = sqlx::AnyConnection::connect_with(&options).await?;
            if backend == Backend::Sqlite {
                conn.execute("PRAGMA schema_version").await?;
            }
            conn.close().await
        };
        match tokio::time::timeout(POOL_ACQUIRE_TIMEOUT, first).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => {
                return Err(StoreError::Setup(format!(
                    "no answer from {} within {} s",
                    redact_url(&url),
                    POOL_ACQUIRE_TIMEOUT.as_secs()
                )))
            }
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the one writer; the busy
                        // timeout makes writers queue instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute(
                            format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Store {
            pool,
            backend,
            hold_max_ms: HOLD_MAX_MS_DEFAULT,
            node_id: std::sync::Arc::from(""),
            charges_queued: false,
            sqlite_path,
        })
    }

    /// Sets the longest a hold on a key can live (a call's bound plus its
    /// slack): a stopped key's unspent budget stays committed that long
    /// unless its calls are reported drained (invariant 7).
    pub fn with_hold_max_ms(mut self, hold_max_ms: i64) -> Store {
        self.hold_max_ms = hold_max_ms.max(0);
        self
    }

    /// Names the gateway node this handle serves: a key it saw drained is
    /// freed at once only when no other node's lease covers any of it.
    pub fn with_node_id(mut self, node_id: &str) -> Store {
        self.node_id = std::sync::Arc::from(node_id);
        self
    }

    /// See [`Store::with_node_id`] ("" when none was set).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's charges go through a queue (RabbitMQ): when it sees a
    /// stopped key drained, charges it already reported may still be on
    /// their way to the ledger, so the key is freed at once only when no
    /// lease at all — its own included — covers anything.
    pub fn with_charges_queued(mut self) -> Store {
        self.charges_queued = true;
        self
    }

    /// The node whose leases a drained key may be freed under (see
    /// `keys::release_funds`): none when this node's charges are queued.
    pub(crate) fn releasing_node(&self) -> &str {
        if self.charges_queued {
            ""
        } else {
            &self.node_id
        }
    }

    /// See [`Store::with_hold_max_ms`].
    pub fn hold_max_ms(&self) -> i64 {
        self.hold_max_ms
    }

    /// The `$3` of [`keys::COMMITTED_UNTIL_CAPPED`] for a key stopped now: a
    /// hold taken just before the stop can live until then.
    pub(crate) fn stopped_committed_until_ms(&self) -> i64 {
        crate::time::now_ms().saturating_add(self.hold_max_ms)
    }

    /// Applies every migration not yet applied. Safe to run concurrently with
    /// itself and on every start.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrate::run(&MIGRATOR, &self.pool).await
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Makes sure the SQLite file's folder exists and asks for the file to be
/// created when missing (`mode=rwc`); answers the URL and the file's path.
fn prepare_sqlite_url(url: &str) -> Result<(String, std::path::PathBuf), StoreError> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::Setup(
            "store.url must name a SQLite file (the ledger must survive restarts)".into(),
        ));
    }
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Setup(format!("cannot create folder {}: {e}", dir.display()))
            })?;
        }
    }
    private_file(std::path::Path::new(path))?;
    let url = if rest.contains("mode=") {
        format!("sqlite://{rest}")
    } else if rest.contains('?') {
        format!("sqlite://{rest}&mode=rwc")
    } else {
        format!("sqlite://{rest}?mode=rwc")
    };
    Ok((url, std::path::PathBuf::from(path)))
}

/// The ledger is private: its file is created 0600 before SQLite opens it
/// (SQLite gives its `-wal` and `-shm` files the database file's mode), and
/// an existing file and its companions are made 0600 by path. An existing
/// file is never opened here: closing any descriptor of a database file
/// drops every POSIX lock this process's SQLite connections hold on it.
#[cfg(unix)]
fn private_file(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let setup = |e: std::io::Error| StoreError::Setup(format!("{}: {e}", path.display()));
    if !path.exists() {
        match std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            // Another process made it first: it is chmodded below.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(setup(e)),
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(setup)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_file(_path: &std::path::Path) -> Result<(), StoreError> {
    Ok(())
}

/// A store URL fit for logs and errors: any password is replaced.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

// ---- row decoding helpers shared by the submodules ----

pub(crate) fn get_i64(row: &AnyRow, column: &str) -> Result<i64, StoreError> {
    Ok(row.try_get::<i64, _>(column)?)
}

pub(crate) fn get_opt_i64(row: &AnyRow, column: &str) -> Result<Option<i64>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(column)?)
}

pub(crate) fn get_string(row: &AnyRow, column: &str) -> Result<String, StoreError> {
    Ok(row.try_get::<String, _>(column)?)
}

pub(crate) fn get_opt_string(row: &AnyRow, column: &str) -> Result<Option<String>, StoreError> {
    Ok(row.try_get::<Option<String>, _>(column)?)
}

/// A text column parsed into a typed value (an id, an enum); a value that
/// does not parse means the row is corrupt.
pub(crate) fn get_parsed<T>(
    row: &AnyRow,
    column: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, StoreError> {
    let text = get_string(row, column)?;
    parse(&text).ok_or_else(|| StoreError::Corrupt(format!("{column} {text:?}")))
}

/// As [`get_parsed`], for a nullable column.
pub(crate) fn get_opt_parsed<T>(
    row: &AnyRow,
    column: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, StoreError> {
    get_opt_string(row, column)?
        .map(|text| parse(&text).ok_or_else(|| StoreError::Corrupt(format!("{column} {text:?}"))))
        .transpose()
}

pub(crate) fn get_amount(row: &AnyRow, column: &str) -> Result<Amount, StoreError> {
    Amount::from_db(get_i64(row, column)?)
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn get_wallet(row: &AnyRow, column: &str) -> Result<WalletAddress, StoreError> {
    get_string(row, column)?
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn get_chain(row: &AnyRow, column: &str) -> Result<ChainId, StoreError> {
    u64::try_from(get_i64(row, column)?)
        .map(ChainId)
        .map_err(|_| StoreError::Corrupt(format!("{column}: negative chain id")))
}

pub(crate) fn get_u32(row: &AnyRow, column: &str) -> Result<u32, StoreError> {
    u32_in_range(get_i64(row, column)?, column)
}

pub(crate) fn get_opt_u32(row: &AnyRow, column: &str) -> Result<Option<u32>, StoreError> {
    get_opt_i64(row, column)?
        .map(|value| u32_in_range(value, column))
        .transpose()
}

fn u32_in_range(value: i64, column: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column}: out of range")))
}

pub(crate) fn chain_to_db(chain: ChainId) -> Result<i64, StoreError> {
    chain
        .to_db()
        .ok_or_else(|| StoreError::Setup(format!("chain id {chain} does not fit the store")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("sqlite://data/t.db"), "sqlite://data/t.db");
    }
}
