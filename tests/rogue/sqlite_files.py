"""SQLite files crafted to be corrupt or enormous."""

import os
import sqlite3
import struct


def good(path):
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
                     "INSERT INTO t VALUES (1, 'a'), (2, 'b');")
    db.close()


def garbage(path):
    """Not a database at all."""
    with open(path, "wb") as f:
        f.write(os.urandom(8192))


def bad_header(path):
    """A real header with an absurd page size and page count."""
    good(path)
    with open(path, "r+b") as f:
        f.seek(16)
        f.write(struct.pack(">H", 3))           # page size 3
        f.seek(28)
        f.write(struct.pack(">I", 0xFFFFFFFF))  # database size in pages


def corrupt_pages(path):
    """A valid header, the schema page and table pages overwritten."""
    good(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * (size - 100))


def corrupt_schema(path):
    """A schema row whose SQL text does not parse."""
    good(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA writable_schema = ON")
    db.execute("UPDATE sqlite_master SET sql = 'CREATE TABLE t (' || x'00ff' || ' ((((' WHERE name = 't'")
    db.commit()
    db.close()


def enormous_sparse(path, size=1 << 40):
    """A valid database grown to 1 TB by a sparse hole at its end."""
    good(path)
    with open(path, "r+b") as f:
        f.truncate(size)


def oversized_values(path):
    """Values of 20 MB, past the 16 MB SQLite lets a connection handle."""
    good(path)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO big VALUES (?, ?)", [(i, "x" * 20_000_000) for i in range(2)])
    db.commit()
    db.close()


FILES = {
    "garbage": garbage,
    "bad_header": bad_header,
    "corrupt_pages": corrupt_pages,
    "corrupt_schema": corrupt_schema,
    "enormous_sparse": enormous_sparse,
    "oversized_values": oversized_values,
}
