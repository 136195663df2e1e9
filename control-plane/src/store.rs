//! The event store: one SQL table of immutable events with a global, gap-free revision.
//!
//! PostgreSQL and SQLite are served by one code path through sqlx's `Any` driver; what differs
//! between them (schema files, how a writer takes the append lock) lives in [`Dialect`].
//! Revisions stay gap-free and in commit order with several writers because every append holds
//! an exclusive lock from reading the head revision until its commit.

mod migrate;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::ControlPlaneError;

const INSERT_EVENT: &str = include_str!("../queries/events/insert.sql");
const HEAD_REVISION: &str = include_str!("../queries/events/head.sql");
const EVENTS_IN_RANGE: &str = include_str!("../queries/events/range.sql");
const LIST_EVENTS: &str = include_str!("../queries/events/list.sql");
const FIND_REQUEST: &str = include_str!("../queries/requests/find.sql");
const INSERT_REQUEST: &str = include_str!("../queries/requests/insert.sql");

/// The SQL database behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    /// Tells the dialect from a database URL.
    pub fn from_url(url: &str) -> Result<Self, ControlPlaneError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "sqlite" => Ok(Self::Sqlite),
            _ => Err(ControlPlaneError::Config(format!(
                "database url must start with postgres:// or sqlite:, found {scheme:?}"
            ))),
        }
    }

    /// The statement that opens a write transaction.
    fn begin_write(self) -> &'static str {
        match self {
            Self::Postgres => "BEGIN",
            // Take SQLite's write lock at once, so that a read-then-write cannot fail half way.
            Self::Sqlite => "BEGIN IMMEDIATE",
        }
    }

    /// The statement, run first in a write transaction, that serialises appends until commit.
    fn append_lock(self) -> Option<&'static str> {
        match self {
            // EXCLUSIVE blocks other writers but not readers of committed events.
            Self::Postgres => Some("LOCK TABLE events IN EXCLUSIVE MODE"),
            Self::Sqlite => None,
        }
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub revision: u64,
    pub stream: String,
    pub stream_version: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
    pub actor: String,
    pub reason: String,
    pub request_id: String,
    pub recorded_at_ms: i64,
}

/// What a history query selects. Empty strings and zeros mean no bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub stream: String,
    pub stream_prefix: String,
    pub actor: String,
    pub since_ms: i64,
    pub until_ms: i64,
    /// Events with a revision above this one.
    pub after_revision: u64,
    /// Events up to and including this revision; 0: no bound.
    pub to_revision: u64,
    pub limit: u32,
}

/// The outcome recorded for a client request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub digest: Vec<u8>,
    pub revision: u64,
}

/// The SQL event store.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: AnyPool,
    dialect: Dialect,
}

impl EventStore {
    /// Connects to the database at `url` and brings its schema up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, ControlPlaneError> {
        let dialect = Dialect::from_url(url)?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *connection)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(ControlPlaneError::Database)?;
        let store = Self { pool, dialect };
        migrate::run(&store.pool, dialect).await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), ControlPlaneError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(ControlPlaneError::Database)?;
        Ok(())
    }

    /// Returns the latest committed revision, 0 for an empty store.
    pub async fn head_revision(&self) -> Result<u64, ControlPlaneError> {
        let head: i64 = sqlx::query_scalar(HEAD_REVISION)
            .fetch_one(&self.pool)
            .await
            .map_err(ControlPlaneError::Database)?;
        Ok(to_unsigned(head))
    }

    /// Returns the events with `after < revision <= up_to`, oldest first.
    pub async fn events_in_range(
        &self,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<StoredEvent>, ControlPlaneError> {
        fetch_events_in_range(&self.pool, after, up_to).await
    }

    /// Returns one page of the history, oldest first.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
    ) -> Result<Vec<StoredEvent>, ControlPlaneError> {
        let to_revision = if filter.to_revision == 0 {
            i64::MAX
        } else {
            to_signed(filter.to_revision)
        };
        let until_ms = if filter.until_ms == 0 {
            i64::MAX
        } else {
            filter.until_ms
        };
        sqlx::query(LIST_EVENTS)
            .bind(to_signed(filter.after_revision))
            .bind(to_revision)
            .bind(filter.stream.as_str())
            .bind(filter.stream_prefix.as_str())
            .bind(filter.actor.as_str())
            .bind(filter.since_ms)
            .bind(until_ms)
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(ControlPlaneError::Database)?
            .iter()
            .map(event_from_row)
            .collect()
    }

    /// Opens a write transaction that holds the append lock until it commits or is dropped.
    pub async fn begin_append(&self) -> Result<AppendTransaction, ControlPlaneError> {
        let mut transaction = self
            .pool
            .begin_with(self.dialect.begin_write())
            .await
            .map_err(ControlPlaneError::Database)?;
        if let Some(lock) = self.dialect.append_lock() {
            sqlx::query(lock)
                .execute(&mut *transaction)
                .await
                .map_err(ControlPlaneError::Database)?;
        }
        Ok(AppendTransaction { transaction })
    }
}

/// A write transaction holding the append lock. Dropping it rolls back.
pub struct AppendTransaction {
    transaction: sqlx::Transaction<'static, sqlx::Any>,
}

impl AppendTransaction {
    /// Returns the events committed after `revision`: those another writer added since.
    pub async fn events_after(
        &mut self,
        revision: u64,
    ) -> Result<Vec<StoredEvent>, ControlPlaneError> {
        fetch_events_in_range(&mut *self.transaction, revision, u64::MAX).await
    }

    /// Returns the outcome recorded for `request_id`, if any.
    pub async fn find_request(
        &mut self,
        request_id: &str,
    ) -> Result<Option<RecordedRequest>, ControlPlaneError> {
        let row = sqlx::query(FIND_REQUEST)
            .bind(request_id)
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(ControlPlaneError::Database)?;
        row.map(|row| {
            Ok(RecordedRequest {
                digest: row.try_get(0).map_err(ControlPlaneError::Database)?,
                revision: to_unsigned(row.try_get(1).map_err(ControlPlaneError::Database)?),
            })
        })
        .transpose()
    }

    /// Records the outcome of a request id.
    pub async fn record_request(
        &mut self,
        request_id: &str,
        request: &RecordedRequest,
        now_ms: i64,
    ) -> Result<(), ControlPlaneError> {
        sqlx::query(INSERT_REQUEST)
            .bind(request_id)
            .bind(request.digest.clone())
            .bind(to_signed(request.revision))
            .bind(now_ms)
            .execute(&mut *self.transaction)
            .await
            .map_err(ControlPlaneError::Database)?;
        Ok(())
    }

    /// Inserts events; their revisions must continue the head without a gap.
    pub async fn insert(&mut self, events: &[StoredEvent]) -> Result<(), ControlPlaneError> {
        for event in events {
            sqlx::query(INSERT_EVENT)
                .bind(to_signed(event.revision))
                .bind(event.stream.as_str())
                .bind(to_signed(event.stream_version))
                .bind(event.event_type.as_str())
                .bind(i32::try_from(event.schema_version).unwrap_or(i32::MAX))
                .bind(event.payload.clone())
                .bind(event.actor.as_str())
                .bind(event.reason.as_str())
                .bind(event.request_id.as_str())
                .bind(event.recorded_at_ms)
                .execute(&mut *self.transaction)
                .await
                .map_err(ControlPlaneError::Database)?;
        }
        Ok(())
    }

    pub async fn commit(self) -> Result<(), ControlPlaneError> {
        self.transaction
            .commit()
            .await
            .map_err(ControlPlaneError::Database)
    }
}

/// Reads the events with `after < revision <= up_to`, oldest first, through any executor.
async fn fetch_events_in_range<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    after: u64,
    up_to: u64,
) -> Result<Vec<StoredEvent>, ControlPlaneError> {
    sqlx::query(EVENTS_IN_RANGE)
        .bind(to_signed(after))
        .bind(to_signed(up_to))
        .fetch_all(executor)
        .await
        .map_err(ControlPlaneError::Database)?
        .iter()
        .map(event_from_row)
        .collect()
}

fn event_from_row(row: &AnyRow) -> Result<StoredEvent, ControlPlaneError> {
    let revision: i64 = row.try_get(0).map_err(ControlPlaneError::Database)?;
    let corrupt = |column: &str, error: sqlx::Error| ControlPlaneError::CorruptEvent {
        revision: to_unsigned(revision),
        reason: format!("column {column}: {error}"),
    };
    let stream_version: i64 = row.try_get(2).map_err(|e| corrupt("stream_version", e))?;
    let schema_version: i32 = row.try_get(4).map_err(|e| corrupt("schema_version", e))?;
    if revision <= 0 || stream_version <= 0 || schema_version <= 0 {
        return Err(ControlPlaneError::CorruptEvent {
            revision: to_unsigned(revision),
            reason: "revision, stream version and schema version must be positive".to_owned(),
        });
    }
    Ok(StoredEvent {
        revision: to_unsigned(revision),
        stream: row.try_get(1).map_err(|e| corrupt("stream", e))?,
        stream_version: to_unsigned(stream_version),
        event_type: row.try_get(3).map_err(|e| corrupt("event_type", e))?,
        schema_version: schema_version.unsigned_abs(),
        payload: row.try_get(5).map_err(|e| corrupt("payload", e))?,
        actor: row.try_get(6).map_err(|e| corrupt("actor", e))?,
        reason: row.try_get(7).map_err(|e| corrupt("reason", e))?,
        request_id: row.try_get(8).map_err(|e| corrupt("request_id", e))?,
        recorded_at_ms: row.try_get(9).map_err(|e| corrupt("recorded_at_ms", e))?,
    })
}

/// Converts a revision for SQL, which has signed 64-bit integers only.
fn to_signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
