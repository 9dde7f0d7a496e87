"""A MySQL server that misbehaves on purpose. It greets like MySQL 5.7
(protocol 10, mysql_native_password), accepts any login, and answers the
client's first query the way its mode says."""

import os
import struct
import time

from . import RogueServer, recv_exact

CAPS = (0x1 | 0x4 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x20000 | 0x80000 | 0x200000)


def packet(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def lenenc(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def lenstr(b):
    return lenenc(len(b)) + b


def handshake(plugin=b"mysql_native_password"):
    salt1, salt2 = b"abcdefgh", b"ijklmnopqrst"
    return (b"\x0a" + b"5.7.99-rogue\x00" + struct.pack("<I", 7) + salt1 + b"\x00"
            + struct.pack("<H", CAPS & 0xFFFF) + b"\x21" + struct.pack("<H", 2)
            + struct.pack("<H", CAPS >> 16) + bytes([21]) + b"\x00" * 10 + salt2 + b"\x00"
            + plugin + b"\x00")


def ok(seq):
    return packet(seq, b"\x00\x00\x00" + struct.pack("<HH", 2, 0))


def eof(seq):
    return packet(seq, b"\xfe" + struct.pack("<HH", 0, 2))


def column_def(seq, name=b"v"):
    payload = (lenstr(b"def") + lenstr(b"") + lenstr(b"t") + lenstr(b"t") + lenstr(name) + lenstr(name)
               + b"\x0c" + struct.pack("<H", 33) + struct.pack("<I", 255) + b"\xfd"
               + struct.pack("<H", 0) + b"\x00" + b"\x00\x00")
    return packet(seq, payload)


def read_packet(sock):
    head = recv_exact(sock, 4)
    n = head[0] | head[1] << 8 | head[2] << 16
    return head[3], recv_exact(sock, n)


MODES = [
    "huge_column_count",   # a result set announcing 2^50 columns
    "huge_packet",         # packets of 16 MB that never end
    "truncated_packet",    # a header for 1000 bytes, 10 bytes, then close
    "length_past_end",     # a column definition whose lengths run past the packet
    "endless_rows",        # one column, rows without end
    "never_handshake",     # accept, say nothing
    "huge_handshake",      # a greeting announcing 16 MB, then garbage without end
    "garbage_after_auth",  # random bytes instead of an OK
    "cleartext_auth",      # switch to mysql_clear_password, which the client must refuse
    "huge_row",            # one row whose value announces 2^60 bytes
]


class RogueMysql(RogueServer):
    def __init__(self, mode):
        assert mode in MODES, mode
        self.mode = mode
        super().__init__(self._handle)

    def _handle(self, sock, _server):
        mode = self.mode
        if mode == "never_handshake":
            time.sleep(60)
            return
        if mode == "huge_handshake":
            sock.sendall(b"\xff\xff\xff\x00" + b"\x0a")
            chunk = os.urandom(65536)
            while not self.stop:
                sock.sendall(chunk)
            return
        sock.sendall(packet(0, handshake()))
        seq, _ = read_packet(sock)
        if mode == "garbage_after_auth":
            while not self.stop:
                sock.sendall(os.urandom(4096))
            return
        if mode == "cleartext_auth":
            sock.sendall(packet(seq + 1, b"\xfe" + b"mysql_clear_password\x00"))
            try:
                read_packet(sock)
            except OSError:
                pass
            time.sleep(1)
            return
        sock.sendall(ok(seq + 1))
        # The client's first command: the evil answer.
        _, cmd = read_packet(sock)
        if mode == "huge_column_count":
            sock.sendall(packet(1, lenenc(1 << 50)))
            time.sleep(5)
        elif mode == "huge_packet":
            sock.sendall(b"\xff\xff\xff\x01")
            chunk = b"\x00" * 65536
            while not self.stop:
                sock.sendall(chunk)
        elif mode == "truncated_packet":
            sock.sendall(struct.pack("<I", 1000)[:3] + b"\x01" + b"\x01" * 10)
        elif mode == "length_past_end":
            sock.sendall(packet(1, lenenc(1)))
            sock.sendall(packet(2, b"\xfe" + struct.pack("<Q", 1 << 40) + b"def"))
            time.sleep(5)
        elif mode == "endless_rows":
            sock.sendall(packet(1, lenenc(1)) + column_def(2) + eof(3))
            seq = 4
            row = b"".join(packet(s & 0xFF, lenstr(b"x" * 200)) for s in range(seq, seq + 256))
            while not self.stop:
                sock.sendall(row)
        elif mode == "huge_row":
            sock.sendall(packet(1, lenenc(1)) + column_def(2) + eof(3)
                         + packet(4, b"\xfe" + struct.pack("<Q", 1 << 60) + b"x" * 100))
            time.sleep(5)
