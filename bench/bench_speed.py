#!/usr/bin/python3
"""bench_speed.py — issue 12's table in one command: pymda against dovecot.

Usage (as root; stdlib only; 4,000-message cells: ~10 minutes; with the
100,000-message cells, hours: dovecot slows down as its Maildir fills):

    PYMDA_PREFIX=/opt/pymda /usr/bin/python3 bench/bench_speed.py \\
        [--sizes 4000,100000] [--connections 1,4] [--n 100] [--markdown FILE] [--json FILE]

Runs, one after the other, in one invocation:

1. ``bench_lmtp_side.py --modes root,user`` (the LMTP rows: pymda-lmtpd
   as root delivering to a system user, and as the mail user serving a
   virtual user, each against a private dovecot-lmtp, every message
   verified in the Maildir);
2. ``bench_sieve.py --routes`` (the one-shot rows: scripts/install's
   launcher and a venv made by plain ``pip install``, Maildir and mbox,
   against dovecot-lda, every delivery verified),

and prints the table of issue 12 with its targets: every LMTP cell at
least 1.2x dovecot-lmtp (messages/s), every one-shot route at most 1.25x
dovecot-lda (wall time per message; judged on the paired median, the
median over the rounds of each round's ratio, with the plain medians'
ratio shown too).  The two benchmarks' own reports go to stderr as they
run; ``--json`` keeps both whole.

Exit status: 0 when both ran and verified every message (targets met or
not), 1 when one failed, 2 when not root.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_sieve  # noqa: E402
import common  # noqa: E402
LMTP_TARGET = 1.2
ONESHOT_TARGET = 1.25
MODES = {"root": "LMTP as root delivering to a system user",
         "user": "LMTP as the mail user (virtual users)"}
ROUTES = (("plain `pip install` venv", "pymda(pip) plain"),
          ("`scripts/install` launcher", "pymda plain"))
# bench_sieve's label of the paired ratio of two of its contenders
PAIR_LABEL = {(a, b): label for label, a, b, _how in bench_sieve.PAIRS}


def run(argv, log):
    log("$ " + " ".join(argv))
    env = dict(os.environ)
    # one install for both: bench_sieve.py takes the launcher from PYMDA_BIN
    env.setdefault("PYMDA_BIN", os.path.join(os.environ.get("PYMDA_PREFIX", "/opt/pymda"),
                                             "bin", "pymda"))
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=sys.stderr, check=False,
                          env=env)
    return proc.returncode, proc.stdout


def lmtp_rows(results):
    rows = []
    for cell in results:
        p, d = cell.get("pymda", {}).get("per_second"), cell.get("dovecot", {}).get("per_second")
        ratio = p / d if p and d else None   # judged unrounded: 1.197 is not 1.2
        rows.append({"what": f"{MODES.get(cell['mode'], cell['mode'])}, {cell['count']} "
                             f"messages, {cell['connections']} connection"
                             + ("s" if cell["connections"] > 1 else "") + " (msgs/s)",
                     "pymda": p, "dovecot": d,
                     "ratio": None if ratio is None else round(ratio, 3),
                     "met": None if ratio is None else ratio >= LMTP_TARGET,
                     "target": f">= {LMTP_TARGET}x"})
    return rows


def oneshot_rows(report):
    one, pairs = report.get("oneshot", {}), report.get("paired", {})
    rows = []
    for label, name in ROUTES:
        for kind, suffix in (("Maildir", ""), ("mbox", " mbox")):
            p = one.get(name + suffix, {}).get("median_ms")
            d = one.get("dovecot-lda plain" + suffix, {}).get("median_ms")
            paired = pairs.get(PAIR_LABEL[name + suffix, "dovecot-lda plain" + suffix])
            rows.append({"what": f"one-shot `pymda`, {label}, {kind} (ms; ratio: paired median, "
                                 f"plain medians {round(p / d, 3) if p and d else '-'})",
                         "pymda": p, "dovecot": d, "ratio": paired,
                         "met": None if paired is None else paired <= ONESHOT_TARGET,
                         "target": f"<= {ONESHOT_TARGET}x"})
    return rows


def render(rows, started, command, load):
    lines = [f"Run {started:%Y-%m-%d %H:%M} UTC, `{command}`, load {load}; "
             "dovecot-lmtp / dovecot-lda from Debian, same messages, every one verified.", "",
             "| | pymda | dovecot | ratio | target | |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        met = {True: "met", False: "NOT met", None: "not measured"}[r["met"]]
        lines.append(f"| {r['what']} | {r['pymda'] if r['pymda'] is not None else '-'} | "
                     f"{r['dovecot'] if r['dovecot'] is not None else '-'} | "
                     f"{str(r['ratio']) + '×' if r['ratio'] is not None else '-'} | "
                     f"{r['target']} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4000,100000", help="LMTP message counts")
    ap.add_argument("--connections", default="1,4")
    ap.add_argument("--n", type=int, default=100, help="one-shot rounds")
    ap.add_argument("--message", help="message file for both (default: their corpus message)")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--json", help="write both reports and the table's rows to this file")
    opts = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_speed.py: run as root", file=sys.stderr)
        return 2

    def log(text):
        print(text, file=sys.stderr, flush=True)

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()[0]
    status = 0
    extra = ["--message", opts.message] if opts.message else []
    with tempfile.TemporaryDirectory() as tmp:
        side_json = os.path.join(tmp, "lmtp.json")
        code, _ = run([sys.executable, os.path.join(HERE, "bench_lmtp_side.py"),
                       "--modes", "root,user", "--sizes", opts.sizes,
                       "--connections", opts.connections, "--json", side_json, *extra], log)
        status |= code != 0
        try:
            with open(side_json) as f:
                lmtp = json.load(f)
        except (OSError, ValueError):
            lmtp = {"results": []}
            status = 1
    code, out = run([sys.executable, os.path.join(HERE, "bench_sieve.py"), "--routes", "--json",
                     "--n", str(opts.n), *extra], log)
    status |= code != 0
    try:
        oneshot = json.loads(out)
    except ValueError:
        oneshot = {}
        status = 1
    if oneshot.get("error"):
        status = 1
    rows = lmtp_rows(lmtp["results"]) + oneshot_rows(oneshot)
    command = "bench/bench_speed.py " + " ".join((argv if argv is not None else sys.argv[1:]))
    table = render(rows, started, command.strip(),
                   f"{load_before:.1f} → {os.getloadavg()[0]:.1f}")
    common.write_table(table, opts.markdown, opts.json,
                       {"rows": rows, "lmtp": lmtp, "oneshot": oneshot})
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
