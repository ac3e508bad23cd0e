"""Running Sieve scripts: one script (``evaluate``), a sequence of them
(``sieve_before`` / personal or ``sieve_default`` / ``sieve_after``,
SPEC 6) and the ``include`` loader of a delivery.

    from pymda.sieve.run import evaluate
    outcome = evaluate(script_path, view, env, opts, cache_dir=home + "/.cache/pymda/sieve")

``script_path``: the script file (already found and trust-checked by the
caller: SPEC 6 "Where scripts are"; run only after the switch to the
user).  ``view``: a ``pymda.sieve.mail.MailView`` of the message as
received.  ``env``: ``pymda.sieve.interp.Environment`` (envelope sender /
recipient / original recipient, ``mailbox_exists`` callback, ``now``).
``opts``: ``pymda.sieve.interp.Options`` (``recipient_delimiter``,
``keep_folder`` = the implicit-keep target's folder name as a script would
write it, limits, ``extensions``).  ``cache_dir``: where the compiled
form is kept (None: no cache; the sidecar ``SCRIPT.pymda-bin`` of
``pymda-admin sieve compile`` is read in any case).  ``max_size``: the
``sieve_max_script_size`` limit in octets.

Returns a ``pymda.sieve.result.Outcome``: ``final_actions()`` is what to
do; when ``error`` is set (compile error, runtime error, limit, a script
that cannot be read) the actions are empty, the implicit keep is on, and
``error.lines()`` are the ``FILE:LINE: message`` lines to log to syslog
and the user's ``sieve_log``.  Never raises for anything the script or
its cache does; a temporary failure to read the script is an error of
the outcome too (the caller may choose to defer instead: ``error`` is a
SieveError whose ``errors[0][1]`` is 0 and whose ``oserror`` is set).

Does no I/O except reading the script and its cache and writing the
cache; does not deliver, send or log.

SEQUENCES AND INCLUDES (used by pymda.sieve.step):

- ``script_list(before, personal, default, after)`` -> list of paths:
  each entry of ``before``/``after`` is a file or a directory (its
  ``*.sieve`` files in byte order; a missing entry is skipped);
  ``personal`` (the user's trust-checked script or None) and else
  ``default`` (when non-empty and present) in the middle.
- ``run_sequence(scripts, view, env, opts, max_size)`` -> ``Outcome``:
  ``scripts`` is a list of ``(path, cache_dir)`` (``cache_dir`` None for
  admin scripts: their ``pymda-admin sieve compile`` sidecar is used).
  Dovecot's rules: the next script runs only while a keep (implicit or
  explicit) is in effect; the actions of all scripts that ran are merged
  (one copy per folder; a second ``vacation`` is dropped silently; a
  ``reject`` after an earlier script stored or sent the message is
  dropped with a warning, since pymda cannot both store and refuse one
  delivery); the implicit keep and its flags are those of the last
  script that ran.  An error in script N stops the sequence: the
  Outcome carries that ``error`` (its lines are logged), the actions of
  the scripts before N, and the implicit keep.
- ``include_loader(personal_dir, global_dir, cache_dir, extensions,
  max_size)`` -> ``loader(location, name)`` for ``Environment.
  include_loader``: ``NAME.sieve`` in ``personal_dir`` (the directory of
  the user's active script, e.g. ``~/sieve/``) or ``global_dir``
  (admin scripts), through the compiled cache like any script (a
  personal include gets its own cache entry keyed by its own file, so an
  edited included file is recompiled; global ones use their sidecar).
  Raises LookupError when there is no such script.

PURE apart from reading scripts and their caches (and ``script_list``
listing the ``before``/``after`` directories).
"""

from pymda import fastos as os
from pymda.sieve import cache
from pymda.sieve.interp import DEFAULT_OPTIONS, _folder_key, _same_target, execute
from pymda.sieve.result import Outcome, SieveError, SieveRuntimeError


def evaluate(script_path, view, env, opts=None, cache_dir=None, max_size=1 << 20):
    opts = opts or DEFAULT_OPTIONS
    try:
        compiled, _hit = cache.load(script_path, cache_dir, opts.extensions,
                                    max_size)
    except SieveError as e:
        return Outcome(error=e, script=script_path)
    except OSError as e:
        err = SieveRuntimeError("cannot read the script: %s" % (e.strerror or e),
                                script_path, 0)
        err.oserror = e
        return Outcome(error=err, script=script_path)
    try:
        return execute(compiled, view, env, opts, script_path)
    except Exception as e:
        # a malformed (edited) cache is a runtime error, never a traceback;
        # rewrite it so that the next delivery runs the real script
        if _hit:
            try:
                cache.load(script_path, cache_dir, opts.extensions, max_size,
                           force=True)
            except (SieveError, OSError):
                pass
        return Outcome(error=SieveRuntimeError(
            "internal error running the compiled script (%s)" % type(e).__name__,
            script_path, 0), script=script_path)


def _sieve_files(entry):
    try:
        names = os.listdir(entry)
    except NotADirectoryError:
        return [entry]
    except FileNotFoundError:
        return []
    names = sorted((n for n in names if n.endswith(".sieve")),
                   key=lambda n: n.encode("utf-8", "surrogateescape"))
    return [os.path.join(entry, n) for n in names]


def script_list(before, personal, default, after):
    out = []
    for entry in before or ():
        out += _sieve_files(entry)
    if personal:
        out.append(personal)
    elif default and os.path.exists(default):
        out.append(default)
    for entry in after or ():
        out += _sieve_files(entry)
    return out


def _keep_in_effect(outcome):
    return outcome.implicit_keep or any(a.kind == "keep" for a in outcome.actions)


def merge(outcomes, keep_folder="INBOX"):
    """One Outcome of the results of scripts run in sequence."""
    keep_key = _folder_key(keep_folder)
    actions = []
    warnings = []
    marks = []
    for outcome in outcomes:
        warnings += list(outcome.warnings)
        marks += list(outcome.marks)
        for action in outcome.actions:
            if any(_same_target(old, action, keep_key) for old in actions):
                continue
            if action.kind == "vacation" and any(a.kind == "vacation" for a in actions):
                continue
            if action.kind == "reject" and any(
                    a.kind in ("keep", "fileinto", "redirect", "vacation", "reject")
                    for a in actions):
                warnings.append("%s:%d: reject dropped: an earlier script already "
                                "delivered or answered the message"
                                % (outcome.script, action.line))
                continue
            actions.append(action)
    last = outcomes[-1] if outcomes else Outcome()
    implicit = last.implicit_keep
    if implicit and any(a.kind == "reject" for a in actions):
        implicit = False
    return Outcome(actions=tuple(actions), implicit_keep=implicit,
                   implicit_flags=last.implicit_flags,
                   warnings=tuple(warnings), marks=tuple(marks),
                   script=last.script)


def run_sequence(scripts, view, env, opts=None, max_size=1 << 20):
    keep_folder = opts.keep_folder if opts is not None else "INBOX"
    done = []
    for path, cache_dir in scripts:
        outcome = evaluate(path, view, env, opts, cache_dir, max_size)
        if outcome.error is not None:
            merged = merge(done, keep_folder)
            return merged.replace(error=outcome.error, implicit_keep=True,
                                  warnings=merged.warnings + outcome.warnings,
                                  script=path)
        done.append(outcome)
        if not _keep_in_effect(outcome):
            break
    return merge(done, keep_folder)


def include_loader(personal_dir, global_dir, cache_dir=None, extensions=None,
                   max_size=1 << 20):
    def load(location, name):
        base = personal_dir if location == "personal" else global_dir
        if not base:
            raise LookupError("no %s script directory" % location)
        path = os.path.join(base, name + ".sieve")
        try:
            compiled, _hit = cache.load(path, cache_dir if location == "personal"
                                        else None, extensions, max_size)
        except FileNotFoundError:
            raise LookupError("no such file %s" % path) from None
        return compiled, path

    return load
