-- Composite search parameters (Observation code-value-quantity and kin): each row pairs the
-- first component (a code) with one value of the second, both from the same element, so that
-- `code-value-quantity=http://loinc.org|44261-6$gt10` matches a score above 10 *of that code*.
-- The second component's columns are named as in the table of its type; a row fills those of
-- one type. Kept in step with ../sqlite/0004_search_composite.sql.
CREATE TABLE search_composite (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    c1_system     TEXT,
    c1_code       TEXT,
    system        TEXT,                 -- token: coding system; quantity: unit system
    code          TEXT,                 -- token: code; quantity: unit code
    display       TEXT,
    value         DOUBLE PRECISION,
    low           BIGINT,
    high          BIGINT,
    normalized    TEXT COLLATE "C",
    exact         TEXT
);
CREATE INDEX search_composite_value ON search_composite (resource_type, param, c1_code, c1_system);
CREATE INDEX search_composite_owner ON search_composite (resource_type, resource_id);
