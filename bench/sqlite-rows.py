#!/usr/bin/env python3
"""What one history row costs SQLite, in the shapes the writer could use (CPU microseconds a row).

usage: bench/sqlite-rows.py [ROWS] [DIR]     (default 100,000 rows, a scratch file in /tmp)

Rows go in transactions of 64 (the writer's batches under load are 55 to 145), in WAL mode with
synchronous=NORMAL, into Parley's `message` table (the v2-history migration) and variants. Rooms
come either clustered, 16 consecutive rows from one room (what the rooms benchmark gives over IRC:
1.6 rooms in 64 consecutive rows), or scattered, each row from another room (closer to many rooms
talking at once). Python's own work is included: the tiny-row line is its floor.
"""
import os
import sqlite3
import sys
import tempfile
import time

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
DIR = sys.argv[2] if len(sys.argv) > 2 else tempfile.gettempdir()
PATH = os.path.join(DIR, "parley-sqlite-rows.sqlite")
BATCH = 64
START_MS = 1_796_219_486_551

MESSAGE = """CREATE TABLE message (id INTEGER PRIMARY KEY, target TEXT NOT NULL, time INTEGER NOT NULL,
    kind INTEGER NOT NULL, sender TEXT NOT NULL, senderUser TEXT NOT NULL, senderHost TEXT NOT NULL,
    senderAccount TEXT, recipient TEXT NOT NULL, text TEXT NOT NULL, tags TEXT, pendingFor TEXT)"""
BY_TARGET = "CREATE INDEX message_by_target ON message(target, time)"


def clustered(i):
    return "#r18cz-%d" % ((i // 16) % 100)


def scattered(i):
    return "#r18cz-%d" % ((i * 7919) % 100)


def message_row(room):
    return lambda i: (i + 1, room(i), START_MS + i // 50, 0, "p18c%d" % (i % 1000), "p18c%d" % (i % 1000),
                      "127.0.0.1", None, room(i), "p124-8 2640697673890", None, None)


def remove():
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(PATH + suffix):
            os.remove(PATH + suffix)


def measure(name, schema, make_row, pragmas=()):
    remove()
    db = sqlite3.connect(PATH, isolation_level=None)
    for pragma in pragmas:
        db.execute(pragma)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    for statement in schema:
        db.execute(statement)
    rows = [make_row(i) for i in range(ROWS)]
    insert = "INSERT INTO message VALUES (%s)" % ", ".join("?" * len(rows[0]))
    start = time.process_time()
    for first in range(0, ROWS, BATCH):
        db.execute("BEGIN")
        db.executemany(insert, rows[first:first + BATCH])
        db.execute("COMMIT")
    spent = time.process_time() - start
    db.close()
    remove()
    print(f"{name:<52} {spent / ROWS * 1e6:6.2f} us/row")


measure("tiny rows (id, one integer), no index", ["CREATE TABLE message (id INTEGER PRIMARY KEY, x INTEGER)"],
        lambda i: (i + 1, i))
measure("message rows, no index", [MESSAGE], message_row(clustered))
measure("message rows + (target, time) index, clustered", [MESSAGE, BY_TARGET], message_row(clustered))
measure("message rows + (target, time) index, scattered", [MESSAGE, BY_TARGET], message_row(scattered))
measure("  the same, wal_autocheckpoint 10000", [MESSAGE, BY_TARGET], message_row(scattered),
        ["PRAGMA wal_autocheckpoint = 10000"])
measure("  the same, page_size 1024", [MESSAGE, BY_TARGET], message_row(scattered), ["PRAGMA page_size = 1024"])

CHUNK = ["""CREATE TABLE chunk (id INTEGER PRIMARY KEY, target TEXT NOT NULL, firstTime INTEGER NOT NULL,
    lastTime INTEGER NOT NULL, count INTEGER NOT NULL, body BLOB NOT NULL)""",
         "CREATE INDEX chunk_by_target ON chunk(target, lastTime)",
         "CREATE INDEX chunk_by_age ON chunk(firstTime)"]


def measure_chunks(name, room):
    """Parley's chunks: a row per room per transaction, the room's messages packed in its body."""
    remove()
    db = sqlite3.connect(PATH, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    for statement in CHUNK:
        db.execute(statement)
    start = time.process_time()
    for first in range(0, ROWS, BATCH):
        chunks = {}
        for i in range(first, first + BATCH):
            body = b"%d\x00%d\x00p18c%d\x00p18c%d\x00127.0.0.1\x00\x00%s\x00p124-8 2640697673890\x00" % (
                i + 1, START_MS + i // 50, i % 1000, i % 1000, room(i).encode())
            chunks.setdefault(room(i), []).append((i + 1, START_MS + i // 50, body))
        db.execute("BEGIN")
        db.executemany("INSERT INTO chunk VALUES (?, ?, ?, ?, ?, ?)",
                       [(m[-1][0], target, m[0][1], m[-1][1], len(m), b"".join(x[2] for x in m))
                        for target, m in chunks.items()])
        db.execute("COMMIT")
    spent = time.process_time() - start
    db.close()
    remove()
    print(f"{name:<52} {spent / ROWS * 1e6:6.2f} us/message")


measure_chunks("chunks (a row per room per transaction), clustered", clustered)
measure_chunks("chunks, scattered", scattered)
