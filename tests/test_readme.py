"""The README stays short and complete for admins: every config key is in
its table, every document it links exists, and its quick start and test
command are the ones the project runs."""

import re
from pathlib import Path

from pymda import config
from support import paths

README = paths.REPO / "README.md"


def _text():
    return README.read_text()


def test_readme_is_short():
    assert len(_text().splitlines()) <= 300


def test_every_config_key_is_in_the_readme_table():
    text = _text()
    table = text[text.index("| key | default | meaning |"):]
    table = table[:table.index("\n\n")]
    named = set(re.findall(r"`([a-z_]+)`", "\n".join(
        row.split("|")[1] for row in table.splitlines()[2:])))
    assert named == set(config.KEYS), named ^ set(config.KEYS)


def test_linked_documents_exist():
    for target in re.findall(r"\]\(([^)#]+)\)", _text()):
        if "://" in target:
            continue
        assert (paths.REPO / target).exists(), target


def test_quick_start_and_test_command_are_the_real_scripts():
    text = _text()
    assert "## Quick start" in text and "    ./scripts/quickstart\n" in text
    assert "    ./scripts/test\n" in text
    ci = (paths.REPO / ".ci" / "run").read_text()
    assert "scripts/test" in ci
    assert Path(paths.REPO / "scripts" / "quickstart").stat().st_mode & 0o111
