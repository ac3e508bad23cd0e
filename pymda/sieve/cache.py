"""Compiled-script cache: a data-only marshal of the compiled tuples.

Contract:
- ``load(script_path, cache_dir=None, extensions=None)`` -> ``(compiled,
  hit)``: the compiled form of the script, from a valid cache file when
  there is one (``hit`` True), else compiled now (the lexer, parser and
  validator are imported only then) and written to ``cache_dir`` when
  given (best effort: a cache that cannot be written is not an error).
  Raises ``SieveCompileError`` for a script that does not compile and
  ``OSError`` when the script cannot be read.
- ``compile_to_sidecar(script_path, extensions=None)`` -> the path written
  (``pymda-admin sieve compile``, for admin scripts users cannot write).
- ``dumps(compiled, key)`` / ``loads(data, key)``: the file format.

WHERE: a personal script's cache is ``$home/.cache/pymda/sieve/
<script path>.bin``, the path with ``%`` as ``%25`` and ``/`` as ``%``
(``cache_dir`` is given by the caller): one file per script path,
overwritten when the script changes, also when it is replaced by a new
file (ManageSieve and editors save by rename), so stale entries do not
pile up; the key inside says which file it was compiled from.  Files of
the older ``<dev>-<ino>.bin`` naming are removed at the next miss.  An
admin script's compiled form lives next to it as ``SCRIPT.pymda-bin``
(the sidecar, written by ``pymda-admin sieve compile``), never a
``.svbin`` (dovecot's format: it would recompile over
it).  The sidecar is read first, then the cache dir.

FORMAT: ``marshal.dumps((MAGIC, FORMAT, pymda version, extensions, key,
compiled))`` where key is the script's ``(st_dev, st_ino, st_size,
st_mtime_ns)``.  Anything else — a foreign or truncated file, another
pymda version, another extension set, another key — is a miss.

DURABILITY: written to a temporary file in the same directory (O_EXCL,
0600) and renamed over the old one (durable.write_atomically); the
personal cache is not fsynced (a file torn by a crash is a miss), an
admin's sidecar is; the directory is created 0700.

SECURITY: never pickle; marshal of plain data creates no code objects we
run.  The cache belongs to the user who runs the script; a user who edits
it gains nothing (every limit is enforced by the interpreter at run time,
and malformed structures are a runtime error -> implicit keep).
"""

import marshal

from pymda import __version__
from pymda import fastos as os
from pymda.durable import write_atomically

MAGIC = "pymda-sieve"
FORMAT = 2      # bump whenever the shape of the compiled tuples changes
SIDECAR_SUFFIX = ".pymda-bin"


def script_key(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _extensions_id(extensions):
    if extensions is None:
        return "default"
    return " ".join(sorted(extensions))


def dumps(compiled, key=(), extensions=None):
    return marshal.dumps((MAGIC, FORMAT, __version__,
                          _extensions_id(extensions), tuple(key), compiled))


def loads(data, key=None, extensions=None):
    """The compiled form in ``data``, or None when it is not a valid
    cache for ``key`` (None: any key) and ``extensions``."""
    try:
        obj = marshal.loads(data)
    except Exception:       # bad marshal data of any kind is a miss
        return None
    if (type(obj) is not tuple or len(obj) != 6 or obj[0] != MAGIC
            or obj[1] != FORMAT or obj[2] != __version__
            or obj[3] != _extensions_id(extensions)):
        return None
    if key is not None and obj[4] != tuple(key):
        return None
    compiled = obj[5]
    if (type(compiled) is not tuple or len(compiled) != 2
            or type(compiled[0]) is not tuple or type(compiled[1]) is not tuple):
        return None
    return compiled


def cache_path(cache_dir, script_path):
    """The cache file of ``script_path`` (config.py's naming of its own
    cache: the absolute path, ``%`` -> ``%25``, ``/`` -> ``%``)."""
    name = os.path.abspath(script_path).replace("%", "%25").replace("/", "%")
    return "%s/%s.bin" % (cache_dir, name)


def _remove_old_entries(cache_dir):
    """Remove ``<dev>-<ino>.bin`` files (the naming before one file per
    path; nothing reads them any more)."""
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return
    for name in names:
        if not name.startswith("%") and name.endswith(".bin") and "-" in name:
            try:
                os.unlink("%s/%s" % (cache_dir, name))
            except OSError:
                pass


def _read(path, limit=16 << 20):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_script(script_path):
    fd = os.open(script_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return st, b"".join(chunks)


def compile_bytes(data, filename, extensions=None):
    """Compile script bytes (imports the compiler).  Invalid UTF-8 is a
    compile error (RFC 5228 2.2: scripts are UTF-8)."""
    from pymda.sieve.result import SieveCompileError
    from pymda.sieve.validate import compile_script

    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]         # a BOM some editors write: not script text
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise SieveCompileError("script is not valid UTF-8", filename, line) from None
    return compile_script(text, filename, extensions)


def load(script_path, cache_dir=None, extensions=None, max_size=None,
         force=False):
    """See the module docstring; ``force``: ignore (and rewrite) caches."""
    st = os.stat(script_path)
    key = script_key(st)
    for path in (script_path + SIDECAR_SUFFIX,
                 cache_path(cache_dir, script_path) if cache_dir else None):
        if path is None or force:
            continue
        data = _read(path)
        if data is not None:
            compiled = loads(data, key, extensions)
            if compiled is not None:
                return compiled, True
    st, data = _read_script(script_path)
    if max_size is not None and len(data) > max_size:
        from pymda.sieve.result import SieveCompileError

        raise SieveCompileError("script too large (%d > %d octets)"
                                % (len(data), max_size), script_path, 0)
    compiled = compile_bytes(data, script_path, extensions)
    if cache_dir:
        try:
            os.makedirs(cache_dir, 0o700, exist_ok=True)
            # a cache: no fsync (a torn file after a crash is a miss: loads)
            write_atomically(cache_path(cache_dir, script_path),
                             dumps(compiled, script_key(st), extensions), sync=False)
        except OSError:
            pass        # a cache we cannot write only costs time
        _remove_old_entries(cache_dir)
    return compiled, False


def compile_to_sidecar(script_path, extensions=None):
    st, data = _read_script(script_path)
    compiled = compile_bytes(data, script_path, extensions)
    path = script_path + SIDECAR_SUFFIX
    write_atomically(path, dumps(compiled, script_key(st), extensions), 0o644)
    return path
