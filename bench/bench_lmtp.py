#!/usr/bin/python3
"""bench_lmtp.py — pymda-lmtpd: messages/s over one LMTP connection.

Usage (as root; stdlib only; well under a minute):

    /usr/bin/python3 bench/bench_lmtp.py [--n 500] [--recipients 1] [--mailbox maildir|mbox]
                                         [--message FILE] [--connections 1] [--json]

The installed ``pymda-lmtpd`` (``$PYMDA_PREFIX/bin``, default /opt/pymda)
runs as root on a unix socket, as postfix would use it; it forks a child
per recipient that becomes the user.  Throw-away users (``pbench<hex>``,
removed at the end) receive ``--n`` messages, each sent as one LMTP
transaction (MAIL, RCPT..., DATA pipelined as postfix does, then the
message and one reply per recipient) over one connection, or over
``--connections`` connections at once (one client process each).
Reported: messages/s and deliveries/s (messages x recipients), and the
median / p90 time per transaction.  Every reply must be 250 and each
mailbox must hold exactly the messages sent.

For comparison, the one-shot ``pymda`` figures are bench_delivery.py's.

Exit status 0 when the run completed, 1 when a reply or a mailbox was wrong.
"""

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = os.environ.get("PYMDA_PREFIX", "/opt/pymda")
LMTPD = os.path.join(PREFIX, "bin", "pymda-lmtpd")
SENDER = "bench@example.org"


def default_message():
    corpus = os.path.join(REPO, "..", "shared", "corpus", "real")
    try:
        names = sorted(os.listdir(corpus))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(corpus, name)
        if os.path.isfile(path) and 2000 < os.path.getsize(path) < 8000:
            with open(path, "rb") as f:
                return f.read(), path
    body = b"Subject: bench\n\n" + b"line of text for the benchmark\n" * 120
    return body, "(generated, 3.6 KB)"


def wire_body(message):
    """The message as an LMTP client sends it: CRLF, dot-stuffed, end marker."""
    if message.startswith(b"From "):
        message = message.split(b"\n", 1)[1]
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = [(b"." + l if l.startswith(b".") else l) for l in lines]
    return b"\r\n".join(out) + b"\r\n.\r\n"


class Conn:
    def __init__(self, path):
        """``path``: a unix socket path or a (host, port) tuple."""
        family = socket.AF_INET if isinstance(path, tuple) else socket.AF_UNIX
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(path)
        self.buf = b""

    def lines(self, n, every=False):
        """The last lines of the next ``n`` replies (``every``: all lines)."""
        out = []
        done = 0
        while done < n:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise common.BenchError("connection closed")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            if line[3:4] != b"-":
                done += 1
            if every or line[3:4] != b"-":
                out.append(line.decode())
        return out


def client(path, recipients, body, n, seed):
    """One connection, n transactions: list of seconds per transaction."""
    conn = Conn(path)
    conn.lines(1)
    conn.sock.sendall(b"LHLO bench.example\r\n")
    # SIZE= only when advertised, as postfix does (dovecot's lmtp has none)
    size = any(line[4:].split(" ")[0] == "SIZE" for line in conn.lines(1, every=True))
    head = (f"MAIL FROM:<{SENDER}>{f' SIZE={len(body)}' if size else ''}\r\n"
            + "".join(f"RCPT TO:<{r}>\r\n" for r in recipients) + "DATA\r\n").encode()
    times = []
    for i in range(n):
        start = time.perf_counter()
        conn.sock.sendall(head)
        replies = conn.lines(2 + len(recipients))
        if replies[-1][:3] != "354" or any(r[0] != "2" for r in replies[:-1]):
            raise common.BenchError(f"unexpected replies {replies}")
        conn.sock.sendall(b"Message-ID: <%d.%d@bench>\r\n" % (seed, i) + body)
        replies = conn.lines(len(recipients))
        times.append(time.perf_counter() - start)
        if any(not r.startswith("250 ") for r in replies):
            raise common.BenchError(f"delivery failed: {replies}")
    conn.sock.sendall(b"QUIT\r\n")
    conn.lines(1)
    conn.sock.close()
    return times


def _client_proc(args, queue):
    try:
        queue.put(("ok", client(*args)))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        queue.put(("error", repr(exc)))


def count_messages(user, kind):
    if kind == "maildir":
        return len(os.listdir(user.path("Maildir", "new")))
    with open(user.path("mbox"), "rb") as f:
        data = f.read()
    return data.count(b"\n\nFrom " + SENDER.encode()) + data.startswith(b"From ")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="messages (default 500)")
    parser.add_argument("--recipients", type=int, default=1, help="recipients per message")
    parser.add_argument("--mailbox", choices=("maildir", "mbox"), default="maildir")
    parser.add_argument("--message", help="message file (default: a corpus message)")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_lmtp.py: run as root (it creates users)")
    if not os.access(LMTPD, os.X_OK):
        sys.exit(f"bench_lmtp.py: {LMTPD} not installed (scripts/install)")
    if opts.message:
        with open(opts.message, "rb") as f:
            message, source = f.read(), opts.message
    else:
        message, source = default_message()
    body = wire_body(message)

    users = [common.create_user() for _ in range(opts.recipients)]
    workdir = tempfile.mkdtemp(prefix="bench-lmtp-")
    daemon = None
    failed = False
    try:
        cfg = os.path.join(workdir, "pymda.toml")
        with open(cfg, "w") as f:
            f.write('mailbox = "Maildir/"\n' if opts.mailbox == "maildir" else 'mailbox = "mbox"\n')
        sock = os.path.join(workdir, "lmtp.sock")
        log = open(os.path.join(workdir, "lmtpd.log"), "wb")
        daemon = subprocess.Popen([LMTPD, "-c", cfg, "--listen", f"unix:{sock}"],
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env={"PATH": "/usr/bin:/bin", "PYMDA_CACHE_DIR": workdir})
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise common.BenchError("pymda-lmtpd did not start")
            time.sleep(0.05)
        recipients = [f"{u.name}@localhost" for u in users]
        client(sock, recipients, body, 5, 999)  # warm-up (not counted)
        per = max(1, opts.n // opts.connections)
        start = time.perf_counter()
        if opts.connections == 1:
            times = client(sock, recipients, body, per, 0)
        else:
            queue = multiprocessing.Queue()
            procs = [multiprocessing.Process(target=_client_proc,
                                             args=((sock, recipients, body, per, k), queue))
                     for k in range(opts.connections)]
            for p in procs:
                p.start()
            times = []
            for _ in procs:
                status, value = queue.get(timeout=600)
                if status != "ok":
                    raise common.BenchError(value)
                times += value
            for p in procs:
                p.join()
        elapsed = time.perf_counter() - start
        sent = per * opts.connections
        for user in users:
            got = count_messages(user, opts.mailbox)
            if got != sent + 5:
                failed = True
                print(f"bench_lmtp.py: {user.name} holds {got} messages, expected {sent + 5}",
                      file=sys.stderr)
        stats = common.summarize(times)
        result = {
            "messages": sent,
            "recipients_per_message": opts.recipients,
            "connections": opts.connections,
            "mailbox": opts.mailbox,
            "message_bytes": len(message),
            "message_source": source,
            "seconds": round(elapsed, 3),
            "messages_per_second": round(sent / elapsed, 1),
            "deliveries_per_second": round(sent * opts.recipients / elapsed, 1),
            "transaction_ms": stats,
            "machine": common.machine(),
        }
        if opts.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"pymda-lmtpd, {opts.mailbox}, {opts.connections} connection(s), "
                  f"{opts.recipients} recipient(s)/message, {len(message)}-byte message "
                  f"({source})")
            print(f"  {sent} messages in {elapsed:.2f} s: {result['messages_per_second']} "
                  f"messages/s, {result['deliveries_per_second']} deliveries/s")
            print(f"  per transaction: median {stats['median_ms']} ms, p90 {stats['p90_ms']} ms")
    finally:
        common.terminate(daemon, 30)
        for user in users:
            common.delete_user(user)
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
