"""The start-up bundle (pymda/bundle.py): bin/pymda reads pymda's modules
from one file, and anything wrong with that file - or a module edited
after it was made - falls back to the normal import system, never to a
failed delivery or to stale code.

Each test lays out a small environment the launcher recognises
(``ENV/bin/python3`` beside ``ENV/lib/pythonX.Y/site-packages/pymda``, a
copy of the working tree's package), runs the launcher with ``python3 -v``
(which names the loader of every import) and looks at what it printed.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import paths

TAG = sys.implementation.cache_tag
PYTHON = Path("/usr/bin/python3")
pytestmark = pytest.mark.skipif(
    not PYTHON.exists() or f"{sys.version_info[0]}.{sys.version_info[1]}"
    not in os.path.realpath(PYTHON), reason="needs /usr/bin/python3 of this Python version")


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "env"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python3").symlink_to(PYTHON)
    site = root / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site.mkdir(parents=True)
    shutil.copytree(paths.REPO / "pymda", site / "pymda",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(paths.REPO / "bin" / "pymda", root / "bin" / "pymda")
    build = subprocess.run([str(root / "bin" / "python3"), "-I", str(site / "pymda" / "bundle.py"),
                            str(site / "pymda")], capture_output=True, text=True, check=False)
    assert build.returncode == 0, build
    bundle = site / "pymda" / "__pycache__" / f"startup.{TAG}.bundle"
    assert build.stdout.strip() == str(bundle)
    return root, site, bundle


def _run(root, *args):
    proc = subprocess.run([str(root / "bin" / "python3"), "-v", "-I", "-S",
                           str(root / "bin" / "pymda"), *args],
                          capture_output=True, text=True, check=False, timeout=60, cwd="/")
    loaders = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import 'pymda"):
            name = line.split("'")[1]
            loaders[name] = "bundle" if "PymdaBundle" in line else "normal"
    return proc, loaders


def test_every_module_comes_from_the_bundle(env):
    root, site, bundle = env
    proc, loaders = _run(root, "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("pymda "), proc
    assert {"pymda", "pymda.cli", "pymda.errors"} <= set(loaders)
    assert set(loaders.values()) == {"bundle"}, loaders
    # control: without the bundle the same run imports them the normal way
    bundle.unlink()
    proc, loaders = _run(root, "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("pymda "), proc
    assert set(loaders.values()) == {"normal"}, loaders


def test_an_edited_module_is_imported_from_its_source(env):
    """A module whose source no longer has the bundle's size (or mtime)
    is not served from the bundle: its new code runs."""
    root, site, bundle = env
    init = site / "pymda" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9-edited+'))
    proc, loaders = _run(root, "--version")
    assert proc.returncode == 0, proc
    assert proc.stdout.startswith("pymda 9.9.9-edited+"), proc.stdout
    assert loaders["pymda"] == "normal"
    assert loaders["pymda.cli"] == "bundle"


def test_same_size_edit_is_seen_by_its_mtime(env):
    root, site, bundle = env
    init = site / "pymda" / "__init__.py"
    text = init.read_text()
    old = text.split('__version__ = "')[1].split('"')[0]
    new = "9" * len(old)
    init.write_text(text.replace(f'"{old}"', f'"{new}"'))
    st = init.stat()
    os.utime(init, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    proc, loaders = _run(root, "--version")
    assert proc.stdout.strip() == f"pymda {new}", proc
    assert loaders["pymda"] == "normal"


@pytest.mark.parametrize("damage", ["truncated", "empty", "other-python", "garbled-module"])
def test_a_damaged_bundle_falls_back(env, damage):
    root, site, bundle = env
    data = bundle.read_bytes()
    if damage == "truncated":
        bundle.write_bytes(data[:200])
    elif damage == "empty":
        bundle.write_bytes(b"")
    elif damage == "other-python":
        bundle.write_bytes(data[:4] + b"\x00\x00\r\n" + data[8:])
    else:  # the modules' code (after the loader) overwritten with zeros
        start = 12 + int.from_bytes(data[8:12], "little")
        bundle.write_bytes(data[:start] + bytes(len(data) - start))
    proc, loaders = _run(root, "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("pymda "), proc
    assert proc.stderr.count("Traceback") == 0
    assert set(loaders.values()) == {"normal"}, loaders


def test_a_delivery_through_the_bundle(env, tmp_path):
    root, site, bundle = env
    maildir = tmp_path / "Maildir"
    msg = b"From: a@example.org\nSubject: bundle\n\nbody\n"
    proc = subprocess.run([str(root / "bin" / "pymda"), "-d", _me(), "--mailbox", f"{maildir}/"],
                          input=msg, capture_output=True, check=False, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    assert proc.returncode == 0, proc
    files = list((maildir / "new").iterdir())
    assert len(files) == 1 and files[0].read_bytes().endswith(msg)


def _me():
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def test_what_every_delivery_needs_is_loaded_before_cli_runs(env):
    """The preload (PRELOAD in pymda/bundle.py): the launcher's last line,
    run_and_exit(), replaced by a report of what is loaded then and by
    whom.  Without the preload only cli and what it imports at its top
    would be there."""
    from pymda.bundle import PRELOAD

    root, site, bundle = env
    launcher = root / "bin" / "pymda"
    text = launcher.read_text()
    assert text.endswith("\nrun_and_exit()\n")
    launcher.write_text(text[:-len("run_and_exit()\n")] + (
        "for name, module in sorted(sys.modules.items()):\n"
        "    if name.split('.')[0] == 'pymda':\n"
        "        print(name, getattr(module.__loader__, '__name__', '?'))\n"
        "sys.stdout.flush()\n"
        "posix._exit(0)\n"))
    proc = subprocess.run([str(launcher)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc
    loaded = dict(line.split() for line in proc.stdout.splitlines())
    assert set(PRELOAD) <= set(loaded), (PRELOAD, loaded)
    assert {loaded[name] for name in PRELOAD} == {"PymdaBundle"}
    # control: with the bundle gone, only the launcher's own import is there
    bundle.unlink()
    proc = subprocess.run([str(launcher)], capture_output=True, text=True, timeout=60,
                          check=False)
    loaded = dict(line.split() for line in proc.stdout.splitlines())
    assert "pymda.cli" in loaded and "pymda.deliver" not in loaded, loaded


def test_the_launcher_runs_a_delivery_without_the_cyclic_collector(env):
    """bin/pymda turns the cyclic GC off before it loads anything: a
    one-shot delivery collects nothing worth its 2-4 passes over the code
    just loaded (docs/performance.md).  The launcher's last line is
    replaced by a report; the control is a copy without the gc line."""
    root, site, bundle = env
    launcher = root / "bin" / "pymda"
    text = launcher.read_text()
    assert text.endswith("\nrun_and_exit()\n")
    report = ("import gc\n"
              "print(gc.isenabled(), sum(s['collections'] for s in gc.get_stats()))\n"
              "sys.stdout.flush()\n"
              "posix._exit(0)\n")
    launcher.write_text(text[:-len("run_and_exit()\n")] + report)
    proc = subprocess.run([str(launcher)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc
    enabled, collections = proc.stdout.split()
    # the interpreter's own start-up may collect before the launcher runs;
    # after its gc line, nothing does (the preload allocates thousands)
    assert enabled == "False"
    before = int(collections)
    control = text.replace("\ngc.disable()\n", "\n")
    assert control != text
    launcher.write_text(control[:-len("run_and_exit()\n")] + report)
    proc = subprocess.run([str(launcher)], capture_output=True, text=True, timeout=60,
                          check=False)
    enabled, collections = proc.stdout.split()
    assert enabled == "True" and int(collections) > before, (before, proc.stdout)
