//! Storage of resource versions on SQLite or PostgreSQL, chosen by the database URL.
//!
//! The store speaks FHIR interactions (create, update, delete, read, vread, history), not SQL
//! operations. Every write — current row, history row, index rows, and the check that local
//! references resolve — is one transaction. Both engines run the same SQL text (sqlx's SQLite
//! driver accepts `$1` placeholders); what differs between them lives in [`Dialect`].
//!
//! Concurrency: a write replaces the current row only if its version is still the one read in
//! the same transaction (compare-and-swap), so concurrent writers never lose an update. SQLite
//! writes go through a single connection (SQLite has one writer anyway); PostgreSQL row locks and
//! advisory locks make the same guarantees across replicas. Nothing is kept in memory between
//! requests.

mod sql;

use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::fhir::registry::ResourceType;
use crate::fhir::validate::LocalReference;
use crate::fhir::{self, Millis};
use sql::{Dialect, POSTGRES, SQLITE};

/// How often a write is retried when a concurrent writer changed the resource first.
const WRITE_ATTEMPTS: usize = 8;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("version conflict")]
    VersionConflict,
    #[error("a resource with this id already exists")]
    Duplicate,
    #[error("the condition matched {0} resources")]
    MultipleMatches(usize),
    #[error("{} referenced resources do not exist", .0.len())]
    MissingReferences(Vec<LocalReference>),
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("database error")]
    Db(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::Unavailable(e)
            }
            sqlx::Error::Database(ref db) if db.is_unique_violation() => Self::Duplicate,
            other => Self::Db(other),
        }
    }
}

/// One stored version of a resource (or of its deletion).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Version {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: Millis,
    /// POST, PUT or DELETE: how this version came to be.
    pub method: String,
    /// The resource JSON as served; `None` when this version is a deletion.
    pub content: Option<String>,
}

impl Version {
    pub fn is_deleted(&self) -> bool {
        self.content.is_none()
    }
}

/// What a write did.
#[derive(Debug)]
pub enum Written {
    /// A new version was stored; `created` when the resource did not exist (or was deleted).
    Stored { version: Version, created: bool },
    /// Conditional create: the resource that matched the condition, left unchanged.
    Matched(Version),
    /// Delete of a resource that does not exist or is already deleted: nothing changed.
    Unchanged,
}

/// A search condition of conditional create (`If-None-Exist`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Id(String),
    Token {
        param: String,
        system: SystemMatch,
        code: String,
    },
}

/// The system part of a token search: `code` (any), `|code` (none), `system|code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMatch {
    Any,
    Absent,
    Is(String),
}

/// Where a history request looks.
#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(ResourceType),
    Instance(ResourceType, String),
}

/// The position after which a history page starts: the last entry of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCursor {
    pub last_updated: Millis,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
}

/// A history request: newest first, from `since` on, after `cursor`, at most `count` entries.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    pub since: Option<Millis>,
    pub cursor: Option<HistoryCursor>,
    pub count: u32,
}

/// A change a write makes.
enum Change {
    Create {
        resource: Map<String, Value>,
        condition: Option<Condition>,
    },
    Update {
        resource: Map<String, Value>,
        if_match: Option<i64>,
    },
    Delete,
}

enum Db {
    Sqlite {
        reader: SqlitePool,
        writer: SqlitePool,
    },
    Postgres(PgPool),
}

/// Runs `$body` against the backend's pool for `$role` (reader or writer), with the backend's
/// [`Dialect`] bound to `$dialect`. The body is compiled once per engine, so it uses concrete
/// sqlx types and needs no generic database bounds.
macro_rules! on_db {
    ($store:expr, $role:ident, |$pool:ident, $dialect:ident| $body:expr) => {
        match &$store.db {
            Db::Sqlite { $role: $pool, .. } => {
                let $dialect: &Dialect = &SQLITE;
                $body
            }
            Db::Postgres($pool) => {
                let $dialect: &Dialect = &POSTGRES;
                $body
            }
        }
    };
}

/// The resource store.
pub struct Store {
    db: Db,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let engine = match self.db {
            Db::Sqlite { .. } => "sqlite",
            Db::Postgres(_) => "postgres",
        };
        f.debug_struct("Store").field("engine", &engine).finish()
    }
}

impl Store {
    /// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://…`) without migrating.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let acquire = Duration::from_secs(5);
        let db = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit the client was told about survives power loss, not only a crash.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5));
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(acquire)
                .connect_with(options.clone())
                .await?;
            let reader = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(acquire)
                .connect_with(options.read_only(true))
                .await?;
            Db::Sqlite { reader, writer }
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(acquire)
                .connect_with(options)
                .await?;
            Db::Postgres(pool)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(Self { db })
    }

    /// Applies the engine's migrations (idempotent; PostgreSQL serialises concurrent replicas).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite { writer, .. } => sqlx::migrate!("migrations/sqlite").run(writer).await?,
            Db::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_db!(self, reader, |pool, _d| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// The current version of a resource (a deletion when it was deleted), if it ever existed.
    #[tracing::instrument(skip_all, fields(fhir.type = %ty, fhir.id = %id))]
    pub async fn read(&self, ty: ResourceType, id: &str) -> Result<Option<Version>, StoreError> {
        Ok(on_db!(self, reader, |pool, _d| {
            sqlx::query_as(sql::SELECT_CURRENT)
                .bind(ty.as_str())
                .bind(id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// One version of a resource.
    #[tracing::instrument(skip_all, fields(fhir.type = %ty, fhir.id = %id))]
    pub async fn vread(
        &self,
        ty: ResourceType,
        id: &str,
        version_id: i64,
    ) -> Result<Option<Version>, StoreError> {
        Ok(on_db!(self, reader, |pool, _d| {
            sqlx::query_as(sql::SELECT_VERSION)
                .bind(ty.as_str())
                .bind(id)
                .bind(version_id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// History entries, newest first.
    pub async fn history(&self, q: &HistoryQuery) -> Result<Vec<Version>, StoreError> {
        let since = q.since.unwrap_or(Millis::MIN);
        let c = q.cursor.clone().unwrap_or(HistoryCursor {
            last_updated: Millis::MAX,
            resource_type: String::new(),
            id: String::new(),
            version_id: 0,
        });
        let limit = i64::from(q.count);
        Ok(on_db!(self, reader, |pool, _d| {
            let query = match &q.scope {
                HistoryScope::System => sqlx::query_as(sql::HISTORY_SYSTEM),
                HistoryScope::Type(ty) => sqlx::query_as(sql::HISTORY_TYPE).bind(ty.as_str()),
                HistoryScope::Instance(ty, id) => sqlx::query_as(sql::HISTORY_INSTANCE)
                    .bind(ty.as_str())
                    .bind(id),
            };
            query
                .bind(since)
                .bind(c.last_updated)
                .bind(&c.resource_type)
                .bind(&c.id)
                .bind(c.version_id)
                .bind(limit)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Creates a resource with the server-assigned `id`; with a `condition`, only if no resource
    /// matches it (R4 http.html#ccreate), atomically with respect to concurrent creates.
    pub async fn create(
        &self,
        ty: ResourceType,
        id: &str,
        resource: Map<String, Value>,
        condition: Option<Condition>,
        references: &[LocalReference],
    ) -> Result<Written, StoreError> {
        self.write(
            ty,
            id,
            Change::Create {
                resource,
                condition,
            },
            references,
        )
        .await
    }

    /// Updates (or creates, with the client's id) a resource; `if_match` is the version the
    /// client expects to replace.
    pub async fn update(
        &self,
        ty: ResourceType,
        id: &str,
        resource: Map<String, Value>,
        if_match: Option<i64>,
        references: &[LocalReference],
    ) -> Result<Written, StoreError> {
        self.write(ty, id, Change::Update { resource, if_match }, references)
            .await
    }

    /// Deletes a resource by storing a deletion version.
    pub async fn delete(&self, ty: ResourceType, id: &str) -> Result<Written, StoreError> {
        self.write(ty, id, Change::Delete, &[]).await
    }

    #[tracing::instrument(skip_all, fields(fhir.type = %ty, fhir.id = %id))]
    async fn write(
        &self,
        ty: ResourceType,
        id: &str,
        change: Change,
        references: &[LocalReference],
    ) -> Result<Written, StoreError> {
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(done) = self.try_write(ty, id, &change, references).await? {
                return Ok(done);
            }
        }
        tracing::warn!(fhir.type = %ty, fhir.id = %id, "write lost every compare-and-swap race");
        Err(StoreError::VersionConflict)
    }

    /// One attempt; `Ok(None)` when a concurrent writer got there first and the write may be
    /// retried.
    async fn try_write(
        &self,
        ty: ResourceType,
        id: &str,
        change: &Change,
        references: &[LocalReference],
    ) -> Result<Option<Written>, StoreError> {
        let now = fhir::now_millis();
        on_db!(self, writer, |pool, dialect| {
            let mut tx = pool.begin_with(dialect.begin_write).await?;

            if let Change::Create {
                condition: Some(condition),
                ..
            } = change
            {
                sqlx::query(dialect.lock_condition)
                    .bind(condition_lock_key(ty, condition))
                    .execute(&mut *tx)
                    .await?;
                let matches: Vec<(String,)> = match condition {
                    Condition::Id(wanted) => {
                        sqlx::query_as(sql::MATCH_ID)
                            .bind(ty.as_str())
                            .bind(wanted)
                            .fetch_all(&mut *tx)
                            .await?
                    }
                    Condition::Token {
                        param,
                        system,
                        code,
                    } => {
                        let (any, system) = match system {
                            SystemMatch::Any => (true, None),
                            SystemMatch::Absent => (false, None),
                            SystemMatch::Is(s) => (false, Some(s.as_str())),
                        };
                        sqlx::query_as(sql::MATCH_TOKEN)
                            .bind(ty.as_str())
                            .bind(param)
                            .bind(code)
                            .bind(any)
                            .bind(system)
                            .fetch_all(&mut *tx)
                            .await?
                    }
                };
                match matches.as_slice() {
                    [] => {}
                    [(found,)] => {
                        let version: Version = sqlx::query_as(sql::SELECT_CURRENT)
                            .bind(ty.as_str())
                            .bind(found)
                            .fetch_one(&mut *tx)
                            .await?;
                        return Ok(Some(Written::Matched(version)));
                    }
                    many => return Err(StoreError::MultipleMatches(many.len())),
                }
            }

            let current: Option<(i64, bool)> = sqlx::query_as(dialect.select_current_for_write)
                .bind(ty.as_str())
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let (resource, method, new_version) = match (change, current) {
                (Change::Create { .. }, Some(_)) => return Err(StoreError::Duplicate),
                (Change::Create { resource, .. }, None) => (Some(resource), "POST", 1),
                (
                    Change::Update {
                        if_match: Some(expected),
                        ..
                    },
                    cur,
                ) if cur.map(|c| c.0) != Some(*expected) => {
                    return Err(StoreError::VersionConflict)
                }
                (Change::Update { resource, .. }, cur) => {
                    (Some(resource), "PUT", cur.map_or(1, |c| c.0 + 1))
                }
                (Change::Delete, None | Some((_, true))) => return Ok(Some(Written::Unchanged)),
                (Change::Delete, Some((v, false))) => (None, "DELETE", v + 1),
            };

            let mut missing = Vec::new();
            for r in references
                .iter()
                .filter(|r| !(r.resource_type == ty.as_str() && r.id == id))
            {
                let found: Option<(i64,)> = sqlx::query_as(dialect.reference_exists)
                    .bind(&r.resource_type)
                    .bind(&r.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if found.is_none() {
                    missing.push(r.clone());
                }
            }
            if !missing.is_empty() {
                return Err(StoreError::MissingReferences(missing));
            }

            let content = resource.map(|r| {
                let mut r = r.clone();
                fhir::stamp(&mut r, id, new_version, now);
                Value::Object(r).to_string()
            });
            let replaced = match current {
                None => sqlx::query(sql::INSERT_CURRENT),
                Some(_) => sqlx::query(sql::UPDATE_CURRENT),
            }
            .bind(ty.as_str())
            .bind(id)
            .bind(new_version)
            .bind(now)
            .bind(content.is_none())
            .bind(content.as_deref())
            .bind(current.map_or(0, |c| c.0))
            .execute(&mut *tx)
            .await?;
            if replaced.rows_affected() != 1 {
                // A concurrent writer changed the resource between our read and our write.
                if matches!(
                    change,
                    Change::Update {
                        if_match: Some(_),
                        ..
                    }
                ) {
                    return Err(StoreError::VersionConflict);
                }
                return Ok(None);
            }
            sqlx::query(sql::INSERT_HISTORY)
                .bind(ty.as_str())
                .bind(id)
                .bind(new_version)
                .bind(now)
                .bind(method)
                .bind(content.as_deref())
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::DELETE_TOKENS)
                .bind(ty.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if let Some(resource) = resource {
                for (param, system, code) in identifier_tokens(resource) {
                    sqlx::query(sql::INSERT_TOKEN)
                        .bind(ty.as_str())
                        .bind(id)
                        .bind(param)
                        .bind(system)
                        .bind(code)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            let version = Version {
                resource_type: ty.as_str().to_owned(),
                id: id.to_owned(),
                version_id: new_version,
                last_updated: now,
                method: method.to_owned(),
                content,
            };
            Ok(Some(Written::Stored {
                version,
                created: current.is_none_or(|c| c.1),
            }))
        })
    }
}

/// Token index values of `identifier` (Identifier.system | Identifier.value).
fn identifier_tokens(resource: &Map<String, Value>) -> Vec<(&'static str, Option<&str>, &str)> {
    let identifiers = match resource.get("identifier") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(single @ Value::Object(_)) => vec![single],
        _ => Vec::new(),
    };
    identifiers
        .into_iter()
        .filter_map(|i| {
            let code = i.get("value")?.as_str()?;
            Some(("identifier", i.get("system").and_then(Value::as_str), code))
        })
        .collect()
}

/// A stable 64-bit key (FNV-1a) for the advisory lock that serialises conditional creates with
/// the same condition across connections and replicas.
fn condition_lock_key(ty: ResourceType, condition: &Condition) -> i64 {
    let text = format!("{ty}?{condition:?}");
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as i64
}
