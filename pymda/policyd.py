"""pymda-policyd: postfix's SMTP-time quota check (SPEC 3).

    pymda-policyd --listen inet:127.0.0.1:12340 [--listen unix:PATH] [-c FILE]
    pymda-policyd [-c FILE]          # one client on stdin/stdout (spawn(8))

Started by systemd socket activation (LISTEN_FDS), it serves the sockets
it was given (plus any --listen).  Without --listen and without systemd
sockets it serves the one client on stdin/stdout, as postfix's spawn(8)
runs it from master.cf.  SIGTERM/SIGINT stop it.

Exit status: 0 after a clean stop; 75 when the configuration cannot be
read (the message names the file and key); 64 for a bad --listen.
The protocol and the decision live in policy.py.
"""

import sys

import click

from pymda.errors import EX_TEMPFAIL, EX_USAGE, ConfigError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--listen", "listen", multiple=True, metavar="inet:HOST:PORT|unix:PATH",
              help="Address to serve (repeatable).  None: stdin/stdout (spawn(8)).")
@click.option("-c", "--config", "config_path", metavar="FILE",
              help="Configuration file (default $PYMDA_CONFIG, /etc/pymda/pymda.toml).")
@click.option("--socket-mode", default="0666", show_default=True,
              help="Permissions of unix sockets created by --listen (octal).")
@click.option("-v", "--verbose", is_flag=True, help="Also log to stderr.")
def policyd(listen, config_path, socket_mode, verbose):
    """Answer postfix policy requests with the recipient's quota state."""
    from pymda import config, policy

    log = _Log(verbose)
    try:
        cfg = config.load(config_path)
    except ConfigError as exc:
        click.echo(exc.line(), err=True)
        sys.exit(EX_TEMPFAIL)
    try:
        mode = int(socket_mode, 8)
        sockets = policy.systemd_sockets() + policy.open_listeners(listen, mode)
    except ValueError as exc:
        click.echo(f"pymda-policyd: {exc}", err=True)
        sys.exit(EX_USAGE)
    except OSError as exc:
        click.echo(f"pymda-policyd: cannot listen: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    if not sockets:
        policy.serve_stream(cfg, 0, 1, log)
        return
    import asyncio

    where = ", ".join(listen) or "systemd sockets"
    asyncio.run(policy.serve(cfg, sockets, log,
                             ready=lambda: log.info(f"listening on {where}")))


class _Log:
    """syslog (facility mail, ident pymda-policyd), optionally stderr too."""

    def __init__(self, verbose):
        from pymda.log import Log

        self.log = Log(False, ident="pymda-policyd")
        self.verbose = verbose

    def _say(self, level, text):
        getattr(self.log, level)(text)
        if self.verbose:
            click.echo(f"pymda-policyd: {level}: {text}", err=True)

    def info(self, text):
        self._say("info", text)

    def warning(self, text):
        self._say("warning", text)

    def error(self, text):
        self._say("error", text)


def main(argv=None):
    return policyd.main(args=argv, prog_name="pymda-policyd")


if __name__ == "__main__":
    main()
