"""Sieve parser (RFC 5228 section 8.2 grammar): tokens -> generic tree.

Contract: ``parse(text, filename)`` returns a list of commands.  A
command is ``(name, line, args, tests, block)`` and a test ``(name, line,
args, tests)``: ``args`` a list of ``(kind, value, line)`` with kind
``"tag"`` (value without colon), ``"num"``, ``"str"`` or ``"list"`` (a
list of str); ``tests`` a list of tests; ``block`` a list of commands or
None when the command ends with ``;``.  Names are lower-cased.  Nothing
here knows what a command means: ``validate`` checks that.

Raises ``SieveCompileError`` listing the syntax errors (file, line): after
an error the parser skips the rest of that command and goes on.

LIMITATIONS (pymda's, close to Pigeonhole's defaults): blocks and tests
nest at most ``MAX_NESTING`` (32) deep, a string list holds at most
``MAX_LIST`` items.
"""

from pymda.sieve.result import SieveCompileError
from pymda.sieve.lexer import tokenize

MAX_NESTING = 32
MAX_LIST = 4096


def _what(tok):
    kind = tok[0]
    if kind == "eof":
        return "end of script"
    if kind == "str":
        return "a string"
    if kind == "num":
        return "a number"
    if kind == "tag":
        return "tag ':%s'" % tok[1]
    if kind == "id":
        return "identifier '%s'" % tok[1]
    return "'%s'" % tok[1]


class _Syntax(Exception):
    pass


class _Parser:
    def __init__(self, toks, filename):
        self.toks = toks
        self.pos = 0
        self.filename = filename
        self.errors = []

    def fail(self, msg):
        self.errors.append((self.filename, self.toks[self.pos][2], msg))
        raise _Syntax()

    def recover(self):
        """After a syntax error: skip to the end of the broken command
        (past its ';' or its block), or to the '}' that closes the block
        we are in, so that later errors are found too."""
        toks = self.toks
        depth = 0
        while True:
            kind = toks[self.pos][0]
            if kind == "eof":
                return
            if kind == "{":
                depth += 1
            elif kind == "}":
                if depth == 0:
                    return
                depth -= 1
                if depth == 0:
                    self.pos += 1
                    return
            elif kind == ";" and depth == 0:
                self.pos += 1
                return
            self.pos += 1

    def commands(self, depth, closing):
        out = []
        while True:
            try:
                cmd = self.command(depth, closing)
            except _Syntax:
                if len(self.errors) >= 100 or self.toks[self.pos][0] == "eof":
                    return out
                self.recover()
                if self.toks[self.pos][0] == "}" and closing == "eof":
                    self.pos += 1       # a stray '}' at the top level
                continue
            if cmd is None:
                return out
            out.append(cmd)

    def command(self, depth, closing):
        toks = self.toks
        tok = toks[self.pos]
        if tok[0] == closing:
            return None
        if tok[0] != "id":
            self.fail("expected a command, found %s" % _what(tok))
        self.pos += 1
        args, tests = self.arguments(depth)
        end = toks[self.pos]
        if end[0] == ";":
            self.pos += 1
            block = None
        elif end[0] == "{":
            if depth >= MAX_NESTING:
                self.fail("blocks nested too deeply (max %d)" % MAX_NESTING)
            self.pos += 1
            block = self.commands(depth + 1, "}")
            if toks[self.pos][0] != "}":
                self.fail("expected '}' to end the block of the %s command, "
                          "found %s" % (tok[1], _what(toks[self.pos])))
            self.pos += 1
        else:
            self.fail("expected ';' or '{' to end the %s command, found %s"
                      % (tok[1], _what(end)))
        return (tok[1], tok[2], args, tests, block)

    def arguments(self, depth):
        toks = self.toks
        args = []
        while True:
            tok = toks[self.pos]
            kind = tok[0]
            if kind == "str" or kind == "num" or kind == "tag":
                args.append(tok)
                self.pos += 1
            elif kind == "[":
                args.append(("list", self.string_list(), tok[2]))
            else:
                break
        tests = []
        tok = toks[self.pos]
        if tok[0] == "id":
            tests.append(self.test(depth + 1))
        elif tok[0] == "(":
            self.pos += 1
            while True:
                tests.append(self.test(depth + 1))
                tok = toks[self.pos]
                self.pos += 1
                if tok[0] == ")":
                    break
                if tok[0] != ",":
                    self.pos -= 1
                    self.fail("expected ',' or ')' in a test list, found %s"
                              % _what(tok))
        return args, tests

    def test(self, depth):
        if depth > MAX_NESTING:
            self.fail("tests nested too deeply (max %d)" % MAX_NESTING)
        tok = self.toks[self.pos]
        if tok[0] != "id":
            self.fail("expected a test, found %s" % _what(tok))
        self.pos += 1
        args, tests = self.arguments(depth)
        return (tok[1], tok[2], args, tests)

    def string_list(self):
        toks = self.toks
        self.pos += 1
        items = []
        while True:
            tok = toks[self.pos]
            if tok[0] != "str":
                self.fail("expected a string in a string list, found %s"
                          % _what(tok))
            items.append(tok[1])
            if len(items) > MAX_LIST:
                self.fail("string list too long (max %d)" % MAX_LIST)
            self.pos += 1
            tok = toks[self.pos]
            self.pos += 1
            if tok[0] == "]":
                return items
            if tok[0] != ",":
                self.pos -= 1
                self.fail("expected ',' or ']' in a string list, found %s"
                          % _what(tok))


def parse(text, filename="script"):
    p = _Parser(tokenize(text, filename), filename)
    out = p.commands(0, "eof")
    if p.errors:
        exc = SieveCompileError(p.errors[0][2], filename, p.errors[0][1])
        exc.errors = p.errors
        raise exc
    return out
