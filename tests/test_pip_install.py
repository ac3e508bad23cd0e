"""A plain ``pip install`` (and ``pipx install``) gives a fast ``pymda``.

pip's console-script wrapper imports ``re`` and runs under site
processing (every ``.pth`` file), several ms on every delivery.  The
project installs ``bin/pymda`` instead (pyproject ``script-files``): a
shell/Python launcher that runs the environment's own python3 with
``-I -S``.  These tests install the working tree into a fresh venv the way
a user would, then deliver through the installed command and check that
no ``.pth`` file ran and nothing heavy was imported.
"""

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import paths

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import HEAVY  # noqa: E402

MESSAGE = b"From: a@example.org\nSubject: pip\nMessage-ID: <pip@example.org>\n\nbody\n"


def _stage(tmp):
    """A copy of the project to install from (pip builds in the source tree)."""
    return paths.stage_source(tmp / "src")


REGISTRY_ENVIRONMENT = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "http_proxy",
                        "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


def _pip_install(venv, src):
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    # --no-deps: the one-shot command needs none of click/filelock/magic
    # (the build itself fetches setuptools from the package index, as a
    # user's pip install does).
    subprocess.run([str(venv / "bin" / "python3"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", "--no-deps",
                    str(src)], check=True, stdout=subprocess.DEVNULL)


def _site(venv):
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def _plant_pth(venv, marker):
    (_site(venv) / "zz-pymda-test.pth").write_text(
        f"import os; os.close(os.open({str(marker)!r}, os.O_CREAT | os.O_WRONLY, 0o600))\n")
    # control: an ordinary start of this python runs it (the check can fail)
    subprocess.run([str(venv / "bin" / "python3"), "-c", "pass"], check=True)
    assert marker.exists()
    marker.unlink()


ME = ["-d", pwd.getpwuid(os.getuid()).pw_name]


def _deliver(command, maildir):
    return subprocess.run([str(command), *ME, "--mailbox", f"{maildir}/"],
                          input=MESSAGE, capture_output=True, check=False, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C"})


def _delivered(maildir):
    new = Path(maildir) / "new"
    files = list(new.iterdir()) if new.is_dir() else []
    assert len(files) == 1, files
    data = files[0].read_bytes()
    assert data.endswith(MESSAGE), data
    return data


@pytest.fixture(scope="module")
def pip_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pip")
    venv = tmp / "venv"
    _pip_install(venv, _stage(tmp))
    return venv


def test_pip_installs_the_launcher_not_a_console_script(pip_venv):
    launcher = pip_venv / "bin" / "pymda"
    head = launcher.read_bytes().split(b"\n", 1)[0]
    assert head == b"#!/bin/sh"
    assert os.access(launcher, os.X_OK)
    # the shell part runs the venv's python isolated and without site
    trace = subprocess.run(["/bin/sh", "-x", str(launcher), "--version"],
                           capture_output=True, check=False, timeout=30)
    assert trace.returncode == 0, trace
    assert f"exec {pip_venv}/bin/python3 -I -S {launcher} --version".encode() in trace.stderr
    assert trace.stdout.startswith(b"pymda ")


def test_pip_installed_pymda_delivers_without_pth_or_heavy_imports(pip_venv, tmp_path):
    marker = tmp_path / "pth-ran"
    _plant_pth(pip_venv, marker)
    maildir = tmp_path / "Maildir"
    proc = _deliver(pip_venv / "bin" / "pymda", maildir)
    assert proc.returncode == 0, proc
    assert proc.stdout == b"" and proc.stderr == b""
    _delivered(maildir)
    assert not marker.exists(), "a .pth file ran on a delivery"
    # the command the shell part execs, with -X importtime
    maildir2 = tmp_path / "Maildir2"
    proc = subprocess.run(
        [str(pip_venv / "bin" / "python3"), "-X", "importtime", "-I", "-S",
         str(pip_venv / "bin" / "pymda"), *ME, "--mailbox", f"{maildir2}/"],
        input=MESSAGE, capture_output=True, check=False, timeout=60)
    assert proc.returncode == 0, proc
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines()
             if line.startswith("import time:") and "|" in line}
    assert "pymda.cli" in names and "pymda.maildir" in names
    assert sorted(n for n in names if n.split(".")[0] in HEAVY) == []
    _delivered(maildir2)


def test_pip_installed_pymda_imports_from_the_start_up_bundle(pip_venv, tmp_path):
    """The wheel carries pymda/__pycache__/startup.<tag>.bundle (setup.py's
    build step): a delivery reads every pymda module from it, no .pyc."""
    bundle = _site(pip_venv) / "pymda" / "__pycache__" / f"startup.{sys.implementation.cache_tag}.bundle"
    assert bundle.is_file()
    maildir = tmp_path / "Maildir"
    proc = subprocess.run(
        [str(pip_venv / "bin" / "python3"), "-v", "-I", "-S",
         str(pip_venv / "bin" / "pymda"), *ME, "--mailbox", f"{maildir}/"],
        input=MESSAGE, capture_output=True, check=False, timeout=60)
    assert proc.returncode == 0, proc
    _delivered(maildir)
    loaders = [line for line in proc.stderr.decode().splitlines()
               if line.startswith("import 'pymda")]
    assert len(loaders) >= 10, proc.stderr.decode()[-3000:]
    assert all("PymdaBundle" in line for line in loaders), loaders
    assert "pymda/__pycache__/cli." not in proc.stderr.decode()


def test_through_a_symlink_elsewhere(pip_venv, tmp_path):
    """pipx and admins link the command into another bin directory."""
    link = tmp_path / "bin" / "pymda"
    link.parent.mkdir()
    link.symlink_to(pip_venv / "bin" / "pymda")
    maildir = tmp_path / "Maildir"
    proc = _deliver(link, maildir)
    assert proc.returncode == 0, proc
    _delivered(maildir)


@pytest.mark.skipif(shutil.which("pipx") is None, reason="pipx is not installed (scripts/setup-system)")
def test_pipx_install(tmp_path):
    src = _stage(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin")}
    # how this machine reaches the package registry (a mirror, a proxy and
    # its CA), as the plain pip test inherits it
    env.update((k, v) for k, v in os.environ.items()
               if k.startswith("PIP_") or k in REGISTRY_ENVIRONMENT)
    # (pipx 1.1 needs the dependencies' metadata: no --no-deps here)
    proc = subprocess.run(["pipx", "install", str(src)],
                          env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    command = tmp_path / "bin" / "pymda"
    assert command.exists()
    venv = tmp_path / "pipx" / "venvs" / "pymda"
    marker = tmp_path / "pth-ran"
    _plant_pth(venv, marker)
    maildir = tmp_path / "Maildir"
    proc = _deliver(command, maildir)
    assert proc.returncode == 0, proc
    _delivered(maildir)
    assert not marker.exists(), "a .pth file ran on a delivery"


def test_a_broken_install_defers_and_never_bounces(tmp_path):
    """The launcher itself follows the exit contract: no pymda package
    beside the interpreter, or no interpreter at all, is 4.3.0 / exit 75
    (postfix bounces any other status) - never a traceback."""
    launcher = paths.REPO / "bin" / "pymda"
    broken = tmp_path / "broken" / "bin"
    broken.mkdir(parents=True)
    (broken / "python3").symlink_to("/usr/bin/python3")  # no pymda next to it
    shutil.copy2(launcher, broken / "pymda")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy2(launcher, lonely / "pymda")  # no python3 at all
    for command, text in ((broken / "pymda", b"4.3.0 pymda cannot start: ModuleNotFoundError"),
                          (lonely / "pymda", b"4.3.0 pymda: no python3 beside")):
        proc = subprocess.run([str(command), *ME], input=MESSAGE, capture_output=True,
                              check=False, timeout=60, env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 75, proc
        assert proc.stdout == b"" and proc.stderr.startswith(text), proc.stderr
        assert proc.stderr.count(b"\n") == 1, proc.stderr
