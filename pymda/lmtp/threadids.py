"""Per-thread effective ids for a root pymda-lmtpd (Linux).

Contract: ``ThreadIds.start()`` -> a ThreadIds, or None when this
system cannot switch the ids of one thread (not Linux, an architecture
whose system call numbers are not listed below, or the probe failed).
``users.use_thread_ids(ids)`` makes ``users.switch_temporarily`` /
``switch_back`` use it; from then on those two switch the *calling
thread's* effective uid, gid and supplementary groups only.

WHY: the kernel keeps credentials per thread; glibc's setegid/seteuid/
setgroups (what Python's os functions call) change every thread of the
process, to give POSIX's process-wide semantics.  With the process-wide
switch a root server can run one switched delivery at a time (nothing
else may open a file meanwhile), so one worker process is one delivery
at a time, fsync included.  Calling the system calls directly (as Samba
does for its per-thread credentials) switches one thread: a root worker
delivers to several users at once, as a worker running as the mail user
already does.

SAFETY:
- the probe (``start``) switches a fresh thread to ``nobody``'s uid and
  checks that the main thread stayed root while it was switched, then
  that the thread came back; anything else: None (the process-wide
  switch is used, as before);
- ``switch_back``'s verification (getresuid, getresgid, getgroups, which
  read the calling thread's ids) and its exit on failure are unchanged;
- nothing in pymda calls glibc's set*id functions in the server process
  once this is on (a fork's child is single-threaded: it may);
- a switched thread is back to root before the thread pool gives it
  another job (recipient.deliver's ``finally``).
"""

import ctypes
import os
import threading

# setgroups, setresgid, setresuid (x86_64's table; aarch64 and riscv64
# use asm-generic/unistd.h).  Other machines: the process-wide switch.
_SYSCALLS = {
    "x86_64": (116, 119, 117),
    "aarch64": (159, 149, 147),
    "riscv64": (159, 149, 147),
}
_UNCHANGED = -1  # the kernel's "leave this id as it is"


class ThreadIds:
    """setgroups/setresgid/setresuid for the calling thread only."""

    def __init__(self, numbers):
        self.nr_groups, self.nr_gid, self.nr_uid = numbers
        libc = ctypes.CDLL(None, use_errno=True)
        self.syscall = libc.syscall
        self.syscall.restype = ctypes.c_long
        self.local = threading.local()

    @classmethod
    def start(cls):
        """A working ThreadIds, or None (see the module's SAFETY)."""
        numbers = _SYSCALLS.get(os.uname().machine)
        if os.uname().sysname != "Linux" or numbers is None or os.geteuid() != 0:
            return None
        try:
            ids = cls(numbers)
            return ids if ids._probe() else None
        except (OSError, AttributeError):
            return None

    def saved(self):
        """The calling thread's saved ids: users' list of one entry."""
        try:
            return self.local.saved
        except AttributeError:
            self.local.saved = []
            return self.local.saved

    def to_user(self, gid, uid):
        """Groups cleared, then the effective gid, then the effective uid."""
        self._call(self.nr_groups, ctypes.c_size_t(0), None)
        self._call(self.nr_gid, ctypes.c_long(_UNCHANGED), ctypes.c_long(gid),
                   ctypes.c_long(_UNCHANGED))
        self._call(self.nr_uid, ctypes.c_long(_UNCHANGED), ctypes.c_long(uid),
                   ctypes.c_long(_UNCHANGED))

    def to_root(self, groups, gid, uid):
        """The effective uid first (setgroups needs it), then gid, groups."""
        self._call(self.nr_uid, ctypes.c_long(_UNCHANGED), ctypes.c_long(uid),
                   ctypes.c_long(_UNCHANGED))
        self._call(self.nr_gid, ctypes.c_long(_UNCHANGED), ctypes.c_long(gid),
                   ctypes.c_long(_UNCHANGED))
        array = (ctypes.c_uint * len(groups))(*groups)
        self._call(self.nr_groups, ctypes.c_size_t(len(groups)), array)

    def _call(self, number, *args):
        if self.syscall(ctypes.c_long(number), *args) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    def _probe(self):
        """True when a thread switched to nobody left this thread root."""
        root = (os.getresuid(), os.getresgid(), os.getgroups())
        switched, checked = threading.Event(), threading.Event()
        seen = {}

        def thread():
            try:
                self.to_user(65534, 65534)
                seen["thread"] = (os.geteuid(), os.getegid(), os.getgroups())
            except OSError:
                pass
            finally:
                switched.set()
                checked.wait(10)
                try:
                    self.to_root(root[2], root[1][1], root[0][1])
                except OSError:
                    pass
                seen["back"] = (os.getresuid(), os.getresgid(), os.getgroups())

        worker = threading.Thread(target=thread, name="pymda-ids-probe")
        worker.start()
        switched.wait(10)
        seen["main"] = (os.getresuid(), os.getresgid(), os.getgroups())
        checked.set()
        worker.join(10)
        if worker.is_alive() or seen.get("back") != root:
            # a thread stuck with other ids: never serve from this process
            from pymda.users import _fatal

            _fatal("the per-thread id probe did not come back")
        return seen.get("thread") == (65534, 65534, []) and seen["main"] == root
