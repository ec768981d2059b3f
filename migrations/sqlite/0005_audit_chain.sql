-- The audit trail's hash chain: one row per AuditEvent (stored in `resources`), in the order
-- written. `hash` is SHA-256 over the previous row's hash, the sequence number, the id and the
-- AuditEvent's stored JSON, so that editing, removing or reordering any record breaks the chain
-- from that record on (`liaison verify-audit` finds the first broken link).
CREATE TABLE audit_chain (
    seq       BIGINT PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);

-- The head of the chain (one row): the last sequence number, hash and recorded time
-- (milliseconds; each record's is later than its predecessor's). Writers lock it to append,
-- which orders the chain across connections and replicas.
CREATE TABLE audit_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    seq      BIGINT NOT NULL,
    hash     TEXT NOT NULL,
    recorded BIGINT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, recorded) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);
