"""pymda-admin quota USER [--recalc]: usage against limits (SPEC 4).

    $ pymda-admin quota alice
    user:     alice
    mailbox:  /home/alice/Maildir/ (maildir)
    storage:  1.2 MiB of 10.0 MiB (12%)   [1258291 of 10485760 bytes]
    messages: 42 of 1000 (4%)

USER is a user name or an address (``alice+lists@example.org`` and
``bob@example.org`` resolve as pymda-policyd resolves recipients).
Without --recalc nothing is written: an untrusted ``maildirsize`` is
replaced by a scan in memory.  ``--recalc`` rebuilds ``maildirsize`` from
a scan of the Maildir; run as root it first becomes the user (SPEC 1.8:
never touch a user's files as root), so the file stays the user's.

Exit status: 0; 67 unknown user; 75 configuration or I/O problem (one
``pymda-admin: D.S.N text`` line on stderr, as every subcommand).
"""

import click

from pymda.admin.options import config_options, load_config


def _human(n):
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _percent(used, limit):
    return f"{used * 100 // limit}%"


def format_report(identity, target, storage, messages, used_bytes, used_count):
    """The lines `pymda-admin quota` prints."""
    lines = [
        f"user:     {identity.name}",
        f"mailbox:  {target.path} ({target.kind})",
    ]
    if storage:
        lines.append(f"storage:  {_human(used_bytes)} of {_human(storage)} "
                     f"({_percent(used_bytes, storage)})   "
                     f"[{used_bytes} of {storage} bytes]")
    else:
        lines.append(f"storage:  {_human(used_bytes)}, no limit   [{used_bytes} bytes]")
    if used_count is None:
        lines.append("messages: not counted for mbox")
    elif messages:
        lines.append(f"messages: {used_count} of {messages} ({_percent(used_count, messages)})")
    else:
        lines.append(f"messages: {used_count}, no limit")
    return "\n".join(lines)


@click.command("quota")
@click.argument("user")
@click.option("--recalc", is_flag=True, help="Rebuild maildirsize from a scan of the Maildir.")
@config_options
def quota_command(user, recalc, config_path, overrides):
    """Show USER's mailbox usage against the quota; --recalc rebuilds maildirsize."""
    from pymda import quota
    from pymda.recipient import mailbox_for, switch

    try:
        cfg = load_config(config_path, overrides)
        identity, target = mailbox_for(cfg, user)
        storage, messages = quota.limits(cfg, identity)
        if recalc:
            if target.kind != "maildir":
                click.echo(f"{target.path}: an mbox has no maildirsize; nothing to rebuild",
                           err=True)
            else:
                switch(identity)  # read and rebuild as the user
                quota.recalculate(target, cfg)
        used_bytes, used_count = quota.usage(cfg, identity, target)
    except OSError as exc:
        from pymda.errors import from_oserror

        raise from_oserror(exc, "reading the mailbox") from None
    click.echo(format_report(identity, target, storage, messages, used_bytes, used_count))
    if recalc and target.kind == "maildir":
        import os

        if os.path.isdir(target.path):
            click.echo(f"rebuilt:  {os.path.join(target.path, quota.MAILDIRSIZE)}")
        else:
            click.echo(f"rebuilt:  nothing, {target.path} does not exist yet")
