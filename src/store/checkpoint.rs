//! SQLite's checkpoints, off the commit path.
//!
//! In WAL mode every commit appends the pages it changed to the write-ahead log, and a
//! checkpoint copies them back into the database file and syncs it. By default the connection
//! whose commit takes the log past 1,000 pages runs that checkpoint inside its commit, so every
//! few commits one write (and the requests waiting on the one writer behind it) waits for a
//! copy of hundreds of pages and a second sync. Here a connection of its own runs a passive
//! checkpoint shortly after writes commit, while the writer goes on: a passive checkpoint never
//! blocks readers or the writer, and copies only what no open read still needs.
//!
//! The writer keeps an automatic checkpoint at [`BACKSTOP_PAGES`], so that the log stays
//! bounded even if this connection falls behind or fails.

use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::mpsc;

/// How long the checkpointer lets commits gather after the first it hears of: pages that many
/// commits change (index ends, the audit chain) are then copied once.
const PAUSE: Duration = Duration::from_millis(100);

/// The log size (pages) at which the writer checkpoints by itself, as SQLite does by default
/// at 1,000: ten times that, about 40 MB, is reached only when the checkpointer cannot keep up.
pub const BACKSTOP_PAGES: u32 = 10_000;

/// Tells the checkpointer that a write committed.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    committed: mpsc::Sender<()>,
}

impl Checkpoints {
    /// Opens the checkpointer's connection and starts it on the current runtime. It stops when
    /// every [`Checkpoints`] is dropped.
    pub async fn start(options: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let conn = SqliteConnection::connect_with(&options).await?;
        let (committed, heard) = mpsc::channel(1);
        tokio::spawn(run(conn, heard));
        Ok(Self { committed })
    }

    /// A write committed: a checkpoint follows shortly.
    pub fn committed(&self) {
        // A full channel means a checkpoint is already due.
        let _ = self.committed.try_send(());
    }
}

async fn run(mut conn: SqliteConnection, mut heard: mpsc::Receiver<()>) {
    while heard.recv().await.is_some() {
        tokio::time::sleep(PAUSE).await;
        // What committed during the pause is in this checkpoint.
        while heard.try_recv().is_ok() {}
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut conn).await {
            // The writer's own checkpoint at the backstop keeps the log bounded meanwhile.
            tracing::warn!(error = %e, "a background checkpoint of the write-ahead log failed");
        }
    }
    let _ = conn.close().await;
}
