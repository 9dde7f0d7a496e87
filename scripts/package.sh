#!/usr/bin/env bash
# Build the Debian package postgresql-15-pg-dbrag_<version>_<arch>.deb the way
# pg_search and pg_graphql ship theirs: `cargo pgrx package` lays out the
# extension's files, dpkg-deb wraps them. The package holds the shared
# library, the control file, the install script of this version and every
# upgrade script (the released ones in sql/ and the next one expanded from its
# template in sql/upgrade/, so ALTER EXTENSION pg_dbrag UPDATE works from any
# earlier release), installed where Debian's PostgreSQL 15 looks for them.
# Prints the path of the .deb on its last line.
#
#   bash scripts/package.sh            # into target/debian/
#   DBRAG_PACKAGE_DIR=/some/dir bash scripts/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

VERSION=$(current_version)
PG_MAJOR=15
ARCH=$(dpkg --print-architecture)
NAME=postgresql-$PG_MAJOR-pg-dbrag
OUT=${DBRAG_PACKAGE_DIR:-$REPO_ROOT/target/debian}
STAGE=$OUT/$NAME
DEB=$OUT/${NAME}_${VERSION}_${ARCH}.deb
# Where Debian's postgresql-15 looks (pg_config --pkglibdir / --sharedir).
LIBDIR=/usr/lib/postgresql/$PG_MAJOR/lib
EXTDIR=/usr/share/postgresql/$PG_MAJOR/extension
DOCDIR=/usr/share/doc/$NAME

rm -rf "$OUT/pgrx" "$STAGE" "$DEB"
mkdir -p "$OUT"
# Built against $PG_CONFIG, the same as install_extension, so nothing is
# compiled twice; the files are then moved from that installation's layout
# to the system one (DBRAG_PG_PREFIX points PG_CONFIG at a relocated copy).
(cd "$REPO_ROOT" && cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$OUT/pgrx" >"$OUT/pgrx.log" 2>&1) || {
    tail -40 "$OUT/pgrx.log"
    exit 1
}
mkdir -p "$STAGE/DEBIAN" "$STAGE$LIBDIR" "$STAGE$EXTDIR" "$STAGE$DOCDIR"
cp "$OUT/pgrx$("$PG_CONFIG" --pkglibdir)/pg_dbrag.so" "$STAGE$LIBDIR/"
cp "$OUT/pgrx$("$PG_CONFIG" --sharedir)/extension/pg_dbrag.control" \
   "$OUT/pgrx$("$PG_CONFIG" --sharedir)/extension/pg_dbrag--$VERSION.sql" "$STAGE$EXTDIR/"
# Every upgrade script (cargo pgrx package copies those of sql/ too; take
# them from sql/ so none is missed).
for f in sql/pg_dbrag--*--*.sql; do
    [ -e "$f" ] && cp "$OUT/pgrx$("$PG_CONFIG" --sharedir)/extension/$(basename "$f")" "$STAGE$EXTDIR/"
done
# The unreleased step's script, expanded from its template (scripts/upgrade_script.py).
python3 scripts/upgrade_script.py install "$STAGE$EXTDIR" >/dev/null
# The out-of-process data-plane helper, when this tree has one: the install
# step of scripts/lib.sh builds it and puts it into the pkglibdir it is given.
if declare -F install_dataplane_helper >/dev/null; then
    install_dataplane_helper "$STAGE$LIBDIR"
fi
# Other files an install puts next to the extension: "source destination" lines
# (destination absolute, for the system PostgreSQL 15) from a function
# extra_install_files that scripts/lib.sh may define for what its
# install_extension installs besides the extension, and from DBRAG_EXTRA_FILES.
extra=${DBRAG_EXTRA_FILES:-}
if declare -F extra_install_files >/dev/null; then
    extra=$(extra_install_files)$'\n'$extra
fi
while read -r src dest; do
    [ -n "${src:-}" ] || continue
    mkdir -p "$STAGE$(dirname "$dest")"
    cp "$src" "$STAGE$dest"
done <<<"$extra"
strip --strip-debug "$STAGE$LIBDIR/pg_dbrag.so"
chmod 0644 "$STAGE$LIBDIR/pg_dbrag.so" "$STAGE$EXTDIR"/*

cp README.md "$STAGE$DOCDIR/README.md"
gzip -9n "$STAGE$DOCDIR/README.md"
cat >"$STAGE$DOCDIR/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pg_dbrag
Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

depends="postgresql-$PG_MAJOR, postgresql-contrib"
# The library links libpq (remote PostgreSQL connections); say so.
if ldd "$STAGE$LIBDIR/pg_dbrag.so" | grep -q 'libpq\.so\.5'; then
    depends="$depends, libpq5"
fi
cat >"$STAGE/DEBIAN/control" <<EOF
Package: $NAME
Version: $VERSION
Architecture: $ARCH
Maintainer: pg_dbrag maintainers <pg_dbrag@localhost>
Section: database
Priority: optional
Depends: $depends
Installed-Size: $(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
Description: multi-tenant ask-your-data control plane for PostgreSQL $PG_MAJOR
 pg_dbrag makes one PostgreSQL database the control plane of a multi-tenant
 natural-language-to-SQL service: tenants, encrypted data-plane credentials,
 a searchable catalog, history and audit, isolated by row-level security.
 Needs shared_preload_libraries = 'pg_dbrag'; then CREATE EXTENSION pg_dbrag
 CASCADE, or ALTER EXTENSION pg_dbrag UPDATE from an earlier release.
EOF
# The control file lists conffiles; the extension's files are not config.
find "$STAGE" -type d -exec chmod 0755 {} +
dpkg-deb --build --root-owner-group -Zxz "$STAGE" "$DEB" >/dev/null
echo "$(dpkg-deb -c "$DEB" | wc -l) entries, $(du -k "$DEB" | cut -f1) KiB"
echo "$DEB"
