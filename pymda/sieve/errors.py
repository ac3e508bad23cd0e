"""Sieve error types: compile errors and runtime errors, with file and line.

``SieveCompileError`` carries ``errors``: a list of ``(file, line,
message)``; str() is the first as ``FILE:LINE: message``.  A script that
raises it does not run (RFC 5228 2.10.6).  ``SieveRuntimeError`` (one
error, with the line of the command or test that failed) drops the whole
result: the caller falls back to the implicit keep (SPEC 6).

Both are plain Exceptions, not DeliveryErrors: a broken script never
fails a delivery.
"""


class SieveError(Exception):
    def __init__(self, message, filename="script", line=0):
        super().__init__(message)
        self.errors = [(filename, line, message)]

    @property
    def filename(self):
        return self.errors[0][0]

    @property
    def line(self):
        return self.errors[0][1]

    @property
    def message(self):
        return self.errors[0][2]

    def lines(self):
        """Every error as ``FILE:LINE: message``."""
        return ["%s:%d: %s" % e for e in self.errors]

    def __str__(self):
        return self.lines()[0]


class SieveCompileError(SieveError):
    pass


class SieveRuntimeError(SieveError):
    pass
