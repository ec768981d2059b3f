//! Write transactions: one or many changes that commit together or not at all.
//!
//! A single create, update, patch or delete is a transaction of one change; a transaction
//! Bundle is a transaction of many. Each change writes the current row (compare-and-swap on
//! the version) at once; its history row and the index and link rows of the new version wait
//! and go in with those of the other changes and of the AuditEvents, one multi-row statement
//! per table, before the transaction next reads them or commits. Referential
//! integrity is checked once, at commit, against the transaction's final state: so the entries
//! of a Bundle may reference each other in any order, and a Bundle may delete a resource and
//! drop the references to it in the same go.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use sqlx::{PgConnection, Postgres, SqliteConnection, Transaction};
use tokio::sync::Notify;

use super::group::Member;
use super::outbox::Notification;
use super::search_sql::{self, Bind, Compiler, DerivedRows};
use super::sql::{self, Dialect, POSTGRES, SQLITE};
use super::{bind_all, Db, Store, StoreError, Version, WriteExtras};
use crate::fhir::registry::ResourceType;
use crate::fhir::search::index::IndexEntry;
use crate::fhir::search::query::Filter;
use crate::fhir::validate::LocalReference;
use crate::fhir::{self, Millis};

/// How often a transaction is run again when it lost to a concurrent writer (a lost
/// compare-and-swap race, or a deadlock or serialisation victim).
pub const WRITE_ATTEMPTS: usize = 8;

/// What a change expects of the resource's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Any,
    /// `If-Match`: the current version is this one.
    Version(i64),
    /// `If-None-Match: *`: the resource does not exist (or is deleted).
    Absent,
}

/// A change to one resource.
#[derive(Debug)]
pub enum Change {
    /// A new resource with a server-assigned id.
    Create(Map<String, Value>),
    /// A new version (or, with the client's id, a new resource).
    Update {
        resource: Map<String, Value>,
        expect: Expect,
    },
    Delete {
        expect: Expect,
    },
}

/// What a change did.
#[derive(Debug)]
pub enum Written {
    /// A new version was stored; `created` when the resource did not exist (or was deleted).
    Stored { version: Version, created: bool },
    /// Delete of a resource that does not exist or is already deleted: nothing changed.
    Unchanged,
}

/// An integrity rule a change leaves to be checked at commit.
enum Check {
    /// The local references of a written resource resolve to live resources.
    Resolves(Vec<LocalReference>),
    /// Nothing references a deleted resource.
    Unreferenced { ty: &'static str, id: String },
}

enum Tx {
    /// SQLite's one writer, in a group commit.
    Sqlite(Member),
    Postgres(Transaction<'static, Postgres>),
}

/// An open write transaction. Dropping it without [`WriteTx::commit`] rolls it back.
pub struct WriteTx {
    tx: Tx,
    /// Integrity checks for commit, each with the position of the change that asked for it.
    checks: Vec<(usize, Check)>,
    changes: usize,
    /// AuditEvents to append at commit, and how to index them.
    audits: Vec<(String, Map<String, Value>)>,
    audit_index: Option<AuditIndex>,
    /// The history, index and link rows of the changes so far, the rows of staged AuditEvents
    /// and their entries in the linker's queue, not yet written (see [`WriteTx::flush`]).
    history: Vec<Vec<Bind>>,
    derived: DerivedRows,
    audit_rows: Vec<Vec<Bind>>,
    unlinked: Vec<Vec<Bind>>,
    /// The live Subscriptions watching each type, as this transaction read them.
    subscriptions: HashMap<&'static str, Vec<(String, String)>>,
    /// Whether AuditEvents were queued for the chain's linker, and how to wake it.
    queued_audits: bool,
    linker: Arc<Notify>,
}

/// A stored AuditEvent to link: its id, recorded time and stored JSON.
type Staged = (String, Millis, String);

/// What [`WriteTx::link`] links.
enum Links<'a> {
    /// AuditEvents staged in this transaction.
    Staged(&'a [Staged]),
    /// Up to this many of the linker's queue, oldest id first.
    Queued(i64),
}

/// The index entries of an AuditEvent.
pub type AuditIndex = std::sync::Arc<dyn Fn(&Value) -> Vec<IndexEntry> + Send + Sync>;

/// Runs `$body` on the transaction's connection with the engine's [`Dialect`]; compiled once
/// per engine, like `on_db!`.
macro_rules! on_tx {
    ($tx:expr, |$conn:ident, $dialect:ident| $body:expr) => {
        match &mut $tx {
            Tx::Sqlite(member) => {
                let $conn: &mut SqliteConnection = member.conn();
                let $dialect: &Dialect = &SQLITE;
                $body
            }
            Tx::Postgres(t) => {
                let $conn: &mut PgConnection = t;
                let $dialect: &Dialect = &POSTGRES;
                $body
            }
        }
    };
}

/// Errors that a fresh attempt of the same transaction may not meet again.
pub trait Contended {
    fn is_contention(&self) -> bool;
}

impl Contended for StoreError {
    fn is_contention(&self) -> bool {
        matches!(self, Self::Contention)
    }
}

/// Runs `$body`, a future that uses the write transaction `$tx`, and commits when it
/// succeeds; when it or the commit lost to a concurrent writer, runs it again in a new
/// transaction, up to [`WRITE_ATTEMPTS`] times. Evaluates to the body's result.
#[macro_export]
macro_rules! in_transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 1;
        loop {
            let mut $tx = $store.begin().await?;
            let result = $body.await;
            match $tx.finish(result).await {
                Err(e) if $crate::store::Contended::is_contention(&e) && attempt < $crate::store::WRITE_ATTEMPTS => {
                    attempt += 1;
                }
                done => break done,
            }
        }
    }};
}

impl Store {
    /// Opens a write transaction. On SQLite it holds the one writer connection until it ends.
    pub async fn begin(&self) -> Result<WriteTx, StoreError> {
        let tx = match &self.db {
            Db::Sqlite { lane, .. } => Tx::Sqlite(lane.join().await?),
            Db::Postgres(pool) => Tx::Postgres(pool.begin_with(POSTGRES.begin_write).await?),
        };
        Ok(WriteTx {
            tx,
            checks: Vec::new(),
            changes: 0,
            audits: Vec::new(),
            audit_index: None,
            history: Vec::new(),
            derived: DerivedRows::default(),
            audit_rows: Vec::new(),
            unlinked: Vec::new(),
            subscriptions: HashMap::new(),
            queued_audits: false,
            linker: self.linker.clone(),
        })
    }

    /// Links AuditEvents that wait for it into the hash chain, in passes of up to `batch`, until
    /// none waits; says how many it linked.
    pub async fn link_audits(&self, batch: i64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let mut tx = self.begin().await?;
            let linked = tx.link(Links::Queued(batch)).await;
            let linked = tx.finish(linked).await?;
            total += linked;
            if linked < usize::try_from(batch).unwrap_or(usize::MAX) {
                return Ok(total);
            }
        }
    }

    /// Resolves when a write has queued AuditEvents for the linker since it last resolved.
    pub async fn audits_queued(&self) {
        self.linker.notified().await;
    }
}

impl WriteTx {
    /// Ids of up to `limit` current resources of `ty` that match `filters`: the search of a
    /// conditional interaction. Serialises with every other transaction that runs the same
    /// search, so that two conditional creates cannot both find nothing and both create.
    #[tracing::instrument(skip_all)]
    pub async fn find(&mut self, ty: ResourceType, filters: &[Filter], limit: i64) -> Result<Vec<String>, StoreError> {
        self.flush().await?;
        self.lock_keys(vec![condition_key(ty, filters)]).await?;
        let clock = fhir::now_millis();
        let rows: Vec<(String,)> = on_tx!(self.tx, |conn, dialect| {
            let sql = Compiler::new(dialect, clock).ids(ty.as_str(), filters, limit);
            bind_all!(sqlx::query_as(&sql.text).persistent(false), sql).fetch_all(&mut *conn).await?
        });
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Whether the current resource `ty/id` matches `filters`: a subscription's criteria,
    /// checked against the change this transaction just wrote.
    #[tracing::instrument(skip_all)]
    pub async fn matches(&mut self, ty: ResourceType, id: &str, filters: &[Filter]) -> Result<bool, StoreError> {
        self.flush().await?;
        let mut filters = filters.to_vec();
        filters.push(Filter::Id(vec![id.to_owned()]));
        let clock = fhir::now_millis();
        let rows: Vec<(String,)> = on_tx!(self.tx, |conn, dialect| {
            let sql = Compiler::new(dialect, clock).ids(ty.as_str(), &filters, 1);
            bind_all!(sqlx::query_as(&sql.text).persistent(false), sql).fetch_all(&mut *conn).await?
        });
        Ok(!rows.is_empty())
    }

    /// Queues notifications (each: its id, subscription id, and the triggering `Type/id` version).
    #[tracing::instrument(skip_all)]
    pub async fn enqueue(&mut self, notifications: &[Notification]) -> Result<(), StoreError> {
        if notifications.is_empty() {
            return Ok(());
        }
        let now = fhir::now_millis();
        let rows = notifications
            .iter()
            .map(|n| {
                vec![
                    Bind::Text(n.id.clone()),
                    Bind::Text(n.subscription_id.clone()),
                    Bind::Text(n.resource_type.clone()),
                    Bind::Text(n.resource_id.clone()),
                    Bind::Int(n.version_id),
                    Bind::Int(now),
                    Bind::Int(now),
                    Bind::OptText(n.traceparent.clone()),
                ]
            })
            .collect();
        let columns = [
            "id",
            "subscription_id",
            "resource_type",
            "resource_id",
            "version_id",
            "created_at",
            "next_attempt_at",
            "traceparent",
        ];
        on_tx!(self.tx, |conn, dialect| {
            for statement in search_sql::insert_rows(dialect, "subscription_outbox", &columns, rows) {
                bind_all!(sqlx::query(&statement.text).persistent(false), statement).execute(&mut *conn).await?;
            }
        });
        Ok(())
    }

    /// The live Subscriptions (status requested or active) whose criteria search `ty`: id and
    /// content each.
    /// Read once per type and transaction, unless the transaction writes a Subscription.
    pub async fn live_subscriptions(&mut self, ty: ResourceType) -> Result<Vec<(String, String)>, StoreError> {
        if let Some(live) = self.subscriptions.get(ty.as_str()) {
            return Ok(live.clone());
        }
        if self.derived.holds(|(t, _)| t == "Subscription") {
            // The query reads their index rows.
            self.flush().await?;
        }
        let exact = ty.as_str().to_lowercase();
        let with_query = format!("{exact}?%");
        let live: Vec<(String, String)> = on_tx!(self.tx, |conn, _dialect| {
            sqlx::query_as(sql::SELECT_LIVE_SUBSCRIPTIONS).bind(&exact).bind(&with_query).fetch_all(&mut *conn).await?
        });
        self.subscriptions.insert(ty.as_str(), live.clone());
        Ok(live)
    }

    /// Drops the queued notifications of a subscription that this transaction changes: they
    /// were for its old criteria and channel.
    pub async fn drop_queued(&mut self, subscription_id: &str) -> Result<(), StoreError> {
        on_tx!(self.tx, |conn, _dialect| {
            sqlx::query("DELETE FROM subscription_outbox WHERE subscription_id = $1")
                .bind(subscription_id)
                .execute(&mut *conn)
                .await?;
        });
        Ok(())
    }

    /// The current version of a resource (a deletion when deleted), locked against concurrent
    /// writers until this transaction ends.
    pub async fn current(&mut self, ty: ResourceType, id: &str) -> Result<Option<Version>, StoreError> {
        Ok(on_tx!(self.tx, |conn, dialect| {
            sqlx::query_as(dialect.select_current_locked).bind(ty.as_str()).bind(id).fetch_optional(&mut *conn).await?
        }))
    }

    /// The live content of `ty/id` and its version id, locked like [`Self::current`]; `None`
    /// when it does not exist or is deleted.
    pub async fn live(&mut self, ty: ResourceType, id: &str) -> Result<Option<(i64, Map<String, Value>)>, StoreError> {
        let Some(version) = self.current(ty, id).await?.filter(|v| !v.is_deleted()) else { return Ok(None) };
        let content =
            serde_json::from_str(version.content.as_deref().unwrap_or("{}")).map_err(|_| StoreError::Corrupt)?;
        Ok(Some((version.version_id, content)))
    }

    /// Locks the resources a transaction is about to write, in one global order, so that
    /// transactions writing overlapping sets queue instead of deadlocking (PostgreSQL waits a
    /// second before it detects a deadlock). SQLite has one writer and needs none.
    pub async fn lock_resources<'a>(
        &mut self,
        resources: impl Iterator<Item = (ResourceType, &'a str)>,
    ) -> Result<(), StoreError> {
        let mut keys: Vec<i64> = resources.map(|(ty, id)| lock_key(&format!("{ty}/{id}"))).collect();
        keys.sort_unstable();
        keys.dedup();
        self.lock_keys(keys).await
    }

    /// Takes advisory locks on `keys` until the transaction ends, in their order: conditional
    /// interactions with the same condition, and transactions writing the same resources,
    /// serialise across connections and replicas. SQLite's one writer serialises every write
    /// and needs none.
    async fn lock_keys(&mut self, keys: Vec<i64>) -> Result<(), StoreError> {
        if let Tx::Postgres(t) = &mut self.tx {
            sqlx::query(sql::LOCK_KEYS).bind(keys).execute(&mut **t).await?;
        }
        Ok(())
    }

    /// Whether `ty/id` is, as this transaction sees it, in `patient`'s compartment (see
    /// [`Store::compartment_members`]).
    pub async fn in_compartment(
        &mut self,
        ty: ResourceType,
        id: &str,
        patient: &str,
        params: &[String],
    ) -> Result<bool, StoreError> {
        if ty.as_str() == "Patient" && id == patient {
            return Ok(true);
        }
        if params.is_empty() {
            return Ok(false);
        }
        self.flush().await?;
        let ids = [id.to_owned()];
        let rows: Vec<(String,)> = on_tx!(self.tx, |conn, dialect| {
            let sql = Compiler::new(dialect, 0).compartment_members(ty.as_str(), &ids, patient, params);
            bind_all!(sqlx::query_as(&sql.text).persistent(false), sql).fetch_all(&mut *conn).await?
        });
        Ok(!rows.is_empty())
    }

    /// Queues an AuditEvent (`id`, `resource`) to be appended to the audit trail when the
    /// transaction commits (see [`WriteTx::commit`]).
    pub fn queue_audit(&mut self, id: String, resource: Map<String, Value>, index: AuditIndex) {
        self.audits.push((id, resource));
        self.audit_index = Some(index);
    }

    /// Appends AuditEvents (`(id, resource)` each) to the audit trail: their rows, their index
    /// rows (`index` of the final content; no history: an AuditEvent has one version), and
    /// their links or their entries in the linker's queue, in a handful of multi-row
    /// statements (on PostgreSQL one, with [`search_sql::combine_inserts`]). Call it last.
    pub async fn record_audits(
        &mut self,
        events: Vec<(String, Map<String, Value>)>,
        index: &(dyn Fn(&Value) -> Vec<IndexEntry> + Sync),
    ) -> Result<(), StoreError> {
        let staged = self.stage_audits(events, index);
        let staged = self.queue_for_linker(staged);
        self.flush().await?;
        self.chain_audits(staged).await
    }

    /// Prepares the rows of AuditEvents, with recorded times from
    /// [`super::audit::recorded_times`], and defers them with their index rows (see
    /// [`Self::flush`]). [`Self::chain_audits`] takes them into the chain.
    fn stage_audits(
        &mut self,
        events: Vec<(String, Map<String, Value>)>,
        index: &(dyn Fn(&Value) -> Vec<IndexEntry> + Sync),
    ) -> Vec<Staged> {
        const TYPE: &str = "AuditEvent";
        let mut staged = Vec::with_capacity(events.len());
        if events.is_empty() {
            return staged;
        }
        let first = super::audit::recorded_times(events.len());
        for (now, (id, mut resource)) in (first..).zip(events) {
            resource.insert("recorded".into(), Value::from(fhir::format_instant(now)));
            fhir::stamp(&mut resource, &id, 1, now);
            let value = Value::Object(resource);
            self.derived.index.push(((TYPE.to_owned(), id.clone()), index(&value)));
            let content = value.to_string();
            let text = |s: &str| Bind::Text(s.to_owned());
            self.audit_rows.push(vec![
                text(TYPE),
                text(&id),
                Bind::Int(1),
                Bind::Int(now),
                Bind::Bool(false),
                text(&content),
            ]);
            staged.push((id, now, content));
        }
        staged
    }

    /// Where the engine leaves the chain to the linker ([`Dialect::link_at_commit`] false),
    /// defers the staged AuditEvents' entries in its queue ([`Store::link_audits`]), to be woken
    /// after the commit, and hands back none to link here.
    fn queue_for_linker(&mut self, staged: Vec<Staged>) -> Vec<Staged> {
        if self.dialect().link_at_commit || staged.is_empty() {
            return staged;
        }
        self.unlinked.extend(staged.into_iter().map(|(id, ..)| vec![Bind::Text(id)]));
        self.queued_audits = true;
        Vec::new()
    }

    /// Links staged AuditEvents into the chain here, where the engine links at commit.
    async fn chain_audits(&mut self, staged: Vec<Staged>) -> Result<(), StoreError> {
        if staged.is_empty() {
            return Ok(());
        }
        self.link(Links::Staged(&staged)).await?;
        Ok(())
    }

    /// Links AuditEvents into the hash chain after its head, and says how many. The head stays
    /// locked until the transaction ends, so that linkers of several replicas take turns.
    #[tracing::instrument(skip_all)]
    async fn link(&mut self, links: Links<'_>) -> Result<usize, StoreError> {
        let linked = on_tx!(self.tx, |conn, dialect| {
            let (mut seq, mut prev, head_recorded): (i64, String, Millis) =
                sqlx::query_as(dialect.lock_audit_head).fetch_one(&mut *conn).await?;
            // Later records of this process are dated after the head (another replica's, or
            // before a restart or a clock step).
            super::audit::recorded_after(head_recorded);
            let queued: Vec<Staged>;
            let events = match links {
                Links::Staged(events) => events,
                Links::Queued(limit) => {
                    queued = sqlx::query_as(sql::SELECT_UNLINKED).bind(limit).fetch_all(&mut *conn).await?;
                    &queued
                }
            };
            if events.is_empty() {
                return Ok(0);
            }
            let (first, mut recorded) = (seq, head_recorded);
            let mut rows = Vec::with_capacity(events.len());
            for (id, at, content) in events {
                seq += 1;
                let hash = super::audit::link_hash(&prev, seq, id, content);
                rows.push(vec![Bind::Int(seq), Bind::Text(id.clone()), Bind::Text(prev), Bind::Text(hash.clone())]);
                prev = hash;
                recorded = recorded.max(*at);
            }
            for statement in search_sql::insert_rows(dialect, "audit_chain", &["seq", "id", "prev_hash", "hash"], rows)
            {
                bind_all!(sqlx::query(&statement.text).persistent(false), statement).execute(&mut *conn).await?;
            }
            if matches!(links, Links::Queued(_)) {
                sqlx::query(sql::DELETE_LINKED).bind(first).execute(&mut *conn).await?;
            }
            sqlx::query(sql::UPDATE_AUDIT_HEAD).bind(seq).bind(&prev).bind(recorded).execute(&mut *conn).await?;
            events.len()
        });
        Ok(linked)
    }

    fn dialect(&self) -> &'static Dialect {
        match self.tx {
            Tx::Sqlite(_) => &SQLITE,
            Tx::Postgres(_) => &POSTGRES,
        }
    }

    /// Writes the rows that the changes so far deferred: their history rows, and their index
    /// and link rows with those of staged AuditEvents, one multi-row statement per table for
    /// all of them. Runs before anything in the transaction reads those tables (its searches
    /// and integrity checks), and at commit.
    #[tracing::instrument(skip_all)]
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.history.is_empty() && self.derived.is_empty() && self.audit_rows.is_empty() && self.unlinked.is_empty()
        {
            return Ok(());
        }
        let history = std::mem::take(&mut self.history);
        let derived = std::mem::take(&mut self.derived);
        let audit_rows = std::mem::take(&mut self.audit_rows);
        let unlinked = std::mem::take(&mut self.unlinked);
        // Statements for one write and its AuditEvent recur in a few shapes and are worth
        // keeping prepared; those of larger batches rarely recur.
        let keep = derived.index.len() <= 2;
        on_tx!(self.tx, |conn, dialect| {
            // The deletes of replaced rows first, then every insert.
            let mut statements = derived.statements(dialect);
            let columns = ["resource_type", "id", "version_id", "last_updated", "method", "content"];
            statements.extend(search_sql::insert_rows(dialect, "resource_history", &columns, history));
            let columns = ["resource_type", "id", "version_id", "last_updated", "deleted", "content"];
            statements.extend(search_sql::insert_rows(dialect, "resources", &columns, audit_rows));
            statements.extend(search_sql::insert_rows(dialect, "audit_unlinked", &["id"], unlinked));
            for statement in search_sql::combine_inserts(dialect, statements) {
                bind_all!(sqlx::query(&statement.text).persistent(keep), statement).execute(&mut *conn).await?;
            }
        });
        Ok(())
    }

    /// How many changes this transaction has applied.
    pub fn changes(&self) -> usize {
        self.changes
    }

    /// Applies one change. `extras` are the index rows and local references of the new
    /// content (empty for a delete).
    #[tracing::instrument(skip_all, fields(fhir.type = %ty, fhir.id = %id))]
    pub async fn write(
        &mut self,
        ty: ResourceType,
        id: &str,
        change: Change,
        extras: WriteExtras<'_>,
    ) -> Result<Written, StoreError> {
        if self.derived.holds(|(t, i)| t == ty.as_str() && i == id) {
            // Written twice in one transaction: the first version's rows go in before they
            // are replaced.
            self.flush().await?;
        }
        let position = self.changes;
        self.changes += 1;
        if ty.as_str() == "Subscription" {
            self.subscriptions.clear();
        }
        let (history, derived) = (&mut self.history, &mut self.derived);
        let creates = matches!(change, Change::Create(_));
        let written = on_tx!(self.tx, |conn, dialect| {
            // A create's id is new (server-assigned and time-ordered): there is nothing to read,
            // and the insert below would refuse a duplicate.
            let current: Option<(i64, bool, Millis)> = if creates {
                None
            } else {
                sqlx::query_as(dialect.select_current_for_write)
                    .bind(ty.as_str())
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
            };
            let live = current.filter(|c| !c.1);
            let holds = |expect: Expect| match expect {
                Expect::Any => true,
                Expect::Version(v) => current.is_some_and(|c| c.0 == v),
                Expect::Absent => live.is_none(),
            };
            let (resource, method, new_version) = match change {
                Change::Create(_) if current.is_some() => return Err(StoreError::Duplicate),
                Change::Create(resource) => (Some(resource), "POST", 1),
                Change::Update { expect, .. } | Change::Delete { expect } if !holds(expect) => {
                    return Err(StoreError::VersionConflict)
                }
                Change::Update { resource, .. } => (Some(resource), "PUT", current.map_or(1, |c| c.0 + 1)),
                Change::Delete { .. } => match live {
                    None => return Ok(Written::Unchanged),
                    Some(c) => (None, "DELETE", c.0 + 1),
                },
            };
            // Taken under the write lock, and never before the version it follows: history order
            // and `_since` rely on lastUpdated growing with the version.
            let now = current.map_or_else(fhir::now_millis, |c| fhir::now_millis().max(c.2 + 1));
            let content = resource.map(|mut r| {
                crate::auth::labels::add_labels(&mut r, extras.labels);
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
            .execute(&mut *conn)
            .await?;
            if replaced.rows_affected() != 1 {
                // A concurrent transaction created the resource after our read (run again), or
                // a create's id is taken.
                return Err(if creates { StoreError::Duplicate } else { StoreError::Contention });
            }
            let text = |s: &str| Bind::Text(s.to_owned());
            let ty_name = ty.as_str();
            history.push(vec![
                text(ty_name),
                text(id),
                Bind::Int(new_version),
                Bind::Int(now),
                text(method),
                Bind::OptText(content.clone()),
            ]);
            let new_rows = content.as_ref().map(|_| (extras.index.to_vec(), extras.references));
            derived.add(ty_name, id, current.is_some(), new_rows);
            if ty_name == "Consent" {
                let rules = if content.is_some() { extras.consent } else { &[] };
                for statement in search_sql::consent_statements(dialect, id, rules, current.is_some()) {
                    bind_all!(sqlx::query(&statement.text), statement).execute(&mut *conn).await?;
                }
            }
            let version = Version {
                resource_type: ty.as_str().to_owned(),
                id: id.to_owned(),
                version_id: new_version,
                last_updated: now,
                method: method.to_owned(),
                content,
            };
            Written::Stored { version, created: live.is_none() }
        });
        if let Written::Stored { version, .. } = &written {
            let check = match version.content {
                Some(_) => Check::Resolves(extras.references.to_vec()),
                None => Check::Unreferenced { ty: ty.as_str(), id: id.to_owned() },
            };
            self.checks.push((position, check));
        }
        Ok(written)
    }

    /// Checks referential integrity against the final state and commits. A failed check names
    /// the position of the change (0 for the first) that broke it.
    #[tracing::instrument(skip_all)]
    pub async fn commit(mut self) -> Result<(), StoreError> {
        // AuditEvents go in before the checks, so that their rows are written with the changes'
        // own; they are chained (or queued for the linker) after the checks, so that a failure
        // there is known as the audit trail's.
        let staged = match self.audit_index.take() {
            Some(index) => {
                let audits = std::mem::take(&mut self.audits);
                self.stage_audits(audits, &*index)
            }
            None => Vec::new(),
        };
        self.verify().await?;
        let staged = self.queue_for_linker(staged);
        async {
            self.flush().await?;
            self.chain_audits(staged).await
        }
        .await
        .map_err(audit_failure)?;
        match self.tx {
            Tx::Sqlite(member) => member.end(true).await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        if self.queued_audits {
            self.linker.notify_one();
        }
        Ok(())
    }

    /// Undoes the transaction. On PostgreSQL the rollback is sent with the connection's next
    /// use; on SQLite the writer goes to the next write at once.
    pub async fn rollback(self) {
        match self.tx {
            Tx::Sqlite(member) => {
                let _ = member.end(false).await;
            }
            Tx::Postgres(t) => drop(t),
        }
    }

    /// Checks referential integrity against the state so far (as `commit` does), without
    /// committing.
    pub async fn verify(&mut self) -> Result<(), StoreError> {
        self.flush().await?;
        let checks = std::mem::take(&mut self.checks);
        on_tx!(self.tx, |conn, dialect| {
            let mut targets: Vec<(&str, &str)> = checks
                .iter()
                .flat_map(|(_, c)| match c {
                    Check::Resolves(refs) => refs.iter().map(|r| (r.resource_type.as_str(), r.id.as_str())).collect(),
                    Check::Unreferenced { .. } => Vec::new(),
                })
                .collect();
            targets.sort_unstable();
            targets.dedup();
            let mut live: Vec<(String, String)> = Vec::new();
            for statement in search_sql::live_among(dialect, &targets) {
                live.extend(bind_all!(sqlx::query_as(&statement.text), statement).fetch_all(&mut *conn).await?);
            }
            let missing: Vec<(&str, &str)> =
                targets.into_iter().filter(|(ty, id)| !live.iter().any(|(t, i)| t == ty && i == id)).collect();
            for (position, check) in &checks {
                match check {
                    Check::Resolves(refs) => {
                        let broken: Vec<LocalReference> = refs
                            .iter()
                            .filter(|r| missing.contains(&(r.resource_type.as_str(), r.id.as_str())))
                            .cloned()
                            .collect();
                        if !broken.is_empty() {
                            return Err(StoreError::MissingReferences { change: *position, missing: broken });
                        }
                    }
                    Check::Unreferenced { ty, id } => {
                        let holder: Option<(String, String)> = sqlx::query_as(sql::SELECT_INBOUND_LINK)
                            .bind(ty)
                            .bind(id)
                            .fetch_optional(&mut *conn)
                            .await?;
                        if let Some((holder_type, holder_id)) = holder {
                            return Err(StoreError::Referenced {
                                change: *position,
                                holder: format!("{holder_type}/{holder_id}"),
                            });
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Commits when `result` is a success and hands it back; rolls back otherwise.
    pub async fn finish<T, E: From<StoreError>>(self, result: Result<T, E>) -> Result<T, E> {
        match result {
            Ok(value) => {
                self.commit().await?;
                Ok(value)
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }
}

/// A write whose AuditEvent cannot be stored is refused; a lost race is run again.
fn audit_failure(e: StoreError) -> StoreError {
    match e {
        StoreError::Contention => StoreError::Contention,
        e => {
            tracing::error!(error = %e, db.code = e.code(), "writing the audit trail failed; refusing the write");
            StoreError::AuditUnavailable
        }
    }
}

/// The lock key of a conditional search: the same for the same condition whoever runs it,
/// so disclosure filters (per caller, and holding the time) are left out.
fn condition_key(ty: ResourceType, filters: &[Filter]) -> i64 {
    fn strip(filter: &Filter) -> Option<Filter> {
        match filter {
            Filter::Disclosed { .. } => None,
            Filter::Chain { param, target_types, inner } => Some(Filter::Chain {
                param: param.clone(),
                target_types: target_types.clone(),
                inner: inner.iter().filter_map(strip).collect(),
            }),
            Filter::Has { source_type, param, inner } => Some(Filter::Has {
                source_type: source_type.clone(),
                param: param.clone(),
                inner: inner.iter().filter_map(strip).collect(),
            }),
            other => Some(other.clone()),
        }
    }
    let kept: Vec<Filter> = filters.iter().filter_map(strip).collect();
    lock_key(&format!("{ty}?{kept:?}"))
}

/// A stable 64-bit key (FNV-1a) for an advisory lock: on a search (conditional interactions
/// with the same search serialise across connections and replicas) or on a resource.
fn lock_key(text: &str) -> i64 {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    hash as i64
}
