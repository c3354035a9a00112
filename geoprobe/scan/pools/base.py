"""Prompt candidates and the template sampler shared by every built-in pool.

A pool is a list of :class:`Template` objects. A template is a format string whose ``{slot}`` fields are filled
from slot vocabularies (or a function of a :class:`random.Random` that returns the text, where a value must be
computed, e.g. an arithmetic sum). :func:`sample_templates` draws ``n`` *distinct* texts: at every draw it picks
a template uniformly, fills its slots uniformly from a ``random.Random(seed)`` stream, and skips texts it has
already produced, so the result depends only on ``(templates, n, seed)``.

Every template is tagged with the kind of ending it was written to have:

* ``"determined"`` -- the next token is (nearly) fixed by the text ("The capital of Peru is", "import numpy as");
* ``"open"`` -- many continuations are plausible ("She opened the drawer and found").

Within one text a slot used twice repeats its value and different slots take different values.

Pools mix both kinds so that the next-token entropies of the candidates spread from near 0 bits to several bits,
which the entropy stratification needs (every quintile must be populated by genuinely different prompts).

A candidate's id is ``<pool>-<template>-<8 hex digits of sha1(text)>``: stable across seeds and sample sizes.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from geoprobe.errors import ConfigError

ENDINGS = ("determined", "open")


@dataclass(frozen=True)
class Candidate:
    """One prompt candidate.

    Attributes:
        id: stable identifier (see module docstring; user prompts: ``<source>-<line/row index>``).
        text: the prompt; the model's next token after it is what the scan scores.
        pool: the pool it was drawn for (``math``, ..., ``mixed``, or a user source such as ``file``).
        domain: the domain it belongs to (for ``mixed``: the built-in pool it came from).
        template: the template name (built-in pools) or ``""`` (user prompts).
        ending: ``"determined"``, ``"open"`` (built-in pools) or ``""`` (unknown, user prompts).
    """

    id: str
    text: str
    pool: str
    domain: str
    template: str = ""
    ending: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Template:
    """A named prompt template.

    Attributes:
        name: short identifier, unique within its pool.
        ending: ``"determined"`` or ``"open"`` (what the final token was written to leave).
        text: a ``str.format`` string over slot names, or a function ``rng -> str``.
    """

    name: str
    ending: str
    text: str | Callable[[random.Random], str]

    def __post_init__(self) -> None:
        if self.ending not in ENDINGS:
            raise ValueError(f"template {self.name!r}: ending must be one of {ENDINGS}, got {self.ending!r}")

    def slots(self) -> list[str]:
        if callable(self.text):
            return []
        return [f for _, f, _, _ in string.Formatter().parse(self.text) if f]

    def fill(self, rng: random.Random, vocab: Mapping[str, Sequence[str]]) -> str:
        """Fill every slot; a slot used twice takes one value, different slots take different values."""
        if callable(self.text):
            return self.text(rng)
        slots = list(dict.fromkeys(self.slots()))
        for _ in range(100):  # redraw until distinct (e.g. "{name} ... {name2}" never names one person twice)
            values = {s: rng.choice(list(vocab[s])) for s in slots}
            if len(set(values.values())) == len(values):
                break
        return self.text.format(**values)


def candidate_id(pool: str, template: str, text: str) -> str:
    """``<pool>-<template>-<first 8 hex digits of sha1(text)>``."""
    return f"{pool}-{template}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def sample_templates(pool: str, templates: Sequence[Template], vocab: Mapping[str, Sequence[str]], n: int,
                     seed: int, *, max_misses: int = 20_000) -> list[Candidate]:
    """Draw ``n`` distinct candidates for ``pool`` (see module docstring).

    Raises:
        ConfigError: ``max_misses`` draws in a row produced only texts already drawn (the pool ran dry).
    """
    if n < 0:
        raise ConfigError(f"the number of candidates must be >= 0, got {n}")
    missing = sorted({s for t in templates for s in t.slots() if s not in vocab})
    if missing:
        raise ValueError(f"pool {pool!r}: templates use undefined slots {missing}")
    rng = random.Random(f"{pool}:{seed}")
    seen: set[str] = set()
    out: list[Candidate] = []
    misses = 0
    while len(out) < n:
        t = templates[rng.randrange(len(templates))]
        text = t.fill(rng, vocab)
        if text in seen:
            misses += 1
            if misses >= max_misses:
                raise ConfigError(f"pool {pool!r} ran out of distinct candidates after {len(out)}; "
                                  f"ask for at most {len(out)}")
            continue
        misses = 0
        seen.add(text)
        out.append(Candidate(candidate_id(pool, t.name, text), text, pool, pool, t.name, t.ending))
    return out
