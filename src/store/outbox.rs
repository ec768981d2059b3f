//! The subscription outbox: notifications written in the transaction of the change that
//! triggers them, claimed by delivery workers with a lease (so that with several replicas on
//! one PostgreSQL each is sent by one worker at a time, and a crashed worker's claims expire),
//! and removed once delivered.

use super::sql::{Dialect, POSTGRES, SQLITE};
use super::{on_db, Db, Store, StoreError};
use crate::fhir::{self, Millis};

/// A notification to send: which subscription, and the resource version that triggered it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Notification {
    pub id: String,
    pub subscription_id: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: i64,
    /// Attempts made before this one.
    pub attempts: i32,
}

impl Store {
    /// Claims up to `limit` due notifications for `lease` milliseconds. A row is claimed by one
    /// worker: PostgreSQL locks the rows it picks and skips those another replica holds, and
    /// the update re-checks the lease; SQLite has one writer.
    pub async fn claim_notifications(&self, lease: Millis, limit: i64) -> Result<Vec<Notification>, StoreError> {
        let now = fhir::now_millis();
        Ok(on_db!(self, writer, |pool, dialect| {
            sqlx::query_as(dialect.claim_notifications).bind(now + lease).bind(now).bind(limit).fetch_all(pool).await?
        }))
    }

    /// Removes a delivered notification.
    pub async fn notification_delivered(&self, id: &str) -> Result<(), StoreError> {
        on_db!(self, writer, |pool, _d| {
            sqlx::query("DELETE FROM subscription_outbox WHERE id = $1").bind(id).execute(pool).await?;
        });
        Ok(())
    }

    /// Records a failed attempt: the next one is due at `next_attempt_at`.
    pub async fn notification_failed(&self, id: &str, next_attempt_at: Millis, error: &str) -> Result<(), StoreError> {
        on_db!(self, writer, |pool, _d| {
            sqlx::query(
                "UPDATE subscription_outbox SET attempts = attempts + 1, next_attempt_at = $1, lease_until = 0, \
                 last_error = $2 WHERE id = $3",
            )
            .bind(next_attempt_at)
            .bind(error)
            .bind(id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Drops every queued notification of a subscription (it was switched off or failed for good).
    pub async fn drop_notifications(&self, subscription_id: &str) -> Result<u64, StoreError> {
        Ok(on_db!(self, writer, |pool, _d| {
            sqlx::query("DELETE FROM subscription_outbox WHERE subscription_id = $1")
                .bind(subscription_id)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// How many notifications wait to be delivered.
    pub async fn outbox_depth(&self) -> Result<i64, StoreError> {
        Ok(on_db!(self, reader, |pool, _d| {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM subscription_outbox").fetch_one(pool).await?;
            n
        }))
    }
}
