"""pymda-lmtpd's worker processes and their supervisor (SPEC 2, issue 12).

Contract: ``supervise(count, run_worker, log)`` forks ``count`` workers
and returns the exit status of the whole server (0 after a clean stop).
``run_worker(slot, shared)`` is called in each worker (a fresh process
forked from the supervisor, which has bound every listening socket: the
workers share them, systemd's included, and the kernel hands each new
connection to one of them); it serves until SIGTERM and returns.
``shared`` is a SharedCount for LMTPServer.shared_count.

The supervisor:
- restarts a worker that died (killed, crashed, exited on its own),
  after a pause of one second when workers keep dying within a second
  of their start (a broken configuration must not make it spin);
- on SIGTERM/SIGINT stops restarting, closes its own copies of the
  listening sockets, passes SIGTERM to every worker (each stops
  accepting and finishes its transactions, main.serve) and exits 0
  once every worker has exited;
- logs SIGHUP and ignores it (the configuration is read once).

SharedCount: ``lmtp_max_connections`` counts for the whole server.
Each worker writes its own number of open connections into its slot of
an anonymous shared mapping (one writer per slot: no lock); ``total()``
is the sum of the slots.  Two workers accepting at the very same moment
may both see room for one more: the cap can be passed by at most
``count - 1`` connections.  The slot of a dead worker is marked empty
(NO_WORKER) by the supervisor until the new worker writes its count.
``least_loaded()``: no other running worker serves fewer connections;
a worker accepts a new connection only then (protocol._Listener), so
connections spread over the workers.

LIMITATIONS: ``lmtp_max_per_address`` is still counted per worker.
Workers do not notice the death of the supervisor (systemd's stop kills
the whole cgroup; a supervisor killed by hand leaves workers serving
until they get SIGTERM).
"""

import os
import signal
import time

from pymda.errors import EX_SOFTWARE

RESTART_PAUSE = 1.0
NO_WORKER = -1  # a slot whose worker died and has not been replaced yet


class SharedCount:
    """One integer per worker in memory shared by all of them."""

    def __init__(self, slots):
        import mmap

        self.map = mmap.mmap(-1, 8 * slots)  # MAP_SHARED | MAP_ANONYMOUS
        self.cells = memoryview(self.map).cast("q")
        self.slot = 0

    def set(self, n):
        self.cells[self.slot] = n

    def total(self):
        return sum(n for n in self.cells if n > 0)

    def least_loaded(self):
        """True when no running worker serves fewer connections than this
        one (protocol._Listener takes a new connection only then)."""
        mine = self.cells[self.slot]
        return all(n < 0 or n >= mine for n in self.cells)

    def clear(self, slot):
        self.cells[slot] = NO_WORKER


def supervise(count, run_worker, log, sockets=()):
    shared = SharedCount(count)
    workers = {}  # pid -> (slot, started)
    state = {"stopping": False}

    def stop(signum, frame):
        if state["stopping"]:
            return
        state["stopping"] = True
        for sock in sockets:  # the workers' copies keep serving until they drain
            sock.close()
        for pid in list(workers):
            _kill(pid, signal.SIGTERM)

    def start(slot):
        while True:
            try:
                pid = os.fork()
                break
            except OSError as exc:  # EAGAIN, ENOMEM: never leave the workers orphaned
                if state["stopping"]:
                    return
                log.error(f"cannot start worker {slot}: {exc.strerror}; "
                          f"trying again in {RESTART_PAUSE:g} s")
                time.sleep(RESTART_PAUSE)
        if pid == 0:
            status = EX_SOFTWARE
            try:
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                shared.slot = slot
                shared.set(0)  # running, no connection yet
                run_worker(slot, shared)
                status = 0
            except BaseException as exc:  # noqa: BLE001 - the worker's last word
                if not isinstance(exc, SystemExit):
                    log.error(f"worker {slot}: {type(exc).__name__}: {exc}")
                else:
                    status = exc.code if isinstance(exc.code, int) else EX_SOFTWARE
            finally:
                os._exit(status)
        workers[pid] = (slot, time.monotonic())
        if state["stopping"]:  # SIGTERM came between fork and the line above
            _kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: log.warning(
        "SIGHUP ignored: restart pymda-lmtpd to read a changed configuration"))
    for slot in range(count):
        start(slot)
    log.info(f"supervising {count} worker processes")
    while workers:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in workers:
            continue
        slot, started = workers.pop(pid)
        shared.clear(slot)
        if state["stopping"]:
            continue
        log.error(f"worker {slot} (pid {pid}) {_describe(status)}: starting a new one")
        if time.monotonic() - started < RESTART_PAUSE:
            time.sleep(RESTART_PAUSE)
        if not state["stopping"]:
            start(slot)
    return 0


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _describe(status):
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited {os.waitstatus_to_exitcode(status)}"
