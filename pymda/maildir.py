"""Maildir / Maildir++ writer (SPEC 1.5).

Contract: ``deliver(directory, message, prefix, folder=False, flags=None)``
writes one message into the Maildir ``directory`` (the root, or a
Maildir++ folder ``<root>/.Name``) and returns the path in ``new/`` (or
``cur/`` when ``flags`` is given, e.g. "S" for a redelivered, seen
message), or raises a DeliveryError.

DURABILITY: the file is created in ``tmp/`` (O_EXCL, O_NOFOLLOW, 0600),
written, fsynced, then link()ed into ``new/`` - never clobbering; on a
name clash a new name is made - then ``new/`` is fsynced.  Nothing is ever
visible in ``new/`` half written.  The tmp name is removed afterwards; a
crash leaves at most a file in ``tmp/``, which Maildir readers clean up.

Names: ``<sec>.M<usec>P<pid>Q<n>R<random>.<host>,S=<size>,W=<vsize>``
(host with '/' and ':' escaped as \\057 and \\072).  S= is the stored
size, W= the size with CRLF line ends (dovecot's IMAP size).

Missing directories (root, tmp/new/cur, folders) are created 0700; a
folder also gets an empty ``maildirfolder`` file (Maildir++).  They are
created only on the first failed open, so a normal delivery costs no
extra system calls.
"""

import time

from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.durable import fsync_directory, fsync_file, write_all
from pymda.errors import from_oserror

# The Q<counter> of SPEC 1.5's names: deliveries made by this process (a
# batch or an LMTP server makes many).  The one piece of module state, on
# purpose: a per-process counter is what the name format asks for.
_counter = [0]


def _host():
    return os.uname().nodename.replace("/", "\\057").replace(":", "\\072")


def unique_name(size, vsize):
    """A Maildir unique name with S= and W= sizes."""
    now = time.time_ns()
    sec, usec = divmod(now // 1000, 1_000_000)
    _counter[0] += 1
    rand = os.urandom(4).hex()
    return (
        f"{sec}.M{usec}P{os.getpid()}Q{_counter[0]}R{rand}.{_host()}"
        f",S={size},W={vsize}"
    )


def ensure_maildir(directory, folder=False):
    """Create ``directory`` with tmp/new/cur (0700) and maildirfolder."""
    try:
        if folder:
            root = os.path.dirname(directory.rstrip("/"))
            ensure_maildir(root, False)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for sub in ("tmp", "new", "cur"):
            try:
                os.mkdir(os.path.join(directory, sub), 0o700)
            except FileExistsError:
                pass
        if folder:
            marker = os.path.join(directory, "maildirfolder")
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            except FileExistsError:
                pass
    except OSError as exc:
        raise from_oserror(exc, f"cannot create Maildir {directory}") from None


MAILDIRSIZE = "maildirsize"


def account(root, size, count=1):
    """Add one delivery to ``<root>/maildirsize`` if that file exists.

    Maildir++ (courier, dovecot's ``maildir`` quota backend): one line
    ``<bytes> <count>`` appended with a single O_APPEND write, atomic with
    respect to other writers.  No file, no accounting (one failed open).
    """
    # O_NONBLOCK: a FIFO named maildirsize (the user's to make) would block
    # this open for ever, after the message is already in new/ - the MTA
    # would then time out, retry and deliver it again.  Without a reader
    # the open fails (ENXIO); on a regular file the flag changes nothing.
    try:
        fd = os.open(os.path.join(root, MAILDIRSIZE),
                     os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, b"%d %d\n" % (size, count))
    except OSError:
        pass
    finally:
        os.close(fd)


def deliver(directory, message, prefix, folder=False, flags=None):
    """Write one message into Maildir ``directory``; return its final path."""
    size = len(prefix) + message.size
    vsize = size + prefix.count(b"\n") + message.lines
    name = unique_name(size, vsize)
    tmp = os.path.join(directory, "tmp", name)
    flags_open = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags_open, 0o600)
    except FileNotFoundError:
        ensure_maildir(directory, folder)
        try:
            fd = os.open(tmp, flags_open, 0o600)
        except OSError as exc:
            raise from_oserror(exc, f"cannot create {tmp}") from None
    except OSError as exc:
        raise from_oserror(exc, f"cannot create {tmp}") from None
    try:
        try:
            if message.data is not None:
                write_all(fd, prefix + message.data)
            else:
                write_all(fd, prefix)
                for piece in message.chunks():
                    write_all(fd, piece)
            fsync_file(fd)
        finally:
            os.close(fd)
        sub = "new" if flags is None else "cur"
        while True:
            final = os.path.join(directory, sub, name if flags is None else f"{name}:2,{flags}")
            try:
                os.link(tmp, final)
                break
            except FileExistsError:
                name = unique_name(size, vsize)  # never clobber
            except FileNotFoundError:
                if os.path.isdir(os.path.join(directory, sub)):
                    raise
                ensure_maildir(directory, folder)  # tmp/ was there, new/ was not
        fsync_directory(os.path.join(directory, sub))
    except OSError as exc:
        _remove(tmp)
        raise from_oserror(exc, f"cannot write to Maildir {directory}") from None
    except BaseException:
        _remove(tmp)
        raise
    _remove(tmp)
    return final


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass
