"""pymda - a local mail delivery agent.  Imports nothing on purpose (start-up cost)."""
__version__ = "0.1.0"
