""".forward: parsing and expansion (dotforward.py), pipes (pipe.py),
re-injection through sendmail_command (sendmail.py).  Imported only when
a delivery has such targets."""
