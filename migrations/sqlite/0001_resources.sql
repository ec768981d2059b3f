-- Current and historical versions of every resource (SQLite).
-- Kept in step with ../postgres/0001_resources.sql: same tables, columns and names.

-- The current version of each resource, one row per (type, id); reads by id use the primary key.
CREATE TABLE resources (
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    INTEGER NOT NULL,              -- meta.versionId, 1, 2, 3 …
    last_updated  INTEGER NOT NULL,              -- meta.lastUpdated, ms since the Unix epoch, UTC
    deleted       BOOLEAN NOT NULL,              -- the current version is a deletion
    content       TEXT,                          -- the resource JSON as served; NULL when deleted
    CONSTRAINT resources_pkey PRIMARY KEY (resource_type, id)
);

-- Every version, including deletions, for vread and _history.
CREATE TABLE resource_history (
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  INTEGER NOT NULL,
    method        TEXT    NOT NULL,              -- POST, PUT or DELETE: Bundle.entry.request.method
    content       TEXT,                          -- NULL for a deletion
    CONSTRAINT resource_history_pkey PRIMARY KEY (resource_type, id, version_id)
);

-- System and type history, newest first, paged by (last_updated, resource_type, id, version_id).
CREATE INDEX resource_history_system_order ON resource_history (last_updated, resource_type, id, version_id);
CREATE INDEX resource_history_type_order ON resource_history (resource_type, last_updated, id, version_id);

-- Token index values of current versions (identifier for conditional create; the search issue
-- adds the other parameters). Rewritten in the same transaction as the resource.
CREATE TABLE search_token (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,                 -- search parameter code, e.g. identifier
    system        TEXT,                          -- NULL when the value has no system
    code          TEXT NOT NULL
);
CREATE INDEX search_token_lookup ON search_token (resource_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (resource_type, resource_id);
