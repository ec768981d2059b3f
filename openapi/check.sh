#!/usr/bin/env bash
# Proves openapi/openapi.json against a live server: validates it as OpenAPI 3.1, generates a
# Python client (openapi-python-client) and TypeScript types (openapi-typescript), runs the e2e
# scripts in openapi/e2e/ with them, and runs schemathesis (no 5xx, no response that violates the
# document). Generated code and tools go to target/openapi-check/ and are never committed.
#
#   bash openapi/check.sh                 # what CI runs
#   SCHEMATHESIS_MAX_EXAMPLES=50 SCHEMATHESIS_WRITE_SECONDS=600 bash openapi/check.sh   # longer
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work="$root/target/openapi-check"
mkdir -p "$work"
spec="$root/openapi/openapi.json"

echo "openapi: tools (pinned in openapi/e2e/)"
if [ ! -x "$work/venv/bin/schemathesis" ] || ! cmp -s openapi/e2e/requirements.txt "$work/venv/requirements.txt"; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install -q --disable-pip-version-check -r openapi/e2e/requirements.txt
    cp openapi/e2e/requirements.txt "$work/venv/requirements.txt"
fi
export PATH="$work/venv/bin:$PATH"
mkdir -p "$work/ts"
cp openapi/e2e/package.json openapi/e2e/e2e.ts "$work/ts/"
if ! cmp -s openapi/e2e/package.json "$work/ts/node_modules/.installed-package.json"; then
    (cd "$work/ts" && npm install --silent --no-audit --no-fund)
    cp openapi/e2e/package.json "$work/ts/node_modules/.installed-package.json"
fi

echo "openapi: validate the document"
openapi-spec-validator "$spec"

echo "openapi: generate the Python client"
rm -rf "$work/python"
openapi-python-client generate --path "$spec" --output-path "$work/python/liaison_client" --meta none \
    --config openapi/e2e/client-config.yml --fail-on-warning

echo "openapi: generate the TypeScript types and compile the e2e script"
(cd "$work/ts" \
    && npx openapi-typescript "$spec" -o schema.d.ts \
    && npx tsc --strict --module nodenext --moduleResolution nodenext --target es2022 --types node \
        --outDir dist e2e.ts)

echo "openapi: start a server on a fresh SQLite database"
cargo build --locked --quiet --bin liaison
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rm -f "$work"/e2e.db*
"$root/target/debug/liaison" --listen-addr "127.0.0.1:$port" --database-url "sqlite://$work/e2e.db?mode=rwc" \
    --log-level warn > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/health/ready" > /dev/null && break
    sleep 0.2
done
base="http://127.0.0.1:$port/fhir"

echo "openapi: generated clients against the server"
PYTHONPATH="$work/python" python3 openapi/e2e/e2e.py "$base"
node "$work/ts/dist/e2e.js" "$base"

# schemathesis: no 5xx, and every response (status, media type, headers, body) as the document
# says. Reads, searches and deletes: the coverage and fuzzing phases, after the e2e scripts left
# data to find. Writes: their bodies are whole FHIR resources, whose generation is slow (recursive
# extensions), so creates, patches and transactions of every type get a few generated bodies
# each, within a time budget (updates share the create bodies' schemas).
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
echo "openapi: schemathesis, reads, searches and deletes"
schemathesis run "$spec" --url "$base" --no-color --seed 1 --workers 2 --checks "$checks" \
    --phases examples,coverage,fuzzing --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-10}" \
    --include-method GET --include-method DELETE
echo "openapi: schemathesis, writes"
schemathesis run "$spec" --url "$base" --no-color --seed 1 --workers 2 --checks "$checks" \
    --phases fuzzing --max-examples 3 --suppress-health-check=too_slow \
    --max-time "${SCHEMATHESIS_WRITE_SECONDS:-90}" \
    --include-operation-id-regex '^(create|patch|conditionalPatch)[A-Z]|^transaction$'

kill "$server"
wait "$server" 2>/dev/null || true
if grep -qi "panicked" "$work/server.log"; then
    echo "openapi: the server panicked" >&2
    exit 1
fi
echo "openapi: all checks passed"
