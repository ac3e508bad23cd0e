"""Manual pages generated from the programs' own option tables.

``python -m pymda.manpage OUTDIR [CONTRIB_TOML]`` writes ``pymda.8``,
``pymda-lmtpd.8``, ``pymda-policyd.8``, ``pymda-admin.8`` and (given the
sample configuration, ``contrib/pymda.toml``) ``pymda.toml.5`` into OUTDIR.
``scripts/install`` runs it into ``PREFIX/share/man``.

One source of truth, so the pages cannot drift from the code:
- ``pymda(8)``: ``pymda.cli.OPTIONS`` (the table the parser and ``--help``
  use) and ``EXIT_STATUS`` below (SPEC 1.9);
- the daemons and ``pymda-admin``: their click commands (PROGRAM_MODULES,
  held equal to pyproject's console scripts by a test), options and
  sub-commands included;
- ``pymda.toml(5)``: ``contrib/pymda.toml``, whose ``#key = default`` lines a
  test already holds equal to ``pymda.config.KEYS``; the comment block above
  a key is its description.

Never imported by a delivery (it imports click through the daemons).
"""

import sys
from pathlib import Path

from pymda import __version__

DATE = "2026-11"

# SPEC 1.9: (outcome, exit, status).
EXIT_STATUS = (
    ("delivered (all targets done)", "0", "-"),
    ("temporary failure: lock timeout, disk full, I/O error, bad or unreadable "
     "configuration, a pipe that exited 75 or timed out, a user database that "
     "cannot be reached, an internal error", "75", "4.x.y"),
    ("mailbox refused (symlink, hard link, foreign owner, not a regular file, "
     "spool mbox not creatable)", "75", "4.2.0"),
    ("unknown user", "67", "5.1.1"),
    ("mailbox full", "77", "5.2.2"),
    ("message too large", "77", "5.2.3"),
    ("forwarding loop", "65", "5.4.6"),
    ("empty input", "65", "5.6.0"),
    ("a pipe failed permanently", "77", "5.3.0"),
    ("refused by policy, or rejected by the user's Sieve script", "77", "5.7.1"),
    ("command-line misuse", "64", "5.5.4"),
)

SUMMARY = {
    "pymda": "deliver one message to a local or virtual user",
    "pymda-lmtpd": "LMTP delivery server in front of pymda's engine",
    "pymda-policyd": "postfix policy service: quota check at SMTP time",
    "pymda-admin": "pymda administration: redeliver, explain, check, quota",
    "pymda.toml": "pymda configuration file",
}

SEE_ALSO = ("pymda(8)", "pymda-lmtpd(8)", "pymda-policyd(8)", "pymda-admin(8)",
            "pymda.toml(5)", "postconf(5)", "local(8)")


def escape(text):
    """Roff-escape one line of text: backslashes, and leading dot/quote."""
    text = str(text).replace("\\", "\\e").replace("-", "\\-")
    if text[:1] in (".", "'"):
        text = "\\&" + text
    return text


def _header(name, section):
    return [
        f'.TH {name.upper()} {section} "{DATE}" "pymda {__version__}" "pymda"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(SUMMARY[name])}",
    ]


def _see_also(name, section):
    me = f"{name}({section})"
    return [".SH SEE ALSO", escape(", ".join(s for s in SEE_ALSO if s != me))]


def _paragraphs(text):
    out = []
    for para in str(text or "").strip().split("\n\n"):
        para = " ".join(para.split())
        if para:
            out += [".PP", escape(para)]
    return out


# --- pymda(8) -------------------------------------------------------------------------

def render_pymda():
    from pymda import cli

    lines = _header("pymda", 8)
    lines += [".SH SYNOPSIS", ".B pymda", escape("[options] < message"),
              ".SH DESCRIPTION"]
    lines += _paragraphs(
        "pymda reads one message with its envelope from standard input (or -p FILE), "
        "works out where it goes - the user's mbox or Maildir, a Maildir++ folder, "
        "the targets of ~/.forward, the result of the user's Sieve script - and "
        "writes it there atomically, within the user's quota.\n\n"
        'Postfix runs it as: mailbox_command = /usr/local/bin/pymda -f "$SENDER"'
    )
    lines.append(".SH OPTIONS")
    for short, long, dest, takes, text in cli.OPTIONS:
        names = (f"-{short}, " if short else "") + f"--{long}"
        if dest == "forward":
            names += ", --no-forward"
        if takes:
            names += " " + cli._METAVAR.get(dest, "VALUE")
        lines += [".TP", f".B {escape(names)}", escape(text)]
    lines += [".SH EXIT STATUS"]
    lines += _paragraphs(
        "On failure pymda prints exactly one line on standard error that starts with "
        "the enhanced status code; on success it prints nothing. Postfix defers only "
        "on exit 75, so every temporary problem exits 75.")
    for outcome, code, status in EXIT_STATUS:
        lines += [".TP", f".B {code}", escape(f"{status}  {outcome}")]
    lines += [".SH ENVIRONMENT"]
    lines += _paragraphs(
        "SENDER RECIPIENT ORIGINAL_RECIPIENT USER LOGNAME HOME SHELL LOCAL DOMAIN "
        "EXTENSION as postfix's local(8) sets them; CLIENT_HOSTNAME and "
        "CLIENT_ADDRESS for logging only; PYMDA_CONFIG names the configuration file.")
    lines += [".SH FILES", ".TP", ".B /etc/pymda/pymda.toml",
              "the configuration, see pymda.toml(5)"]
    return "\n".join(lines + _see_also("pymda", 8)) + "\n"


# --- click programs -------------------------------------------------------------------

# The console scripts of pyproject.toml (tests/test_manpages.py holds them
# equal): read from this table, not from installed metadata, which a stale
# build tree on sys.path could shadow.
PROGRAM_MODULES = {
    "pymda-admin": "pymda.admin.commands",
    "pymda-lmtpd": "pymda.lmtp.main",
    "pymda-policyd": "pymda.policy.main",
}


def _click_command(program):
    """The click command behind a program: the module's group if it has
    one, else its command."""
    import importlib

    import click

    module = importlib.import_module(PROGRAM_MODULES[program])
    commands = [v for v in vars(module).values()
                if isinstance(v, click.Command) and v.__module__ != "click"]
    groups = [c for c in commands if isinstance(c, click.Group)]
    chosen = groups or commands
    if not chosen:
        raise LookupError(f"no click command found for {program}")
    return chosen[0]


def _options(command):
    import click

    lines = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        names = ", ".join(param.opts + param.secondary_opts)
        if not param.is_flag and param.metavar:
            names += f" {param.metavar}"
        elif not param.is_flag and not param.count:
            names += f" {param.type.name.upper()}"
        lines += [".TP", f".B {escape(names)}", escape(param.help or "")]
    return lines


def _usage(command, prog):
    import click

    ctx = click.Context(command, info_name=prog)
    return " ".join(command.collect_usage_pieces(ctx))


def render_click(program):
    import click

    command = _click_command(program)
    lines = _header(program, 8)
    lines += [".SH SYNOPSIS", f".B {escape(program)}", escape(_usage(command, program)),
              ".SH DESCRIPTION"]
    lines += _paragraphs(command.help)
    opts = _options(command)
    if opts:
        lines += [".SH OPTIONS"] + opts
    if isinstance(command, click.Group):
        lines.append(".SH COMMANDS")
        for name in sorted(command.commands):
            sub = command.commands[name]
            if sub.hidden:
                continue
            usage = _usage(sub, name)
            lines += [".SS " + escape(f"{program} {name} {usage}".strip())]
            lines += _paragraphs(sub.help)
            if isinstance(sub, click.Group):
                for subname in sorted(sub.commands):
                    leaf = sub.commands[subname]
                    lines += [".TP", ".B " + escape(f"{name} {subname} {_usage(leaf, subname)}"),
                              escape(" ".join(str(leaf.help or "").split()))]
                    lines += _options(leaf)
            else:
                lines += _options(sub)
    lines += [".SH FILES", ".TP", ".B /etc/pymda/pymda.toml",
              "the configuration, see pymda.toml(5)"]
    return "\n".join(lines + _see_also(program, 8)) + "\n"


# --- pymda.toml(5) --------------------------------------------------------------------

def parse_sample(text):
    """``[(key, default_text, description)]`` from the sample configuration.

    A ``#key = value`` line is a key with its default; the ``# text`` lines
    above it (since the last blank line or key line of another block)
    describe it and the keys that follow it directly.  Parsing stops at the
    per-user examples (``#[users...``).
    """
    entries = []
    comment = []
    last_was_key = False
    for line in text.splitlines():
        if line.startswith("#["):
            break
        if not line.strip():
            comment, last_was_key = [], False
            continue
        if line.startswith("# ") or line == "#":
            if last_was_key:
                comment, last_was_key = [], False
            comment.append(line[2:])
            continue
        if line.startswith("#") and " = " in line:
            key, _, value = line[1:].partition(" = ")
            value = value.split("  #")[0].strip()
            entries.append((key.strip(), value, " ".join(" ".join(comment).split())))
            last_was_key = True
    return entries


def render_toml(sample_text):
    lines = _header("pymda.toml", 5)
    lines += [".SH SYNOPSIS", ".B /etc/pymda/pymda.toml", ".SH DESCRIPTION"]
    lines += _paragraphs(
        "The configuration of every pymda program, in TOML. Every key is optional; "
        "the values shown are the built-in defaults. Unknown keys and wrong types are "
        "errors that name the file and the key (a delivery then defers, exit 75). "
        "Check a file with: pymda-admin check-config -c FILE. Templates ($user, $home, "
        "$local, $domain, $extension, $recipient_delimiter, $sender where noted) are "
        "expanded by pymda itself, never by a shell.")
    lines.append(".SH KEYS")
    for key, default, description in parse_sample(sample_text):
        lines += [".TP", f".B {escape(key)} = {escape(default)}", escape(description)]
    lines.append(".SH PER-USER TABLES")
    lines += _paragraphs(
        '[users."alice"] and [users."bob@example.org"] tables override mailbox, '
        "quota_storage and quota_messages for one user; a table that also gives uid, "
        "gid and home defines a virtual user. Other user databases (passwd-file, SQL, "
        "dovecot's auth socket) are listed in the userdb key.")
    return "\n".join(lines + _see_also("pymda.toml", 5)) + "\n"


def write_all_pages(outdir, sample=None):
    """Write every page under ``outdir/man8`` and ``outdir/man5``; return the paths."""
    outdir = Path(outdir)
    pages = {("pymda", 8): render_pymda()}
    for program in ("pymda-lmtpd", "pymda-policyd", "pymda-admin"):
        pages[(program, 8)] = render_click(program)
    if sample is not None:
        pages[("pymda.toml", 5)] = render_toml(Path(sample).read_text())
    written = []
    for (name, section), text in pages.items():
        d = outdir / f"man{section}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{name}.{section}"
        path.write_text(text)
        written.append(path)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not 1 <= len(argv) <= 2:
        print("usage: python -m pymda.manpage OUTDIR [CONTRIB_TOML]", file=sys.stderr)
        return 64
    for path in write_all_pages(argv[0], argv[1] if len(argv) > 1 else None):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
