-- The provisions of active patient-privacy Consents (R4 consent.html), written in the same
-- transaction as the Consent (src/auth/consent.rs), so that every replica applies a change at
-- once. Rule 0 is the root provision; 1… are its nested exceptions. The has_* flags say which
-- kinds of criteria a provision has (a provision without criteria of a kind matches any).
CREATE TABLE consent_rule (
    consent_id   TEXT    NOT NULL,
    rule         BIGINT  NOT NULL,
    deny         BOOLEAN NOT NULL,
    patient_id   TEXT    NOT NULL,
    -- Milliseconds since the Unix epoch; NULL for an open end.
    period_start BIGINT,
    period_end   BIGINT,
    has_actor    BOOLEAN NOT NULL,
    has_purpose  BOOLEAN NOT NULL,
    has_class    BOOLEAN NOT NULL,
    has_label    BOOLEAN NOT NULL,
    has_data     BOOLEAN NOT NULL,
    CONSTRAINT consent_rule_pkey PRIMARY KEY (consent_id, rule)
);
CREATE INDEX consent_rule_patient ON consent_rule (patient_id, rule);

-- One criterion of a provision: kind is actor, purpose, class, label, data, data-related or
-- data-dependents; system is the label's system or the data reference's type.
CREATE TABLE consent_criterion (
    consent_id TEXT    NOT NULL,
    rule       BIGINT  NOT NULL,
    kind       TEXT    NOT NULL,
    system     TEXT,
    value      TEXT    NOT NULL
);
CREATE INDEX consent_criterion_rule ON consent_criterion (consent_id, rule, kind, value);
