"""Per-user memory of Sieve's "already done" facts: duplicate and vacation.

Contract: a memory has ``seen(key, now) -> bool`` (the key was marked
and its expiry is later than ``now``) and ``mark(key, expiry)`` (remember
``key`` until ``expiry``, UTC seconds; marking again moves the expiry).
Keys are short text made by the callers:

- ``duplicate`` (RFC 7352): ``"dup:" + sha256(unique id + handle)``
  (pymda.sieve.interp);
- ``vacation`` (RFC 5230 4.2): ``"vac:" + sha256(lower-cased sender +
  handle)`` (pymda.sieve.send.vacation_key).

Two implementations:

- ``MemoryStore()``: a dict, for tests, ``pymda -n`` plans and the
  Pigeonhole adapter;
- ``SqliteMemory.open(path, timeout, now)``: the ``sieve_memory`` table
  of pymda's per-user state file (``state_file``, pymda.state: the same
  database as the completed-target ledger, opened the same way — 0600,
  no symlink at the last component); expired rows are removed when it
  is opened.  Raises TempFail 4.3.0 when the file cannot be opened.

DURABILITY: each ``mark`` is its own transaction (synchronous=FULL, set
by pymda.state).  The vacation mark is written only after the reply was
sent (pymda.sieve.send), so a crash in between may at worst send one
more reply, never suppress one wrongly.  A ``duplicate`` mark is
written by the interpreter when the test runs (RFC 7352 3: the message
is "seen" once it was tested), through the delivery's memory.

PERFORMANCE: ``sqlite3`` is imported only when a script uses
``duplicate`` or a vacation reply is considered, and this module too:
the delivery opens the store lazily (``pymda.sieve.step.LazyMemory``).

LIMITATIONS: RFC 5230 asks for room for at least 1000 tracked
responses; SQLite has no practical limit, expired rows go at the next
open.
"""

from pymda.errors import TempFail

SCHEMA = """
CREATE TABLE IF NOT EXISTS sieve_memory (
    key TEXT PRIMARY KEY,
    expiry REAL NOT NULL
)
"""


class MemoryStore:
    """In-process memory (nothing written)."""

    def __init__(self):
        self.entries = {}

    def seen(self, key, now):
        expiry = self.entries.get(key)
        return expiry is not None and expiry > now

    def mark(self, key, expiry):
        self.entries[key] = expiry

    def close(self):
        pass


class SqliteMemory:
    """The ``sieve_memory`` table of the per-user state file."""

    def __init__(self, ledger):
        self.ledger = ledger
        self.db = ledger.db
        self.path = ledger.path

    @classmethod
    def open(cls, path, timeout=60, now=None):
        import sqlite3
        import time

        from pymda.state import Ledger

        ledger = Ledger.open(path, timeout, now)
        try:
            ledger.db.execute(SCHEMA)
            ledger.db.execute("DELETE FROM sieve_memory WHERE expiry <= ?",
                              (time.time() if now is None else now,))
        except sqlite3.Error as exc:
            ledger.close()
            raise TempFail(f"sieve state {path}: {exc}", "4.3.0") from None
        return cls(ledger)

    def seen(self, key, now):
        import sqlite3

        try:
            row = self.db.execute(
                "SELECT expiry FROM sieve_memory WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise TempFail(f"sieve state {self.path}: {exc}", "4.3.0") from None
        return row is not None and row[0] > now

    def mark(self, key, expiry):
        import sqlite3

        try:
            self.db.execute(
                "INSERT OR REPLACE INTO sieve_memory (key, expiry) VALUES (?, ?)",
                (key, expiry))
        except sqlite3.Error as exc:
            raise TempFail(f"sieve state {self.path}: {exc}", "4.3.0") from None

    def close(self):
        self.ledger.close()


def hashed_key(prefix, *parts):
    """``prefix`` + hex SHA-256 of ``parts`` joined by NUL."""
    import hashlib

    data = "\0".join(parts).encode("utf-8", "surrogateescape")
    return prefix + hashlib.sha256(data).hexdigest()
