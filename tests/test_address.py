"""Addresses and folder names (pymda.address): pure functions.

- split_address: local part, domain, user, extension with postfix's
  recipient_delimiter rules (first delimiter; several delimiter characters).
- check_folder: SPEC 1.2 unsafe names are None, safe ones their levels.
- maildir_folder / mbox_folder: Maildir++ ``.A.B`` and ``A/B``.
- encode_mutf7: IMAP modified UTF-7 (RFC 3501 5.1.3), checked against the
  RFC's own example and against an independent encoder written here.
"""

import base64

import pytest

from pymda import address


@pytest.mark.parametrize("addr, expected", [
    ("alice+work@example.org", ("alice+work", "example.org", "alice", "work")),
    ("alice@example.org", ("alice", "example.org", "alice", "")),
    ("<alice+work@example.org>", ("alice+work", "example.org", "alice", "work")),
    ("alice", ("alice", "", "alice", "")),
    ("alice+a+b@x", ("alice+a+b", "x", "alice", "a+b")),
    ("alice+@x", ("alice+", "x", "alice", "")),
    # A delimiter at the very start is not a delimiter (no empty user).
    ("+work@x", ("+work", "x", "+work", "")),
    ("Alice+Work@Example.ORG", ("Alice+Work", "Example.ORG", "Alice", "Work")),
    ("a@b@c", ("a@b", "c", "a@b", "")),
])
def test_split_address(addr, expected):
    assert address.split_address(addr, "+") == expected


def test_split_address_several_delimiters_first_wins():
    assert address.split_address("bob-x+y@d", "+-") == ("bob-x+y", "d", "bob", "x+y")
    assert address.split_address("bob+x-y@d", "+-") == ("bob+x-y", "d", "bob", "x-y")


def test_split_address_no_delimiter():
    assert address.split_address("bob+x@d", "") == ("bob+x", "d", "bob+x", "")


@pytest.mark.parametrize("name", [
    "", ".", "..", "../x", "x/..", "a/../b", ".hidden", "a/.hidden", "a//b", "/etc",
    "/", "a/", "a/./b", "a\0b", "a\nb", "a\rb",
    # '.' separates Maildir++ levels: these would make an empty level
    "x..y", "x.", "a/b.",
])
def test_unsafe_folder_names(name):
    assert address.check_folder(name) is None
    with pytest.raises(ValueError):
        address.maildir_folder(name)
    with pytest.raises(ValueError):
        address.mbox_folder(name)


@pytest.mark.parametrize("name, levels", [
    ("Work", ["Work"]),
    ("Work/Reports", ["Work", "Reports"]),
    ("a b", ["a b"]),
    ("x.y", ["x.y"]),
    ("Entwürfe", ["Entwürfe"]),
])
def test_safe_folder_names(name, levels):
    assert address.check_folder(name) == levels


def test_maildir_and_mbox_folder_paths():
    assert address.maildir_folder("Work/Reports") == ".Work.Reports"
    assert address.maildir_folder("Work") == ".Work"
    assert address.mbox_folder("Work/Reports") == "Work/Reports"


def test_non_ascii_folder_names_utf7_and_utf8():
    assert address.maildir_folder("Entwürfe/台北") == ".Entw&APw-rfe.&U,BTFw-"
    assert address.maildir_folder("Entwürfe/台北", "utf8") == ".Entwürfe.台北"
    assert address.mbox_folder("Entwürfe/台北") == "Entw&APw-rfe/&U,BTFw-"
    assert address.mbox_folder("Entwürfe/台北", "utf8") == "Entwürfe/台北"


def test_ampersand_is_escaped_in_utf7():
    assert address.maildir_folder("Q&A") == ".Q&-A"
    assert address.maildir_folder("Q&A", "utf8") == ".Q&A"


def test_is_inbox():
    assert address.is_inbox("INBOX") and address.is_inbox("inbox") and address.is_inbox("InBoX")
    assert not address.is_inbox("INBOX2")


def mutf7_reference(text):
    """RFC 3501 5.1.3, independently: runs of non-printable-ASCII chars."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "&":
            out.append("&-")
            i += 1
        elif " " <= ch <= "~":
            out.append(ch)
            i += 1
        else:
            j = i
            while j < len(text) and not (" " <= text[j] <= "~"):
                j += 1
            b64 = base64.b64encode(text[i:j].encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            i = j
    return "".join(out)


@pytest.mark.parametrize("text", [
    "~peter/mail/台北/日本語",
    "Entwürfe",
    "Ünïcödé & more",
    "emoji 😀 here",
    "tab\there",
    "ÿ",
    "日本語",
    "a&b&&c",
])
def test_encode_mutf7(text):
    assert address.encode_mutf7(text) == mutf7_reference(text)


def test_encode_mutf7_rfc3501_example():
    # RFC 3501 5.1.3's example mailbox name.
    assert address.encode_mutf7("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"


def test_mutf7_decodes_back():
    text = "Grüße/日本語 😀"
    enc = address.encode_mutf7(text)
    parts = enc.split("&")
    decoded = parts[0]
    for part in parts[1:]:
        b64, _, rest = part.partition("-")
        if not b64:
            decoded += "&" + rest
            continue
        raw = base64.b64decode(b64.replace(",", "/") + "=" * (-len(b64) % 4))
        decoded += raw.decode("utf-16-be") + rest
    assert decoded == text


def test_folder_names_longer_than_name_max_are_refused():
    assert address.maildir_folder("a" * 254) == "." + "a" * 254  # 255 bytes: fits
    with pytest.raises(ValueError):
        address.maildir_folder("a" * 255)
    with pytest.raises(ValueError):
        address.maildir_folder("/".join(["a" * 100] * 3))  # one Maildir++ name
    assert address.mbox_folder("/".join(["a" * 100] * 3)) == "/".join(["a" * 100] * 3)
    assert address.mbox_folder("b" * 255) == "b" * 255
    with pytest.raises(ValueError):
        address.mbox_folder("b" * 256)
    # The limit applies to the encoded name: 100 x "ü" is 268 bytes in UTF-7,
    # 201 in UTF-8.
    with pytest.raises(ValueError):
        address.maildir_folder("ü" * 100)
    assert address.maildir_folder("ü" * 100, "utf8") == "." + "ü" * 100
