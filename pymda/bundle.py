"""The start-up bundle: every module of the installed package in one file.

A one-shot delivery imports about 17 of pymda's modules (30 with a Sieve
script).  Through the normal import system each one costs a search of
``sys.path``, a ``stat`` of its source, an open and read of its ``.pyc``
and importlib's own Python code: about 0.5 ms of every delivery in all
(bench/bench_ab.py, docs/performance.md "Start-up bundle").  The bundle
holds the compiled code of every module of the package in one file,
``pymda/__pycache__/startup.<cache tag>.bundle`` (``startup.cpython-311.
bundle`` for Python 3.11), written when the package is built
(``setup.py``'s build step, so a plain ``pip install`` has it) and again
by ``scripts/install``.  The launcher ``bin/pymda`` reads its head with
one ``read``, and a finder placed first on ``sys.meta_path`` serves each
module with one ``stat`` (the source must still have the size, and where
known the mtime, it had when the bundle was made: an edited or replaced
module is imported the normal way) and one ``pread``.  The modules every
delivery needs (``PRELOAD``), and those a Sieve user's delivery needs
once it imports ``pymda.sieve`` (``AFTER``), are loaded in one go,
without the import system's per-module bookkeeping (another 0.25 ms and
0.15 ms); under ``python -X importtime`` or ``-v`` they are imported one
by one, so that those reports stay complete.  Anything wrong with the
bundle (missing, another Python, truncated) leaves the normal import
system to do the work.

File layout: ``b"PYMB"``, the interpreter's 4-byte bytecode magic, the
loader's length (4 bytes, little-endian), the loader (marshalled code,
with the index in it), then each module's marshalled code.  The index
maps a module name to ``(path relative to site-packages, is a package,
source size, source mtime in ns or 0, offset, length)``.  Only marshal is
used (never pickle); the file is as trusted as the ``.pyc`` files beside
it (same owner, same directory).

    python3 -I pymda/bundle.py PACKAGE_DIR [--no-mtime]
"""

import marshal
import os
import sys

MARK = b"PYMB"

# What every one-shot delivery imports, in the order it imports them
# (each after what it imports): loaded before cli runs, without the import
# system's own work per module (its locks, spec handling, attribute
# setting: ~30 % of an import from the bundle).  tests/test_bundle.py
# holds this list to what a plain delivery really imports.  A name that is
# no longer needed only costs its load; one missing here is imported the
# ordinary way, from the bundle.
PRELOAD = (
    "pymda", "pymda.fastos", "pymda.errors", "pymda.cli", "pymda.record", "pymda.config",
    "pymda.log", "pymda.message", "pymda.users", "pymda.recipient", "pymda.address",
    "pymda.resolve", "pymda.deliver", "pymda.durable",
)
# The same for what a delivery imports once it has imported the key: a
# user with a Sieve script (pymda.sieve is imported only then) needs all
# of these to run a compiled script (also held to a real delivery by
# test_cli).
AFTER = {
    "pymda.sieve": ("pymda.sieve.step", "pymda.sieve.mail", "pymda.sieve.cache",
                    "pymda.sieve.match", "pymda.sieve.result", "pymda.sieve.interp",
                    "pymda.sieve.run"),
}

# The loader: run by the launcher, in its own globals, which hold fd (the
# bundle, open), head (its first bytes) and site (the directory holding
# pymda/).  INDEX, PRELOAD, AFTER and OPTIMIZE are filled in when the
# bundle is made.
LOADER = '''
from _imp import _fix_co_filename
from marshal import loads
from posix import pread, stat


class PymdaBundle:
    """pymda's modules from the install's start-up bundle (pymda/bundle.py)."""

    index = INDEX
    after = AFTER
    base = 12 + int.from_bytes(head[8:12], "little")
    codes = {}
    fd = fd
    site = site

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        entry = cls.index.get(name)
        if entry is None:
            return None
        rel, is_package, size, mtime, offset, length = entry
        origin = cls.site + "/" + rel
        try:
            st = stat(origin)
            if st.st_size != size or (mtime and st.st_mtime_ns != mtime):
                return None
            code = loads(pread(cls.fd, length, cls.base + offset))
            _fix_co_filename(code, origin)
        except Exception:
            return None
        cls.codes[name] = code
        spec = sys.modules["_frozen_importlib"].ModuleSpec(name, cls, origin=origin,
                                                           is_package=is_package)
        spec.has_location = True
        if is_package:
            spec.submodule_search_locations = [origin.rpartition("/")[0]]
        return spec

    @staticmethod
    def create_module(spec):
        return None

    @classmethod
    def exec_module(cls, module):
        name = module.__spec__.name
        exec(cls.codes.pop(name), module.__dict__)
        if name in cls.after and cls.preloading:
            preload(cls.after[name])

    preloading = False


def preload(names):
    """Load ``names`` in order as the import system would, minus its
    bookkeeping; stop at the first that cannot be (the finder or the
    ordinary import then does it, and reports what is wrong)."""
    modules = sys.modules
    for name in names:
        if name in modules:
            continue
        spec = PymdaBundle.find_spec(name)
        if spec is None:
            return
        module = type(sys)(name)
        module.__spec__ = spec
        module.__loader__ = PymdaBundle
        module.__file__ = spec.origin
        parent, _, child = name.rpartition(".")
        if spec.submodule_search_locations is None:
            module.__package__ = parent
        else:
            module.__package__ = name
            module.__path__ = spec.submodule_search_locations
        modules[name] = module
        try:
            exec(PymdaBundle.codes.pop(name), module.__dict__)
        except Exception:
            del modules[name]
            return
        if parent:
            setattr(modules[parent], child, module)


if sys.flags.optimize == OPTIMIZE:
    sys.meta_path.insert(0, PymdaBundle)
    # -X importtime and -v report only what the import system loads:
    # under them every module goes through it, so that all show
    if not (sys.flags.verbose or "importtime" in sys._xoptions):
        PymdaBundle.preloading = True
        preload(PRELOAD)
'''


def bundle_path(package_dir):
    return os.path.join(package_dir, "__pycache__",
                        f"startup.{sys.implementation.cache_tag}.bundle")


def _modules(package_dir, package="pymda"):
    """(module name, path under site-packages, is a package, file) of every
    .py file under ``package_dir`` (whatever that directory is called:
    scripts/install's quick install bundles a copy before it becomes
    site-packages/pymda), sorted."""
    found = []
    for directory, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__"
                         and os.path.isfile(os.path.join(directory, d, "__init__.py")))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = [package, *os.path.relpath(path, package_dir)[:-3].split(os.sep)]
            rel = "/".join(parts) + ".py"
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found.append((".".join(parts), rel, is_package, path))
    return found


def build(package_dir, mtimes=True):
    """Write the bundle of ``package_dir`` (e.g. site-packages/pymda) into
    its ``__pycache__``; returns its path.  ``mtimes=False`` (a wheel being
    built: the installed files get new mtimes) checks sizes only."""
    from importlib.util import MAGIC_NUMBER

    index = {}
    blobs = []
    offset = 0
    for name, rel, is_package, path in _modules(package_dir):
        with open(path, "rb") as f:
            source = f.read()
            st = os.fstat(f.fileno())
        blob = marshal.dumps(compile(source, path, "exec", dont_inherit=True))
        index[name] = (rel, is_package, st.st_size, st.st_mtime_ns if mtimes else 0,
                       offset, len(blob))
        blobs.append(blob)
        offset += len(blob)
    source = (LOADER.replace("INDEX", repr(index)).replace("PRELOAD", repr(PRELOAD), 1)
              .replace("AFTER", repr(AFTER), 1).replace("OPTIMIZE", str(sys.flags.optimize)))
    loader = marshal.dumps(compile(source, "<pymda bundle loader>", "exec", dont_inherit=True))
    out = bundle_path(package_dir)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(MARK + MAGIC_NUMBER + len(loader).to_bytes(4, "little") + loader)
        for blob in blobs:
            f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    return out


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python3 -I pymda/bundle.py",
                                 description="write pymda's start-up bundle")
    ap.add_argument("package_dir", help="the pymda package directory to bundle")
    ap.add_argument("--no-mtime", action="store_true",
                    help="check only sizes (a build whose files get new mtimes on install)")
    opts = ap.parse_args(argv)
    print(build(opts.package_dir, mtimes=not opts.no_mtime))
    return 0


if __name__ == "__main__":
    sys.exit(main())
