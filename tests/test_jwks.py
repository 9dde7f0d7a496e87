"""Tokens from an identity provider: RS256, ES256 and EdDSA tokens verified
against the public keys of dbrag.jwt_public_keys_file (a JWKS document),
made here with Python's `cryptography` package, independently of the
extension's code. Callers are non-superuser login roles over TCP."""

import base64
import json
import os
import time

import psycopg
import pytest
from psycopg import sql
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from conftest import JWT_SECRET, connect, make_token

WORK = os.environ.get("DBRAG_TEST_WORK", "/tmp/pg_dbrag_test")
KEYS_FILE = os.path.join(WORK, "jwks.json")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def int_bytes(i: int, n: int = 0) -> bytes:
    return i.to_bytes(n or (i.bit_length() + 7) // 8, "big")


class Key:
    """A private key of one type and its public JWK."""

    def __init__(self, kind, kid):
        self.kind, self.kid = kind, kid
        if kind == "RS256":
            self.priv = rsa.generate_private_key(65537, 2048)
            n = self.priv.public_key().public_numbers()
            self.jwk = {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                        "n": b64(int_bytes(n.n)), "e": b64(int_bytes(n.e))}
        elif kind == "ES256":
            self.priv = ec.generate_private_key(ec.SECP256R1())
            n = self.priv.public_key().public_numbers()
            self.jwk = {"kty": "EC", "kid": kid, "crv": "P-256",
                        "x": b64(int_bytes(n.x, 32)), "y": b64(int_bytes(n.y, 32))}
        else:
            self.priv = ed25519.Ed25519PrivateKey.generate()
            self.jwk = {"kty": "OKP", "kid": kid, "crv": "Ed25519",
                        "x": b64(self.priv.public_key().public_bytes_raw())}

    def sign(self, data: bytes) -> bytes:
        if self.kind == "RS256":
            return self.priv.sign(data, padding.PKCS1v15(), hashes.SHA256())
        if self.kind == "ES256":
            r, s = utils.decode_dss_signature(self.priv.sign(data, ec.ECDSA(hashes.SHA256())))
            return int_bytes(r, 32) + int_bytes(s, 32)
        return self.priv.sign(data)

    def public_pem(self) -> bytes:
        return self.priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def claims_for(tenant, ttl=3600):
    now = int(time.time())
    return {"tenant_id": str(tenant), "iat": now, "exp": now + ttl, "sub": "user-42",
            "iss": "https://idp.example/"}


def idp_token(key, claims, header=None):
    header = header or {"alg": key.kind, "typ": "JWT", "kid": key.kid}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return signing_input + "." + b64(key.sign(signing_input.encode()))


@pytest.fixture(scope="module")
def keys():
    return {k: Key(k, f"{k.lower()}-1") for k in ("RS256", "ES256", "EdDSA")}


def write_keys_file(jwks, path=KEYS_FILE):
    """Replace the file atomically (new inode), readable by the server."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(jwks) if not isinstance(jwks, str) else jwks)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def set_keys_file(value, name="dbrag.jwt_public_keys_file"):
    with connect(dbname="postgres") as c:
        if value is None:
            c.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(*name.split("."))))
        else:
            c.execute(sql.SQL("ALTER SYSTEM SET {} = {}")
                      .format(sql.Identifier(*name.split(".")), sql.Literal(value)))
        c.execute("SELECT pg_reload_conf()")
    want = value or ""
    for _ in range(100):
        with connect(dbname="postgres") as c:
            if c.execute(sql.SQL("SHOW {}").format(sql.Identifier(*name.split(".")))).fetchone()[0] == want:
                return
        time.sleep(0.05)
    raise AssertionError(f"the server did not pick up {name}")


@pytest.fixture
def keys_file(database, keys):
    write_keys_file({"keys": [k.jwk for k in keys.values()]})
    set_keys_file(KEYS_FILE)
    yield KEYS_FILE
    set_keys_file(None)


def last_audit_id(su):
    return su.execute("SELECT coalesce(max(audit_id), 0) FROM control_plane.audit_log").fetchone()[0]


def audit_rows(su, since, event):
    return su.execute("SELECT tenant_id, login_role, detail FROM control_plane.audit_log "
                      "WHERE audit_id > %s AND event = %s ORDER BY audit_id",
                      (since, event)).fetchall()


def set_tenant(conn, token):
    return conn.execute("SELECT dbrag.set_tenant(%s)", (token,)).fetchone()[0]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_identity_provider_tokens_set_the_tenant(su, tenants, keys, keys_file, alg):
    before = last_audit_id(su)
    with tenants.conn(tenants.stranger) as c:
        assert set_tenant(c, idp_token(keys[alg], claims_for(tenants.b))) == tenants.b
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] == tenants.b
        assert c.execute("SELECT count(*) FROM control_plane.tenants").fetchone()[0] == 1
    rows = audit_rows(su, before, "tenant_switch")
    assert [r[0] for r in rows] == [tenants.b]
    assert rows[0][2]["alg"] == alg and rows[0][2]["kid"] == keys[alg].kid
    # HS256 with the shared secret still works next to the public keys.
    with tenants.conn(tenants.stranger) as c:
        now = int(time.time())
        assert set_tenant(c, make_token({"tenant_id": str(tenants.a), "exp": now + 60})) == tenants.a


def test_expired_or_tampered_identity_provider_tokens(su, tenants, keys, keys_file):
    before = last_audit_id(su)
    key = keys["ES256"]
    expired = idp_token(key, claims_for(tenants.a, ttl=-5))
    good = idp_token(key, claims_for(tenants.a))
    h, p, s = good.split(".")
    forged_payload = b64(json.dumps(claims_for(tenants.b)).encode())
    with tenants.conn(tenants.stranger) as c:
        for token in (expired, f"{h}.{forged_payload}.{s}", f"{h}.{p}.{s[:-4]}AAAA"):
            with pytest.raises(psycopg.Error) as e:
                set_tenant(c, token)
            assert e.value.sqlstate == "28000"
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] is None
    assert len(audit_rows(su, before, "token_refused")) == 3


def test_a_reused_token_is_still_checked_for_expiry(su, tenants, keys, keys_file):
    """A backend remembers tokens it verified (a pooled application sends the
    same one every transaction); expiry is checked at every use."""
    now = int(time.time())
    short = {"tenant_id": str(tenants.a), "exp": now + 2}
    tokens = [idp_token(keys["ES256"], short), make_token(short)]
    with tenants.conn(tenants.stranger) as c:
        for t in tokens:
            for _ in range(3):
                assert set_tenant(c, t) == tenants.a
        time.sleep(max(0.0, now + 2.2 - time.time()))
        for t in tokens:
            with pytest.raises(psycopg.Error) as e:
                set_tenant(c, t)
            assert e.value.sqlstate == "28000" and "expired" in str(e.value)


def test_issuer_and_audience_when_configured(su, tenants, keys, keys_file):
    """dbrag.jwt_issuer / dbrag.jwt_audience: an identity provider signs
    tokens for many applications; only those for this one are accepted."""
    key = keys["RS256"]
    ours = dict(claims_for(tenants.a), aud=["https://api.example/", "dbrag"])
    other_app = dict(claims_for(tenants.a), aud="billing")
    other_idp = dict(ours, iss="https://evil.example/")
    with tenants.conn(tenants.stranger) as c:
        # Verified and remembered by this backend before the settings exist.
        remembered = idp_token(key, other_app)
        assert set_tenant(c, remembered) == tenants.a
        assert set_tenant(c, remembered) == tenants.a
        try:
            set_keys_file("https://idp.example/", "dbrag.jwt_issuer")
            set_keys_file("dbrag", "dbrag.jwt_audience")
            for _ in range(100):
                if c.execute("SHOW dbrag.jwt_audience").fetchone()[0] == "dbrag":
                    break
                time.sleep(0.05)
            before = last_audit_id(su)
            assert set_tenant(c, idp_token(key, ours)) == tenants.a
            # The remembered token meets the new rule too.
            for token in (remembered, idp_token(key, other_app), idp_token(key, other_idp)):
                with pytest.raises(psycopg.Error) as e:
                    set_tenant(c, token)
                assert e.value.sqlstate == "28000"
            assert len(audit_rows(su, before, "token_refused")) == 3
        finally:
            set_keys_file(None, "dbrag.jwt_issuer")
            set_keys_file(None, "dbrag.jwt_audience")


def test_key_rotation_is_seen_by_a_running_session(su, tenants, keys, keys_file):
    """The file is re-read when it changes: a session open across the
    rotation accepts the new key and refuses the removed one."""
    old = keys["RS256"]
    new = Key("RS256", "rs256-2")
    with tenants.conn(tenants.stranger) as c:
        assert set_tenant(c, idp_token(old, claims_for(tenants.a))) == tenants.a
        with pytest.raises(psycopg.Error) as e:
            set_tenant(c, idp_token(new, claims_for(tenants.a)))
        assert e.value.sqlstate == "28000" and "rs256-2" in str(e.value)
        # Rotation step 1: both keys published.
        write_keys_file({"keys": [old.jwk, new.jwk]})
        assert set_tenant(c, idp_token(new, claims_for(tenants.b))) == tenants.b
        assert set_tenant(c, idp_token(old, claims_for(tenants.a))) == tenants.a
        # Step 2: the old key withdrawn.
        write_keys_file({"keys": [new.jwk]})
        with pytest.raises(psycopg.Error) as e:
            set_tenant(c, idp_token(old, claims_for(tenants.a)))
        assert e.value.sqlstate == "28000" and "rs256-1" in str(e.value)
        assert set_tenant(c, idp_token(new, claims_for(tenants.b))) == tenants.b


def confusion_tokens(keys, tenant):
    """Each an attempt to get a token accepted by the wrong key or algorithm."""
    claims = claims_for(tenant)
    rsa_key, ec_key, ed_key = keys["RS256"], keys["ES256"], keys["EdDSA"]
    payload = b64(json.dumps(claims).encode())

    def raw(header, signature=b""):
        return b64(json.dumps(header).encode()) + "." + payload + "." + b64(signature)

    def hs256_with(secret: bytes, kid):
        return make_token(claims, secret=secret.decode("latin-1"),
                          header={"alg": "HS256", "typ": "JWT", "kid": kid})

    ec_signed = idp_token(ec_key, claims, {"alg": "RS256", "kid": ec_key.kid})
    return {
        # The classic: the public key's bytes used as an HMAC secret.
        "hs256_signed_with_public_pem": hs256_with(rsa_key.public_pem(), rsa_key.kid),
        "hs256_signed_with_jwks_modulus": hs256_with(rsa_key.jwk["n"].encode(), rsa_key.kid),
        "hs256_signed_with_ed25519_key": hs256_with(ed_key.jwk["x"].encode(), ed_key.kid),
        "alg_none_with_kid": raw({"alg": "none", "kid": rsa_key.kid}),
        "alg_none_signed": raw({"alg": "none", "kid": rsa_key.kid}, b"x" * 64),
        # An EC signature presented as RS256 under the EC key's kid.
        "rs256_header_ec_kid": ec_signed,
        # An Ed25519 signature under the RSA key's kid.
        "eddsa_header_rsa_kid": idp_token(ed_key, claims, {"alg": "EdDSA", "kid": rsa_key.kid}),
        "es256_header_ed_kid": idp_token(ec_key, claims, {"alg": "ES256", "kid": ed_key.kid}),
        "no_kid": idp_token(ec_key, claims, {"alg": "ES256"}),
        "unknown_kid": idp_token(ec_key, claims, {"alg": "ES256", "kid": "not-published"}),
        # A key carried by the token itself is never trusted.
        "embedded_jwk": idp_token(Key("ES256", "mine"), claims,
                                  {"alg": "ES256", "kid": ec_key.kid,
                                   "jwk": Key("ES256", "mine").jwk}),
        "signed_by_an_unpublished_key": idp_token(Key("EdDSA", ed_key.kid), claims),
        "ps256": idp_token(rsa_key, claims, {"alg": "PS256", "kid": rsa_key.kid}),
    }


CONFUSION_CASES = ["hs256_signed_with_public_pem", "hs256_signed_with_jwks_modulus",
                   "hs256_signed_with_ed25519_key", "alg_none_with_kid", "alg_none_signed",
                   "rs256_header_ec_kid", "eddsa_header_rsa_kid", "es256_header_ed_kid",
                   "no_kid", "unknown_kid", "embedded_jwk", "signed_by_an_unpublished_key",
                   "ps256"]


@pytest.mark.parametrize("case", CONFUSION_CASES)
def test_algorithm_and_key_confusion_refused_with_28000_and_audited(su, tenants, keys,
                                                                      keys_file, case):
    token = confusion_tokens(keys, tenants.a)[case]
    before = last_audit_id(su)
    with tenants.conn(tenants.stranger) as c:
        with pytest.raises(psycopg.Error) as e:
            set_tenant(c, token)
        assert e.value.sqlstate == "28000", (case, str(e.value))
        assert c.execute("SELECT dbrag.current_tenant_id()").fetchone()[0] is None
        assert c.execute("SELECT count(*) FROM control_plane.tenants").fetchone()[0] == 0
    rows = audit_rows(su, before, "token_refused")
    assert len(rows) == 1, case
    assert rows[0][1] == tenants.stranger
    assert rows[0][2]["reason"]
    assert not audit_rows(su, before, "tenant_switch")


def test_public_key_tokens_without_a_keys_file_are_refused(su, tenants, keys):
    """Before dbrag.jwt_public_keys_file is set, RS256/ES256/EdDSA are refused (28000)."""
    before = last_audit_id(su)
    with tenants.conn(tenants.stranger) as c:
        for key in keys.values():
            with pytest.raises(psycopg.Error) as e:
                set_tenant(c, idp_token(key, claims_for(tenants.a)))
            assert e.value.sqlstate == "28000" and "not accepted" in str(e.value)
    assert len(audit_rows(su, before, "token_refused")) == 3


@pytest.mark.parametrize("content", ["missing", "not_json", "symmetric_key", "private_key",
                                     "weak_rsa"])
def test_unusable_keys_file_is_a_configuration_error(su, tenants, keys, keys_file, content):
    """A broken key file refuses public-key tokens with 55000 (and an audit
    row) until it is fixed; HS256 tokens do not depend on it."""
    path = os.path.join(WORK, "jwks-broken.json")
    if content == "missing":
        if os.path.exists(path):
            os.remove(path)
    elif content == "not_json":
        write_keys_file("{\"keys\": [", path)
    elif content == "symmetric_key":
        write_keys_file({"keys": [{"kty": "oct", "kid": "s", "k": b64(b"0" * 32)}]}, path)
    elif content == "private_key":
        priv = keys["EdDSA"].priv.private_bytes_raw()
        write_keys_file({"keys": [dict(keys["EdDSA"].jwk, d=b64(priv))]}, path)
    else:
        small = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
        write_keys_file({"keys": [{"kty": "RSA", "kid": "rs256-1", "n": b64(int_bytes(small.n)),
                                   "e": b64(int_bytes(small.e))}]}, path)
    set_keys_file(path)
    before = last_audit_id(su)
    with tenants.conn(tenants.stranger) as c:
        with pytest.raises(psycopg.Error) as e:
            set_tenant(c, idp_token(keys["RS256"], claims_for(tenants.a)))
        assert e.value.sqlstate == "55000", str(e.value)
        assert "dbrag.jwt_public_keys_file" in str(e.value)
        # The error names no key material.
        if content == "private_key":
            assert b64(keys["EdDSA"].priv.private_bytes_raw()) not in str(e.value)
        now = int(time.time())
        assert set_tenant(c, make_token({"tenant_id": str(tenants.a), "exp": now + 60})) == tenants.a
    assert len(audit_rows(su, before, "token_refused")) == 1


def test_keys_file_setting_is_superuser_only(tenants):
    with tenants.conn(tenants.admin_role) as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("SET dbrag.jwt_public_keys_file = '/tmp/mine.json'")
        assert e.value.sqlstate == "42501"
        for setting in ("dbrag.audit_tenant_switches", "dbrag.jwt_issuer", "dbrag.jwt_audience"):
            with pytest.raises(psycopg.Error) as e:
                c.execute(f"SET {setting} = 'off'")
            assert e.value.sqlstate == "42501"
