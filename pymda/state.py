"""Per-user record of completed (message, recipient, target) deliveries.

Why: when a message goes to several targets and one fails temporarily,
pymda exits 75 and the MTA retries the whole message later.  The retry must
deliver only what is still owed (DUPLICATE ELIMINATION).  Postfix's local(8)
keeps this state in its queue file; an MDA has no queue, so pymda keeps a
small SQLite file per user.

Contract:
- ``message_key(message, envelope)`` -> hex digest identifying one message
  for one recipient: SHA-256 over sender, recipient and the message bytes
  as pymda received them (the leading From_ line, which carries the time of
  each attempt, is not part of them; postfix's leading Return-Path /
  X-Original-To / Delivered-To block is the same on every attempt).
- ``target_key(target)`` -> text naming a target (kind + path/folder,
  command or address).
- ``Ledger.open(path, timeout)`` -> Ledger or raises TempFail;
  ``ledger.done(msg, target)`` -> bool; ``ledger.record(msg, target)``
  (commits durably); ``ledger.forget(msg)`` (all targets done: the retry
  scenario is over); ``ledger.close()``.
- ``ledger.quota_marks(resource, above, thresholds)`` -> the thresholds
  newly marked (quota warnings, quota_warn.py; table ``quota_marks``, never
  expired: a mark lasts until usage is seen below its threshold).
- ``state_path(cfg, identity)``: ``cfg.state_file`` (default
  ``$home/.pymda-state.sqlite``) expanded with $home and $user.

DURABILITY: the caller records a target only after the writer has fsynced
it (a pipe: exited 0; a forward: sendmail exited 0).  Each record is its own
transaction with ``synchronous=FULL``, so a crash between a target and its
record can at worst deliver that one target twice, never lose one.

PERFORMANCE: nothing here is imported, and the file is not opened, for a
delivery with a single target (deliver.py only opens a Ledger for two or
more targets).  sqlite3 is imported inside ``Ledger.open``.

Entries expire after ``EXPIRE_SECONDS`` (a week: longer than postfix's
default maximal_queue_lifetime of 5 days); expired rows are removed when a
ledger is opened.

SECURITY: the file is created mode 0600 by the user pymda runs as (already
the recipient when started as root), never following a symlink at the
final component.  Concurrency is SQLite's own locking (busy timeout =
``lock_timeout``).
"""

import os
import time

from pymda.errors import TempFail

EXPIRE_SECONDS = 7 * 24 * 3600
DEFAULT_STATE_FILE = "$home/.pymda-state.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS done (
    message TEXT NOT NULL,
    target TEXT NOT NULL,
    stamp REAL NOT NULL,
    PRIMARY KEY (message, target)
)
"""


QUOTA_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_marks (
    resource TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    stamp REAL NOT NULL,
    PRIMARY KEY (resource, threshold)
)
"""


def state_path(cfg, identity):
    from pymda.config import user_path

    return user_path(getattr(cfg, "state_file", None) or DEFAULT_STATE_FILE, identity, cfg=cfg)


def message_key(message, envelope):
    import hashlib

    h = hashlib.sha256()
    h.update((envelope.sender or "").encode("utf-8", "surrogateescape") + b"\0")
    h.update((envelope.recipient or "").lower().encode("utf-8", "surrogateescape") + b"\0")
    for chunk in message.chunks():
        h.update(chunk)
    return h.hexdigest()


def target_key(target):
    kind = target.kind
    if kind == "pipe":
        return f"pipe:{target.command}"
    if kind == "forward":
        return f"forward:{target.address.lower()}"
    return f"{kind}:{target.path}:{getattr(target, 'folder', None) or 'INBOX'}"


class Ledger:
    """An open state file (not a Record: it owns a connection)."""

    __slots__ = ("db", "path")

    def __init__(self, db, path):
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path, timeout=60, now=None):
        try:
            import sqlite3
        except ImportError:  # a Python built without it: no ledger
            raise TempFail("delivery state needs the sqlite3 module", "4.3.0") from None

        try:
            # create 0600 without following a symlink, before sqlite opens it
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.close(fd)
            db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise TempFail(f"cannot open delivery state {path}: {_reason(exc)}", "4.3.0") from None
        ledger = cls(db, path)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute(SCHEMA)
            stamp = (time.time() if now is None else now) - EXPIRE_SECONDS
            db.execute("DELETE FROM done WHERE stamp < ?", (stamp,))
        except sqlite3.Error as exc:
            ledger.close()
            raise TempFail(f"delivery state {path}: {_reason(exc)}", "4.3.0") from None
        return ledger

    def done(self, message, target):
        import sqlite3

        try:
            row = self.db.execute(
                "SELECT 1 FROM done WHERE message = ? AND target = ?", (message, target)
            ).fetchone()
        except sqlite3.Error as exc:
            raise TempFail(f"delivery state {self.path}: {_reason(exc)}", "4.3.0") from None
        return row is not None

    def record(self, message, target, now=None):
        import sqlite3

        stamp = time.time() if now is None else now
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO done (message, target, stamp) VALUES (?, ?, ?)",
                (message, target, stamp),
            )
        except sqlite3.Error as exc:
            raise TempFail(f"delivery state {self.path}: {_reason(exc)}", "4.3.0") from None

    def forget(self, message):
        import sqlite3

        try:
            self.db.execute("DELETE FROM done WHERE message = ?", (message,))
        except sqlite3.Error as exc:
            raise TempFail(f"delivery state {self.path}: {_reason(exc)}", "4.3.0") from None

    def quota_marks(self, resource, above, thresholds, now=None):
        """Quota warnings (quota_warn.py): mark every threshold in ``above``,
        re-arm the other ``thresholds``; returns the ones newly marked.
        Read first, write only on a change (the usual delivery changes
        nothing); a change is one transaction that re-reads, so of
        concurrent callers one gets each new mark."""
        import sqlite3

        stamp = time.time() if now is None else now
        query = "SELECT threshold FROM quota_marks WHERE resource = ?"
        try:
            self.db.execute(QUOTA_SCHEMA)
            marked = {row[0] for row in self.db.execute(query, (resource,))}
            if marked == (set(above) & set(thresholds)) | (marked - set(thresholds)):
                return []
            self.db.execute("BEGIN IMMEDIATE")
            try:
                marked = {row[0] for row in self.db.execute(query, (resource,))}
                new = [t for t in thresholds if t in above and t not in marked]
                self.db.executemany(
                    "INSERT INTO quota_marks (resource, threshold, stamp) VALUES (?, ?, ?)",
                    [(resource, t, stamp) for t in new])
                self.db.executemany(
                    "DELETE FROM quota_marks WHERE resource = ? AND threshold = ?",
                    [(resource, t) for t in thresholds if t not in above and t in marked])
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise TempFail(f"delivery state {self.path}: {_reason(exc)}", "4.3.0") from None
        return new

    def close(self):
        try:
            self.db.close()
        except Exception:
            pass


def _reason(exc):
    return getattr(exc, "strerror", None) or str(exc)
