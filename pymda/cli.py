"""``pymda``: argv + environment -> objects -> one delivery -> exit code.

The per-message command parses its options with the standard library from
one option table (OPTIONS), the single source of truth for parsing and
--help: click costs ~20 ms to import and argparse/getopt pull in gettext
and re - more than a whole dovecot-lda delivery.

EXIT CONTRACT (SPEC 1.9): only sysexits codes; on failure exactly one
line ``D.S.N text`` on stderr (postfix reads the status from the first
bytes of the output), nothing on success.  This module holds the one
broad catch of the program: anything unexpected is ``4.3.0``, exit 75,
because postfix bounces every other status and a traceback would return
the user's mail to its sender.

Order of work: options -> config -> read ALL input (postfix counts an
early exit 0 as delivered) -> the envelope from argv and postfix's
environment -> recipient.py, the pipeline every pymda program shares
(user, loop check, switch to the user, plan, deliver).  As root, nothing
of the user's is touched before the switch.
An exit before the input was read (usage or config error) still reads
and discards it, bounded (drain_input), so the writer never sees EPIPE.
"""

import sys

from pymda import fastos as os  # not os: ~1.2 ms of start-up
from pymda.errors import EX_TEMPFAIL, DeliveryError, UsageError

# (short, long, dest, takes_value, help).  "--no-forward" is derived.
OPTIONS = (
    ("f", "from", "sender", True, 'envelope sender ("" or <> for the null sender)'),
    ("a", "recipient", "recipient", True, "envelope recipient"),
    ("d", "user", "user", True, "the user whose mail this is"),
    ("m", "folder", "folder", True, "deliver into this folder (INBOX: main mailbox)"),
    (None, "mailbox", "mailbox", True, "main mailbox (trailing / = Maildir)"),
    ("p", "path", "path", True, "read the message from FILE instead of stdin"),
    ("c", "config", "config", True, "configuration file"),
    ("o", "set", "overrides", True, "override one config key: KEY=VALUE (repeatable)"),
    (None, "forward", "forward", False, "read .forward files (--no-forward: do not)"),
    ("n", "dry-run", "dry_run", False, "print the plan, write nothing"),
    (None, "json", "json", False, "with -n: print the plan as JSON"),
    ("v", "verbose", "verbose", False, "also log to stderr"),
    ("h", "help", "help", False, "show this help"),
    (None, "version", "version", False, "show the version"),
)

_METAVAR = {"sender": "ADDR", "recipient": "ADDR", "user": "NAME", "folder": "NAME",
            "mailbox": "PATH", "path": "FILE", "config": "FILE", "overrides": "KEY=VALUE"}


def usage():
    lines = ["usage: pymda [options] < message", ""]
    for short, long, dest, takes, text in OPTIONS:
        names = (f"-{short}, " if short else "    ") + f"--{long}"
        if dest == "forward":
            names += " / --no-forward"
        if takes:
            names += " " + _METAVAR.get(dest, "VALUE")
        lines.append(f"  {names:<28} {text}")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    """Options from ``argv`` (without argv[0]) -> dict; UsageError on misuse."""
    by_short = {o[0]: o for o in OPTIONS if o[0]}
    by_long = {o[1]: o for o in OPTIONS}
    opts = {"overrides": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            if i < len(argv):
                raise UsageError(f"unexpected argument {argv[i]!r}")
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name == "no-forward" and not eq:
                opts["forward"] = False
                continue
            opt = by_long.get(name)
            if opt is None:
                raise UsageError(f"unknown option --{name}")
            if opt[3]:
                if not eq:
                    if i >= len(argv):
                        raise UsageError(f"--{name} needs a value")
                    value = argv[i]
                    i += 1
                _store(opts, opt[2], value)
            elif eq:
                raise UsageError(f"--{name} takes no value")
            else:
                opts[opt[2]] = True
            continue
        if arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                opt = by_short.get(arg[j])
                if opt is None:
                    raise UsageError(f"unknown option -{arg[j]}")
                j += 1
                if opt[3]:
                    if j < len(arg):
                        value = arg[j:]
                    elif i < len(argv):
                        value = argv[i]
                        i += 1
                    else:
                        raise UsageError(f"-{opt[0]} needs a value")
                    _store(opts, opt[2], value)
                    break
                opts[opt[2]] = True
            continue
        raise UsageError(f"unexpected argument {arg!r} (the message is read from stdin)")
    return opts


def _store(opts, dest, value):
    if dest == "overrides":
        opts["overrides"].append(value)
    else:
        opts[dest] = value


def choose_sender(opts, environ, message):
    """SPEC 1 -f default chain, with postfix's censoring undone (SPEC 1.1)."""
    from pymda.address import censor, parse_sender

    if "sender" in opts:
        given = parse_sender(opts["sender"])
    elif "SENDER" in environ:
        given = parse_sender(environ["SENDER"])
    elif message.from_sender is not None:
        return message.from_sender
    else:
        return ""
    if not given:
        return ""
    exact = [message.from_sender or ""]
    for name, value in message.leading:
        if name == "return-path":
            exact.append(value.strip().strip("<>"))
    for candidate in exact:
        if candidate and candidate != given and censor(candidate) == given:
            return candidate
    return given


def build_envelope(opts, environ, message, cfg, invoker=None):
    """The Envelope from options and postfix's environment (SPEC 1).

    ``invoker``: the Identity of a user running pymda for itself (not
    root, no ``-d``); its name is the user.  The address -> user rule is
    recipient.envelope_for's.
    """
    from pymda.recipient import envelope_for

    recipient = opts.get("recipient")
    from_env = False
    if recipient is None and environ.get("RECIPIENT"):
        recipient = environ["RECIPIENT"]
        from_env = True
    user = opts.get("user")
    if user is None and invoker is not None:
        user = invoker.name
    if recipient is None:
        if user is None:
            raise UsageError("no recipient: give -d USER or -a ADDRESS")
        recipient = f"{user}@{os.uname().nodename}"
    recipient = recipient.strip().strip("<>")
    if not recipient:
        raise UsageError("empty recipient address")
    envelope = envelope_for(
        cfg, recipient, sender=choose_sender(opts, environ, message), user=user,
        original_recipient=environ.get("ORIGINAL_RECIPIENT") if from_env else None,
        extension=environ["EXTENSION"] if from_env and "EXTENSION" in environ else None,
    )
    if not envelope.user:
        raise UsageError("empty user name")
    return envelope


def _say(line):
    try:
        os.write(2, (line.rstrip("\n") + "\n").encode("utf-8", "surrogateescape"))
    except OSError:
        pass


class _Interrupted(DeliveryError):
    """A signal: stop now (no draining of the input)."""


def _on_signal(signum, frame):
    raise _Interrupted(f"interrupted by signal {signum}", "4.3.0")


# DRAINING (SPEC 1.1, issue 8 item 9): on an early exit the unread rest of
# standard input is read and discarded, so the writer (postfix) sees its
# whole message taken and our status, not EPIPE.  Bounded: at most
# DRAIN_CAP bytes (2 x message_size_limit when that is larger) and
# DRAIN_SECONDS of waiting; not a terminal, not after a signal, not when
# the message came from -p.
DRAIN_CAP = 64 << 20
DRAIN_SECONDS = 60


def drain_input(fd=0, cap=DRAIN_CAP, seconds=DRAIN_SECONDS):
    """Read and discard ``fd`` up to EOF, ``cap`` bytes or ``seconds``."""
    import select
    import time

    try:
        if os.isatty(fd):
            return
        deadline = time.monotonic() + seconds
        total = 0
        while total < cap:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return
            data = os.read(fd, min(1 << 16, cap - total))
            if not data:
                return
            total += len(data)
    except BaseException:  # noqa: BLE001 - EOF-less pipe, EBADF, a signal: stop
        return


def _drain_after_failure(state):
    opts = state.get("opts") or {}
    if opts.get("path"):
        return
    cap = DRAIN_CAP
    cfg = state.get("cfg")
    if cfg is not None and cfg.message_size_limit:
        cap = max(cap, 2 * cfg.message_size_limit)
    drain_input(0, cap)


def check_folder_text(folder):
    """-m from argv: a name that is not valid UTF-8 is a usage error that
    shows it readably (argv bytes arrive as surrogate escapes)."""
    try:
        folder.encode("utf-8")
    except UnicodeEncodeError:
        shown = folder.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
        raise UsageError(f"folder name is not valid UTF-8: {shown}") from None


def deliver_main(argv, environ, state):
    """The program; returns the exit code (raises DeliveryError)."""
    import _signal as signal  # "signal" imports enum: ~5 ms

    # A write past RLIMIT_FSIZE must fail with EFBIG (5.2.2), not kill us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)

    opts = state["opts"] = parse_args(argv)
    if opts.get("folder") is not None:
        check_folder_text(opts["folder"])
    if opts.get("help"):
        sys.stdout.write(usage())
        return 0
    if opts.get("version"):
        from pymda import __version__

        sys.stdout.write(f"pymda {__version__}\n")
        return 0
    if opts.get("json") and not opts.get("dry_run"):
        raise UsageError("--json goes with -n")
    from pymda import config

    cfg = state["cfg"] = config.load(opts.get("config"), opts["overrides"], environ)

    from pymda.log import Log

    # SPEC 1: postfix's CLIENT_* variables serve the log line only.
    client = None
    if environ.get("CLIENT_ADDRESS"):
        client = f"{environ.get('CLIENT_HOSTNAME') or 'unknown'}[{environ['CLIENT_ADDRESS']}]"
    log = state["log"] = Log(verbose=bool(opts.get("verbose")), client=client)
    return _deliver(opts, environ, cfg, log)


def _deliver(opts, environ, cfg, log):
    from pymda import message as message_mod
    from pymda import users

    # Read everything first (postfix: exit 0 before EOF would lose mail).
    if opts.get("path"):
        try:
            fd = os.open(opts["path"], os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot open {opts['path']}: {exc.strerror}") from None
        try:
            import stat

            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise UsageError(f"{opts['path']} is a directory, not a message")
            message = message_mod.read(fd, cfg.message_size_limit)
        finally:
            os.close(fd)
    else:
        message = message_mod.read(0, cfg.message_size_limit)

    from pymda import recipient

    invoker = None
    if opts.get("user") is None and os.geteuid() != 0:
        invoker = users.current()  # a user delivering its own mail
    envelope = build_envelope(opts, environ, message, cfg, invoker)
    identity = recipient.find_user(cfg, envelope, invoker)
    folder = opts.get("folder")
    if folder is not None and folder.strip() == "":
        raise UsageError("empty folder name")
    how = {"folder": folder, "mailbox": opts.get("mailbox"),
           "forward": opts.get("forward", cfg.forward)}
    if opts.get("dry_run"):
        from pymda import resolve

        targets = recipient.plan_only(cfg, envelope, identity, log=log, message=message,
                                      **how)
        out = resolve.plan_json(targets) if opts.get("json") else resolve.format_plan(targets)
        sys.stdout.write(out)
        sys.stdout.flush()
        return 0
    result = recipient.deliver(cfg, log, message, envelope, identity, **how)
    if result.error is not None:
        raise result.error
    return 0


def main(argv=None, environ=None):
    """Entry point: never raises, never prints a traceback."""
    if argv is None:
        argv = sys.argv[1:]
    if environ is None:
        environ = os.environ
    state = {}
    try:
        code = deliver_main(argv, environ, state)
    except DeliveryError as exc:
        _say(exc.line())
        code = exc.exit
        if not isinstance(exc, _Interrupted):
            _drain_after_failure(state)
    except BaseException as exc:  # the one broad catch: never bounce on a bug
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            code = 0
        else:
            _say(f"4.3.0 internal error: {type(exc).__name__}: {exc}")
            code = EX_TEMPFAIL
            if not isinstance(exc, KeyboardInterrupt):
                _drain_after_failure(state)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        # stdout is gone (e.g. a closed pipe): point fd 1 at /dev/null, or
        # the interpreter's own flush at exit prints a second message and
        # turns the exit code into 120, which postfix would bounce on.
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
        except OSError:
            pass
    if "log" in state:
        state["log"].flush()  # -v lines come after the status line
    return code


def run_and_exit():
    """bin/pymda's entry point: main(), then exit without the interpreter's
    finalization (module teardown, ~2 ms of every delivery).  main() has
    fsynced and closed what it wrote and flushed stdout."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0 if code is None else code if isinstance(code, int) else EX_TEMPFAIL)
