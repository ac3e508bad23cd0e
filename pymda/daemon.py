"""What pymda's daemons (pymda-policyd, pymda-lmtpd) share: options, config, log.

Contract:
- ``daemon_command(listen_help)``: the click command with the options
  both take: repeatable ``--listen``, ``-c/--config``, ``--socket-mode``
  and ``-v`` (and ``-h``).
- ``load_config(path)``: the Config, or exit 75 with the one
  ``D.S.N`` line naming the file and key (a daemon that cannot read its
  config must not serve with defaults).
- ``socket_mode(text, prog)``: the octal mode, or exit 64.
- ``start(prog, verbose, config_path, socket_mode_text, listen)``: (log,
  config, sockets), what every daemon begins with; ``fail(prog, text,
  code)`` says ``prog: text`` on stderr and exits ``code``.
- ``listen_sockets(prog, listen, mode)``: systemd's sockets plus the
  ``--listen`` ones, bound; exit 64 for a bad ``--listen``, 75 when one
  cannot be bound or systemd passed one that is not a stream socket.
- ``internal_error(prog, log, exc)``: a daemon's one broad catch: one
  log line, ``prog: 4.3.0 internal error: ...`` on stderr, exit 75 -
  never a traceback.
- ``DaemonLog(echo, ident)``: pymda.log.Log (syslog, facility mail) that
  also writes each line to stderr at once with ``echo`` (-v).
- sockets: ``parse_listen(spec)`` (``inet:HOST:PORT`` / ``unix:PATH``),
  ``systemd_sockets()`` (socket activation, LISTEN_FDS),
  ``open_listeners(specs, unix_mode)`` (bound and listening).

Never imported by the per-message ``pymda`` (click lives here).
"""

import os
import sys

import click

from pymda.errors import EX_TEMPFAIL, EX_USAGE, ConfigError
from pymda.log import Log


def daemon_command(listen_help):
    def decorate(command):
        for option in reversed((
            click.option("--listen", "listen", multiple=True,
                         metavar="inet:HOST:PORT|unix:PATH", help=listen_help),
            click.option("-c", "--config", "config_path", metavar="FILE",
                         help="Configuration file (default $PYMDA_CONFIG, "
                              "/etc/pymda/pymda.toml)."),
            click.option("--socket-mode", "socket_mode_text", default="0666",
                         show_default=True,
                         help="Permissions of unix sockets created by --listen (octal)."),
            click.option("-v", "--verbose", is_flag=True, help="Also log to stderr."),
        )):
            command = option(command)
        return click.command(context_settings={"help_option_names": ["-h", "--help"]})(command)

    return decorate


def load_config(path):
    from pymda import config

    try:
        return config.load(path)
    except ConfigError as exc:
        click.echo(exc.line(), err=True)
        sys.exit(EX_TEMPFAIL)


def socket_mode(text, prog):
    try:
        return int(text, 8)
    except ValueError:
        fail(prog, f"--socket-mode must be octal, got {text!r}", EX_USAGE)


def start(prog, verbose, config_path, socket_mode_text, listen):
    """(DaemonLog, Config, sockets) of a daemon's command line."""
    log = DaemonLog(verbose, ident=prog)
    cfg = load_config(config_path)
    return log, cfg, listen_sockets(prog, listen, socket_mode(socket_mode_text, prog))


def fail(prog, text, code):
    click.echo(f"{prog}: {text}", err=True)
    sys.exit(code)


class DaemonLog(Log):
    """pymda.log.Log that, with ``echo``, writes each line to stderr at once."""

    def __init__(self, echo=False, ident="pymda"):
        super().__init__(False, ident=ident)
        self.echo = echo

    def _emit(self, priority, text):
        super()._emit(priority, text)
        if self.echo:
            line = text.replace("\n", " ").replace("\r", " ") + "\n"
            try:
                os.write(2, line.encode("utf-8", "surrogateescape"))
            except OSError:
                pass


# --- sockets ---------------------------------------------------------------------------

def parse_listen(spec):
    """'inet:HOST:PORT' -> ("inet", host, port); 'unix:PATH' -> ("unix", path)."""
    kind, sep, rest = spec.partition(":")
    if kind == "unix" and sep and rest:
        return ("unix", rest)
    if kind == "inet" and sep:
        host, sep, port = rest.rpartition(":")
        host = host.strip("[]")
        if sep and port.isdigit() and 0 < int(port) < 65536:
            return ("inet", host or "127.0.0.1", int(port))
    raise ValueError(f"--listen {spec!r}: use inet:HOST:PORT or unix:PATH")


def listen_sockets(prog, listen, mode):
    """systemd's sockets plus those of the ``--listen`` specs, bound and
    listening; a bad spec exits 64, a socket that cannot be bound 75."""
    try:
        for spec in listen:
            parse_listen(spec)
    except ValueError as exc:
        fail(prog, exc, EX_USAGE)
    import socket

    try:
        sockets = systemd_sockets()
        for sock in sockets:  # e.g. a socket unit's ListenDatagram=
            if sock.type != socket.SOCK_STREAM:
                fail(prog, f"cannot listen: systemd passed fd {sock.fileno()}, which is not"
                     " a stream socket", EX_TEMPFAIL)
        return sockets + open_listeners(listen, mode)
    except OSError as exc:
        fail(prog, f"cannot listen: {exc}", EX_TEMPFAIL)


def internal_error(prog, log, exc):
    """The one broad catch of a daemon: log, say it, exit 75."""
    text = f"internal error: {type(exc).__name__}: {exc}"
    log.error(text)
    fail(prog, f"4.3.0 {text}", EX_TEMPFAIL)


def systemd_sockets(environ=None):
    """Sockets passed by systemd socket activation (LISTEN_FDS), or []."""
    import os
    import socket

    environ = os.environ if environ is None else environ
    try:
        if int(environ.get("LISTEN_PID", "0")) != os.getpid():
            return []
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    return [socket.socket(fileno=3 + i) for i in range(count)]


def open_listeners(specs, unix_mode=0o666):
    """Bound, listening sockets for the --listen specs."""
    import os
    import socket
    import stat

    socks = []
    for spec in specs:
        parsed = parse_listen(spec)
        if parsed[0] == "unix":
            path = parsed[1]
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)  # stale socket of an earlier run
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, unix_mode)
        else:
            _, host, port = parsed
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.listen(128)
        socks.append(sock)
    return socks
