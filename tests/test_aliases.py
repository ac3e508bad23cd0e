"""Tests for pymda.policy.aliases: postfix's alias lookup order, with postfix's own
postconf/postmap/postalias on a private configuration directory
(``MAIL_CONFIG``; no running postfix needed).  The e2e tests through a real
postfix and pymda-policyd are in test_e2e_policy_aliases.py.
"""

import os
import shutil
import subprocess
import textwrap

import pytest

from pymda import config
from pymda.policy import aliases

POSTMAP = "/usr/sbin/postmap"
POSTALIAS = "/usr/sbin/postalias"
DUNNO = "DUNNO"
FULL = "552 5.2.2 Mailbox is full"

pytestmark = pytest.mark.skipif(not os.access(POSTMAP, os.X_OK), reason="postfix not installed")


class Maps:
    """A private postfix config dir with a hash + regexp virtual map and aliases."""

    def __init__(self, root):
        self.root = root
        self.virtual = root / "virtual"
        self.dots = root / "dots"
        self.aliases = root / "aliases"

    def write(self, virtual="", aliases_text="", extra=""):
        self.virtual.write_text(textwrap.dedent(virtual))
        self.dots.write_text("/^(.*)\\.(.*@example\\.org)$/ $1$2\n")
        self.aliases.write_text("postmaster: root\n" + textwrap.dedent(aliases_text))
        (self.root / "main.cf").write_text(textwrap.dedent(f"""\
            compatibility_level = 3.6
            myhostname = mx.example.org
            myorigin = example.org
            mydestination = localhost, $myorigin
            recipient_delimiter = +
            virtual_alias_maps = hash:{self.virtual}, regexp:{self.dots}
            alias_maps = hash:{self.aliases}
            alias_database = hash:{self.aliases}
            """) + extra)
        env = {**os.environ, "MAIL_CONFIG": str(self.root)}
        subprocess.run([POSTMAP, f"hash:{self.virtual}"], check=True, env=env)
        subprocess.run([POSTALIAS, f"hash:{self.aliases}"], check=True, env=env)


@pytest.fixture
def maps(tmp_path, monkeypatch):
    monkeypatch.setenv("MAIL_CONFIG", str(tmp_path))
    m = Maps(tmp_path)
    m.write(
        virtual="""\
            info@example.org alice@example.org
            pepe@example.org bob@example.org
            chain1@example.org chain2@example.org
            chain2@example.org chain3@example.org
            chain3@example.org carol@example.org
            loop1@example.org loop2@example.org
            loop2@example.org loop1@example.org
            self@example.org self@example.org
            mixed@example.org loop1@example.org, dave@example.org
            """,
        aliases_text="""\
            staff: alice, bob
            pipe: "|/bin/cat", alice
            direct: \\erin
            """)
    return m


def resolver(ttl=60):
    cfg = config.load(None, [f"policy_alias_cache_ttl={ttl}"], environ={})
    return aliases.Resolver(cfg)


def finals(resolution):
    return [f.address for f in resolution.finals]


def test_virtual_alias_gives_the_chain_with_the_map(maps):
    r = resolver().resolve("info@example.org")
    assert finals(r) == ["alice@example.org"]
    assert aliases.format_chain(r) == [
        f"info@example.org -> alice@example.org (virtual_alias_maps hash:{maps.virtual})"]


def test_regexp_then_extension_stripped_and_propagated(maps):
    r = resolver().resolve("p.e.p.e+x@example.org")
    # the regexp sees the full address (three dots, three steps); the hash
    # map matches pepe@example.org without +x, which is appended to bob
    assert [s.address for s in r.steps] == [
        "p.e.p.e+x@example.org", "p.e.pe+x@example.org", "p.epe+x@example.org",
        "pepe+x@example.org"]
    assert r.steps[-1].key == "pepe@example.org"
    assert finals(r) == ["bob+x@example.org"]


def test_unknown_address_is_its_own_final_and_not_rewritten(maps):
    r = resolver().resolve("nobody+y@example.org")
    assert finals(r) == ["nobody+y@example.org"] and not r.rewritten


def test_list_alias_in_alias_maps(maps):
    r = resolver().resolve("staff@example.org")
    assert finals(r) == ["alice@example.org", "bob@example.org"]
    assert aliases.format_chain(r) == [
        f"staff@example.org -> alice@example.org, bob@example.org (alias_maps hash:{maps.aliases})"]


def test_alias_maps_only_for_local_domains(maps):
    r = resolver().resolve("staff@elsewhere.example")
    assert finals(r) == ["staff@elsewhere.example"] and not r.rewritten


def test_recursive_chain_and_loop_and_self(maps):
    assert finals(resolver().resolve("chain1@example.org")) == ["carol@example.org"]
    loop = resolver().resolve("loop1@example.org")
    assert finals(loop) == [] and loop.loops == ("loop1@example.org",)
    assert finals(resolver().resolve("self@example.org")) == ["self@example.org"]
    # the loop branch gives nothing, the other member stays
    assert finals(resolver().resolve("mixed@example.org")) == ["dave@example.org"]


def test_pipe_and_backslash_entries(maps):
    r = resolver().resolve("pipe@example.org")
    assert [(f.address, f.target) for f in r.finals] == [
        (None, "|/bin/cat"), ("alice@example.org", None)]
    assert finals(resolver().resolve("direct@example.org")) == ["erin@example.org"]


def test_depth_limit_ends_in_an_opaque_final(maps):
    lines = "".join(f"d{i}@example.org d{i + 1}@example.org\n" for i in range(30))
    maps.write(virtual=lines)
    r = resolver().resolve("d0@example.org")
    (final,) = r.finals
    assert final.address is None and "limit" in final.target


def test_unreadable_map_raises_map_error(maps, tmp_path):
    maps.write(extra=f"virtual_alias_maps = hash:{tmp_path}/missing\n")
    with pytest.raises(aliases.MapError, match="missing"):
        resolver().resolve("info@example.org")


def test_no_postfix_settings_means_no_rewriting(tmp_path, monkeypatch):
    monkeypatch.setenv("MAIL_CONFIG", str(tmp_path / "none"))
    r = resolver().resolve("info@example.org")
    assert finals(r) == ["info@example.org"] and not r.rewritten


def test_answers_are_cached_for_the_ttl(maps):
    cached, fresh = resolver(ttl=3600), resolver(ttl=0)
    assert finals(cached.resolve("info@example.org")) == ["alice@example.org"]
    maps.write(virtual="info@example.org zed@example.org\n")
    assert finals(cached.resolve("info@example.org")) == ["alice@example.org"]
    assert finals(fresh.resolve("info@example.org")) == ["zed@example.org"]


def test_tools_come_from_postfix_command_directory(maps, tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("postconf", "postmap"):
        shutil.copy(f"/usr/sbin/{name}", tools / name)  # no postalias there
    cfg = config.load(None, [f'postfix_command_directory="{tools}"'], environ={})
    with pytest.raises(aliases.MapError, match="postalias"):
        aliases.Resolver(cfg).resolve("staff@example.org")


# --- the decision -------------------------------------------------------------


def decide(address, full):
    return aliases.decide(resolver(), address,
                          lambda a, nouser: FULL if a in full else (nouser or "NOUSER?"))


def test_decide_refuses_only_when_every_final_is_full(maps):
    assert decide("info@example.org", {"alice@example.org"}) == FULL
    assert decide("staff@example.org", {"alice@example.org"}) == DUNNO
    assert decide("staff@example.org", {"alice@example.org", "bob@example.org"}) == FULL
    assert decide("pipe@example.org", {"alice@example.org"}) == DUNNO   # a command is not full
    assert decide("loop1@example.org", set()) == DUNNO                   # no final recipient
    # not rewritten: the plain decision, policy_nouser included
    assert decide("alice@example.org", set()) == "NOUSER?"


def test_decide_never_refuses_when_one_final_cannot_be_looked_up(maps):
    """An alias to a full mailbox and to one whose user database is down
    (DEFER_IF_PERMIT): not 552 - the second may have room; defer."""
    defer = "DEFER_IF_PERMIT Service temporarily unavailable"

    def decide_address(address, nouser):
        return FULL if address == "alice@example.org" else defer

    for full_first in (True, False):
        members = "alice, bob" if full_first else "bob, alice"
        maps.write(aliases_text=f"staff: {members}\n")
        assert aliases.decide(resolver(), "staff@example.org", decide_address) == defer


def test_decide_with_an_unreadable_map_is_dunno(maps, tmp_path):
    maps.write(extra=f"virtual_alias_maps = hash:{tmp_path}/missing\n")
    assert decide("info@example.org", {"alice@example.org", "info@example.org"}) == DUNNO


def test_parse_postconf_reads_myorigin_from_a_file(tmp_path):
    mailname = tmp_path / "mailname"
    mailname.write_text("Mail.Example.ORG\n")
    values = ["hash:/v, regexp:/r", "hash:/etc/aliases", "localhost, $myorigin, hash:/d",
              str(mailname), "+-", "canonical, virtual"]
    s = aliases.parse_postconf(values)
    assert s.virtual_maps == ("hash:/v", "regexp:/r") and s.alias_maps == ("hash:/etc/aliases",)
    assert s.myorigin == "mail.example.org" and s.domain_tables == ("hash:/d",)
    assert s.local_names == {"localhost", "$myorigin", "mail.example.org"}
    assert s.delimiter == "+-" and s.propagate == {"canonical", "virtual"}
    assert aliases.split_extension("owner-list", "+-") == ("owner-list", "")
    assert aliases.split_extension("a-b+c", "+-") == ("a", "-b+c")
