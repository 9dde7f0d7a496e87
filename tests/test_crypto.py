"""Secrets at rest (docs/connections-and-keys.md): AES-256-GCM envelopes with a key id and the
context as associated data; clear errors for every way a value can fail to
open; keys from superuser-only settings or a key file; rotation; LLM API
keys stored encrypted; nothing secret in pg_dump."""

import os
import pwd
import secrets
import shutil
import subprocess
import time

import psycopg
import pytest
from psycopg import sql

from conftest import DBNAME, HOST, PORT, SUPERUSER_PASSWORD, connect
from remote_fixture import REMOTE_PASSWORD, WORK, remote_conninfo, setup_remote

MASTER_KEY = os.environ.get("DBRAG_TEST_MASTER_KEY",
                            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")


def err(conn, query, args=None):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(query, args)
    return e.value


def enc(conn, plaintext, context):
    return bytes(conn.execute("SELECT dbrag.encrypt(%s, %s)", (plaintext, context)).fetchone()[0])


def dec(conn, blob, context):
    return conn.execute("SELECT dbrag.decrypt(%s, %s)", (blob, context)).fetchone()[0]


class KeyConfig:
    """Change the key settings with ALTER SYSTEM + reload, and wait until
    new sessions see them. Undone at the end of the test."""

    def __init__(self, su):
        self.su = su
        self.keyfile = os.path.join(WORK, f"keys_{secrets.token_hex(4)}.txt")

    def set(self, name, value):
        if value is None:
            self.su.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.SQL(name)))
        else:
            self.su.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.SQL(name), sql.Literal(value)))
        self.su.execute("SELECT pg_reload_conf()")
        expected = {"dbrag.master_key": MASTER_KEY, "dbrag.master_key_file": ""}[name] if value is None else value
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with connect() as c:
                if c.execute("SELECT current_setting(%s)", (name,)).fetchone()[0] == expected:
                    return
            time.sleep(0.05)
        raise AssertionError(f"{name} did not reach {expected!r}")

    def write_keys(self, lines):
        tmp = self.keyfile + ".tmp"
        with open(tmp, "w") as f:
            f.write("# pg_dbrag test keys\n" + "".join(f"{i}:{k}\n" for i, k in lines))
        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.keyfile)  # a new inode, as an operator's editor would leave

    def restore(self):
        self.set("dbrag.master_key_file", None)
        self.set("dbrag.master_key", None)
        if os.path.exists(self.keyfile):
            os.remove(self.keyfile)


@pytest.fixture
def keyconf(su):
    k = KeyConfig(su)
    yield k
    k.restore()


# ------------------------------------------------------------------ envelope

def test_round_trip(tenants):
    with tenants.conn(tenants.a_role) as a:
        for plaintext in ["hunter2", "", "ünïcödé ✓ 東京", "x" * 100_000]:
            blob = enc(a, plaintext, "ctx-1")
            assert dec(a, blob, "ctx-1") == plaintext
            key_id = a.execute("SELECT dbrag.encryption_key_id(%s)", (blob,)).fetchone()[0]
            assert len(blob) == 2 + len(key_id) + 12 + len(plaintext.encode()) + 16
            assert plaintext.encode() not in blob or plaintext == ""
        # A fresh random nonce every time.
        assert enc(a, "same", "c") != enc(a, "same", "c")
        assert a.execute("SELECT dbrag.decrypt(dbrag.encrypt('v', 'c'), 'c')").fetchone()[0] == "v"


def test_context_is_bound(tenants):
    with tenants.conn(tenants.a_role) as a:
        blob = enc(a, "secret", f"tenant:{tenants.a}")
        for other in [f"tenant:{tenants.b}", "", f"tenant:{tenants.a} ", "TENANT:" + str(tenants.a)]:
            e = err(a, "SELECT dbrag.decrypt(%s, %s)", (blob, other))
            assert e.sqlstate == "22023" and "context" in str(e)
        # STRICT, like pgcrypto: NULL in, NULL out.
        assert a.execute("SELECT dbrag.encrypt(NULL, 'c'), dbrag.encrypt('p', NULL), "
                         "dbrag.decrypt(NULL, 'c'), dbrag.decrypt(%s, NULL)", (blob,)).fetchone() == (
            None, None, None, None)


def test_tampered_and_truncated_values_fail_clearly(tenants):
    with tenants.conn(tenants.a_role) as a:
        blob = enc(a, "attack at dawn", "ctx")
        for i in range(len(blob)):
            bad = bytearray(blob)
            bad[i] ^= 1 << (i % 8)
            e = err(a, "SELECT dbrag.decrypt(%s, 'ctx')", (bytes(bad),))
            assert e.sqlstate == "22023", (i, str(e))
        for n in range(len(blob)):
            e = err(a, "SELECT dbrag.decrypt(%s, 'ctx')", (blob[:n],))
            assert e.sqlstate == "22023", (n, str(e))
        assert "truncated" in str(err(a, "SELECT dbrag.decrypt(%s, 'ctx')", (blob[:20],)))
        assert "version" in str(err(a, "SELECT dbrag.decrypt(%s, 'ctx')", (b"\x07" + blob[1:],)))
        assert "tampered" in str(err(a, "SELECT dbrag.decrypt(%s, 'ctx')", (blob[:-1] + bytes([blob[-1] ^ 1]),)))
        # The backend is fine after all that.
        assert dec(a, blob, "ctx") == "attack at dawn"


def test_key_settings_are_hidden(tenants):
    with tenants.conn(tenants.a_role) as a:
        for name in ["dbrag.master_key", "dbrag.master_key_file"]:
            assert err(a, "SELECT current_setting(%s)", (name,)).sqlstate == "42501"
        shown = a.execute("SELECT string_agg(setting, ' ') FROM pg_settings").fetchone()[0]
        assert MASTER_KEY not in shown


# ------------------------------------------------------------------ keys

def test_no_key_is_55000(tenants, keyconf):
    with tenants.conn(tenants.a_role) as a:
        blob = enc(a, "v", "c")
    keyconf.set("dbrag.master_key", "")
    with tenants.conn(tenants.a_role) as a:
        e = err(a, "SELECT dbrag.encrypt('v', 'c')")
        assert e.sqlstate == "55000" and "no encryption key" in str(e)
        assert "dbrag.master_key" in (e.diag.message_hint or "")
        assert err(a, "SELECT dbrag.decrypt(%s, 'c')", (blob,)).sqlstate == "55000"


def test_invalid_key_settings_are_55000_without_the_key(tenants, keyconf):
    bad = "zz" + MASTER_KEY[2:]
    keyconf.set("dbrag.master_key", bad)
    with tenants.conn(tenants.a_role) as a:
        e = err(a, "SELECT dbrag.encrypt('v', 'c')")
        assert e.sqlstate == "55000" and bad[:16] not in str(e) and "dbrag.master_key" in str(e)
    keyconf.set("dbrag.master_key", "")
    keyconf.write_keys([("k1", MASTER_KEY[:-2])])
    keyconf.set("dbrag.master_key_file", keyconf.keyfile)
    with tenants.conn(tenants.a_role) as a:
        e = err(a, "SELECT dbrag.encrypt('v', 'c')")
        assert e.sqlstate == "55000" and "line 2" in str(e) and MASTER_KEY[:16] not in str(e)


def test_wrong_key_is_a_clear_error_and_the_right_one_still_works(tenants, keyconf):
    with tenants.conn(tenants.a_role) as a:
        blob = enc(a, "kept", "c")
    keyconf.set("dbrag.master_key", secrets.token_hex(32))
    with tenants.conn(tenants.a_role) as a:
        e = err(a, "SELECT dbrag.decrypt(%s, 'c')", (blob,))
        assert e.sqlstate == "22023" and "not in the keyring" in str(e)
    keyconf.set("dbrag.master_key", None)
    with tenants.conn(tenants.a_role) as a:
        assert dec(a, blob, "c") == "kept"


def test_key_file_change_is_seen_by_a_running_session(tenants, keyconf):
    """Same key id, other bytes: authentication fails (never garbage); the
    session re-reads the file when it changes, without a reload."""
    k1, k2 = secrets.token_hex(32), secrets.token_hex(32)
    keyconf.write_keys([("k1", k1)])
    keyconf.set("dbrag.master_key_file", keyconf.keyfile)
    with tenants.conn(tenants.a_role) as a:
        blob = enc(a, "file-sealed", "c")
        assert a.execute("SELECT dbrag.encryption_key_id(%s)", (blob,)).fetchone()[0] == "k1"
        keyconf.write_keys([("k1", k2)])
        e = err(a, "SELECT dbrag.decrypt(%s, 'c')", (blob,))
        assert e.sqlstate == "22023" and "tampered" in str(e)
        keyconf.write_keys([("k1", k1), ("k2", k2)])
        assert dec(a, blob, "c") == "file-sealed"
        assert a.execute("SELECT dbrag.encryption_key_id(dbrag.encrypt('n', 'c'))").fetchone()[0] == "k2"


# ------------------------------------------------------------------ LLM API keys

def test_llm_api_keys_are_stored_encrypted(su, tenants):
    key_a = "sk-tenant-a-" + secrets.token_hex(8)
    key_global = "sk-global-" + secrets.token_hex(8)
    status = "SELECT dbrag.llm_api_key_status()"
    with tenants.conn(tenants.a_role) as a, tenants.conn(tenants.b_role) as b:
        a.execute("SELECT dbrag.set_llm_api_key(%s)", (key_a,))
        assert a.execute(status).fetchone()[0] == "tenant"
        assert b.execute(status).fetchone()[0] is None
        assert err(a, "SELECT dbrag.set_llm_api_key('sk-x', true)").sqlstate == "42501"
        assert err(a, "SELECT dbrag.set_llm_api_key('  ')").sqlstate == "22023"
        assert err(a, "SELECT api_key FROM control_plane.llm_credentials").sqlstate == "42501"
        with tenants.conn(tenants.admin_role) as ops:
            ops.execute("SELECT dbrag.set_llm_api_key(%s, global => true)", (key_global,))
        assert b.execute(status).fetchone()[0] == "global"
        assert a.execute(status).fetchone()[0] == "tenant"
        stored = su.execute("SELECT api_key FROM control_plane.llm_credentials WHERE tenant_id = %s",
                            (tenants.a,)).fetchone()[0]
        assert key_a.encode() not in bytes(stored)
        # The SQL-level decrypt cannot open it under any context.
        for ctx in ["", f"llm_api_key:{tenants.a}", f"dbrag:internal:llm_api_key:{tenants.a}"]:
            assert err(a, "SELECT dbrag.decrypt(%s, %s)", (stored, ctx)).sqlstate == "22023"
        a.execute("SELECT dbrag.set_llm_api_key(NULL)")
        assert a.execute(status).fetchone()[0] == "global"
    with tenants.conn(tenants.stranger) as s:
        assert err(s, "SELECT dbrag.set_llm_api_key('sk-x')").sqlstate == "42501"
    audit = su.execute("SELECT detail::text FROM control_plane.audit_log WHERE event LIKE 'llm_key_%'").fetchall()
    assert audit and not any(key_a in d[0] or key_global in d[0] for d in audit)
    su.execute("SELECT dbrag.set_llm_api_key(NULL, true)")


# ------------------------------------------------------------------ pg_dump

def pg_bin(name):
    prefix = os.environ.get("DBRAG_PG_PREFIX")
    for d in ([f"{prefix}/lib/postgresql/15/bin"] if prefix else []) + ["/usr/lib/postgresql/15/bin"]:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return shutil.which(name)


def test_pg_dump_holds_no_plaintext_secret_and_no_master_key(su, tenants):
    setup_remote()
    llm_key = "sk-dump-check-" + secrets.token_hex(8)
    with tenants.conn(tenants.b_role) as b:
        b.execute("SELECT dbrag.create_connection('dumped', 'postgres', %s)", (remote_conninfo(),))
        b.execute("SELECT dbrag.set_llm_api_key(%s)", (llm_key,))
    out = subprocess.run([pg_bin("pg_dump"), "-h", HOST, "-p", str(PORT), "-U", "postgres", DBNAME],
                         env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD},
                         capture_output=True, check=True).stdout
    assert b"dumped" in out  # the connection row is in the dump (pg_extension_config_dump)
    assert b"llm_credentials" in out
    for secret in [REMOTE_PASSWORD, llm_key, MASTER_KEY, MASTER_KEY.upper()]:
        assert secret.encode() not in out, secret
    assert b"password=" not in out


# ------------------------------------------------------------------ rotation

ROT_DB = "dbrag_rotation"


def key_ids(c):
    rows = c.execute("""
        SELECT dbrag.encryption_key_id(credentials) FROM control_plane.tenant_databases WHERE credentials IS NOT NULL
        UNION ALL SELECT dbrag.encryption_key_id(api_key) FROM control_plane.llm_credentials
        UNION ALL SELECT dbrag.encryption_key_id(decode(value->>'ciphertext', 'base64'))
                  FROM control_plane.system_config WHERE key = 'llm_api_key'""").fetchall()
    return sorted(r[0] for r in rows)


def test_rotation_reencrypts_everything_and_old_values_open_until_then(su, tenants, keyconf):
    setup_remote()
    with connect(dbname="postgres") as c:
        c.execute(f"DROP DATABASE IF EXISTS {ROT_DB} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {ROT_DB}")
    try:
        with connect(dbname=ROT_DB) as r:
            r.execute("CREATE EXTENSION pg_dbrag CASCADE")
            t = r.execute("SELECT dbrag.create_tenant('rot')").fetchone()[0]
            r.execute("SELECT dbrag.set_tenant(%s::uuid)", (t,))
            cid = r.execute("SELECT dbrag.create_connection('shop', 'postgres', %s)",
                            (remote_conninfo(),)).fetchone()[0]
            r.execute("SELECT dbrag.create_connection('here', 'local')")
            r.execute("SELECT dbrag.set_llm_api_key('sk-rot-tenant')")
            r.execute("SELECT dbrag.set_llm_api_key('sk-rot-global', true)")
            old_sql_blob = enc(r, "sql-level", "c")
            first = key_ids(r)
            assert len(first) == 3 and len(set(first)) == 1 and first[0].startswith("m")

        def session():
            c = connect(dbname=ROT_DB)
            c.execute("SELECT dbrag.set_tenant(%s::uuid)", (t,))
            return c

        k2 = secrets.token_hex(32)
        keyconf.write_keys([("k2", k2)])
        keyconf.set("dbrag.master_key_file", keyconf.keyfile)
        with session() as r:
            # New values use the newest key; old ones still open.
            assert r.execute("SELECT dbrag.encryption_key_id(dbrag.encrypt('n', 'c'))").fetchone()[0] == "k2"
            assert dec(r, old_sql_blob, "c") == "sql-level"
            assert key_ids(r) == first
            r.execute("SELECT dbrag.activate_connection(%s)", (cid,))  # decrypts the old credentials
        with tenants.conn(tenants.a_role, dbname=ROT_DB) as a:
            assert err(a, "SELECT dbrag.rotate_key()").sqlstate == "42501"
        with tenants.conn(tenants.admin_role, dbname=ROT_DB) as ops:
            assert ops.execute("SELECT dbrag.rotate_key()").fetchone()[0] == 3
            assert ops.execute("SELECT dbrag.rotate_key()").fetchone()[0] == 0
        with session() as r:
            assert key_ids(r) == ["k2", "k2", "k2"]
            r.execute("SELECT dbrag.activate_connection(%s)", (cid,))
            assert r.execute("SELECT dbrag.llm_api_key_status()").fetchone()[0] == "tenant"
            audit = r.execute("SELECT detail FROM control_plane.audit_log WHERE event = 'key_rotated' "
                              "ORDER BY audit_id").fetchall()
            assert [d[0]["reencrypted"] for d in audit] == [3, 0]

        # A third key; one stored value damaged: it is left alone, with a warning.
        keyconf.write_keys([("k2", k2), ("k3", secrets.token_hex(32))])
        with session() as r:
            r.execute("UPDATE control_plane.llm_credentials SET api_key = "
                      "(SELECT decode(value->>'ciphertext', 'base64') FROM control_plane.system_config "
                      " WHERE key = 'llm_api_key')")
            notices = []
            r.add_notice_handler(lambda d: notices.append(d.message_primary))
            assert r.execute("SELECT dbrag.rotate_key()").fetchone()[0] == 2
            assert any("does not decrypt" in n for n in notices), notices
            assert key_ids(r) == ["k2", "k3", "k3"]
            r.execute("SELECT dbrag.activate_connection(%s)", (cid,))
            assert dec(r, old_sql_blob, "c") == "sql-level"
    finally:
        with connect(dbname="postgres") as c:
            c.execute(f"DROP DATABASE IF EXISTS {ROT_DB} WITH (FORCE)")
