-- A search sorted by a parameter reads each match's sort value with a lookup by owner and
-- parameter (MIN or MAX of the value). With the owner indexes on (resource_type, resource_id)
-- alone, the planner preferred the value indexes for that lookup and scanned every row of the
-- parameter for each match: `AuditEvent?_sort=-date` over 20,000 records took 58 s on SQLite.
-- The owner indexes now end in the parameter and its sort column, so the lookup is one seek.
-- Kept in step with the other engine's 0009.
DROP INDEX search_token_owner;
CREATE INDEX search_token_owner ON search_token (resource_type, resource_id, param, code);
DROP INDEX search_string_owner;
CREATE INDEX search_string_owner ON search_string (resource_type, resource_id, param, normalized);
DROP INDEX search_date_owner;
CREATE INDEX search_date_owner ON search_date (resource_type, resource_id, param, low);
DROP INDEX search_number_owner;
CREATE INDEX search_number_owner ON search_number (resource_type, resource_id, param, value);
DROP INDEX search_reference_owner;
CREATE INDEX search_reference_owner ON search_reference (resource_type, resource_id, param, target_id);
DROP INDEX search_uri_owner;
CREATE INDEX search_uri_owner ON search_uri (resource_type, resource_id, param, value);
