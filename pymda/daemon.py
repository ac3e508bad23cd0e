"""What pymda's daemons (pymda-policyd, pymda-lmtpd) share: options, config, log.

Contract:
- ``daemon_options(listen_help)``: the click options both take: repeatable
  ``--listen``, ``-c/--config``, ``--socket-mode`` and ``-v``.
- ``load_config(path, prog)``: the Config, or exit 75 with the one
  ``D.S.N`` line naming the file and key (a daemon that cannot read its
  config must not serve with defaults).
- ``socket_mode(text, prog)``: the octal mode, or exit 64.
- ``DaemonLog(echo, ident)``: pymda.log.Log (syslog, facility mail) that
  also writes each line to stderr at once with ``echo`` (-v).

Never imported by the per-message ``pymda`` (click lives here).
"""

import os
import sys

import click

from pymda.errors import EX_TEMPFAIL, EX_USAGE, ConfigError
from pymda.log import Log


def daemon_options(listen_help):
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
        return command

    return decorate


def load_config(path, prog):
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
        click.echo(f"{prog}: --socket-mode must be octal, got {text!r}", err=True)
        sys.exit(EX_USAGE)


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
