#!/usr/bin/env bash
# Package test (run by scripts/test.sh once its clusters are stopped): build
# the .deb (scripts/package.sh), move any cargo-installed pg_dbrag files out
# of the system PostgreSQL 15, `apt-get install ./….deb`, CREATE EXTENSION
# and a short smoke test on a throwaway cluster of the system PostgreSQL,
# `dpkg -r`, check nothing is left, and put the cargo-installed files back,
# so the system PostgreSQL ends exactly as it started.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

WORK=${DBRAG_TEST_WORK:-/tmp/pg_dbrag_test}
PORT=${DBRAG_TEST_PORT:-55432}
PASSWORD=${DBRAG_TEST_PASSWORD:-postgres-test-pw}
JWT_SECRET=${DBRAG_TEST_JWT_SECRET:-test-jwt-secret-0123456789abcdef}
MASTER_KEY=${DBRAG_TEST_MASTER_KEY:-000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f}
NAME=postgresql-15-pg-dbrag
SYS_BIN=/usr/lib/postgresql/15/bin
SYS_LIB=/usr/lib/postgresql/15/lib
SYS_EXT=/usr/share/postgresql/15/extension
CLUSTER=$WORK/package
VERSION=$(current_version)

echo "== Debian package"
t0=$(date +%s)
deb=$(bash scripts/package.sh | tee "$WORK/package.out" | tail -1)
echo "built $(basename "$deb"): $(head -1 "$WORK/package.out"), $(($(date +%s) - t0)) s"
if dpkg -s "$NAME" >/dev/null 2>&1; then
    echo "$NAME is installed already; remove it first (dpkg -r $NAME)"
    exit 1
fi

# Cargo-installed files in the system PostgreSQL (test.sh installs there
# when DBRAG_PG_PREFIX is not set) go aside for the test and come back after.
aside=$(mktemp -d "$WORK/package-aside.XXXXXX")
mkdir -p "$aside/lib" "$aside/ext"
shopt -s nullglob
for f in "$SYS_LIB"/pg_dbrag*; do mv "$f" "$aside/lib/"; done
for f in "$SYS_EXT"/pg_dbrag*; do mv "$f" "$aside/ext/"; done
shopt -u nullglob
finish() {
    PG_BIN=$SYS_BIN stop_cluster "$CLUSTER"
    if dpkg -s "$NAME" >/dev/null 2>&1; then
        dpkg -r "$NAME" >/dev/null || true
    fi
    local f
    for f in "$aside"/lib/*; do [ -e "$f" ] && mv "$f" "$SYS_LIB/"; done
    for f in "$aside"/ext/*; do [ -e "$f" ] && mv "$f" "$SYS_EXT/"; done
    rmdir "$aside/lib" "$aside/ext" "$aside" 2>/dev/null || echo "could not put back everything: see $aside"
}
trap finish EXIT

DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$deb" >"$WORK/apt.log" 2>&1 || {
    cat "$WORK/apt.log"
    exit 1
}
for f in "$SYS_LIB/pg_dbrag.so" "$SYS_EXT/pg_dbrag.control" "$SYS_EXT/pg_dbrag--$VERSION.sql" \
         $(python3 scripts/upgrade_script.py list | sed "s|^|$SYS_EXT/|"); do
    dpkg -S "$f" >/dev/null || { echo "$f is not in the package"; exit 1; }
done
if declare -F install_dataplane_helper >/dev/null; then
    dpkg -S "$SYS_LIB/pg_dbrag_dataplane" >/dev/null || { echo "the data-plane helper is not in the package"; exit 1; }
fi

PG_BIN=$SYS_BIN start_cluster_retry "$CLUSTER" "$PORT" "$PASSWORD" \
    "shared_preload_libraries = 'pg_dbrag'" "dbrag.jwt_secret = '$JWT_SECRET'" \
    "dbrag.master_key = '$MASTER_KEY'"
export PGPASSWORD=$PASSWORD
sql() { "$SYS_BIN/psql" -h 127.0.0.1 -p "$PORT" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
sql -U postgres -d postgres -c "CREATE DATABASE smoke"
sql -U postgres -d smoke -o /dev/null <<'EOF'
CREATE EXTENSION pg_dbrag CASCADE;
CREATE ROLE smoke_a LOGIN PASSWORD 'smoke-pw' NOSUPERUSER NOBYPASSRLS;
CREATE ROLE smoke_b LOGIN PASSWORD 'smoke-pw' NOSUPERUSER NOBYPASSRLS;
SELECT dbrag.add_tenant_member(dbrag.create_tenant('smoke a'), 'smoke_a');
SELECT dbrag.add_tenant_member(dbrag.create_tenant('smoke b'), 'smoke_b');
EOF
got=$(sql -U postgres -d smoke -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_dbrag'" \
          -c "SELECT string_agg(source || '>' || target, ',' ORDER BY source) FROM pg_extension_update_paths('pg_dbrag') WHERE target = '$VERSION' AND path IS NOT NULL")
echo "installed version, update paths: $(echo $got)"
[ "$(echo "$got" | head -1)" = "$VERSION" ] || { echo "expected version $VERSION"; exit 1; }
for f in $(python3 scripts/upgrade_script.py list); do
    from=$(basename "$f" .sql | sed 's/^pg_dbrag--\(.*\)--.*$/\1/')
    echo "$got" | grep -q "$from>$VERSION" || { echo "no update path from $from"; exit 1; }
done
# Each tenant's login role sees only its own tenant; secrets round-trip.
for role in smoke_a smoke_b; do
    out=$(PGPASSWORD=smoke-pw sql -U "$role" -d smoke \
        -c "SELECT name FROM control_plane.tenants" \
        -c "SELECT dbrag.decrypt(dbrag.encrypt('s3cret', 'x'), 'x')")
    want="smoke ${role#smoke_}"
    [ "$out" = "$want"$'\n'"s3cret" ] || { echo "$role saw: $out"; exit 1; }
done
echo "smoke test passed: CREATE EXTENSION, two tenants isolated, encrypt/decrypt"
PG_BIN=$SYS_BIN stop_cluster "$CLUSTER"

dpkg -r "$NAME" >/dev/null
left=$(ls "$SYS_LIB"/pg_dbrag* "$SYS_EXT"/pg_dbrag* 2>/dev/null || true)
if [ -n "$left" ]; then
    echo "dpkg -r left files behind: $left"
    exit 1
fi
dpkg -s "$NAME" >/dev/null 2>&1 && { echo "$NAME still installed"; exit 1; }
echo "package test: installed, smoke-tested and removed cleanly in $(($(date +%s) - t0)) s"
