"""pymda-admin user ADDRESS: what pymda knows about a user (SPEC 4, 7).

    $ pymda-admin user alice+lists@example.org
    user:     alice@example.org
    source:   sql:mail
    uid:      5000
    gid:      5000
    home:     /srv/vmail/example.org/alice
    mailbox:  /srv/vmail/example.org/alice/Maildir/ (maildir)
    storage:  limit 1.0 GiB [1073741824 bytes]
    messages: no limit

ADDRESS is resolved as pymda, pymda-lmtpd and pymda-policyd resolve a
recipient (extension stripped, the ``userdb`` sources in order).
Nothing is written and no user file is read.

Also ``probe_sources(cfg)`` for ``pymda-admin check-config``: each
``userdb`` source is asked once (a database is connected to and its
query run for a user that cannot exist) -> (lines, exit status).

Exit status: 0; 67 unknown user; 77 refused row (5.7.1); 75 the source
cannot answer (one ``pymda-admin: D.S.N text`` line on stderr).
"""

import time

import click

from pymda.admin.options import config_options, load_config
from pymda.errors import ConfigError, DeliveryError


def _limit(value, unit):
    if not value:
        return "no limit"
    if unit == "bytes":
        from pymda.admin.quota import _human

        return f"limit {_human(value)} [{value} bytes]"
    return f"limit {value}"


def format_user(cfg, identity, target):
    from pymda import quota

    storage, messages = quota.limits(cfg, identity)
    return "\n".join([
        f"user:     {identity.name}",
        f"source:   {identity.source}",
        f"uid:      {identity.uid}",
        f"gid:      {identity.gid}",
        f"home:     {identity.home}",
        f"mailbox:  {target.path} ({target.kind})",
        f"storage:  {_limit(storage, 'bytes')}",
        f"messages: {_limit(messages, 'messages')}",
    ])


@click.command("user")
@click.argument("address")
@config_options
def user_command(address, config_path, overrides):
    """Show the user ADDRESS is delivered to: ids, home, mailbox, limits, source."""
    from pymda.recipient import mailbox_for

    cfg = load_config(config_path, overrides)
    identity, target = mailbox_for(cfg, address)  # DeliveryError: main's "pymda-admin: " line
    click.echo(format_user(cfg, identity, target))


def probe_sources(cfg):
    """(lines, status) after asking every userdb source once."""
    from pymda.userdb.core import ask_source

    lines = []
    status = 0
    for source in cfg.userdb:
        start = time.monotonic()
        try:
            if source == "config":
                note = f"{sum('uid' in t for t in cfg.users.values())} virtual user table(s)"
            elif source.startswith("sql:"):
                from pymda.userdb import sql

                sql.probe(cfg, source[4:])
                note = "connected, query ran"
            elif source.startswith("passwd-file:") and "$" in source:
                note = "one file per domain (not opened)"
            else:
                ask_source(cfg, source, "pymda-check-config@invalid")
                note = "answered"
        except ConfigError as exc:
            lines.append(f"# userdb {source}: {exc.line()}")
            status = status or 78
            continue
        except DeliveryError as exc:
            lines.append(f"# userdb {source}: {exc.line()}")
            status = status or exc.exit
            continue
        ms = (time.monotonic() - start) * 1000
        lines.append(f"# userdb {source}: ok, {note} ({ms:.1f} ms)")
    return lines, status
