"""Node assertions (docs/scale-out.md) written independently of the
extension's Rust code, for tests that forge or replay them."""

import hashlib
import hmac
import struct
import time

from conftest import b64url


def sign(secret: bytes, tenant, role: str, database: str = "dbrag_citus", exp=None) -> str:
    exp = int(exp if exp is not None else time.time() + 600)
    key = hmac.new(secret, b"dbrag:node-assertion:v1", hashlib.sha256).digest()
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for field in ("v1", str(tenant), str(exp), role, database):
        raw = field.encode()
        mac.update(struct.pack(">I", len(raw)) + raw)
    return f"v1.{tenant}.{exp}.{b64url(role.encode())}.{b64url(mac.digest())}"
