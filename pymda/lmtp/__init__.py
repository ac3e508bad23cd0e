"""pymda-lmtpd: the LMTP protocol (protocol.py, no delivery knowledge), the
delivery handler (handler.py) and the program (main.py)."""
