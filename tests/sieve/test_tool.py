"""``pymda-admin sieve check/test/compile``: the installed program."""

import subprocess

from support import paths

EX_OK = 0
EX_DATAERR = 65

MESSAGE = (b"From: Alice <alice@example.com>\n"
           b"To: bob+lists@example.net\n"
           b"Subject: hello\n"
           b"X-Spam-Score: 12\n"
           b"\n"
           b"Hi.\n")
SCRIPT = '''require ["fileinto", "relational", "comparator-i;ascii-numeric", "envelope", "subaddress", "imap4flags", "copy"];
# rule:[spam]
if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5" {
    addflag "\\\\Seen";
    fileinto "Junk";
}
if envelope :detail "to" "lists" { fileinto :copy "Lists"; }
'''


def admin(*args, stdin=None):
    exe = str(paths.prefix() / "bin" / "pymda-admin")
    return subprocess.run([exe, "sieve", *args], input=stdin, capture_output=True,
                          timeout=60)


def test_check_ok_and_errors(tmp_path):
    good = tmp_path / "good.sieve"
    good.write_text(SCRIPT)
    bad = tmp_path / "bad.sieve"
    bad.write_text('require "fileinto";\nkeep;\nfrob "x";\nfileinto :create "y";\n')
    proc = admin("check", str(good))
    assert proc.returncode == EX_OK and proc.stdout == b""
    proc = admin("check", str(good), str(bad))
    assert proc.returncode == EX_DATAERR
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "%s:3: unknown command 'frob'" % bad
    assert lines[1].startswith("%s:4: " % bad) and ":create" in lines[1]
    assert b"Traceback" not in proc.stderr


def test_check_missing_file_is_dataerr(tmp_path):
    proc = admin("check", str(tmp_path / "nope.sieve"))
    assert proc.returncode == EX_DATAERR and b"cannot read" in proc.stdout


def test_test_prints_the_actions(tmp_path):
    script = tmp_path / "s.sieve"
    script.write_text(SCRIPT)
    msg = tmp_path / "m.eml"
    msg.write_bytes(MESSAGE)
    proc = admin("test", "-a", "bob+lists@example.net", str(script), str(msg))
    assert proc.returncode == EX_OK, proc.stderr
    assert proc.stdout.decode().splitlines() == [
        "fileinto 'Junk' flags=\\Seen",
        "fileinto 'Lists' :copy flags=\\Seen",   # the internal flags (RFC 5232)
    ]
    proc = admin("test", "-a", "bob@example.net", "-m", "Work", str(script), "-",
                 stdin=MESSAGE.replace(b"12", b"1"))
    assert proc.stdout.decode().splitlines() == ["keep (implicit)"]


def test_test_runtime_error_falls_back_to_implicit_keep(tmp_path):
    script = tmp_path / "s.sieve"
    script.write_text('require "fileinto";\n' + ''.join(
        'fileinto "f%d";\n' % i for i in range(40)))
    msg = tmp_path / "m.eml"
    msg.write_bytes(MESSAGE)
    proc = admin("test", str(script), str(msg))
    assert proc.returncode == EX_DATAERR
    out = proc.stdout.decode().splitlines()
    assert out[0].startswith("error: %s:34: too many actions" % script)
    assert out[-1] == "keep (implicit)"


def test_compile_writes_sidecars(tmp_path):
    d = tmp_path / "global"
    d.mkdir()
    (d / "a.sieve").write_text(SCRIPT)
    (d / "b.sieve").write_text("frob;")
    (d / "notes.txt").write_text("not a script")
    proc = admin("compile", str(d))
    assert proc.returncode == EX_DATAERR
    assert (d / "a.sieve.pymda-bin").is_file()
    assert not (d / "b.sieve.pymda-bin").exists()
    assert not (d / "notes.txt.pymda-bin").exists()
    assert ("%s:1: unknown command 'frob'" % (d / "b.sieve")).encode() in proc.stdout


def test_test_shows_what_would_be_sent_and_includes(tmp_path):
    (tmp_path / "away.sieve").write_text(
        'require "vacation";\nvacation :days 2 "Away.";\n')
    script = tmp_path / "main.sieve"
    script.write_text('require "include";\ninclude "away";\n'
                      'redirect "carol@example.org";\n')
    msg = tmp_path / "m.eml"
    msg.write_bytes(MESSAGE)
    proc = admin("test", "-f", "alice@example.com", "-a", "bob+lists@example.net",
                 str(script), str(msg))
    assert proc.returncode == EX_OK, proc.stderr
    assert proc.stdout.decode().splitlines() == [
        "vacation reason='Away.' subject=None",
        "redirect carol@example.org",
        "send vacation from <> to <alice@example.com>",
        "send redirect from <alice@example.com> to <carol@example.org>",
    ]
    # a list message gets no reply, and the reason is shown
    proc = admin("test", "-f", "alice@example.com", "-a", "bob+lists@example.net",
                 str(script), "-", stdin=b"List-Id: <l.example.com>\n" + MESSAGE)
    assert b"send vacation" not in proc.stdout
    assert b"vacation: no reply: mailing list message (list-id)" in proc.stderr
