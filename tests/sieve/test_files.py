"""pymda.sieve.step's files: which script runs (trust rules) and the user's log."""

import os
from pathlib import Path

from pymda.sieve.step import MAX_LOG, find_script, log_errors

ME = os.geteuid()


def test_missing_or_dangling_is_no_filtering(tmp_path):
    assert find_script(str(tmp_path / "none"), (ME, 0)) == (None, None)
    link = tmp_path / ".dovecot.sieve"
    link.symlink_to(tmp_path / "sieve" / "gone.sieve")
    assert find_script(str(link), (ME, 0)) == (None, None)


def test_symlink_into_sieve_dir_is_followed(tmp_path):
    (tmp_path / "sieve").mkdir()
    target = tmp_path / "sieve" / "roundcube.sieve"
    target.write_text("keep;")
    link = tmp_path / ".dovecot.sieve"
    link.symlink_to("sieve/roundcube.sieve")
    assert find_script(str(link), (ME, 0)) == (str(link), None)


def test_untrusted_scripts_are_ignored_with_a_warning(tmp_path):
    script = tmp_path / "s.sieve"
    script.write_text("keep;")
    script.chmod(0o646)
    path, warning = find_script(str(script), (ME, 0))
    assert path is None and "world-writable" in warning
    script.chmod(0o644)
    path, warning = find_script(str(script), (ME + 12345,))
    assert path is None and "owned by uid" in warning
    path, warning = find_script(str(tmp_path), (ME, 0))
    assert path is None and "not a regular file" in warning


def test_log_appends_and_rotates(tmp_path):
    log = str(tmp_path / ".dovecot.sieve.log")
    assert log_errors(log, ["s.sieve:3: unknown command 'frob'"], 0) is None
    assert log_errors(log, ["s.sieve:4: x\ny"], 86400 + 3661) is None
    text = Path(log).read_text()
    assert text == ("1970-01-01 00:00:00 s.sieve:3: unknown command 'frob'\n"
                    "1970-01-02 01:01:01 s.sieve:4: x y\n")
    assert os.stat(log).st_mode & 0o777 == 0o600
    for i in range(400):
        assert log_errors(log, ["s.sieve:%d: some error text" % i], 0) is None
    assert os.path.getsize(log) <= MAX_LOG
    assert os.path.getsize(log + ".0") <= MAX_LOG
    assert "s.sieve:399:" in Path(log).read_text()


def test_log_refuses_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    log = tmp_path / "log"
    log.symlink_to(victim)
    reason = log_errors(str(log), ["x:1: y"], 0)
    assert reason is not None and victim.read_text() == "precious\n"
