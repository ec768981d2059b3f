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
    /// The trace context (`traceparent`) of the write that queued it.
    pub traceparent: Option<String>,
}

impl Store {
    /// Claims up to `limit` due notifications for `lease` milliseconds. A row is claimed by one
    /// worker: PostgreSQL locks the rows it picks and skips those another replica holds, and
    /// the update re-checks the lease; SQLite has one writer.
    /// Returns the lease's end with them: the worker's proof of ownership.
    pub async fn claim_notifications(
        &self,
        lease: Millis,
        limit: i64,
    ) -> Result<(Millis, Vec<Notification>), StoreError> {
        let now = fhir::now_millis();
        let until = now + lease;
        let claimed = on_db!(self, writer, |pool, dialect| {
            sqlx::query_as(dialect.claim_notifications).bind(until).bind(now).bind(limit).fetch_all(pool).await?
        });
        Ok((until, claimed))
    }

    /// Removes a delivered notification, if the lease `until` still holds it (otherwise another
    /// worker took it over, and settles it).
    pub async fn notification_delivered(&self, id: &str, until: Millis) -> Result<(), StoreError> {
        on_db!(self, writer, |pool, _d| {
            sqlx::query("DELETE FROM subscription_outbox WHERE id = $1 AND lease_until = $2")
                .bind(id)
                .bind(until)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Records a failed attempt under the lease `until`: the next one is due at `next_attempt_at`.
    pub async fn notification_failed(
        &self,
        id: &str,
        until: Millis,
        next_attempt_at: Millis,
        error: &str,
    ) -> Result<(), StoreError> {
        on_db!(self, writer, |pool, _d| {
            sqlx::query(
                "UPDATE subscription_outbox SET attempts = attempts + 1, next_attempt_at = $1, lease_until = 0, \
                 last_error = $2 WHERE id = $3 AND lease_until = $4",
            )
            .bind(next_attempt_at)
            .bind(error)
            .bind(id)
            .bind(until)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The ids of Subscriptions waiting to be activated.
    pub async fn requested_subscriptions(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = on_db!(self, reader, |pool, _d| {
            sqlx::query_as(super::sql::SELECT_REQUESTED_SUBSCRIPTIONS).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(id,)| id).collect())
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
