"""A PostgreSQL server that misbehaves on purpose. It refuses SSL and GSS
encryption, asks for a cleartext password (the tenant's own), says
AuthenticationOk and answers queries the way its mode says."""

import os
import struct
import time

from . import RogueServer, recv_exact


def msg(tag, payload=b""):
    return tag + struct.pack("!I", len(payload) + 4) + payload


def ready():
    return msg(b"Z", b"I")


def row_description(n=1):
    field = b"v\x00" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    return msg(b"T", struct.pack("!h", n) + field * n)


def data_row(value):
    return msg(b"D", struct.pack("!h", 1) + struct.pack("!i", len(value)) + value)


MODES = [
    "huge_field",          # a DataRow announcing a 1 GB value, 100 bytes of it, then silence
    "truncated_message",   # a message header for 1000 bytes, 10 bytes, then close
    "length_past_end",     # a DataRow whose field length runs past the message
    "endless_rows",        # rows without end
    "never_handshake",     # accept, say nothing
    "garbage_after_auth",  # random bytes after AuthenticationOk
    "kerberos_auth",       # an authentication method libpq does not support
    "huge_error",          # an ErrorResponse announcing 2^31-1 bytes
]


class RoguePostgres(RogueServer):
    def __init__(self, mode):
        assert mode in MODES, mode
        self.mode = mode
        super().__init__(self._handle)

    def _startup(self, sock):
        while True:
            n = struct.unpack("!I", recv_exact(sock, 4))[0]
            body = recv_exact(sock, n - 4)
            code = struct.unpack("!I", body[:4])[0]
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest
                sock.sendall(b"N")
                continue
            return

    def _read_message(self, sock):
        tag = recv_exact(sock, 1)
        n = struct.unpack("!I", recv_exact(sock, 4))[0]
        return tag, recv_exact(sock, n - 4)

    def _until_sync(self, sock):
        """Read a query: a simple Query, or extended messages up to Sync."""
        while True:
            tag, _ = self._read_message(sock)
            if tag in (b"Q", b"S"):
                return tag
            if tag == b"X":
                raise OSError("client left")

    def _handle(self, sock, _server):
        mode = self.mode
        if mode == "never_handshake":
            time.sleep(60)
            return
        self._startup(sock)
        if mode == "kerberos_auth":
            sock.sendall(msg(b"R", struct.pack("!I", 2)))
            time.sleep(1)
            return
        sock.sendall(msg(b"R", struct.pack("!I", 3)))  # cleartext password
        self._read_message(sock)
        sock.sendall(msg(b"R", struct.pack("!I", 0)))
        if mode == "garbage_after_auth":
            while not self.stop:
                sock.sendall(os.urandom(4096))
            return
        sock.sendall(msg(b"S", b"server_version\x0015.99\x00") + msg(b"S", b"client_encoding\x00UTF8\x00")
                     + msg(b"S", b"standard_conforming_strings\x00on\x00")
                     + msg(b"K", struct.pack("!II", 1, 2)) + ready())
        # The session set-up (BEGIN READ ONLY; SET LOCAL …) is a simple
        # query of the extension's own: answered normally.
        while True:
            tag = self._until_sync(sock)
            if tag == b"Q":
                sock.sendall(msg(b"C", b"BEGIN\x00") + msg(b"C", b"SET\x00") + ready())
                continue
            break
        # The statement (extended protocol): the evil answer.
        sock.sendall(msg(b"1") + msg(b"2"))
        if mode == "huge_field":
            sock.sendall(row_description() + b"D" + struct.pack("!I", (1 << 30) + 10)
                         + struct.pack("!h", 1) + struct.pack("!i", 1 << 30) + b"x" * 100)
            time.sleep(30)
        elif mode == "truncated_message":
            sock.sendall(row_description() + b"D" + struct.pack("!I", 1000) + b"\x00" * 10)
        elif mode == "length_past_end":
            sock.sendall(row_description() + msg(b"D", struct.pack("!h", 1) + struct.pack("!i", 1 << 20) + b"abc")
                         + msg(b"C", b"SELECT 1\x00") + ready())
            time.sleep(5)
        elif mode == "endless_rows":
            sock.sendall(row_description())
            batch = data_row(b'{"v": "' + b"x" * 500 + b'"}') * 200
            while not self.stop:
                sock.sendall(batch)
        elif mode == "huge_error":
            sock.sendall(b"E" + struct.pack("!I", 0x7FFFFFFF) + b"SERROR\x00" + b"M" + b"y" * 1000)
            time.sleep(30)
