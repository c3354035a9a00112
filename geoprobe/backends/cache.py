"""``handle.run_with_cache``'s result: activations keyed by TransformerLens hook names.

``cache["blocks.3.attn.hook_rot_k"]`` or, as in TransformerLens, ``cache["rot_k", 3]`` / ``cache["logits"]``.
Names follow :func:`geoprobe.backends.sites.tl_hook_name`; tensors are float32 in geoprobe's canonical layout
(:mod:`geoprobe.backends.sites`), rows in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from geoprobe.backends.errors import SiteError
from geoprobe.backends.sites import site_from_hook_name, tl_hook_name

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


class ActivationCache(dict):
    """``{hook_name: tensor}`` with TransformerLens-style ``(site, layer)`` lookup.

    Attributes:
        attention_mask: ``[B, T]`` mask of the padded input (1 = real token).
        final_index: ``[B]`` index of each row's final real token.
    """

    attention_mask: torch.Tensor
    final_index: torch.Tensor

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, tuple):
            key = tl_hook_name(key[0], key[1] if len(key) > 1 else None)
        try:
            return super().__getitem__(key)
        except KeyError:
            raise SiteError(f"{key!r} is not in the cache; cached: {', '.join(sorted(self))}") from None

    def stack(self, site: str) -> torch.Tensor:
        """Every cached layer of ``site`` stacked on a new leading axis, in layer order."""
        layers = sorted(layer for s, layer in map(site_from_hook_name, self) if s == site and layer is not None)
        if not layers:
            raise SiteError(f"site {site!r} is not in the cache")
        return torch.stack([self[site, layer] for layer in layers])


def hook_names_for(names_filter: NamesFilter, candidates: Iterable[str]) -> list[str]:
    """The hook names selected by ``names_filter``: None = all ``candidates``; a name or list of names (checked);
    a predicate ``name -> bool`` applied to the candidates."""
    cands = list(candidates)
    if names_filter is None:
        return cands
    if callable(names_filter):
        chosen = [n for n in cands if names_filter(n)]
        if not chosen:
            raise SiteError("names_filter selected no hook; e.g. blocks.0.hook_resid_post")
        return chosen
    names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    for n in names:
        site_from_hook_name(n)  # a clear error for names geoprobe cannot capture
        if n not in cands:
            raise SiteError(f"hook {n!r} does not exist on this model")
    return names
