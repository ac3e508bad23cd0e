"""Shared fixtures.  Helpers live in tests/support/ (see its __init__).

Session:
- the working tree is reinstalled into the prefix once per session
  (``scripts/install --quick``) unless PYMDA_NO_REINSTALL=1 (scripts/test
  sets it: it has just installed);
- ``pymda_bin`` (Path of the installed launcher), ``corpus_dir``,
  ``corpus_messages`` (list of Paths, SOURCES.tsv excluded).

Per test:
- ``make_user`` (root only, else skip): ``make_user()`` creates a fresh
  system user ``pt<random>`` (TestUser: name uid gid home ...), deleted with
  its home and /var/mail file after the test;  ``test_user``: one such user.
- ``run_pymda``: the helper function (support.run.run_pymda).

Module scope:
- ``postfix`` (root only; skips when postfix is not installed): a running
  postfix (support.postfix.Postfix), reset to the test defaults before each
  test that uses it, stopped after the module.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import paths  # noqa: E402
from support import postfix as postfix_mod  # noqa: E402
from support.run import run_pymda as _run_pymda  # noqa: E402
from support.users import create_user, delete_user  # noqa: E402

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="session", autouse=True)
def pymda_installed():
    """Install the working tree once per session; return the prefix."""
    prefix = paths.prefix()
    if os.environ.get("PYMDA_NO_REINSTALL") != "1":
        proc = subprocess.run(
            [str(paths.REPO / "scripts" / "install"), "--quick", "--for-tests", str(prefix)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
        )
        if proc.returncode != 0:
            pytest.exit(f"scripts/install --quick failed:\n{proc.stdout.decode(errors='replace')}",
                        returncode=3)
    return prefix


@pytest.fixture(scope="session")
def pymda_bin(pymda_installed):
    path = paths.pymda_bin()
    if not os.access(path, os.X_OK):
        pytest.fail(f"pymda is not installed at {path} (run scripts/install)")
    return path


@pytest.fixture(scope="session")
def corpus_dir():
    d = paths.corpus_dir()
    if not d.is_dir():
        pytest.fail(f"corpus not found at {d} (set PYMDA_CORPUS)")
    return d


@pytest.fixture(scope="session")
def corpus_messages(corpus_dir):
    msgs = paths.corpus_messages()
    assert msgs, f"no messages in {corpus_dir}"
    return msgs


@pytest.fixture
def run_pymda(pymda_bin):
    return _run_pymda


@pytest.fixture
def make_user():
    if os.geteuid() != 0:
        pytest.skip("creating users needs root")
    made = []

    def make():
        user = create_user()
        made.append(user)
        return user

    yield make
    for user in made:
        delete_user(user)


@pytest.fixture
def test_user(make_user):
    return make_user()


@pytest.fixture(scope="module")
def postfix_server(pymda_installed):
    if os.geteuid() != 0:
        pytest.skip("postfix tests need root")
    if not postfix_mod.installed():
        pytest.skip("postfix is not installed (scripts/setup-system)")
    server = postfix_mod.Postfix()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postfix(postfix_server):
    """The module's postfix, reset to the test defaults, queue emptied, log marked."""
    postfix_server.clear_queue()
    postfix_server.reset()
    postfix_server.write_aliases({})
    postfix_server.mark_log()
    yield postfix_server
    postfix_server.clear_queue()
