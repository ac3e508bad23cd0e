"""contrib/pymda.toml documents every config key with its real default,
and the sample config and postfix snippet stay usable."""

import tomllib
from pathlib import Path

from pymda import config

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


def _commented_settings():
    """The top-level `#key = value` lines of the sample, uncommented."""
    lines = []
    for line in (CONTRIB / "pymda.toml").read_text().splitlines():
        if line.startswith("#[") :
            break  # per-user examples follow
        if line.startswith("#") and " = " in line and not line.startswith("# "):
            lines.append(line[1:].split("  #")[0])
    return tomllib.loads("\n".join(lines))


def test_sample_config_lists_every_key_with_its_default():
    table = _commented_settings()
    assert set(table) == set(config.KEYS), set(config.KEYS) ^ set(table)
    cfg = config.load(None, environ={})
    for key, value in table.items():
        loaded = config.KEYS[key][1](value)
        assert loaded == getattr(cfg, key), key


def test_sample_config_as_shipped_is_valid(tmp_path):
    cfg = config.load(str(CONTRIB / "pymda.toml"), environ={"PYMDA_CACHE_DIR": str(tmp_path)},
                      write_cache=False)
    assert cfg.origins["mailbox"] == "default"


def test_per_user_examples_are_valid(tmp_path):
    text = (CONTRIB / "pymda.toml").read_text()
    users = text[text.index("#[users."):]
    uncommented = "\n".join(l[1:] for l in users.splitlines() if l.startswith("#"))
    path = tmp_path / "users.toml"
    path.write_text(uncommented)
    cfg = config.load(str(path), environ={"PYMDA_CACHE_DIR": str(tmp_path)}, write_cache=False)
    assert cfg.user("alice")["quota_storage"] == 5 << 30
    assert cfg.user("bob@example.org")["uid"] == 5000


def test_postfix_snippet_runs_pymda_with_the_sender():
    text = (CONTRIB / "postfix-main.cf").read_text()
    assert 'mailbox_command = /usr/local/bin/pymda -f "$SENDER"' in text
