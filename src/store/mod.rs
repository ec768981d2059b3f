//! Storage of resource versions on SQLite or PostgreSQL, chosen by the database URL.
//!
//! The store speaks FHIR interactions (create, update, delete, read, vread, history), not SQL
//! operations. Every write — current row, history row, index rows, and the check that local
//! references resolve — is one transaction. Both engines run the same SQL text (sqlx's SQLite
//! driver accepts `$1` placeholders); what differs between them lives in [`Dialect`].
//!
//! Concurrency: a write replaces the current row only if its version is still the one read in
//! the same transaction (compare-and-swap), so concurrent writers never lose an update. SQLite
//! writes go through a single connection (SQLite has one writer anyway), committed in groups
//! (see `group`); PostgreSQL row locks and advisory locks make the same guarantees across
//! replicas. Nothing is kept in memory between requests.

mod audit;
mod checkpoint;
mod group;
mod outbox;
pub mod search_sql;
mod sql;
mod write;

pub use audit::{BrokenLink, ChainReport};
pub use outbox::Notification;
pub use write::{AuditIndex, Change, Contended, Expect, WriteTx, Written, WRITE_ATTEMPTS};

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::auth::consent::ConsentRule;
use crate::auth::labels::Label;
use crate::fhir::registry::ResourceType;
use crate::fhir::search::index::IndexEntry;
use crate::fhir::search::query::{Filter, SearchQuery};
use crate::fhir::search::INDEX_VERSION;
use crate::fhir::validate::LocalReference;
use crate::fhir::{self, Millis};
use search_sql::{Bind, Compiler};
use sql::{Dialect, POSTGRES, SQLITE};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("version conflict")]
    VersionConflict,
    #[error("a resource with this id already exists")]
    Duplicate,
    #[error("the condition matched {0} resources")]
    MultipleMatches(usize),
    /// Change number `change` of a transaction (0 for the first) references resources that do
    /// not exist.
    #[error("{} referenced resources do not exist", missing.len())]
    MissingReferences { change: usize, missing: Vec<LocalReference> },
    /// Change number `change` deleted a resource that `holder` (`Type/id`) still references.
    #[error("the resource is still referenced")]
    Referenced { change: usize, holder: String },
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("unsupported database URL (expected sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// Concurrent writers kept colliding (lost compare-and-swap races, deadlock or
    /// serialisation victims) after every retry.
    #[error("too much contention on this resource")]
    Contention,
    #[error("stored content could not be read")]
    Corrupt,
    /// The audit trail could not record a request, so the request is refused (fail closed).
    #[error("the audit trail is unavailable")]
    AuditUnavailable,
    /// The write was part of a group commit (SQLite) that failed.
    #[error("the group of writes this one was committed with could not be committed")]
    GroupFailed,
    #[error("database error")]
    Db(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// The database's own error code (SQLSTATE or SQLite code), for logs: never row contents.
    pub fn code(&self) -> Option<String> {
        match self {
            Self::Db(sqlx::Error::Database(db)) | Self::Unavailable(sqlx::Error::Database(db)) => {
                db.code().map(|c| c.into_owned())
            }
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => Self::Unavailable(e),
            sqlx::Error::Database(ref db) if db.is_unique_violation() => Self::Duplicate,
            sqlx::Error::Database(ref db) => match db.code().as_deref() {
                // PostgreSQL deadlock_detected and serialization_failure: the write may be retried.
                Some("40P01" | "40001") => Self::Contention,
                // SQLite BUSY or LOCKED (with extended codes) after the busy timeout.
                Some(code) if code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)) => Self::Unavailable(e),
                _ => Self::Db(e),
            },
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

/// What a write stores besides the resource: the local references that must resolve, and the
/// index rows of the new version.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteExtras<'a> {
    pub references: &'a [LocalReference],
    pub index: &'a [IndexEntry],
    /// A Consent's rules, replacing those of its previous version.
    pub consent: &'a [ConsentRule],
    /// Security labels added to the content as it is stored.
    pub labels: &'a [Label],
}

pub use crate::fhir::registry::Derived;

impl<'a> From<&'a Derived> for WriteExtras<'a> {
    fn from(d: &'a Derived) -> Self {
        WriteExtras { references: &d.references, index: &d.index, consent: &d.consent, labels: &d.labels }
    }
}

/// How much counting a search does for `Bundle.total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    None,
    /// The number of matches when they all fit on this page; nothing otherwise.
    IfComplete,
    /// Count matches up to this many; more, and the total is left out.
    UpTo(i64),
    All,
}

/// One page of search results.
#[derive(Debug)]
pub struct SearchPage {
    pub matches: Vec<Version>,
    /// The cursor of the next page, when more may follow.
    pub next: Option<String>,
    /// The cursor of the previous page, when this is not the first.
    pub previous: Option<String>,
    pub total: Option<i64>,
}

/// A search result row: a version and its position in the sort order.
#[derive(sqlx::FromRow)]
struct SearchRow {
    #[sqlx(flatten)]
    version: Version,
    sort_key: String,
}

/// Binds the values of a compiled statement to a query (`sqlx::query` or `query_as`).
///
/// Search statements run unprepared (`persistent(false)`): their text varies with the request,
/// and a cached PostgreSQL statement switches to a generic plan that cannot tell a selective
/// value (one patient) from a common one (`status=active`).
macro_rules! bind_all {
    ($query:expr, $sql:expr) => {{
        let mut q = $query;
        for b in &$sql.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.as_str()),
                Bind::OptText(s) => q.bind(s.as_deref()),
                Bind::Int(i) => q.bind(*i),
                Bind::Float(f) => q.bind(*f),
                Bind::OptInt(i) => q.bind(*i),
                Bind::OptFloat(f) => q.bind(*f),
                Bind::Bool(b) => q.bind(*b),
            };
        }
        q
    }};
}
pub(crate) use bind_all;

enum Db {
    Sqlite { reader: SqlitePool, writer: SqlitePool, lane: group::Lane },
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

pub(crate) use on_db;

/// The resource store.
pub struct Store {
    db: Db,
    /// Wakes this process's audit chain linker when a write has queued AuditEvents (a local
    /// nudge: the queue itself is in the database, and any replica's linker empties it).
    linker: Arc<tokio::sync::Notify>,
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
            // The writer keeps its statement journals in memory: every multi-row statement and
            // every savepoint of a group commit journals the pages it changes, which in a temporary
            // file cost a system call per page. They hold at most the pages one write changes.
            // Readers keep the default, so that a large sort may still spill to disk.
            // The writer leaves its checkpoints to a connection of its own (see
            // [`checkpoint`]) up to a backstop.
            //
            // Neither pool pings a connection before handing it out (sqlx's default): an
            // in-process connection cannot have dropped, and the ping cost a round trip to its
            // thread on every request.
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(acquire)
                .test_before_acquire(false)
                .connect_with(
                    options
                        .clone()
                        .pragma("temp_store", "memory")
                        .pragma("wal_autocheckpoint", checkpoint::BACKSTOP_PAGES.to_string()),
                )
                .await?;
            let reader = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(acquire)
                .test_before_acquire(false)
                .connect_with(options.clone().read_only(true))
                .await?;
            let checkpoints = checkpoint::Checkpoints::start(options).await?;
            let lane = group::Lane::new(writer.clone(), acquire, checkpoints);
            Db::Sqlite { reader, writer, lane }
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
        Ok(Self { db, linker: Arc::default() })
    }

    /// Applies the engine's migrations (idempotent; PostgreSQL serialises concurrent replicas).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite { writer, .. } => sqlx::migrate!("migrations/sqlite").run(writer).await?,
            Db::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Refreshes the query planner's statistics where the engine does not do it by itself:
    /// SQLite's `PRAGMA optimize` (cheap; analyses only tables whose statistics are stale).
    /// PostgreSQL's autovacuum keeps its own statistics.
    pub async fn optimize(&self) -> Result<(), StoreError> {
        if let Db::Sqlite { writer, .. } = &self.db {
            sqlx::query("PRAGMA optimize=0x10002").execute(writer).await?;
        }
        Ok(())
    }

    /// Whether writes link their AuditEvents into the chain themselves
    /// ([`sql::Dialect::link_at_commit`]), so that no linker is needed.
    pub fn links_at_commit(&self) -> bool {
        on_db!(self, reader, |_pool, dialect| dialect.link_at_commit)
    }

    /// How many write transactions can make progress at once: one on SQLite (one writer
    /// connection), several on PostgreSQL.
    pub fn concurrent_writers(&self) -> usize {
        match self.db {
            Db::Sqlite { .. } => 1,
            Db::Postgres(_) => 4,
        }
    }

    /// Open and idle connections of the pool that serves reads (SQLite's readers; PostgreSQL's
    /// one pool).
    pub fn pool_usage(&self) -> (u32, usize) {
        match &self.db {
            Db::Sqlite { reader, .. } => (reader.size(), reader.num_idle()),
            Db::Postgres(pool) => (pool.size(), pool.num_idle()),
        }
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
            sqlx::query_as(sql::SELECT_CURRENT).bind(ty.as_str()).bind(id).fetch_optional(pool).await?
        }))
    }

    /// One version of a resource.
    #[tracing::instrument(skip_all, fields(fhir.type = %ty, fhir.id = %id))]
    pub async fn vread(&self, ty: ResourceType, id: &str, version_id: i64) -> Result<Option<Version>, StoreError> {
        Ok(on_db!(self, reader, |pool, _d| {
            sqlx::query_as(sql::SELECT_VERSION).bind(ty.as_str()).bind(id).bind(version_id).fetch_optional(pool).await?
        }))
    }

    /// History entries, newest first.
    #[tracing::instrument(skip_all)]
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
                HistoryScope::Instance(ty, id) => sqlx::query_as(sql::HISTORY_INSTANCE).bind(ty.as_str()).bind(id),
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

    /// One page of a search on `ty`, after the position `after` (from a previous page's `next`).
    #[tracing::instrument(skip_all, fields(fhir.type = %ty))]
    pub async fn search(
        &self,
        ty: ResourceType,
        q: &SearchQuery,
        after: Option<&str>,
        counting: Counting,
    ) -> Result<SearchPage, SearchError> {
        let now = fhir::now_millis();
        // A cursor is `n` (the page after) or `p` (the page before) and the sort key of the row
        // it starts from, as a JSON array.
        let (position, backward): (Option<Vec<Value>>, bool) = match after {
            Some(text) => {
                let (direction, key) = text.split_at_checked(1).ok_or(SearchError::BadCursor)?;
                let backward = match direction {
                    "n" => false,
                    "p" => true,
                    _ => return Err(SearchError::BadCursor),
                };
                (Some(serde_json::from_str(key).map_err(|_| SearchError::BadCursor)?), backward)
            }
            None => (None, false),
        };
        let limit = i64::from(q.count);
        Ok(on_db!(self, reader, |pool, dialect| {
            let mut matches = Vec::new();
            let (mut next, mut previous) = (None, None);
            if limit > 0 {
                let sql = Compiler::new(dialect, now)
                    .page(ty.as_str(), &q.filters, &q.sort, position.as_deref(), backward, limit + 1)
                    .map_err(|_| SearchError::BadCursor)?;
                let mut rows: Vec<SearchRow> = bind_all!(sqlx::query_as(&sql.text).persistent(false), sql)
                    .fetch_all(pool)
                    .await
                    .map_err(StoreError::from)?;
                let more = rows.len() as i64 > limit;
                rows.truncate(limit as usize);
                if backward {
                    rows.reverse();
                }
                // Going forward, more rows mean a next page, and a cursor means a previous one;
                // going backward, the other way round.
                let (has_next, has_previous) = if backward { (true, more) } else { (more, position.is_some()) };
                if has_next {
                    next = rows.last().map(|r| format!("n{}", r.sort_key));
                }
                if has_previous {
                    previous = rows.first().map(|r| format!("p{}", r.sort_key));
                }
                matches = rows.into_iter().map(|r| r.version).collect();
            }
            let complete = next.is_none() && position.is_none() && limit > 0;
            let cap = match counting {
                Counting::None => None,
                Counting::IfComplete | Counting::UpTo(_) if complete => None,
                Counting::IfComplete => None,
                Counting::UpTo(cap) => Some(Some(cap + 1)),
                Counting::All => Some(None),
            };
            let total = match cap {
                Some(cap) => {
                    let sql = Compiler::new(dialect, now).count(ty.as_str(), &q.filters, cap);
                    let (n,): (i64,) = bind_all!(sqlx::query_as(&sql.text).persistent(false), sql)
                        .fetch_one(pool)
                        .await
                        .map_err(StoreError::from)?;
                    // Past the cap the exact number is unknown, and R4 lets it be left out.
                    cap.is_none_or(|c| n < c).then_some(n)
                }
                None if complete && counting != Counting::None => Some(matches.len() as i64),
                None => None,
            };
            SearchPage { matches, next, previous, total }
        }))
    }

    /// Which of `ids` (of type `ty`) are in `patient`'s compartment: the Patient itself, or
    /// resources that reference it through one of `params`.
    #[tracing::instrument(skip_all)]
    pub async fn compartment_members(
        &self,
        ty: &str,
        ids: &[String],
        patient: &str,
        params: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let mut members = compartment_self(ty, ids, patient);
        if ids.is_empty() || params.is_empty() {
            return Ok(members);
        }
        let rows: Vec<(String,)> = on_db!(self, reader, |pool, dialect| {
            let sql = Compiler::new(dialect, 0).compartment_members(ty, ids, patient, params);
            bind_all!(sqlx::query_as(&sql.text).persistent(false), sql).fetch_all(pool).await?
        });
        members.extend(rows.into_iter().map(|(id,)| id));
        Ok(members)
    }

    /// The ids of at most `limit` current resources of `ty` matching `filters`, in id order.
    #[tracing::instrument(skip_all)]
    pub async fn ids(&self, ty: &str, filters: &[Filter], limit: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = on_db!(self, reader, |pool, dialect| {
            let sql = Compiler::new(dialect, fhir::now_millis()).ids(ty, filters, limit);
            bind_all!(sqlx::query_as(&sql.text).persistent(false), sql).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Which of `patients` have Consent rules.
    pub async fn consent_patients(&self, patients: &[String]) -> Result<HashSet<String>, StoreError> {
        if patients.is_empty() {
            return Ok(HashSet::new());
        }
        let rows: Vec<(String,)> = on_db!(self, reader, |pool, dialect| {
            let sql = Compiler::new(dialect, 0).consent_patients(patients);
            bind_all!(sqlx::query_as(&sql.text).persistent(false), sql).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(p,)| p).collect())
    }

    /// Whether any Consent rules are stored (when none are, no access needs evaluating them).
    pub async fn has_consent_rules(&self) -> Result<bool, StoreError> {
        let row: Option<(String,)> =
            on_db!(self, reader, |pool, _d| sqlx::query_as(sql::ANY_CONSENT_RULE).fetch_optional(pool).await?);
        Ok(row.is_some())
    }

    /// Who user `ty/id` acts as, for Consent actors: itself; a Practitioner's roles and their
    /// organizations, or a PractitionerRole's practitioner and organization; and the CareTeams
    /// any of these is a participant of.
    #[tracing::instrument(skip_all)]
    pub async fn actors_of(&self, ty: &str, id: &str) -> Result<Vec<String>, StoreError> {
        let mut actors: Vec<(String, String)> = vec![(ty.to_owned(), id.to_owned())];
        let roles: Vec<String> = match ty {
            "Practitioner" => self.referrers("PractitionerRole", "practitioner", ty, id).await?,
            "PractitionerRole" => vec![id.to_owned()],
            _ => Vec::new(),
        };
        for role in roles {
            for param in ["practitioner", "organization"] {
                actors.extend(self.targets("PractitionerRole", &role, param).await?);
            }
            actors.push(("PractitionerRole".to_owned(), role));
        }
        let mut teams = Vec::new();
        for (t, i) in &actors {
            teams.extend(self.referrers("CareTeam", "participant", t, i).await?);
        }
        actors.extend(teams.into_iter().map(|team| ("CareTeam".to_owned(), team)));
        let mut out: Vec<String> = actors.into_iter().map(|(t, i)| format!("{t}/{i}")).collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Ids of the `source_type` resources whose `param` references `target_type/target_id`.
    async fn referrers(
        &self,
        source_type: &str,
        param: &str,
        target_type: &str,
        target_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = on_db!(self, reader, |pool, _d| {
            sqlx::query_as(sql::SELECT_REFERRERS)
                .bind(source_type)
                .bind(param)
                .bind(target_type)
                .bind(target_id)
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// `(type, id)` of what resource `ty/id` references through `param`.
    async fn targets(&self, ty: &str, id: &str, param: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(on_db!(self, reader, |pool, _d| {
            sqlx::query_as(sql::SELECT_TARGETS).bind(ty).bind(id).bind(param).fetch_all(pool).await?
        }))
    }

    /// Resources the `sources` (ids of `source_type`) reference through `param`.
    #[tracing::instrument(skip_all)]
    pub async fn include(
        &self,
        source_type: &str,
        param: &str,
        target_type: Option<&str>,
        sources: &[String],
        limit: i64,
    ) -> Result<Vec<Version>, StoreError> {
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        Ok(on_db!(self, reader, |pool, dialect| {
            let sql = Compiler::new(dialect, 0).include(source_type, param, target_type, sources, limit);
            bind_all!(sqlx::query_as(&sql.text).persistent(false), sql).fetch_all(pool).await?
        }))
    }

    /// Resources of `source_type` that reference one of `targets` (of `target_type`) through `param`.
    #[tracing::instrument(skip_all)]
    pub async fn revinclude(
        &self,
        source_type: &str,
        param: &str,
        target_type: &str,
        targets: &[String],
        limit: i64,
    ) -> Result<Vec<Version>, StoreError> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        Ok(on_db!(self, reader, |pool, dialect| {
            let sql = Compiler::new(dialect, 0).revinclude(source_type, param, target_type, targets, limit);
            bind_all!(sqlx::query_as(&sql.text).persistent(false), sql).fetch_all(pool).await?
        }))
    }

    /// Rebuilds the index and link rows of every current resource when they were written by an
    /// older version of the extraction ([`INDEX_VERSION`]); a no-op otherwise. Runs at start-up,
    /// in batches, each in its own transaction.
    pub async fn reindex_if_needed(
        &self,
        derive: &(dyn Fn(&str, &Value) -> Derived + Sync),
    ) -> Result<u64, StoreError> {
        const BATCH: i64 = 500;
        let mut done = 0;
        on_db!(self, writer, |pool, dialect| {
            let (version,): (i64,) = sqlx::query_as(sql::SELECT_INDEX_VERSION).fetch_one(pool).await?;
            if version == INDEX_VERSION {
                return Ok(0);
            }
            tracing::info!(from = version, to = INDEX_VERSION, "re-indexing current resources");
            let (mut after_type, mut after_id) = (String::new(), String::new());
            loop {
                let mut tx = pool.begin_with(dialect.begin_write).await?;
                let batch: Vec<Version> = sqlx::query_as(sql::SELECT_LIVE_BATCH)
                    .bind(&after_type)
                    .bind(&after_id)
                    .bind(BATCH)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut rows = search_sql::DerivedRows::default();
                for v in &batch {
                    let resource: Value =
                        v.content.as_deref().and_then(|c| serde_json::from_str(c).ok()).unwrap_or(Value::Null);
                    let derived = derive(&v.resource_type, &resource);
                    rows.add(&v.resource_type, &v.id, true, Some((derived.index, &derived.references)));
                    if v.resource_type == "Consent" {
                        for statement in search_sql::consent_statements(dialect, &v.id, &derived.consent, true) {
                            bind_all!(sqlx::query(&statement.text), statement).execute(&mut *tx).await?;
                        }
                    }
                }
                for statement in rows.statements(dialect) {
                    bind_all!(sqlx::query(&statement.text).persistent(false), statement).execute(&mut *tx).await?;
                }
                if batch.len() < BATCH as usize {
                    sqlx::query(sql::SET_INDEX_VERSION).bind(INDEX_VERSION).execute(&mut *tx).await?;
                    tx.commit().await?;
                    done += batch.len() as u64;
                    break;
                }
                if let Some(last) = batch.last() {
                    after_type.clone_from(&last.resource_type);
                    after_id.clone_from(&last.id);
                }
                done += batch.len() as u64;
                tx.commit().await?;
            }
        });
        Ok(done)
    }
}

/// The Patient among `ids` that is the compartment's own patient.
fn compartment_self(ty: &str, ids: &[String], patient: &str) -> HashSet<String> {
    ids.iter().filter(|id| ty == "Patient" && *id == patient).cloned().collect()
}

/// Errors of a search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("the paging position is not one this server issued for this search")]
    BadCursor,
    #[error(transparent)]
    Store(#[from] StoreError),
}
