"""Helpers for the engine's subprocess tests (test_cli, test_maildir,
test_mbox, test_faults): reply statuses as named constants, running the
installed pymda as a test user, and asserting on bytes on disk.

- ``deliver(user, args, data)``: the installed pymda as ``user`` (no
  supplementary groups, as postfix runs it) with ``-f SENDER -a
  <user>@example.org`` unless ``sender``/``recipient`` say otherwise.
- ``assert_ok(result)``: exit 0, no output.
- ``assert_failure(result, code, status)``: the SPEC 1.9 contract: the exit
  code, the status as the very first bytes, exactly one line, no traceback.
- ``snapshot(root)``: every path under ``root`` with its type, mode, owner
  and bytes, to prove that a failed delivery changed nothing.
- ``maildir_files(directory, sub)``: {name: bytes} of a Maildir subdirectory.
"""

import os
import stat

from support.run import run_pymda

SENDER = "sender@example.org"
MESSAGE = b"Subject: engine test\nMessage-ID: <engine-test@example.org>\n\nbody line\n"

# SPEC 1.9 statuses.
USAGE = "5.5.4"
NO_USER = "5.1.1"
EMPTY = "5.6.0"
TOO_BIG = "5.2.3"
LOOP = "5.4.6"
CONFIG = "4.3.5"
REFUSED = "4.2.0"
LOCKED = "4.2.0"
NOT_ALLOWED = "5.7.1"
TEMP = "4.3.0"
INTERNAL = "4.3.0"


def recipient_of(user, extension=None):
    local = user.name if extension is None else f"{user.name}+{extension}"
    return f"{local}@example.org"


def deliver(user, args, data=MESSAGE, sender=SENDER, recipient=None, **kw):
    argv = []
    if sender is not None:
        argv += ["-f", sender]
    if recipient is not False:
        argv += ["-a", recipient or recipient_of(user)]
    return run_pymda([*argv, *args], data, user=user, **kw)


def assert_ok(result):
    assert result.code == 0, result
    assert result.output == b"", result


def assert_failure(result, code, status):
    out = result.output
    assert result.code == code, result
    assert out.startswith(status.encode() + b" "), out
    assert out.endswith(b"\n") and out.count(b"\n") == 1, out
    assert b"Traceback" not in out


def refused_unchanged(user, code, status, args, data=MESSAGE, **kw):
    """deliver() that must fail with ``code`` and ``status`` and leave the
    home as it was; its Result."""
    before = snapshot(user.home)
    result = deliver(user, args, data, **kw)
    assert_failure(result, code, status)
    assert snapshot(user.home) == before
    return result


def snapshot(root):
    """{relative path: (kind, mode, uid, content)} for everything under root."""
    root = str(root)
    out = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = f.read()
                kind = "file"
            elif stat.S_ISLNK(st.st_mode):
                content, kind = os.readlink(path), "link"
            else:
                content, kind = None, stat.S_IFMT(st.st_mode)
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, content)
    return out


def maildir_files(directory, sub="new"):
    d = os.path.join(str(directory), sub)
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out[name] = f.read()
    return out


def only_message(directory, sub="new"):
    files = maildir_files(directory, sub)
    assert len(files) == 1, files.keys()
    return next(iter(files.items()))


def header_lines(msg, name):
    """Lines of the header (up to the first empty line) starting with name:."""
    head = msg.split(b"\n\n", 1)[0]
    prefix = name.lower().encode() + b":"
    return [line for line in head.split(b"\n") if line.lower().startswith(prefix)]
