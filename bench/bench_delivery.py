#!/usr/bin/python3
"""bench_delivery.py — pymda against the interpreter floor, procmail and dovecot-lda.

Usage (as root; stdlib only; a few minutes):

    /usr/bin/python3 bench/bench_delivery.py [--n 200] [--quick] [--json]
        [--writers 8] [--per-writer 25] [--big-mb 200] [--message FILE]

What it measures, all in one run, as a throw-away unprivileged user it
creates (and removes), started the way postfix starts ``mailbox_command``
(uid/gid of the user, no supplementary groups, umask 077, cwd
/var/spool/postfix, postfix's environment, new process group, RLIMIT_FSIZE
= postfix's mailbox_size_limit, and on stdin what postfix writes: its
``From `` line, Return-Path, X-Original-To, Delivered-To, the message):

1. One-shot deliveries, one process at a time, N rounds.  Each round runs
   every contender once, in turn (interleaved, so drift in the machine
   hits everyone alike): ``python3 -I -S -c pass`` (the floor: Debian's
   /usr/bin/python3, the one /opt/pymda's venv uses), pymda into a Maildir
   and into an mbox, procmail (Debian, private rcfile) into a Maildir and
   an mbox, dovecot-lda (Debian, private config: ``mail_location`` only,
   run as the user without ``-d`` as dovecot documents for
   mailbox_command) into a Maildir and an mbox.  Median and p90 wall time
   per message: posix_spawn to wait4, so the command is exec'd directly
   (postfix would add a /bin/sh for ``-f "$SENDER"``, the same for all).
   A ~4 KB corpus message.  Every delivery must exit 0 with no output;
   afterwards each mailbox must hold exactly the messages delivered.
2. ``--writers`` concurrent writers into one mbox (each delivering
   ``--per-writer`` distinct messages one process after the other):
   pymda, dovecot-lda and procmail, total messages/s; then the mbox is
   parsed and every message checked: count, ids, body bytes identical
   (trailing newlines aside: procmail adds no separating empty line after
   a message that already ends with one).
3. Peak RSS of pymda for a ``--big-mb`` message (default 200 MiB) and a
   20 MiB one (generated streaming to a file and fed on stdin) into a
   Maildir and into an mbox, next to the floor and the small message.
   ru_maxrss via a small fresh spawner (see common.peak_rss);
   RLIMIT_FSIZE lifted for this part.

Then the targets of issue 2, as ratios from this run:
one-shot median <= 1.5 x dovecot-lda (Maildir and mbox); concurrent mbox
>= 2 x dovecot-lda's messages/s with every message intact; peak RSS < 40 MB.
Exit status: 0 when the run completed (targets met or not), 1 when a
delivery failed or a mailbox was wrong.

LIMITATIONS: the mailboxes live in the user's home on the file system of
/home; a Debian /var/mail (2775 root:mail) would add pymda's dotlockfile
helper to the mbox figures.  Without a syslog daemon (/dev/log) logging
costs nothing for any contender.  Contenders that are not installed are
skipped and their targets reported as "not measured".
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PYMDA = os.environ.get("PYMDA_BIN", "/opt/pymda/bin/pymda")
PROCMAIL = "/usr/bin/procmail"
DOVECOT_LDA = "/usr/lib/dovecot/dovecot-lda"
PYTHON = "/usr/bin/python3"
FLOOR = [PYTHON, "-I", "-S", "-c", "pass"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(os.path.dirname(REPO), "shared", "corpus", "real")
DEFAULT_MESSAGE = "lkml_cur_1382298587.003486_2.eml"  # 4096 bytes, plain text
SENDER = "bench-sender@example.org"
WARMUP = 3

TARGET_ONESHOT_RATIO = 1.5
TARGET_CONCURRENT_RATIO = 2.0
TARGET_RSS_KIB = 40 * 1024


class Failure(Exception):
    pass


# ---------------------------------------------------------------- messages

def load_message(path):
    if path is None:
        path = os.path.join(CORPUS, DEFAULT_MESSAGE)
        if not os.path.exists(path):
            return synthetic_message()
    with open(path, "rb") as f:
        data = f.read().replace(b"\r\n", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    if data.startswith(b"From "):
        data = data.split(b"\n", 1)[1]
    head, sep, body = data.partition(b"\n\n")
    if not sep:
        raise SystemExit(f"{path}: no header/body separator")
    for line in body.split(b"\n"):
        if line.lstrip(b">").startswith(b"From "):
            raise SystemExit(f"{path}: pick a message without body From lines "
                             "(mbox quoting differs between the MDAs)")
    return data


def synthetic_message():
    head = (b"From: Someone <someone@example.org>\nTo: user@example.org\n"
            b"Subject: benchmark message\nDate: Tue, 24 Nov 2026 22:08:05 +0000\n"
            b"Message-ID: <bench@example.org>\nMIME-Version: 1.0\n"
            b"Content-Type: text/plain; charset=us-ascii\n")
    line = b"The quick brown fox jumps over the lazy dog, again and again.\n"
    return head + b"\n" + line * 60


def tagged(message, tag):
    """message with an X-Bench-Id header and a first body line naming tag."""
    head, _, body = message.partition(b"\n\n")
    return head + b"\nX-Bench-Id: " + tag.encode() + b"\n\nbench-id " + tag.encode() + b"\n" + body


def expected_body(message, tag):
    return tagged(message, tag).partition(b"\n\n")[2]


def split_mbox(data):
    """mbox bytes -> list of message bytes (From_ line and separator removed)."""
    messages = []
    if not data:
        return messages
    if not data.startswith(b"From "):
        raise Failure("mbox does not start with a From line")
    starts = [0]
    pos = 0
    while True:
        pos = data.find(b"\n\nFrom ", pos)
        if pos < 0:
            break
        starts.append(pos + 2)
        pos += 2
    starts.append(len(data))
    for a, b in zip(starts, starts[1:]):
        chunk = data[a:b]
        chunk = chunk.split(b"\n", 1)[1] if b"\n" in chunk else b""
        if not chunk.endswith(b"\n\n"):
            raise Failure(f"message at byte {a} does not end with an empty line")
        messages.append(chunk[:-1])
    return messages


def header_value(message, name):
    head = message.partition(b"\n\n")[0]
    values = []
    key = name.lower().encode() + b":"
    for line in head.split(b"\n"):
        if line.lower().startswith(key):
            values.append(line[len(key):].strip().decode())
    return values


def check_mbox(path, message, tags):
    """Every tag exactly once, bodies byte-identical; -> problems list."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [f"{path}: missing"]
    try:
        messages = split_mbox(data)
    except Failure as exc:
        return [f"{path}: {exc}"]
    problems = []
    if len(messages) != len(tags):
        problems.append(f"{path}: {len(messages)} messages, expected {len(tags)}")
    seen = {}
    for i, msg in enumerate(messages):
        ids = header_value(msg, "X-Bench-Id")
        if len(ids) != 1:
            problems.append(f"{path}: message {i}: X-Bench-Id {ids!r}")
            continue
        tag = ids[0]
        seen[tag] = seen.get(tag, 0) + 1
        # compared without trailing newlines: procmail does not add the
        # separating empty line after a message that already ends with one
        body = msg.partition(b"\n\n")[2]
        if tag in tags and body.rstrip(b"\n") != expected_body(message, tag).rstrip(b"\n"):
            problems.append(f"{path}: message {tag}: body differs")
    missing = [t for t in tags if t not in seen]
    dups = [t for t, c in seen.items() if c > 1]
    if missing:
        problems.append(f"{path}: missing {len(missing)} messages, e.g. {missing[:3]}")
    if dups:
        problems.append(f"{path}: duplicated {dups[:3]}")
    return problems[:10]


def count_maildir(path):
    n = 0
    for sub in ("new", "cur"):
        try:
            n += sum(1 for name in os.listdir(os.path.join(path, sub))
                     if not name.startswith("."))
        except FileNotFoundError:
            pass
    return n


def count_mbox(path):
    try:
        with open(path, "rb") as f:
            return len(split_mbox(f.read()))
    except FileNotFoundError:
        return 0


def write_big_message(path, size, recipient, uid, gid):
    """Generate a ~size-byte message streaming to path (postfix's stdin form)."""
    line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
            b"+/0123456789ab\n")
    chunk = line * ((1 << 20) // len(line))
    with open(path, "wb") as f:
        f.write(common.postfix_input(
            b"From: big@example.org\nTo: " + recipient.encode() +
            b"\nSubject: big message\nMessage-ID: <big@example.org>\n\n",
            SENDER, recipient))
        written = 0
        while written < size:
            f.write(chunk)
            written += len(chunk)
    os.chmod(path, 0o644)
    os.chown(path, uid, gid)
    return os.path.getsize(path)


# ---------------------------------------------------------------- setup

def contenders(user, have):
    """name -> (argv, mailbox kind, mailbox path)."""
    h = user.path
    out = {"floor": (FLOOR, None, None)}
    if have["pymda"]:
        out["pymda maildir"] = ([PYMDA, "-f", SENDER, "--mailbox", h("pymda-Maildir") + "/"],
                                "maildir", h("pymda-Maildir"))
        out["pymda mbox"] = ([PYMDA, "-f", SENDER, "--mailbox", h("pymda.mbox")],
                             "mbox", h("pymda.mbox"))
    if have["procmail"]:
        out["procmail maildir"] = ([PROCMAIL, h("procmailrc-maildir")], "maildir",
                                   h("procmail-Maildir"))
        out["procmail mbox"] = ([PROCMAIL, h("procmailrc-mbox")], "mbox", h("procmail.mbox"))
    if have["dovecot"]:
        recipient = f"{user.name}@localhost"
        for kind, mailbox in (("maildir", h("dovecot-Maildir")), ("mbox", h("dovecot.mbox"))):
            out[f"dovecot-lda {kind}"] = (
                [DOVECOT_LDA, "-c", h(f"dovecot-{kind}.conf"), "-f", SENDER, "-a", recipient],
                kind, mailbox)
    return out


def write_configs(user):
    h = user.path
    for name, target in (("maildir", h("procmail-Maildir") + "/"), ("mbox", h("procmail.mbox")),
                         ("conc", h("conc-procmail.mbox"))):
        # procmail's defaults otherwise: no LOGFILE, LOCKSLEEP=8
        user.write(f"procmailrc-{name}", f"SHELL=/bin/sh\nDEFAULT={target}\n")
    user.mkdir("dovecot-mail")
    locations = {
        "maildir": f"maildir:{h('dovecot-Maildir')}",
        "mbox": f"mbox:{h('dovecot-mail')}:INBOX={h('dovecot.mbox')}",
        "conc": f"mbox:{h('dovecot-mail')}:INBOX={h('conc-dovecot.mbox')}",
    }
    for name, location in locations.items():
        user.write(f"dovecot-{name}.conf",
                   f"# private minimal config for the benchmark\nprotocols =\nssl = no\n"
                   f"log_path = /dev/stderr\ninfo_log_path = syslog\n"
                   f"mail_location = {location}\n")


# ---------------------------------------------------------------- workers (run as the user)

def oneshot_worker(env, outdir, plan, stdin_path, n, warmup, before=None):
    """Interleaved rounds of plan (name -> argv); before(name), untimed, if given."""
    spawner = common.Spawner(env, outdir)
    times = {name: [] for name in plan}
    cpu = {name: [] for name in plan}
    errors = []
    try:
        for r in range(warmup + n):
            for name, argv in plan.items():
                if before is not None:
                    before(name)
                code, elapsed, output = spawner.run(argv, stdin_path)
                if code != 0 or output:
                    errors.append(f"{name}: exit {code}: {output[:300]}")
                    if len(errors) > 5:
                        return {"times": times, "cpu": cpu, "errors": errors}
                if r >= warmup:
                    times[name].append(elapsed)
                    cpu[name].append(spawner.last_cpu)
    finally:
        spawner.close()
    return {"times": times, "cpu": cpu, "errors": errors}


def writer_worker(env, outdir, argv, files, start_r, start_w):
    os.close(start_w)
    spawner = common.Spawner(env, outdir)
    errors = []
    try:
        os.read(start_r, 1)  # released when the parent closes its end
        for path in files:
            code, _, output = spawner.run(argv, path)
            if code != 0 or output:
                errors.append(f"{os.path.basename(path)}: exit {code}: {output[:300]}")
    finally:
        spawner.close()
    return {"errors": errors}


# ---------------------------------------------------------------- parts

def part_oneshot(user, env, have, message, n, log):
    stdin_path = user.write("oneshot.eml", common.postfix_input(
        message, SENDER, env["RECIPIENT"]))
    table = contenders(user, have)
    plan = {name: argv for name, (argv, _, _) in table.items()}
    log(f"one-shot: {n} rounds of {len(plan)} contenders (+{WARMUP} warm-up) ...")
    t0 = time.time()
    out = common.run_as(user, oneshot_worker, env, user.home, plan, stdin_path, n, WARMUP,
                        fsize=common.MAILBOX_SIZE_LIMIT)
    log(f"  {time.time() - t0:.1f} s")
    if out["errors"]:
        raise Failure("one-shot deliveries failed:\n  " + "\n  ".join(out["errors"]))
    results = {}
    problems = []
    for name, (argv, kind, mailbox) in table.items():
        results[name] = common.summarize(out["times"][name])
        if kind is None:
            continue
        got = count_maildir(mailbox) if kind == "maildir" else count_mbox(mailbox)
        if got != n + WARMUP:
            problems.append(f"{name}: {mailbox} holds {got} messages, expected {n + WARMUP}")
    if have["pymda"]:
        # pymda's stored bytes: the original message after its trace headers
        with open(table["pymda mbox"][2], "rb") as f:
            stored = split_mbox(f.read())
        for m in stored:
            if not m.endswith(message):
                problems.append("pymda mbox: a stored message does not end with the input")
                break
    if problems:
        raise Failure("one-shot mailboxes wrong:\n  " + "\n  ".join(problems))
    return results


def part_concurrent(user, env, have, message, writers, per_writer, procmail_per_writer, log):
    h = user.path
    runs = {}
    if have["pymda"]:
        runs["pymda"] = ([PYMDA, "-f", SENDER, "--mailbox", h("conc-pymda.mbox")],
                         h("conc-pymda.mbox"))
    if have["dovecot"]:
        runs["dovecot-lda"] = ([DOVECOT_LDA, "-c", h("dovecot-conc.conf"), "-f", SENDER,
                                "-a", env["RECIPIENT"]], h("conc-dovecot.mbox"))
    if have["procmail"]:
        runs["procmail"] = ([PROCMAIL, h("procmailrc-conc")], h("conc-procmail.mbox"))
    user.mkdir("conc-messages", 0o755)
    results = {}
    for name, (argv, mbox) in runs.items():
        # an existing empty mbox (procmail waits 1 s before creating one)
        user.write(os.path.basename(mbox), b"", 0o600)
        count = min(per_writer, procmail_per_writer) if name == "procmail" else per_writer
        files = {}
        tags = []
        for w in range(writers):
            files[w] = []
            for i in range(count):
                tag = f"{name}-w{w}-{i}"
                tags.append(tag)
                files[w].append(user.write(os.path.join("conc-messages", tag + ".eml"),
                                           common.postfix_input(tagged(message, tag), SENDER,
                                                                env["RECIPIENT"])))
        log(f"concurrent: {name}, {writers} writers x {count} messages into one mbox ...")
        start_r, start_w = os.pipe()
        handles = [common.start_as(user, writer_worker, env, user.home, argv, files[w],
                                   start_r, start_w, fsize=common.MAILBOX_SIZE_LIMIT)
                   for w in range(writers)]
        os.close(start_r)
        time.sleep(0.2)  # let every worker reach its read()
        t0 = time.perf_counter()
        os.close(start_w)
        outs = [common.finish(hd) for hd in handles]
        elapsed = time.perf_counter() - t0
        errors = [e for o in outs for e in o["errors"]]
        problems = check_mbox(mbox, message, tags)
        total = writers * count
        results[name] = {
            "writers": writers, "messages": total, "seconds": round(elapsed, 3),
            "messages_per_s": round(total / elapsed, 1),
            "intact": not errors and not problems,
            "problems": (errors[:5] + problems)[:10],
        }
        log(f"  {elapsed:.2f} s, {total / elapsed:.1f} msg/s, "
            f"{'all intact' if results[name]['intact'] else 'PROBLEMS'}")
        for p in results[name]["problems"]:
            log(f"    {p}")
        for w in files.values():
            for p in w:
                os.unlink(p)
    return results


def part_rss(user, env, have, message, big_mb, log):
    h = user.path
    results = {"spawner_bias_kib": common.spawner_bias(env, user)}
    small = user.write("rss-small.eml", common.postfix_input(message, SENDER, env["RECIPIENT"]))

    def measure(label, argv, stdin_path):
        code, kib, output = common.peak_rss(argv, env, stdin_path, user)
        if code != 0 or output:
            raise Failure(f"{label}: exit {code}: {output[:300]!r}")
        results[label] = kib
        log(f"  {label}: {kib / 1024:.1f} MiB")

    log("peak RSS ...")
    measure("floor", FLOOR, small)
    if not have["pymda"]:
        return results
    measure("pymda maildir small", [PYMDA, "-f", SENDER, "--mailbox", h("rss-Maildir") + "/"],
            small)
    measure("pymda mbox small", [PYMDA, "-f", SENDER, "--mailbox", h("rss.mbox")], small)
    # a medium size too: the peak must not grow with the message
    for mb in sorted({min(20, big_mb), big_mb} - {0}):
        big = h("rss-big.eml")
        t0 = time.time()
        size = write_big_message(big, mb << 20, env["RECIPIENT"], user.uid, user.gid)
        results[f"message_bytes_{mb}"] = size
        log(f"  generated a {size / 1e6:.0f} MB message in {time.time() - t0:.1f} s")
        try:
            for kind, mailbox in (("maildir", h("rss-big-Maildir") + "/"),
                                  ("mbox", h("rss-big.mbox"))):
                t0 = time.time()
                measure(f"pymda {kind} {mb} MiB",
                        [PYMDA, "-f", SENDER, "--mailbox", mailbox], big)
                results[f"pymda {kind} {mb} MiB seconds"] = round(time.time() - t0, 2)
                stored = (sum(os.path.getsize(os.path.join(mailbox, "new", f))
                              for f in os.listdir(os.path.join(mailbox, "new")))
                          if kind == "maildir" else os.path.getsize(mailbox))
                if stored < size - 200:
                    raise Failure(f"{kind}: stored {stored} bytes of a {size}-byte message")
                if kind == "maildir":
                    for f in os.listdir(os.path.join(mailbox, "new")):
                        os.unlink(os.path.join(mailbox, "new", f))
                else:
                    os.unlink(mailbox)
        finally:
            os.unlink(big)
    return results


# ---------------------------------------------------------------- report

def ratio(a, b):
    """a / b, rounded to 3 places (the target is judged on this value)."""
    return round(a / b, 3) if a is not None and b else None


def targets(report, big_mb):
    one = report.get("oneshot", {})
    conc = report.get("concurrent", {})
    rss = report.get("rss", {})
    out = []
    for kind in ("maildir", "mbox"):
        p, d = one.get(f"pymda {kind}"), one.get(f"dovecot-lda {kind}")
        r = ratio(p and p["median_ms"], d and d["median_ms"])
        out.append({"target": f"one-shot median {kind} <= {TARGET_ONESHOT_RATIO}x dovecot-lda",
                    "value": r, "met": None if r is None else r <= TARGET_ONESHOT_RATIO})
    p, d = conc.get("pymda"), conc.get("dovecot-lda")
    r = ratio(p and p["messages_per_s"], d and d["messages_per_s"])
    out.append({"target": f"{(p or d or {}).get('writers', '?')} writers, one mbox: "
                          f">= {TARGET_CONCURRENT_RATIO}x dovecot-lda msg/s, all intact",
                "value": r,
                "met": None if r is None else (r >= TARGET_CONCURRENT_RATIO and p["intact"])})
    peaks = {k: v for k, v in rss.items() if k.startswith("pymda") and not k.endswith("seconds")}
    if peaks:
        worst = max(peaks.values())
        out.append({"target": "pymda peak RSS < 40 MiB"
                              + (f" (up to {big_mb} MiB messages)" if big_mb else " (small only)"),
                    "value": round(worst / 1024, 1), "met": worst < TARGET_RSS_KIB})
    else:
        out.append({"target": "pymda peak RSS < 40 MiB", "value": None, "met": None})
    return out


def print_oneshot(one, base, label, relative, width=20):
    """The one-shot table; column ``label``: median - base where relative(name)."""
    print(f"\none-shot delivery, one process at a time, {one['floor']['n']} rounds "
          "(wall time per message, ms)")
    print(f"  {'':<{width}} {'median':>8} {'p90':>8} {'min':>8}  {label:>13}")
    for name, s in one.items():
        extra = f"{s['median_ms'] - base:>13.2f}" if base and relative(name) else ""
        print(f"  {name:<{width}} {s['median_ms']:>8.2f} {s['p90_ms']:>8.2f} "
              f"{s['min_ms']:>8.2f}  {extra}")


def print_report(report):
    m = report["machine"]
    print(f"\nmachine: {m['nproc']} x {m['cpu']}, {m['memory_gib']} GiB, {m['os']}, "
          f"kernel {m['kernel']}, {m['python']}, mailboxes on {m['filesystem']}")
    print(f"message: {report['message']['name']} ({report['message']['bytes']} bytes "
          f"+ postfix's From_/Return-Path/X-Original-To/Delivered-To)")
    one = report.get("oneshot")
    if one:
        floor = one["floor"]["median_ms"]
        print_oneshot(one, floor, "- floor", lambda name: name != "floor")
    conc = report.get("concurrent")
    if conc:
        print("\nconcurrent writers into one mbox")
        for name, r in conc.items():
            print(f"  {name:<12} {r['writers']} writers, {r['messages']} msgs in "
                  f"{r['seconds']:>7.2f} s = {r['messages_per_s']:>7.1f} msg/s  "
                  f"{'intact' if r['intact'] else 'NOT INTACT'}")
    rss = report.get("rss")
    if rss:
        print(f"\npeak RSS (spawner bias {rss['spawner_bias_kib'] / 1024:.1f} MiB: "
              "figures below it are the spawner's)")
        for k, v in rss.items():
            if k == "spawner_bias_kib" or k.startswith("message_bytes"):
                continue
            if k.endswith("seconds"):
                print(f"  {k:<28} {v:>8.2f} s")
            else:
                print(f"  {k:<28} {v / 1024:>8.1f} MiB")
    print("\ntargets (issue 2), ratios from this run")
    for t in report["targets"]:
        met = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        print(f"  {t['target']:<62} {t['value'] if t['value'] is not None else '-':>7}  {met}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="one-shot rounds (default 200)")
    ap.add_argument("--quick", action="store_true",
                    help="small N (30), 4 x 5 concurrent messages, no big message")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--per-writer", type=int, default=25)
    ap.add_argument("--procmail-per-writer", type=int, default=3,
                    help="procmail sleeps 8 s on a busy lock: fewer messages (default 3)")
    ap.add_argument("--big-mb", type=int, default=200, help="size of the big message in MiB (default 200; 0: skip)")
    ap.add_argument("--message", help="message for the one-shot runs (default: a 4 KB "
                                      "corpus message)")
    ap.add_argument("--keep", action="store_true", help="keep the user and its mailboxes")
    args = ap.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 30)
        args.per_writer = min(args.per_writer, 5)
        args.procmail_per_writer = min(args.procmail_per_writer, 2)
        args.big_mb = 0
    if os.geteuid() != 0:
        print("bench_delivery: run as root (it creates its own unprivileged user)",
              file=sys.stderr)
        return 2

    def log(text):
        print(text, file=sys.stderr, flush=True)

    have = {"pymda": os.access(PYMDA, os.X_OK), "procmail": os.access(PROCMAIL, os.X_OK),
            "dovecot": os.access(DOVECOT_LDA, os.X_OK)}
    for name, ok in have.items():
        if not ok:
            log(f"warning: {name} not installed: skipped")
    message = load_message(args.message)
    report = {
        "machine": common.machine("/home"),
        "message": {"name": os.path.basename(args.message or DEFAULT_MESSAGE),
                    "bytes": len(message)},
        "pymda": PYMDA,
    }
    user = common.create_user()
    log(f"user {user.name} (uid {user.uid})")
    status = 0
    try:
        env = common.postfix_env(user, SENDER, f"{user.name}@localhost")
        write_configs(user)
        report["oneshot"] = part_oneshot(user, env, have, message, args.n, log)
        report["concurrent"] = part_concurrent(user, env, have, message, args.writers,
                                               args.per_writer, args.procmail_per_writer, log)
        if any(not r["intact"] for r in report["concurrent"].values()):
            status = 1
        report["rss"] = part_rss(user, env, have, message, args.big_mb, log)
    except (Failure, common.BenchError) as exc:
        log(f"FAILED: {exc}")
        report["error"] = str(exc)
        status = 1
    finally:
        if args.keep:
            log(f"kept {user.home}")
        else:
            common.delete_user(user)
    report["targets"] = targets(report, args.big_mb)
    common.emit(report, args.json, print_report)
    return status


if __name__ == "__main__":
    sys.exit(main())
