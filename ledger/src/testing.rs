//! Test support (feature `test-support`): a fresh, migrated store per test.
//!
//! PostgreSQL tests each get their own database on the server named by
//! `TOLLGATE_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! dropped when the [`TestDb`] is dropped; SQLite tests get a file in a fresh
//! temporary folder. A missing PostgreSQL fails the test loudly — it never skips.
#![allow(clippy::expect_used)]

use std::path::PathBuf;

use sqlx::{Connection, Executor};

use crate::store::Backend;
use crate::Store;

/// The server every machine here runs; override to point elsewhere.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database that exists for one test.
pub struct TestDb {
    /// The URL the test's store (or server) connects to.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Postgres { admin_url: String, name: String },
    Sqlite { dir: PathBuf },
}

fn admin_url() -> String {
    std::env::var("TOLLGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

impl TestDb {
    /// Creates an empty database of the given kind (not yet migrated).
    pub async fn create(backend: Backend) -> TestDb {
        let unique = uuid::Uuid::now_v7().simple().to_string();
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("tollgate-test-{unique}"));
                std::fs::create_dir_all(&dir).expect("create temp dir");
                TestDb {
                    url: format!("sqlite://{}/tollgate.db", dir.display()),
                    cleanup: Cleanup::Sqlite { dir },
                }
            }
            Backend::Postgres => {
                let admin_url = admin_url();
                let name = format!("tollgate_test_{unique}");
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
                    panic!("PostgreSQL is required for this test and was not reachable at {admin_url}: {e}")
                });
                conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                let base = admin_url
                    .rsplit_once('/')
                    .map(|(b, _)| b)
                    .unwrap_or(&admin_url);
                TestDb {
                    url: format!("{base}/{name}"),
                    cleanup: Cleanup::Postgres { admin_url, name },
                }
            }
        }
    }

    /// A connected, migrated store on this database.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url, 8)
            .await
            .expect("connect to test store");
        store.migrate().await.expect("migrate test store");
        store
    }
}

/// Sets a wallet's credited total directly, to reach states (such as a
/// balance near the column's maximum) that would take thousands of credits.
pub async fn set_credited(
    store: &Store,
    wallet: &crate::WalletAddress,
    chain: crate::ChainId,
    credited: crate::Amount,
) {
    sqlx::query(
        "INSERT INTO balances (wallet, chain_id, credited_atomic, updated_at_ms) VALUES ($1, $2, $3, 0)
         ON CONFLICT (wallet, chain_id) DO UPDATE SET credited_atomic = excluded.credited_atomic",
    )
    .bind(wallet.to_lower_hex())
    .bind(chain.to_db().expect("chain id fits"))
    .bind(credited.to_db())
    .execute(store.pool())
    .await
    .expect("set credited balance");
}

/// Records in the store's migration table, for every migration revised in
/// its comments only, the checksum of its earlier text: the state of a
/// database migrated before the revision.
pub async fn record_earlier_migration_texts(store: &Store) {
    for (version, earlier) in crate::store::migrate::COMMENT_REVISIONS {
        set_migration_checksum(store, *version, &hex::decode(earlier).expect("hex")).await;
    }
}

/// Sets the checksum the store recorded for applied migration `version`.
pub async fn set_migration_checksum(store: &Store, version: i64, checksum: &[u8]) {
    let changed = sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2")
        .bind(checksum.to_vec())
        .bind(version)
        .execute(store.pool())
        .await
        .expect("set a migration's checksum")
        .rows_affected();
    assert_eq!(changed, 1, "migration {version} is applied");
}

/// Creates `api` key `id` with `budget` for `owner` on `chain` (an hour to
/// live, its token hash derived from its id), crediting the wallet `budget`
/// first so the funding check passes.
pub async fn create_funded_key(
    store: &Store,
    id: &crate::KeyId,
    owner: crate::WalletAddress,
    chain: crate::ChainId,
    budget: crate::Amount,
) -> crate::model::KeyRecord {
    let now = crate::time::now_ms();
    store
        .credit(&owner, chain, budget, "test", now)
        .await
        .expect("credit the key's wallet");
    store
        .create_key(
            &crate::model::NewKey {
                token_sha256: format!("hash-of-{id}"),
                id: id.clone(),
                wallet: owner,
                chain_id: chain,
                purpose: crate::model::Purpose::Api,
                session_id: None,
                name: "test".into(),
                budget_limit: budget,
                created_at_ms: now,
                expires_at_ms: now + 3_600_000,
                funds: crate::model::Funds::Prepaid,
            },
            1_000,
        )
        .await
        .expect("create a funded key")
}

/// A charge of `amount` on `key` with a fresh request id, recorded a
/// millisecond ago (so a settlement pass that starts now includes it).
pub fn test_charge(key: &crate::KeyId, amount: crate::Amount) -> crate::model::NewCharge {
    crate::model::NewCharge {
        request_id: crate::RequestId::generate(),
        key_id: key.clone(),
        model: "echo".into(),
        price_version: "v1".into(),
        input_tokens: 1,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        output_tokens: 1,
        amount,
        reported: Some((1, 1)),
        reported_cache: Some((0, 0)),
        created_at_ms: crate::time::now_ms() - 1,
        lease: None,
        client_request_id: None,
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop runs outside any runtime guarantee: use a thread of its own.
                let handle = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async move {
                        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                            let _ = conn
                                .execute(
                                    format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)
                                        .as_str(),
                                )
                                .await;
                        }
                    });
                });
                let _ = handle.join();
            }
        }
    }
}
