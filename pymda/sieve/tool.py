"""``pymda-admin sieve``: check, test and compile Sieve scripts (SPEC 6 Tools).

- ``check FILE...``: compile each file; print every error as
  ``FILE:LINE: message``; exit 0 when all compile, 65 (EX_DATAERR)
  otherwise.  Writes nothing.
- ``test [-f SENDER] [-a RECIPIENT] [-m FOLDER] [-D DELIMITER] SCRIPT
  MESSAGE``: run SCRIPT on the message file MESSAGE (``-`` = stdin) and
  print the actions, one per line, the implicit keep last (like
  Pigeonhole's ``sieve-test``), then any warnings on stderr.  Nothing is
  stored or sent.  Exit 0; 65 when the script does not compile or fails
  at run time (the error lines are printed, then the fallback
  ``keep (implicit)``).  ``-m`` names the implicit-keep folder (as pymda's
  ``-m``); the delimiter defaults to the configuration's
  ``recipient_delimiter``.
- ``test -d USER [--execute] ...`` / ``test --execute ...``: SCRIPT
  as the user's script through the delivery pipeline (pymda.recipient),
  as USER (default: the invoking user; ``-a`` defaults to USER@host):
  without ``--execute`` the plan in ``pymda -n``'s format (sources
  ``sieve SCRIPT line N``, redirect/vacation entries, nothing written,
  nothing sent); with it the message is delivered and sent as ``pymda``
  would, exit code as ``pymda``.
- ``compile PATH...``: write the compiled form next to each script
  (``SCRIPT.pymda-bin``, see pymda.sieve.cache) — for admin scripts in
  places users cannot write; a directory compiles its ``*.sieve`` files.
  Exit 0, or 65 when one does not compile.

Registered in pymda/admin/commands.py as the ``sieve`` group; imports click, so it
is never on the delivery path.
"""

import os
import sys

import click

from pymda.errors import EX_DATAERR

EX_OK = 0
DEFAULT_RECIPIENT = "recipient@example.com"


@click.group("sieve")
def sieve_group():
    """Check, test and compile Sieve scripts."""


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _each(paths, action):
    """Run ``action(path)`` for each path; print compile errors as
    FILE:LINE: lines; the exit status (0, or 65 when one failed)."""
    from pymda.sieve.result import SieveCompileError

    status = EX_OK
    for path in paths:
        try:
            action(path)
        except SieveCompileError as e:
            for line in e.lines():
                click.echo(line)
            status = EX_DATAERR
        except OSError as e:
            click.echo("%s:0: cannot read: %s" % (path, e.strerror))
            status = EX_DATAERR
    return status


@sieve_group.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def check_command(files):
    """Compile FILE... and print FILE:LINE: error lines."""
    from pymda.sieve.cache import compile_bytes

    return _each(files, lambda path: compile_bytes(_read(path), path))


def _delimiter():
    try:
        from pymda import config

        return config.load().recipient_delimiter
    except Exception:       # no readable config: pymda's default
        return "+"


@sieve_group.command("test")
@click.option("-f", "--from", "sender", default="sender@example.com",
              metavar="SENDER", help="Envelope sender ('' = null sender).")
@click.option("-a", "--recipient", default=DEFAULT_RECIPIENT,
              metavar="RECIPIENT", help="Envelope recipient.")
@click.option("-m", "--folder", default="INBOX", metavar="FOLDER",
              help="The implicit-keep folder.")
@click.option("-D", "--delimiter", default=None, metavar="CHARS",
              help="recipient_delimiter (default: from the configuration).")
@click.option("-d", "--user", default=None, metavar="USER",
              help="Run as USER, in USER's mailbox (through the delivery pipeline).")
@click.option("--execute", is_flag=True,
              help="Do the actions: deliver MESSAGE (and send) as pymda would.")
@click.option("-c", "--config", "config_path", metavar="FILE",
              type=click.Path(dir_okay=False), help="Configuration file.")
@click.option("-o", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one config key (repeatable).")
@click.argument("script", type=click.Path(dir_okay=False))
@click.argument("message", type=click.Path(dir_okay=False, allow_dash=True))
def test_command(sender, recipient, folder, delimiter, user, execute, config_path,
                 overrides, script, message):
    """Print the actions SCRIPT takes on MESSAGE (nothing is delivered)."""
    if user is not None or execute:
        sys.exit(_through_pipeline(sender, recipient, folder, user, execute,
                                   config_path, overrides, script, message))
    from pymda.sieve import interp
    from pymda.sieve.cache import compile_bytes
    from pymda.sieve.result import SieveCompileError
    from pymda.sieve.mail import MailView
    from pymda.sieve.result import Outcome, format_action

    data = sys.stdin.buffer.read() if message == "-" else _read(message)
    if data.startswith(b"From "):           # an mbox From_ line is not a header
        data = data[data.find(b"\n") + 1:]
    end = len(data)
    for sep in (b"\r\n\r\n", b"\n\n"):
        k = data.find(sep)
        if k >= 0:
            end = k + len(sep)
            break
    view = MailView(data[:end], len(data), lambda: data)
    from pymda.sieve.run import include_loader

    # include :personal finds scripts next to SCRIPT (no cache written)
    env = interp.Environment(sender=sender, recipient=recipient,
                             orig_recipient=recipient,
                             include_loader=include_loader(
                                 os.path.dirname(os.path.abspath(script)), None))
    opts = interp.Options(keep_folder=folder,
                          recipient_delimiter=delimiter if delimiter is not None
                          else _delimiter())
    try:
        outcome = interp.execute(compile_bytes(_read(script), script), view,
                                 env, opts, script)
    except SieveCompileError as e:
        outcome = Outcome(error=e, script=script)
    status = EX_OK
    if outcome.error is not None:
        for line in outcome.error.lines():
            click.echo("error: " + line)
        status = EX_DATAERR
    for action in outcome.final_actions():
        click.echo(format_action(action))
    for warning in outcome.warnings:
        click.echo("warning: " + warning, err=True)
    _print_sends(outcome, env, view, data, recipient)
    return status


def _print_sends(outcome, env, view, data, recipient):
    """What would be sent (``send vacation from <> to <x>``), and why a
    vacation or redirect would not be (``warning:`` lines on stderr)."""
    import time

    from pymda.sieve import send

    ctx = send.Context(env=env, view=view, message=data, user_address=recipient,
                       now=time.time(), script=outcome.script or "script")
    plan = send.prepare(outcome.final_actions(), ctx)
    for out in plan.outgoing:
        click.echo("send %s from <%s> to <%s>" % (out.kind, out.envelope_from,
                                                  out.recipient))
    for line in plan.logs:
        click.echo("warning: " + line, err=True)


def _through_pipeline(sender, rcpt, folder, user, execute, config_path, overrides,
                      script, message):
    """``-d USER`` / ``--execute``: SCRIPT as the user's one script
    (``sieve_script``, no before/after/default), run by the per-recipient
    pipeline (pymda.recipient) as USER (default: the invoking user).
    Without --execute the plan is printed (pymda -n's format, nothing
    written or sent); with it the message is delivered and the exit code
    is pymda's.  The script must pass the trust checks of a real one."""
    from pymda import config, users
    from pymda import message as message_mod
    from pymda import recipient as pipeline
    from pymda.errors import DeliveryError
    from pymda.log import Log
    from pymda.resolve import format_plan

    try:
        cfg = config.load(config_path, list(overrides))
        cfg = cfg.replace(sieve=True, sieve_script=os.path.abspath(script),
                          sieve_before=(), sieve_after=(), sieve_default="")
        if message == "-":
            msg = message_mod.read(sys.stdin.buffer, cfg.message_size_limit)
        else:
            with open(message, "rb") as f:
                msg = message_mod.read(f, cfg.message_size_limit)
        identity = None
        if user is None:
            identity = users.current()
            user = identity.name
        if rcpt == DEFAULT_RECIPIENT:
            rcpt = "%s@%s" % (user, os.uname().nodename)
        envelope = pipeline.envelope_for(cfg, rcpt, sender=sender, user=user)
        identity = pipeline.find_user(cfg, envelope, identity)
        log = Log(ident="pymda-admin")
        how = {"folder": None if folder == "INBOX" else folder}
        if not execute:
            plan = pipeline.plan_only(cfg, envelope, identity, log=log, message=msg, **how)
            click.echo(format_plan(plan), nl=False)
            return EX_OK
        result = pipeline.deliver(cfg, log, msg, envelope, identity,
                                  own_delivered_to=False, **how)
        if result.error is not None:
            raise result.error
        click.echo("delivered")
        return EX_OK
    except DeliveryError as exc:
        click.echo(exc.line(), err=True)
        return exc.exit


@sieve_group.command("compile")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
def compile_command(paths):
    """Write SCRIPT.pymda-bin next to each script (admin scripts)."""
    from pymda.sieve.cache import compile_to_sidecar

    scripts = []
    for path in paths:
        if os.path.isdir(path):
            scripts.extend(os.path.join(path, n) for n in sorted(os.listdir(path))
                           if n.endswith(".sieve"))
        else:
            scripts.append(path)
    return _each(scripts, lambda path: click.echo(
        "compiled %s -> %s" % (path, compile_to_sidecar(path))))
