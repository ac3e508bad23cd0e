"""The Sieve step of the per-recipient pipeline (SPEC 6): a script's
result -> resolve entries, and its sends after the stores.

Called by pymda.recipient only (after the switch to the user, and only
when ``recipient.sieve_may_run`` saw a script or admin scripts: a plain
delivery never imports this package)::

    step = run(cfg, log, message, envelope, identity, main, mailbox, send=True)
    step is None             # no script after all: deliver as before
    step.reject              # PermFail 5.7.1 <reason> (reject/ereject) or None
    step.items               # entries for resolve.plan(items=...): kinds
                             # "mailbox" (keep) and "folder" (fileinto),
                             # with ``flags`` (Maildir info) and ``create``
    step.discarded           # the script stored nothing (discard)
    step.warnings            # resolve.plan appends fileinto fallbacks here
    step.plan_entries()      # Targets "redirect"/"vacation" for pymda -n
    step.report()            # warnings -> syslog and the user's sieve_log
    step.needs_ledger        # there is something to send
    step.after(done, record) # deliver.run, once every store succeeded:
                             # sends + duplicate marks; DeliveryError|None
    step.abandon()           # deliver.run, when a store failed

NEVER TWICE: ``after`` gets the completed-target ledger's ``done`` /
``record`` (deliver.run opens the ledger whenever there is something to
send, also for a single mailbox target); each send has its own key
(``sieve-redirect:ADDR``, ``sieve-vacation:ADDR``), recorded right after
sendmail accepted it, so the MTA's retry after a temporary failure sends
only what is still owed.  A redirect that sendmail refuses
temporarily is the delivery's error (exit 75: the MTA retries, the
ledger skips what was stored and sent); refused for good, it bounces the
message when the script stored no copy, else it is only logged.  A
vacation reply that fails is only logged (SPEC 6).  Without this a
redirect that failed would lose the message.  ``send=False`` (pymda -n, redeliver
--sieve): nothing is sent and no mark is written.

Errors of the script never raise: evaluate already turned them into the
implicit keep; they are in ``warnings`` with FILE:LINE.

LIMITATIONS: the global include directory is ``GLOBAL_DIR``
(``/etc/pymda/sieve``): there is no config key for it yet.  imap4flags
keywords (``$label1``...) have no Maildir info letter without dovecot's
``dovecot-keywords`` file: they are dropped with a log line; flags on an
mbox target are not written (no Status header).
A message spooled to a file (over 1 MiB) is read into memory once when
a script redirects it, answers it or runs a body test.

THE SESSION under ``run`` (the scripts' result, before it becomes
resolve entries; after the switch to the user; ``data`` is the message as
received, without a From_ line, or a callable returning it, called only
when a redirect or vacation reply is prepared; ``view`` its MailView)::

    session = evaluate(cfg, identity, envelope, data, view,
                       keep_folder="INBOX", mailbox_exists=None)
    if session is None: ...          # no filtering: deliver as before
    session.reject                   # Reject action or None -> 5.7.1 <reason>
    session.stores                   # Keep / FileInto actions to store
                                     # (empty: discarded, or rejected)
    session.sends                    # Outgoing messages (redirect, vacation)
    session.logs                     # lines for syslog
    session.write_user_log()         # errors into the user's sieve_log
    ... store session.stores ...
    session.do_sends(send, done, record, sender) -> log lines
        # sends (unless send=False: pymda -n, redeliver), marks vacation
        # memory after each successful send
    session.close(marks=True) -> log lines
        # records the duplicate marks and closes the memory: Step.after
        # writes them only when a failed redirect does not defer the
        # delivery (its retry must not see itself as a duplicate);
        # session.finish() is the two in one (tests)

``identity``: pymda.users.Identity (name, uid, home); ``envelope``:
pymda.resolve.Envelope (sender, recipient, original_recipient).  The
scripts are ``sieve_before``, the user's ``sieve_script`` (trust-checked
by ``find_script`` below) or else ``sieve_default``, then
``sieve_after`` (pymda.sieve.run.run_sequence).  ``None`` when ``sieve =
false`` or there is no script at all (the lines about scripts ignored as
untrusted are then appended to the list ``warnings``, when given).
Admin scripts (before/after/default) must be regular files owned by root
and not world-writable; others are ignored with a line in ``logs``.

``stores`` already includes the keep that replaces a redirect refused
as a loop.  A ``reject`` leaves ``stores`` empty unless an earlier
script of a sequence stored the message (then the reject was dropped,
see run.merge).

Errors never raise: a script error is in ``logs`` (and goes to the
user's log with ``write_user_log``) and the result is the implicit keep;
the per-user memory (pymda.sieve.memory, the state file) is opened only
when a script uses ``duplicate`` or a vacation reply is considered.

THE USER'S FILES (SPEC 6 "Where scripts are", "Errors"):

- ``find_script(path, owner_uids)`` -> ``(path, warning)``: ``path`` when
  the script is to run, else None.  No file, a dangling symlink or a
  symlink loop is "no filtering" (warning None).  A script that is not a
  regular file after following the link, is owned by someone else than
  ``owner_uids`` (the user and root), or is world-writable is ignored with
  a warning (the ``.forward`` rule).  stat(2) only: a cache hit never
  opens the script, so the check must not need to.  It raises nothing;
  an I/O error other than "missing" (EIO...) is a warning and no
  filtering.
- ``log_errors(log_path, lines, now)`` appends ``lines`` (``FILE:LINE:
  message``) to the user's log (``sieve_log``, default the script path +
  ``.log``, i.e. dovecot's ``~/.dovecot.sieve.log``), each line prefixed
  with the UTC time; when the log would pass ``MAX_LOG`` (10 kB, as
  dovecot) it is first renamed to ``.log.0`` (one old generation).
  Returns None, or the reason it could not write (to be logged to
  syslog: a broken user log never fails a delivery).  The log is opened
  with O_NOFOLLOW and O_APPEND, created 0600: a symlink at the log's
  place is refused, so a user cannot make pymda append to a file they
  could not write themselves (pymda runs as the user here anyway).
"""

from pymda import fastos as os
from pymda.record import Record

GLOBAL_DIR = "/etc/pymda/sieve"
CACHE_DIR = ".cache/pymda/sieve"
MAX_LOG = 10 * 1024

_S_IFMT = 0o170000
_S_IFREG = 0o100000
_S_IWOTH = 0o002


def find_script(path, owner_uids):
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno in (2, 20, 40):      # ENOENT, ENOTDIR, ELOOP
            return None, None
        return None, "sieve script %s: %s" % (path, e.strerror)
    if st.st_mode & _S_IFMT != _S_IFREG:
        return None, "sieve script %s is not a regular file: ignored" % path
    if owner_uids is not None and st.st_uid not in owner_uids:
        return None, ("sieve script %s is owned by uid %d, not by the user or "
                      "root: ignored" % (path, st.st_uid))
    if st.st_mode & _S_IWOTH:
        return None, "sieve script %s is world-writable: ignored" % path
    return path, None


def _utc(now):
    """``YYYY-MM-DD HH:MM:SS`` of a Unix time, without ``time``/``datetime``."""
    from pymda.sieve.dates import civil_from_days

    now = int(now)
    days, secs = divmod(now, 86400)
    y, m, d = civil_from_days(days)
    return "%04d-%02d-%02d %02d:%02d:%02d" % (y, m, d, secs // 3600,
                                              secs // 60 % 60, secs % 60)


def log_errors(log_path, lines, now):
    stamp = _utc(now)
    data = "".join("%s %s\n" % (stamp, line.replace("\n", " ")) for line in lines)
    data = data.encode("utf-8", "replace")
    try:
        try:
            st = os.lstat(log_path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_size + len(data) > MAX_LOG:
            os.rename(log_path, log_path + ".0")
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        return "cannot write the sieve log %s: %s" % (log_path, e.strerror)
    return None


def _expand(template, identity):
    # the one expansion recipient.sieve_may_run uses too: $home, $user,
    # $local, $domain; a relative path is under the home
    from pymda.config import user_path

    return user_path(template, identity)


def _script_dir(path):
    """The directory of the script ``path`` points to (``~/sieve/`` for
    dovecot's ``~/.dovecot.sieve`` symlink)."""
    try:
        target = os.readlink(path)
    except OSError:
        return os.path.dirname(path)
    if not target.startswith("/"):
        target = os.path.join(os.path.dirname(path), target)
    return os.path.dirname(target)


class LazyMemory:
    """Opens ``pymda.sieve.memory.SqliteMemory`` at the first use (a
    delivery whose script uses neither ``duplicate`` nor ``vacation``
    never touches the file, nor imports that module or ``sqlite3``).
    ``path`` may be a callable returning the path (computed then)."""

    def __init__(self, path, timeout=60, now=None):
        self.path = path
        self.timeout = timeout
        self.now = now              # for pruning (None: the clock)
        self.store = None

    def _open(self):
        if self.store is None:
            from pymda.sieve.memory import SqliteMemory

            path = self.path() if callable(self.path) else self.path
            self.store = SqliteMemory.open(path, self.timeout, self.now)
        return self.store

    def seen(self, key, now):
        return self._open().seen(key, now)

    def mark(self, key, expiry):
        self._open().mark(key, expiry)

    def close(self):
        if self.store is not None:
            self.store.close()
            self.store = None


class Session:
    __slots__ = ("cfg", "identity", "envelope", "outcome", "memory",
                 "reject", "stores", "sends", "logs", "user_lines", "log_path",
                 "now")

    def write_user_log(self):
        """Append the script errors to the user's ``sieve_log``; returns
        None or the reason it could not (for syslog)."""
        if not self.user_lines or not self.log_path:
            return None
        return log_errors(self.log_path, self.user_lines, self.now)

    def finish(self, send=True, done=None, record=None, sender=None):
        """Send (unless ``send`` is False), then write the duplicate
        marks.  Call only once the stores succeeded.  Returns log lines."""
        return (self.do_sends(send, done, record, sender)
                + self.close(marks=send))

    def do_sends(self, send=True, done=None, record=None, sender=None):
        """The sends of ``finish`` (vacation marks after each success);
        log lines."""
        if send and self.sends:
            from pymda.sieve import send as S

            if sender is None:
                sender = S.SendmailSender(self.cfg, self.identity.name,
                                          self.identity.home,
                                          self.envelope.recipient)
            return S.send_all(self.sends, sender, self.memory, done, record)
        return ["%s to %s: not sent (no sending in this mode)"
                % (o.kind, o.recipient) for o in self.sends]

    def close(self, marks=True):
        """Write the duplicate marks when ``marks`` (the message was
        delivered: not when the delivery is deferred, or its retry would
        see itself as a duplicate), then close the memory; log lines."""
        logs = []
        memory = self.memory
        if marks:
            for key, expiry in self.outcome.marks:
                try:
                    memory.mark(key, expiry)
                except Exception as e:
                    logs.append("duplicate: cannot record: %s"
                                % (getattr(e, "text", None) or e))
        if memory is not None:
            memory.close()
        return logs


def evaluate(cfg, identity, envelope, data, view, keep_folder="INBOX",
             mailbox_exists=None, now=None, hostname=None, warnings=None):
    if not cfg.sieve:
        return None
    from pymda.sieve import run

    logs = []
    personal_path = _expand(cfg.sieve_script, identity) if cfg.sieve_script else ""
    personal = None
    if personal_path:
        personal, warning = find_script(personal_path, (identity.uid, 0))
        if warning:
            logs.append(warning)
    default = _expand(cfg.sieve_default, identity) if cfg.sieve_default else ""
    scripts = []
    for path in run.script_list(cfg.sieve_before, personal, default,
                                     cfg.sieve_after):
        if path != personal:
            # admin scripts: root's, not world-writable (SPEC 6)
            path, warning = find_script(path, (0,))
            if warning:
                logs.append(warning)
        if path:
            scripts.append(path)
    if not scripts:
        if warnings is not None:
            warnings.extend(logs)
        return None
    if now is None:
        import time

        now = time.time()
    from pymda.sieve.interp import Environment, Options

    def state_file():
        from pymda.state import state_path     # imports os: only when used

        return state_path(cfg, identity)

    from pymda.config import SIEVE_EXTENSIONS

    # the default set is None for the cache, as for pymda-admin sieve
    # compile: its sidecars then match
    extensions = cfg.sieve_extensions
    if frozenset(extensions) == frozenset(SIEVE_EXTENSIONS):
        extensions = None
    cache_dir = os.path.join(identity.home, CACHE_DIR)
    memory = LazyMemory(state_file, cfg.lock_timeout, now)
    env = Environment(
        sender=envelope.sender or "", recipient=envelope.recipient,
        orig_recipient=getattr(envelope, "original_recipient", "") or envelope.recipient,
        mailbox_exists=mailbox_exists, memory=memory,
        include_loader=run.include_loader(
            _script_dir(personal) if personal else None, GLOBAL_DIR, cache_dir,
            extensions, cfg.sieve_max_script_size))
    opts = Options(recipient_delimiter=cfg.recipient_delimiter,
                   max_actions=cfg.sieve_max_actions,
                   max_redirects=cfg.sieve_max_redirects,
                   max_cpu_time=cfg.sieve_max_cpu_time,
                   extensions=extensions, keep_folder=keep_folder)
    outcome = run.run_sequence(
        [(p, cache_dir if p == personal else None) for p in scripts],
        view, env, opts, cfg.sieve_max_script_size)
    s = Session()
    s.cfg, s.identity, s.envelope, s.memory = cfg, identity, envelope, memory
    s.now, s.outcome = now, outcome
    s.user_lines = []
    s.log_path = (_expand(cfg.sieve_log, identity) if cfg.sieve_log
                  else (personal_path + ".log" if personal else ""))
    if outcome.error is not None:
        s.user_lines = outcome.error.lines()
        logs += outcome.error.lines()
    logs += list(outcome.warnings)
    actions = outcome.final_actions()
    s.reject = next((a for a in actions if a.kind == "reject"), None)
    s.stores = [a for a in actions if a.kind in ("keep", "fileinto")]
    s.sends = ()
    if any(a.kind in ("redirect", "vacation") for a in actions):
        from pymda.sieve import send

        plan = send.prepare(actions, send.Context(
            env=env, view=view, message=data() if callable(data) else data,
            user_address=envelope.recipient,
            settings=send.settings_from_config(cfg), memory=memory, now=now,
            hostname=hostname or _hostname(), script=outcome.script or "script"))
        s.sends = plan.outgoing
        logs += list(plan.logs)
        if plan.keep and not any(a.kind == "keep" for a in s.stores):
            from pymda.sieve.result import Keep

            s.stores.append(Keep(flags=outcome.implicit_flags, implicit=True))
    s.logs = logs
    return s


def _hostname():
    return os.uname().nodename or "localhost"


# IMAP system flags -> Maildir info letters (sorted when written)
_MAILDIR_FLAGS = {"\\seen": "S", "\\answered": "R", "\\flagged": "F",
                  "\\deleted": "T", "\\draft": "D"}


class Entry(Record):
    """One Sieve store, dotforward.Item-shaped for resolve.targets_for_items."""

    __slots__ = ("kind", "value", "source", "error", "flags", "create")
    _defaults = {"error": None, "flags": None, "create": False, "value": None}


def maildir_flags(flags, dropped=None):
    """Maildir info letters for IMAP ``flags`` ("" -> None: new/)."""
    letters = set()
    for flag in flags:
        letter = _MAILDIR_FLAGS.get(flag.lower())
        if letter:
            letters.add(letter)
        elif dropped is not None and flag.lower() != "\\recent":
            dropped.append(flag)
    return "".join(sorted(letters)) or None


def _header_block(message):
    head = message.head()
    if head.startswith(b"\n"):
        return b""
    end = head.find(b"\n\n")
    return head if end < 0 else head[:end + 2]


def _whole(message):
    if message.data is not None:
        return message.data
    return b"".join(message.chunks())


class _Recorder:
    """A sender that remembers why each message's send failed, keyed by
    (recipient, id(data)): a redirect and a vacation reply to one address
    are two sends, and only a failed redirect may defer the delivery."""

    def __init__(self, sender):
        self.sender = sender
        self.failed = {}

    def send(self, envelope_from, recipient, data):
        try:
            self.sender.send(envelope_from, recipient, data)
        except Exception as exc:
            self.failed[recipient, id(data)] = exc
            raise


class Step:
    __slots__ = ("session", "log", "send", "items", "reject", "discarded",
                 "warnings", "script", "identity")

    @property
    def needs_ledger(self):
        return bool(self.send and self.session.sends)

    def source(self, line):
        return "sieve %s line %d" % (self.script, line)

    def plan_entries(self):
        """What would be sent, as plan Targets (never delivered)."""
        from pymda.resolve import Target

        return [Target(kind=o.kind, address=o.recipient, source=self.source(o.line),
                       identity=self.identity)
                for o in self.session.sends]

    def report(self, user_log=True):
        """Warnings and script errors to syslog and (``user_log``) the
        user's sieve_log."""
        session = self.session
        for line in session.logs:
            self.log.warning("sieve: " + line)
        extra = [w for w in self.warnings if w not in session.logs]
        for line in extra:
            self.log.warning("sieve: " + line)
        if not user_log:
            return
        session.user_lines = list(session.user_lines) + extra
        why = session.write_user_log()
        if why:
            self.log.warning("sieve: " + why)

    def abandon(self):
        memory = self.session.memory
        if memory is not None:
            memory.close()

    def after(self, done=None, record=None):
        """Sends and duplicate marks; a DeliveryError when a redirect failed
        (then no duplicate mark is written)."""
        from pymda.errors import DeliveryError

        session = self.session
        sender = None
        if self.send and session.sends:
            from pymda.sieve.send import SendmailSender

            sender = _Recorder(SendmailSender(session.cfg, self.identity.name,
                                              self.identity.home,
                                              session.envelope.recipient))
        skipped = set()
        unchecked = {}          # ledger key -> why the ledger could not say
        if done is not None:
            def was_done(key):
                try:
                    if done(key):
                        skipped.add(key)
                        return True
                except DeliveryError as exc:    # not sent (never twice): retry
                    unchecked[key] = exc
                    raise
                return False
        else:
            was_done = None
        for line in session.do_sends(self.send, was_done, record, sender):
            self.log.warning("sieve: " + line)
        exc = self._redirect_failure(sender, skipped, unchecked)
        # the duplicate marks only for a delivery that is not deferred
        for line in session.close(marks=self.send and exc is None):
            self.log.warning("sieve: " + line)
        return exc

    def _redirect_failure(self, sender, skipped, unchecked):
        """Log each send; the DeliveryError of a failed redirect that
        fails the delivery (temporary, or nothing stored), else None."""
        from pymda.errors import DeliveryError, TempFail

        for out in self.session.sends if self.send else ():
            if out.ledger_key in skipped:
                self.log.info("sieve: %s to <%s>: skipped (sent by an earlier attempt)"
                              % (out.kind, out.recipient))
            elif out.ledger_key in unchecked or (out.recipient, id(out.data)) in sender.failed:
                exc = unchecked.get(out.ledger_key) or sender.failed[out.recipient, id(out.data)]
                if out.kind != "redirect":
                    continue
                if not isinstance(exc, DeliveryError):
                    exc = TempFail("redirect to %s failed: %s" % (out.recipient, exc))
                if exc.temporary or not self.items:
                    return exc
                # refused for good, but the message is stored: logged only
            else:
                self.log.info("sieve: %s to <%s>: sent (%s)"
                              % (out.kind, out.recipient, self.source(out.line)))
        return None


def run(cfg, log, message, envelope, identity, main, mailbox=None, send=True):
    """The Step for one delivery (see the module docstring), or None.

    ``main``: the Target the message goes to without a script (its folder
    is the implicit-keep folder the script sees); ``mailbox``: the
    mailbox given for this delivery (``--mailbox``), where ``fileinto``
    and ``mailboxexists`` look too.
    """
    from pymda.sieve.mail import MailView

    def mailbox_exists(name):
        from pymda import resolve
        from pymda.address import is_inbox

        if is_inbox(name):
            return True
        target, _why = resolve.sieve_folder_target(cfg, envelope, identity, main.kind, name,
                                                   mailbox)
        return target is not None and resolve.target_exists(target)

    cached = []

    def read_message():
        if not cached:
            cached.append(_whole(message))
        return cached[0]

    view = MailView(_header_block(message), message.size, read_message)

    # the bytes a redirect copies: read only then (or for a body test)
    ignored = []
    session = evaluate(cfg, identity, envelope, read_message, view,
                       keep_folder=main.folder, mailbox_exists=mailbox_exists,
                       warnings=ignored)
    if session is None:
        for line in ignored:        # untrusted scripts: syslog only
            log.warning("sieve: " + line)
        return None
    step = Step()
    step.session, step.log, step.send, step.identity = session, log, send, identity
    step.script = session.outcome.script or "script"
    step.warnings = []
    step.reject = None
    if session.reject is not None and not session.stores:
        from pymda.errors import PermFail

        reason = session.reject.reason or "rejected"
        step.reject = PermFail(" ".join(reason.split()) or "rejected", "5.7.1")
    dropped = []
    items = []
    for action in session.stores:
        flags = maildir_flags(action.flags, dropped)
        if action.kind == "keep":
            items.append(Entry(kind="mailbox", source=step.source(action.line),
                               flags=flags))
        else:
            items.append(Entry(kind="folder", value=action.folder,
                               source=step.source(action.line), flags=flags,
                               create=action.create or cfg.sieve_fileinto_create))
    if dropped:
        log.info("sieve: %s: keywords not stored (no Maildir letter): %s"
                 % (step.script, " ".join(sorted(set(dropped)))))
    step.items = items
    step.discarded = not items and step.reject is None
    return step

