//! Numbered schema migrations, applied at start inside one locked transaction, so that several
//! control planes starting together apply each migration once.

use sqlx::AnyPool;

use super::Dialect;
use crate::error::ControlPlaneError;

/// A migration: its number, name and the SQL of each dialect.
struct Migration {
    version: i64,
    name: &'static str,
    postgres: &'static str,
    sqlite: &'static str,
}

const MIGRATIONS: [Migration; 1] = [Migration {
    version: 1,
    name: "events",
    postgres: include_str!("../../migrations/postgres/0001_events.sql"),
    sqlite: include_str!("../../migrations/sqlite/0001_events.sql"),
}];

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at_ms BIGINT NOT NULL)";

/// Applies every migration the database does not have yet.
///
/// Refuses a database whose schema is newer than this binary knows: running old code on it
/// could misread events.
pub(super) async fn run(pool: &AnyPool, dialect: Dialect) -> Result<(), ControlPlaneError> {
    let mut transaction = pool
        .begin_with(dialect.begin_write())
        .await
        .map_err(ControlPlaneError::Database)?;
    if dialect == Dialect::Postgres {
        // A transaction-scoped advisory lock; selecting a constant avoids decoding `void`.
        sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(4242001)) AS migration_lock")
            .execute(&mut *transaction)
            .await
            .map_err(ControlPlaneError::Database)?;
    }
    sqlx::query(CREATE_MIGRATIONS_TABLE)
        .execute(&mut *transaction)
        .await
        .map_err(ControlPlaneError::Database)?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&mut *transaction)
        .await
        .map_err(ControlPlaneError::Database)?;
    let newest_known = MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(newer) = applied.iter().find(|version| **version > newest_known) {
        return Err(ControlPlaneError::Config(format!(
            "database schema version {newer} is newer than this heimdall knows ({newest_known}); \
             upgrade heimdall"
        )));
    }
    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let script = match dialect {
            Dialect::Postgres => migration.postgres,
            Dialect::Sqlite => migration.sqlite,
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(&mut *transaction)
            .await
            .map_err(ControlPlaneError::Database)?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
        )
        .bind(migration.version)
        .bind(migration.name)
        .bind(crate::clock::now_ms())
        .execute(&mut *transaction)
        .await
        .map_err(ControlPlaneError::Database)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    transaction
        .commit()
        .await
        .map_err(ControlPlaneError::Database)
}
