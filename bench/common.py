"""Shared helpers for pymda's benchmarks (stdlib only; run as root).

Contract:
- ``create_user(prefix)`` makes a throw-away unprivileged user (own group,
  home under /home, random name) and returns a BenchUser; ``delete_user``
  removes it, its group, its home and /var/mail/<name>{,.lock}.
- ``postfix_env(user, sender, recipient)``: the environment postfix gives
  ``mailbox_command`` (POSTFIX-FACTS.md): USER LOGNAME HOME SHELL SENDER
  RECIPIENT ORIGINAL_RECIPIENT LOCAL DOMAIN PATH LANG MAIL_CONFIG.
  ``postfix_input(message, sender, recipient)``: the bytes postfix writes on
  the command's stdin (``From `` line, Return-Path, X-Original-To,
  Delivered-To, then the queued message).
- ``run_as(user, func, *args)``: run ``func(*args)`` in a forked child that
  has become ``user`` the way postfix's local(8) runs a command (no
  supplementary groups, gid, uid, umask 077, cwd /var/spool/postfix or /,
  optional RLIMIT_FSIZE); returns what ``func`` returns (JSON-able).  An
  exception in the child is re-raised in the parent as BenchError.
  ``start_as`` / ``finish`` split it for concurrent workers.
- ``Spawner``: times one process at a time with ``os.posix_spawn`` (vfork:
  the cheapest way to start a process from Python, so the launcher's own
  cost stays small and is the same for every contender) and ``wait4``;
  stdin from a file, stdout+stderr into one private file, new process
  group (as postfix).  ``run(argv, stdin_path)`` -> (exit code, seconds,
  output text); ``last_cpu`` is then that process's user+sys CPU seconds
  (rusage from wait4: unlike the wall time, not inflated by waiting for
  a CPU on a loaded machine).
- ``peak_rss(argv, env, stdin_path, user)`` -> (exit code, peak RSS in KiB,
  output).  ru_maxrss of an exec'd child also counts the pages of the
  process it was forked from (the kernel carries the old mm's high-water
  mark across exec), so a big parent would inflate it: the child is forked
  from a fresh ``python3 -I -S`` (about 5 MB of its own, reported by
  ``spawner_bias``), never from the benchmark process.
- ``terminate(proc, timeout)``: SIGTERM a server, SIGKILL after timeout
  (tests/support/procs.py's, as ``create_user`` is tests/support/users.py's).
- ``percentile(values, p)``, ``summarize(seconds)`` -> dict of ms figures.
- ``machine()``: nproc, CPU model, kernel, Python, file system of a path.
- ``emit(report, as_json, print_text)``: a benchmark's last step, the
  report as indented JSON (``--json``) or ``print_text(report)``.

LIMITATIONS: Linux only (ru_maxrss in KiB, /proc).  Wall times include
posix_spawn + wait4 in the measuring process (the same for everyone).
"""

import json
import os
import platform
import subprocess
import sys
import time
import traceback

POSTFIX_CWD = "/var/spool/postfix"
# postfix's default mailbox_size_limit, applied as RLIMIT_FSIZE to the command
MAILBOX_SIZE_LIMIT = 51_200_000


class BenchError(RuntimeError):
    pass


class BenchUser:
    def __init__(self, name, uid, gid, home):
        self.name, self.uid, self.gid, self.home = name, uid, gid, home

    def path(self, *parts):
        return os.path.join(self.home, *parts)

    def write(self, rel, data, mode=0o644):
        """Write home/rel owned by the user; returns the path."""
        p = self.path(rel)
        with open(p, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        os.chmod(p, mode)
        os.chown(p, self.uid, self.gid)
        return p

    def mkdir(self, rel, mode=0o700):
        p = self.path(rel)
        os.makedirs(p, mode=mode, exist_ok=True)
        os.chmod(p, mode)
        os.chown(p, self.uid, self.gid)
        return p

    def __repr__(self):
        return f"BenchUser({self.name!r}, uid={self.uid})"


def terminate(proc, timeout=60):
    """SIGTERM a server (Popen), SIGKILL after ``timeout`` s; no-op when gone."""
    _support("procs").terminate(proc, timeout)


def create_user(prefix="pbench"):
    """A throw-away unprivileged user (the tests' helper, tests/support/users.py)."""
    if os.geteuid() != 0:
        raise BenchError("the benchmark creates its own user: run it as root")
    made = _support("users").create_user(prefix)
    return BenchUser(made.name, made.uid, made.gid, str(made.home))


def delete_user(user):
    """Remove the user, its processes, home and /var/mail files."""
    _support("users").delete_user(user)


def _support(name):
    """A module of the tests' helpers (tests/support): one copy of each."""
    import importlib

    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("support." + name)


def postfix_env(user, sender, recipient):
    local, _, domain = recipient.rpartition("@")
    return {
        "USER": user.name, "LOGNAME": user.name, "HOME": user.home,
        "SHELL": "/bin/sh", "SENDER": sender, "RECIPIENT": recipient,
        "ORIGINAL_RECIPIENT": recipient, "LOCAL": local, "DOMAIN": domain,
        "PATH": "/usr/bin:/bin", "LANG": "C", "MAIL_CONFIG": "/etc/postfix",
    }


def postfix_input(message, sender, recipient, when=None):
    """What postfix writes on mailbox_command's stdin for ``message``."""
    date = time.asctime(time.localtime(when))
    head = (f"From {sender or 'MAILER-DAEMON'}  {date}\n"
            f"Return-Path: <{sender}>\n"
            f"X-Original-To: {recipient}\n"
            f"Delivered-To: {recipient}\n").encode()
    return head + message


def become(user, fsize=None):
    """Drop root the way postfix runs mailbox_command (groups, gid, uid)."""
    import resource

    if fsize is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    os.setgroups([])
    os.setgid(user.gid)
    os.setuid(user.uid)
    if os.getuid() != user.uid or os.geteuid() != user.uid:
        raise BenchError("could not switch user")
    os.umask(0o077)
    os.chdir(POSTFIX_CWD if os.path.isdir(POSTFIX_CWD) else "/")


def start_as(user, func, *args, fsize=None):
    """Fork; the child becomes ``user`` and runs func(*args).  -> handle."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            become(user, fsize)
            out = {"ok": func(*args)}
        except BaseException:
            out = {"error": traceback.format_exc()}
            code = 1
        try:
            try:
                data = json.dumps(out).encode()
            except (TypeError, ValueError):
                data = json.dumps({"error": traceback.format_exc()}).encode()
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def finish(handle):
    pid, r = handle
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    try:
        out = json.loads(b"".join(chunks))
    except ValueError:
        raise BenchError(f"worker {pid} died without a result") from None
    if "error" in out:
        raise BenchError(f"worker {pid} failed:\n{out['error']}")
    return out["ok"]


def run_as(user, func, *args, fsize=None):
    return finish(start_as(user, func, *args, fsize=fsize))


class Spawner:
    """Start one process at a time and time it (use inside run_as)."""

    def __init__(self, env, outdir):
        self.env = env
        self.out_path = os.path.join(outdir, f".bench-out.{os.getpid()}")
        self.out_fd = os.open(self.out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC
                              | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def run(self, argv, stdin_path):
        os.ftruncate(self.out_fd, 0)
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, stdin_path, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, self.out_fd, 1),
            (os.POSIX_SPAWN_DUP2, self.out_fd, 2),
        ]
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, self.env, file_actions=actions, setpgroup=0)
        _, status, usage = os.wait4(pid, 0)
        elapsed = time.perf_counter() - t0
        self.last_cpu = usage.ru_utime + usage.ru_stime
        code = os.waitstatus_to_exitcode(status)
        output = ""
        if os.fstat(self.out_fd).st_size:
            os.lseek(self.out_fd, 0, os.SEEK_SET)
            output = os.read(self.out_fd, 4096).decode("utf-8", "replace")
        return code, elapsed, output

    def close(self):
        os.close(self.out_fd)
        try:
            os.unlink(self.out_path)
        except FileNotFoundError:
            pass


# A fresh, small process that forks the measured command and reports its
# rusage: argv[1] = fd for the report, argv[2] = stdin path, argv[3:] =
# command.  Writes "code maxrss_kib" to the report fd (fds 1 and 2 belong
# to the command).
_RSS_SPAWNER = r"""
import os, sys
report = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(report)
    fd = os.open(sys.argv[2], os.O_RDONLY)
    os.dup2(fd, 0)
    os.execve(sys.argv[3], sys.argv[3:], os.environ)
_, st, ru = os.wait4(pid, 0)
os.write(report, b"%d %d\n" % (os.waitstatus_to_exitcode(st), ru.ru_maxrss))
"""


def peak_rss(argv, env, stdin_path, user):
    """(exit code, peak RSS KiB, output) of argv run as ``user``."""
    r, w = os.pipe()
    try:
        proc = subprocess.run(
            ["/usr/bin/python3", "-I", "-S", "-c", _RSS_SPAWNER, str(w), stdin_path, *argv],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(w,),
            user=user.uid, group=user.gid, extra_groups=[], umask=0o077,
            cwd=POSTFIX_CWD if os.path.isdir(POSTFIX_CWD) else "/", check=False,
        )
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().split()
    if len(report) != 2:
        raise BenchError(f"rss spawner failed: {proc.stdout[-500:]!r}")
    return int(report[0]), int(report[1]), proc.stdout


def spawner_bias(env, user):
    """Peak RSS reported for /bin/true: what the spawner itself adds (KiB)."""
    return peak_rss(["/bin/true"], env, "/dev/null", user)[1]


def percentile(values, p):
    """Linear-interpolated percentile (p in 0..100) of a non-empty list."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    k = (len(data) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summarize(seconds):
    return {
        "n": len(seconds),
        "median_ms": round(percentile(seconds, 50) * 1000, 3),
        "p90_ms": round(percentile(seconds, 90) * 1000, 3),
        "min_ms": round(min(seconds) * 1000, 3),
        "mean_ms": round(sum(seconds) / len(seconds) * 1000, 3),
    }


def _first_line(path, prefix, sep=":"):
    try:
        with open(path) as f:
            for line in f:
                if line.lower().startswith(prefix.lower()) and sep in line:
                    return line.split(sep, 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def filesystem_of(path):
    """'ext4 on /dev/vda (/)' for the mount holding path."""
    path = os.path.realpath(path)
    best = ("", "unknown", "unknown")
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
    except OSError:
        pass
    return f"{best[1]} on {best[2]} ({best[0]})"


def machine(path="/home"):
    mem_kib = _first_line("/proc/meminfo", "MemTotal").split()[0]
    return {
        "nproc": os.cpu_count(),
        "cpu": _first_line("/proc/cpuinfo", "model name"),
        "memory_gib": round(int(mem_kib) / 1048576, 1) if mem_kib.isdigit() else None,
        "kernel": platform.release(),
        "os": _first_line("/etc/os-release", "PRETTY_NAME", "=").strip('"'),
        "python": subprocess.run(["/usr/bin/python3", "-V"], stdout=subprocess.PIPE,
                                 text=True, check=False).stdout.strip(),
        "filesystem": filesystem_of(path),
    }


def write_table(table, markdown=None, json_path=None, data=None):
    """Print a markdown table; also write it to ``markdown`` and ``data``
    as JSON to ``json_path`` when given (the LMTP and speed tables)."""
    print(table)
    if markdown:
        with open(markdown, "w") as f:
            f.write(table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=2)


def emit(report, as_json, print_text):
    """Print ``report``: indented JSON when ``as_json``, else ``print_text(report)``."""
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_text(report)
