"""pymda-policyd: the policy-delegation protocol and decision (service.py),
postfix alias resolution (aliases.py) and the program (main.py)."""
