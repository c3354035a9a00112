"""Built-in prompt pools: determinism, distinctness, variety, the mixed draw and the domain registry."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from geoprobe.errors import ConfigError, UnknownNameError
from geoprobe.scan.pools import BASE_DOMAINS, build_pool, check_domain, domains
from geoprobe.scan.pools.base import Template, sample_templates


def test_domain_registry_lists_valid_names():
    assert domains() == ["code", "knowledge", "math", "mixed", "prose"]
    assert check_domain("math") == "math"
    with pytest.raises(UnknownNameError) as e:
        build_pool("poetry", 10)
    assert str(e.value) == "unknown prompt domain 'poetry'; valid choices: code, knowledge, math, mixed, prose"


@pytest.mark.parametrize("domain", BASE_DOMAINS)
def test_pool_is_deterministic_distinct_and_varied(domain):
    a = build_pool(domain, 400, seed=3)
    assert a == build_pool(domain, 400, seed=3)
    assert [c.text for c in a] != [c.text for c in build_pool(domain, 400, seed=4)]
    assert len({c.text for c in a}) == 400 and len({c.id for c in a}) == 400
    for c in a:
        assert (c.pool, c.domain) == (domain, domain)
        assert c.id == f"{domain}-{c.template}-{hashlib.sha1(c.text.encode()).hexdigest()[:8]}"
        # no trailing space (it would make the next token a word piece), except code ending on indentation
        assert c.text.strip() and (not c.text.endswith(" ") or c.template in {"def_body", "js_function"})
    templates = Counter(c.template for c in a)
    assert len(templates) >= 20  # many templates actually used
    endings = Counter(c.ending for c in a)
    assert set(endings) == {"determined", "open"} and min(endings.values()) >= 120  # a real mix
    # a smaller draw is the prefix of a larger one (sequential sampler): ids are stable across sizes
    assert build_pool(domain, 50, seed=3) == a[:50]


def test_mixed_is_an_equal_draw_from_every_domain():
    mixed = build_pool("mixed", 302, seed=7)
    counts = Counter(c.domain for c in mixed)
    assert counts == {"code": 76, "knowledge": 76, "math": 75, "prose": 75}  # remainder to the first two
    assert all(c.pool == "mixed" for c in mixed)
    for d in BASE_DOMAINS:
        own = [c.text for c in build_pool(d, counts[d], seed=7)]
        assert [c.text for c in mixed if c.domain == d] == own


def test_sampler_fills_slots_and_reports_a_dry_pool():
    t = [Template("a", "open", "{x} and {x} or {y}"), Template("b", "determined", lambda r: f"n={r.randint(1, 2)}")]
    vocab = {"x": ["p", "q"], "y": ["r"]}
    got = sample_templates("toy", t, vocab, 4, seed=0)
    assert sorted(c.text for c in got) == ["n=1", "n=2", "p and p or r", "q and q or r"]
    with pytest.raises(ConfigError, match="ran out of distinct candidates after 4; ask for at most 4"):
        sample_templates("toy", t, vocab, 5, seed=0, max_misses=500)
    with pytest.raises(ValueError, match=r"undefined slots \['z'\]"):
        sample_templates("toy", [Template("c", "open", "{z}")], vocab, 1, seed=0)
    # the same stream as an independent random.Random(pool:seed) replay
    rng = random.Random("toy:0")
    first = t[rng.randrange(2)]
    assert got[0].template == first.name


def test_different_slots_take_different_values_and_pronouns_agree():
    from geoprobe.scan.pools import prose

    t = Template("pair", "open", "{a} met {b}; {a} left")
    got = sample_templates("toy", [t], {"a": ["x", "y"], "b": ["x", "y"]}, 2, seed=0)
    assert sorted(c.text for c in got) == ["x met y; x left", "y met x; y left"]
    for c in build_pool("prose", 400, seed=0):
        if c.template == "first_sight":  # "{name} fell in love with {name2} at first"
            a, b = c.text.split(" fell in love with ")
            assert a != b.removesuffix(" at first")
        if " She " in c.text or c.text.endswith(", she"):
            assert any(c.text.startswith(n) or f" {n} " in c.text for n in prose.NAMES_F)
        if " He " in c.text or c.text.endswith(", he"):
            assert any(c.text.startswith(n) or f" {n} " in c.text for n in prose.NAMES_M)
