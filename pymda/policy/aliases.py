"""Postfix alias resolution for the SMTP-time quota check (SPEC 3 "Aliases").

Contract: ``Resolver(cfg, log).resolve(address)`` -> ``Resolution``: the
final recipients postfix will deliver ``address`` to, and the chain of
lookups that led there (for ``pymda-admin explain``).  Raises
``MapError`` when a map cannot be queried: the caller answers ``DUNNO``
and logs it, never refuses.  When ``postconf`` itself fails (no postfix
on this host, no main.cf) there are no maps to follow: the address is
its own final recipient and a warning is logged once per cache period.

The walk (``walk``) is pure: it asks a ``lookup(stage, address)``
callable for one rewriting step and never touches a process or a file.
``Resolver`` supplies that callable: ``postconf`` for the settings,
``postmap -q -`` / ``postalias -q -`` for the maps, so every map type
postfix supports (hash, lmdb, cdb, regexp, pcre, mysql, ldap, ...) answers
exactly as it answers postfix.

LOOKUP ORDER (postfix virtual(5), aliases(5), local(8); mail_addr_find):
- stage "virtual" (cleanup(8), every domain): the keys ``user+ext@domain``,
  ``user@domain``, then, when the domain is local, ``user+ext`` and
  ``user``, then ``@domain``.  Each key is tried in every map (in the
  order of ``virtual_alias_maps``) before the next key.  Pattern maps
  (regexp, pcre) see only the full address, as in postfix.  A match on a
  key without the extension appends ``+ext`` to each result when
  ``propagate_unmatched_extensions`` names ``virtual`` (the default).  A
  result ``@other`` keeps the user part; a result without ``@`` gets
  ``@$myorigin``.  Each result is looked up again; an address whose
  lookup returns itself is final for this stage.  No match: a local
  domain goes on to the alias stage, any other is final.
- stage "alias" (local(8), local domains only): keys ``user+ext`` then
  ``user`` in every map of ``alias_maps``; results are ``|command``,
  ``/file``, ``:include:/file`` (final, not pymda's), ``\\user`` (a final
  local user), a bare name (alias stage again, at ``$myorigin``) or an
  address (alias stage when its domain is local, else the virtual stage,
  as local(8) hands it back to cleanup).  No match: a final local
  recipient.
- Local domains: ``mydestination`` (names, and ``type:table`` entries
  queried with postmap) and ``myorigin`` (SPEC 3).

LOOP CONTROL: depth 20; a step back to an address already on the current
path is a loop: that branch is cut and gives no final recipient.  Past
the depth limit, or past ``MAX_NODES`` lookups for one recipient, the
branch ends in an opaque final (never a refusal).

CACHING AND PROCESSES: every (tool, map, keys) answer and the postconf
settings are kept for ``policy_alias_cache_ttl`` seconds; at most
``MAX_PROCESSES`` lookup processes run at once in one Resolver (threads
of pymda-policyd share it).  Tools come from ``postfix_command_directory``,
whatever PATH is; the environment (``MAIL_CONFIG``) is passed on.

SECURITY: the address comes from the SMTP client.  It reaches the tools
only on their standard input, one key per line (never as an argument or
through a shell); an address with white space or a control character is
not looked up at all.  Table names come from postconf.  The tools run
with pymda-policyd's rights and environment: as root, postmap can read
every table postfix can.

LIMITATIONS:
- ``inet_interfaces``/``proxy_interfaces`` address literals
  (``user@[192.0.2.1]``) are not local domains here; ``/file`` entries in
  ``mydestination`` are not read.
- Result lists are split at commas (and, in virtual maps, white space);
  quoted local parts with commas are not parsed as RFC 5322 does.
- In postfix's local(8) an alias loop ends at the local user named by the
  repeated alias; here a loop gives no final recipient (SPEC 3).
- ``:include:`` files are not read: their members are not checked.
"""

from pymda.record import Record

MAX_DEPTH = 20
MAX_NODES = 1000
MAX_PROCESSES = 4
QUERY_TIMEOUT = 10
PATTERN_TYPES = ("regexp", "pcre")
POSTCONF_NAMES = ("virtual_alias_maps", "alias_maps", "mydestination", "myorigin",
                  "recipient_delimiter", "propagate_unmatched_extensions")

VIRTUAL = "virtual_alias_maps"
ALIAS = "alias_maps"


class MapError(Exception):
    """postconf or a map could not be queried."""


class Settings(Record):
    """What the walk needs from main.cf."""
    __slots__ = ("virtual_maps", "alias_maps", "local_names", "domain_tables", "myorigin",
                 "delimiter", "propagate")


class Step(Record):
    """One rewriting: ``address`` -> ``results`` by ``key`` in ``stage`` map ``table``."""
    __slots__ = ("address", "results", "stage", "table", "key")


class Final(Record):
    """A final recipient.  ``address`` is None for a command, file or
    include (``target`` says which) and for a branch that hit a limit."""
    __slots__ = ("address", "target")
    _defaults = {"target": None}


class Resolution(Record):
    __slots__ = ("finals", "steps", "loops")

    @property
    def rewritten(self):
        return bool(self.steps)


# --- pure parts -------------------------------------------------------------------------


def split_list(value):
    """Map value -> tokens: comma separated, double quotes protect commas."""
    out, cur, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [t.strip() for t in out if t.strip()]


def _unquote(token):
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        return token[1:-1]
    return token


def split_extension(local, delimiters):
    """(user, delimiter+extension) the way postfix's strip_addr splits."""
    if not delimiters:
        return local, ""
    if "-" in delimiters and (local.startswith("owner-") or local.endswith("-request")):
        return local, ""  # postfix never splits these list names
    cut = -1
    for d in delimiters:
        i = local.find(d)
        if i > 0 and (cut < 0 or i < cut):
            cut = i
    if cut <= 0:
        return local, ""
    return local[:cut], local[cut:]


def virtual_keys(address, settings, is_local):
    """[(key, extension_to_propagate or "", partial)] in postfix's order."""
    local, _, domain = address.rpartition("@")
    user, ext = split_extension(local, settings.delimiter)
    keys = [(address, "", False)]
    if ext:
        keys.append((f"{user}@{domain}", ext, True))
    if is_local:
        keys.append((local, "", True))
        if ext:
            keys.append((user, ext, True))
    keys.append((f"@{domain}", "", True))
    return keys


def alias_keys(local, settings):
    user, ext = split_extension(local, settings.delimiter)
    keys = [(local, "", False)]
    if ext:
        keys.append((user, ext, True))
    return keys


def _with_extension(address, ext):
    if not ext:
        return address
    local, at, domain = address.rpartition("@")
    if not at:
        return address + ext
    return f"{local}{ext}@{domain}"


def rewrite_virtual(address, value, ext, settings):
    """The addresses a virtual map value stands for (RESULT ADDRESS REWRITING)."""
    results = []
    for item in split_list(value):
        for token in item.split():
            token = _unquote(token)
            if token.startswith("@") and not results:
                token = address.rpartition("@")[0] + token
            elif "@" not in token:
                token = f"{token}@{settings.myorigin}"
            if "virtual" in settings.propagate:
                token = _with_extension(token, ext)
            results.append(token)
    return results


def parse_alias_value(value, domain, ext, settings):
    """[(kind, text)] for an aliases(5) value; kind in address/user/final/other."""
    out = []
    for token in split_list(value):
        token = _unquote(token)
        if token.startswith("|") or token.startswith("/") or token.lower().startswith(":include:"):
            out.append(("other", token))
        elif token.startswith("\\"):
            out.append(("final", f"{token[1:]}@{domain}"))
        else:
            if "alias" in settings.propagate:
                token = _with_extension(token, ext)
            out.append(("address", token if "@" in token else f"{token}@{settings.myorigin}"))
    return out


def walk(address, lookup, is_local):
    """Resolution of ``address``.

    ``lookup(stage, address)`` -> None (no match) or (table, key, [(stage, address)
    or ("final", address) or ("other", target)]);  ``is_local(domain)`` -> bool.
    Raises whatever ``lookup`` raises (MapError).
    """
    finals, steps, loops = [], [], []
    seen_finals = set()
    budget = [MAX_NODES]

    def add_final(final):
        key = (final.address or "").lower(), final.target
        if key not in seen_finals:
            seen_finals.add(key)
            finals.append(final)

    def visit(stage, addr, path, depth):
        node = (stage, addr.lower())
        if node in path:
            loops.append(addr)  # LOOP CONTROL: cut, no final recipient
            return
        budget[0] -= 1
        if depth > MAX_DEPTH or budget[0] < 0:
            add_final(Final(address=None, target=f"limit reached at {addr}"))
            return
        found = lookup(stage, addr)
        if found is None:
            domain = addr.rpartition("@")[2]
            if stage == "virtual" and is_local(domain):
                visit("alias", addr, path | {node}, depth + 1)
            else:
                add_final(Final(address=addr))
            return
        table, key, results = found
        steps.append(Step(address=addr, results=tuple(r[1] for r in results),
                          stage=VIRTUAL if stage == "virtual" else ALIAS, table=table, key=key))
        for kind, value in results:
            if kind == "other":
                add_final(Final(address=None, target=value))
            elif kind == "final":
                add_final(Final(address=value))
            elif value.lower() == addr.lower():
                # maps to itself: final for this stage (postfix cleanup / local)
                if stage == "virtual" and is_local(value.rpartition("@")[2]):
                    visit("alias", value, path | {node}, depth + 1)
                else:
                    add_final(Final(address=value))
            else:
                visit(kind, value, path | {node}, depth + 1)

    visit("virtual", address, frozenset(), 0)
    return Resolution(finals=tuple(finals), steps=tuple(steps), loops=tuple(loops))


def format_chain(resolution):
    """Lines for pymda-admin explain: ``a -> b, c (virtual_alias_maps hash:/x)``."""
    lines = [f"{s.address} -> {', '.join(s.results)} ({s.stage} {s.table})"
             for s in resolution.steps]
    lines += [f"{a}: alias loop, cut (no final recipient)" for a in resolution.loops]
    for final in resolution.finals:
        if final.address is None:
            lines.append(f"final: {final.target} (not a pymda mailbox)")
    return lines


# --- I/O: postconf, postmap, postalias ----------------------------------------------------


def parse_postconf(lines):
    """Settings from ``postconf -xh`` output lines, in POSTCONF_NAMES order."""
    values = dict(zip(POSTCONF_NAMES, lines))
    if len(values) != len(POSTCONF_NAMES):
        raise MapError(f"postconf printed {len(lines)} values for {len(POSTCONF_NAMES)} names")

    def tables(text):
        return tuple(t for t in text.replace(",", " ").split() if t)

    names, domain_tables = set(), []
    for entry in tables(values["mydestination"]):
        if ":" in entry:
            domain_tables.append(entry)
        elif not entry.startswith("/"):
            names.add(entry.lower())
    myorigin = values["myorigin"].strip().lower()
    if myorigin.startswith("/"):  # Debian: myorigin = /etc/mailname
        try:
            with open(myorigin, encoding="utf-8", errors="replace") as f:
                myorigin = (f.readline().strip() or myorigin).lower()
        except OSError as exc:
            raise MapError(f"myorigin {myorigin}: {exc.strerror}") from None
    names.add(myorigin)
    return Settings(virtual_maps=tables(values["virtual_alias_maps"]),
                    alias_maps=tables(values["alias_maps"]),
                    local_names=frozenset(names), domain_tables=tuple(domain_tables),
                    myorigin=myorigin, delimiter=values["recipient_delimiter"].strip(),
                    propagate=frozenset(tables(values["propagate_unmatched_extensions"])))


def parse_query_output(text, tool):
    """``postmap -q -`` prints ``key<TAB>value``; ``postalias -q -`` ``key:<TAB>value``."""
    hits = {}
    for line in text.splitlines():
        key, tab, value = line.partition("\t")
        if not tab:
            continue
        if tool == "postalias" and key.endswith(":"):
            key = key[:-1]
        hits.setdefault(key.lower(), value.strip())
    return hits


class Resolver:
    """Settings + cached, bounded map queries + ``walk``; one per server."""

    def __init__(self, cfg, log=None):
        import threading

        self.directory = cfg.postfix_command_directory
        self.ttl = cfg.policy_alias_cache_ttl
        self.log = log
        self.slots = threading.BoundedSemaphore(MAX_PROCESSES)
        self.lock = threading.Lock()
        self.cache = {}

    # -- processes --

    def _run(self, argv, stdin):
        import subprocess

        with self.slots:
            try:
                proc = subprocess.run(argv, input=stdin.encode("utf-8", "surrogateescape"),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      timeout=QUERY_TIMEOUT, check=False)
            except (OSError, subprocess.SubprocessError) as exc:
                raise MapError(f"{argv[0]}: {exc}") from None
        err = proc.stderr.decode("utf-8", "replace").strip()
        # not found is exit 1 with nothing on stderr; a table that cannot be
        # opened or queried is a fatal: (or error:) line, and exit 1
        if proc.returncode not in (0, 1) or "fatal:" in err or "error:" in err:
            raise MapError(f"{' '.join(argv[:-1])} {argv[-1]}: "
                           f"{err.splitlines()[-1] if err else f'exit {proc.returncode}'}")
        return proc.stdout.decode("utf-8", "surrogateescape")

    def _cached(self, key, compute):
        import time

        now = time.monotonic()
        with self.lock:
            hit = self.cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        value = compute()
        with self.lock:
            if len(self.cache) > 100000:
                self.cache.clear()
            self.cache[key] = (now + self.ttl, value)
        return value

    def query(self, tool, table, keys):
        """{lowercased key: value} for the keys found in one table."""
        import os

        def compute():
            argv = [os.path.join(self.directory, tool), "-q", "-", table]
            return parse_query_output(self._run(argv, "".join(k + "\n" for k in keys)), tool)

        return self._cached((tool, table, tuple(keys)), compute)

    def settings(self):
        import os

        def compute():
            argv = [os.path.join(self.directory, "postconf"), "-xh", *POSTCONF_NAMES]
            try:
                return parse_postconf(self._run(argv, "").splitlines())
            except MapError as exc:
                # no postfix here (policyd serving a remote MTA, no main.cf):
                # no maps to follow; said once per cache period
                if self.log is not None:
                    self.log.warning(f"aliases not followed: postfix settings unreadable: {exc}")
                return None

        return self._cached(("postconf",), compute)

    # -- one step --

    def is_local(self, settings, domain):
        domain = domain.lower()
        if domain in settings.local_names:
            return True
        return any(self.query("postmap", t, [domain]) for t in settings.domain_tables)

    def _first(self, tool, tables, keys):
        """(table, key, ext, value) of the first key found in any table (key-major)."""
        found = {}
        for table in tables:
            pattern = table.partition(":")[0].lower() in PATTERN_TYPES
            ask = [k for k, _, partial in keys if not (pattern and partial)]
            if not ask:
                continue
            hits = self.query(tool, table, [k.lower() for k in ask])
            for i, (key, _, _) in enumerate(keys):
                if key.lower() in hits and i not in found:
                    found[i] = (table, hits[key.lower()])
            if 0 in found:
                break  # nothing beats the full address in an earlier table
        if not found:
            return None
        i = min(found)
        return found[i][0], keys[i][0], keys[i][1], found[i][1]

    def lookup(self, settings, stage, address):
        local, _, domain = address.rpartition("@")
        if not local or any(c.isspace() or ord(c) < 32 for c in address):
            return None  # postmap -q - reads one key per line: nothing to ask
        if stage == "virtual":
            keys = virtual_keys(address, settings, self.is_local(settings, domain))
            hit = self._first("postmap", settings.virtual_maps, keys)
            if hit is None:
                return None
            table, key, ext, value = hit
            results = rewrite_virtual(address, value, ext, settings)
            return table, key, [("virtual", r) for r in results]
        hit = self._first("postalias", settings.alias_maps, alias_keys(local, settings))
        if hit is None:
            return None
        table, key, ext, value = hit
        results = []
        for kind, text in parse_alias_value(value, domain, ext, settings):
            if kind == "address":
                local_domain = self.is_local(settings, text.rpartition("@")[2])
                kind = "alias" if local_domain else "virtual"
            results.append((kind, text))
        return table, key, results

    def resolve(self, address):
        """Resolution of one recipient address (raises MapError)."""
        settings = self.settings()
        address = address.strip().strip("<>")
        if settings is None:
            return Resolution(finals=(Final(address=address),), steps=(), loops=())
        if "@" not in address:
            address = f"{address}@{settings.myorigin}"
        return walk(address, lambda stage, a: self.lookup(settings, stage, a),
                    lambda d: self.is_local(settings, d))


def decide(resolver, recipient, decide_address, log=None):
    """The policy action for ``recipient`` with aliases resolved.

    ``decide_address(address, nouser)`` is the quota decision for one
    address.  Refuse only when every final recipient is refused; a
    recipient no map rewrites keeps the plain decision (``policy_nouser``).
    """
    dunno = "DUNNO"
    try:
        resolution = resolver.resolve(recipient)
    except MapError as exc:
        if log is not None:
            log.warning(f"recipient=<{recipient}>: alias lookup failed, answering DUNNO: {exc}")
        return dunno
    if not resolution.rewritten:
        return decide_address(recipient, None)
    if not resolution.finals or any(f.address is None for f in resolution.finals):
        return dunno
    actions = [decide_address(f.address, dunno) for f in resolution.finals]
    if any(a == dunno for a in actions):
        return dunno
    # Refused only when every final is (SPEC 3): a final whose user
    # database cannot answer now (DEFER_IF_PERMIT) may have room.
    deferred = [a for a in actions if not a[:1].isdigit()]
    return deferred[0] if deferred else actions[0]
