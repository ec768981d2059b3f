//! The SQL the store runs. One text serves both engines unless it is in [`Dialect`].

/// The current version of `$1/$2`, as a literal so that dialects can extend it.
macro_rules! select_current {
    () => {
        "SELECT resource_type, id, version_id, last_updated, \
         CASE WHEN deleted THEN 'DELETE' WHEN version_id = 1 THEN 'POST' ELSE 'PUT' END AS method, content \
         FROM resources WHERE resource_type = $1 AND id = $2"
    };
}

macro_rules! select_audit_head {
    () => {
        "SELECT seq, hash, recorded FROM audit_head WHERE id = 1"
    };
}

pub const SELECT_AUDIT_HEAD: &str = select_audit_head!();

pub const UPDATE_AUDIT_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2, recorded = $3 WHERE id = 1";

/// A batch of the chain from `$1` on, with each record's stored AuditEvent.
pub const SELECT_AUDIT_LINKS: &str = "SELECT c.seq, c.id, c.prev_hash, c.hash, r.content FROM audit_chain c \
     LEFT JOIN resources r ON r.resource_type = 'AuditEvent' AND r.id = c.id \
     WHERE c.seq >= $1 ORDER BY c.seq LIMIT $2";

/// AuditEvents waiting to be linked into the chain, oldest id first, with their recorded time
/// and stored JSON. The queue is limited before the join: joined first, both sides are in id
/// order, and PostgreSQL's planner (misled by the queue's dead rows) chose a merge join that read
/// every AuditEvent ever stored for each batch.
pub const SELECT_UNLINKED: &str = "SELECT u.id, r.last_updated, r.content \
     FROM (SELECT id FROM audit_unlinked ORDER BY id LIMIT $1) u \
     JOIN resources r ON r.resource_type = 'AuditEvent' AND r.id = u.id ORDER BY u.id";

/// Takes off the linker's queue what the links after `$1` cover.
pub const DELETE_LINKED: &str = "DELETE FROM audit_unlinked WHERE id IN (SELECT id FROM audit_chain WHERE seq > $1)";

pub const COUNT_UNLINKED: &str = "SELECT COUNT(*) FROM audit_unlinked";

pub const COUNT_AUDIT_EVENTS: &str = "SELECT COUNT(*) FROM resources WHERE resource_type = 'AuditEvent'";

/// What differs between SQLite and PostgreSQL.
pub struct Dialect {
    /// Starts a write transaction.
    pub begin_write: &'static str,
    /// Starts a read transaction that sees one snapshot throughout (SQLite's WAL readers do
    /// from their first read).
    pub begin_snapshot: &'static str,
    /// Reads the current version for a write; on PostgreSQL it also locks the row, so that
    /// concurrent writers of one resource queue instead of racing.
    pub select_current_for_write: &'static str,
    /// Reads the current version with its content; on PostgreSQL it also locks the row.
    pub select_current_locked: &'static str,
    /// Whether search filters other than the most selective one are written as per-candidate
    /// probes (`EXISTS`) instead of sets (`id IN (…)`): SQLite builds every `IN` set in full,
    /// PostgreSQL's planner chooses well between both on its own.
    pub probe_filters: bool,
    /// Whether a search page in id order walks its most selective filter's index rows in id
    /// order, joined to the resources (`FROM (SELECT DISTINCT …) d JOIN resources …`), probing
    /// the other filters per candidate, so that it stops after one page. PostgreSQL otherwise
    /// builds the driving set in full and sorts it; SQLite's `id IN (…)` is already walked in
    /// order.
    pub join_driver: bool,
    /// Whether dynamic statements number their placeholders (`$1`) or use `?`.
    pub numbered_params: bool,
    /// Whether several INSERTs can go as one statement, each a data-modifying `WITH` query
    /// ([`super::search_sql::combine_inserts`]): one round trip instead of one per table.
    pub combine_inserts: bool,
    /// Opens and closes a JSON array of SQL values, as text (search paging keys).
    pub json_array_open: &'static str,
    pub json_array_close: &'static str,
    /// Reads the head of the audit chain; on PostgreSQL it also locks it until commit.
    pub lock_audit_head: &'static str,
    /// Whether a write links its AuditEvents into the chain itself, at commit (SQLite: one
    /// writer, so the head's lock holds back no one), or queues them for the linker
    /// (PostgreSQL: a write that held the head from its link to its commit would make
    /// concurrent writes commit one at a time).
    pub link_at_commit: bool,
    /// Ends a query for live resources that references point at: on PostgreSQL it keeps them
    /// from being deleted until the referring write commits.
    pub lock_shared: &'static str,
    /// Claims due subscription notifications for a worker (`$1` lease end, `$2` now, `$3` how
    /// many); on PostgreSQL the rows are locked and rows another replica is claiming skipped.
    pub claim_notifications: &'static str,
}

/// The claim of due notifications, with the engine's row-locking clause at `{lock}`. The outer
/// condition re-checks the lease on the row being updated.
macro_rules! claim_notifications {
    ($lock:literal) => {
        concat!(
            "UPDATE subscription_outbox SET lease_until = $1 WHERE id IN (SELECT id FROM subscription_outbox ",
            "WHERE next_attempt_at <= $2 AND lease_until <= $2 ORDER BY next_attempt_at, created_at LIMIT $3",
            $lock,
            ") AND lease_until <= $2 RETURNING id, subscription_id, resource_type, resource_id, version_id, attempts, traceparent"
        )
    };
}

/// SQLite: `BEGIN IMMEDIATE` takes the write lock up front, so a transaction never fails to
/// upgrade a read lock; with one writer there is nothing else to lock.
pub const SQLITE: Dialect = Dialect {
    begin_write: "BEGIN IMMEDIATE",
    begin_snapshot: "BEGIN",
    select_current_for_write: SELECT_CURRENT_VERSION,
    select_current_locked: SELECT_CURRENT,
    probe_filters: true,
    join_driver: false,
    numbered_params: false,
    combine_inserts: false,
    json_array_open: "json_array(",
    json_array_close: ")",
    lock_shared: "",
    lock_audit_head: SELECT_AUDIT_HEAD,
    link_at_commit: true,
    claim_notifications: claim_notifications!(""),
};

/// PostgreSQL: advisory and row locks make concurrent replicas behave as one server.
pub const POSTGRES: Dialect = Dialect {
    begin_write: "BEGIN",
    begin_snapshot: "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    select_current_for_write:
        "SELECT version_id, deleted, last_updated FROM resources WHERE resource_type = $1 AND id = $2 FOR UPDATE",
    select_current_locked: concat!(select_current!(), " FOR UPDATE"),
    probe_filters: false,
    join_driver: true,
    numbered_params: true,
    combine_inserts: true,
    json_array_open: "json_build_array(",
    json_array_close: ")::text",
    lock_shared: " FOR SHARE",
    lock_audit_head: concat!(select_audit_head!(), " FOR UPDATE"),
    link_at_commit: false,
    claim_notifications: claim_notifications!(" FOR UPDATE SKIP LOCKED"),
};

/// Columns of [`super::Version`] from `resources`.
pub const SELECT_CURRENT: &str = select_current!();

pub const SELECT_CURRENT_VERSION: &str =
    "SELECT version_id, deleted, last_updated FROM resources WHERE resource_type = $1 AND id = $2";

pub const SELECT_VERSION: &str = "SELECT resource_type, id, version_id, last_updated, method, content \
     FROM resource_history WHERE resource_type = $1 AND id = $2 AND version_id = $3";

/// `$7` (the version replaced) is unused here; it keeps the binds of insert and update alike.
pub const INSERT_CURRENT: &str =
    "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, content) \
     SELECT $1, $2, $3, $4, $5, $6 WHERE $7 = 0 \
     ON CONFLICT (resource_type, id) DO NOTHING";

/// Compare-and-swap: replaces the current row only if it is still version `$7`.
pub const UPDATE_CURRENT: &str = "UPDATE resources SET version_id = $3, last_updated = $4, deleted = $5, content = $6 \
     WHERE resource_type = $1 AND id = $2 AND version_id = $7";

/// PostgreSQL: transaction-scoped advisory locks on `$1`, an array of 64-bit keys, taken one
/// after the other in the array's order.
pub const LOCK_KEYS: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k";

/// One resource, other than the target itself, that still references `$1/$2`.
pub const SELECT_INBOUND_LINK: &str = "SELECT source_type, source_id FROM resource_links \
     WHERE target_type = $1 AND target_id = $2 AND NOT (source_type = $1 AND source_id = $2) LIMIT 1";

pub const SELECT_INDEX_VERSION: &str = "SELECT version FROM index_state WHERE id = 1";
pub const SET_INDEX_VERSION: &str = "UPDATE index_state SET version = $1 WHERE id = 1";

/// Current resources in id order after `$1`, a batch of `$2`, for re-indexing.
pub const SELECT_LIVE_BATCH: &str = "SELECT resource_type, id, version_id, last_updated, 'PUT' AS method, content \
     FROM resources WHERE NOT deleted AND (resource_type, id) > ($1, $2) ORDER BY resource_type, id LIMIT $3";

// History pages, newest first. Binds after the scope: since, the cursor (last_updated,
// resource_type, id, version_id) that the page starts after, and the page size.
pub const HISTORY_SYSTEM: &str = "SELECT resource_type, id, version_id, last_updated, method, content \
     FROM resource_history WHERE last_updated >= $1 \
     AND (last_updated, resource_type, id, version_id) < ($2, $3, $4, $5) \
     ORDER BY last_updated DESC, resource_type DESC, id DESC, version_id DESC LIMIT $6";

pub const HISTORY_TYPE: &str = "SELECT resource_type, id, version_id, last_updated, method, content \
     FROM resource_history WHERE resource_type = $1 AND last_updated >= $2 \
     AND (last_updated, resource_type, id, version_id) < ($3, $4, $5, $6) \
     ORDER BY last_updated DESC, resource_type DESC, id DESC, version_id DESC LIMIT $7";

pub const HISTORY_INSTANCE: &str = "SELECT resource_type, id, version_id, last_updated, method, content \
     FROM resource_history WHERE resource_type = $1 AND id = $2 AND last_updated >= $3 \
     AND (last_updated, resource_type, id, version_id) < ($4, $5, $6, $7) \
     ORDER BY last_updated DESC, resource_type DESC, id DESC, version_id DESC LIMIT $8";

/// The Subscriptions that can fire: not deleted, status requested or active, and (`$1`, `$2`:
/// the normalised criteria `type` or `type?%`) watching one type, all by the search index.
pub const SELECT_LIVE_SUBSCRIPTIONS: &str = "SELECT r.id, r.content FROM resources r \
     WHERE r.resource_type = 'Subscription' AND NOT r.deleted AND r.id IN (SELECT t.resource_id FROM search_token t \
     WHERE t.resource_type = 'Subscription' AND t.param = 'status' AND t.code IN ('requested', 'active')) \
     AND r.id IN (SELECT c.resource_id FROM search_string c WHERE c.resource_type = 'Subscription' \
     AND c.param = 'criteria' AND (c.normalized = $1 OR c.normalized LIKE $2))";

/// The Subscriptions with status requested, to activate.
pub const SELECT_REQUESTED_SUBSCRIPTIONS: &str = "SELECT r.id FROM resources r \
     WHERE r.resource_type = 'Subscription' AND NOT r.deleted AND r.id IN (SELECT t.resource_id FROM search_token t \
     WHERE t.resource_type = 'Subscription' AND t.param = 'status' AND t.code = 'requested')";

/// Whether any Consent rule is stored.
pub const ANY_CONSENT_RULE: &str = "SELECT consent_id FROM consent_rule LIMIT 1";
/// Ids of the `$1` resources whose `$2` references `$3/$4`.
pub const SELECT_REFERRERS: &str = "SELECT resource_id FROM search_reference \
     WHERE resource_type = $1 AND param = $2 AND target_type = $3 AND target_id = $4";
/// What resource `$1/$2` references through `$3`.
pub const SELECT_TARGETS: &str = "SELECT target_type, target_id FROM search_reference \
     WHERE resource_type = $1 AND resource_id = $2 AND param = $3 AND target_type IS NOT NULL AND target_id IS NOT NULL";
