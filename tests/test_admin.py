"""pymda-admin's options (click's CliRunner, in-process) and its real process
for what only a process shows (exit status, shell completion)."""

import json
import os
import subprocess

import pytest
from click.testing import CliRunner

from pymda.admin import commands as admin
from support import paths
from support.run import EX_CONFIG, EX_NOUSER, EX_OK, EX_USAGE

UNKNOWN_USER = "5.1.1"


def invoke(*args, stdout_only=False):
    """Run the command group as main() would, returning (exit, output)
    (stdout and stderr, or stdout alone)."""
    runner = CliRunner()
    result = runner.invoke(admin.cli, list(args), standalone_mode=False,
                           catch_exceptions=True)
    code = result.return_value if isinstance(result.return_value, int) else result.exit_code
    return code, result.stdout if stdout_only else result.output


def admin_bin():
    return os.environ.get("PYMDA_ADMIN_BIN") or str(paths.prefix() / "bin" / "pymda-admin")


def run_admin(args, env=None, input_bytes=b""):
    full = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    full.update(env or {})
    proc = subprocess.run([admin_bin(), *args], input=input_bytes, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=full, check=False, timeout=60)
    return proc.returncode, proc.stdout.decode()


def test_help_lists_commands():
    code, out = invoke("--help")
    assert code == EX_OK
    for name in ("redeliver", "explain", "check-config"):
        assert name in out


def test_check_config_origins(tmp_path):
    cfg = tmp_path / "pymda.toml"
    cfg.write_text('mailbox = "Maildir/"\nquota_storage = "10M"\n'
                   '[users."alice"]\nquota_messages = 5\n')
    code, out = invoke("check-config", "-c", str(cfg), "-o", "lock_timeout=7")
    assert code == EX_OK, out
    lines = {line.split("=", 1)[0].strip(): line for line in out.splitlines() if "=" in line}
    # aligned on the longest key: any width
    assert lines["mailbox"].split("#")[0].split() == ["mailbox", "=", '"Maildir/"']
    assert lines["mailbox"].endswith(f"# file {cfg}")
    assert lines["quota_storage"].split("#")[0].split("=")[1].strip() == str(10 << 20)
    assert lines["lock_timeout"].endswith("# override")
    assert lines["forward"].endswith("# default")
    assert '[users."alice"]' in out and "quota_messages = 5" in out


@pytest.mark.parametrize("text,key", [
    ("mailbox = 3\n", "mailbox"),
    ("no_such_key = 1\n", "no_such_key"),
    ('[users."bob"]\nuid = 5\n', "users"),
])
def test_check_config_errors_name_file_and_key(tmp_path, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    code, out = run_admin(["check-config", "-c", str(cfg)])
    assert code == EX_CONFIG, out
    assert str(cfg) in out and key in out
    assert "Traceback" not in out


def test_check_config_toml_syntax_error(tmp_path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text("mailbox = \n")
    code, out = run_admin(["check-config", "-c", str(cfg)])
    assert code == EX_CONFIG and str(cfg) in out


def test_redeliver_needs_a_source():
    code, out = run_admin(["redeliver", "--mailbox", "/tmp/x/"])
    assert code == EX_USAGE, out
    assert "SOURCE" in out


def test_unknown_option_is_usage_error():
    code, out = run_admin(["redeliver", "--bogus", "x"])
    assert code == EX_USAGE and "Traceback" not in out


def test_redeliver_unknown_user(tmp_path):
    src = tmp_path / "m.eml"
    src.write_bytes(b"Subject: x\n\nbody\n")
    code, out = run_admin(["redeliver", "-d", "no-such-user-pymda", str(src)])
    assert code == EX_NOUSER, out
    assert UNKNOWN_USER in out


@pytest.mark.parametrize("command", ["user", "quota"])
def test_user_and_quota_take_o_and_say_errors_as_every_subcommand(tmp_path, command):
    """`-c`/`-o` as every subcommand that reads the configuration, and an
    error is one `pymda-admin: D.S.N text` line with its sysexits code."""
    me = "root" if os.geteuid() == 0 else os.environ.get("USER", "")
    cfg = tmp_path / "c.toml"
    cfg.write_text('mailbox = "Maildir/"\n')
    code, out = run_admin([command, "-c", str(cfg), "-o", "mailbox=Other/", me])
    assert code == EX_OK, out
    assert "/Other/ (maildir)" in out, out
    code, out = run_admin([command, "-c", str(cfg), "no-such-user-pymda"])
    assert (code, out) == (EX_NOUSER, "pymda-admin: 5.1.1 User unknown: no-such-user-pymda\n")
    code, out = run_admin([command, "-c", str(cfg), "-o", "lock_timeout=nan", me])
    assert code == 75 and out.startswith("pymda-admin: 4.3.5 ") and out.count("\n") == 1, out


def test_explain_matches_pymda_dry_run(tmp_path, pymda_bin):
    me = "root" if os.geteuid() == 0 else os.environ.get("USER", "")
    address = f"{me}+lists@example.org"
    cfg = tmp_path / "c.toml"
    cfg.write_text('mailbox = "Maildir/"\ndetail_folders = "create"\n')
    for extra in ([], ["--json"]):
        code, out = invoke("explain", address, "-c", str(cfg), *extra, stdout_only=True)
        assert code == EX_OK, out
        proc = subprocess.run([str(pymda_bin), "-n", *extra, "-a", address, "-d", me,
                               "-c", str(cfg)], input=b"Subject: x\n\n",
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        assert proc.returncode == EX_OK, proc.stdout
        assert out == proc.stdout.decode()
    plan = json.loads(out)["targets"]
    assert plan[0]["kind"] == "maildir" and plan[0]["folder"] == "lists"


def test_explain_names_the_user_source(tmp_path, make_user):
    """SPEC 4: explain says which user source answered (on stderr; stdout
    stays pymda -n's plan)."""
    alice = make_user()
    cfg = tmp_path / "c.toml"
    cfg.write_text('mailbox = "Maildir/"\npolicy_aliases = false\n'
                   f'[users."bob@example.org"]\nuid = {alice.uid}\ngid = {alice.gid}\n'
                   f'home = "{alice.home}"\n')
    os.chmod(tmp_path, 0o755)
    os.chmod(cfg, 0o644)
    for address, source in (("bob@example.org", "config"), (f"{alice.name}@example.org", "passwd")):
        proc = subprocess.run([admin_bin(), "explain", "-c", str(cfg), address],
                              capture_output=True, text=True, check=False,
                              env={"PATH": "/usr/bin:/bin", "PYMDA_CACHE_DIR": str(tmp_path / "c")})
        assert proc.returncode == EX_OK, proc
        assert f"from {source}" in proc.stderr, proc.stderr
        assert "maildir" in proc.stdout and "from " not in proc.stdout


def test_shell_completion_script_and_users():
    code, out = run_admin([], env={"_PYMDA_ADMIN_COMPLETE": "bash_source"})
    assert code == EX_OK
    assert "_pymda_admin_completion" in out and "complete " in out
    code, out = run_admin([], env={"_PYMDA_ADMIN_COMPLETE": "bash_complete",
                                   "COMP_WORDS": "pymda-admin che", "COMP_CWORD": "1"})
    assert "check-config" in out
    code, out = run_admin([], env={"_PYMDA_ADMIN_COMPLETE": "bash_complete",
                                   "COMP_WORDS": "pymda-admin redeliver -d ro", "COMP_CWORD": "3"})
    assert "root" in out


def test_python_dash_m_works():
    proc = subprocess.run([str(paths.prefix() / "bin" / "python3"), "-m", "pymda.admin",
                           "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False)
    assert proc.returncode == EX_OK and proc.stdout.startswith(b"pymda-admin ")


EX_IOERR = 74


def test_a_closed_stdout_is_one_line_and_74_not_1(tmp_path):
    """``pymda-admin ... | head -1``: click turns EPIPE into exit 1, which
    is not a sysexits code; the exit is EX_IOERR, with one line."""
    cfg = tmp_path / "pymda.toml"
    cfg.write_text('mailbox = "Maildir/"\n')
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write is EPIPE
    try:
        proc = subprocess.run([admin_bin(), "check-config", "-c", str(cfg)], stdout=write_end,
                              stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"},
                              timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == EX_IOERR, proc.stderr
    assert proc.stderr.decode().splitlines() == ["pymda-admin: 4.3.0 standard output closed"]
