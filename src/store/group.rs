//! Group commit for SQLite's one writer connection.
//!
//! Each SQLite commit writes every page its transaction touched to the write-ahead log and
//! syncs it. Writes that follow one another share most of those pages: the ends of the indexes
//! keyed by time-ordered ids, the audit chain, the pages of common search values. So write
//! transactions that queue for the writer join the transaction that is open, each in a
//! savepoint of its own, and the last of a group commits for all of them: the shared pages are
//! written and synced once per group instead of once per write.
//!
//! A member's changes join the group when it ends well and are rolled back to its savepoint
//! when it does not, without touching the others'. A member is told it succeeded only once the
//! group's commit did: if that commit fails, every member fails, and nothing was acknowledged.
//! A group closes when no write is waiting, or at [`MAX_MEMBERS`], so that its first member
//! does not wait for long.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{oneshot, Mutex, OwnedMutexGuard};

use super::checkpoint::Checkpoints;
use super::sql::SQLITE;
use super::StoreError;

/// The most write transactions one commit takes.
const MAX_MEMBERS: usize = 32;

/// The queue for the writer connection.
#[derive(Debug, Clone)]
pub struct Lane {
    writer: SqlitePool,
    slot: Arc<Mutex<Slot>>,
    /// Writes waiting for the slot.
    waiting: Arc<AtomicUsize>,
    /// How long a write waits for the writer before it is refused as unavailable.
    timeout: Duration,
}

/// The group transaction, while one is open.
#[derive(Debug)]
struct Slot {
    open: Option<Open>,
    /// Hears of every commit.
    checkpoints: Checkpoints,
}

#[derive(Debug)]
struct Open {
    tx: Transaction<'static, Sqlite>,
    members: usize,
    /// Members whose changes are in, each waiting to hear whether the group's commit held.
    waiters: Vec<oneshot::Sender<bool>>,
}

/// One write transaction of a group: it holds the writer until it ends.
#[derive(Debug)]
pub struct Member {
    slot: Option<OwnedMutexGuard<Slot>>,
    waiting: Arc<AtomicUsize>,
    /// Whether it runs in a savepoint. The member that opens a group needs none: nothing is
    /// in the transaction before it, so undoing it is undoing the transaction.
    savepoint: bool,
}

/// Counts a write as waiting until it has the slot, or gives up.
struct Waiting<'a> {
    lane: &'a Lane,
    served: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.lane.waiting.fetch_sub(1, Ordering::SeqCst);
        if !self.served {
            // A member may have handed the group on to this write, which gave up (it timed out,
            // or its request was cancelled): the group is closed on its behalf.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let slot = self.lane.slot.clone();
                runtime.spawn(async move {
                    let _ = close(slot.lock_owned().await).await;
                });
            }
        }
    }
}

impl Lane {
    pub fn new(writer: SqlitePool, timeout: Duration, checkpoints: Checkpoints) -> Self {
        let slot = Arc::new(Mutex::new(Slot { open: None, checkpoints }));
        Self { writer, slot, waiting: Arc::default(), timeout }
    }

    /// Starts a write transaction: in the group that is open, or in a new one.
    pub async fn join(&self) -> Result<Member, StoreError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut waiting = Waiting { lane: self, served: false };
        let Ok(slot) = tokio::time::timeout(self.timeout, self.slot.clone().lock_owned()).await else {
            return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        };
        waiting.served = true;
        drop(waiting);
        // On a task of its own, so that a cancelled request cannot leave the writer half-way
        // into a transaction: a member made for a request that is gone ends as it drops.
        let entering = tokio::spawn(enter(slot, self.writer.clone(), self.waiting.clone()));
        entering.await.unwrap_or(Err(StoreError::GroupFailed))
    }
}

/// Opens a group for a new member, or a savepoint for it in the group that is open.
async fn enter(
    mut slot: OwnedMutexGuard<Slot>,
    writer: SqlitePool,
    waiting: Arc<AtomicUsize>,
) -> Result<Member, StoreError> {
    let savepoint = slot.open.is_some();
    match slot.open.as_mut() {
        None => {
            let tx = writer.begin_with(SQLITE.begin_write).await?;
            slot.open = Some(Open { tx, members: 1, waiters: Vec::new() });
        }
        Some(open) => {
            if let Err(e) = sqlx::query("SAVEPOINT member").execute(&mut *open.tx).await {
                abandon(&mut slot);
                return Err(e.into());
            }
            open.members += 1;
        }
    }
    Ok(Member { slot: Some(slot), waiting, savepoint })
}

impl Member {
    /// The writer connection, inside this member's transaction or savepoint.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        let open = self.slot.as_mut().and_then(|s| s.open.as_mut()).expect("a member holds an open group");
        &mut open.tx
    }

    /// Ends this member: its changes join the group (`keep`) or are undone. When kept, resolves
    /// once the group's commit has (or has not) made them durable. The ending runs on a task of
    /// its own, so that a cancelled request cannot cut a release or a group's commit short.
    pub async fn end(mut self, keep: bool) -> Result<(), StoreError> {
        let slot = self.slot.take().expect("a member ends once");
        let ending = tokio::spawn(finish(slot, self.waiting.clone(), keep, self.savepoint));
        ending.await.unwrap_or(Err(StoreError::GroupFailed))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else { return };
        // Dropped before it ended: its request was cancelled, or an error path let it go. Its
        // changes are undone and the group goes on, on a task of its own.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let (waiting, savepoint) = (self.waiting.clone(), self.savepoint);
                runtime.spawn(async move {
                    let _ = finish(slot, waiting, false, savepoint).await;
                });
            }
            Err(_) => abandon(&mut slot),
        }
    }
}

/// Releases or rolls back the member's savepoint, then hands the group on to the next write
/// that waits, or commits it.
async fn finish(
    mut slot: OwnedMutexGuard<Slot>,
    waiting: Arc<AtomicUsize>,
    keep: bool,
    savepoint: bool,
) -> Result<(), StoreError> {
    let Some(open) = slot.open.as_mut() else { return Err(StoreError::GroupFailed) };
    if !keep && !savepoint {
        // The member opened the group and nothing else is in it: the transaction rolls back
        // as it drops.
        slot.open = None;
        return Ok(());
    }
    let ended = match (keep, savepoint) {
        (true, false) => Ok(Default::default()),
        (true, true) => sqlx::query("RELEASE member").execute(&mut *open.tx).await,
        (false, _) => match sqlx::query("ROLLBACK TO member").execute(&mut *open.tx).await {
            Ok(_) => sqlx::query("RELEASE member").execute(&mut *open.tx).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = ended {
        // SQLite rolls back the whole transaction on some errors (a full disk, an I/O error):
        // the members before are lost with it.
        abandon(&mut slot);
        return Err(e.into());
    }
    if waiting.load(Ordering::SeqCst) > 0 && open.members < MAX_MEMBERS {
        if !keep {
            return Ok(());
        }
        let (done, committed) = oneshot::channel();
        open.waiters.push(done);
        drop(slot);
        return match committed.await {
            Ok(true) => Ok(()),
            _ => Err(StoreError::GroupFailed),
        };
    }
    match close(slot).await {
        Err(e) if keep => Err(e.into()),
        _ => Ok(()),
    }
}

/// Commits the open group, if any, and tells its waiting members how it went.
async fn close(mut slot: OwnedMutexGuard<Slot>) -> Result<(), sqlx::Error> {
    let Some(open) = slot.open.take() else { return Ok(()) };
    let committed = open.tx.commit().await;
    if committed.is_ok() {
        slot.checkpoints.committed();
    }
    for waiter in open.waiters {
        let _ = waiter.send(committed.is_ok());
    }
    committed
}

/// Gives up the open group: its transaction rolls back, and its waiting members fail.
fn abandon(slot: &mut Slot) {
    if let Some(open) = slot.open.take() {
        tracing::error!(members = open.members, "a group of write transactions could not be committed");
        for waiter in open.waiters {
            let _ = waiter.send(false);
        }
    }
}
