"""One-shot A/B: the same delivery through two pymda installs, alternated.

    sudo /usr/bin/python3 bench/bench_ab.py /opt/pymda-base/bin/pymda /opt/pymda/bin/pymda \
        [--n 400] [--user abuser]

Each round runs both launchers once (order alternating), as an
unprivileged user (created with useradd when missing) the way postfix
runs ``mailbox_command``, delivering ``contrib/sample.eml`` into a
Maildir and into an mbox in that user's home; every delivery must exit 0.
Prints median, 25th percentile and minimum per install and mailbox kind.
Use it to check that a change does not make the one-shot delivery slower
(make the base install with ``scripts/install /opt/pymda-base`` from a
worktree of the base commit).
"""

import argparse
import pwd
import statistics
import subprocess
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "contrib" / "sample.eml"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("head")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--user", default="pymda-ab")
    opts = ap.parse_args()
    try:
        pw = pwd.getpwnam(opts.user)
    except KeyError:
        subprocess.run(["useradd", "-m", opts.user], check=True)
        pw = pwd.getpwnam(opts.user)
    msg = SAMPLE.read_bytes()
    env = {"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "USER": pw.pw_name,
           "SENDER": "a@example.org", "RECIPIENT": f"{pw.pw_name}@localhost"}
    bins = {"base": opts.base, "head": opts.head}

    def one(path, mailbox):
        started = time.perf_counter()
        proc = subprocess.run([path, "-f", "a@example.org", "--mailbox", mailbox], input=msg,
                              env=env, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                              cwd="/", capture_output=True, check=False)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{path} failed: {proc.returncode} {proc.stdout!r}{proc.stderr!r}")
        return elapsed

    for kind in ("Maildir/", "mbox"):
        times = {k: [] for k in bins}
        for i in range(opts.n):
            for k in (("base", "head") if i % 2 else ("head", "base")):
                times[k].append(one(bins[k], f"pymda-ab-{k}-{kind}"))
        for k, ts in times.items():
            ts.sort()
            print(f"{kind:9} {k}: median {statistics.median(ts) * 1000:.2f} ms, "
                  f"p25 {ts[len(ts) // 4] * 1000:.2f} ms, min {ts[0] * 1000:.2f} ms")


if __name__ == "__main__":
    main()
