-- Search index tables (SQLite), one per search parameter type. Each row belongs to the current
-- version of one resource and is rewritten in the same transaction as that resource.
-- Kept in step with ../postgres/0002_search_index.sql: same tables, columns and names.

-- Replaces 0001's identifier-only token table with the general one.
DROP TABLE search_token;

-- token: Coding / CodeableConcept / Identifier / code / boolean / ContactPoint values.
CREATE TABLE search_token (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,          -- search parameter code, e.g. status
    system        TEXT,                   -- NULL when the value has no system
    code          TEXT,                   -- NULL for a text-only row (CodeableConcept.text)
    display       TEXT,                   -- display / text, normalised, for :text
    type_system   TEXT,                   -- Identifier.type coding, for :of-type
    type_code     TEXT
);
CREATE INDEX search_token_value ON search_token (param, code, system, resource_type, resource_id);
CREATE INDEX search_token_owner ON search_token (resource_type, resource_id);

-- string: normalised (lower case, accents removed) and exact forms.
CREATE TABLE search_string (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    normalized    TEXT NOT NULL,
    exact         TEXT NOT NULL
);
CREATE INDEX search_string_value ON search_string (resource_type, param, normalized);
CREATE INDEX search_string_owner ON search_string (resource_type, resource_id);

-- date: the instant range [low, high) a date, dateTime, instant, Period or Timing covers,
-- in ms since the Unix epoch, UTC.
CREATE TABLE search_date (
    resource_type TEXT    NOT NULL,
    resource_id   TEXT    NOT NULL,
    param         TEXT    NOT NULL,
    low           INTEGER NOT NULL,
    high          INTEGER NOT NULL
);
CREATE INDEX search_date_value ON search_date (resource_type, param, low, high);
CREATE INDEX search_date_owner ON search_date (resource_type, resource_id);

-- number and quantity: the value, and for quantities the unit's system and code.
CREATE TABLE search_number (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    value         REAL NOT NULL,
    system        TEXT,
    code          TEXT
);
CREATE INDEX search_number_value ON search_number (resource_type, param, value);
CREATE INDEX search_number_owner ON search_number (resource_type, resource_id);

-- reference: a local target (type and id) or, for other servers, the absolute URL.
CREATE TABLE search_reference (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    target_type   TEXT,
    target_id     TEXT,
    url           TEXT
);
CREATE INDEX search_reference_target ON search_reference (param, target_id, target_type, resource_type, resource_id);
CREATE INDEX search_reference_owner ON search_reference (resource_type, resource_id);

-- uri and canonical values.
CREATE TABLE search_uri (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    value         TEXT NOT NULL
);
CREATE INDEX search_uri_value ON search_uri (resource_type, param, value);
CREATE INDEX search_uri_owner ON search_uri (resource_type, resource_id);

-- Which version of the index definitions the rows were written with; the server re-indexes
-- every current resource at start-up when its definitions are newer.
CREATE TABLE index_state (
    id      INTEGER NOT NULL,
    version INTEGER NOT NULL,
    CONSTRAINT index_state_pkey PRIMARY KEY (id)
);
INSERT INTO index_state (id, version) VALUES (1, 0);

-- Searches without a type-specific filter walk a type's current resources in id order.
CREATE INDEX resources_live ON resources (resource_type, deleted, id);
