"""``dovecot:PATH``: ask a running dovecot's auth-userdb socket.

The auth-master protocol, as dovecot-lda uses it: on connect both sides
send ``VERSION\\t1\\t<minor>``; the server adds ``SPID\\t<pid>``.  The
client sends ``USER\\t<id>\\t<user>\\tservice=lda`` and the server answers
``USER\\t<id>\\t<user>\\t<key=value>...``, ``NOTFOUND\\t<id>`` or
``FAIL\\t<id>[\\treason=...]``.  Values use dovecot's tab escaping
(``\\x01`` then ``1 t r n 0``).  ``uid gid home mail quota_rule`` (and
pymda's ``mailbox quota_storage quota_messages``) are understood
(core.dovecot_row).

Contract: ``lookup(cfg, path, address)`` -> row dict or None (NOTFOUND);
TempFail 4.3.0 on FAIL, a refused/missing socket, no complete answer
within ``userdb_timeout`` or anything unexpected.

LIMITATIONS: one connection per lookup (the socket is local and cheap;
dovecot-lda does the same); the auth-userdb socket must be readable and
writable by the user pymda runs as (root for pymda -d and the daemons).
"""

import _socket
import time

from pymda.errors import TempFail

DEFAULT_PATH = "/run/dovecot/auth-userdb"
_ESCAPES = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n", "0": "\0"}


def escape(text):
    return (text.replace("\x01", "\x011").replace("\t", "\x01t").replace("\r", "\x01r")
            .replace("\n", "\x01n").replace("\0", "\x010"))


def unescape(text):
    if "\x01" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\x01" and i + 1 < len(text):
            out.append(_ESCAPES.get(text[i + 1], text[i + 1]))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def lookup(cfg, path, address):
    lines = _ask(path, address, cfg.userdb_timeout or None)
    handshake = True
    for line in lines:
        parts = line.split("\t")
        if handshake and parts[0] in ("VERSION", "SPID"):
            if parts[0] == "VERSION" and parts[1:2] != ["1"]:
                raise _fail(path, f"unsupported protocol version {line!r}")
            continue
        handshake = False
        if parts[0] == "NOTFOUND" and parts[1:2] == ["1"]:
            return None
        if parts[0] == "FAIL" and parts[1:2] == ["1"]:
            reason = [unescape(p[7:]) for p in parts[2:] if p.startswith("reason=")]
            raise _fail(path, "FAIL" + (f" ({reason[0]})" if reason else ""))
        if parts[0] == "USER" and parts[1:2] == ["1"] and len(parts) >= 3:
            from pymda.userdb.core import dovecot_row

            fields = {}
            for item in parts[3:]:
                key, _, value = item.partition("=")
                fields[key] = unescape(value)
            return dovecot_row(fields)
        raise _fail(path, f"unexpected answer {line[:80]!r}")
    raise _fail(path, "no answer")


def _fail(path, text):
    return TempFail(f"userdb dovecot:{path}: {text}", "4.3.0")


def _ask(path, address, timeout):
    """The server's lines up to and including the answer to our USER."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        sock.connect(path)
        request = f"VERSION\t1\t0\nUSER\t1\t{escape(address)}\tservice=lda\n"
        sock.sendall(request.encode("utf-8", "surrogateescape"))
        data = b""
        while True:
            if deadline is not None:  # the whole answer, not each read, within the timeout
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _socket.timeout()
                sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > 1 << 20:
                raise _fail(path, "answer too long")
            complete = data.split(b"\n")[:-1]
            if any(line.split(b"\t", 1)[0] in (b"USER", b"NOTFOUND", b"FAIL")
                   for line in complete):
                break
    except TempFail:
        raise
    except _socket.timeout:
        raise _fail(path, "timed out") from None
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from None
    finally:
        sock.close()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(path, "answer is not UTF-8") from None
    return [line for line in text.split("\n")[:-1] if line]
