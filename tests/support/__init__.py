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
"""
