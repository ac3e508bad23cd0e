"""``pymda-admin``: shell tools (SPEC 4) as a thin click layer.

Commands:
- ``redeliver [-d USER] [--mailbox PATH] [-m FOLDER] [-f SENDER] [--forward]
  [-n/--dry-run] SOURCE...`` -> redeliver.redeliver(); prints, per failure,
  ``failed: SOURCE POSITION MESSAGE-ID: D.S.N reason``, then the rate
  line, then the summary line ``N delivered, M skipped, K failed`` (the
  last line of the output).  A progress bar goes to stderr when it is a
  terminal, nothing otherwise.
- ``explain ADDRESS`` -> the plan, exactly as ``pymda -n`` prints it
  (``--json`` too): resolve.format_plan / resolve.plan_json, the same
  formatter.  When postfix's alias maps rewrite ADDRESS (aliases.py,
  ``policy_aliases``, ``--no-aliases`` to skip; not with ``-d`` or
  ``--json``): the chain, one ``a -> b (map table)`` line per lookup,
  then ``FINAL:`` and the plan of each final recipient.
- ``check-config [-c FILE]`` -> config.load(); every SPEC 5 key with its
  effective value (TOML syntax) and where it came from (default, file,
  override), then the ``[sql.NAME]`` (passwords hidden) and ``[users."..."]``
  tables, then one line per ``userdb`` source asked once
  (admin/user.py probe_sources).
- ``user ADDRESS`` (pymda/admin/user.py): uid, gid, home, mailbox,
  limits and the source that answered.
- ``quota USER [--recalc]`` (pymda/admin/quota.py).

Every command takes ``-c FILE`` (else $PYMDA_CONFIG, else
/etc/pymda/pymda.toml) and ``-o KEY=VALUE``.

EXIT STATUS: 0 success; 64 usage; 66 a SOURCE that cannot be read (and
nothing else failed); 67 unknown user; 74 standard output closed (``|
head``); 75 temporary failures (some message deferred: run again),
interrupted, or an internal error; 77 permanent failures; 78 (EX_CONFIG)
check-config found an error.  Never a traceback: the one broad catch is
``main``.

Shell completion (click): ``eval "$(_PYMDA_ADMIN_COMPLETE=bash_source
pymda-admin)"`` (zsh_source, fish_source); ``-d`` completes user names.

This module imports click and is never on the delivery path.
"""

import os
import sys

import click

from pymda import __version__
from pymda.admin.options import config_options, load_config
from pymda.errors import EX_TEMPFAIL, EX_USAGE, DeliveryError

EX_CONFIG = 78
EX_IOERR = 74
COMPLETE_VAR = "_PYMDA_ADMIN_COMPLETE"


def _complete_users(ctx, param, incomplete):
    import pwd

    names = sorted(
        p.pw_name for p in pwd.getpwall()
        if (p.pw_uid == 0 or p.pw_uid >= 1000) and p.pw_name.startswith(incomplete)
    )
    return names[:200]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="pymda-admin", message="%(prog)s %(version)s")
def cli():
    """pymda administration: redeliver saved mail, explain where mail goes,
    check the configuration."""


# --- redeliver -------------------------------------------------------------------------


class _Bar:
    """click's progress bar on stderr, only when stderr is a terminal."""

    def __init__(self):
        self.bar = None

    def start(self, total):
        self.bar = click.progressbar(length=total, label="redelivering", file=sys.stderr,
                                     show_pos=True)
        self.bar.__enter__()

    def update(self, n):
        self.bar.update(n)

    def finish(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@cli.command()
@click.option("-d", "--user", metavar="USER", shell_complete=_complete_users,
              help="Deliver as this user (root only for another user).")
@click.option("--mailbox", metavar="PATH",
              help="Main mailbox (trailing / = Maildir); relative to the user's home.")
@click.option("-m", "--folder", metavar="FOLDER", help="Deliver into this folder.")
@click.option("-f", "--from", "sender", metavar="SENDER",
              help="Envelope sender (default: Return-Path, else the From_ line).")
@click.option("--forward", is_flag=True, help="Read the user's .forward (off by default).")
@click.option("-n", "--dry-run", is_flag=True, help="Check sources, print the plan, write nothing.")
@click.option("--sieve", is_flag=True,
              help="Run the user's Sieve script on each message (nothing is sent).")
@config_options
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...",
                type=click.Path(allow_dash=True))
def redeliver(user, mailbox, folder, sender, forward, dry_run, sieve, config_path, overrides,
              sources):
    """Redeliver every message of SOURCE (mbox, .gz/.bz2/.xz mbox, Maildir,
    message file, or - for stdin) through the delivery engine, once."""
    from pymda.admin import redeliver as batch
    from pymda.log import Log
    from pymda.resolve import format_plan

    cfg = load_config(config_path, overrides)
    if folder is not None and not folder.strip():
        raise click.UsageError("empty folder name")
    opts = batch.Options(user=user, mailbox=mailbox, folder=folder, sender=sender,
                         forward=forward, dry_run=dry_run, sieve=sieve)
    progress = _Bar() if sys.stderr.isatty() and not dry_run else None

    def show_plan(targets):
        if dry_run:
            click.echo(format_plan(targets), nl=False)

    log = Log(ident="pymda-admin")
    summary = batch.redeliver(list(sources), opts, cfg, log, progress=progress,
                              stdin=sys.stdin, on_plan=show_plan)
    for failure in summary.failures:
        click.echo(failure.line())
    if summary.interrupted:
        click.echo("interrupted: run the same command again to finish")
    if summary.stopped:
        click.echo("stopped at a temporary failure (it would repeat for every message): "
                   "run the same command again to finish")
    if dry_run:
        click.echo("dry run: nothing written (counts are what would happen)")
    click.echo(summary.rate_line())
    click.echo(summary.line())
    return summary.exit


# --- explain -----------------------------------------------------------------------------


@cli.command()
@click.argument("address")
@click.option("-d", "--user", metavar="USER", shell_complete=_complete_users,
              help="The user (default: the address's local part without extension).")
@click.option("-m", "--folder", metavar="FOLDER", help="As pymda -m.")
@click.option("--mailbox", metavar="PATH", help="As pymda --mailbox.")
@click.option("--forward/--no-forward", default=None, help="Read .forward (default: config).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--aliases/--no-aliases", default=None,
              help="Follow postfix's alias maps first (default: policy_aliases).")
@config_options
def explain(address, user, folder, mailbox, forward, as_json, aliases, config_path, overrides):
    """Show where mail for ADDRESS would go, as `pymda -n -a ADDRESS`."""
    from pymda import recipient, resolve
    from pymda.errors import UsageError
    from pymda.log import Log

    cfg = load_config(config_path, overrides)
    if not user and not as_json and (cfg.policy_aliases if aliases is None else aliases):
        if explain_aliases(cfg, address):
            return 0
    address = address.strip().strip("<>")
    if not address:
        raise UsageError("empty recipient address")
    envelope = recipient.envelope_for(cfg, address, user=user)
    if not envelope.user:
        raise UsageError("empty user name")
    identity = recipient.find_user(cfg, envelope)
    # DELIVERY RIGHTS: as root, .forward is read as the user (plan_only switches).
    targets = recipient.plan_only(
        cfg, envelope, identity, folder=folder, mailbox=mailbox,
        forward=cfg.forward if forward is None else forward, log=Log(ident="pymda-admin"),
    )
    out = resolve.plan_json(targets) if as_json else resolve.format_plan(targets)
    click.echo(out, nl=False)
    # SPEC 4: which user source answered (stderr: stdout stays `pymda -n`'s plan)
    click.echo(f"user {identity.name} (uid {identity.uid}) from "
               f"{getattr(identity, 'source', None) or 'passwd'}", err=True)
    return 0


def _delivered_here(cfg, resolver, settings, address):
    """A virtual user of pymda's, or an address in one of postfix's local domains."""
    from pymda.address import split_address

    _, domain, base, _ = split_address(address, cfg.recipient_delimiter)
    return bool(cfg.user(f"{base}@{domain}")) or resolver.is_local(settings, domain)


def explain_aliases(cfg, address):
    """Print the alias chain postfix's maps give ``address`` (SPEC 4), then
    the plan of each final recipient in a local domain (or a virtual user
    of pymda's), each in a child process (the plan switches to that user
    for good).  False when no map rewrites it."""
    from pymda.policy import aliases as aliases_mod

    resolver = aliases_mod.Resolver(cfg)
    try:
        resolution = resolver.resolve(address)
        if not resolution.rewritten:  # (also: no postfix settings)
            return False
        settings = resolver.settings()
        local = {f.address: _delivered_here(cfg, resolver, settings, f.address)
                 for f in resolution.finals if f.address}
    except aliases_mod.MapError as exc:
        click.echo(f"pymda-admin: warning: alias maps not followed: {exc}", err=True)
        return False
    for line in aliases_mod.format_chain(resolution):
        click.echo(line)
    ctx = click.get_current_context()
    for final in resolution.finals:
        if final.address is None:
            continue
        if not local[final.address]:
            click.echo(f"\n{final.address}: not a local domain (postfix sends it on)")
            continue
        click.echo(f"\n{final.address}:")
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child switches user: it must never return here
            code = EX_TEMPFAIL
            try:
                params = {**ctx.params, "address": final.address, "aliases": False}
                code = ctx.invoke(explain, **params) or 0
            except DeliveryError as exc:
                click.echo(f"pymda-admin: {exc.line()}", err=True)
                code = exc.exit
            except BaseException as exc:  # noqa: BLE001 - a child reports, then exits
                click.echo(f"pymda-admin: 4.3.0 internal error: {exc!r}", err=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.waitpid(pid, 0)
    return True


# --- check-config ---------------------------------------------------------------------


def format_toml_value(value):
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def format_settings(cfg):
    """The effective configuration as TOML, each key with its origin."""
    from pymda.config import KEYS

    lines = [f"# configuration: {cfg.path or 'built-in defaults (no file)'}"]
    width = max(len(k) for k in KEYS)
    for key in KEYS:
        text = f"{key.ljust(width)} = {format_toml_value(getattr(cfg, key))}"
        origin = cfg.origins.get(key, "default")
        where = f"file {cfg.path}" if origin == "file" else origin
        lines.append(f"{text.ljust(width + 40)} # {where}")
    for name, table in sorted(cfg.sql.items()):
        lines += ["", f"[sql.{name}]  # file {cfg.path}"]
        lines += [f"{k} = {format_toml_value(hide_password(table, k, v))}"
                  for k, v in table.items()]
    for name, table in sorted(cfg.users.items()):
        lines.append("")
        lines.append(f"[users.{format_toml_value(name)}]  # file {cfg.path}")
        for key, value in table.items():
            lines.append(f"{key} = {format_toml_value(value)}")
    return "\n".join(lines) + "\n"


def hide_password(table, key, value):
    if key != "connect" or table["driver"] == "sqlite":
        return value
    from pymda.userdb.sql import parse_connect

    pairs = parse_connect(value)
    return " ".join(f"{k}=***" if k == "password" else f"{k}={v}" for k, v in pairs.items())


@cli.command("check-config")
@config_options
def check_config(config_path, overrides):
    """Validate the configuration and print the effective settings with
    where each came from (default, file, override)."""
    from pymda.errors import ConfigError

    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as exc:
        click.echo(f"check-config: {exc.text}", err=True)
        return EX_CONFIG
    click.echo(format_settings(cfg), nl=False)
    from pymda.admin.user import probe_sources

    lines, status = probe_sources(cfg)
    click.echo("\n".join(lines))
    return status


from pymda.admin.quota import quota_command  # noqa: E402
from pymda.admin.user import user_command  # noqa: E402
from pymda.sieve.tool import sieve_group  # noqa: E402 - pymda-admin sieve ...

cli.add_command(quota_command, "quota")
cli.add_command(sieve_group)
cli.add_command(user_command, "user")


# --- entry point --------------------------------------------------------------------------


def _say(line):
    try:
        click.echo(line, err=True)
    except OSError:
        pass


def main(argv=None):
    """Run pymda-admin; returns the exit status (never a traceback)."""
    stdout = sys.stdout
    try:
        rv = cli.main(args=argv, prog_name="pymda-admin", complete_var=COMPLETE_VAR,
                      standalone_mode=False)
    except SystemExit as exc:
        # click answers EPIPE on stdout (``| head``) with sys.exit(1) after
        # replacing sys.stdout; 1 is no sysexits code: EX_IOERR instead.
        if exc.code == 1 and sys.stdout is not stdout:
            _say("pymda-admin: 4.3.0 standard output closed")
            return EX_IOERR
        raise
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        exc.show()
        return EX_USAGE
    except click.Abort:
        click.echo("pymda-admin: aborted", err=True)
        return EX_TEMPFAIL
    except click.ClickException as exc:
        exc.show()
        return EX_USAGE
    except DeliveryError as exc:
        click.echo(f"pymda-admin: {exc.line()}", err=True)
        return exc.exit
    except KeyboardInterrupt:
        click.echo("pymda-admin: interrupted", err=True)
        return EX_TEMPFAIL
    except Exception as exc:  # the one broad catch
        click.echo(f"pymda-admin: 4.3.0 internal error: {type(exc).__name__}: {exc}", err=True)
        return EX_TEMPFAIL
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
