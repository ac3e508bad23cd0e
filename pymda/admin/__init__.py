"""pymda-admin: the click commands (commands.py), redelivery (redeliver.py,
sources.py), quota and user reports (quota.py, user.py)."""
