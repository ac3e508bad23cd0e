"""Sieve filtering (RFC 5228): lexer, parser, interpreter and the pure
message-access and matching library they call (``mail``, ``match``,
``regex``, ``dates``).  Imports nothing on purpose (start-up cost)."""
