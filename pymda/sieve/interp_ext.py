"""The interpreter's less used commands and tests, imported at their
first use (pymda.sieve.interp's ``_later``): ``set`` and its modifiers,
``string`` and ``${...}`` expansion (variables, RFC 5229), ``include`` /
``return`` / ``global`` (RFC 6609), ``vacation`` (RFC 5230), ``hasflag``
(RFC 5232), ``date`` / ``currentdate`` (RFC 5260), ``body`` (RFC 5173),
``mailboxexists`` (RFC 5490), ``duplicate`` (RFC 7352).

WHY a module of its own: a delivery loads the interpreter for every
message of a user with a script, and a typical filter (``header``,
``address``, ``envelope``, ``fileinto``, flags) needs none of these; its
import cost is part of every such delivery (docs/sieve.md "Speed").

Each function is ``fn(interpreter, node)``, as the ones in interp (see
there for the compiled node shapes and the Interpreter's state).
"""

from pymda.sieve import result as R
from pymda.sieve.interp import (_Return, _Scope, _flag_set, _match,
                                _select_index)


MAX_EXPANDED = 1 << 20      # Pigeonhole's string limit (1 MiB)


def replace_references(s, value, limit=None):
    """``s`` with each ``${...}`` replaced by ``value(inner text)``; a
    reference for which ``value`` returns None, or that has no ``}``, stays
    as written.  ``limit``: once the replacements pass that many
    characters, the result is cut there.  The scanner of both variable
    references (RFC 5229, at run time) and encoded characters (RFC 5228
    2.4.2.4, pymda.sieve.validate.decode_encoded, at compile time)."""
    out = []
    size = 0
    i = 0
    while True:
        if limit is not None and size > limit:
            return "".join(out)[:limit]
        j = s.find("${", i)
        if j < 0:
            out.append(s[i:])
            break
        out.append(s[i:j])
        k = s.find("}", j + 2)
        if k < 0:
            out.append(s[j:])
            break
        replacement = value(s[j + 2:k])
        if replacement is None:
            out.append("${")
            i = j + 2
        else:
            out.append(replacement)
            size += len(replacement)
            i = k + 1
    return "".join(out)


def expand_variables(s, variables, match_values):
    """RFC 5229 3: replace ``${name}`` / ``${N}``; unknown variables are
    "", a malformed reference stays as written, namespaced names other
    than ours are left as written.  SECURITY: the result is cut at
    MAX_EXPANDED characters (a 1 MiB script of ``${a}`` references to
    4 KiB values would otherwise build a gigabyte)."""
    def value(name):
        if name.isdigit() and name.isascii():
            idx = int(name)
            return match_values[idx] if idx < len(match_values) else ""
        if _identifier(name) or (name[:7].lower() == "global."
                                 and _identifier(name[7:])):
            return variables.get(name.lower(), "")
        return None

    return replace_references(s, value, MAX_EXPANDED)


def _identifier(name):
    if not name:
        return False
    c = name[0]
    if not (c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z")):
        return False
    for c in name:
        if not (c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z")
                or ("0" <= c <= "9")):
            return False
    return True


def cmd_vacation(it, cmd):
    opts = cmd[2]
    reason = cmd[3][0]
    period = None
    if "seconds" in opts:
        period = opts["seconds"]
    elif "days" in opts:
        period = opts["days"] * 86400
    handle = opts.get("handle")
    if handle is None:
        # RFC 5230 4.2: built from the unexpanded arguments
        handle = "%s\0%s\0%s\0%d" % (reason, opts.get("subject", ""),
                                      opts.get("from", ""), bool(opts.get("mime")))
    subject = opts.get("subject")
    from_addr = opts.get("from")
    it.add_action(R.Vacation(
        reason=it.expand(reason),
        subject=None if subject is None else it.expand(subject),
        from_addr=None if from_addr is None else it.expand(from_addr),
        addresses=tuple(it.expand_list(opts.get("addresses", ()))),
        period=period, mime=bool(opts.get("mime")), handle=handle,
        line=cmd[1]), False)


def cmd_set(it, cmd):
    name, value = cmd[3]
    value = it.expand(value)
    mods = cmd[2].get("mods", ())
    for mod in mods:
        value = _MODIFIERS[mod](value)
    it.set_variable(name, value, "quotewildcard" in mods or "quoteregex" in mods)


def _mod_quotewildcard(v):
    return v.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")


def _mod_quoteregex(v):
    return "".join("\\" + c if c in "\\^$.[]|()?*+{}" else c for c in v)


def _ascii_lower(v):
    return v.translate(_LOWER)


def _ascii_upper(v):
    return v.translate(_UPPER)


_LOWER = {c: c + 32 for c in range(65, 91)}
_UPPER = {c: c - 32 for c in range(97, 123)}

_MODIFIERS = {
    "lower": _ascii_lower,
    "upper": _ascii_upper,
    "lowerfirst": lambda v: _ascii_lower(v[:1]) + v[1:],
    "upperfirst": lambda v: _ascii_upper(v[:1]) + v[1:],
    "quotewildcard": _mod_quotewildcard,
    "quoteregex": _mod_quoteregex,
    "length": lambda v: str(len(v)),
}


def cmd_return(it, cmd):
    raise _Return()


def cmd_global(it, cmd):
    for name in it.expand_list(cmd[3][0]):
        key = name.lower()
        if key not in it.variables.names:
            it.variables.names.add(key)
            # a local value of that name is shadowed from now on
            dict.pop(it.variables, key, None)


def cmd_include(it, cmd):
    """RFC 6609: run another script in this run's result.  Scripts come
    from ``env.include_loader(location, name)`` -> ``(compiled,
    filename)`` (LookupError: no such script)."""
    opts = cmd[2]
    name = it.expand(cmd[3][0])
    location = opts.get("location", "personal")
    key = (location, name)
    if opts.get("once") and key in it.included_once:
        return
    if key in it.include_stack:
        it.fail(cmd[1], "include: circular include of %s script '%s'"
                % (location, name))
    if len(it.include_stack) >= it.opts.max_include_depth:
        it.fail(cmd[1], "include: nested deeper than %d" % it.opts.max_include_depth)
    it.includes += 1
    if it.includes > it.opts.max_includes:
        it.fail(cmd[1], "include: more than %d includes" % it.opts.max_includes)
    loader = it.env.include_loader
    try:
        if loader is None:
            raise LookupError("no script storage")
        compiled, filename = loader(location, name)
    except LookupError as e:
        if opts.get("optional"):
            return
        it.fail(cmd[1], "include: %s script '%s' not found (%s)" % (location, name, e))
    except Exception as e:          # a compile error of the included script
        lines = getattr(e, "lines", None)
        it.fail(cmd[1], "include: %s script '%s' failed to compile%s"
                % (location, name, (": " + lines()[0]) if lines else ""))
    it.included_once.add(key)
    saved = (it.requires, it.filename, it.variables, it.use_vars,
             it.include_stack, it.match_values)
    it.requires = frozenset(compiled[0])
    it.use_vars = "variables" in it.requires
    it.filename = filename
    it.variables = _Scope(it.globals)
    it.include_stack = saved[4] + (key,)
    it.match_values = []
    try:
        it.block(compiled[1])
    except _Return:
        pass
    finally:
        (it.requires, it.filename, it.variables, it.use_vars,
         it.include_stack, it.match_values) = saved


def tst_string(it, node):
    values = it.expand_list(node[3][0])
    if node[2].get("match", "").startswith("count"):
        # RFC 5229 5: empty strings are not counted
        values = [v for v in values if v != ""]
    return _match(it, node, values)


def tst_hasflag(it, node):
    varnames, keys = node[3]
    if varnames is None:
        flags = list(it.flags)
    else:
        flags = list(_flag_set([it.variables.get(v.lower(), "")
                                for v in it.expand_list(varnames)]))
    keys = it.expand_list(keys)
    if not node[2].get("match", "").startswith("count"):
        # RFC 5232 4: a key is a flag list too ("b A" is two flags)
        keys = list(_flag_set(keys))
    return _match(it, node, flags, keys)


def _date_values(it, node, utc, zone_minutes, zone_text):
    from pymda.sieve import dates

    opts = node[2]
    part = it.expand(node[3][-2]).lower()
    if "zone" in opts:
        if opts["zone"] is not None:
            z = dates.parse_zone(it.expand(opts["zone"]))
            if z is None:
                return None
            zone_minutes, zone_text = z, None
    else:
        zone_minutes, zone_text = _now(it)[1], None
    value = dates.date_part(part, utc, zone_minutes, zone_text)
    return value


def _now(it):
    if it.env.now is not None:
        return it.env.now
    from pymda.sieve import dates

    return dates.current_date()


def tst_date(it, node):
    from pymda.sieve import dates

    name = it.expand(node[3][0])
    raws = _select_index(node, it.view.headers(name))
    values = []
    for raw in raws:
        parsed = (dates.received_date(raw) if name.lower() == "received"
                  else dates.parse_date(raw))
        if parsed is None:
            continue
        v = _date_values(it, node, *parsed)
        if v is not None:
            values.append(v)
    return _match(it, node, values)


def tst_currentdate(it, node):
    utc, zone = _now(it)
    v = _date_values(it, node, utc, zone, None)
    return _match(it, node, [] if v is None else [v])


def tst_body(it, node):
    transform = node[2].get("transform", "text")
    if isinstance(transform, tuple):
        parts = it.view.body("content", list(it.expand_list(transform)))
    else:
        parts = it.view.body(transform, None)
    # RFC 5173 6: the body test never sets match variables
    saved = it.match_values
    ok = _match(it, node, parts)
    it.match_values = saved
    return ok


def tst_mailboxexists(it, node):
    exists = it.env.mailbox_exists
    for name in it.expand_list(node[3][0]):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return False        # no such mailbox can exist
        if exists is not None and not exists(name):
            return False
    return True


def tst_duplicate(it, node):
    """RFC 7352.  The id is the Message-ID (or ``:header``'s value, or
    ``:uniqueid``); the key hashes it with ``:handle``.  True when the
    key was marked within its period in ``env.memory``.  The mark (new
    expiry: now + ``:seconds``, clamped; with ``:last`` also when it was
    a duplicate) goes into ``Outcome.marks``: the delivery writes it
    only once the message is stored, so a retried delivery does not
    see its own first attempt as a duplicate."""
    opts = node[2]
    kind, value = opts.get("id", ("header", "message-id"))
    if kind == "header":
        values = it.view.headers(it.expand(value))
        if not values:
            return False
        uid = values[0]
    else:
        uid = it.expand(value)
    from pymda.sieve.memory import hashed_key

    handle = it.expand(opts["handle"]) if "handle" in opts else ""
    key = hashed_key("dup:", kind, uid, handle)
    now = _now(it)[0]
    memory = it.env.memory
    try:
        seen = memory is not None and memory.seen(key, now)
    except Exception as e:      # the state file is unusable: not a duplicate
        it.warn(node[1], "duplicate: cannot read the memory: %s"
                % (getattr(e, "text", None) or e))
        seen = False
    period = opts.get("seconds", it.opts.duplicate_period)
    period = min(period, it.opts.duplicate_max_period)
    if not seen or opts.get("last"):
        it.marks.append((key, now + period))
    return seen
