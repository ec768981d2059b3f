-- AuditEvents stored but not yet linked into the hash chain. A write commits its AuditEvents
-- with an entry each here, and the linker (src/store/audit.rs) appends their links shortly
-- after and removes the entries, so that no write waits for the chain's head.
CREATE TABLE audit_unlinked (
    id TEXT PRIMARY KEY
);
