#!/usr/bin/env python3
"""What the storage engine alone allows on this machine, for the rows Liaison writes.

Liaison's schema is created by starting the server once on an empty database. Then the rows
that one create, one audited read and one referral packet write (the resource, its history,
its search index and link rows, the AuditEvent with its own index rows, and the chain or the
linker's queue) are written straight into the engine, with no HTTP, no JSON work and no
driver round trips beyond the engine's own:

    python3 tools/engine_ceiling.py --engine sqlite
    python3 tools/engine_ceiling.py --engine postgres       # needs pgbench and psql

SQLite runs in this process (Python's sqlite3, one writer, as Liaison's), with N writes per
commit as a group commit would gather them. PostgreSQL runs pgbench with 16 connections, as the
benchmark's 16 clients. The figures are ceilings: Liaison does all of this and more per request.
"""

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

OBSERVATION = (
    '{"resourceType":"Observation","id":"ID","meta":{"versionId":"1","lastUpdated":"2026-11-30T21:40:54.950Z"},'
    '"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category",'
    '"code":"survey"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"44261-6","display":"PHQ-9 total score"}]},'
    '"subject":{"reference":"Patient/pat-1"},"effectiveDateTime":"2024-01-01T09:00:00Z",'
    '"valueQuantity":{"value":11,"unit":"score","system":"http://unitsofmeasure.org","code":"{score}"}}'
)
AUDIT_EVENT = (
    '{"resourceType":"AuditEvent","id":"ID","type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type",'
    '"code":"rest","display":"Restful Operation"},"subtype":[{"system":"http://hl7.org/fhir/restful-interaction",'
    '"code":"create"}],"action":"C","recorded":"2026-11-30T21:42:04.953Z","outcome":"0","outcomeDesc":"HTTP 201",'
    '"agent":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP"}]},'
    '"requestor":true,"who":{"display":"anonymous"},"network":{"address":"127.0.0.1","type":"2"}},'
    '{"type":{"coding":[{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"110152"}]},'
    '"who":{"display":"Liaison"},"requestor":false,"network":{"address":"http://127.0.0.1:8080/fhir","type":"5"}}],'
    '"source":{"observer":{"display":"Liaison"},"type":[{"system":"http://terminology.hl7.org/CodeSystem/security-source-type",'
    '"code":"4"}]},"entity":[{"what":{"reference":"Observation/ID/_history/1"},"type":{"system":'
    '"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2"},"role":{"system":'
    '"http://terminology.hl7.org/CodeSystem/object-role","code":"4"}},{"what":{"reference":"Patient/pat-1"},'
    '"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"1"},"role":{"system":'
    '"http://terminology.hl7.org/CodeSystem/object-role","code":"1"}}],"meta":{"versionId":"1","lastUpdated":'
    '"2026-11-30T21:42:04.953Z"}}'
)

COLUMNS = {
    "resources": "resource_type, id, version_id, last_updated, deleted, content",
    "resource_history": "resource_type, id, version_id, last_updated, method, content",
    "search_token": "resource_type, resource_id, param, system, code, display, type_system, type_code",
    "search_string": "resource_type, resource_id, param, normalized, exact",
    "search_date": "resource_type, resource_id, param, low, high",
    "search_number": "resource_type, resource_id, param, value, system, code",
    "search_reference": "resource_type, resource_id, param, target_type, target_id, url",
    "search_composite": "resource_type, resource_id, param, c1_system, c1_code, system, code, value",
    "resource_links": "source_type, source_id, target_type, target_id",
    "audit_unlinked": "id",
}


class Id:
    """A resource id: a fresh time-ordered text in SQLite, a pgbench variable in PostgreSQL."""

    def __init__(self, var):
        self.var = var


class Json:
    """A stored resource's JSON (kept in a side table for pgbench, whose scripts read `:x` as a variable)."""

    def __init__(self, key):
        self.key = key


ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
ENTITY = "http://terminology.hl7.org/CodeSystem/audit-entity-type"


def audit_rows(a, entity_type, entity_id, patient, action, subtype):
    """An AuditEvent's row and index rows, as Liaison stores one (14 index rows)."""
    ae = lambda *rest: ("AuditEvent", a, *rest)  # noqa: E731
    return {
        "resources": [("AuditEvent", a, 1, 1796074854952, False, Json("audit"))],
        "search_token": [
            ae("action", None, action, None, None, None),
            ae("entity-role", ROLE, "4", None, None, None),
            ae("entity-role", ROLE, "1", None, None, None),
            ae("entity-type", ENTITY, "2", None, None, None),
            ae("entity-type", ENTITY, "1", None, None, None),
            ae("outcome", None, "0", None, None, None),
            ae("subtype", "http://hl7.org/fhir/restful-interaction", subtype, None, None, None),
            ae("type", "http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "restful operation", None, None),
        ],
        "search_string": [
            ae("address", "127.0.0.1", "127.0.0.1"),
            ae("address", "http://127.0.0.1:8080/fhir", "http://127.0.0.1:8080/fhir"),
        ],
        "search_date": [ae("date", 1796074924953, 1796074924954)],
        "search_reference": [
            ae("entity", entity_type, entity_id, None),
            ae("entity", "Patient", patient, None),
            ae("patient", "Patient", patient, None),
        ],
    }


def create_rows(o, a, patient, audited=True):
    """A created Observation's rows (the benchmark's PHQ-9 score) and its AuditEvent's."""
    ob = lambda *rest: ("Observation", o, *rest)  # noqa: E731
    loinc = ("http://loinc.org", "44261-6")
    rows = {
        "resources": [ob(1, 1796074854950, False, Json("observation"))],
        "resource_history": [ob(1, 1796074854950, "POST", Json("observation"))],
        "search_token": [
            ob("category", "http://terminology.hl7.org/CodeSystem/observation-category", "survey", None, None, None),
            ob("code", *loinc, "phq-9 total score", None, None),
            ob("combo-code", *loinc, "phq-9 total score", None, None),
            ob("status", None, "final", None, None, None),
        ],
        "search_date": [ob("date", 1704099600000, 1704099601000)],
        "search_number": [
            ob("combo-value-quantity", 11, "http://unitsofmeasure.org", "{score}"),
            ob("value-quantity", 11, "http://unitsofmeasure.org", "{score}"),
        ],
        "search_reference": [ob("patient", "Patient", patient, None), ob("subject", "Patient", patient, None)],
        "search_composite": [
            ob("code-value-quantity", *loinc, "http://unitsofmeasure.org", "{score}", 11),
            ob("combo-code-value-quantity", *loinc, "http://unitsofmeasure.org", "{score}", 11),
        ],
        "resource_links": [("Observation", o, "Patient", patient)],
    }
    if audited:
        for table, more in audit_rows(a, "Observation", o, patient, "C", "create").items():
            rows.setdefault(table, []).extend(more)
    return rows


def merge(*parts):
    rows = {}
    for part in parts:
        for table, more in part.items():
            rows.setdefault(table, []).extend(more)
    return rows


def start_liaison(binary, url):
    """Starts Liaison on `url` until it is ready, so that its migrations create the schema."""
    port = random.randrange(20000, 30000)
    server = subprocess.Popen(
        [binary, "--database-url", url, "--listen-addr", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        sys.exit("liaison did not become ready")
    finally:
        server.terminate()
        server.wait()


# --- SQLite: in process, one writer -------------------------------------------------------------


def sqlite_ceiling(binary, seconds):
    with tempfile.TemporaryDirectory() as scratch:
        sqlite_ceiling_in(binary, seconds, os.path.join(scratch, "ceiling.db"))


def sqlite_ceiling_in(binary, seconds, path):
    start_liaison(binary, f"sqlite://{path}?mode=rwc")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("PRAGMA temp_store=memory")
    counter = [time.time_ns()]
    head = list(db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone())
    json = {"observation": OBSERVATION, "audit": AUDIT_EVENT}

    def fresh():
        counter[0] += 1
        return f"{counter[0]:032x}"

    def value(v):
        return json[v.key] if isinstance(v, Json) else v

    def commit(rows, audits):
        db.execute("BEGIN IMMEDIATE")
        for table, values in rows.items():
            marks = ", ".join("?" * len(values[0]))
            db.executemany(
                f"INSERT INTO {table} ({COLUMNS[table]}) VALUES ({marks})",
                [tuple(value(v) for v in row) for row in values],
            )
        links = []
        for a in audits:  # SQLite links at commit: chain rows and the new head
            head[0] += 1
            digest = f"{hash((head[1], a)) & (2**256 - 1):064x}"
            links.append((head[0], a, head[1], digest))
            head[1] = digest
        db.executemany("INSERT INTO audit_chain (seq, id, prev_hash, hash) VALUES (?, ?, ?, ?)", links)
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", head)
        db.execute("COMMIT")

    def create():
        o, a = fresh(), fresh()
        return create_rows(o, a, f"pat-{random.randrange(200)}"), [a]

    def read():
        a, patient = fresh(), f"pat-{random.randrange(200)}"
        return audit_rows(a, "Patient", patient, patient, "R", "read"), [a]

    def commit_batch(write, per_commit):
        batch = [write() for _ in range(per_commit)]
        commit(merge(*(rows for rows, _ in batch)), [a for _, audits in batch for a in audits])

    def rate(write, per_commit):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            commit_batch(write, per_commit)
            done += per_commit
        return done / (time.perf_counter() - start)

    for _ in range(20):  # some data first, so that the indexes are not empty
        commit_batch(create, 100)
    print(f"SQLite {sqlite3.sqlite_version}, WAL, one writer, in process")
    for synchronous in ("FULL", "OFF"):
        db.execute(f"PRAGMA synchronous={synchronous}")
        for name, write in (("create", create), ("audited read", read)):
            for per_commit in (1, 16, 256):
                print(f"  synchronous={synchronous:4s} {name:12s} {per_commit:3d} per commit: {rate(write, per_commit):8,.0f}/s", flush=True)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# --- PostgreSQL: pgbench, 16 connections --------------------------------------------------------


def pg_literal(v):
    if isinstance(v, Id):
        return f"'{v.var}' || :{v.var}"
    if isinstance(v, Json):
        return f"(SELECT v FROM ceiling_json WHERE k = '{v.key}')"
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return "'" + v.replace("'", "''") + "'"


def pg_inserts(rows):
    return [
        f"INSERT INTO {table} ({COLUMNS[table]}) VALUES "
        + ", ".join("(" + ", ".join(pg_literal(v) for v in row) + ")" for row in values)
        for table, values in rows.items()
    ]


def one_statement(inserts):
    """Data-modifying CTEs: every table's rows in one statement, one round trip."""
    ctes = ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(inserts[:-1]))
    return (f"WITH {ctes} " if ctes else "") + inserts[-1] + ";"


def pgbench_scripts():
    ids = lambda *names: "".join(f"\\set {n} random(1, 4000000000000000000)\n" for n in names)  # noqa: E731
    head = "\\set p random(0, 199)\n"
    patient = Id("p")  # rendered as 'p' || :p; the patients are p0 … p199
    queued = lambda a: {"audit_unlinked": [(Id(a),)]}  # noqa: E731
    create = merge(create_rows(Id("o"), Id("a"), patient), queued("a"))
    plain = create_rows(Id("o"), Id("a"), patient, audited=False)
    read = merge(audit_rows(Id("a"), "Patient", patient, patient, "R", "read"), queued("a"))
    # The statements of a create as Liaison sends them: the row, the live Subscriptions, the
    # AuditEvent's row, one multi-row INSERT per table, the reference check, the links, the queue.
    observation, audit = ({"resources": [row]} for row in create["resources"])
    tables = {t: v for t, v in create.items() if t not in ("resources", "resource_links", "audit_unlinked")}
    liaison = [
        *pg_inserts(observation),
        "SELECT id FROM resources WHERE resource_type = 'Subscription' AND NOT deleted LIMIT 1",
        *pg_inserts(audit),
        *pg_inserts(tables),
        "SELECT id FROM resources WHERE NOT deleted AND resource_type = 'Patient' AND id = 'p' || :p",
        *pg_inserts({t: create[t] for t in ("resource_links", "audit_unlinked")}),
    ]
    packet = [merge(create_rows(Id(f"o{i}"), Id(f"a{i}"), patient), queued(f"a{i}")) for i in range(15)]
    packet_ids = ids(*(f"o{i}" for i in range(15)), *(f"a{i}" for i in range(15)))
    return {
        "resource row only": head + ids("o") + one_statement(pg_inserts({"resources": plain["resources"]})),
        "row and history": head + ids("o") + one_statement(pg_inserts({t: plain[t] for t in ("resources", "resource_history")})),
        "create, no audit, 1 statement": head + ids("o") + one_statement(pg_inserts(plain)),
        "create, 1 statement": head + ids("o", "a") + one_statement(pg_inserts(create)),
        f"create, Liaison's {len(liaison)} statements": head + ids("o", "a") + "BEGIN;\n" + ";\n".join(liaison) + ";\nCOMMIT;",
        "audited read, 1 statement": head + ids("a") + "SELECT content FROM resources WHERE resource_type = 'Patient' "
        "AND id = 'p' || :p;\n" + one_statement(pg_inserts(read)),
        "packet of 15 creates (per resource)": head + packet_ids + "BEGIN;\n"
        + "\n".join(one_statement(pg_inserts(p)) for p in packet) + "\nCOMMIT;",
    }


def postgres_ceiling(binary, seconds, url, database):
    admin = f"{url}/postgres"
    subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {database}"], check=True)
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {database}"], check=True)
    target = f"{url}/{database}"
    start_liaison(binary, target)
    setup = (
        "CREATE TABLE ceiling_json (k text PRIMARY KEY, v text);"
        f"INSERT INTO ceiling_json VALUES ('observation', {pg_literal(OBSERVATION)}), ('audit', {pg_literal(AUDIT_EVENT)});"
        "INSERT INTO resources SELECT 'Patient', 'p' || i, 1, 0, false, '{}' FROM generate_series(0, 199) i;"
    )
    subprocess.run(["psql", target, "-qc", setup], check=True)
    version = subprocess.run(["psql", target, "-Atc", "SHOW server_version"], capture_output=True, text=True).stdout.strip()
    print(f"PostgreSQL {version}, pgbench -M prepared, 16 connections, 2 threads, {seconds} s each")
    with tempfile.TemporaryDirectory() as scratch:
        for name, script in pgbench_scripts().items():
            path = os.path.join(scratch, "script.sql")
            with open(path, "w") as f:
                f.write(script + "\n")
            run = subprocess.run(
                ["pgbench", "-n", "-M", "prepared", "-c", "16", "-j", "2", "-T", str(seconds), "-f", path, target],
                capture_output=True,
                text=True,
            )
            tps = [line for line in run.stdout.splitlines() if line.startswith("tps")]
            if run.returncode != 0 or not tps:
                sys.exit(f"pgbench failed on {name}: {run.stderr.strip()[-500:]}")
            rate = float(tps[0].split()[2]) * (15 if name.startswith("packet") else 1)
            print(f"  {name:36s} {rate:8,.0f}/s", flush=True)
    subprocess.run(["psql", admin, "-qc", f"DROP DATABASE {database}"], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--liaison", default="target/release/liaison", help="the server binary, for its schema")
    parser.add_argument("--seconds", type=int, default=15, help="length of each measurement")
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432", help="server, without a database")
    parser.add_argument("--pg-database", default="liaison_ceiling", help="scratch database (dropped and made anew)")
    args = parser.parse_args()
    if args.engine == "sqlite":
        sqlite_ceiling(args.liaison, args.seconds)
    else:
        postgres_ceiling(args.liaison, args.seconds, args.pg_url, args.pg_database)


if __name__ == "__main__":
    main()
