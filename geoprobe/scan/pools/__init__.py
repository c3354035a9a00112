"""Built-in prompt pools, written for geoprobe and shipped with it (no dataset text is copied).

``build_pool(domain, n, seed)`` returns ``n`` distinct :class:`Candidate` prompts of one domain, deterministic
given ``seed``. Domains: ``math``, ``code``, ``prose``, ``knowledge`` (one module each; every module docstring
says how its pool is made) and ``mixed`` (an equal draw from all four; with ``n`` not divisible by four the
first ``n mod 4`` domains in alphabetical order give one more). Unknown names raise
:class:`~geoprobe.errors.UnknownNameError` listing the valid ones.
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

from geoprobe.errors import ConfigError
from geoprobe.registry import Registry
from geoprobe.scan.pools import code, knowledge, math, prose
from geoprobe.scan.pools.base import Candidate, Template, candidate_id, sample_templates

#: domain name -> module with ``TEMPLATES`` and ``VOCAB`` (``mixed`` is handled by :func:`build_pool`)
POOLS: Registry[ModuleType | str] = Registry("prompt domain")
for _name, _mod in (("math", math), ("code", code), ("prose", prose), ("knowledge", knowledge)):
    POOLS.register(_name, _mod)
POOLS.register("mixed", "mixed")  # a marker: drawn from BASE_DOMAINS

#: the single-domain pools, in the order ``mixed`` draws from them
BASE_DOMAINS = ("code", "knowledge", "math", "prose")

DEFAULT_POOL_SIZE = 300


def domains() -> list[str]:
    """Valid domain names (including ``mixed``)."""
    return POOLS.names()


def check_domain(name: str) -> str:
    """Return ``name`` if it is a known domain, else raise UnknownNameError listing the valid ones."""
    POOLS.get(name)
    return name


def build_pool(domain: str, n: int = DEFAULT_POOL_SIZE, seed: int = 0) -> list[Candidate]:
    """``n`` distinct candidates of ``domain`` drawn with ``seed`` (see the module docstring)."""
    mod = POOLS.get(domain)
    if int(n) < 1:
        raise ConfigError(f"a prompt pool needs n >= 1 candidates, got {n}")
    n = int(n)
    if isinstance(mod, ModuleType):
        return sample_templates(domain, mod.TEMPLATES, mod.VOCAB, n, seed)
    out: list[Candidate] = []
    q, r = divmod(n, len(BASE_DOMAINS))
    for i, d in enumerate(BASE_DOMAINS):
        m = q + (1 if i < r else 0)
        if m:
            sub = POOLS.get(d)
            assert isinstance(sub, ModuleType)
            out += [replace(c, pool="mixed") for c in sample_templates(d, sub.TEMPLATES, sub.VOCAB, m, seed)]
    return out


__all__ = ["Candidate", "Template", "POOLS", "BASE_DOMAINS", "DEFAULT_POOL_SIZE", "build_pool", "check_domain",
           "domains", "candidate_id", "sample_templates"]
