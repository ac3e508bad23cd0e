"""Small helpers shared by the private servers of tests/support.

``private_top(prefix, account)`` -> (directory, uid, gid): a fresh
temporary directory (0755) owned by the system ``account`` the server
runs as.  ``terminate(proc, timeout, sig)``: ``sig`` (SIGTERM), then SIGKILL after
``timeout`` seconds; no-op for None or an exited process.
``start_server(argv, log, signal, **popen)``: Popen a private server in
the foreground that the kernel stops (``signal``, by name) when this
process dies, however it dies (SIGKILL, a CI timeout's SIGTERM): the
servers of a killed session are never left running.  Through util-linux
``setpriv --pdeathsig``; call it from the thread that will stop the
server (the signal follows the thread that forked).  A server that
changes its ids itself loses the setting (the kernel clears it): start
it as its own account (``user=``, ``group=``).
``tail(path)``: the end of a log file ("" when unreadable).
``free_port()``: a 127.0.0.1 TCP port that was free a moment ago.
``run_clients(client, count, timeout)``: ``client(n)`` for n in
range(count), each in its own thread, all started, then all joined.
``socket_activation()`` -> (listener, port, argv prefix): a listening
127.0.0.1 socket and the command that hands it to a daemon as systemd
does (fd 3, ``LISTEN_FDS=1``, ``LISTEN_PID`` the daemon's own pid); pass
``pass_fds=[listener.fileno()]`` and close the listener once started.
"""

import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import threading


def private_top(prefix, account):
    pw = pwd.getpwnam(account)
    top = tempfile.mkdtemp(prefix=prefix)
    os.chmod(top, 0o755)
    os.chown(top, pw.pw_uid, pw.pw_gid)
    return top, pw.pw_uid, pw.pw_gid


SETPRIV = "/usr/bin/setpriv"


def start_server(argv, log, signal_name="TERM", **popen):
    with open(log, "ab") as out:
        return subprocess.Popen([SETPRIV, "--pdeathsig", signal_name, "--", *argv],
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, **popen)


def terminate(proc, timeout=60, sig=signal.SIGTERM):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, size=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-size:]
    except OSError:
        return ""


def socket_activation():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    # LISTEN_PID must be the server's own pid: the wrapper sets it, then execs.
    wrapper = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
               "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
               "os.execv(sys.argv[2], sys.argv[2:])")
    prefix = [sys.executable, "-c", wrapper, str(listener.fileno())]
    return listener, listener.getsockname()[1], prefix


def run_clients(client, count, timeout):
    threads = [threading.Thread(target=client, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
