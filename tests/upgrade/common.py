"""What the upgrade and restore checks share: the database the previous
release filled (scripts/upgrade_test.sh passes its name in DBRAG_UPGRADE_DB),
the fixed roles and names the seed used, and a snapshot of every row of the
control plane, compared column for column after the update or restore."""

import hashlib
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for conftest and the fixtures

from conftest import ROLE_PASSWORD, connect  # noqa: E402

DB = os.environ.get("DBRAG_UPGRADE_DB", "dbrag_upgrade")
WORK = os.environ.get("DBRAG_TEST_WORK", "/tmp/pg_dbrag_test")
SQLITE_DIR = os.path.join(WORK, "upgrade-sqlite")
STATE = os.path.join(WORK, "upgrade-state.json")  # ids and keys the seed made

# Login roles: two tenants' members, an application server, an operator.
ALICE, BOB, APP, OPS = "up_alice", "up_bob", "up_app", "up_ops"
TENANT_A, TENANT_B = "upgrade_a", "upgrade_b"
SCHEMA_A, SCHEMA_B = "shop_a", "shop_b"
APP_TABLE = "public.app_notes"
GLOBAL_KEY = "sk-upgrade-global-7d21"
B_KEY = "sk-upgrade-tenant-b-90c4"

# Every table of the control plane; a snapshot covers the columns the
# previous release had, so columns an update adds do not count as change.
TABLES = [
    "control_plane.tenants", "control_plane.tenant_members", "control_plane.tenant_databases",
    "control_plane.table_metadata_catalog", "control_plane.training_examples",
    "control_plane.query_history", "control_plane.audit_log", "control_plane.system_config",
    "control_plane.llm_credentials", APP_TABLE,
]
# Touched by the update's own backfills (the updated_at triggers), not data.
IGNORED_COLUMNS = {"updated_at"}
# 0.2.0 renames tenant schema roles dbrag_t_<hex> to dbrag_t_<db tag>_<hex>.
ROLE_NAME = re.compile(r"dbrag_t_(?:[0-9a-f]{8}_)?([0-9a-f]{32})")


def su(dbname=DB):
    return connect(dbname=dbname)


def login(role, dbname=DB):
    return connect(user=role, password=ROLE_PASSWORD, dbname=dbname)


def columns(conn, table):
    schema, name = table.split(".")
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum", (f"{schema}.{name}",))]


def snapshot(conn, cols_by_table=None):
    """{table: {"columns": [...], "count": n, "rows": {row_digest: row_text}}}."""
    out = {}
    for table in TABLES:
        cols = (cols_by_table or {}).get(table) or [c for c in columns(conn, table) if c not in IGNORED_COLUMNS]
        select = ", ".join(f'"{c}"' for c in cols)
        # The platform's own tenant is recreated by every CREATE EXTENSION
        # (and left out of dumps): not data of the snapshot.
        where = "tenant_id <> '00000000-0000-0000-0000-000000000001'" if table == "control_plane.tenants" else "true"
        rows = conn.execute(f"SELECT ({select})::text FROM {table} WHERE {where}").fetchall()
        texts = sorted(ROLE_NAME.sub(r"dbrag_t_*_\1", r[0]) for r in rows)
        out[table] = {
            "columns": cols,
            "count": len(texts),
            "digest": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
            "rows": texts,
        }
    return out


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=1, default=str)


def read_json(path):
    with open(path) as f:
        return json.load(f)
