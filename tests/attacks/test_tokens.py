"""Attacks with tenant tokens (docs/isolation.md): forged, expired, unsigned,
re-targeted, header tricks, claim tricks. A token is refused with 28000
(and an audit row), or names an inactive tenant and is refused with 42501
or 42704; it never puts another tenant in force."""

import base64
import hashlib
import hmac
import json
import time

import pytest

from attack_kit import refused
from conftest import JWT_SECRET, b64url, make_token, token_for

CURRENT = "SELECT dbrag.current_tenant_id()"


def raw_token(header_text, payload_text, secret=JWT_SECRET):
    """A token from raw JSON text, so duplicate keys and odd spacing survive."""
    signing_input = b64url(header_text.encode()) + "." + b64url(payload_text.encode())
    sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def try_token(tenants, token, state="28000"):
    """As A: the token is refused with `state` and A stays A."""
    with tenants.conn(tenants.a_role) as a:
        e = refused(a, "SELECT dbrag.set_tenant(%s::text)", (token,))
        assert e.sqlstate == state, e
        assert a.execute(CURRENT).fetchone()[0] == tenants.a
        return e


def refusals(su, tenants):
    return su.execute("SELECT count(*) FROM control_plane.audit_log WHERE event = 'token_refused' "
                      "AND login_role = %s", (tenants.a_role,)).fetchone()[0]


def test_forged_signature(su, tenants):
    now = int(time.time())
    before = refusals(su, tenants)
    for secret in ("", "guess", JWT_SECRET[:-1], JWT_SECRET + "x"):
        try_token(tenants, make_token({"tenant_id": str(tenants.b), "exp": now + 60}, secret=secret or "x"))
    assert refusals(su, tenants) == before + 4


def test_expired_and_not_yet_valid(tenants):
    now = int(time.time())
    try_token(tenants, make_token({"tenant_id": str(tenants.b), "exp": now - 1}))
    try_token(tenants, make_token({"tenant_id": str(tenants.b), "exp": now + 600, "nbf": now + 300}))
    # exp written as a string or a float is not an integer date.
    try_token(tenants, make_token({"tenant_id": str(tenants.b), "exp": str(now + 600)}))
    try_token(tenants, make_token({"tenant_id": str(tenants.b), "exp": now + 600.5}))


def test_alg_none_and_algorithm_confusion(tenants):
    now = int(time.time())
    claims = {"tenant_id": str(tenants.b), "exp": now + 60}
    for header in ({"alg": "none"}, {"alg": "None"}, {"alg": "NONE", "typ": "JWT"}):
        try_token(tenants, make_token(claims, header=header, sign=False))
        try_token(tenants, make_token(claims, header=header))
    # HS256 signature, other algorithm named; no algorithm at all.
    for header in ({"alg": "HS512"}, {"alg": "RS256"}, {"alg": "hs256"}, {"typ": "JWT"}, {"alg": ["HS256"]}):
        try_token(tenants, make_token(claims, header=header))


def test_token_of_one_tenant_retargeted_at_another(tenants):
    # A's genuine token with B's id spliced into the payload, A's signature kept.
    good = token_for(tenants.a).split(".")
    forged_payload = b64url(json.dumps({"tenant_id": str(tenants.b), "exp": int(time.time()) + 60}).encode())
    try_token(tenants, ".".join([good[0], forged_payload, good[2]]))
    # The signature moved onto B's token body, and the segments reordered.
    try_token(tenants, ".".join([good[1], good[0], good[2]]))
    # A genuine token is a bearer credential for its own tenant only.
    with tenants.conn(tenants.a_role) as a:
        assert a.execute("SELECT dbrag.set_tenant(%s)", (token_for(tenants.a),)).fetchone()[0] == tenants.a


def test_token_for_a_suspended_or_deleted_tenant(su, tenants):
    token = token_for(tenants.b)
    su.execute("SELECT dbrag.set_tenant_status(%s, 'suspended')", (tenants.b,))
    try:
        try_token(tenants, token, "42501")
    finally:
        su.execute("SELECT dbrag.set_tenant_status(%s, 'active')", (tenants.b,))
    gone = su.execute("SELECT dbrag.create_tenant(%s)", (f"gone_{tenants.tag}",)).fetchone()[0]
    gone_token = token_for(gone)
    su.execute("DELETE FROM control_plane.tenants WHERE tenant_id = %s", (gone,))
    try_token(tenants, gone_token, "42704")


def test_key_id_and_key_url_headers_do_not_choose_the_key(tenants):
    # kid/jku/jwk/x5u name the attacker's own key; the server has one secret.
    now = int(time.time())
    claims = {"tenant_id": str(tenants.b), "exp": now + 60}
    for header in ({"alg": "HS256", "kid": "attacker"},
                   {"alg": "HS256", "kid": "../../../../dev/null"},
                   {"alg": "HS256", "jku": "http://127.0.0.1:9/keys.json"},
                   {"alg": "HS256", "jwk": {"kty": "oct", "k": b64url(b"attacker-key")}},
                   {"alg": "HS256", "x5u": "http://127.0.0.1:9/cert.pem"}):
        try_token(tenants, make_token(claims, secret="attacker-key", header=header))
    # A blank secret, as a "kid" naming an empty file would give.
    try_token(tenants, raw_token(json.dumps({"alg": "HS256", "kid": "/dev/null"}), json.dumps(claims), secret=" "))


def test_crit_header_is_refused_even_when_signed(tenants):
    claims = {"tenant_id": str(tenants.a), "exp": int(time.time()) + 60}
    e = try_token(tenants, make_token(claims, header={"alg": "HS256", "crit": ["exp"]}))
    assert "crit" in str(e)


def test_duplicate_keys_are_refused(tenants):
    # Two parsers of one token must never disagree on its tenant: a payload
    # that names tenant_id twice is refused, whichever comes first.
    exp = int(time.time()) + 60
    for first, second in ((tenants.a, tenants.b), (tenants.b, tenants.a)):
        payload = f'{{"tenant_id":"{first}","exp":{exp},"tenant_id":"{second}"}}'
        try_token(tenants, raw_token('{"alg":"HS256"}', payload))
    try_token(tenants, raw_token('{"alg":"none","alg":"HS256"}', f'{{"tenant_id":"{tenants.a}","exp":{exp}}}'))
    try_token(tenants, raw_token('{"alg":"HS256"}', f'{{"tenant_id":"{tenants.a}","exp":{exp},"exp":{exp + 9999}}}'))


def test_unicode_and_whitespace_in_claims(tenants):
    exp = int(time.time()) + 60
    b = str(tenants.b)
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in b)
    for tid in (" " + b, b + " ", b + "\n", b + "\u200b", "\u202e" + b, fullwidth, b.replace("-", "\u2010"),
                "{" + b + "}", b.replace("-", ""), "urn:uuid:" + b):
        try_token(tenants, make_token({"tenant_id": tid, "exp": exp}))
    # Whitespace around the token itself, and a token cut in two by a space.
    good = token_for(tenants.a)
    try_token(tenants, " " + good)
    try_token(tenants, good[:20] + " " + good[20:])
    # Upper-case hex is the same uuid, of the same tenant: not another one.
    with tenants.conn(tenants.a_role) as a:
        got = a.execute("SELECT dbrag.set_tenant(%s)", (make_token({"tenant_id": str(tenants.a).upper(), "exp": exp}),))
        assert got.fetchone()[0] == tenants.a


def test_padded_and_non_canonical_base64(tenants):
    good = token_for(tenants.a)
    h, p, s = good.split(".")
    std = lambda seg: base64.b64encode(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))).decode()
    for token in (f"{h}.{p}.{s}=", f"{h}==.{p}.{s}", f"{std(h)}.{std(p)}.{std(s)}", f"{h}.{p}.{s}.", f"{h}..{s}"):
        if token != good:
            try_token(tenants, token)


def test_oversized_token_is_refused_quickly(tenants):
    t0 = time.monotonic()
    try_token(tenants, token_for(tenants.b, pad="x" * 200_000))
    try_token(tenants, "e" * 5_000_000)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("claims", [{"exp": 9_999_999_999}, {"tenant_id": None, "exp": 9_999_999_999},
                                    {"tenant_id": 42, "exp": 9_999_999_999}, []])
def test_claims_that_name_no_tenant(tenants, claims):
    try_token(tenants, make_token(claims))
