"""Postfix policy delegation for quota: the protocol and the server.

PROTOCOL (postfix SMTPD_POLICY_README): a request is ``name=value`` lines
ended by an empty line; the answer is ``action=<action>`` and an empty
line; a connection carries any number of requests, answered in order.
Postfix sends ``request=smtpd_access_policy`` and some 30 attributes;
only ``recipient`` and ``size`` matter here (the nc example of SPEC 3
sends just those two).

DECISION (``decide``):
- no ``recipient`` (postfix leaves it empty at END-OF-MESSAGE when the
  message has several recipients): ``DUNNO``;
- ``policy_aliases`` (default on): the recipient is resolved through
  postfix's own alias maps first (aliases.py, SPEC 3 "Aliases"); the
  message is refused only when every final recipient is refused by the
  rules below; a map that cannot be queried: ``DUNNO`` and a log line;
- the recipient's user: extension stripped with ``recipient_delimiter``;
  a virtual user by full address (``[users."bob@example.org"]``), else
  a system user by local part (recipient.mailbox_for, the rule of every
  pymda program); unknown:
  ``policy_nouser`` (default ``DUNNO``; e.g. ``550 5.1.1 User unknown``);
- no quota for that user: ``DUNNO`` (nothing is read);
- ``size`` more bytes would pass a limit of the main mailbox (the same
  rule and the same ``maildirsize`` as delivery, quota.py):
  ``552 5.2.2 Mailbox is full`` (``452 4.2.2 ...`` with
  ``quota_full_tempfail``); else ``DUNNO``.  Never ``OK``: that would
  skip the restrictions after this one.

ERRORS: anything unexpected while deciding closes the connection without
an answer (postfix then applies ``smtpd_policy_service_default_action``,
451 4.3.5 by default, and logs it).  Malformed input never crashes the
server: a line without ``=`` is ignored (postfix never sends one), a line
over ``MAX_LINE`` bytes or a request over ``MAX_REQUEST`` bytes or
``MAX_ATTRIBUTES`` lines closes that connection, bytes that are not UTF-8
are decoded with surrogateescape (and match no user).

SECURITY: the service only reads quota state (maildirsize, a Maildir
scan when that file cannot be trusted, an mbox's size); it never writes
and never follows a symlink (quota.py).  It may run as root or as a mail
user that can read the mailboxes.

LIMITATIONS:
- The check is for the main mailbox (INBOX); the size postfix reports
  does not include the Return-Path/Delivered-To lines delivery adds (a
  few dozen bytes), so a message within those bytes of the limit can
  pass here and still be refused at delivery.
- ``recipient`` is matched by local part for system users in every
  domain: place the check where only mail for local domains reaches it
  (README "Quotas").
- Config changes need a restart.
"""

from pymda.errors import DeliveryError

MAX_LINE = 16384
MAX_REQUEST = 65536
MAX_ATTRIBUTES = 256
IDLE_TIMEOUT = 3600  # postfix closes idle policy connections after 300 s

DUNNO = "DUNNO"
FULL_PERM = "552 5.2.2 Mailbox is full"
FULL_TEMP = "452 4.2.2 Mailbox is full"


class ProtocolError(Exception):
    """The client broke the protocol limits: close the connection."""


class RequestParser:
    """Sans-I/O: ``feed(bytes)`` -> list of complete requests (dicts)."""

    def __init__(self):
        self.buffer = b""
        self.attrs = {}
        self.size = 0

    def feed(self, data):
        self.buffer += data
        requests = []
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_LINE:
                    raise ProtocolError("line too long")
                return requests
            line = self.buffer[:end]
            self.buffer = self.buffer[end + 1:]
            if len(line) > MAX_LINE:
                raise ProtocolError("line too long")
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                requests.append(self.attrs)
                self.attrs = {}
                self.size = 0
                continue
            self.size += len(line) + 1
            if self.size > MAX_REQUEST or len(self.attrs) >= MAX_ATTRIBUTES:
                raise ProtocolError("request too large")
            name, sep, value = line.partition(b"=")
            if not sep:
                continue  # not name=value: ignored
            self.attrs[name.decode("utf-8", "surrogateescape")] = value.decode(
                "utf-8", "surrogateescape")


DEFER_USERDB = "DEFER_IF_PERMIT Service temporarily unavailable"


def format_response(action):
    return f"action={action}\n\n".encode("utf-8", "surrogateescape")


def decide(cfg, attrs, resolver=None):
    """The action for one request (see the module docstring).

    With an aliases.Resolver (``policy_aliases``), the recipient is first
    resolved through postfix's alias maps (aliases.decide).
    """
    recipient = attrs.get("recipient", "").strip().strip("<>")
    if not recipient:
        return DUNNO
    try:
        size = int(attrs.get("size") or 0)
    except ValueError:
        size = 0
    size = max(size, 0)
    if resolver is not None:
        from pymda.policy import aliases

        return aliases.decide(resolver, recipient,
                              lambda address, nouser: decide_address(cfg, address, size, nouser),
                              resolver.log)
    return decide_address(cfg, recipient, size)


def decide_address(cfg, recipient, size, nouser=None):
    """The action for one final address; ``nouser`` overrides policy_nouser."""
    from pymda.recipient import mailbox_for

    try:
        identity, target = mailbox_for(cfg, recipient)
    except DeliveryError as exc:
        if exc.status in ("5.1.1", "5.7.1"):  # unknown, or a refused userdb row
            return nouser or cfg.policy_nouser or DUNNO
        if exc.status.startswith("4."):  # the userdb cannot answer now (SPEC 7)
            return DEFER_USERDB
        raise
    return quota_action(cfg, identity, target, size)


def quota_action(cfg, identity, target, size):
    """FULL_PERM (FULL_TEMP with ``quota_full_tempfail``) when ``size``
    more bytes would pass ``identity``'s limits on its main mailbox
    ``target``, else DUNNO.  Only reads (pymda-lmtpd's RCPT check too)."""
    from pymda import quota

    storage, messages = quota.limits(cfg, identity)
    if not storage and not messages:
        return DUNNO
    used_bytes, used_count = quota.usage(cfg, identity, target)
    if target.kind == "mbox":
        messages = 0
    if quota.exceeds(storage, messages, used_bytes, used_count, size):
        return FULL_TEMP if cfg.quota_full_tempfail else FULL_PERM
    return DUNNO


def make_resolver(cfg, log=None):
    """An aliases.Resolver when ``policy_aliases`` is on, else None."""
    if not cfg.policy_aliases:
        return None
    from pymda.policy import aliases

    return aliases.Resolver(cfg, log)


def describe(attrs):
    rcpt = attrs.get("recipient", "")
    return f"recipient=<{rcpt}> size={attrs.get('size', '')}"


# --- serving ----------------------------------------------------------------


def serve_stream(cfg, read_fd=0, write_fd=1, log=None):
    """One client on a pair of descriptors (postfix spawn(8)): until EOF."""
    import os

    from pymda.durable import write_all

    parser = RequestParser()
    resolver = make_resolver(cfg, log)
    while True:
        try:
            data = os.read(read_fd, 65536)
        except OSError:
            return
        requests = _requests(parser, data, log)
        if requests is None:
            return
        for attrs in requests:
            out = answer(cfg, attrs, resolver, log)
            if out is None:
                return
            try:
                write_all(write_fd, out)
            except OSError:  # the client went away (EPIPE): nothing to answer
                return


def answer(cfg, attrs, resolver=None, log=None):
    """The response bytes for one request (decided and logged), or None
    on an internal error (logged): no answer, close the connection."""
    try:
        action = decide(cfg, attrs, resolver)
    except Exception as exc:  # noqa: BLE001 - postfix applies its default action
        _log(log, "error", f"{describe(attrs)}: {exc!r}")
        return None
    if log is not None and action != DUNNO:
        log.info(f"{describe(attrs)}: action={action}")
    return format_response(action)


def _requests(parser, data, log):
    """The requests ``data`` completes; None when the connection ends (EOF,
    or a protocol error, logged)."""
    if not data:
        return None
    try:
        return parser.feed(data)
    except ProtocolError as exc:
        _log(log, "warning", f"closing connection: {exc}")
        return None


def _log(log, level, text):
    if log is not None:
        getattr(log, level)(text)


async def handle_connection(cfg, reader, writer, log=None, resolver=None):
    """Serve one connection of the asyncio server."""
    import asyncio

    loop = asyncio.get_running_loop()
    parser = RequestParser()
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT)
            except (asyncio.TimeoutError, ConnectionError):
                return
            requests = _requests(parser, data, log)
            if requests is None:
                return
            for attrs in requests:
                # Quota state is read with blocking file I/O: a thread
                # keeps one slow mailbox from stalling other clients.
                out = await loop.run_in_executor(None, answer, cfg, attrs, resolver, log)
                if out is None:
                    return
                writer.write(out)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def serve(cfg, sockets, log=None, ready=None):
    """Accept on every socket until SIGTERM/SIGINT; then stop cleanly."""
    import asyncio
    import signal
    import socket

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))

    resolver = make_resolver(cfg, log)

    async def client(reader, writer):
        await handle_connection(cfg, reader, writer, log, resolver)

    servers = []
    for sock in sockets:
        sock.setblocking(False)
        if sock.family == socket.AF_UNIX:
            servers.append(await asyncio.start_unix_server(client, sock=sock, limit=MAX_LINE))
        else:
            servers.append(await asyncio.start_server(client, sock=sock, limit=MAX_LINE))
    if ready is not None:
        ready()
    await stop
    for server in servers:
        server.close()
    for server in servers:
        try:
            # 3.12+ waits here for open connections: postfix keeps its
            # policy connections idle for minutes, so do not wait long.
            await asyncio.wait_for(server.wait_closed(), 2)
        except asyncio.TimeoutError:
            pass
