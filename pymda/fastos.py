"""The slice of ``os`` the per-message delivery path uses, without ``os``.

WHY: under ``python -I -S`` nothing imports ``os`` at start-up, and
``import os`` costs about 1.2 ms (it pulls in ``_collections_abc``,
``posixpath``, ``stat``, ``abc``): a tenth of a whole delivery, and the
margin by which pymda meets its speed target against dovecot-lda.  The
delivery-path modules do ``from pymda import fastos as os`` and keep
reading like ordinary ``os`` code.

Contract: every function here is the very same C function ``os``
re-exports from ``posix`` (``from posix import *``), plus ``SEEK_*``,
``devnull``, ``environ`` (a str snapshot of the environment, read-only
use), ``makedirs`` and ``path`` (``join split dirname basename exists
lexists isdir isfile abspath``) with ``posixpath``'s semantics for the
str paths pymda handles.  tests/test_fastos.py holds them to ``os``.

LIMITATIONS: ``environ`` is a snapshot taken at import: pymda never
changes its own environment on the delivery path.  Only str paths.
Modules off the delivery path (pipes, quota, admin, daemons) use ``os``.
"""

import posix
from posix import *  # noqa: F401,F403 - the functions os re-exports

from posix import _exit  # noqa: F401 - not exported by "import *"

del environ  # noqa: F821 - posix's is bytes; ours is __getattr__ below

SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2
sep = "/"
devnull = "/dev/null"
name = "posix"

_snapshot = []


def __getattr__(attr):
    """``environ``: the live ``os.environ`` once something imported ``os``
    (tests, the daemons), else a str snapshot of the process environment."""
    if attr != "environ":
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    import sys

    live = sys.modules.get("os")
    if live is not None:
        return live.environ
    if not _snapshot:
        _snapshot.append({
            k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in posix.environ.items()
        })
    return _snapshot[0]


def makedirs(name, mode=0o777, exist_ok=False):
    """``os.makedirs``: parents with the default mode, the leaf with ``mode``."""
    head, tail = path.split(name)
    if not tail:
        head, tail = path.split(head)
    if head and tail and not path.exists(head):
        try:
            makedirs(head, exist_ok=exist_ok)
        except FileExistsError:
            pass
    try:
        posix.mkdir(name, mode)
    except OSError:
        if not exist_ok or not path.isdir(name):
            raise


class path:
    """``os.path`` (posixpath) for str paths."""

    sep = "/"

    @staticmethod
    def join(a, *parts):
        out = a
        for b in parts:
            if b.startswith("/"):
                out = b
            elif not out or out.endswith("/"):
                out += b
            else:
                out += "/" + b
        return out

    @staticmethod
    def split(p):
        i = p.rfind("/") + 1
        head, tail = p[:i], p[i:]
        if head and head != "/" * len(head):
            head = head.rstrip("/")
        return head, tail

    @staticmethod
    def dirname(p):
        return path.split(p)[0]

    @staticmethod
    def basename(p):
        return p[p.rfind("/") + 1 :]

    @staticmethod
    def exists(p):
        try:
            posix.stat(p)
        except (OSError, ValueError):
            return False
        return True

    @staticmethod
    def lexists(p):
        try:
            posix.lstat(p)
        except (OSError, ValueError):
            return False
        return True

    @staticmethod
    def isdir(p):
        try:
            return (posix.stat(p).st_mode & 0o170000) == 0o040000
        except (OSError, ValueError):
            return False

    @staticmethod
    def isfile(p):
        try:
            return (posix.stat(p).st_mode & 0o170000) == 0o100000
        except (OSError, ValueError):
            return False

    @staticmethod
    def normpath(p):
        if not p:
            return "."
        initial = 2 if p.startswith("//") and not p.startswith("///") else (
            1 if p.startswith("/") else 0)
        parts = []
        for comp in p.split("/"):
            if comp in ("", "."):
                continue
            if comp != ".." or (not initial and not parts) or (parts and parts[-1] == ".."):
                parts.append(comp)
            elif parts:
                parts.pop()
        out = "/".join(parts)
        if initial:
            out = "/" * initial + out
        return out or "."

    @staticmethod
    def abspath(p):
        if not p.startswith("/"):
            p = path.join(posix.getcwd(), p)
        return path.normpath(p)
