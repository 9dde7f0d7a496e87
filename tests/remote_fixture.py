"""The remote data plane for connection tests: the plain cluster that
scripts/test.sh starts on DBRAG_REMOTE_PORT (password auth), with a shop
database, a dedicated login role that reads it, and a few tables."""

import os
import socket
import threading

from conftest import HOST, REMOTE_PORT, SUPERUSER_PASSWORD, connect

REMOTE_DB = "shopdb"
REMOTE_USER = "shop_reader"
REMOTE_PASSWORD = "shop-pw-7c1e"
WORK = os.environ.get("DBRAG_TEST_WORK", "/tmp/pg_dbrag_test")


def remote_conninfo(password=REMOTE_PASSWORD, port=REMOTE_PORT, user=REMOTE_USER, dbname=REMOTE_DB):
    return f"host={HOST} port={port} dbname={dbname} user={user} password={password}"


def remote_su(dbname="postgres"):
    return connect(port=REMOTE_PORT, dbname=dbname, password=SUPERUSER_PASSWORD)


def setup_remote():
    """Idempotent: the shop database, its reader role and three tables."""
    with remote_su() as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (REMOTE_USER,)).fetchone():
            c.execute(f"CREATE ROLE {REMOTE_USER} LOGIN PASSWORD '{REMOTE_PASSWORD}'")
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (REMOTE_DB,)).fetchone():
            c.execute(f"CREATE DATABASE {REMOTE_DB}")
    with remote_su(REMOTE_DB) as c:
        c.execute("""
            CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY, name text, region text);
            CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY, customer_id int REFERENCES customers,
                                               total numeric, ordered_at date);
            CREATE TABLE IF NOT EXISTS order_items (order_id int REFERENCES orders, sku text, qty int);
            CREATE TABLE IF NOT EXISTS hidden_payroll (id int, salary numeric);
            INSERT INTO customers VALUES (1, 'Ada', 'north'), (2, 'Bo', 'south') ON CONFLICT DO NOTHING;
        """)
        c.execute(f"GRANT SELECT ON customers, orders, order_items TO {REMOTE_USER}")
        c.execute(f"REVOKE ALL ON hidden_payroll FROM {REMOTE_USER}")


class SilentServer:
    """A TCP server that accepts connections and never says a word."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)
            except OSError:
                continue

    def close(self):
        self.stop = True
        self.thread.join(timeout=2)
        for c in self.accepted:
            c.close()
        self.sock.close()


def closed_port():
    """A local port with nothing listening on it."""
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port
