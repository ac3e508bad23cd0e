"""Read mailboxes back with the real dovecot (``doveadm fetch``).

``read_maildir(path)`` / ``read_mbox(path)`` -> list of message bytes, in
dovecot's order (UIDs), exactly as dovecot would serve them over IMAP
(``text`` = header + body).  ``folders(maildir)`` -> folder names.
``mbox_flags(path)`` -> [(uid, {flag, ...}), ...] as dovecot sees them
(system flags and keywords, e.g. ``\\Seen``, ``\\Deleted``, ``$Junk``).

How (documented in docs/testing.md): doveadm needs no running dovecot and
no auth service when it is run WITHOUT ``-u`` as the mailbox's owner: it
then takes the user from ``$USER``/``$HOME`` and skips the userdb lookup.
It refuses root ("Mail access not allowed for root"), so the mailbox is
first copied into a private temporary directory owned by the mailbox's
owner (or by ``nobody`` when root owns it) — the copy also keeps dovecot's
index files and any mbox rewrite away from the mailbox under test:

    doveadm -c CONF -o mail_location=maildir:COPY fetch \\
        'uid size.physical text' mailbox INBOX all
    doveadm -c CONF -o mail_location=mbox:COPY/mail:INBOX=COPY/mbox ...

CONF is a two-line file (``ssl = no``, ``log_path = /dev/stderr``).  The
default "pager" output is ``uid: N\\nsize.physical: S\\ntext:\\n<S bytes>``
with ``\\f\\n`` between messages; we split by the size, so a message
containing a form feed cannot confuse the parser, and a size that does
not match the content (a wrong ``S=`` in a Maildir name) fails loudly.

NOTE: dovecot does not undo mbox "From " quoting: a body line stored as
``>From x`` comes back as ``>From x``.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap

DOVEADM = "/usr/bin/doveadm"


class DovecotError(AssertionError):
    pass


def installed():
    return os.access(DOVEADM, os.X_OK)


def _owner_ids(path):
    st = os.stat(path)
    if st.st_uid != 0:
        return st.st_uid, st.st_gid
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def _private_copy(src, kind):
    """Copy ``src`` into a fresh dir owned by the reader; return (dir, uid, gid)."""
    if os.geteuid() == 0:
        uid, gid = _owner_ids(src)
    else:
        uid, gid = os.getuid(), os.getgid()
    top = tempfile.mkdtemp(prefix="pymda-dovecot-")
    os.chmod(top, 0o755)
    dst = os.path.join(top, "Maildir" if kind == "maildir" else "mbox")
    if kind == "maildir":
        shutil.copytree(src, dst, symlinks=True)
    else:
        shutil.copy2(src, dst)
        os.mkdir(os.path.join(top, "mail"))
    with open(os.path.join(top, "dovecot.conf"), "w") as f:
        f.write("ssl = no\nlog_path = /dev/stderr\n")
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(top):
            os.chown(root, uid, gid)
            for name in files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    return top, uid, gid


def doveadm(top, uid, gid, location, args, timeout=120):
    name = pwd.getpwuid(uid).pw_name
    kwargs = {}
    if os.geteuid() == 0:
        kwargs.update(user=uid, group=gid, extra_groups=[])
    proc = subprocess.run(
        [DOVEADM, "-c", os.path.join(top, "dovecot.conf"), "-o", f"mail_location={location}",
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, cwd=top,
        env={"HOME": top, "USER": name, "PATH": "/usr/bin:/bin"}, check=False, **kwargs,
    )
    if proc.returncode != 0:
        raise DovecotError(f"doveadm {' '.join(args)} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')}")
    return proc.stdout


def parse_fetch(out):
    """Split pager output of ``fetch 'uid size.physical text'``."""
    messages = []
    pos = 0
    n = len(out)
    while pos < n:
        for field in (b"uid: ", b"size.physical: "):
            if not out.startswith(field, pos):
                raise DovecotError(f"unexpected doveadm output at {pos}: {out[pos:pos + 80]!r}")
            end = out.index(b"\n", pos)
            value = out[pos + len(field):end]
            if field == b"size.physical: ":
                size = int(value)
            pos = end + 1
        if not out.startswith(b"text:\n", pos):
            raise DovecotError(f"no text field at {pos}: {out[pos:pos + 80]!r}")
        pos += len(b"text:\n")
        messages.append(out[pos:pos + size])
        pos += size
        if pos < n:
            if not out.startswith(b"\f\n", pos):
                raise DovecotError(
                    f"message {len(messages)}: size.physical {size} does not match the "
                    f"text dovecot returned (next bytes {out[pos:pos + 40]!r})")
            pos += 2
    return messages


def _fetch(top, uid, gid, location, mailbox):
    out = doveadm(top, uid, gid, location,
                  ["fetch", "uid size.physical text", "mailbox", mailbox, "all"])
    return parse_fetch(out)


def read_maildir(path, folder="INBOX"):
    """Messages in Maildir ``path`` (folder: dovecot name, e.g. "Work")."""
    top, uid, gid = _private_copy(path, "maildir")
    try:
        return _fetch(top, uid, gid, f"maildir:{top}/Maildir", folder)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def read_mbox(path):
    """Messages in the mbox file ``path`` as dovecot's INBOX."""
    top, uid, gid = _private_copy(path, "mbox")
    try:
        return _fetch(top, uid, gid, f"mbox:{top}/mail:INBOX={top}/mbox", "INBOX")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def computed_virtual_sizes(path, folder="INBOX"):
    """{file name: size.virtual} as dovecot COMPUTES it from the content.

    dovecot takes ``W=`` from a Maildir name without reading the file, so
    the copy's names lose their ``,W=`` (and ``,S=``) first; the result is
    keyed by the original names.
    """
    top, uid, gid = _private_copy(path, "maildir")
    try:
        sub_dir = os.path.join(top, "Maildir") if folder == "INBOX" else \
            os.path.join(top, "Maildir", "." + folder)
        originals = []
        for sub in ("new", "cur"):
            for name in sorted(os.listdir(os.path.join(sub_dir, sub))):
                base, _, info = name.partition(":")
                bare = base.split(",")[0] + (":" + info if info else "")
                os.rename(os.path.join(sub_dir, sub, name), os.path.join(sub_dir, sub, bare))
                originals.append((bare, name))
        out = doveadm(top, uid, gid, f"maildir:{top}/Maildir",
                      ["-f", "tab", "fetch", "guid size.virtual", "mailbox", folder, "all"])
        sizes = dict(line.split("\t") for line in out.decode().splitlines()[1:])
        return {name: int(sizes[bare.split(":")[0]]) for bare, name in originals}
    finally:
        shutil.rmtree(top, ignore_errors=True)


def folders(path):
    """Folder names dovecot sees in Maildir ``path``."""
    top, uid, gid = _private_copy(path, "maildir")
    try:
        out = doveadm(top, uid, gid, f"maildir:{top}/Maildir", ["mailbox", "list"])
        return sorted(out.decode().split())
    finally:
        shutil.rmtree(top, ignore_errors=True)


class QuotaDovecot:
    """doveadm against one user's Maildir (as that user, no auth service),
    with the `maildir` quota backend when a rule is given."""

    def __init__(self, tmp_path, user, maildir, rule=None):
        """``rule``: dovecot's quota_rule (``storage=10K:messages=5``); None:
        no quota plugin (a plain mail user, as for subscriptions)."""
        self.user = user
        self.conf = tmp_path / "dovecot.conf"
        quota = textwrap.dedent(f"""
            mail_plugins = quota
            plugin {{
              quota = maildir:User quota
              quota_rule = *:{rule}
            }}
        """) if rule else ""
        self.conf.write_text(textwrap.dedent(f"""
            base_dir = {tmp_path}/dovecot-run
            state_dir = {tmp_path}/dovecot-state
            log_path = /dev/stderr
            ssl = no
            mail_location = maildir:{maildir}
        """) + quota)

    def run(self, *args, input_bytes=None):
        env = {"PATH": "/usr/bin:/bin", "USER": self.user.name, "HOME": str(self.user.home)}
        return subprocess.run(
            [DOVEADM, "-c", str(self.conf), "-o", f"mail_uid={self.user.uid}",
             "-o", f"mail_gid={self.user.gid}", *args],
            input=input_bytes, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            check=False,
        )

    def quota_get(self):
        """{"STORAGE": (kilobytes, limit), "MESSAGE": (count, limit)}"""
        proc = self.run("-f", "tab", "quota", "get")
        assert proc.returncode == 0, proc.stderr
        rows = [line.split("\t") for line in proc.stdout.decode().splitlines()[1:]]
        return {r[1]: (int(r[2]), int(r[3]) if r[3] != "-" else None) for r in rows}

    def recalc(self):
        proc = self.run("quota", "recalc")
        assert proc.returncode == 0, proc.stderr

    def save(self, data, mailbox="INBOX"):
        return self.run("save", "-m", mailbox, input_bytes=data)

    def ok(self, *args):
        """stdout of a doveadm command that must succeed."""
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def subscribed(self):
        """Folder names dovecot lists as subscribed (``mailbox list -s``)."""
        return sorted(self.ok("mailbox", "list", "-s").decode().splitlines())


def mbox_flags(path):
    """[(uid, set of flags)] of the mbox file ``path`` as dovecot's INBOX."""
    top, uid, gid = _private_copy(path, "mbox")
    try:
        out = doveadm(top, uid, gid, f"mbox:{top}/mail:INBOX={top}/mbox",
                      ["fetch", "uid flags", "mailbox", "INBOX", "all"])
    finally:
        shutil.rmtree(top, ignore_errors=True)
    result = []
    for block in out.decode().split("\f\n"):
        fields = dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "")
                      for line in block.splitlines() if line)
        if fields:
            result.append((int(fields["uid"]), set(fields.get("flags", "").split())))
    return result
