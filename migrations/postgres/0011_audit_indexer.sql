-- AuditEvents stored but not yet in the search index. A request's AuditEvents commit before it
-- is answered, each with an entry here; the indexer (src/audit.rs) writes their index rows
-- shortly after, in large batches, and removes the entries. A search that reads AuditEvents'
-- index rows indexes what waits first, so that it sees every record committed before it.
CREATE TABLE audit_unindexed (
    id TEXT PRIMARY KEY
);
