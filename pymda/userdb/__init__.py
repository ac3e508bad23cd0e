"""Users from the site's database (SPEC 7, docs/users.md).

The ``userdb`` config key lists the sources, first hit wins.  ``config``
and ``passwd`` are answered by ``pymda.users`` itself (a plain delivery
with the default ``["config", "passwd"]`` never imports this package);
the others live here:

- ``core``: the loop over the sources, the per-process answer cache
  (``userdb_cache_ttl``), rows -> ``users.Identity`` with the
  ``virtual_*`` defaults and the safety check (``users.check``), and the
  dovecot field dialect (``mail``, ``quota_rule``) shared by the
  passwd-file and dovecot sources;
- ``passwdfile``: ``passwd-file:PATH`` with its on-disk hash index;
- ``sql``: ``sql:NAME`` (sqlite3, psycopg 3, PyMySQL), bound parameters;
- ``dovecot``: ``dovecot:PATH``, the auth-userdb socket protocol.

Every source answers a row (a dict), None (unknown user) or raises
TempFail 4.3.0 (cannot tell): a database that is down is never "unknown
user".
"""
