"""Whole one-shot deliveries with and without a Sieve script (root).

    python3 bench/bench_sieve_delivery.py --user NAME [--runs N]

Runs the installed ``pymda`` ($PYMDA_PREFIX, default /opt/pymda) as the
existing user NAME (whose ~/Maildir, ~/.dovecot.sieve and
~/.cache/pymda are REMOVED and rewritten: use a throw-away user), N
times each, alternating: no script (the one-stat path), and a 20-rule
Roundcube-style script (a relational spam rule + 19 subject rules,
cache hit after the warm-up).  Prints min and median wall time per
delivery (process start included); on a loaded machine only the minima
mean anything.
"""

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import time

PREFIX = os.environ.get("PYMDA_PREFIX", "/opt/pymda")
MESSAGE = (b"From: Alice <alice@example.org>\nTo: bob@example.org\n"
           b"Subject: hello there\nX-Spam-Score: 3\nMessage-ID: <1@x>\n\nbody\n")


def script():
    rules = ['require ["fileinto","mailbox","relational","comparator-i;ascii-numeric"];',
             'if header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "5" '
             '{ fileinto :create "Junk"; stop; }']
    rules += ['if header :contains "subject" "topic%d" { fileinto :create "F%d"; stop; }'
              % (i, i) for i in range(19)]
    return "\n".join(rules) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--user", required=True)
    ap.add_argument("--runs", type=int, default=40)
    a = ap.parse_args()
    u = pwd.getpwnam(a.user)
    home = u.pw_dir
    argv = [os.path.join(PREFIX, "bin", "pymda"), "-f", "a@b", "-a", f"{a.user}@localhost",
            "-o", "mailbox=Maildir/"]

    def run(n):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run(argv, input=MESSAGE, user=u.pw_uid, group=u.pw_gid, extra_groups=[],
                           env={"PATH": "/usr/bin:/bin"}, cwd="/", check=True)
            times.append((time.perf_counter() - t) * 1000)
        return min(times), statistics.median(times)

    for label in ("no script", "20-rule script (cache hit)") * 2:
        shutil.rmtree(os.path.join(home, "Maildir"), ignore_errors=True)
        shutil.rmtree(os.path.join(home, ".cache", "pymda"), ignore_errors=True)
        path = os.path.join(home, ".dovecot.sieve")
        if os.path.lexists(path):
            os.unlink(path)
        if label.startswith("20"):
            with open(path, "w") as f:
                f.write(script())
            os.chown(path, u.pw_uid, u.pw_gid)
        run(2)
        print("%-28s min %.2f ms  median %.2f ms" % ((label,) + run(a.runs)))


if __name__ == "__main__":
    main()
