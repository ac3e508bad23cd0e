"""pymda-lmtpd's handler: LMTP recipients -> the delivery engine.

Contract: ``DeliveryHandler(cfg, log)`` is the handler lmtp.LMTPServer
calls (see protocol.py):

- ``rcpt(session, recipient, size)``: ``550 5.1.1`` for an unknown user
  (the recipient -> user rule is the one of every program:
  recipient.find_recipient); ``550 5.7.1`` when this server may not deliver
  for that user (not root, another uid); ``552 5.2.2`` (``452 4.2.2``
  with ``quota_full_tempfail``) when ``size`` more bytes would pass the
  user's quota on its main mailbox (policy.quota_action, read-only, the
  same rule as delivery and pymda-policyd); else ``250 2.1.5``.  One
  user lookup.
- ``open_spool(session, transaction)``: a message.Intake the server
  feeds DATA into as it arrives (the intake of SPEC 1.1, CRLF -> LF,
  size limit), so the message is spooled once, straight into the
  engine's spool;
- ``data(session, transaction, spool)``: finishes that intake and
  delivers it to each recipient in turn through the same pipeline as
  ``pymda`` (recipient.deliver, ``forward = lmtp_forward``; the
  recipient's ORCPT, when the client gave one, is the envelope's
  original recipient and its X-Original-To: see Recipient),
  yielding each recipient's reply (DeliveryResult.lmtp_reply) only after
  its delivery returned, i.e. after the copy is fsynced.

DELIVERY RIGHTS: a root server asks recipient.needs_own_process how to
deliver each recipient.  A plain mailbox (no ``lmtp_forward``, not a
spool mbox) is delivered in this process with a temporary switch of the
effective ids (recipient.deliver(temporary=True)).  On Linux the
switch is the delivering thread's alone (threadids.py, probed at
start): switched deliveries run in the worker threads side by side, like
a mail user's server.  Elsewhere, in a worker thread that holds the
guard alone (SWITCHED DELIVERIES: ids are per process, so nothing else
may run meanwhile: one switched delivery at a time per process;
lmtp_workers processes give the parallelism).  Anything else
forks one child per recipient; the child runs recipient.deliver, which
does what ``pymda -d`` does as root (loop check, create a missing spool
mbox as local(8) does, then the switch to the user - groups, gid, uid,
for good - before it reads .forward or touches anything of the user's),
writes its one reply line into a pipe and _exit()s.
A server running as one unprivileged mail user (virtual users whose
``uid`` is its own) delivers in a worker thread, without forking; a
recipient of another uid is refused with 550 5.7.1 at RCPT.

ERRORS: a child that dies, says nothing or says something malformed,
and any unexpected exception, become ``451 4.3.0`` for that recipient
(the MTA retries); the connection and the other recipients go on.

DUPLICATES: the same address given twice in one transaction is
delivered once and answered twice (RFC 2033 4.2 wants one reply per
RCPT).

FORK SAFETY: fork() copies one thread; a lock another thread held at
that moment stays locked in the child for ever.  The RCPT checks run in
worker threads and call into libc (passwd lookups, NSS): a fork waits
until none is running and keeps new ones out while it forks (ForkGuard).
RCPT threads never log (syslog has a libc lock); a switched delivery
logs, but it holds the guard, so no fork happens meanwhile.  The event
loop thread feeds DATA into the Intake and forks itself: it cannot be
inside syslog at the fork.  The child closes the server's sockets,
resets the signal handlers and the event loop's wakeup fd, and leaves
with _exit(), never running the parent's cleanup.

LIMITATIONS: recipients of one message are delivered one after another
(the replies must come in order anyway).
"""

import asyncio
import os
import threading

from pymda.durable import write_all
from pymda.errors import EX_SOFTWARE, DeliveryError, TempFail

RCPT_OK = "250 2.1.5 Ok"
INTERNAL_ERROR = "451 4.3.0 Internal error"
CHILD_DIED = "451 4.3.0 Delivery process died ({how})"
MAX_CHILD_REPLY = 4096


def reply_for(exc):
    """The LMTP reply line for a DeliveryError (deliver's mapping)."""
    from pymda.deliver import DeliveryResult

    return DeliveryResult(results=[], error=exc).lmtp_reply()


def preload():
    """Import the engine once, here: every forked child inherits it
    instead of importing it again (~2.5 ms per delivery otherwise)."""
    import importlib

    for name in ("address", "deliver", "forward.dotforward", "durable", "locking", "maildir",
                 "mbox", "message", "forward.pipe", "forward.sendmail", "policy.service",
                 "quota", "recipient", "resolve", "state", "users"):
        importlib.import_module("pymda." + name)


class ForkGuard:
    """Many workers at a time, or one holder (a fork, a switched
    delivery), never both (see FORK SAFETY and SWITCHED DELIVERIES)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.active = 0
        self.held = False
        self.waiting = 0  # holders waiting: new workers wait behind them

    def __enter__(self):
        with self.cond:
            while self.held or self.waiting:
                self.cond.wait()
            self.active += 1

    def __exit__(self, *exc):
        with self.cond:
            self.active -= 1
            self.cond.notify_all()

    def try_hold(self):
        """hold() without waiting: True when nothing runs right now."""
        with self.cond:
            if self.active or self.held:
                return False
            self.held = True
            return True

    def hold(self):
        """Block until no worker and no other holder runs; keep them out
        until release()."""
        with self.cond:
            self.waiting += 1
            while self.active or self.held:
                self.cond.wait()
            self.waiting -= 1
            self.held = True

    def release(self):
        with self.cond:
            self.held = False
            self.cond.notify_all()


class Recipient(str):
    """A recipient address that carries its ORCPT (``orcpt``, or None) to
    deliver_one through every delivery path (thread, switch, child)
    unchanged: it is the address everywhere else (logs, keys)."""

    def __new__(cls, address, orcpt=None):
        self = super().__new__(cls, address)
        self.orcpt = orcpt
        return self


class DeliveryHandler:
    def __init__(self, cfg, log, max_threads=100):
        self.cfg = cfg
        self.log = log
        # SECURITY: root switches to each user (temporarily, or for good in
        # a child); a server running as one mail user delivers for its own
        # uid in a worker thread (users.authorise refused the others at RCPT).
        self.as_root = os.geteuid() == 0
        # set by the server: () -> descriptors a delivery child must close
        self.inherited_fds = list
        self.guard = ForkGuard()
        self.reapers = set()
        preload()
        # Linux: switch one thread's ids, so switched deliveries run side by
        # side (threadids.py); else one at a time in the process
        self.per_thread = False
        if self.as_root:
            from pymda import users
            from pymda.lmtp.threadids import ThreadIds

            ids = ThreadIds.start()
            if ids is not None:
                users.use_thread_ids(ids)
                self.per_thread = True
        from concurrent.futures import ThreadPoolExecutor

        self.executor = ThreadPoolExecutor(max_workers=max_threads,
                                           thread_name_prefix="pymda-lmtpd")
        # without per-thread ids, switched deliveries have a thread of their
        # own: every thread of the pool may be waiting for the guard they hold
        self.switched = None
        if self.as_root and not self.per_thread:
            self.switched = ThreadPoolExecutor(max_workers=1,
                                               thread_name_prefix="pymda-switched")

    def close(self):
        self.executor.shutdown(wait=False)
        if self.switched is not None:
            self.switched.shutdown(wait=False)

    async def _in_thread(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    # -- RCPT ------------------------------------------------------------------

    async def rcpt(self, session, recipient, size):
        reply, note = await self._in_thread(self.check_recipient, recipient, size)
        if note:
            self.log.warning(f"rcpt <{recipient}>: {note}")
        return reply

    def check_recipient(self, recipient, size):
        """(reply, log note or None).  Runs in a worker thread: no logging."""
        with self.guard:
            return self._check_recipient(recipient, size)

    def _check_recipient(self, recipient, size):
        from pymda.address import INBOX
        from pymda.policy import service as policy
        from pymda.recipient import find_recipient
        from pymda.resolve import mailbox_target

        try:
            envelope, identity = find_recipient(self.cfg, recipient)
            target = mailbox_target(self.cfg, envelope, identity, INBOX)
            action = policy.quota_action(self.cfg, identity, target, size)
        except DeliveryError as exc:
            return reply_for(exc), None
        except Exception as exc:  # noqa: BLE001 - unreadable quota state etc.
            return INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
        if action in (policy.FULL_PERM, policy.FULL_TEMP):
            return action, None
        return RCPT_OK, None

    # -- DATA ------------------------------------------------------------------

    def open_spool(self, session, transaction):
        """The engine's intake, fed by the server as DATA arrives: the
        message is spooled once (issue 9 item 5)."""
        from pymda import message as message_mod

        return message_mod.Intake(self.cfg.message_size_limit, envelope_line=False)

    async def data(self, session, transaction, spool):
        """``spool`` is always our open_spool's Intake (the server calls
        data() only when open_spool succeeded)."""
        try:
            message = spool.finish()
        except DeliveryError as exc:
            self.log.info(f"from=<{transaction.sender}>: message refused: {exc.line()}")
            for _ in transaction.recipients:
                yield reply_for(exc)
            return
        try:
            done = {}
            for address, orcpt in zip(transaction.recipients, transaction.original_recipients):
                recipient = Recipient(address, orcpt)
                key = recipient.lower()
                if key not in done:
                    done[key] = await self._deliver(message, transaction.sender, recipient)
                yield done[key]
        finally:
            if message.fd is not None:
                os.close(message.fd)

    async def _deliver(self, message, sender, recipient):
        try:
            if not self.as_root:
                return await self._in_thread(deliver_one, self.cfg, self.log, message,
                                             sender, recipient)
            if self.per_thread:
                reply = await self._in_thread(self.thread_delivery, message, sender, recipient)
            else:
                reply = await self._deliver_switched(message, sender, recipient)
            if reply is None:
                reply = await self._deliver_in_child(message, sender, recipient)
            return reply
        except Exception as exc:  # noqa: BLE001 - 451, never a dropped connection
            self.log.error(f"to=<{recipient}>: {type(exc).__name__}: {exc}")
            return INTERNAL_ERROR

    async def _deliver_switched(self, message, sender, recipient):
        """SWITCHED DELIVERIES: in a worker thread holding the guard alone
        (no RCPT check, no other delivery runs while the process has the
        user's effective ids: they are the whole process's).  None when
        the recipient needs a child (recipient.needs_own_process)."""
        await self._hold_guard()
        try:
            job = self.switched.submit(self.switched_delivery, message, sender, recipient)
        except BaseException:
            self.guard.release()
            raise
        # released when the thread is done, even if this task is cancelled
        job.add_done_callback(lambda _: self.guard.release())
        return await asyncio.wrap_future(job)

    def thread_delivery(self, message, sender, recipient):
        """switched_delivery beside the other worker threads (the switch
        is this thread's alone); a fork waits for it (the guard)."""
        with self.guard:
            return self.switched_delivery(message, sender, recipient)

    def switched_delivery(self, message, sender, recipient):
        """The reply of a delivery with a temporary switch, or None."""
        from pymda import recipient as pipeline

        envelope = envelope_of(self.cfg, recipient, sender)
        try:
            identity = pipeline.find_user(self.cfg, envelope)
        except DeliveryError as exc:
            return reply_for(exc)
        if pipeline.needs_own_process(self.cfg, envelope, identity,
                                      forward=self.cfg.lmtp_forward):
            return None
        return deliver_one(self.cfg, self.log, message, sender, recipient, temporary=True,
                           envelope=envelope, identity=identity)

    async def _hold_guard(self):
        """Wait until no worker thread runs and keep new ones out
        (release() after)."""
        loop = asyncio.get_running_loop()
        if not self.guard.try_hold():
            held = loop.run_in_executor(None, self.guard.hold)
            try:
                await asyncio.shield(held)
            except asyncio.CancelledError:
                held.add_done_callback(lambda _: self.guard.release())
                raise

    async def _deliver_in_child(self, message, sender, recipient):
        loop = asyncio.get_running_loop()
        await self._hold_guard()
        try:
            rfd, wfd = os.pipe()
            try:
                pid = os.fork()
            except OSError:
                os.close(rfd)
                os.close(wfd)
                raise
            if pid == 0:  # the child: never returns into the server's code
                try:
                    os.close(rfd)
                    _close_quietly(self.inherited_fds())
                    _child(wfd, self.cfg, self.log, message, sender, recipient)
                finally:
                    os._exit(EX_SOFTWARE)
        finally:
            self.guard.release()  # the parent only: the child has _exit()ed
        os.close(wfd)
        # The reply line is the child's last act before _exit(), written
        # after the fsync: answer on it at once and reap in the background
        # (the kernel's teardown of a forked address space takes a while).
        output = await _read_line(loop, rfd)
        line = output.decode("utf-8", "replace").split("\n", 1)[0]
        from pymda.lmtp.protocol import valid_reply

        if output.endswith(b"\n") and valid_reply(line) and line[0] in "245":
            self._reap_later(pid, recipient)
            return line
        status = await _reap(pid)
        how = _describe_status(status)
        self.log.error(f"to=<{recipient}>: delivery process {how}, said {output[:200]!r}")
        return CHILD_DIED.format(how=how)

    def _reap_later(self, pid, recipient):
        async def reap():
            status = await _reap(pid)
            if status:
                self.log.warning(f"to=<{recipient}>: delivery process {_describe_status(status)}"
                                 " after its reply")

        task = asyncio.ensure_future(reap())
        self.reapers.add(task)
        task.add_done_callback(self.reapers.discard)

    async def wait_reaped(self):
        """Until every delivery child is reaped (before the server exits)."""
        while self.reapers:
            await asyncio.wait(set(self.reapers))


def _close_quietly(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _describe_status(status):
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    if os.WIFEXITED(status):
        return f"exit {os.WEXITSTATUS(status)}"
    return f"status {status}"


async def _read_line(loop, fd):
    """What the child writes on ``fd`` up to its first newline, or all of
    it until EOF when there is none (fd closed after)."""
    os.set_blocking(fd, False)
    done = loop.create_future()
    chunks = []

    def readable():
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data and sum(map(len, chunks)) < MAX_CHILD_REPLY:
            chunks.append(data)
            if b"\n" not in data:
                return
        elif data:
            return  # keep draining a chatty child, keep nothing more
        loop.remove_reader(fd)
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)


async def _reap(pid):
    """The child's wait status (it has closed its pipe: it is exiting)."""
    delay = 0.0005
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _child(wfd, cfg, log, message, sender, recipient):
    """In the forked child: deliver, write one reply line, _exit.

    ``log`` is the server's (syslog with the child's own pid, -v echo).
    """
    reply = INTERNAL_ERROR
    try:
        import signal

        signal.set_wakeup_fd(-1)  # the parent's event loop must not hear our signals
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _on_signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG -> 5.2.2, not death
        reply = deliver_one(cfg, log, message, sender, recipient)
    except BaseException as exc:  # noqa: BLE001 - the child's one broad catch
        if isinstance(exc, DeliveryError):
            reply = reply_for(exc)
        else:
            log.error(f"to=<{recipient}>: internal error: {type(exc).__name__}: {exc}")
    finally:
        try:
            write_all(wfd, (reply + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
        os._exit(0)


def _on_signal(signum, frame):
    # As pymda's own: an interrupted append is undone by the writer.
    raise TempFail(f"interrupted by signal {signum}", "4.3.0")


def envelope_of(cfg, recipient, sender):
    """recipient.envelope_for an LMTP recipient: a Recipient's ORCPT is
    the original recipient (and X-Original-To)."""
    from pymda import recipient as pipeline

    orcpt = getattr(recipient, "orcpt", None)
    return pipeline.envelope_for(cfg, str(recipient), sender=sender,
                                 original_recipient=orcpt, orcpt=orcpt)


def deliver_one(cfg, log, message, sender, recipient, temporary=False, envelope=None,
                identity=None):
    """Deliver to one recipient in this process; returns the reply line.

    ``temporary``: a root server's temporary switch (recipient.deliver);
    ``envelope``, ``identity``: already looked up by the caller.

    recipient.deliver does it all, as for ``pymda -d``; the one LMTP
    difference: postfix's lmtp client writes no Delivered-To, so any for
    this recipient is an earlier delivery (``own_delivered_to=False``).
    A Recipient's ORCPT is the original recipient (X-Original-To).
    Anything unexpected is raised (the caller's 451 4.3.0).
    """
    from pymda import recipient as pipeline

    if envelope is None:
        envelope = envelope_of(cfg, recipient, sender)
    result = pipeline.deliver(cfg, log, message, envelope, identity=identity,
                              forward=cfg.lmtp_forward, own_delivered_to=False,
                              temporary=temporary)
    return result.lmtp_reply()
