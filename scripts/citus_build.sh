#!/usr/bin/env bash
# Build Citus from its source tarball and install it into PostgreSQL 15, once.
# The source comes from DBRAG_CITUS_SRC (default: the vendored tarball beside
# the project). Exit 0 when Citus is installed (built now or before), 3 with
# a "SKIPPED:" line when the source is missing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
SRC=${DBRAG_CITUS_SRC:-$HERE/../shared/vendor/citus/citus-13.2.2.tar.gz}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
VERSION=13.2.2
STAMP="$($PG_CONFIG --pkglibdir)/citus.so.dbrag-built-$VERSION"

if [ -f "$STAMP" ] && [ -f "$($PG_CONFIG --pkglibdir)/citus.so" ]; then
    echo "citus: $VERSION already installed"
    exit 0
fi
if [ ! -f "$SRC" ]; then
    echo "SKIPPED: Citus source not found (looked for $SRC; set DBRAG_CITUS_SRC)"
    exit 3
fi

need_apt=()
for pkg in liblz4-dev libzstd-dev libcurl4-openssl-dev libkrb5-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

BUILD=$(mktemp -d /tmp/citus-build.XXXXXX)
trap 'rm -rf "$BUILD"' EXIT
tar xzf "$SRC" -C "$BUILD"
cd "$BUILD"/citus-*
# Debian's PostgreSQL 15.20 exports have_createdb_privilege(), which Citus
# 13.2.2 also defines; the vendored patch drops Citus's copy. Apply it only
# where the server headers declare the function.
PATCH=$(dirname "$SRC")/pg15.20-have_createdb_privilege.patch
if [ -f "$PATCH" ] && grep -qs have_createdb_privilege "$($PG_CONFIG --includedir-server)/commands/dbcommands.h"; then
    patch -p1 -s <"$PATCH"
fi
echo "citus: building $VERSION (several minutes)"
./configure -q PG_CONFIG="$PG_CONFIG" >/dev/null
make -s -j"$(nproc)" >/dev/null 2>"$BUILD/make.err" || { tail -30 "$BUILD/make.err"; exit 1; }
make -s install >/dev/null
touch "$STAMP"
echo "citus: $VERSION installed into $($PG_CONFIG --pkglibdir)"
