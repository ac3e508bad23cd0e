"""Sieve interpreter: compiled tuples + message view + environment -> Outcome.

Contract: ``execute(compiled, view, env, opts=None, filename, hooks=None)``
runs a script compiled by ``pymda.sieve.validate.compile_script`` (or
loaded from ``pymda.sieve.cache``) against ``view`` (a
``pymda.sieve.mail.MailView``) and returns a ``pymda.sieve.result.Outcome``.
A runtime error or a limit reached returns an Outcome whose ``error`` is
a ``SieveRuntimeError`` (with the line), no actions and the implicit keep
(RFC 5228 2.10.6, SPEC 6).  Nothing else is raised for any script.

``env`` (``Environment``): envelope ``sender`` / ``recipient`` /
``orig_recipient`` / ``auth`` (SMTP paths without brackets, "" = null
path), ``mailbox_exists`` (callable(name) -> bool, for ``mailboxexists``
and ``fileinto`` without ``:create``: None = every mailbox exists),
``now`` (``(utc_seconds, zone_minutes)`` or None for the clock).
``opts`` (``Options``): ``recipient_delimiter``, ``max_actions``,
``max_redirects``, ``max_cpu_time`` (seconds of CPU per run, checked
before every command), ``max_variable_size`` (octets), ``extensions``
(for the compiler), ``keep_folder`` (the implicit-keep target as a
script names it: ``fileinto`` of it and ``keep`` are one copy).

The less used commands and tests (variables, include, vacation, date,
body, duplicate, hasflag, mailboxexists) are in pymda.sieve.interp_ext,
imported at the first use of one of them (``_later``).

PURE: no file I/O; the message is read only through ``view`` and the
environment only through ``env``.

SECURITY: scripts are the user's, messages are strangers'; every limit is
enforced here at run time (a compiled cache the user edited gains
nothing): actions, redirects, CPU time, variable size, match values.
``:matches`` and ``regex`` are linear/bounded in pymda.sieve.match/regex.

LIMITATIONS: ``hasflag``/``setflag`` with a variable list keep flags in
those variables as space-separated strings; keywords are passed through.
"""

from pymda import fastos as os
from pymda.record import Record
from pymda.sieve import match as M
from pymda.sieve import result as R
from pymda.sieve.mail import address_part
from pymda.sieve.result import SieveRuntimeError

MAX_MATCH_VALUES = 32


class Environment(Record):
    __slots__ = ("sender", "recipient", "orig_recipient", "auth",
                 "mailbox_exists", "now", "memory", "include_loader")
    _defaults = {"sender": "", "recipient": "", "orig_recipient": None,
                 "auth": None, "mailbox_exists": None, "now": None,
                 "memory": None, "include_loader": None}


class Options(Record):
    __slots__ = ("recipient_delimiter", "max_actions", "max_redirects",
                 "max_cpu_time", "max_variable_size", "extensions",
                 "keep_folder", "duplicate_period", "duplicate_max_period",
                 "max_include_depth", "max_includes")
    _defaults = {"recipient_delimiter": "+", "max_actions": 32,
                 "max_redirects": 4, "max_cpu_time": 30.0,
                 "max_variable_size": 4096, "extensions": None,
                 "keep_folder": "INBOX", "duplicate_period": 12 * 3600,
                 "duplicate_max_period": 2 * 86400, "max_include_depth": 10,
                 "max_includes": 255}


class _Scope(dict):
    """The variables of one script: its own, plus those it declared
    ``global`` (RFC 6609 4), which live in the run's shared dict."""

    __slots__ = ("shared", "names")

    def __init__(self, shared):
        super().__init__()
        self.shared = shared
        self.names = set()

    def _where(self, key):
        if key.startswith("global."):
            return self.shared, key[7:]
        if key in self.names:
            return self.shared, key
        return None, key

    def get(self, key, default=None):
        target, key = self._where(key)
        if target is None:
            return dict.get(self, key, default)
        return target.get(key, default)

    def __setitem__(self, key, value):
        target, key = self._where(key)
        if target is None:
            dict.__setitem__(self, key, value)
        else:
            target[key] = value


DEFAULT_OPTIONS = Options()


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


def _cpu_time():
    """User + system CPU seconds of this process (``times(2)``; no
    ``import time`` on the delivery path)."""
    t = os.times()
    return t[0] + t[1]


class Interpreter:
    """One run of one script.  ``hooks`` maps a command or test name to
    ``fn(interp, node)`` (the test-suite adapter's extension)."""

    def __init__(self, compiled, view, env, opts=None, filename="script",
                 hooks=None):
        self.requires = frozenset(compiled[0])
        self.commands = compiled[1]
        self.view = view
        self.env = env
        self.opts = opts or DEFAULT_OPTIONS
        self.filename = filename
        self.hooks = hooks or {}
        self.globals = {}
        self.variables = _Scope(self.globals)
        self.include_stack = ()
        self.included_once = set()
        self.includes = 0
        self.marks = []             # (memory key, expiry) of duplicate
        self.match_values = []
        self.use_vars = "variables" in self.requires
        self.flags = ()
        self.warnings = []
        self.steps = 0              # commands run (the CPU clock is read every 16th)
        self.reset()

    def reset(self):
        """Forget the actions so far (test_result_reset)."""
        self.actions = []
        self.implicit_keep = True
        self.redirects = 0
        self.rejected = False
        self.vacations = 0

    def fail(self, line, msg):
        raise SieveRuntimeError(msg, self.filename, line)

    def warn(self, line, msg):
        self.warnings.append("%s:%d: %s" % (self.filename, line, msg))

    # -- running ----------------------------------------------------------

    def run(self):
        self.deadline = _cpu_time() + self.opts.max_cpu_time
        try:
            self.block(self.commands)
        except (_Stop, _Return):
            pass
        return self.outcome()

    def outcome(self):
        implicit = self.implicit_keep
        if implicit:
            # fileinto :copy "INBOX" already stores into the implicit-keep
            # target: one copy per folder
            keep_key = _folder_key(self.opts.keep_folder)
            implicit = not any(a.kind == "fileinto" and _folder_key(a.folder) == keep_key
                               for a in self.actions)
        return R.Outcome(actions=tuple(self.actions),
                         implicit_keep=implicit,
                         implicit_flags=self.flags, script=self.filename,
                         warnings=tuple(self.warnings),
                         marks=tuple(self.marks))

    def block(self, cmds):
        for cmd in cmds:
            # times(2) is a system call: look at the clock every 16th
            # command (each command is bounded; a Roundcube script's ~20
            # checks were 12 % of its run)
            self.steps += 1
            if not self.steps & 15 and _cpu_time() > self.deadline:
                self.fail(cmd[1], "CPU time limit exceeded (%gs)"
                          % self.opts.max_cpu_time)
            name = cmd[0]
            if name == "if":
                for test, body in cmd[3]:
                    if test is None or self.test(test):
                        self.block(body)
                        break
                continue
            fn = _COMMANDS.get(name)
            if fn is None:
                hook = self.hooks.get(name)
                if hook is None:
                    self.fail(cmd[1], "command '%s' is not available" % name)
                hook(self, cmd)
            else:
                fn(self, cmd)

    def test(self, node):
        fn = _TESTS.get(node[0])
        if fn is None:
            hook = self.hooks.get(node[0])
            if hook is None:
                self.fail(node[1], "test '%s' is not available" % node[0])
            return hook(self, node)
        return fn(self, node)

    # -- strings and variables -------------------------------------------

    def expand(self, s):
        if not self.use_vars or "${" not in s:
            return s
        from pymda.sieve.interp_ext import expand_variables

        return expand_variables(s, self.variables, self.match_values)

    def expand_list(self, items):
        if not self.use_vars:
            return items
        from pymda.sieve.interp_ext import expand_variables

        variables, values = self.variables, self.match_values
        return [expand_variables(s, variables, values) if "${" in s else s
                for s in items]

    def set_variable(self, name, value, quoted=False):
        """Assign, truncated to max_variable_size octets (whole UTF-8
        characters; with ``quoted``, never half an escape pair)."""
        limit = self.opts.max_variable_size
        if len(value) > limit // 4:
            raw = value.encode("utf-8", "surrogateescape")
            if len(raw) > limit:
                value = raw[:limit].decode("utf-8", "ignore")
                if quoted:
                    run = len(value) - len(value.rstrip("\\"))
                    if run % 2:
                        value = value[:-1]
        self.variables[name.lower()] = value

    # -- actions ------------------------------------------------------------

    def add_action(self, action, cancels_keep):
        actions = self.actions
        kind = action.kind
        if self.rejected and kind in ("keep", "fileinto", "redirect",
                                      "vacation", "reject"):
            self.fail(action.line, "%s cannot be combined with reject" % kind)
        keep_key = _folder_key(self.opts.keep_folder)
        for i, old in enumerate(actions):
            if _same_target(old, action, keep_key):
                # one copy per folder (RFC 5228 4.1, SPEC 6); the first
                # action stays, later flags win
                if kind != "redirect" and old.kind == kind and kind != "discard":
                    actions[i] = old.replace(flags=action.flags)
                if cancels_keep:
                    self.implicit_keep = False
                return
        if kind == "reject":
            if any(a.kind in ("keep", "fileinto", "redirect", "vacation")
                   for a in actions):
                self.fail(action.line, "reject cannot be combined with "
                          "other actions that deliver or reply")
            self.rejected = True
        if kind == "vacation":
            self.vacations += 1
            if self.vacations > 1:
                self.fail(action.line, "more than one vacation action")
        if kind == "redirect":
            self.redirects += 1
            if self.redirects > self.opts.max_redirects:
                self.fail(action.line, "too many redirect actions (max %d)"
                          % self.opts.max_redirects)
        if len(actions) >= self.opts.max_actions:
            self.fail(action.line, "too many actions (max %d)"
                      % self.opts.max_actions)
        actions.append(action)
        if cancels_keep:
            self.implicit_keep = False

    def action_flags(self, opts):
        if "flags" in opts:
            return _flag_set(self.expand_list(opts["flags"]))
        return self.flags


def _same_target(a, b, keep_key):
    if a.kind != b.kind:
        # keep stores into the implicit-keep target (Options.keep_folder:
        # INBOX, or -m / the extension folder): a fileinto of that name
        # is the same copy
        kinds = (a.kind, b.kind)
        if kinds == ("keep", "fileinto"):
            return _folder_key(b.folder) == keep_key
        if kinds == ("fileinto", "keep"):
            return _folder_key(a.folder) == keep_key
        return False
    if a.kind == "keep" or a.kind == "discard":
        return True
    if a.kind == "fileinto":
        return _folder_key(a.folder) == _folder_key(b.folder)
    if a.kind == "redirect":
        return a.address.lower() == b.address.lower()
    return False


def _folder_key(name):
    name = name.replace("/", ".")
    if name.upper() == "INBOX":
        return "INBOX"
    return name


def _flag_set(items):
    """Space-separated flag strings -> tuple of unique flags (case
    insensitive, first spelling kept), RFC 5232 3."""
    out = []
    seen = set()
    for item in items:
        for flag in item.split():
            key = flag.lower()
            if key not in seen:
                seen.add(key)
                out.append(flag)
    return tuple(out)


# -- commands -------------------------------------------------------------

def _cmd_stop(it, cmd):
    raise _Stop()


def _cmd_keep(it, cmd):
    it.add_action(R.Keep(flags=it.action_flags(cmd[2]), line=cmd[1]), True)


def _cmd_discard(it, cmd):
    it.add_action(R.Discard(line=cmd[1]), True)


def _cmd_fileinto(it, cmd):
    opts = cmd[2]
    folder = it.expand(cmd[3][0])
    if not folder:
        it.fail(cmd[1], "fileinto: empty folder name")
    try:
        folder.encode("utf-8")
    except UnicodeEncodeError:
        it.fail(cmd[1], "fileinto: invalid folder name (not UTF-8)")
    copy = bool(opts.get("copy"))
    it.add_action(R.FileInto(folder=folder, flags=it.action_flags(opts),
                             copy=copy, create=bool(opts.get("create")),
                             line=cmd[1]), not copy)


def parse_outgoing_address(raw):
    """The one address of ``raw`` (``Name <a@b>`` or ``a@b``) usable as an
    SMTP recipient, or None: exactly one mailbox, with a domain, ASCII
    only (no SMTPUTF8), not starting with ``-`` (never an option)."""
    from pymda.sieve.mail import parse_address_list

    addrs = parse_address_list(raw)
    if len(addrs) != 1 or not addrs[0].valid or not addrs[0].domain:
        return None
    address = addrs[0].all
    if (not address.isascii() or address.startswith("-")
            or any(c in address for c in "\r\n\0")):
        return None
    return address


def _cmd_redirect(it, cmd):
    raw = it.expand(cmd[3][0])
    address = parse_outgoing_address(raw)
    if address is None:
        it.fail(cmd[1], "redirect: invalid address %r" % raw)
    copy = bool(cmd[2].get("copy"))
    it.add_action(R.Redirect(address=address, copy=copy, line=cmd[1]), not copy)


def _cmd_reject(it, cmd):
    it.add_action(R.Reject(reason=it.expand(cmd[3][0]),
                           extended=cmd[0] == "ereject", line=cmd[1]), True)


def _cmd_flags(it, cmd):
    varname, items = cmd[3]
    items = it.expand_list(items)
    if varname is not None:
        varname = it.expand(varname)
        current = _flag_set([it.variables.get(varname.lower(), "")])
    else:
        current = it.flags
    name = cmd[0]
    if name == "setflag":
        new = _flag_set(items)
    elif name == "addflag":
        new = _flag_set(list(current) + list(items))
    else:
        drop = {f.lower() for f in _flag_set(items)}
        new = tuple(f for f in current if f.lower() not in drop)
    if varname is not None:
        it.set_variable(varname, " ".join(new))
    else:
        it.flags = new


def _later(name):
    """A command or test of pymda.sieve.interp_ext, which is imported at
    the first use of one of them (a typical filter never loads it)."""
    def call(it, node):
        from pymda.sieve import interp_ext

        return getattr(interp_ext, name)(it, node)

    return call


_COMMANDS = {
    "include": _later("cmd_include"), "return": _later("cmd_return"),
    "global": _later("cmd_global"),
    "stop": _cmd_stop, "keep": _cmd_keep, "discard": _cmd_discard,
    "fileinto": _cmd_fileinto, "redirect": _cmd_redirect,
    "reject": _cmd_reject, "ereject": _cmd_reject,
    "vacation": _later("cmd_vacation"), "set": _later("cmd_set"),
    "setflag": _cmd_flags, "addflag": _cmd_flags, "removeflag": _cmd_flags,
}


# -- tests ----------------------------------------------------------------

def _match(it, node, values, keys=None):
    """Match ``values`` against the node's key list (last positional);
    sets match variables on a successful ``:matches``/``:regex``."""
    opts = node[2]
    if keys is None:
        keys = it.expand_list(node[3][-1])
    mt = opts.get("match", "is")
    comparator = opts.get("comparator", "i;ascii-casemap")
    relation = None
    if ":" in mt:
        mt, relation = mt.split(":")
    if mt == "count":
        return M.count_matches(comparator, relation, len(values), keys)
    if mt == "regex":
        from pymda.sieve.regex import RegexError

        try:
            ok, captures = M.match_values(mt, comparator, values, keys)
        except RegexError as e:
            # a bad pattern made at run time (variables) does not match;
            # the script goes on (as Pigeonhole) and we warn
            it.warn(node[1], "invalid regular expression: %s" % e)
            return False
    else:
        ok, captures = M.match_values(mt, comparator, values, keys, relation)
    if ok and captures is not None and it.use_vars:
        it.match_values = captures[:MAX_MATCH_VALUES]
    return ok


def _select_index(node, values):
    opts = node[2]
    index = opts.get("index")
    if index is None:
        return values
    if index < 1 or index > len(values):
        return []
    return [values[-index] if opts.get("last") else values[index - 1]]


def _tst_header(it, node):
    names, values = it.expand_list(node[3][0]), []
    headers = it.view.headers
    for name in names:
        values.extend(_select_index(node, headers(name)))
    return _match(it, node, values)


def _tst_address(it, node):
    part = node[2].get("part", "all")
    values = []
    for name in it.expand_list(node[3][0]):
        # :index counts header fields, not addresses (RFC 5260 7)
        fields = _select_index(node, it.view.address_fields(name))
        for addr in (a for field in fields for a in field):
            v = address_part(addr, part, it.opts.recipient_delimiter)
            if v is not None:
                values.append(v)
    return _match(it, node, values)


def _tst_envelope(it, node):
    from pymda.sieve.mail import parse_envelope_address

    part = node[2].get("part", "all")
    env = it.env
    values = []
    for name in it.expand_list(node[3][0]):
        name = name.lower()
        if name == "from":
            raw = env.sender
        elif name == "to":
            raw = env.recipient
        elif name == "auth":
            raw = env.auth
        else:
            continue
        if raw is None:
            continue
        if name == "auth":
            values.append(raw)
            continue
        addr = parse_envelope_address(raw)
        if addr.local_part == "" and addr.domain == "":
            # the null path is "" whatever the address part (RFC 5228 5.4)
            values.append("")
            continue
        if addr.local_part is None:
            continue        # a syntactically invalid path matches nothing
        v = address_part(addr, part, it.opts.recipient_delimiter)
        if v is not None:
            values.append(v)
    return _match(it, node, values)


def _tst_exists(it, node):
    exists = it.view.exists
    return all(exists(name) for name in it.expand_list(node[3][0]))


def _tst_size(it, node):
    opts = node[2]
    if "over" in opts:
        return it.view.size > opts["over"]
    return it.view.size < opts["under"]


def _tst_allof(it, node):
    for t in node[4]:
        if not it.test(t):
            return False
    return True


def _tst_anyof(it, node):
    for t in node[4]:
        if it.test(t):
            return True
    return False


def _tst_not(it, node):
    return not it.test(node[4][0])


_TESTS = {
    "duplicate": _later("tst_duplicate"),
    "header": _tst_header, "address": _tst_address,
    "envelope": _tst_envelope, "exists": _tst_exists, "size": _tst_size,
    "allof": _tst_allof, "anyof": _tst_anyof, "not": _tst_not,
    "true": lambda it, node: True, "false": lambda it, node: False,
    "string": _later("tst_string"), "hasflag": _later("tst_hasflag"),
    "date": _later("tst_date"), "currentdate": _later("tst_currentdate"),
    "body": _later("tst_body"), "mailboxexists": _later("tst_mailboxexists"),
}


def execute(compiled, view, env, opts=None, filename="script", hooks=None):
    """Run ``compiled``; see the module docstring.  Never raises for a
    script's doing: errors come back in ``Outcome.error``."""
    it = Interpreter(compiled, view, env, opts, filename, hooks)
    try:
        return it.run()
    except SieveRuntimeError as e:
        return R.Outcome(error=e, script=filename)
    except RecursionError:
        return R.Outcome(error=SieveRuntimeError(
            "script nested too deeply", filename, 0), script=filename)
