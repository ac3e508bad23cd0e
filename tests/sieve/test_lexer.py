"""pymda.sieve.lexer / parser / validator: tokens, strings, errors with lines."""

import random

import pytest

from pymda.sieve.result import SieveCompileError
from pymda.sieve.lexer import tokenize
from pymda.sieve.parser import MAX_NESTING, parse
from pymda.sieve.validate import compile_script, decode_encoded


def values(text):
    return [(k, v) for k, v, _line in tokenize(text)][:-1]


def error_of(text, **kw):
    with pytest.raises(SieveCompileError) as info:
        compile_script(text, "f.sieve", **kw)
    return info.value


def test_tokens_numbers_tags_comments():
    toks = values('if header :Contains ["a","b"] 10K # c\n/* x\n y */ ;')
    assert toks == [("id", "if"), ("id", "header"), ("tag", "contains"),
                    ("[", "["), ("str", "a"), (",", ","), ("str", "b"),
                    ("]", "]"), ("num", 10240), (";", ";")]


def test_multiline_string_dot_stuffing_and_crlf():
    text = 'set "x" text: # comment\nLine 1\n..Line 2\n.Line 3\n.\n;'
    (_, s, line) = [t for t in tokenize(text) if t[0] == "str"][1]
    assert s == "Line 1\r\n.Line 2\r\n.Line 3\r\n"
    assert line == 1


def test_quoted_escapes_and_line_numbers():
    toks = tokenize('"a\\"b\\\\c\\d"\n"two\nlines" x')
    assert toks[0][1] == 'a"b\\cd'
    assert toks[1][1] == "two\r\nlines" and toks[1][2] == 2
    assert toks[2] == ("id", "x", 3)


@pytest.mark.parametrize("text,line", [
    ('keep;\n"unterminated', 2),
    ('keep;\n\n/* open', 3),
    ("keep;\nset \"a\" text:\nnever ends\n", 2),
    ("keep;\n\n\n 99999999999999999999;", 4),
    ("keep;\n$", 2),
])
def test_lexer_errors_carry_the_line(text, line):
    e = error_of(text)
    assert e.line == line and e.filename == "f.sieve"
    assert str(e).startswith("f.sieve:%d: " % line)


@pytest.mark.parametrize("text,line,word", [
    ('keep\nstop;', 1, "takes no tests"),
    ('keep\n"x" }', 2, "expected ';'"),
    ('if true {\n keep;\n', 3, "end of script"),
    ('require ["a",\n];', 2, "string"),
    ("frobnicate;", 1, "unknown command"),
    ('require "fileinto";\nkeep;\nrequire "envelope";', 3, "require"),
    ('require "frob";', 1, "unknown Sieve capability"),
    ('fileinto "x";', 1, "requires the 'fileinto' extension"),
    ('require "fileinto";\nfileinto :create "x";', 2, "unknown tagged argument"),
    ('if header :is :contains "a" "b" { }', 1, "conflicting"),
    ('if header :comparator "i;frob" "a" "b" { }', 1, "comparator"),
    ('if size 10 { }', 1, "size test"),
    ('if size { }', 1, ":over or :under"),
    ('else { }', 1, "without a preceding if"),
    ('require "variables";\nset "a.b" "c";', 2, "namespace"),
    ('require "relational";\nif header :value "xx" "a" "b" {}', 2, "relational operator"),
])
def test_validation_errors(text, line, word):
    e = error_of(text)
    assert e.line == line, e.lines()
    assert word in str(e), str(e)


def test_every_error_is_reported():
    e = error_of('frob;\nkeep 1;\nstop 2;')
    assert [ln for (_f, ln, _m) in e.errors] == [1, 2, 3]


def test_disabled_extension_is_a_compile_error():
    e = error_of('require "fileinto";', extensions=("envelope",))
    assert "fileinto" in str(e)


def test_nesting_limit():
    deep = "if true {" * (MAX_NESTING + 1) + "}" * (MAX_NESTING + 1)
    assert "nested" in str(error_of(deep))
    ok = "if true {" * (MAX_NESTING - 1) + "}" * (MAX_NESTING - 1)
    compile_script(ok)
    tests = "if " + "not " * (MAX_NESTING + 1) + "true {}"
    assert "nested" in str(error_of(tests))


def test_encoded_character():
    assert decode_encoded("${hex:40 41}x${unicode:263a}") == "@Ax\u263a"
    assert decode_encoded("${hex:zz}") == "${hex:zz}"
    assert decode_encoded("${frob:40}") == "${frob:40}"
    req = 'require ["encoded-character", "fileinto"];\n'
    compiled = compile_script(req + 'fileinto "${hex:41}";')
    assert compiled[1][0][3] == ("A",)
    # not required: left alone
    compiled = compile_script('require "fileinto"; fileinto "${hex:41}";')
    assert compiled[1][0][3] == ("${hex:41}",)
    assert "unicode" in str(error_of(req + 'fileinto "${unicode:110000}";'))


def test_compiled_form_is_plain_data():
    import marshal

    compiled = compile_script(
        'require ["fileinto", "relational", "comparator-i;ascii-numeric"];\n'
        'if header :value "ge" :comparator "i;ascii-numeric" "x" "5" {\n'
        '  fileinto "Junk"; } elsif true { stop; } else { keep; }')
    assert marshal.loads(marshal.dumps(compiled)) == compiled
    node = compiled[1][0]
    assert node[0] == "if" and node[1] == 2 and len(node[3]) == 3
    assert node[3][0][0][2] == {"match": "value:ge", "comparator": "i;ascii-numeric"}


def test_parse_tree_shape():
    tree = parse('if anyof (true, false) { keep; }')
    assert tree[0][0] == "if" and tree[0][4][0][0] == "keep"


TOKENS = ['if', 'elsif', 'else', 'require', 'header', 'address', ':is', ':matches',
          ':value', '"ge"', '"a*b"', '"${1}"', '[', ']', '(', ')', '{', '}', ';',
          ',', '10K', 'text:\nx\n.\n', 'anyof', 'not', 'set', 'fileinto', '"x"',
          'keep', 'stop', ':comparator', '"i;ascii-numeric"', '"variables"',
          '/* c */', '# c\n', ':count', 'string', 'envelope', '"to"', ':detail',
          '"\\', 'text:', '}}}', '"${hex:', 'discard', 'redirect', '"a@b"']


def test_random_tokens_only_raise_compile_errors():
    """Hostile scripts: random and mutated token streams either compile or
    raise SieveCompileError — never anything else."""
    from pymda.sieve import interp
    from sievekit import view

    rng = random.Random(1234)
    base = ('require ["fileinto", "variables", "relational", "envelope", '
            '"subaddress"];\nif header :matches "subject" "*a*" '
            '{ set "x" "${1}"; fileinto "F${x}"; } else { keep; }\n')
    compiled_ok = 0
    for i in range(1500):
        if i % 2:
            text = " ".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 25)))
        else:
            chars = list(base)
            for _ in range(rng.randint(1, 4)):
                k = rng.randrange(len(chars))
                chars[k] = rng.choice(['"', "{", "}", ";", ":", "$", "\\", " ", "\n", "x"])
            text = "".join(chars)
        try:
            compiled = compile_script(text)
        except SieveCompileError:
            continue
        compiled_ok += 1
        outcome = interp.execute(compiled, view(), interp.Environment())
        assert outcome is not None
    assert compiled_ok > 10


def test_parser_recovers_and_reports_later_errors():
    e = error_of('if true {\n keep\n}\nkeep,\nkeep;\nstop "x" }\ndiscard;\n')
    assert [ln for (_f, ln, _m) in e.errors] == [3, 4, 6]


def test_lexer_reports_every_error():
    e = error_of("if size :over 99999999999999999999999 { }\n"
                 "if a_very_long_identifier_name_of_more_than_32 { }\n$\n")
    assert [ln for (_f, ln, _m) in e.errors] == [1, 2, 3]
