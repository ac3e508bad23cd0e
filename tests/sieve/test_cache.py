"""pymda.sieve.cache and pymda.sieve.run: the compiled cache, hot-path imports."""

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pymda
from pymda.sieve import cache
from pymda.sieve.interp import Environment
from pymda.sieve.run import evaluate
from sievekit import view

SCRIPT = ('require ["fileinto", "relational", "comparator-i;ascii-numeric"];\n'
          'if header :contains "subject" "hello" { fileinto "Greetings"; }\n')
SITE = str(Path(pymda.__file__).resolve().parents[1])


def write(path, text):
    path.write_text(text)
    return str(path)


def test_miss_then_hit_and_file_mode(tmp_path):
    script = write(tmp_path / "s.sieve", SCRIPT)
    cdir = str(tmp_path / "cache")
    compiled, hit = cache.load(script, cdir)
    assert not hit
    files = os.listdir(cdir)
    assert len(files) == 1 and files[0].endswith(".bin")
    st = os.stat(os.path.join(cdir, files[0]))
    assert st.st_mode & 0o777 == 0o600
    assert os.stat(cdir).st_mode & 0o777 == 0o700
    again, hit = cache.load(script, cdir)
    assert hit and again == compiled


def test_changed_script_is_a_miss(tmp_path):
    script = write(tmp_path / "s.sieve", SCRIPT)
    cdir = str(tmp_path / "cache")
    cache.load(script, cdir)
    write(tmp_path / "s.sieve", SCRIPT.replace("Greetings", "Other"))
    compiled, hit = cache.load(script, cdir)
    assert not hit and "Other" in repr(compiled)
    assert len(os.listdir(cdir)) == 1            # overwritten, not piled up


def test_script_replaced_by_rename_does_not_pile_up(tmp_path):
    """ManageSieve and editors save by rename: a new inode each time, still
    one cache file per script path (and files of the <dev>-<ino> naming go)."""
    script = write(tmp_path / "s.sieve", SCRIPT)
    cdir = str(tmp_path / "cache")
    cache.load(script, cdir)
    Path(cdir, "fe00-1b6138.bin").write_bytes(b"old naming")
    for i in range(3):
        new = write(tmp_path / "s.sieve.new", SCRIPT.replace("Greetings", "F%d" % i))
        os.rename(new, script)
        compiled, hit = cache.load(script, cdir)
        assert not hit and "F%d" % i in repr(compiled)
    assert os.listdir(cdir) == [script.replace("/", "%") + ".bin"]
    assert cache.load(script, cdir)[1]


def test_malformed_or_foreign_cache_is_a_miss(tmp_path):
    script = write(tmp_path / "s.sieve", SCRIPT)
    cdir = str(tmp_path / "cache")
    cache.load(script, cdir)
    path = os.path.join(cdir, os.listdir(cdir)[0])
    st = os.stat(script)
    key = cache.script_key(st)
    for data in (b"", b"garbage", marshal.dumps(("pymda-sieve",)),
                 marshal.dumps(("pymda-sieve", cache.FORMAT, "0.0.0-other",
                                "default", key, ((), ())))):
        Path(path).write_bytes(data)
        _compiled, hit = cache.load(script, cdir)
        assert not hit
    assert cache.loads(Path(path).read_bytes(), key) is not None


def test_extension_set_is_part_of_the_key(tmp_path):
    script = write(tmp_path / "s.sieve", SCRIPT)
    cdir = str(tmp_path / "cache")
    cache.load(script, cdir)
    _c, hit = cache.load(script, cdir, extensions=("fileinto", "relational",
                                                   "comparator-i;ascii-numeric"))
    assert not hit


def test_edited_cache_structure_never_raises(tmp_path):
    """A user who edits their cache gets a runtime error (implicit keep)."""
    script = write(tmp_path / "s.sieve", SCRIPT)
    cdir = str(tmp_path / "cache")
    cache.load(script, cdir)
    path = os.path.join(cdir, os.listdir(cdir)[0])
    key = cache.script_key(os.stat(script))
    bogus = ((), (("fileinto", "x", None, 5, None, None),))
    Path(path).write_bytes(cache.dumps(bogus, key))
    out = evaluate(script, view(), Environment(), cache_dir=cdir)
    assert out.error is not None and out.final_actions()[0].kind == "keep"
    # the next run is healthy again: the cache was rewritten
    out = evaluate(script, view(), Environment(), cache_dir=cdir)
    assert out.error is None and out.actions[0].folder == "Greetings"


def test_evaluate_errors_are_outcomes(tmp_path):
    out = evaluate(str(tmp_path / "missing.sieve"), view(), Environment())
    assert out.error is not None and out.implicit_keep
    bad = write(tmp_path / "bad.sieve", 'keep;\nfrob;\n')
    out = evaluate(bad, view(), Environment())
    assert out.error.lines() == ["%s:2: unknown command 'frob'" % bad]
    big = write(tmp_path / "big.sieve", "keep;\n" * 100)
    out = evaluate(big, view(), Environment(), max_size=100)
    assert "too large" in str(out.error)
    (tmp_path / "latin1.sieve").write_bytes(b'keep;\n# \xe9\n')
    out = evaluate(str(tmp_path / "latin1.sieve"), view(), Environment())
    assert "UTF-8" in str(out.error) and out.error.line == 2


def test_sidecar_is_read_first(tmp_path):
    script = write(tmp_path / "s.sieve", SCRIPT)
    path = cache.compile_to_sidecar(script)
    assert path == script + ".pymda-bin"
    _c, hit = cache.load(script, None)
    assert hit


HOT = r'''
import sys
sys.path.insert(0, %(site)r)
from pymda.sieve.run import evaluate
from pymda.sieve.mail import MailView
from pymda.sieve.interp import Environment
data = b"From: a@example.org\r\nSubject: hello\r\nX-Spam-Score: 9\r\n\r\nbody\r\n"
view = MailView(data[:data.find(b"\r\n\r\n") + 4], len(data), lambda: data)
out = evaluate(%(script)r, view, Environment(sender="a@example.org",
               recipient="b@example.org"), cache_dir=%(cdir)r)
import json
print(json.dumps([[a.kind, getattr(a, "folder", None)] for a in out.final_actions()]))
print(json.dumps(sorted(sys.modules)))
'''


def imported_before_json(script, cdir):
    """Modules imported by evaluate (the json import at the end excluded)."""
    code = (HOT % {"site": SITE, "script": script, "cdir": cdir}).replace(
        "import json\n", "mods = sorted(sys.modules)\nimport json\n").replace(
        "json.dumps(sorted(sys.modules))", "json.dumps(mods)")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code],
                          capture_output=True, text=True, check=True)
    actions, modules = proc.stdout.splitlines()
    return json.loads(actions), set(json.loads(modules))


def test_cache_hit_imports_no_compiler_and_no_heavy_modules(tmp_path):
    script = write(tmp_path / "s.sieve", SCRIPT)
    cdir = str(tmp_path / "cache")
    actions, mods = imported_before_json(script, cdir)          # miss
    assert actions == [["fileinto", "Greetings"]]
    assert "pymda.sieve.parser" in mods
    actions, mods = imported_before_json(script, cdir)          # hit
    assert actions == [["fileinto", "Greetings"]]
    for name in ("pymda.sieve.lexer", "pymda.sieve.parser", "pymda.sieve.validate",
                 "re", "email", "datetime", "subprocess"):
        assert name not in mods, name


def test_regex_and_dates_are_imported_only_when_used(tmp_path):
    script = write(tmp_path / "s.sieve", 'require ["date", "relational"];\n'
                   'if currentdate :value "ge" "year" "2000" { discard; }\n')
    cdir = str(tmp_path / "cache")
    imported_before_json(script, cdir)
    actions, mods = imported_before_json(script, cdir)
    assert actions == [["discard", None]]
    assert "pymda.sieve.dates" in mods and "datetime" not in mods
    assert "pymda.sieve.regex" not in mods


def test_mutated_cache_files_never_raise(tmp_path):
    """Random byte flips in a cache file: a miss or a runtime error, never
    an exception out of evaluate()."""
    import random

    script = write(tmp_path / "s.sieve", SCRIPT)
    cdir = str(tmp_path / "cache")
    cache.load(script, cdir)
    path = os.path.join(cdir, os.listdir(cdir)[0])
    good = Path(path).read_bytes()
    rng = random.Random(7)
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        Path(path).write_bytes(bytes(data))
        out = evaluate(script, view(), Environment(), cache_dir=cdir)
        assert out.final_actions()


def test_utf8_bom_is_ignored(tmp_path):
    script = tmp_path / "bom.sieve"
    script.write_bytes(b"\xef\xbb\xbf" + SCRIPT.encode())
    out = evaluate(str(script), view(), Environment())
    assert out.error is None and out.actions[0].folder == "Greetings"
