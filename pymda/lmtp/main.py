"""pymda-lmtpd: the LMTP delivery server (SPEC 2).

    pymda-lmtpd --listen unix:/var/spool/postfix/private/pymda-lmtp [-c FILE]
    pymda-lmtpd --listen inet:127.0.0.1:24 [--listen ...] [-c FILE]
    pymda-lmtpd [-c FILE]         # systemd socket activation (LISTEN_FDS)

Serves every --listen address plus the sockets systemd passed
(LISTEN_FDS/LISTEN_PID, sd_listen_fds(3)); with neither it is a usage
error.  A unix socket it creates gets ``--socket-mode`` (0666: put it
in a directory only the MTA can enter, such as postfix's private/) and
is removed at exit; a stale socket left by a crash is replaced.

Run as root, it delivers for every user: a plain mailbox with a
temporary switch of the effective ids; anything that runs a program of
the user's, writes a .forward file target or a spool mbox (whose lock
needs the setgid dotlockfile), in a forked child that switches for good (handler.py, recipient.needs_own_process); run as one
mail user, it delivers for the virtual users whose uid is its own.

WORKERS: with ``lmtp_workers`` (0, the default: one per CPU) above 1, a
supervisor binds the sockets and forks that many worker processes that
share them (workers.py: restarts, SIGTERM drains each one;
lmtp_max_connections counts for all of them).  With 1, this one process
serves.

Signals: SIGTERM / SIGINT stop it: no new connections, connections
between transactions get 421, transactions in flight finish (deliveries
and their replies), then it exits 0.  SIGHUP is logged and ignored (the
configuration is read once, at start).

Exit status: 0 after a clean stop; 64 for a bad --listen or none at
all; 75 when the configuration cannot be read (the message names the
file and key), a socket cannot be bound, or on an internal error (one
line ``pymda-lmtpd: 4.3.0 internal error: ...``, never a traceback).

Config keys used: message_size_limit (SIZE, 552 5.3.4),
lmtp_idle_timeout, lmtp_command_timeout, lmtp_min_data_rate,
lmtp_max_connections, lmtp_max_per_address, lmtp_forward, lmtp_workers,
and everything delivery uses (docs/lmtp.md).  Logging: syslog, facility mail, ident pymda-lmtpd (-v:
also stderr).
"""

import os
import sys

from pymda.daemon import daemon_command, fail, internal_error, parse_listen, start
from pymda.errors import EX_USAGE

PROG = "pymda-lmtpd"


@daemon_command("Address to serve (repeatable).  Also serves systemd's sockets.")
def lmtpd(listen, config_path, socket_mode_text, verbose):
    """Deliver mail received over LMTP (RFC 2033) with pymda's engine."""
    log, cfg, sockets = start(PROG, verbose, config_path, socket_mode_text, listen)
    if not sockets:
        fail(PROG, "nothing to serve: give --listen inet:HOST:PORT or unix:PATH (or start it"
             " by systemd socket activation)", EX_USAGE)
    created = [spec[1] for spec in map(parse_listen, listen) if spec[0] == "unix"]
    import asyncio

    where = ", ".join(listen) or "systemd sockets"
    count = worker_count(cfg)
    try:
        if count == 1:
            asyncio.run(serve(cfg, sockets, log, where))
        else:
            from pymda.lmtp import workers
            from pymda.lmtp.handler import preload

            preload()  # once, here: every worker shares the pages

            def run_worker(slot, shared):
                asyncio.run(serve(cfg, sockets, log, where, shared=shared))

            sys.exit(workers.supervise(count, run_worker, log, sockets))
    except Exception as exc:  # noqa: BLE001 - the one broad catch: 75, never a traceback
        internal_error(PROG, log, exc)
    finally:
        for path in created:
            _remove_socket(path)


def worker_count(cfg):
    """lmtp_workers, 0 meaning the CPUs this process may run on."""
    if cfg.lmtp_workers:
        return cfg.lmtp_workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


async def serve(cfg, sockets, log, where="", ready=None, shared=None):
    """Serve until SIGTERM/SIGINT, then finish what is in flight.
    ``shared``: the workers' connection count (workers.SharedCount)."""
    import asyncio
    import signal

    from pymda.lmtp.protocol import LMTPServer
    from pymda.lmtp.handler import DeliveryHandler

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    # SIGHUP's default would kill the server mid-conversation (and postfix
    # would deliver again what the children finished): say so instead.
    loop.add_signal_handler(signal.SIGHUP, lambda: log.warning(
        "SIGHUP ignored: restart pymda-lmtpd to read a changed configuration"))
    # A delivery child must not die of EFBIG (RLIMIT_FSIZE): 5.2.2 instead.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    handler = DeliveryHandler(cfg, log, max_threads=min(cfg.lmtp_max_connections or 100, 100))
    server = LMTPServer(
        handler,
        max_size=cfg.message_size_limit,
        idle_timeout=cfg.lmtp_idle_timeout,
        command_timeout=cfg.lmtp_command_timeout,
        min_data_rate=cfg.lmtp_min_data_rate,
        max_connections=cfg.lmtp_max_connections,
        max_per_address=cfg.lmtp_max_per_address,
        log=log,
    )
    server.shared_count = shared
    handler.inherited_fds = server.socket_fds
    await server.start(sockets)
    mode = (("switching each delivering thread to its user" if handler.per_thread
             else "switching to each user") if handler.as_root else f"as uid {os.geteuid()}")
    log.info(f"listening on {where} ({mode})")
    if ready is not None:
        ready()
    await stop
    log.info(f"stopping: finishing {len(server.tasks)} connection(s)")
    server.stop()
    await server.wait_closed()
    await handler.wait_reaped()
    handler.close()
    log.info("stopped")


def _remove_socket(path):
    import stat

    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def main(argv=None):
    return lmtpd.main(args=argv, prog_name=PROG)


if __name__ == "__main__":
    main()
