"""What pymda should store (SPEC 1.1), and an independent mbox splitter.

- ``normalise(raw)``: CRLF -> LF, a leading ``From `` line removed, a final
  newline added.
- ``expected(raw, sender, recipient)``: ``Return-Path: <sender>`` +
  ``Delivered-To: recipient`` + normalise(raw) (valid when ``raw`` has no
  leading Return-Path/Delivered-To of its own for this sender/recipient).
- ``split_header(msg)`` -> (header bytes incl. the empty line, body bytes)
- ``split_mbox(data)`` -> list of (from_line, message) with the separator
  blank line removed and mboxrd quoting undone (``unquote=False`` to keep it)
- ``quote(msg, style)``: the mboxrd/mboxo quoting of a stored message
"""


def normalise(raw):
    data = raw.replace(b"\r\n", b"\n")
    if data.startswith(b"From "):
        nl = data.find(b"\n")
        data = b"" if nl < 0 else data[nl + 1:]
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data


def expected(raw, sender, recipient):
    rp = f"<{sender}>" if sender not in ("", "<>") else "<>"
    return (f"Return-Path: {rp}\nDelivered-To: {recipient}\n").encode() + normalise(raw)


def split_header(msg):
    if msg.startswith(b"\n"):
        return b"\n", msg[1:]
    i = msg.find(b"\n\n")
    if i < 0:
        return msg, b""
    return msg[: i + 2], msg[i + 2:]


def _is_quoted_from(line):
    stripped = line.lstrip(b">")
    return stripped.startswith(b"From ") and len(stripped) < len(line)


def quote(msg, style="mboxrd"):
    """Quote every line of ``msg`` as an mbox writer must (mboxrd: ^>*From )."""
    out = []
    for line in msg.splitlines(keepends=True):
        if line.startswith(b"From ") or (style == "mboxrd" and _is_quoted_from(line)):
            line = b">" + line
        out.append(line)
    return b"".join(out)


def split_mbox(data, unquote=True):
    """Parse an mbox: (from_line, message) pairs.  Each message must be
    followed by exactly one empty line (SPEC 1.4), which is removed."""
    if data and not data.startswith(b"From "):
        raise ValueError(f"mbox does not start with a From line: {data[:60]!r}")
    result = []
    current = None
    prev_blank = True
    for line in data.splitlines(keepends=True):
        if prev_blank and line.startswith(b"From "):
            if current is not None:
                result.append(current)
            current = [line.rstrip(b"\n"), []]
            prev_blank = False
            continue
        current[1].append(line)
        prev_blank = line == b"\n"
    if current is not None:
        result.append(current)
    messages = []
    for from_line, lines in result:
        if not lines or lines[-1] != b"\n":
            raise ValueError(f"message after {from_line!r} is not followed by an empty line")
        lines = lines[:-1]
        if unquote:
            lines = [line[1:] if _is_quoted_from(line) else line for line in lines]
        messages.append((from_line, b"".join(lines)))
    return messages
