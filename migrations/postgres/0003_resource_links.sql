-- Local references held by current resources (every `Type/id` reference to a served type, not
-- only those a search parameter indexes), so that a delete which would leave a reference
-- dangling is refused (409), as the CapabilityStatement's referencePolicy "enforced" promises.
-- Rewritten in the same transaction as the referring resource.
CREATE TABLE resource_links (
    source_type TEXT NOT NULL,
    source_id   TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL
);
CREATE INDEX resource_links_target ON resource_links (target_type, target_id);
CREATE INDEX resource_links_source ON resource_links (source_type, source_id);

-- 0002 made the index version a 32-bit integer here; the server reads it as 64-bit, like SQLite's.
ALTER TABLE index_state ALTER COLUMN version TYPE BIGINT;
