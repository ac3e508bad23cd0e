"""Shared helpers for pymda's tests: real programs, real users, real postfix.

Modules:
- ``paths``     where the installed pymda, the repository and the corpus are
- ``run``       ``run_pymda()``: the installed launcher as a subprocess
- ``users``     throw-away system users (root only)
- ``postfix``   a real postfix instance driven through sendmail/postqueue
- ``dovecot``   read mailboxes back with the real dovecot (doveadm)
- ``procmail``  Debian's procmail, lockfile and dotlockfile
- ``mboxfmt``   the SPEC 1.1 normalisation and an mbox splitter
- ``lmtpclient`` a blocking, byte-exact LMTP client
- ``policyd``   the installed pymda-policyd on a free loopback port
- ``engine``    in-process pymda with a virtual user of the test's own uid
- ``pgsql`` ``mariadb`` ``dovecot_auth``  private PostgreSQL, MariaDB and
  dovecot auth servers for the userdb tests (root only)
- ``procs``     private temporary directories, starting servers that die
  with the test process, stopping them, threads of clients
"""
