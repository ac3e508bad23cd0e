"""pymda-policyd: postfix's SMTP-time quota check (SPEC 3).

    pymda-policyd --listen inet:127.0.0.1:12340 [--listen unix:PATH] [-c FILE]
    pymda-policyd [-c FILE]          # one client on stdin/stdout (spawn(8))

Started by systemd socket activation (LISTEN_FDS), it serves the sockets
it was given (plus any --listen).  Without --listen and without systemd
sockets it serves the one client on stdin/stdout, as postfix's spawn(8)
runs it from master.cf.  SIGTERM/SIGINT stop it.

Exit status: 0 after a clean stop; 75 when the configuration cannot be
read (the message names the file and key), a socket cannot be bound, or
on an internal error (one line, never a traceback); 64 for a bad
--listen.  The protocol and the decision live in service.py.
"""

from pymda.daemon import daemon_command, internal_error, start

PROG = "pymda-policyd"


@daemon_command("Address to serve (repeatable).  None: stdin/stdout (spawn(8)).")
def policyd(listen, config_path, socket_mode_text, verbose):
    """Answer postfix policy requests with the recipient's quota state."""
    from pymda.policy import service as policy

    log, cfg, sockets = start(PROG, verbose, config_path, socket_mode_text, listen)
    try:
        if not sockets:
            policy.serve_stream(cfg, 0, 1, log)
            return
        import asyncio

        where = ", ".join(listen) or "systemd sockets"
        asyncio.run(policy.serve(cfg, sockets, log,
                                 ready=lambda: log.info(f"listening on {where}")))
    except Exception as exc:  # noqa: BLE001 - the one broad catch: 75, never a traceback
        internal_error(PROG, log, exc)


def main(argv=None):
    return policyd.main(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main()
