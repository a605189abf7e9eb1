//! Applying `migrations/` to a database, after carrying over the comment-only
//! revisions of migrations it already applied.
//!
//! sqlx records the SHA-384 of each migration it applies and refuses to
//! start when an applied migration's file no longer has that checksum, since
//! the schema it built may differ from the one the file builds now. Some
//! files changed after they shipped in their comments only. Each such file
//! lists here the checksum of every earlier text; a database that applied an
//! earlier text has its recorded checksum moved to the current one in the
//! same step that migrates it. Only those exact earlier checksums are moved:
//! any other difference still stops the start, as sqlx intends.

use sqlx::migrate::{Migrate, Migrator};
use sqlx::AnyPool;

use crate::StoreError;

/// (version, SHA-384 of an earlier text of that migration, in hex) for every
/// applied migration whose file changed in its comments only.
pub(crate) const COMMENT_REVISIONS: &[(i64, &str)] = &[
    (5, "2d09db4c31cf42add1738585cf24e3fe39f622bb676ff5434dd4c677ec9cc382d829fe1bc9ccc0373700311cc814d678"),
    (6, "e1c2edba4cb5736952a0e284a1370abc32f5448e62300eebca3d1e2863b86650b17d72187de5b5d36bb88c04c36862fa"),
    (8, "3122cdb24256de42dd47b1b44c77a5aedf621400117c27dd3aa9443900dd3fad8e91ebbb8c1a3dc244806a225a8cdbd5"),
    (11, "483e73e0e924843ecbe738fc3c0589e8d88b20a4b8b9a85b3cd26f649ca5155e0411b3306428f1b3af2ebed9f2b46814"),
];

/// Moves the recorded checksums of comment-only revisions to the files'
/// current ones, then applies every migration not yet applied.
pub(super) async fn run(migrator: &Migrator, pool: &AnyPool) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    conn.ensure_migrations_table().await?;
    for (version, earlier) in COMMENT_REVISIONS {
        let earlier = hex::decode(earlier).map_err(|_| bad_revision(*version))?;
        let current = migrator
            .iter()
            .find(|m| m.version == *version)
            .ok_or_else(|| bad_revision(*version))?;
        assert_ne!(
            earlier.as_slice(),
            &*current.checksum,
            "a revision changes the checksum"
        );
        sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
        )
        .bind(current.checksum.to_vec())
        .bind(*version)
        .bind(earlier)
        .execute(&mut *conn)
        .await?;
    }
    drop(conn);
    migrator.run(pool).await?;
    Ok(())
}

/// A [`COMMENT_REVISIONS`] entry that names no migration or is not hex: a
/// fault of this build, reported rather than skipped.
fn bad_revision(version: i64) -> StoreError {
    StoreError::Migrate(sqlx::migrate::MigrateError::VersionMissing(version))
}
