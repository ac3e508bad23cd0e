"""Sieve hot path in fresh processes: cache hit (20 rules), miss (200 rules).

    python3 bench/bench_sieve.py [--runs N]

Uses the installed pymda ($PYMDA_PREFIX, default /opt/pymda): each run is
a fresh ``python3 -I -S`` (as the pymda launcher starts) that imports the
Sieve modules and calls ``pymda.sieve.run.evaluate`` once; the child
measures its own import and evaluation time (perf_counter), so process
start-up noise of a loaded machine does not drown the figures.  Prints
min and median, and the modules a cache hit imports.  Until Sieve is
wired into the delivery pipeline this is the part of issue 10's
benchmark that can be measured; the side-by-side with dovecot-lda goes
into bench_delivery.py then.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

PREFIX = os.environ.get("PYMDA_PREFIX", "/opt/pymda")
PY = os.path.join(PREFIX, "bin", "python3")
SITE = os.path.join(PREFIX, "lib", "python%d.%d" % sys.version_info[:2], "site-packages")

MESSAGE = (b"Return-Path: <a@b.example>\nFrom: Alice <alice@example.com>\n"
           b"To: bob@example.net\nSubject: hello there\nX-Spam-Score: 3\n"
           b"Message-ID: <1@x>\n\nbody\n")

CHILD = r"""
import sys, time
T = time.perf_counter
sys.path.insert(0, %(site)r)
import pymda.fastos, pymda.record
before = set(sys.modules)
t0 = T()
from pymda.sieve.run import evaluate
from pymda.sieve.mail import MailView
from pymda.sieve.interp import Environment
t1 = T()
data = open(%(msg)r, "rb").read()
k = data.find(b"\n\n") + 2
out = evaluate(%(script)r, MailView(data[:k], len(data), lambda: data),
               Environment(sender="a@b.example", recipient="bob+news@example.net"),
               cache_dir=%(cache)r)
t2 = T()
assert out.error is None, out.error
print("%%d %%d %%s" %% ((t1 - t0) * 1e6, (t2 - t1) * 1e6,
                      ",".join(sorted(set(sys.modules) - before))))
"""


def roundcube_script(rules):
    out = ['require ["fileinto", "relational", "comparator-i;ascii-numeric", '
           '"envelope", "subaddress", "imap4flags", "mailbox"];']
    for i in range(rules - 2):
        out.append('# rule:[rule %d]\nif anyof (header :contains "subject" "topic%d", '
                   'address :is "from" "list%d@example.org") {\n'
                   '\tfileinto "Lists/l%d";\n\tstop;\n}' % (i, i, i, i))
    out.append('# rule:[spam]\nif header :value "ge" :comparator "i;ascii-numeric" '
               '"X-Spam-Score" "5" {\n\taddflag "\\\\Seen";\n\tfileinto :create "Junk";\n\tstop;\n}')
    out.append('if envelope :detail "to" "news" { fileinto "News"; }')
    return "\n".join(out) + "\n"


def measure(tmp, rules, runs, hit):
    script = os.path.join(tmp, "s%d.sieve" % rules)
    with open(script, "w") as f:
        f.write(roundcube_script(rules))
    msg = os.path.join(tmp, "m.eml")
    with open(msg, "wb") as f:
        f.write(MESSAGE)
    cache = os.path.join(tmp, "cache%d" % rules)
    code = CHILD % {"site": SITE, "msg": msg, "script": script,
                    "cache": cache if hit else None}
    if hit:
        subprocess.run([PY, "-I", "-S", "-c", code], check=True, capture_output=True)
    imp, ev, mods = [], [], ""
    for _ in range(runs):
        a, b, mods = subprocess.run([PY, "-I", "-S", "-c", code], check=True,
                                    capture_output=True, text=True).stdout.split()
        imp.append(int(a) / 1000)
        ev.append(int(b) / 1000)
    tot = [a + b for a, b in zip(imp, ev)]
    print("%-28s import %.2f/%.2f ms  evaluate %.2f/%.2f ms  total %.2f/%.2f ms (min/median)"
          % ("%d rules, cache %s" % (rules, "hit" if hit else "miss"), min(imp),
             statistics.median(imp), min(ev), statistics.median(ev), min(tot),
             statistics.median(tot)))
    return mods


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mods = measure(tmp, 20, args.runs, True)
        measure(tmp, 200, args.runs, False)
    print("modules a cache hit imports:", mods.replace(",", " "))


if __name__ == "__main__":
    main()
