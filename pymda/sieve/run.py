"""The one entry point the delivery pipeline calls: run a user's script.

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
"""

from pymda.sieve import cache
from pymda.sieve.interp import DEFAULT_OPTIONS, execute
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
