"""The manual pages are generated from the option tables and the sample
config (pymda/manpage.py), installed by scripts/install, and name every
option and every config key."""

import shutil
import subprocess
from pathlib import Path

import click
import pytest

from pymda import cli, config, manpage
from support import paths

CONTRIB = paths.REPO / "contrib" / "pymda.toml"
PROGRAMS = ("pymda-lmtpd", "pymda-policyd", "pymda-admin")


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = tmp_path_factory.mktemp("man")
    written = manpage.write_all_pages(out, CONTRIB)
    return {p.name: p.read_text() for p in written}


def _unescape(text):
    return text.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")


def test_every_pymda_option_is_in_pymda_8(pages):
    text = _unescape(pages["pymda.8"])
    for short, long, dest, takes, help_text in cli.OPTIONS:
        assert f"--{long}" in text, long
        if short:
            assert f"-{short}," in text, short
    assert "--no-forward" in text
    for _outcome, code, status in manpage.EXIT_STATUS:
        assert f".B {code}" in text and status in text


def _all_options(command):
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            yield from param.opts
            yield from param.secondary_opts
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            if not sub.hidden:
                yield from _all_options(sub)


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_click_option_and_command_is_in_the_page(pages, program):
    text = _unescape(pages[f"{program}.8"])
    command = manpage._click_command(program)
    for opt in _all_options(command):
        assert opt in text, (program, opt)
    if isinstance(command, click.Group):
        for name in command.commands:
            assert f"{program} {name}" in text, name


def test_every_config_key_is_in_pymda_toml_5(pages):
    text = _unescape(pages["pymda.toml.5"])
    keys = [key for key, _default, _desc in manpage.parse_sample(CONTRIB.read_text())]
    assert set(keys) == set(config.KEYS), set(keys) ^ set(config.KEYS)
    for key in config.KEYS:
        assert f".B {key} = " in text, key


def test_program_table_is_pyproject_scripts():
    import tomllib

    scripts = tomllib.loads((paths.REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {name: value.split(":")[0] for name, value in scripts.items()} == \
        manpage.PROGRAM_MODULES


def test_parse_sample_takes_the_comment_block_above_a_key():
    sample = ("# About a.\n#a = 1\n#b = 2\n\n# About c,\n# two lines.\n#c = \"x\"  # note\n"
              "#[users.\"x\"]\n#d = 1\n")
    assert manpage.parse_sample(sample) == [
        ("a", "1", "About a."), ("b", "2", "About a."), ("c", '"x"', "About c, two lines.")]


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_pages_render_without_groff_warnings(pages, tmp_path):
    for name, text in pages.items():
        page = tmp_path / name
        page.write_text(text)
        proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and proc.stderr == "", (name, proc.stderr)


def test_scripts_install_installed_the_pages():
    prefix = paths.prefix()
    for name in ("man8/pymda.8", "man8/pymda-lmtpd.8", "man8/pymda-policyd.8",
                 "man8/pymda-admin.8", "man5/pymda.toml.5"):
        page = Path(prefix) / "share" / "man" / name
        assert page.is_file(), page
        assert page.read_text().startswith(".TH "), page
