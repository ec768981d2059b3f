-- Notifications of rest-hook Subscriptions (R4 subscription.html). A row is written in the same
-- transaction as the change that triggers it, so no acknowledged change loses its notification,
-- and deleted once the endpoint has accepted it: delivery is at least once.
CREATE TABLE subscription_outbox (
    -- The notification id, stable across retries, sent to receivers so they can drop duplicates.
    id              TEXT    NOT NULL,
    subscription_id TEXT    NOT NULL,
    resource_type   TEXT    NOT NULL,
    resource_id     TEXT    NOT NULL,
    -- The version that triggered it: its content is the payload.
    version_id      BIGINT  NOT NULL,
    -- Milliseconds since the Unix epoch.
    created_at      BIGINT  NOT NULL,
    -- When the next attempt is due (exponential backoff after failures).
    next_attempt_at BIGINT  NOT NULL,
    -- A worker that claimed the row holds it until then; another may take it over afterwards
    -- (the first one crashed or stalled).
    lease_until     BIGINT  NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Why the last attempt failed (status code or transport error; never the payload).
    last_error      TEXT,
    CONSTRAINT subscription_outbox_pkey PRIMARY KEY (id)
);
CREATE INDEX subscription_outbox_due ON subscription_outbox (next_attempt_at, created_at);
-- Dropping a subscription's queue (switched off, changed, failed for good).
CREATE INDEX subscription_outbox_subscription ON subscription_outbox (subscription_id);
