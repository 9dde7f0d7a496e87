"""Shared fixtures: a database with pg_dbrag installed in the test cluster
that scripts/test.sh started, and tenants whose login roles connect over TCP
as an attacker would: non-superusers, bound by row-level security."""

import base64
import hashlib
import hmac
import json
import os
import re
import time
import uuid

import psycopg
import pytest

HOST = "127.0.0.1"
PORT = int(os.environ.get("DBRAG_TEST_PORT", "55432"))
REMOTE_PORT = int(os.environ.get("DBRAG_REMOTE_PORT", "55433"))
SUPERUSER_PASSWORD = os.environ.get("DBRAG_TEST_PASSWORD", "postgres-test-pw")
JWT_SECRET = os.environ.get("DBRAG_TEST_JWT_SECRET", "test-jwt-secret-0123456789abcdef")
DBNAME = "dbrag_test"
ROLE_PASSWORD = "tenant-pw-1"


def connect(user="postgres", password=SUPERUSER_PASSWORD, dbname=DBNAME, port=PORT, **kw):
    """A real TCP connection in autocommit mode."""
    return psycopg.connect(host=HOST, port=port, user=user, password=password,
                           dbname=dbname, autocommit=True, **kw)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_token(claims, secret=JWT_SECRET, header=None, sign=True):
    """An HS256 JWT written independently of the extension's own code."""
    header = header or {"alg": "HS256", "typ": "JWT"}
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    if not sign:
        return signing_input + "."
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def token_for(tenant_id, ttl=3600, **extra):
    now = int(time.time())
    return make_token({"tenant_id": str(tenant_id), "iat": now, "exp": now + ttl, **extra})


def sqlstate_of(excinfo):
    return excinfo.value.sqlstate


@pytest.fixture(scope="session")
def database():
    """A fresh database with the extension, dropped at the end."""
    with connect(dbname="postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {DBNAME} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DBNAME}")
    with connect() as c:
        c.execute("CREATE EXTENSION pg_dbrag CASCADE")
    yield DBNAME


@pytest.fixture
def su(database):
    with connect() as c:
        yield c


def tenant_role(su, tenant_id):
    """The NOLOGIN role of a tenant (control_plane.tenants.tenant_role)."""
    return su.execute("SELECT tenant_role FROM control_plane.tenants WHERE tenant_id = %s",
                      (tenant_id,)).fetchone()[0]


class Tenants:
    """Two tenants, A and B, each with a login role; plus an application
    server role (dbrag_app), an operator (dbrag_admin) and a stranger that
    belongs to no tenant."""

    def __init__(self, su):
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.a_name, self.b_name = f"a_{tag}", f"b_{tag}"
        self.a_role, self.b_role = f"alice_{tag}", f"bob_{tag}"
        self.app_role, self.admin_role = f"app_{tag}", f"ops_{tag}"
        self.stranger = f"eve_{tag}"
        for role in (self.a_role, self.b_role, self.app_role, self.admin_role, self.stranger):
            su.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{ROLE_PASSWORD}' NOSUPERUSER NOBYPASSRLS")
        su.execute(f"GRANT dbrag_app TO {self.app_role}")
        su.execute(f"GRANT dbrag_admin TO {self.admin_role}")
        self.a = su.execute("SELECT dbrag.create_tenant(%s)", (self.a_name,)).fetchone()[0]
        self.b = su.execute("SELECT dbrag.create_tenant(%s)", (self.b_name,)).fetchone()[0]
        su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (self.a, self.a_role))
        su.execute("SELECT dbrag.add_tenant_member(%s, %s)", (self.b, self.b_role))
        # Each tenant's own NOLOGIN role: what its members are granted and
        # what pg_dbrag acts as for it; data-plane grants go to it.
        self.a_trole = tenant_role(su, self.a)
        self.b_trole = tenant_role(su, self.b)

    def conn(self, role, **kw):
        return connect(user=role, password=ROLE_PASSWORD, **kw)


@pytest.fixture
def tenants(su):
    return Tenants(su)


SERVER_LOG = os.path.join(os.environ.get("DBRAG_TEST_WORK", "/tmp/pg_dbrag_test"), "primary", "server.log")
# What a crashed backend or an escaped Rust panic leaves in the server log.
CRASH = re.compile(r"terminated by signal|was terminated by|PANIC:|panicked at|memory allocation of|"
                   r"all server processes terminated|database system was interrupted")


@pytest.fixture(autouse=True)
def no_backend_crash():
    """Every test, attacks above all, must leave no crash in the server log:
    the lines the test added are scanned, so a crash names its test (the
    whole log is scanned again by scripts/test.sh)."""
    try:
        start = os.path.getsize(SERVER_LOG)
    except OSError:
        start = None
    yield
    if start is None:
        return
    with open(SERVER_LOG, "rb") as f:
        f.seek(start)
        added = f.read().decode("utf-8", "replace")
    crashes = [line for line in added.splitlines() if CRASH.search(line)]
    assert not crashes, "the server log shows a crash:\n" + "\n".join(crashes[:10])
