-- The W3C trace context of the write that queued a notification, so that its delivery joins
-- that trace (NULL when the write was not traced).
ALTER TABLE subscription_outbox ADD COLUMN traceparent TEXT;
