"""Runs Pigeonhole's ``.svtest`` files against pymda's Sieve implementation.

The files are Sieve scripts that ``require "vnd.dovecot.testsuite"``: a
test-only extension registered here (``EXTRA`` for the validator,
``hooks`` for the interpreter), never visible to user scripts — pymda's
own EXTENSIONS list does not contain it.

``run_file(path)`` executes one file and returns ``{test name: None
(passed) or failure text}`` plus a list of file-level errors.

Vocabulary implemented (Pigeonhole ``src/testsuite``, behaviour only):
``test``, ``test_fail``, ``test_set`` (``message``, ``envelope.from/to/
orig_to/auth``; a new message re-derives the envelope from its headers),
``test_config_set/unset/reload`` (``recipient_delimiter``,
``sieve_variables_max_variable_size``, ``sieve_max_actions``,
``sieve_max_redirects``; any other key makes the current test fail with
"unsupported config" so the expectation list names it),
``test_result_action``, ``test_result_execute`` (into a temp Maildir
store), ``test_result_reset``, ``test_result_print``, ``test_message
:folder``, ``test_mailbox_create``, ``test_script_compile``,
``test_script_run``, ``test_error``, ``test_binary_save/load`` (through
pymda.sieve.cache's data format), ``test_message :smtp N`` (the N-th
message that ``test_result_execute`` sent through pymda.sieve.send
becomes the message under test, its envelope too; ``test_result_reset``
forgets them).  ``include`` finds personal scripts in ``included/`` and
global ones in ``included-global/`` next to the test file (as
Pigeonhole's test configuration).  Vacation settings start at
Pigeonhole's defaults (original recipient not used, no tracking between
runs: the test suite's duplicate store never remembers).

The files themselves are LGPL data and are read from
``$PYMDA_PIGEONHOLE_TESTS`` (default ``../shared/pigeonhole-tests`` next to
the repository); they are never copied into the repository.
"""

import os
import shutil
import tempfile
from pathlib import Path

from pymda.sieve import cache, interp, match, send, validate
from pymda.sieve.result import SieveCompileError, SieveError, SieveRuntimeError
from pymda.sieve.mail import MailView, parse_address_list

REPO = Path(__file__).resolve().parents[2]
EXT = "vnd.dovecot.testsuite"

DEFAULT_MESSAGE = (
    "From: sender@example.com\r\n"
    "To: recipient@example.com\r\n"
    "Subject: Frop!\r\n"
    "\r\n"
    "Frop!\r\n"
)

# dovecot setting -> (pymda Options field, converter)
CONFIG = {
    "recipient_delimiter": ("recipient_delimiter", str),
    "sieve_variables_max_variable_size": ("max_variable_size", int),
    "sieve_max_actions": ("max_actions", int),
    "sieve_max_redirects": ("max_redirects", int),
    "sieve_max_cpu_time": ("max_cpu_time", float),
}

def _yes(v):
    return v.lower() in ("yes", "true", "1")


def _seconds(v):
    from pymda.config import _duration

    return _duration(v)


# dovecot setting -> (pymda.sieve.send.Settings field, converter)
SEND_CONFIG = {
    "sieve_vacation_min_period": ("min_period", _seconds),
    "sieve_vacation_default_period": ("default_period", _seconds),
    "sieve_vacation_max_period": ("max_period", _seconds),
    "sieve_vacation_use_original_recipient": ("use_original_recipient", _yes),
    "sieve_vacation_check_recipient": ("check_recipient", _yes),
    "sieve_vacation_send_from_recipient": ("send_from_recipient", _yes),
    "sieve_vacation_to_header_ignore_envelope": ("to_header_ignore_envelope", _yes),
    "sieve_vacation_default_subject": ("default_subject", str),
    "sieve_vacation_default_subject_template": ("subject_template", str),
    "sieve_user_email": ("user_email", str),
    "sieve_redirect_envelope_from": ("redirect_envelope_from", str),
}

# Pigeonhole's defaults where pymda's differ (SPEC 6 counts the original
# recipient as the user's address)
PIGEONHOLE_SETTINGS = send.Settings(use_original_recipient=False)

_T = "vnd.dovecot.testsuite"
_S, _L, _N = validate.S, validate.L, validate.N
EXTRA = {
    "extensions": (EXT, "vnd.dovecot.debug"),
    # ${tst.path} etc. stay as written (only used by unsupported configs)
    "namespaces": ("tst",),
    "commands": {
        "debug_log": ("vnd.dovecot.debug", (), (_S,), 0, "none", False),
        # name: (ext, tags, positional kinds, optional, tests, block)
        "test": (_T, (), (_S,), 0, "none", True),
        "test_fail": (_T, (), (_S,), 0, "none", False),
        "test_set": (_T, (), (_S, _S), 0, "none", False),
        "test_config_set": (_T, (), (_S, _S), 0, "none", False),
        "test_config_unset": (_T, (), (_S,), 0, "none", False),
        "test_config_reload": (_T, ("extension",), (), 0, "none", False),
        "test_result_reset": (_T, (), (), 0, "none", False),
        "test_result_print": (_T, (), (), 0, "none", False),
        "test_mailbox_create": (_T, (), (_S,), 0, "none", False),
        "test_binary_save": (_T, (), (_S,), 0, "none", False),
        "test_binary_load": (_T, (), (_S,), 0, "none", False),
        "test_message": (_T, ("folder", "smtp"), (_N,), 0, "none", False),
        "test_imap_metadata_set": (_T, ("mailbox",), (_S, _S), 0, "none", False),
    },
    "tests": {
        "test_script_compile": (_T, (), (_S,), 0, "none"),
        "test_script_run": (_T, ("append_result",), (), 0, "none"),
        "test_multiscript": (_T, (), (_L,), 0, "none"),
        "test_error": (_T, ("comparator", "match", "index"), (_L,), 1, "none"),
        "test_result_action": (_T, ("comparator", "match", "index"), (_L,), 1, "none"),
        "test_result_execute": (_T, (), (), 0, "none"),
        "test_message": (_T, ("folder", "smtp"), (_N,), 0, "none"),
    },
    # per-command tag tables (override the global ones)
    "tags": {
        "index": ("index", _N, None, None),
        "folder": ("folder", _S, None, None),
        "smtp": ("smtp", None, True, None),
        "extension": ("extension", _S, None, None),
        "append_result": ("append_result", None, True, None),
        "mailbox": ("mailbox", _S, None, None),
    },
}


def suite_root():
    root = os.environ.get("PYMDA_PIGEONHOLE_TESTS")
    if root:
        return Path(root)
    return REPO.parent / "shared" / "pigeonhole-tests"


class TestFailed(Exception):
    pass


class _TestStop(Exception):
    pass


def _split_message(data):
    for sep in (b"\r\n\r\n", b"\n\n"):
        k = data.find(sep)
        if k >= 0:
            return data[:k + len(sep)]
    return data


def make_view(data):
    return MailView(_split_message(data), len(data), lambda: data)


def _first_address(view, *names):
    for name in names:
        for value in view.raw_headers(name):
            for addr in parse_address_list(value):
                if addr.valid:
                    return addr.all
    return None


class Store:
    """A temp Maildir++ store: folder name (``.`` or ``/`` separated,
    ``INBOX`` = the top) -> directory."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="pymda-svtest-"))
        self.create("INBOX")
        self.counter = 0
        self.flags = {}         # stored file -> all its flags and keywords

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)

    def _dir(self, name):
        name = name.replace("/", ".")
        if name.upper() == "INBOX":
            return self.root
        if name[:6].upper() == "INBOX.":
            name = name[6:]
        if not name or ".." in name or name.startswith(".") or "\0" in name:
            raise ValueError("invalid mailbox name %r" % name)
        return self.root / ("." + name)

    def exists(self, name):
        try:
            return (self._dir(name) / "cur").is_dir()
        except ValueError:
            return False

    def create(self, name):
        d = self._dir(name)
        for sub in ("cur", "new", "tmp"):
            (d / sub).mkdir(parents=True, exist_ok=True)

    def store(self, name, data, flags):
        """Store ``data`` with ``flags``; like the test configuration of
        Pigeonhole's dovecot store, every message also gets the
        ``$HasNoAttachment`` keyword (mail_attachment_detection)."""
        d = self._dir(name)
        if not (d / "cur").is_dir():
            raise LookupError("mailbox %s does not exist" % name)
        self.counter += 1
        if flags:
            letters = "".join(sorted(
                {"\\seen": "S", "\\answered": "R", "\\flagged": "F",
                 "\\deleted": "T", "\\draft": "D"}.get(f.lower(), "")
                for f in flags))
            path = d / "cur" / ("%d.test:2,%s" % (self.counter, letters))
        else:
            path = d / "new" / ("%d.test" % self.counter)
        path.write_bytes(data)
        self.flags[path.name] = tuple(flags) + ("$HasNoAttachment",)

    def messages(self, name):
        d = self._dir(name)
        files = [p for sub in ("new", "cur") if (d / sub).is_dir()
                 for p in (d / sub).iterdir()]
        files.sort(key=lambda p: int(p.name.split(".")[0]))
        return [(p.read_bytes(), self.flags.get(p.name, ())) for p in files]


class Suite:
    def __init__(self, path):
        self.path = Path(path)
        self.results = {}
        self.order = []
        self.current = None
        self.opts = interp.Options()
        self.pending = {}
        self.store = Store()
        self.set_message(DEFAULT_MESSAGE.encode())
        self.script = None          # (compiled, filename) of test_script_compile
        self.errors = []            # error texts of the last compile/run
        self.binaries = {}
        self.main = None
        self.settings = PIGEONHOLE_SETTINGS
        self.sender = send.RecordingSender()

    # -- message and envelope ---------------------------------------------

    def set_message(self, data):
        self.message = data
        self.view = make_view(data)
        sender = _first_address(self.view, "return-path", "sender", "from")
        rcpt = _first_address(self.view, "envelope-to", "to")
        self.env = interp.Environment(
            sender=sender or "sender@example.com",
            recipient=rcpt or "recipient@example.com",
            orig_recipient=rcpt or "recipient@example.com",
            mailbox_exists=self.store.exists,
            include_loader=self.load_include)

    def load_include(self, location, name):
        sub = "included" if location == "personal" else "included-global"
        path = self.path.parent / sub / (name + ".sieve")
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            raise LookupError("no such file") from None
        return (validate.compile_script(text, str(path),
                                        extensions=self.opts.extensions,
                                        extra=EXTRA),
                str(path))

    def env_for(self):
        return self.env

    # -- running --------------------------------------------------------------

    def run(self):
        text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
        try:
            compiled = validate.compile_script(text, str(self.path), extra=EXTRA)
        except SieveCompileError as e:
            return self.results, ["compile: " + l for l in e.lines()]
        it = interp.Interpreter(compiled, self.view, self.env, self.opts,
                                str(self.path), hooks=HOOKS)
        it.suite = self
        self.main = it
        errors = []
        try:
            it.run()
        except SieveError as e:
            errors.append("runtime: " + str(e))
        except NotImplementedError as e:
            errors.append("not implemented yet: %r" % e)
        finally:
            self.store.close()
        return self.results, errors

    def rebind(self, it):
        it.view = self.view
        it.env = self.env
        it.opts = self.opts

    # -- helpers for the hooks ------------------------------------------------

    def compile_helper(self, name):
        path = self.path.parent / name
        self.errors = []
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            compiled = validate.compile_script(text, str(path),
                                               extensions=self.opts.extensions,
                                               extra=EXTRA)
        except OSError as e:
            self.errors = [str(e)]
            self.script = None
            return False
        except SieveCompileError as e:
            # Pigeonhole ends a failed compile with one summary error of
            # its own, which its tests count too
            self.errors = [m for (_f, _l, m) in e.errors] + [
                "compile failed: %d error(s)" % len(e.errors)]
            self.script = None
            return False
        self.script = (compiled, str(path))
        return True

    def run_helper(self, append):
        if self.script is None:
            return False
        compiled, filename = self.script
        sub = interp.Interpreter(compiled, self.view, self.env, self.opts,
                                 filename, hooks=HOOKS)
        sub.suite = self
        try:
            outcome = sub.run()
        except SieveRuntimeError as e:
            outcome = interp.R.Outcome(error=e)
        if outcome.error is not None:
            self.errors = [m for (_f, _l, m) in outcome.error.errors]
            return False
        self.errors = [w.split(": ", 1)[-1] for w in outcome.warnings]
        main = self.main
        if not append:
            main.reset()
        for action in outcome.actions:
            main.add_action(action, False)
        main.implicit_keep = main.implicit_keep and outcome.implicit_keep
        return True

    def execute_result(self):
        out = self.main.outcome()
        ok = True
        self.errors = []
        for action in out.final_actions():
            try:
                if action.kind == "keep":
                    self.store.store("INBOX", self.message, action.flags)
                elif action.kind == "fileinto":
                    if action.create and not self.store.exists(action.folder):
                        self.store.create(action.folder)
                    self.store.store(action.folder, self.message, action.flags)
            except (LookupError, ValueError, OSError) as e:
                self.errors.append("failed to store into mailbox %r: %s"
                                   % (action.folder, e))
                ok = False
        ctx = send.Context(env=self.env, view=self.view, message=self.message,
                           user_address=(self.settings.user_email
                                         or self.env.recipient),
                           settings=self.settings, memory=None,
                           now=1700000000, hostname="test.example.net",
                           script=str(self.path))
        plan = send.prepare(out.final_actions(), ctx)
        if plan.keep:
            self.store.store("INBOX", self.message, ())
        self.errors += list(plan.logs)
        self.errors += send.send_all(plan.outgoing, self.sender, None)
        return ok


def _fail(it, line, text):
    raise TestFailed(text)


def _cmd_test(it, cmd):
    suite = it.suite
    name = it.expand(cmd[3][0])
    suite.current = name
    suite.order.append(name)
    try:
        it.block(cmd[5])
    except TestFailed as e:
        suite.results[name] = str(e)
    except SieveRuntimeError as e:
        suite.results[name] = "runtime error: %s" % e
    except interp._Stop:
        suite.results[name] = None
    else:
        suite.results[name] = None
    suite.current = None


def _cmd_test_fail(it, cmd):
    raise TestFailed(it.expand(cmd[3][0]))


def _cmd_test_set(it, cmd):
    suite = it.suite
    what, value = it.expand(cmd[3][0]), it.expand(cmd[3][1])
    if what == "message":
        suite.set_message(value.encode("utf-8", "surrogateescape"))
    elif what.startswith("envelope."):
        field = {"envelope.from": "sender", "envelope.to": "recipient",
                 "envelope.orig_to": "orig_recipient",
                 "envelope.auth": "auth"}.get(what)
        if field is None:
            raise TestFailed("test_set: unknown %s" % what)
        if field != "auth" and value == "<>":
            value = ""
        suite.env = suite.env.replace(**{field: value})
    else:
        raise TestFailed("test_set: unsupported %r" % what)
    suite.rebind(it)


def _cmd_config_set(it, cmd):
    key, value = it.expand(cmd[3][0]), it.expand(cmd[3][1])
    if key in SEND_CONFIG:
        it.suite.pending[key] = value
        return
    if key not in CONFIG:
        raise TestFailed("unsupported config %s" % key)
    it.suite.pending[key] = value


def _cmd_config_unset(it, cmd):
    key = it.expand(cmd[3][0])
    if key not in CONFIG and key not in SEND_CONFIG:
        raise TestFailed("unsupported config %s" % key)
    it.suite.pending[key] = None


def _cmd_config_reload(it, cmd):
    suite = it.suite
    changes = {}
    send_changes = {}
    defaults = interp.Options()
    for key, value in suite.pending.items():
        if key in SEND_CONFIG:
            field, conv = SEND_CONFIG[key]
            send_changes[field] = (getattr(PIGEONHOLE_SETTINGS, field)
                                   if value is None else conv(value))
            continue
        field, conv = CONFIG[key]
        changes[field] = getattr(defaults, field) if value is None else conv(value)
    suite.opts = suite.opts.replace(**changes)
    suite.settings = suite.settings.replace(**send_changes)
    suite.rebind(it)


def _cmd_result_reset(it, cmd):
    it.reset()
    it.flags = ()
    it.suite.sender.sent = []


def _cmd_nothing(it, cmd):
    pass


def _cmd_mailbox_create(it, cmd):
    it.suite.store.create(it.expand(cmd[3][0]))


def _cmd_binary_save(it, cmd):
    suite = it.suite
    if suite.script is None:
        raise TestFailed("test_binary_save: nothing compiled")
    suite.binaries[it.expand(cmd[3][0])] = cache.dumps(suite.script[0])


def _cmd_binary_load(it, cmd):
    suite = it.suite
    data = suite.binaries.get(it.expand(cmd[3][0]))
    compiled = None if data is None else cache.loads(data)
    if compiled is None:
        raise TestFailed("test_binary_load: no such binary")
    suite.script = (compiled, suite.script[1] if suite.script else "binary")


def _cmd_message(it, cmd):
    if not _tst_message(it, cmd):
        raise TestFailed("test_message: no such message")


def _tst_message(it, node):
    suite = it.suite
    opts = node[2]
    index = node[3][0]
    if "folder" in opts:
        try:
            msgs = suite.store.messages(it.expand(opts["folder"]))
        except ValueError:
            return False
        if index >= len(msgs):
            return False
        suite.message, flags = msgs[index]
        suite.view = make_view(suite.message)
        it.flags = flags        # the stored message's flags become current
        suite.rebind(it)
        return True
    sent = suite.sender.sent
    if index >= len(sent):
        return False
    envelope_from, recipient, data = sent[index]
    suite.message = data
    suite.view = make_view(data)
    suite.env = suite.env.replace(sender=envelope_from, recipient=recipient,
                                  orig_recipient=recipient)
    suite.rebind(it)
    return True


def _tst_compile(it, node):
    return it.suite.compile_helper(it.expand(node[3][0]))


def _tst_run(it, node):
    return it.suite.run_helper(bool(node[2].get("append_result")))


def _tst_execute(it, node):
    return it.suite.execute_result()


_KINDS = {"keep": "keep", "fileinto": "store", "discard": "discard",
          "redirect": "redirect", "vacation": "vacation", "reject": "reject"}


def _select(it, node, items):
    opts = node[2]
    keys = it.expand_list(node[3][-1])
    mt = opts.get("match", "is")
    comparator = opts.get("comparator", "i;ascii-casemap")
    if mt.startswith("count:"):
        return match.count_matches(comparator, mt[6:], len(items), keys)
    if "index" in opts:
        k = opts["index"]
        items = items[k - 1:k] if 1 <= k <= len(items) else []
    rel = None
    if ":" in mt:
        mt, rel = mt.split(":")
    return match.match_values(mt, comparator, items, keys, rel)[0]


def _tst_error(it, node):
    return _select(it, node, list(it.suite.errors))


def _tst_result_action(it, node):
    kinds = [_KINDS.get(a.kind, a.kind) for a in it.actions]
    return _select(it, node, kinds)


HOOKS = {
    "test": _cmd_test,
    "test_fail": _cmd_test_fail,
    "test_set": _cmd_test_set,
    "test_config_set": _cmd_config_set,
    "test_config_unset": _cmd_config_unset,
    "test_config_reload": _cmd_config_reload,
    "test_result_reset": _cmd_result_reset,
    "test_result_print": _cmd_nothing,
    "test_mailbox_create": _cmd_mailbox_create,
    "test_binary_save": _cmd_binary_save,
    "test_binary_load": _cmd_binary_load,
    "test_imap_metadata_set": _cmd_nothing,
    "debug_log": _cmd_nothing,
    "test_script_compile": _tst_compile,
    "test_script_run": _tst_run,
    "test_error": _tst_error,
    "test_result_action": _tst_result_action,
    "test_result_execute": _tst_execute,
    "test_multiscript": lambda it, node: False,
}


def _message_hook(it, node):
    # test_message is both a command (node has a block slot) and a test
    if len(node) == 6:
        return _cmd_message(it, node)
    return _tst_message(it, node)


HOOKS["test_message"] = _message_hook


def run_file(path):
    """(results, file_errors) of one .svtest file; see module docstring."""
    suite = Suite(path)
    results, errors = suite.run()
    return results, errors
