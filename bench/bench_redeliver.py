#!/usr/bin/python3
"""bench_redeliver.py — pymda-admin redeliver against formail+procmail and the fsync floor.

Usage (stdlib only; about a minute):

    /usr/bin/python3 bench/bench_redeliver.py [--n 10000] [--admin PATH] [--json]

One run measures, on the same machine and file system, in turn:

1. floor:    one Python process writing N Maildir files the durable way
             (tmp/ O_EXCL, write, fsync, link into new/, fsync new/,
             unlink tmp) -- what any correct Maildir writer must pay;
2. pymda:    ``pymda-admin redeliver --mailbox DIR/ MBOX`` of an
             N-message mbox (the corpus repeated, each copy made unique by
             an ``X-Bench`` header) into a fresh Maildir: the whole process,
             start-up and the checking pass included;
3. procmail: ``formail -s procmail RCFILE < MBOX`` doing the same job
             (Debian procmail; its rcfile delivers to a Maildir).

Each run is checked: exactly N files in the Maildir, no failure.
Targets (issue 5): pymda >= 3x formail+procmail and >= half the floor.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def corpus():
    d = Path(os.environ.get("PYMDA_CORPUS") or REPO.parent / "shared" / "corpus" / "real")
    msgs = sorted(p for p in d.iterdir() if p.suffix == ".eml")
    if not msgs:
        sys.exit(f"no corpus in {d}")
    out = []
    for p in msgs:
        data = p.read_bytes().replace(b"\r\n", b"\n")
        if data.startswith(b"From "):
            data = data.split(b"\n", 1)[1]
        out.append(data.rstrip(b"\n") + b"\n")
    return out


def write_mbox(path, n, msgs):
    with open(path, "wb") as f:
        for i in range(n):
            data = msgs[i % len(msgs)]
            data = data.replace(b"\n>From ", b"\n>>From ").replace(b"\nFrom ", b"\n>From ")
            f.write(b"From bench@example.org  Thu Jan  1 00:00:00 1970\n")
            f.write(b"X-Bench: %d\n" % i)
            f.write(data)
            f.write(b"\n")


def count(maildir):
    return sum(len(os.listdir(os.path.join(maildir, s))) for s in ("new", "cur")
               if os.path.isdir(os.path.join(maildir, s)))


def floor(root, n, msgs):
    """N durable Maildir writes from one Python process: messages/s."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(root, sub))
    newfd = os.open(os.path.join(root, "new"), os.O_RDONLY | os.O_DIRECTORY)
    host = os.uname().nodename
    start = time.perf_counter()
    for i in range(n):
        data = b"X-Bench: %d\n" % i + msgs[i % len(msgs)]
        name = f"{int(time.time())}.M{i}P{os.getpid()}.{host},S={len(data)}"
        tmp = os.path.join(root, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.link(tmp, os.path.join(root, "new", name))
        os.fsync(newfd)
        os.unlink(tmp)
    elapsed = time.perf_counter() - start
    os.close(newfd)
    assert count(root) == n
    return n / elapsed, elapsed


def run_pymda(admin, root, mbox, n):
    maildir = os.path.join(root, "pymda") + "/"
    record = os.path.join(root, "record")
    start = time.perf_counter()
    proc = subprocess.run([admin, "redeliver", "--mailbox", maildir, "-o",
                           f"redeliver_record={record}", mbox],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    elapsed = time.perf_counter() - start
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0 or not out.rstrip().endswith(f"{n} delivered, 0 skipped, 0 failed"):
        sys.exit(f"pymda-admin failed ({proc.returncode}):\n{out[-2000:]}")
    assert count(maildir) == n
    return n / elapsed, elapsed, out


def run_procmail(root, mbox, n):
    maildir = os.path.join(root, "procmail") + "/"
    rc = os.path.join(root, "procmailrc")
    with open(rc, "w") as f:
        f.write(f"DEFAULT={maildir}\nLOGFILE=/dev/null\nVERBOSE=no\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": root, "LANG": "C"}
    start = time.perf_counter()
    with open(mbox, "rb") as stdin:
        proc = subprocess.run(["formail", "-s", "procmail", rc], stdin=stdin, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"formail -s procmail failed: {proc.stdout[-2000:]!r}")
    got = count(maildir)
    if got != n:
        sys.exit(f"formail+procmail delivered {got} of {n}")
    return n / elapsed, elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--admin", default=os.environ.get("PYMDA_ADMIN_BIN")
                    or (shutil.which("pymda-admin") or "/opt/pymda/bin/pymda-admin"))
    ap.add_argument("--dir", default=None, help="work directory (default: a new one in /var/tmp)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for tool in ("formail", "procmail"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (scripts/setup-system installs procmail)")
    msgs = corpus()
    root = tempfile.mkdtemp(prefix="pymda-bench-redeliver.", dir=args.dir or "/var/tmp")
    try:
        mbox = os.path.join(root, "source.mbox")
        write_mbox(mbox, args.n, msgs)
        f_rate, f_s = floor(os.path.join(root, "floor"), args.n, msgs)
        p_rate, p_s, out = run_pymda(args.admin, root, mbox, args.n)
        m_rate, m_s = run_procmail(root, mbox, args.n)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "messages": args.n,
        "fsync_floor_per_s": round(f_rate),
        "pymda_per_s": round(p_rate),
        "formail_procmail_per_s": round(m_rate),
        "pymda_vs_procmail": round(p_rate / m_rate, 2),
        "pymda_vs_floor": round(p_rate / f_rate, 2),
        "target_3x_procmail": p_rate >= 3 * m_rate,
        "target_half_floor": p_rate >= f_rate / 2,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"redelivering a {args.n}-message mbox into a Maildir")
    print(f"  fsync floor (python, fsync file+dir) {f_rate:8.0f} messages/s  ({f_s:.1f} s)")
    print(f"  pymda-admin redeliver                {p_rate:8.0f} messages/s  ({p_s:.1f} s)")
    print(f"  formail -s procmail                  {m_rate:8.0f} messages/s  ({m_s:.1f} s)")
    print(f"  pymda / procmail = {result['pymda_vs_procmail']}x (target >= 3x): "
          f"{'ok' if result['target_3x_procmail'] else 'MISSED'}")
    print(f"  pymda / floor    = {result['pymda_vs_floor']} (target >= 0.5): "
          f"{'ok' if result['target_half_floor'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
