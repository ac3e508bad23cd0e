"""pymda.sieve.interp: semantics, the result model, limits."""

import time

import pytest

from pymda.sieve import interp, interp_ext
from pymda.sieve.result import Discard, FileInto, Keep, Redirect, Reject, Vacation
from sievekit import MESSAGE, kinds, run

REQ = ('require ["fileinto", "envelope", "subaddress", "variables", '
       '"relational", "comparator-i;ascii-numeric", "copy", "mailbox", '
       '"imap4flags", "vacation", "reject"];\n')


def test_no_script_actions_is_implicit_keep():
    out = run("")
    assert out.error is None
    assert out.final_actions() == (Keep(implicit=True),)


def test_fileinto_cancels_implicit_keep_copy_does_not():
    assert kinds(run(REQ + 'fileinto "A";')) == [("fileinto", "A")]
    assert kinds(run(REQ + 'fileinto :copy "A";')) == [("fileinto", "A"), ("keep", None)]


def test_one_copy_per_folder_and_keep_equals_inbox():
    out = run(REQ + 'fileinto "A/B"; fileinto "A.B"; keep; fileinto "inbox";')
    assert kinds(out) == [("fileinto", "A/B"), ("keep", None)]
    # with -m Work the keep target is Work: fileinto "INBOX" is another copy
    out = run(REQ + 'keep; fileinto "INBOX"; fileinto "Work";',
              opts=interp.Options(keep_folder="Work"))
    assert kinds(out) == [("keep", None), ("fileinto", "INBOX")]


def test_discard_and_stop():
    assert run(REQ + "discard; stop; keep;").final_actions() == (Discard(line=2),)


def test_actions_carry_lines():
    out = run(REQ + 'if true {\n  fileinto "X";\n}\n')
    assert out.actions == (FileInto(folder="X", line=3),)


def test_header_address_envelope_subaddress():
    script = REQ + '''
if header :contains "subject" "WORLD" { fileinto "h"; }
if address :domain :is "from" "example.com" { fileinto "a"; }
if address :detail "to" "lists" { fileinto "d"; }
if envelope :user "to" "bob" { fileinto "e"; }
if envelope :detail "to" "lists" { fileinto "f"; }
if exists ["x-spam-score", "subject"] { fileinto "x"; }
if size :over 100 { fileinto "s"; }
if size :over 100K { fileinto "never"; }
'''
    assert [f for _k, f in kinds(run(script))] == ["h", "a", "d", "e", "f", "x", "s"]


def test_recipient_delimiter_option():
    env = interp.Environment(recipient="bob-news@example.net")
    script = REQ + 'if envelope :detail "to" "news" { fileinto "N"; }'
    assert kinds(run(script, env=env)) == [("keep", None)]
    out = run(script, env=env, opts=interp.Options(recipient_delimiter="+-"))
    assert kinds(out) == [("fileinto", "N")]


def test_spam_score_relational():
    script = REQ + ('if header :value "ge" :comparator "i;ascii-numeric" '
                    '"x-spam-score" "5" { fileinto :create "Junk"; }')
    assert run(script).actions == (FileInto(folder="Junk", create=True, line=2),)


def test_variables_match_values_and_modifiers():
    script = REQ + '''
if header :matches "subject" "* *" { set :upperfirst "first" "${1}"; set :length "n" "${2}"; }
if address :matches :localpart "to" "*+*" { fileinto "Lists/${2}"; }
fileinto "${first}-${n}";
'''
    assert [f for _k, f in kinds(run(script))] == ["Lists/lists", "Hello-5"]


def test_flags():
    script = REQ + ('addflag "\\\\Seen"; addflag ["$Label1", "\\\\seen"]; keep; '
                    'fileinto :flags "\\\\Flagged" "F";')
    out = run(script)
    assert out.actions[0].flags == ("\\Seen", "$Label1")
    assert out.actions[1].flags == ("\\Flagged",)


def test_mailboxexists_uses_the_callback():
    env = interp.Environment(mailbox_exists=lambda name: name == "Yes")
    script = REQ + ('if mailboxexists "Yes" { fileinto "Y"; } '
                    'if mailboxexists "No" { fileinto "N"; }')
    assert kinds(run(script, env=env)) == [("fileinto", "Y")]


def test_issue_11_actions_are_represented():
    script = REQ + 'redirect "Someone <x@example.org>"; redirect :copy "y@example.org";'
    out = run(script)
    assert out.actions == (Redirect(address="x@example.org", line=2),
                           Redirect(address="y@example.org", copy=True, line=2))
    out = run(REQ + 'vacation :days 3 :subject "Away ${x}" "Gone";')
    v = out.actions[0]
    assert isinstance(v, Vacation) and v.period == 3 * 86400 and v.subject == "Away "
    assert out.implicit_keep
    out = run(REQ + 'reject "no thanks";')
    assert out.final_actions() == (Reject(reason="no thanks", line=2),)


@pytest.mark.parametrize("script,word", [
    (''.join('fileinto "f%d"; ' % i for i in range(33)), "too many actions"),
    (''.join('redirect "r%d@example.org"; ' % i for i in range(5)), "too many redirect"),
    ('vacation "a"; vacation "b";', "more than one vacation"),
    ('reject "x"; fileinto "a";', "reject"),
])
def test_runtime_errors_drop_the_whole_result(script, word):
    out = run(REQ + script)
    assert out.error is not None and word in str(out.error)
    assert out.actions == () and out.final_actions() == (Keep(implicit=True),)
    assert out.error.line == 2 and str(out.error).startswith("test.sieve:2: ")


def test_bad_utf8_folder_is_a_runtime_error():
    out = run('require ["fileinto", "variables", "encoded-character"];\n'
              'set "f" "${hex:ff}x";\nfileinto "${f}";')
    assert "folder name" in str(out.error) and out.error.line == 3


def test_variable_size_cap():
    script = (REQ + 'set "a" "0123456789"; ' + 'set "a" "${a}${a}"; ' * 12
              + 'set :length "n" "${a}"; fileinto "${n}";')
    assert kinds(run(script))[0] == ("fileinto", "4096")
    out = run(script, opts=interp.Options(max_variable_size=100))
    assert kinds(out)[0] == ("fileinto", "100")


def test_cpu_limit_is_a_runtime_error():
    body = 'if header :matches "subject" "*o*o*o*" { set "x" "${1}"; }\n' * 2000
    out = run(REQ + body, opts=interp.Options(max_cpu_time=0.0))
    assert out.error is not None and "CPU" in str(out.error)


def test_pathological_matches_is_fast():
    subject = "a" * 20000
    msg = MESSAGE.replace(b"Subject: Hello world", b"Subject: " + subject.encode())
    t = time.monotonic()
    out = run(REQ + 'if header :matches "subject" "*a*a*a*a*a*a*a*a*b" { discard; }', data=msg)
    assert out.error is None and kinds(out) == [("keep", None)]
    assert time.monotonic() - t < 5


def test_hooks_are_only_for_the_adapter():
    """A test-suite command is unknown to a user script."""
    from pymda.sieve.result import SieveCompileError

    with pytest.raises(SieveCompileError):
        run('require "vnd.dovecot.testsuite"; test_fail "x";')


def test_expansion_is_capped():
    """A script full of references to a 4 KiB variable does not build a
    gigabyte string."""
    big = "${a}" * 300000
    script = (REQ + 'set "a" "' + "x" * 4096 + '";\n'
              'if string :is "' + big + '" "y" { discard; }\n'
              'set :length "n" "' + big + '"; fileinto "${n}";')
    t = time.monotonic()
    out = run(script)
    # :length measures the expanded value, cut at MAX_EXPANDED
    assert out.error is None
    assert kinds(out) == [("fileinto", str(interp_ext.MAX_EXPANDED))]
    assert time.monotonic() - t < 20


def test_expansion_is_cut_also_when_the_last_reference_passes_the_cap():
    """The cap held only when another reference followed the one that
    passed it: a string ending with that reference came back uncut."""
    limit = interp_ext.MAX_EXPANDED
    variables = {"a": "x" * 4096, "b": "y" * 4096}
    s = "${a}" * (limit // 4096) + "${b}"
    assert len(interp_ext.expand_variables(s, variables, [])) == limit


ROUNDCUBE = '''require ["fileinto","relational","comparator-i;ascii-numeric","date","vacation","imap4flags","copy","mailbox"];
# rule:[Spam]
if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5"
{
\taddflag "\\\\Seen";
\tfileinto :create "Junk";
\tstop;
}
# rule:[disabled rule]
if false # anyof (header :contains "subject" "x")
{
\tdiscard;
}
# rule:[Out of office]
if allof (currentdate :zone "+0100" :value "ge" "date" "2020-01-01", currentdate :zone "+0100" :value "le" "date" "2999-12-31")
{
\tvacation :days 7 :subject "Away" :from "Bob <bob@example.net>" :addresses ["bob@example.net"] "I am away.";
}
'''

NEXTCLOUD = '''require "date";
require "relational";
require "vacation";
require "variables";
### Nextcloud Mail: Vacation Responder ### DON'T EDIT ###
if allof(currentdate :value "ge" "iso8601" "2020-01-01T00:00:00Z", currentdate :value "le" "iso8601" "2999-01-01T00:00:00Z") {
\tif header :matches "subject" "*" {
\t\tset "subject" "${1}";
\t}
\tvacation :days 4 :subject "Re: ${subject}" :addresses ["Bob <bob@example.net>"] "Back soon";
}
### Nextcloud Mail: Vacation Responder ### END ###
require ["fileinto"];
'''


def test_webmail_scripts():
    out = run(ROUNDCUBE)
    assert out.error is None
    assert [a.kind for a in out.actions] == ["fileinto"]
    assert out.actions[0].flags == ("\\Seen",) and out.actions[0].create
    out = run(ROUNDCUBE, data=MESSAGE.replace(b"X-Spam-Score: 7", b"X-Spam-Score: 1"))
    assert [a.kind for a in out.final_actions()] == ["vacation", "keep"]
    assert out.actions[0].from_addr == "Bob <bob@example.net>"
    # require after other commands is an error (Nextcloud puts it first)
    assert "require" in str(run_error(NEXTCLOUD))
    out = run(NEXTCLOUD.replace('require ["fileinto"];\n', ""))
    assert out.actions[0].subject == "Re: Hello world"
    assert out.actions[0].addresses == ("Bob <bob@example.net>",)


def run_error(script):
    from pymda.sieve.result import SieveCompileError

    with pytest.raises(SieveCompileError) as info:
        run(script)
    return info.value


def test_fileinto_copy_of_the_keep_folder_is_the_implicit_keep():
    out = run(REQ + 'fileinto :copy "INBOX";')
    assert kinds(out) == [("fileinto", "INBOX")]
    out = run(REQ + 'fileinto :copy "Work";', opts=interp.Options(keep_folder="Work"))
    assert kinds(out) == [("fileinto", "Work")]
