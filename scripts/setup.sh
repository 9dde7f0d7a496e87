#!/usr/bin/env bash
# Install everything pg_dbrag needs on a fresh Debian bookworm machine, as root.
# Idempotent: each step is skipped when already done.
set -euo pipefail

PGRX_VERSION=0.18.0
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
export DEBIAN_FRONTEND=noninteractive

need_apt=()
for pkg in postgresql-15 postgresql-server-dev-15 postgresql-contrib libpq-dev libclang-dev clang sudo \
           mariadb-server mariadb-client pgbouncer curl pkg-config; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]}"
    apt-get update -qq
    # policy-rc.d may forbid starting services at install; we start our own clusters.
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    echo "setup: installing cargo-pgrx $PGRX_VERSION (takes a few minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
if ! grep -qs "pg15" "$HOME/.pgrx/config.toml"; then
    cargo pgrx init --pg15 "$PG_CONFIG"
fi

# Test tools for the suites that talk to PostgreSQL as tenants do.
if ! python3 -c "import psycopg, pytest, cryptography" 2>/dev/null; then
    echo "setup: installing psycopg, pytest and cryptography"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "psycopg[binary]>=3.1,<4" "pytest>=7,<9" "cryptography>=41"
fi
echo "setup: ready"
