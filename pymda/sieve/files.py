"""The user's Sieve files: which script runs, and the user's error log.

For the delivery pipeline (SPEC 6 "Where scripts are", "Errors"); called
after the switch to the user (pymda.sieve.delivery, from the pipeline's
Sieve step; see docs/sieve.md "How delivery runs Sieve").

- ``find_script(path, owner_uids)`` -> ``(path, warning)``: ``path`` when
  the script is to run, else None.  No file, a dangling symlink or a
  symlink loop is "no filtering" (warning None).  A script that is not a
  regular file after following the link, is owned by someone else than
  ``owner_uids`` (the user and root), or is world-writable is ignored with
  a warning (the ``.forward`` rule).  stat(2) only: a cache hit never
  opens the script, so the check must not need to.
- ``log_errors(log_path, lines, now)`` appends ``lines`` (``FILE:LINE:
  message``) to the user's log (``sieve_log``, default the script path +
  ``.log``, i.e. dovecot's ``~/.dovecot.sieve.log``), each line prefixed
  with the UTC time; when the log would pass ``MAX_LOG`` (10 kB, as
  dovecot) it is first renamed to ``.log.0`` (one old generation).
  Returns None, or the reason it could not write (to be logged to
  syslog: a broken user log never fails a delivery).

SECURITY: the log is opened with O_NOFOLLOW and O_APPEND, created 0600;
a symlink at the log's place is refused, so a user cannot make pymda
append to a file they could not write themselves (pymda runs as the
user here anyway).  Script errors in the log are the user's own.

LIMITATIONS: ``find_script`` raises nothing; an I/O error other than
"missing" (EIO...) is a warning and no filtering — the caller decides
whether that should defer the message instead.
"""

from pymda import fastos as os

MAX_LOG = 10 * 1024

_S_IFMT = 0o170000
_S_IFREG = 0o100000
_S_IWOTH = 0o002


def find_script(path, owner_uids):
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno in (2, 20, 40):      # ENOENT, ENOTDIR, ELOOP
            return None, None
        return None, "sieve script %s: %s" % (path, e.strerror)
    if st.st_mode & _S_IFMT != _S_IFREG:
        return None, "sieve script %s is not a regular file: ignored" % path
    if owner_uids is not None and st.st_uid not in owner_uids:
        return None, ("sieve script %s is owned by uid %d, not by the user or "
                      "root: ignored" % (path, st.st_uid))
    if st.st_mode & _S_IWOTH:
        return None, "sieve script %s is world-writable: ignored" % path
    return path, None


def _utc(now):
    """``YYYY-MM-DD HH:MM:SS`` of a Unix time, without ``time``/``datetime``."""
    from pymda.sieve.dates import civil_from_days

    now = int(now)
    days, secs = divmod(now, 86400)
    y, m, d = civil_from_days(days)
    return "%04d-%02d-%02d %02d:%02d:%02d" % (y, m, d, secs // 3600,
                                              secs // 60 % 60, secs % 60)


def log_errors(log_path, lines, now):
    stamp = _utc(now)
    data = "".join("%s %s\n" % (stamp, line.replace("\n", " ")) for line in lines)
    data = data.encode("utf-8", "replace")
    try:
        try:
            st = os.lstat(log_path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_size + len(data) > MAX_LOG:
            os.rename(log_path, log_path + ".0")
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        return "cannot write the sieve log %s: %s" % (log_path, e.strerror)
    return None
