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
size, W= the size with CRLF line ends (dovecot's IMAP ``RFC822.SIZE``,
which it takes from the name without reading the file): the stored size
plus one for every LF not already preceded by a CR.  A line that ends in
CR LF as stored (a ``\\r\\r\\n`` line end in the input, after intake's
CRLF -> LF) needs no extra byte.  The count is taken while the file is
written, so the final name - the ``tmp/`` name, which carries S= only,
plus W= - is made after the write.

Missing directories (root, tmp/new/cur, folders) are created 0700; a
folder also gets an empty ``maildirfolder`` file (Maildir++), and the
caller's ``created`` callback is told about a folder this delivery made
(subscriptions.py).  They are
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


def unique_name(size, vsize=None):
    """A Maildir unique name with S= (and W= unless ``vsize`` is None)."""
    now = time.time_ns()
    sec, usec = divmod(now // 1000, 1_000_000)
    _counter[0] += 1
    rand = os.urandom(4).hex()
    name = f"{sec}.M{usec}P{os.getpid()}Q{_counter[0]}R{rand}.{_host()},S={size}"
    return name if vsize is None else f"{name},W={vsize}"


def count_bare_lf(pieces):
    """Number of LF not preceded by CR in the concatenation of ``pieces``.

    (What W= adds to the size; a CR LF split across two pieces counts as
    CR LF.)
    """
    bare = 0
    last = b""
    for piece in pieces:
        if not piece:
            continue
        bare += piece.count(b"\n") - piece.count(b"\r\n")
        if last == b"\r" and piece[:1] == b"\n":
            bare -= 1
        last = piece[-1:]
    return bare


def ensure_maildir(directory, folder=False):
    """Create ``directory`` with tmp/new/cur (0700) and maildirfolder.

    Returns True when it created the directory itself (a new folder).
    """
    created = False
    try:
        if folder:
            root = os.path.dirname(directory.rstrip("/"))
            ensure_maildir(root, False)
            try:
                os.mkdir(directory, 0o700)
                created = True
            except FileExistsError:
                pass
        else:
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
    return created


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


def _written(fd, *sources):
    """Write every piece of ``sources`` (bytes or iterables of bytes) to
    ``fd``, yielding each piece once it is written."""
    for source in sources:
        for piece in (source,) if isinstance(source, bytes) else source:
            write_all(fd, piece)
            yield piece


def deliver(directory, message, prefix, folder=False, flags=None, created=None):
    """Write one message into Maildir ``directory``; return its final path.

    ``created(directory)`` is called when this delivery created the folder
    (deliver.py subscribes it).
    """
    size = len(prefix) + message.size
    name = unique_name(size)
    tmp = os.path.join(directory, "tmp", name)
    flags_open = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags_open, 0o600)
    except FileNotFoundError:
        if ensure_maildir(directory, folder) and created is not None:
            created(directory)
        try:
            fd = os.open(tmp, flags_open, 0o600)
        except OSError as exc:
            raise from_oserror(exc, f"cannot create {tmp}") from None
    except OSError as exc:
        raise from_oserror(exc, f"cannot create {tmp}") from None
    try:
        try:
            if message.data is not None:
                data = prefix + message.data
                write_all(fd, data)
                vsize = size + count_bare_lf((data,))
            else:
                vsize = size + count_bare_lf(_written(fd, prefix, message.chunks()))
            fsync_file(fd)
        finally:
            os.close(fd)
        name = f"{name},W={vsize}"  # unique already: tmp/ took it with O_EXCL
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
