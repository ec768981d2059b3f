//! The audit trail's hash chain: every AuditEvent gets a link whose SHA-256 hash covers the
//! previous link's hash, its sequence number, its id and its stored JSON.
//!
//! A write stores its AuditEvents in its own transaction ([`super::WriteTx::record_audits`],
//! and at commit). Taking them into the chain depends on the engine
//! ([`super::sql::Dialect::link_at_commit`]):
//! - SQLite has one writer, so a write links its AuditEvents itself, before it commits.
//! - On PostgreSQL a write queues them instead (`audit_unlinked`, in its transaction), and the
//!   linker ([`Store::link_audits`], run by [`crate::audit::AuditLog`] whenever a write queued
//!   records, and every second) appends their links after the commit, in id order, which is
//!   time order. The chain's head, which orders the chain across replicas, is then locked only
//!   by linkers: a write that held it from its link to its commit (as before) made concurrent
//!   writes commit one at a time.
//!
//! [`Store::verify_audit`] links what waits, then walks the chain and reports the first link
//! that does not hold.

use std::sync::atomic::{AtomicI64, Ordering};

use sha2::{Digest, Sha256};

use crate::fhir::Millis;

use super::sql::{self, Dialect, POSTGRES, SQLITE};
use super::{on_db, Db, Store, StoreError};

/// The hash before the first link.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of link `seq` for AuditEvent `id` with stored JSON `content`.
pub fn link_hash(prev: &str, seq: i64, id: &str, content: &str) -> String {
    let mut h = Sha256::new();
    for part in [prev, &seq.to_string(), id, content] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The last recorded time this process gave out, or saw at the chain's head.
static LAST: AtomicI64 = AtomicI64::new(0);

/// The first of `n` consecutive recorded times (milliseconds) for new AuditEvents: never
/// earlier than the clock, and later than any this process gave out or saw at the chain's head
/// before, so that a client's successive interactions sort by date in the order they happened.
/// Appends running at the same moment link into the chain in the order they lock its head, so
/// there, date order and chain order may differ by a millisecond or two.
pub fn recorded_times(n: usize) -> Millis {
    let n = i64::try_from(n).unwrap_or(i64::MAX).max(1);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let first = crate::fhir::now_millis().max(last + 1);
        match LAST.compare_exchange_weak(last, first + n - 1, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return first,
            Err(seen) => last = seen,
        }
    }
}

/// Notes a recorded time seen at the chain's head: later times start after it.
pub fn recorded_after(seen: Millis) {
    LAST.fetch_max(seen, Ordering::Relaxed);
}

/// What a walk of the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Links that held, from the first.
    pub verified: u64,
    /// The first link that does not hold, if any.
    pub broken: Option<BrokenLink>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub seq: i64,
    /// The AuditEvent the link is for (when the link itself is there).
    pub id: Option<String>,
    pub reason: String,
}

impl Store {
    /// Walks the audit chain from the first link and checks every link: sequence numbers
    /// without gaps, each link naming its predecessor's hash, each hash matching its
    /// AuditEvent as stored, the head matching the last link, and no AuditEvent outside the
    /// chain. The walk reads one snapshot, so appends committed meanwhile are not mistaken for
    /// damage.
    pub async fn verify_audit(&self) -> Result<ChainReport, StoreError> {
        const BATCH: i64 = 1000;
        // What waits for its link is linked first (as the server's linker would), so that the
        // walk covers every record committed so far. A damaged chain may refuse new links; the
        // walk then says where. Where writes link their own, nothing waits.
        if !self.links_at_commit() {
            if let Err(e) = self.link_audits(BATCH).await {
                tracing::warn!(error = %e, "linking the AuditEvents that wait for it failed");
            }
        }
        let mut expected_seq = 1_i64;
        let mut prev = GENESIS.to_owned();
        let broken = |seq: i64, id: Option<&str>, reason: &str| ChainReport {
            verified: (seq - 1).max(0) as u64,
            broken: Some(BrokenLink { seq, id: id.map(str::to_owned), reason: reason.to_owned() }),
        };
        let (head_seq, head_hash, events) = on_db!(self, reader, |pool, dialect| {
            let mut snapshot = pool.begin_with(dialect.begin_snapshot).await?;
            loop {
                let rows: Vec<(i64, String, String, String, Option<String>)> = sqlx::query_as(sql::SELECT_AUDIT_LINKS)
                    .bind(expected_seq)
                    .bind(BATCH)
                    .fetch_all(&mut *snapshot)
                    .await?;
                let done = (rows.len() as i64) < BATCH;
                for (seq, id, prev_hash, hash, content) in rows {
                    if seq != expected_seq {
                        return Ok(broken(expected_seq, None, "the link is missing (a record was removed)"));
                    }
                    if prev_hash != prev {
                        return Ok(broken(seq, Some(&id), "the link does not follow its predecessor"));
                    }
                    let Some(content) = content else {
                        return Ok(broken(seq, Some(&id), "the AuditEvent is missing"));
                    };
                    if link_hash(&prev, seq, &id, &content) != hash {
                        return Ok(broken(seq, Some(&id), "the AuditEvent or its link was altered"));
                    }
                    prev = hash;
                    expected_seq += 1;
                }
                if done {
                    break;
                }
            }
            let (head_seq, head_hash, _): (i64, String, i64) =
                sqlx::query_as(sql::SELECT_AUDIT_HEAD).fetch_one(&mut *snapshot).await?;
            let (events,): (i64,) = sqlx::query_as(sql::COUNT_AUDIT_EVENTS).fetch_one(&mut *snapshot).await?;
            let (waiting,): (i64,) = sqlx::query_as(sql::COUNT_UNLINKED).fetch_one(&mut *snapshot).await?;
            snapshot.rollback().await?;
            (head_seq, head_hash, events - waiting)
        });
        let last = expected_seq - 1;
        if head_seq != last || head_hash != prev {
            return Ok(broken(last + 1, None, "records after the last link were removed"));
        }
        if events != last {
            return Ok(broken(last + 1, None, "there are AuditEvents outside the chain and its linker's queue"));
        }
        Ok(ChainReport { verified: last as u64, broken: None })
    }
}
