#!/usr/bin/env bash
# Debian (or Ubuntu) packages the tests use, installed with apt-get only when missing (root is
# needed only then). .ci/run and the suite job of .github/workflows/ci.yml both call this, so
# a package added here reaches both.
#   - postgresql: the production-profile tracking test (MLflow on PostgreSQL + S3)
#   - shellcheck: actionlint's checks of the workflows' `run:` blocks, and the pre-commit hook
#   - prometheus: promtool, for the alert rules' checks and unit tests in deploy/monitoring/
set -euo pipefail

packages=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || packages+=(postgresql)
command -v shellcheck >/dev/null 2>&1 || packages+=(shellcheck)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)

if ((${#packages[@]})); then
    echo "[packages] installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q --no-install-recommends "${packages[@]}"
else
    echo "[packages] postgresql, shellcheck and prometheus (promtool) already installed"
fi
