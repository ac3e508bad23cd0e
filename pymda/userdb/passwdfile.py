"""``passwd-file:PATH``: users from a dovecot passwd-file.

Format (one user a line, ``#`` comments): ``user:password:uid:gid:gecos:
home:shell:extra_fields`` where extra_fields are space-separated
``key=value`` (``userdb_quota_rule=*:storage=1G``, ``userdb_mail=maildir:
~/Maildir``, ``mailbox=``, ``quota_storage=``, ``quota_messages=``; see
core.dovecot_row).  Trailing fields may be missing; empty fields take
the defaults.  ``user`` is ``local@domain`` or ``local`` (any domain);
matching ignores case, the first line of a user wins.  ``$domain`` in
PATH picks one file per domain; a domain that is not a plain name (``/``,
a leading dot) is unknown, and so is a domain whose file does not exist
(while the directory before ``$domain`` does: without it, TempFail).

Contract: ``lookup(cfg, path_template, name)`` -> row dict or None;
TempFail 4.3.0 when the file cannot be read or a line is malformed.

PERFORMANCE: a one-shot delivery must not parse a 100,000-line file.  A
compiled index lives next to the config cache, ``$PYMDA_CACHE_DIR``
(default /var/cache/pymda)/``<path with / as %>.pwindex``: a header with
the passwd-file's identity (device, inode, size, mtime, ctime) and an
open-addressing hash table of 8-byte line offsets (FNV-1a of the
lower-cased user).  A lookup reads the header, one or two buckets and the
line itself with pread(): a few system calls whatever the file's size.
An index whose identity does not match the file is ignored (the file is
read line by line instead, and a root process writes a new index).

SECURITY: as the config cache: only root writes the index (atomically,
rename), and it is used only if owned by root (or by the passwd-file's
owner) and not writable by group or others.  Offsets from the index only
ever select a line that is then parsed and compared: a forged index can
at worst hide a user.
"""

from pymda import fastos as os
from pymda.errors import TempFail

MAGIC = b"PYMDAPW1"
HEADER = 8 + 6 * 8  # magic, 5 stamp fields, bucket count


def lookup(cfg, path_template, name):
    from pymda.config import expand

    local, _, domain = name.partition("@")
    path = path_template
    per_domain = "$domain" in path or "${domain}" in path
    if per_domain:
        domain = domain.lower()
        if not domain or "/" in domain or domain.startswith(".") or "\0" in domain:
            return None
        path = expand(path, {"domain": domain})
    keys = [name.lower()]
    if domain:
        keys.append(local.lower())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        if per_domain and os.path.exists(path_template[:path_template.index("$")] or "/"):
            return None  # no file for this domain: not ours
        # a fixed path, or the directory of the per-domain files, missing:
        # a broken setup (an unmounted volume) must not bounce everyone
        raise TempFail(f"userdb passwd-file:{path}: no such file", "4.3.0") from None
    except OSError as exc:
        raise TempFail(f"userdb passwd-file:{path}: {exc.strerror}", "4.3.0") from None
    try:
        fields = _find(fd, path, keys)
    except OSError as exc:
        raise TempFail(f"userdb passwd-file:{path}: {exc.strerror}", "4.3.0") from None
    finally:
        os.close(fd)
    if fields is None:
        return None
    return _row(fields, path)


def _row(fields, path):
    from pymda.userdb.core import dovecot_row

    fields = fields + [""] * (8 - len(fields))
    extra = {}
    for item in fields[7].split():
        key, sep, value = item.partition("=")
        if sep:
            extra[key] = value
    row = dovecot_row(extra)
    for key, value in (("uid", fields[2]), ("gid", fields[3]), ("home", fields[5])):
        if value and key not in row:
            row[key] = value
    return row


def _stamp(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def index_path(path, environ=None):
    from pymda.config import DEFAULT_CACHE_DIR

    env = os.environ if environ is None else environ
    directory = env.get("PYMDA_CACHE_DIR") or DEFAULT_CACHE_DIR
    return os.path.join(directory, os.path.abspath(path).replace("%", "%25").replace("/", "%")
                        + ".pwindex")


def _hash(key):
    h = 0xCBF29CE484222325
    for byte in key:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _user_of(line):
    return line.split(b":", 1)[0].strip().lower()


def _find(fd, path, keys):
    st = os.fstat(fd)
    stamp = _stamp(st)
    bkeys = [k.encode("utf-8", "surrogateescape") for k in keys]
    found = _from_index(fd, path, st, stamp, bkeys)
    if found is not False:
        return found
    # No usable index: read the file (and, as root, write the index).
    data = _read_all(fd, st.st_size)
    table = {}
    pos = 0
    n = len(data)
    while pos < n:
        end = data.find(b"\n", pos)
        if end < 0:
            end = n
        line = data[pos:end]
        if line.strip() and not line.lstrip().startswith(b"#"):
            table.setdefault(_user_of(line), pos)
        pos = end + 1
    if os.geteuid() == 0:
        _write_index(path, stamp, table)
    for key in bkeys:
        if key in table:
            start = table[key]
            end = data.find(b"\n", start)
            return _fields(data[start: end if end >= 0 else n], path)
    return None


def _read_all(fd, size):
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, max(size - offset, 65536), offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _fields(line, path):
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise TempFail(f"userdb passwd-file:{path}: a line is not UTF-8", "4.3.0") from None
    return text.rstrip("\r").split(":", 7)


def _from_index(fd, path, st, stamp, bkeys):
    """The fields of the first key's line, None, or False (no usable index)."""
    try:
        ifd = os.open(index_path(path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        ist = os.fstat(ifd)
        if ist.st_uid not in (0, st.st_uid) or ist.st_mode & 0o022:
            return False
        header = os.pread(ifd, HEADER, 0)
        if len(header) != HEADER or header[:8] != MAGIC:
            return False
        numbers = [int.from_bytes(header[8 + 8 * i: 16 + 8 * i], "little") for i in range(6)]
        if tuple(numbers[:5]) != stamp:
            return False
        buckets = numbers[5]
        mask = buckets - 1
        if buckets <= 0 or buckets & mask or ist.st_size != HEADER + 8 * buckets:
            return False
        for key in bkeys:
            i = _hash(key) & mask
            for _ in range(buckets):
                cell = os.pread(ifd, 8, HEADER + 8 * i)
                offset = int.from_bytes(cell, "little")
                if not offset:
                    break
                line = _line_at(fd, offset - 1, st.st_size)
                if _user_of(line) == key:
                    return _fields(line, path)
                i = (i + 1) & mask
        return None
    except OSError:
        return False
    finally:
        os.close(ifd)


def _line_at(fd, offset, size):
    chunks = []
    while offset < size:
        chunk = os.pread(fd, 4096, offset)
        if not chunk:
            break
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_index(path, stamp, table):
    """Best effort, as root: a failure only costs the next lookup a read."""
    buckets = 16
    while buckets < 2 * len(table) + 1:
        buckets <<= 1
    mask = buckets - 1
    cells = bytearray(8 * buckets)
    for key, pos in table.items():
        i = _hash(key) & mask
        while cells[8 * i: 8 * i + 8] != b"\0" * 8:
            i = (i + 1) & mask
        cells[8 * i: 8 * i + 8] = (pos + 1).to_bytes(8, "little")
    header = MAGIC + b"".join(n.to_bytes(8, "little") for n in (*stamp, buckets))
    from pymda.config import write_cache_file

    write_cache_file(index_path(path), header + bytes(cells))
