"""The corpus packed the ways admins find old mail (for the redelivery tests).

- ``python_mbox(msgs, path)``: written by Python's ``mailbox.mbox`` (mboxo).
- ``procmail_mbox(msgs, path)``: written by Debian's procmail, one real
  ``procmail -f SENDER RCFILE`` process per message, as an MDA would.
- ``compressed(path, kind)``: gzip / bzip2 / xz copy.
- ``maildir_with_flags(msgs, path)``: a Maildir, every third message in
  ``new/``, the others in ``cur/`` with varied ``:2,`` flags.
- ``expected_bodies(msgs)`` / ``body_of(data)``: what must arrive.

Comparison rule: the body (after the header's empty line) of each stored
message must equal the original's byte for byte, except for trailing
newlines, which mbox cannot carry (procmail stores a message that ends in
an empty line without adding a separator; see pymda/admin/sources.py).
"""

import bz2
import gzip
import lzma
import mailbox
import os
import subprocess

PROCMAIL = "/usr/bin/procmail"


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()
FLAG_SETS = ("S", "RS", "FS", "", "T")


def python_mbox(msgs, path):
    box = mailbox.mbox(str(path), create=True)
    box.lock()
    try:
        for m in msgs:
            box.add(m.read_bytes())
        box.flush()
    finally:
        box.unlock()
        box.close()
    return path


def procmail_mbox(msgs, path, sender="old-sender@example.org"):
    rc = f"{path}.rc"
    with open(rc, "w") as f:
        f.write(f"DEFAULT={path}\nLOGFILE=/dev/null\nVERBOSE=no\n")
    for m in msgs:
        proc = subprocess.run([PROCMAIL, "-f", sender, rc], input=m.read_bytes(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                              env={"PATH": "/usr/bin:/bin", "HOME": os.path.dirname(str(path))})
        assert proc.returncode == 0, proc.stdout
    os.unlink(rc)
    return path


def compressed(path, kind):
    data = read_bytes(path)
    out = f"{path}.{kind}"
    packer = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind]
    with open(out, "wb") as f:
        f.write(packer(data))
    return out


def maildir_with_flags(msgs, path):
    """Returns {original file name: flags or None (new/)}."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    flags = {}
    for i, m in enumerate(msgs):
        name = f"{1700000000 + i}.M{i}P1.example"
        if i % 3 == 0:
            dest = os.path.join(path, "new", name)
            flags[m.name] = None
        else:
            f = FLAG_SETS[i % len(FLAG_SETS)]
            dest = os.path.join(path, "cur", f"{name}:2,{f}")
            flags[m.name] = f
        with open(dest, "wb") as out:
            out.write(m.read_bytes())
    return flags


def body_of(data):
    data = data.replace(b"\r\n", b"\n")
    if data.startswith(b"From "):
        data = data.split(b"\n", 1)[1]
    head, sep, body = data.partition(b"\n\n")
    return body.rstrip(b"\n") if sep else b""


def expected_bodies(msgs):
    """Sorted bodies of the corpus as split into messages by an mbox reader.

    A file that starts with a From_ line is an mbox itself (SPEC 1.1): one
    corpus file carries a second, unquoted ``From <sha> Mon Sep 17 ...``
    line (git format-patch inside it) and is two messages to any mbox
    reader when given alone -- but one message once packed (writers quote
    it).  Packed sources use ``packed_bodies``.
    """
    return sorted(body_of(m.read_bytes()) for m in msgs)


packed_bodies = expected_bodies


def maildir_files(directory):
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(directory, sub)
        if os.path.isdir(d):
            out.extend(os.path.join(d, n) for n in sorted(os.listdir(d)))
    return out


def maildir_bodies(directory):
    return sorted(body_of(read_bytes(p)) for p in maildir_files(directory))


def mbox_bodies(path):
    """Bodies of an mbox pymda wrote (mboxrd, every message ends with \\n\\n)."""
    import re

    data = read_bytes(path)
    parts = re.split(rb"\n\nFrom [^\n]*\n", b"\n\n" + data)
    out = []
    for part in parts[1:]:
        part = re.sub(rb"(?m)^>(>*From )", rb"\1", part)
        out.append(body_of(part))
    return sorted(out)
