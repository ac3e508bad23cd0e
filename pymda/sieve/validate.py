"""Sieve validator: generic parse tree -> checked, compiled plain tuples.

Contract: ``compile_script(text, filename, extensions=None, extra=None)``
returns the compiled form ``(requires, commands)`` made only of tuples,
dicts, str, int, bool and None (marshal-able: see pymda.sieve.cache), or
raises ``SieveCompileError`` listing every error found (file, line,
message).  ``extensions`` is the enabled set (default: ``EXTENSIONS``);
``require`` of a name outside it is an error (RFC 5228 3.2), and so is a
command, test or tag of an extension the script did not require.
``extra`` adds test-only commands/tests (the Pigeonhole test-suite
adapter); never used for user scripts.

Compiled nodes (interpreted by pymda.sieve.interp):

    command  (name, line, opts, pos, tests, block)
    test     (name, line, opts, pos, tests)
    if       ("if", line, {}, ((test, block), ..., (None, block)), (), None)

``opts`` maps a slot to its value: ``match`` (``"is"``, ``"contains"``,
``"matches"``, ``"regex"``, ``"value:OP"``, ``"count:OP"``),
``comparator``, ``part`` (all/localpart/domain/user/detail), ``index``
(int), ``last``, ``zone`` (str, or None for :originalzone), ``copy``,
``create``, ``flags`` (tuple), ``transform`` (``"raw"``, ``"text"``, or
a tuple of content types), ``mods`` (set modifiers, tuple), ``over`` /
``under`` (size), and vacation's ``days``/``seconds``/``subject``/
``from``/``addresses``/``mime``/``handle``.  ``pos`` holds positional
arguments: str, tuple of str, or int.  Strings keep ``${...}`` for the
interpreter when ``variables`` is required; ``encoded-character`` is
decoded here.

LIMITATIONS: the error texts are pymda's own, not Pigeonhole's.
"""

from pymda.sieve.result import SieveCompileError
from pymda.sieve.parser import parse

# Every extension pymda implements (docs/sieve.md: the sieve_extensions line).
EXTENSIONS = (
    "fileinto", "envelope", "encoded-character", "comparator-i;octet",
    "comparator-i;ascii-casemap", "comparator-i;ascii-numeric",
    "relational", "subaddress", "copy", "mailbox", "variables", "date",
    "index", "imap4flags", "body", "regex",
    "reject", "ereject", "vacation", "vacation-seconds", "include",
    "duplicate",
)

S, L, N = "string", "string-list", "number"
MAX_IDENTIFIER = 32         # Pigeonhole's limits (SIEVE-NOTES 7)
MAX_MATCH_INDEX = 32
MAX_VARIABLES = 255
MATCH_OPS = ("gt", "ge", "lt", "le", "eq", "ne")
COMPARATORS = {"i;octet": None, "i;ascii-casemap": None,
               "i;ascii-numeric": "comparator-i;ascii-numeric"}
ENVELOPE_PARTS = ("from", "to", "auth")
DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute",
              "second", "time", "iso8601", "std11", "zone", "weekday")

# tag -> (slot, argument kind or None, value, extension)
TAGS = {
    "is": ("match", None, "is", None),
    "contains": ("match", None, "contains", None),
    "matches": ("match", None, "matches", None),
    "regex": ("match", None, "regex", "regex"),
    "value": ("match", S, "value", "relational"),
    "count": ("match", S, "count", "relational"),
    "comparator": ("comparator", S, None, None),
    "all": ("part", None, "all", None),
    "localpart": ("part", None, "localpart", None),
    "domain": ("part", None, "domain", None),
    "user": ("part", None, "user", "subaddress"),
    "detail": ("part", None, "detail", "subaddress"),
    "index": ("index", N, None, "index"),
    "last": ("last", None, True, "index"),
    "zone": ("zone", S, None, "date"),
    "originalzone": ("zone", None, None, "date"),
    "copy": ("copy", None, True, "copy"),
    "create": ("create", None, True, "mailbox"),
    "flags": ("flags", L, None, "imap4flags"),
    "raw": ("transform", None, "raw", "body"),
    "text": ("transform", None, "text", "body"),
    "content": ("transform", L, None, "body"),
    "over": ("size", N, "over", None),
    "under": ("size", N, "under", None),
    "lower": ("mod40", None, "lower", "variables"),
    "upper": ("mod40", None, "upper", "variables"),
    "lowerfirst": ("mod30", None, "lowerfirst", "variables"),
    "upperfirst": ("mod30", None, "upperfirst", "variables"),
    "quotewildcard": ("mod20", None, "quotewildcard", "variables"),
    "quoteregex": ("mod20b", None, "quoteregex", "regex"),
    "length": ("mod10", None, "length", "variables"),
    "days": ("days", N, None, "vacation"),
    "seconds": ("seconds", N, None, "vacation-seconds"),
    "subject": ("subject", S, None, "vacation"),
    "from": ("from", S, None, "vacation"),
    "addresses": ("addresses", L, None, "vacation"),
    "mime": ("mime", None, True, "vacation"),
    "handle": ("handle", S, None, "vacation"),
}

_MATCH = ("comparator", "match")
_ADDR = _MATCH + ("part",)

# name -> (extension, tags allowed, positional kinds, optional leading
#          positionals, tests ("none"/"one"/"list"), block)
COMMANDS = {
    "require": (None, (), (L,), 0, "none", False),
    "if": (None, (), (), 0, "one", True),
    "elsif": (None, (), (), 0, "one", True),
    "else": (None, (), (), 0, "none", True),
    "stop": (None, (), (), 0, "none", False),
    "keep": (None, ("flags",), (), 0, "none", False),
    "discard": (None, (), (), 0, "none", False),
    "redirect": (None, ("copy",), (S,), 0, "none", False),
    "fileinto": ("fileinto", ("copy", "create", "flags"), (S,), 0, "none", False),
    "reject": ("reject", (), (S,), 0, "none", False),
    "ereject": ("ereject", (), (S,), 0, "none", False),
    "vacation": ("vacation", ("days", "seconds", "subject", "from",
                              "addresses", "mime", "handle"),
                 (S,), 0, "none", False),
    "set": ("variables", ("mod40", "mod30", "mod20", "mod20b", "mod10"),
            (S, S), 0, "none", False),
    "setflag": ("imap4flags", (), (S, L), 1, "none", False),
    "addflag": ("imap4flags", (), (S, L), 1, "none", False),
    "removeflag": ("imap4flags", (), (S, L), 1, "none", False),
    "include": ("include", ("location", "once", "optional"), (S,), 0, "none", False),
    "return": ("include", (), (), 0, "none", False),
    "global": ("include", (), (L,), 0, "none", False),
}

# commands and tests whose tags differ from the global table
COMMAND_TAGS = {
    "include": {
        "personal": ("location", None, "personal", "include"),
        "global": ("location", None, "global", "include"),
        "once": ("once", None, True, "include"),
        "optional": ("optional", None, True, "include"),
    },
    "duplicate": {
        "handle": ("handle", S, None, "duplicate"),
        "header": ("id", S, "header", "duplicate"),
        "uniqueid": ("id", S, "uniqueid", "duplicate"),
        "seconds": ("seconds", N, None, "duplicate"),
        "last": ("last", None, True, "duplicate"),
    },
}

TESTS = {
    "address": (None, _ADDR + ("index", "last"), (L, L), 0, "none"),
    "header": (None, _MATCH + ("index", "last"), (L, L), 0, "none"),
    "envelope": ("envelope", _ADDR, (L, L), 0, "none"),
    "exists": (None, (), (L,), 0, "none"),
    "size": (None, ("size",), (), 0, "none"),
    "allof": (None, (), (), 0, "list"),
    "anyof": (None, (), (), 0, "list"),
    "not": (None, (), (), 0, "one"),
    "true": (None, (), (), 0, "none"),
    "false": (None, (), (), 0, "none"),
    "string": ("variables", _MATCH, (L, L), 0, "none"),
    "hasflag": ("imap4flags", _MATCH, (L, L), 1, "none"),
    "date": ("date", _MATCH + ("zone", "index", "last"), (S, S, L), 0, "none"),
    "currentdate": ("date", _MATCH + ("zone",), (S, L), 0, "none"),
    "body": ("body", _MATCH + ("transform",), (L,), 0, "none"),
    "mailboxexists": ("mailbox", (), (L,), 0, "none"),
    "duplicate": ("duplicate", ("handle", "id", "seconds", "last"), (), 0, "none"),
}

# extensions that imply others (RFC 6131: vacation-seconds implies vacation)
_IMPLIES = {"vacation-seconds": ("vacation",)}


def _utf8(s):
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_identifier(name):
    if not name or not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")):
        return False
    return all(c.isascii() and (c.isalnum() or c == "_") for c in name)


def decode_encoded(s):
    """RFC 5228 2.4.2.4: ``${hex:41 42}`` and ``${unicode:263A}`` in a
    string; a malformed sequence is left as it is.  Raises ValueError for
    a unicode code point outside the Unicode range (an error, the RFC
    says)."""
    if "${" not in s:
        return s
    from pymda.sieve.interp_ext import replace_references

    def value(inner):
        colon = inner.find(":")
        if colon < 0:
            return None
        return _decode_one(inner[:colon].lower(), inner[colon + 1:].split())

    return replace_references(s, value)


_HEX = frozenset("0123456789abcdefABCDEF")


def _decode_one(kind, words):
    if not words or not all(w and set(w) <= _HEX for w in words):
        return None
    values = [int(w, 16) for w in words]
    if kind == "hex":
        if any(v > 255 for v in values):
            return None
        # invalid UTF-8 stays visible (surrogates) so that using it as a
        # folder name is an error, not a silently different folder
        return bytes(values).decode("utf-8", "surrogateescape")
    if kind == "unicode":
        for v in values:
            if v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                raise ValueError("invalid unicode character U+%X" % v)
        return "".join(map(chr, values))
    return None


class _Validator:
    def __init__(self, filename, extensions, extra):
        self.filename = filename
        self.enabled = frozenset(EXTENSIONS if extensions is None else extensions)
        self.required = set()
        self.errors = []
        self.variables = set()
        self.globals = set()
        self.commands = dict(COMMANDS)
        self.tests = dict(TESTS)
        self.extra_ext = set()
        self.extra_tags = {}
        self.extra_names = frozenset()
        self.extra_namespaces = ()
        if extra:
            self.extra_namespaces = tuple(extra.get("namespaces", ()))
            self.extra_tags = extra.get("tags", {})
            self.extra_names = frozenset(extra.get("commands", ())) | frozenset(
                extra.get("tests", ()))
            self.commands.update(extra.get("commands", {}))
            self.tests.update(extra.get("tests", {}))
            self.extra_ext = set(extra.get("extensions", ()))

    def error(self, line, msg):
        self.errors.append((self.filename, line, msg))

    def error_once(self, line, msg):
        """An argument error: only the first per command or test counts
        (the rest are usually consequences of it)."""
        if not self.arg_failed:
            self.arg_failed = True
            self.error(line, msg)

    def has(self, ext):
        return ext is None or ext in self.required

    def string(self, s, line):
        if "${" not in s:
            return s
        if "encoded-character" in self.required:
            try:
                s = decode_encoded(s)
            except ValueError as e:
                self.error(line, "encoded-character: %s" % e)
        if "variables" in self.required:
            self.check_references(s, line)
        return s

    def check_references(self, s, line):
        """RFC 5229 3: references to namespaces pymda does not have, match
        variables beyond MAX_MATCH_INDEX, names beyond MAX_IDENTIFIER."""
        i = s.find("${")
        while i >= 0:
            k = s.find("}", i)
            if k < 0:
                break
            name = s[i + 2:k]
            if name.isdigit() and name.isascii():
                if int(name) > MAX_MATCH_INDEX:
                    self.error(line, "match variable ${%s} beyond the maximum "
                               "index %d" % (name, MAX_MATCH_INDEX))
            elif "." in name and all(_is_identifier(p) for p in name.split(".")):
                if not (self.global_name(name) or name.partition(".")[0].lower()
                        in self.extra_namespaces):
                    self.error(line, "unknown variable namespace in ${%s}" % name)
            elif _is_identifier(name) and len(name) > MAX_IDENTIFIER:
                self.error(line, "variable name ${%s} longer than %d characters"
                           % (name[:40], MAX_IDENTIFIER))
            i = s.find("${", i + 2)

    # -- commands ---------------------------------------------------------

    def block(self, cmds, top):
        out = []
        seen_other = False
        prev = None
        for cmd in cmds:
            name, line = cmd[0], cmd[1]
            if name == "require":
                if not top or seen_other:
                    self.error(line, "require must come before any other command")
                else:
                    self.require(cmd)
                prev = name
                continue
            seen_other = True
            if name in ("elsif", "else"):
                if prev not in ("if", "elsif") or not out or out[-1][0] != "if":
                    self.error(line, "%s without a preceding if" % name)
                    prev = name
                    continue
                node = self.command(cmd)
                if node is not None:
                    head = out[-1]
                    test = None if name == "else" else node[4]
                    out[-1] = ("if", head[1], head[2],
                               head[3] + ((test, node[5]),), (), None)
                prev = name
                continue
            node = self.command(cmd)
            if node is not None:
                if name == "if":
                    node = ("if", line, {}, ((node[4], node[5]),), (), None)
                out.append(node)
            prev = name
        return tuple(out)

    def require(self, cmd):
        name, line, args, tests, block = cmd
        if len(args) != 1 or args[0][0] not in ("str", "list") or tests or block is not None:
            self.error(line, "require takes one string list")
            return
        value = args[0][1]
        for ext in [value] if isinstance(value, str) else value:
            if ext in self.extra_ext:
                self.required.add(ext)
            elif ext in self.enabled or (
                    ext == "comparator-i;octet" or ext == "comparator-i;ascii-casemap"):
                self.required.add(ext)
                self.required.update(_IMPLIES.get(ext, ()))
            else:
                self.error(line, "require: unknown Sieve capability '%s'" % ext)

    def command(self, cmd):
        name, line, args, tests, block = cmd
        spec = self.commands.get(name)
        if spec is None:
            self.error(line, "unknown command '%s'" % name)
            return None
        ext, tags, kinds, optional, ntests, has_block = spec
        if not self.has(ext):
            self.error(line, "%s command requires the '%s' extension" % (name, ext))
            return None
        self.arg_failed = False
        opts, pos = self.arguments("%s command" % name, line, args, tags,
                                   kinds, optional, self.tag_table(name))
        self.check_arity("%s command" % name, line, tests, ntests)
        if has_block and block is None:
            self.error_once(line, "the %s command needs a block" % name)
        elif not has_block and block is not None:
            self.error_once(line, "the %s command takes no block" % name)
        tnodes = self.check_tests(tests, ntests)
        body = self.block(block, False) if block is not None else None
        if opts is None:
            return None
        if name == "set":
            self.check_set(line, pos)
        elif name in ("fileinto", "redirect") and not pos[0]:
            self.error(line, "%s: empty argument" % name)
        elif name == "redirect":
            self.check_address(line, "redirect", pos[0])
        elif name == "fileinto" and not _utf8(pos[0]):
            self.error(line, "fileinto: invalid folder name (not UTF-8)")
        elif name == "vacation" and "from" in opts:
            self.check_address(line, "vacation :from", opts["from"])
        elif name == "include":
            script = pos[0]
            if (not script or "/" in script or script.startswith(".")
                    or not _utf8(script) or any(
                        c < " " or "\x7f" <= c <= "\x9f" or c in "\u2028\u2029"
                        for c in script)):
                self.error(line, "include: invalid script name '%s'" % script)
        elif name == "global":
            for var in pos[0]:
                if not _is_identifier(var) or len(var) > MAX_IDENTIFIER:
                    self.error(line, "global: invalid variable name '%s'" % var)
                elif var.lower() in self.variables and var.lower() not in self.globals:
                    self.error(line, "global: '%s' was already used as a local "
                               "variable" % var)
                else:
                    self.globals.add(var.lower())
            if "variables" not in self.required:
                self.error(line, "global command requires the 'variables' extension")
        test = tnodes[0] if ntests == "one" and tnodes else None
        if ntests == "one":
            return (name, line, opts, pos, test, body)
        return (name, line, opts, pos, tuple(tnodes), body)

    def check_address(self, line, what, raw):
        if "variables" in self.required and "${" in raw:
            return          # checked when it runs
        from pymda.sieve.interp import parse_outgoing_address

        if parse_outgoing_address(raw) is None:
            self.error(line, "%s: invalid address '%s'" % (what, raw))

    def global_name(self, name):
        """``global.NAME`` (RFC 6609 5) when include is required."""
        head, _, rest = name.partition(".")
        return ("include" in self.required and head.lower() == "global"
                and _is_identifier(rest))

    def check_set(self, line, pos):
        var = pos[0]
        if self.global_name(var):
            return
        if "." in var and all(_is_identifier(p) for p in var.split(".")):
            self.error(line, "set: unknown variable namespace in '%s'" % var)
        elif not _is_identifier(var):
            self.error(line, "set: invalid variable name '%s'" % var)
        elif len(var) > MAX_IDENTIFIER:
            self.error(line, "set: variable name longer than %d characters"
                       % MAX_IDENTIFIER)
        else:
            self.variables.add(var.lower())
            if len(self.variables) == MAX_VARIABLES + 1:
                self.error(line, "more than %d variables" % MAX_VARIABLES)

    def check_arity(self, what, line, tests, ntests):
        if ntests == "none" and tests:
            self.error_once(line, "the %s takes no tests" % what)
        elif ntests == "one" and len(tests) != 1:
            self.error_once(line, "the %s needs exactly one test" % what)
        elif ntests == "list" and not tests:
            self.error_once(line, "the %s needs a test list" % what)

    def check_tests(self, tests, ntests):
        if ntests == "none":
            return ()
        return tuple(n for n in (self.test(t) for t in tests) if n is not None)

    def test(self, t):
        name, line, args, tests = t
        spec = self.tests.get(name)
        if spec is None:
            self.error(line, "unknown test '%s'" % name)
            return None
        ext, tags, kinds, optional, ntests = spec
        if not self.has(ext):
            self.error(line, "%s test requires the '%s' extension" % (name, ext))
            return None
        self.arg_failed = False
        opts, pos = self.arguments("%s test" % name, line, args, tags,
                                   kinds, optional, self.tag_table(name))
        self.check_arity("%s test" % name, line, tests, ntests)
        sub = self.check_tests(tests, ntests)
        if ntests == "list" and len(tests) < 1:
            return None
        if opts is None:
            return None
        if opts.get("match") == "regex":
            self.check_regex(line, opts, pos[-1])
        if not self.check_test(name, line, opts, pos):
            return None
        return (name, line, opts, pos, sub)

    def check_regex(self, line, opts, keys):
        """Constant regex keys are compiled now (RFC draft-ietf-sieve-regex
        5: an invalid pattern is a compile error)."""
        from pymda.sieve import regex

        casefold = opts.get("comparator", "i;ascii-casemap") == "i;ascii-casemap"
        for key in keys:
            if "variables" in self.required and "${" in key:
                continue
            try:
                regex.compile_regex(key, casefold)
            except regex.RegexError as e:
                self.error(line, "invalid regular expression '%s': %s" % (key, e))

    def check_test(self, name, line, opts, pos):
        ok = True
        if name == "size" and "over" not in opts and "under" not in opts:
            self.error(line, "size test needs :over or :under")
            ok = False
        if name == "address":
            from pymda.sieve.mail import is_address_header

            for header in pos[0]:
                if "${" not in header and not is_address_header(header):
                    self.error(line, "address test: '%s' is not an address "
                               "header" % header)
                    ok = False
        if name == "envelope":
            for part in pos[0]:
                if part.lower() not in ENVELOPE_PARTS and "${" not in part:
                    self.error(line, "envelope test: unknown envelope part '%s'" % part)
                    ok = False
        if name in ("date", "currentdate"):
            part = pos[-2].lower()
            if part not in DATE_PARTS and "${" not in part:
                self.error(line, "%s test: unknown date part '%s'" % (name, part))
                ok = False
        if "last" in opts and "index" not in opts and name != "duplicate":
            self.error(line, "%s test: :last without :index" % name)
            ok = False
        if "zone" in opts and name == "currentdate" and opts["zone"] is None:
            self.error(line, "currentdate test: :originalzone is not allowed")
            ok = False
        return ok

    # -- arguments --------------------------------------------------------

    def tag_table(self, name):
        if name in COMMAND_TAGS and name not in self.extra_names:
            return COMMAND_TAGS[name]
        if name in self.extra_names and self.extra_tags:
            return dict(TAGS, **self.extra_tags)
        return TAGS

    def arguments(self, what, line, args, allowed, kinds, optional, tags):
        opts = {}
        pos = []
        ok = True
        i = 0
        n = len(args)
        while i < n:
            kind, value, aline = args[i]
            i += 1
            if kind != "tag":
                pos.append((kind, value, aline))
                continue
            if pos:
                self.error_once(aline, "%s: tag ':%s' after positional arguments"
                                % (what, value))
                ok = False
            spec = tags.get(value)
            if spec is None or spec[0] not in allowed or not self.has(spec[3]):
                self.error_once(aline, "unknown tagged argument ':%s' for the %s"
                                % (value, what))
                ok = False
                continue
            slot, akind, tval, _ext = spec
            if slot in opts or (slot == "mod20b" and "mod20" in opts) or (
                    slot == "mod20" and "mod20b" in opts):
                if not slot.startswith("mod") or opts.get(slot) != tval:
                    self.error_once(aline, "%s: conflicting or repeated tag ':%s'"
                                    % (what, value))
                    ok = False
                continue
            if akind is None:
                opts[slot] = tval
                continue
            if i >= n or not self.kind_ok(args[i][0], akind):
                self.error_once(aline, "%s: tag ':%s' needs a %s argument"
                                % (what, value, akind))
                ok = False
                continue
            arg = self.value(args[i], akind)
            i += 1
            if slot == "match":
                if not isinstance(arg, str) or arg.lower() not in MATCH_OPS:
                    self.error_once(aline, "%s: invalid relational operator '%s'"
                                    % (what, arg))
                    ok = False
                    continue
                opts[slot] = "%s:%s" % (tval, arg.lower())
            elif slot == "comparator":
                if arg not in COMPARATORS or not self.has(COMPARATORS[arg]):
                    self.error_once(aline, "%s: unknown comparator '%s'" % (what, arg))
                    ok = False
                    continue
                opts[slot] = arg
            elif slot == "transform":
                opts[slot] = arg
            elif slot == "id":
                opts[slot] = (tval, arg)
            elif slot == "size":
                opts[tval] = arg
                opts[slot] = tval
            else:
                opts[slot] = arg
        # positional arguments
        need = len(kinds)
        if not (need - optional <= len(pos) <= need):
            self.error_once(line, "the %s needs %d positional argument(s), but %d given"
                            % (what, need, len(pos)))
            return None, ()
        kinds = kinds[need - len(pos):]
        out = []
        for (kind, value, aline), want in zip(pos, kinds):
            if not self.kind_ok(kind, want):
                self.error_once(aline, "the %s expects a %s, but a %s was given"
                                % (what, want, kind if kind != "list" else L))
                ok = False
                continue
            out.append(self.value((kind, value, aline), want))
        if "size" in opts:
            del opts["size"]
        mods = [opts.pop(k) for k in ("mod40", "mod30", "mod20", "mod20b", "mod10")
                if k in opts]
        if mods:
            opts["mods"] = tuple(mods)
        if optional and len(out) < need:
            out = [None] * (need - len(out)) + out
        if (opts.get("comparator") == "i;ascii-numeric" and
                opts.get("match") in ("contains", "matches", "regex")):
            self.error_once(line, "%s: the i;ascii-numeric comparator does not "
                            "support :%s" % (what, opts["match"]))
            ok = False
        return (opts if ok else None), tuple(out)

    @staticmethod
    def kind_ok(kind, want):
        if want == S:
            return kind == "str"
        if want == L:
            return kind in ("str", "list")
        return kind == "num"

    def value(self, arg, want):
        kind, value = arg[0], arg[1]
        if want == L:
            items = [value] if kind == "str" else value
            return tuple(self.string(s, arg[2]) for s in items)
        if want == S:
            return self.string(value, arg[2])
        return value


def compile_script(text, filename="script", extensions=None, extra=None):
    tree = parse(text, filename)
    v = _Validator(filename, extensions, extra)
    cmds = v.block(tree, True)
    if v.errors:
        exc = SieveCompileError(v.errors[0][2], filename, v.errors[0][1])
        exc.errors = v.errors
        raise exc
    return (tuple(sorted(v.required)), cmds)
