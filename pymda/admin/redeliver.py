"""Batch redelivery: SOURCEs -> the delivery engine, once per message, once ever.

Contract: ``redeliver(names, opts, ...)`` finds the user, switches to it
(root with ``-d``) and plans the targets ONCE (recipient.find_user,
recipient.plan_only: the pipeline every pymda program shares), then opens
and checks every source (sources.open_source) as that user and sends every
message through
exactly the engine ``pymda`` uses, in this process: ``message.read`` ->
``deliver.run`` (no loop check - SPEC 4: a saved message that was
delivered to this user before is not a loop).  It returns a ``Summary``
(delivered / skipped / failed counts, the failures with position,
Message-ID and reason, messages per second, exit code).  It never imports
click: the command line (commands.py) passes a ``progress`` object
(``start(total)``, ``update(n)``, ``finish()``).

PRIVILEGE (docs/redeliver.md): a SOURCE is opened and read with the
rights of the user the mail is for -- after the switch, so every component
of its path (a symlink, the directories above it, a Maildir's ``new/`` and
``cur/`` and their files) is resolved as that user, with the user's uid and
primary group and no supplementary groups, as a delivery runs.  What the
user could not read is refused as a bad SOURCE (``failed: NAME: cannot
open: Permission denied``), nothing delivered from it: root must not hand
a user ``/etc/shadow`` because ``~/old.mbox`` points there.  Without
``-d`` (or with ``-d root``) nothing is switched: root reads what root can.
Standard input (``-``) was opened by the admin's shell: whatever it holds
is delivered (the way to give a user a file only root can read).

A SOURCE that is one of the target mailboxes (same device and inode: a
Maildir or mbox redelivered into itself) is refused like a bad source:
each run would otherwise add a copy of every message.

Sender, per message: ``-f``, else the message's leading ``Return-Path:``,
else the sender of its mbox ``From `` line, else the null sender.

DUPLICATE ELIMINATION (SPEC 4: "running it twice delivers nothing twice"):
- A message is identified by the SHA-256 of its normalised bytes (what
  ``message.read`` makes of it: From_ line removed, CRLF -> LF), without
  trailing newlines (mbox writers disagree about them: procmail stores a
  message that ends in an empty line without adding another, so a reader
  cannot tell; the same message from any source must get the same key),
  plus its
  occurrence number among identical messages of the same source: a source
  holding two byte-identical copies delivers two, a rerun none, and the
  same mbox given again (or its .gz copy) delivers nothing.
- The record is one append-only file per user, config ``redeliver_record``
  (default ``$home/.pymda-redeliver``), with a line per target and message:
  ``P <target> <sha256> <n> <hint>`` just before the engine is called and
  ``D <target> <sha256> <n>`` as soon as the engine reports the message
  written and fsynced.  ``<target>`` is 16 hex digits of the SHA-256 of the
  target: the real path of the Maildir directory or mbox file written to
  (however ``--mailbox`` spells it), the command or address otherwise.  A ``filelock`` on the same path plus
  ``.lock`` keeps two runs for one user from
  interleaving (a second run waits ``lock_timeout`` seconds, then fails).
- Killed (Ctrl-C, kill, kill -9) between ``P`` and ``D``, the message may
  or may not be in the mailbox.  The rerun looks: in a Maildir for a file
  of exactly the expected size (``S=`` in its name) and content; in an
  mbox at the offset recorded in ``<hint>`` for the expected From_ line
  and bytes.  Found: recorded, skipped; not found: delivered.
- DURABILITY: record lines are written with one ``write()`` each (the
  kernel keeps them when the process is killed) and fsynced at most once a
  second and at the end, not once per message: after a power failure the
  last second's messages may be delivered a second time by a rerun, but a
  message is never skipped that was not written.

Ctrl-C / SIGTERM / SIGHUP stop the batch between two messages; the summary
is printed and the exit status is 75: run the same command again to finish.
So does a temporary delivery failure other than a full mailbox (a locked
or refused mailbox, a full disk): it would meet every following message
too - a stuck dotlock would cost ``lock_timeout`` seconds per message.

LIMITATIONS:
- Pipes and forwards (``--forward``) cannot be checked after a kill: a
  message interrupted between P and D is sent to them again.
- A torn mbox append left by kill -9 during the write is undone by the
  next append to that mbox (docs/mbox.md: only when nothing else was
  appended after it); the message is appended again.
- The plan is made once per batch (the same targets for every message).
"""

import os
import time

from pymda.errors import EX_TEMPFAIL, DeliveryError, TempFail
from pymda.record import Record

SYNC_INTERVAL = 1.0  # seconds between fsyncs of the record
STOP_AT_FAILURE = "temporary failure"  # _Stop.signum when a failure ends the batch
EX_NOINPUT = 66  # sysexits: a SOURCE that cannot be read


class Options(Record):
    __slots__ = ("user", "mailbox", "folder", "sender", "forward", "dry_run", "sieve")
    _defaults = {
        "sieve": False,
        "user": None,
        "mailbox": None,
        "folder": None,
        "sender": None,
        "forward": False,
        "dry_run": False,
    }


class Failure(Record):
    __slots__ = ("source", "position", "message_id", "reason", "temporary")
    _defaults = {"position": None, "message_id": None, "temporary": False}

    def line(self):
        where = self.source if self.position is None else f"{self.source} {self.position}"
        mid = f" {self.message_id}" if self.message_id else ""
        return f"failed: {where}{mid}: {self.reason}"


class Summary:
    """Counts of one batch (mutable while it runs)."""

    def __init__(self):
        self.delivered = 0
        self.skipped = 0
        self.failed = 0
        self.failures = []
        self.bad_sources = 0
        self.interrupted = False
        self.stopped = False  # at a temporary failure that would repeat
        self.seconds = 0.0
        self.plan = []

    @property
    def processed(self):
        """Messages handled (a SOURCE that could not be read is no message)."""
        return self.delivered + self.skipped + self.failed - self.bad_sources

    def line(self):
        return f"{self.delivered} delivered, {self.skipped} skipped, {self.failed} failed"

    def rate_line(self):
        n = self.processed
        rate = n / self.seconds if self.seconds > 0 else 0.0
        return f"{n} messages in {self.seconds:.2f} s ({rate:.0f} messages/s)"

    @property
    def exit(self):
        if self.interrupted or self.stopped:
            return EX_TEMPFAIL
        if not self.failures:
            return 0
        if self.bad_sources and self.bad_sources == len(self.failures):
            return EX_NOINPUT
        if any(f.temporary for f in self.failures):
            return EX_TEMPFAIL
        return 77


# --- the record -------------------------------------------------------------------


def target_id(target):
    """16 hex digits naming a target in the record.

    A mailbox is named by the real path of the directory (Maildir, folder
    included) or file (mbox) written to: ``--mailbox Maildir/``,
    ``./Maildir/``, ``Maildir//`` and ``/home/alice/Maildir/`` are one
    mailbox, and a rerun spelling it differently must skip what is there.
    """
    import hashlib

    from pymda.state import target_key

    if target.kind == "maildir":
        key = "maildir:" + os.path.realpath(target.directory)
    elif target.kind == "mbox":
        key = "mbox:" + os.path.realpath(target.path)
    else:
        key = target_key(target)
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


class RecordFile:
    """The append-only record of one user (see DUPLICATE ELIMINATION)."""

    def __init__(self, path, readonly=False):
        self.path = path
        self.done = {}  # (target, sha) -> highest occurrence delivered
        self.pending = {}  # target -> (sha, n, hint)
        self.fd = None
        self.last_sync = time.monotonic()
        self.dirty = False
        self._load()
        if not readonly:
            try:
                self.fd = os.open(
                    path,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
            except OSError as exc:
                raise TempFail(f"cannot open redelivery record {path}: {exc.strerror}") from None

    def _load(self):
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise TempFail(f"cannot read redelivery record {self.path}: {exc.strerror}") from None
        done, pending = self.done, self.pending
        for line in data.split(b"\n")[:-1]:  # a torn last line has no \n
            parts = line.decode("ascii", "replace").split(" ")
            if len(parts) < 4 or not parts[3].isdigit():
                continue
            kind, tid, sha, n = parts[0], parts[1], parts[2], int(parts[3])
            if kind == "P":
                pending[tid] = (sha, n, parts[4] if len(parts) > 4 else "")
            elif kind == "D":
                if done.get((tid, sha), 0) < n:
                    done[(tid, sha)] = n
                if pending.get(tid, (None, None))[:2] == (sha, n):
                    del pending[tid]

    def _write(self, text):
        data = text.encode("ascii")
        try:
            n = os.write(self.fd, data)  # O_APPEND, one call: atomic enough
            if n != len(data):
                raise OSError(0, "short write")
        except OSError as exc:
            raise TempFail(f"cannot write redelivery record {self.path}: {exc.strerror}") from None
        self.dirty = True
        if time.monotonic() - self.last_sync >= SYNC_INTERVAL:
            self.sync()

    def begin(self, tid, sha, n, hint=""):
        self.pending[tid] = (sha, n, hint)
        self._write(f"P {tid} {sha} {n} {hint}\n")

    def finish(self, tid, sha, n):
        self.done[(tid, sha)] = max(n, self.done.get((tid, sha), 0))
        if self.pending.get(tid, (None, None))[:2] == (sha, n):
            del self.pending[tid]
        self._write(f"D {tid} {sha} {n}\n")

    def sync(self):
        if self.fd is not None and self.dirty:
            try:
                os.fdatasync(self.fd)
            except OSError as exc:
                raise TempFail(f"cannot sync redelivery record {self.path}: {exc.strerror}") from None
            self.dirty = False
        self.last_sync = time.monotonic()

    def close(self):
        if self.fd is not None:
            try:
                self.sync()
            finally:
                os.close(self.fd)
                self.fd = None


# --- recovery after a kill ------------------------------------------------------------


def _expected_bytes(message, prefix):
    if message.data is not None:
        return prefix + message.data
    return prefix + b"".join(message.chunks())


def already_in_maildir(directory, message, prefix):
    """Is there a file with exactly prefix + message in new/ or cur/?"""
    size = len(prefix) + message.size
    marker = f",S={size},"
    expected = None
    for sub in ("new", "cur"):
        d = os.path.join(directory, sub)
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if marker not in name:
                continue
            try:
                with open(os.path.join(d, name), "rb") as f:
                    data = f.read(size + 1)
            except OSError:
                continue
            if expected is None:
                expected = _expected_bytes(message, prefix)
            if data == expected:
                return True
    return False


def already_in_mbox(path, offset, message, prefix, cfg):
    """Does the mbox hold this message (From_ line, bytes) at ``offset``?"""
    from pymda.mbox import stored_chunks

    body = prefix + b"".join(stored_chunks(message, cfg)) + b"\n"
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            head = f.read(len(body) + 4096)
    except OSError:
        return False
    head = head.lstrip(b"\n")
    if not head.startswith(b"From "):
        return False
    nl = head.find(b"\n")
    return nl >= 0 and head[nl + 1 : nl + 1 + len(body)] == body


def mbox_hint(path):
    try:
        return str(os.stat(path).st_size)
    except OSError:
        return "0"


# --- the batch ------------------------------------------------------------------------


def sender_of(opts, message, item):
    """-f, else leading Return-Path, else From_ line sender, else null."""
    if opts.sender is not None:
        from pymda.address import parse_sender

        return parse_sender(opts.sender)
    for name, value in message.leading:
        if name == "return-path":
            return value.strip().strip("<>").strip()
    if item.from_sender is not None:
        return item.from_sender
    if message.from_sender is not None:
        return message.from_sender
    return ""


def build_envelope(cfg, name):
    """The Envelope for user ``name``'s own address (no extension)."""
    from pymda.recipient import envelope_for

    recipient = name if "@" in name else f"{name}@{os.uname().nodename}"
    return envelope_for(cfg, recipient, user=name, extension="")


def record_location(cfg, identity):
    """The record file: config ``redeliver_record``, $home/$user expanded."""
    from pymda.config import user_path

    template = getattr(cfg, "redeliver_record", None) or "$home/.pymda-redeliver"
    return user_path(template, identity, cfg=cfg)


def find_identity(cfg, opts):
    """The user of ``-d``, else the invoking user; authorised."""
    from pymda import recipient, users

    if opts.user:
        return recipient.find_user(cfg, build_envelope(cfg, opts.user))
    return recipient.find_user(cfg, None, users.current())


def message_sha(message):
    import hashlib

    h = hashlib.sha256()
    if message.data is not None:
        h.update(message.data.rstrip(b"\n"))
        return h.hexdigest()
    held = 0  # trailing newlines not hashed yet
    for chunk in message.chunks():
        body = chunk.rstrip(b"\n")
        if body:
            h.update(b"\n" * held + body)
            held = len(chunk) - len(body)
        else:
            held += len(chunk)
    return h.hexdigest()


def _close_message(message):
    if message is not None and message.fd is not None:
        try:
            os.close(message.fd)
        except OSError:
            pass


class _Stop:
    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        self.signum = signum


def redeliver(names, opts, cfg, log, progress=None, stdin=None, on_plan=None):
    """Run one batch; returns a Summary.  Raises DeliveryError only for
    problems that stop the whole batch (unknown user, record locked...)."""
    summary = Summary()
    started = time.monotonic()
    opened = []
    try:
        identity = find_identity(cfg, opts)
        from pymda import recipient

        envelope = build_envelope(cfg, identity.name)
        # DELIVERY RIGHTS: plan_only becomes the user before touching any
        # of its files; the batch below runs as the user.
        targets = recipient.plan_only(
            cfg, envelope, identity, folder=opts.folder, mailbox=opts.mailbox,
            forward=opts.forward, log=log,
        )
        summary.plan = targets
        plan_for = None
        if opts.sieve:
            def plan_for(message, env):
                return recipient.plan_message(cfg, log, message, env, identity,
                                              folder=opts.folder, mailbox=opts.mailbox)
        if on_plan is not None:
            on_plan(targets)
        # Sources AFTER the switch: opened with the user's rights (see
        # PRIVILEGE), checked whole, so a bad one delivers nothing.
        opened = _open_sources(names, cfg, identity, summary, stdin)
        opened = _drop_targets_as_sources(opened, targets, summary)
        total = sum(s.count for s in opened)
        record_path = record_location(cfg, identity)
        if opts.dry_run:
            record = RecordFile(record_path, readonly=True)
            _batch(opened, opts, cfg, log, envelope, targets, record, summary, progress, total,
                   plan_for)
        else:
            import filelock

            lock = filelock.FileLock(record_path + ".lock", timeout=cfg.lock_timeout, mode=0o600)
            try:
                lock.acquire()
            except filelock.Timeout:
                raise TempFail(
                    f"another redelivery for {identity.name} holds {lock.lock_file}", "4.2.0"
                ) from None
            except OSError as exc:
                raise TempFail(f"cannot lock {lock.lock_file}: {exc.strerror}") from None
            try:
                record = RecordFile(record_path)
                try:
                    _batch(opened, opts, cfg, log, envelope, targets, record, summary,
                           progress, total, plan_for)
                finally:
                    record.close()
            finally:
                lock.release()
    finally:
        for s in opened:
            s.close()
        summary.seconds = time.monotonic() - started
    return summary


def _open_sources(names, cfg, identity, summary, stdin):
    """Every SOURCE opened and checked, as the process is now: the user.

    The switch is the caller's; this refuses to run as root for another
    user, so a restructuring that moves the switch after this call fails
    loudly instead of reading sources with root's rights again.
    """
    from pymda.admin import sources

    if os.geteuid() == 0 and identity.uid != 0:
        raise TempFail(f"internal error: sources for {identity.name} opened as root", "4.3.0")
    opened = []
    try:
        for name in names:
            try:
                opened.append(sources.open_source(name, cfg.mbox_quoting, stdin=stdin))
            except sources.SourceError as exc:
                reason = str(exc).removeprefix(f"{name}: ")
                summary.failures.append(Failure(source=name, reason=reason))
                summary.failed += 1
                summary.bad_sources += 1
    except BaseException:
        for source in opened:
            source.close()
        raise
    return opened


def _drop_targets_as_sources(opened, targets, summary):
    """Refuse a SOURCE that is one of the mailboxes being delivered to.

    Redelivering a Maildir (or an mbox) into itself would add a copy of
    every message - each with a Delivered-To of its own, so a new message
    to the record - and every rerun would copy the copies.  Compared by
    device and inode, so another path to the same place is caught too.
    """
    where = set()
    for target in targets:
        path = target.directory if target.kind == "maildir" else target.path
        if target.kind not in ("maildir", "mbox"):
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue  # not there yet: cannot be a source
        where.add((st.st_dev, st.st_ino))
    kept = []
    for source in opened:
        st = source.stat()
        if st is not None and (st.st_dev, st.st_ino) in where:
            summary.failures.append(Failure(
                source=source.name,
                reason="is the mailbox being delivered to: nothing delivered from it",
            ))
            summary.failed += 1
            summary.bad_sources += 1
            source.close()
        else:
            kept.append(source)
    return kept


def _batch(opened, opts, cfg, log, envelope, targets, record, summary, progress, total,
           plan_for=None):
    import signal

    if progress is not None:
        progress.start(total)
    stop = _Stop()
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        old[sig] = signal.signal(sig, stop)
    try:
        for source in opened:
            _one_source(source, opts, cfg, log, envelope, targets, record, summary,
                        progress, stop, plan_for)
            if stop.signum is not None:
                summary.interrupted = stop.signum != STOP_AT_FAILURE
                summary.stopped = stop.signum == STOP_AT_FAILURE
                break
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if progress is not None:
            progress.finish()


def _one_source(source, opts, cfg, log, envelope, targets, record, summary, progress, stop,
                plan_for=None):
    """``plan_for(message, envelope)`` -> (targets, Sieve step or None):
    --sieve, the user's script decides each message's targets (no sends)."""
    from pymda import deliver
    from pymda import message as message_mod

    plan_targets = targets
    tids = [target_id(t) for t in targets]
    seen = {}  # sha -> occurrences in this source so far
    for item in source.items():
        if stop.signum is not None:
            return
        message = None
        try:
            try:
                message = message_mod.read(item.reader, cfg.message_size_limit)
            except DeliveryError as exc:
                _fail(summary, source, item, None, exc)
                continue
            except OSError as exc:
                _fail(summary, source, item, None, TempFail(f"cannot read: {exc.strerror or exc}"))
                continue
            sha = message_sha(message)
            n = seen[sha] = seen.get(sha, 0) + 1
            env = envelope.replace(sender=sender_of(opts, message, item))
            step = None
            if plan_for is not None:
                targets, step = plan_for(message, env)
                if step is not None and step.reject is not None:
                    step.abandon()
                    _fail(summary, source, item, message, step.reject)
                    continue
                tids = [target_id(t) for t in targets]
            else:
                targets = plan_targets
            # Maildir flags (cur/ files) are kept when every target is a Maildir.
            flags = item.flags if item.flags is not None and _keeps_flags(targets) else None
            sent = failed = 0
            for target, tid in zip(targets, tids):
                if record.done.get((tid, sha), 0) >= n:
                    continue
                if record.pending.get(tid, (None, None))[:2] == (sha, n):
                    if _recover(record, target, tid, sha, n, message, env, cfg):
                        continue
                if opts.dry_run:
                    sent += 1
                    continue
                hint = mbox_hint(target.path) if target.kind == "mbox" else str(int(time.time()))
                record.begin(tid, sha, n, hint)
                result = deliver.run([target], message, env, cfg, log, flags=flags)
                if result.error is not None:
                    failed += 1
                    _fail(summary, source, item, message, result.error, count=False)
                    if result.error.temporary and result.error.status != "4.2.2":
                        # A locked or refused mailbox, a full disk, an I/O
                        # error: the next message would meet it too (a
                        # lock timeout costs lock_timeout seconds each).
                        # Stop; a rerun finishes the job.  A full mailbox
                        # (4.2.2 with quota_full_tempfail) is the message's
                        # own: a smaller one may still fit.
                        stop.signum = STOP_AT_FAILURE
                    continue
                record.finish(tid, sha, n)
                sent += 1
            if step is not None:
                if failed or opts.dry_run:
                    step.abandon()
                else:
                    step.after()        # send=False: sends logged, skipped
            if failed:
                summary.failed += 1
            elif sent:
                summary.delivered += 1
            else:
                summary.skipped += 1
        finally:
            _close_message(message)
            if progress is not None:
                progress.update(1)


def _keeps_flags(targets):
    return all(t.kind == "maildir" for t in targets)


def _recover(record, target, tid, sha, n, message, envelope, cfg):
    """After a kill between P and D: is the message there already?"""
    from pymda.message import trace_headers

    prefix = trace_headers(message, envelope)
    found = False
    if target.kind == "maildir":
        found = already_in_maildir(target.directory, message, prefix)
    elif target.kind == "mbox":
        hint = record.pending[tid][2]
        offset = int(hint) if hint.isdigit() else 0
        found = already_in_mbox(target.path, offset, message, prefix, cfg)
    if found:
        record.finish(tid, sha, n)
    return found


def _fail(summary, source, item, message, exc, count=True):
    summary.failures.append(
        Failure(
            source=source.name,
            position=item.position,
            message_id=message.message_id if message is not None else None,
            reason=exc.line() if isinstance(exc, DeliveryError) else str(exc),
            temporary=getattr(exc, "temporary", True),
        )
    )
    if count:
        summary.failed += 1
