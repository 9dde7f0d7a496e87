"""The MariaDB data plane for the mysql tests: the server scripts/test.sh
starts (start_mariadb in scripts/lib.sh) on 127.0.0.1:DBRAG_MYSQL_PORT,
with root reached only over its socket in the work directory. This module
sets up a shop database, a reader account with a password, and reads the
server's general query log."""

import os
import subprocess

from conftest import HOST

MYSQL_PORT = int(os.environ.get("DBRAG_MYSQL_PORT", "55434"))
WORK = os.environ.get("DBRAG_TEST_WORK", "/tmp/pg_dbrag_test")
MARIADB_DIR = os.path.join(WORK, "mariadb")
SOCKET = os.path.join(MARIADB_DIR, "mysqld.sock")
GENERAL_LOG = os.path.join(MARIADB_DIR, "general.log")

MY_DB = "shopdb"
MY_USER = "shop_reader"
MY_PASSWORD = "my-shop-pw-3f9a"
NUMS = 2000  # rows of the table the slow queries cross-join


def mysql_uri(user=MY_USER, password=MY_PASSWORD, port=MYSQL_PORT, db=MY_DB, host=HOST):
    auth = user if password is None else f"{user}:{password}"
    tail = f"/{db}" if db else ""
    return f"mysql://{auth}@{host}:{port}{tail}"


def root(sql, db=None):
    """Run SQL as root over the server's socket; returns tab-separated rows."""
    cmd = ["mariadb", "--no-defaults", f"--socket={SOCKET}", "-u", "root", "-N", "-B", "-e", sql]
    if db:
        cmd.append(db)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return [line.split("\t") for line in out.stdout.splitlines()]


def setup_mysql():
    """Idempotent: the shop database, its reader and a few tables."""
    root(f"""
        CREATE DATABASE IF NOT EXISTS {MY_DB};
        CREATE DATABASE IF NOT EXISTS otherdb;
        CREATE USER IF NOT EXISTS '{MY_USER}'@'%' IDENTIFIED BY '{MY_PASSWORD}';
        CREATE USER IF NOT EXISTS 'nopw'@'%';
        GRANT SELECT ON {MY_DB}.* TO '{MY_USER}'@'%';
        GRANT SELECT ON otherdb.* TO 'nopw'@'%';
        CREATE TABLE IF NOT EXISTS otherdb.secret_stuff (id int);
    """)
    root(f"""
        CREATE TABLE IF NOT EXISTS customers (
            id int PRIMARY KEY COMMENT 'customer number',
            name varchar(100) NOT NULL COMMENT 'full name of the customer',
            region varchar(20),
            api_key varchar(64)
        ) COMMENT 'people who buy from the shop';
        CREATE TABLE IF NOT EXISTS orders (
            id int PRIMARY KEY,
            customer_id int NOT NULL,
            total decimal(10,2),
            ordered_at date,
            placed_at datetime(3),
            notes json,
            CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
        ) COMMENT 'purchases';
        CREATE TABLE IF NOT EXISTS order_items (
            order_id int, line int, sku varchar(20), qty int, photo blob,
            PRIMARY KEY (order_id, line),
            FOREIGN KEY (order_id) REFERENCES orders (id)
        );
        CREATE TABLE IF NOT EXISTS nums (n int PRIMARY KEY);
        CREATE OR REPLACE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
        INSERT IGNORE INTO customers VALUES
            (1, 'Ada Lovelace', 'north', 'sk-live-123456'), (2, 'Bo Diddley', 'south', 'sk-live-abcdef'),
            (3, 'Cy Twombly', 'north', NULL);
        INSERT IGNORE INTO orders VALUES
            (10, 1, 250.50, '2024-01-05', '2024-01-05 10:11:12.345', '{{"gift": true}}'),
            (11, 1, 20.00, '2024-02-01', NULL, NULL),
            (12, 2, 99.99, '2024-03-09', NULL, '[1, 2]');
        INSERT IGNORE INTO order_items VALUES (10, 1, 'SKU-1', 2, x'00ff'), (10, 2, 'SKU-2', 1, NULL);
        INSERT IGNORE INTO nums SELECT seq FROM seq_1_to_{NUMS};
        ANALYZE TABLE customers, orders, order_items, nums;
    """, db=MY_DB)


def general_log():
    try:
        with open(GENERAL_LOG, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def running_like(marker):
    rows = root("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                f"WHERE INFO LIKE '%{marker}%' AND INFO NOT LIKE '%PROCESSLIST%'")
    return int(rows[0][0])
