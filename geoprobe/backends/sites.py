"""Canonical activation sites, their shapes (the one place they are documented), and padding helpers.

Every backend returns the same names in the same layout, batch first, float32, detached:

==============  ================================  =============================================================
site            shape (``positions="all"``)        meaning
==============  ================================  =============================================================
``resid_pre``   ``[B, T, d_model]``               residual stream entering block ``l`` (layer 0: embeddings,
                                                  plus learned positions where the model has them)
``resid_mid``   ``[B, T, d_model]``               after attention, before the MLP (sequential blocks only; GPT-NeoX
                                                  with parallel residual and Phi have none: :class:`SiteError`)
``resid_post``  ``[B, T, d_model]``               residual stream leaving block ``l`` (= ``resid_pre`` of l+1)
``q``           ``[B, T, n_heads, d_head]``       projection output ``ln1(resid_pre) @ W_Q + b_Q``, before any
                                                  rotary embedding (TransformerLens ``hook_q``)
``k``           ``[B, T, n_kv_heads, d_head]``    ``ln1(resid_pre) @ W_K + b_K`` before rotary (``hook_k``); per KV
                                                  head, NOT expanded under grouped-query attention
``rot_q``       ``[B, T, n_heads, d_head]``       queries **as attention uses them**: after RoPE where the model
                                                  has rotary positions (partial rotary: only the first
                                                  ``rotary_dim`` dims rotate), else equal to ``q``
                                                  (TransformerLens ``hook_rot_q``)
``rot_k``       ``[B, T, n_kv_heads, d_head]``    keys as attention uses them (post-RoPE; ``hook_rot_k``)
``v``           ``[B, T, n_kv_heads, d_head]``    values per KV head (not expanded)
``pattern``     ``[B, n_heads, T_q, T_k]``        attention probabilities (rows sum to 1 over visible keys)
``z``           ``[B, T, n_heads, d_head]``       per-head attention output before ``W_O`` (pattern @ v)
``attn_out``    ``[B, T, d_model]``               attention block output (``sum_h z_h @ W_O[h] + b_O``)
``mlp_out``     ``[B, T, d_model]``               MLP output
``logits``      ``[B, T, vocab]``                 final logits (layer ``None``)
==============  ================================  =============================================================

With ``positions="final"`` the T axis is replaced by the final real token of each row (left or right
padding): ``[B, d_model]``, ``[B, n_heads, d_head]``, pattern ``[B, n_heads, T_k]`` (the final query's row).

Names follow TransformerLens: site ``s`` of layer ``l`` is the hook ``blocks.{l}.hook_{s}`` (residual sites,
``attn_out``, ``mlp_out``) or ``blocks.{l}.attn.hook_{s}`` (``q``, ``k``, ``v``, ``z``, ``pattern``, ``rot_q``,
``rot_k``); :func:`tl_hook_name` gives it. TransformerLens only has ``hook_rot_q/k`` on rotary models; geoprobe's
``rot_q``/``rot_k`` exist on every model (equal to ``q``/``k`` without rotary positions).

Which q/k do probes use? Key orthogonality (runtime-keys variant) and QK alignment use ``rot_k``/``rot_q``: the
post-RoPE runtime vectors whose dot products are the attention scores. The weights-based key-orthogonality
variant uses ``W_K`` (no positions). ``q``/``k`` check weights against runtime (``ln1(resid_pre) @ W_K + b_K ==
k``) and serve position-free analyses. Aliases kept for older code: ``q_pre_rope`` = ``q``, ``k_pre_rope`` =
``k`` (results are keyed by the new names). Before geoprobe 0.2, ``q``/``k`` meant the post-RoPE vectors.

Weights (:meth:`ModelHandle.attention_weights`) use the matching layout: ``W_Q [d_model, n_heads, d_head]``,
``W_K``/``W_V [d_model, n_kv_heads, d_head]``, ``W_O [n_heads, d_head, d_model]``, biases ``b_Q [n_heads,
d_head]``, ``b_K``/``b_V [n_kv_heads, d_head]``, ``b_O [d_model]`` (zeros where the model has none).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from geoprobe.backends.errors import SiteError

RESID_SITES = ("resid_pre", "resid_mid", "resid_post")
ATTENTION_SITES = ("q", "k", "rot_q", "rot_k", "v", "pattern", "z", "attn_out")
LAYER_SITES = (*RESID_SITES, *ATTENTION_SITES, "mlp_out")
GLOBAL_SITES = ("logits",)
SITES = (*LAYER_SITES, *GLOBAL_SITES)
#: sites an intervention may rewrite (:class:`Edit`)
EDITABLE_SITES = ("resid_pre", "resid_mid", "resid_post", "q", "k", "v", "z", "attn_out",
                  "mlp_out")

#: older names still accepted (documented above)
SITE_ALIASES = {"q_pre_rope": "q", "k_pre_rope": "k"}
_ATTN_MODULE_SITES = ("q", "k", "v", "z", "pattern", "rot_q", "rot_k")

Positions = Literal["all", "final"]


def resolve_site(site: str) -> str:
    """The canonical name of ``site`` (aliases resolved)."""
    return SITE_ALIASES.get(site, site)


def tl_hook_name(site: str, layer: int | str | None) -> str:
    """TransformerLens hook name of a canonical site: ``blocks.{layer}.hook_{site}`` or
    ``blocks.{layer}.attn.hook_{site}``; ``logits`` has no hook (its name is ``logits``)."""
    site = resolve_site(site)
    if site in GLOBAL_SITES or layer is None:
        return site
    return f"blocks.{layer}.attn.hook_{site}" if site in _ATTN_MODULE_SITES else f"blocks.{layer}.hook_{site}"


def site_from_hook_name(name: str) -> tuple[str, int | None]:
    """Inverse of :func:`tl_hook_name`: ``"blocks.3.attn.hook_rot_k" -> ("rot_k", 3)``; raises on others."""
    if name in GLOBAL_SITES:
        return name, None
    parts = name.split(".")
    if len(parts) in (3, 4) and parts[0] == "blocks" and parts[1].isdigit() and parts[-1].startswith("hook_"):
        site = parts[-1][len("hook_"):]
        in_attn = len(parts) == 4 and parts[2] == "attn"
        if site in SITES and (site in _ATTN_MODULE_SITES) == in_attn:
            return site, int(parts[1])
    raise SiteError(f"{name!r} is not a hook name geoprobe captures; e.g. blocks.0.hook_resid_post, "
                    f"blocks.0.attn.hook_rot_k (sites: {', '.join(SITES)})")
SiteKey = tuple[str, "int | None"]


def check_sites(sites: Iterable[str], *, has_attention: bool = True, parallel_block: bool = False,
                available: Sequence[str] | None = None) -> list[str]:
    """Validate site names (order kept, duplicates dropped); clear errors name the valid choices."""
    out: list[str] = []
    for s in sites:
        s = resolve_site(s)
        if s not in SITES:
            raise SiteError(f"unknown site {s!r}; valid sites: {', '.join(SITES)}")
        if not has_attention and s in ATTENTION_SITES:
            raise SiteError(f"site {s!r} needs attention, but this model has none (attention-free); "
                            f"use {', '.join(s for s in SITES if s not in ATTENTION_SITES)}")
        if parallel_block and s == "resid_mid":
            raise SiteError("site 'resid_mid' does not exist in parallel-attention blocks (GPT-NeoX/Phi): "
                            "attention and MLP both read resid_pre; use resid_pre + attn_out if you need it")
        if available is not None and s not in available:
            raise SiteError(f"site {s!r} is not available for this model; available: {', '.join(available)}")
        if s not in out:
            out.append(s)
    return out


def layer_index(layer: int, n_layers: int) -> int:
    """The one meaning of a layer index, used by ``run`` and every intervention: Python-style, so
    ``-1`` is the last block and ``-n_layers`` the first; valid indices are ``-n_layers <= layer < n_layers``.

    Returns the index in ``[0, n_layers)``; anything else (out of range, not an integer) raises a one-line
    :class:`SiteError` naming the valid range.
    """
    valid = f"valid: 0..{n_layers - 1}, or -{n_layers}..-1 counting from the end"
    if isinstance(layer, bool):
        raise SiteError(f"layer must be an integer, got {layer!r} ({valid})")
    try:
        li = operator.index(layer)
    except TypeError:
        raise SiteError(f"layer must be an integer, got {layer!r} ({valid})") from None
    if not -n_layers <= li < n_layers:
        raise SiteError(f"layer {li} is out of range for a model with {n_layers} layers ({valid})")
    return li % n_layers


def check_layers(layers: int | Iterable[int] | None, n_layers: int) -> list[int]:
    """``None`` -> all layers; otherwise each index through :func:`layer_index` (sorted, duplicates dropped)."""
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        layers = [layers]  # type: ignore[list-item]
    out = sorted({layer_index(layer, n_layers) for layer in layers})  # type: ignore[union-attr]
    if not out:
        raise SiteError(f"no layers requested; pass layers=None for all {n_layers}, or indices "
                        f"0..{n_layers - 1} / -{n_layers}..-1")
    return out


def final_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row, for left, right or no padding: ``[B]`` (long).

    ``idx_b = max{t : mask[b, t] = 1}``; a row without any real token raises.
    """
    mask = attention_mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise SiteError("a sequence in the batch has no real token (its attention mask is all zeros)")
    t = mask.shape[1]
    return (t - 1 - mask.flip(1).int().argmax(dim=1)).long()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: ``cumsum(mask) - 1``, pads set to 1 (HF's convention).

    With left padding this gives every row the positions it would have unpadded, so batched results equal
    per-sequence results for rotary and learned positions alike.
    """
    mask = attention_mask.long()
    pos = mask.cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def gather_final(x: torch.Tensor, final_idx: torch.Tensor, site: str) -> torch.Tensor:
    """Select each row's final real position: ``[B, T, ...] -> [B, ...]``; pattern ``[B,H,T,T] -> [B,H,T]``."""
    b = torch.arange(x.shape[0], device=x.device)
    idx = final_idx.to(x.device)
    if site == "pattern":
        return x[b, :, idx, :]
    return x[b, idx]


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, side: Literal["left", "right"] = "right"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged token-id lists into ``(tokens [B, T], attention_mask [B, T])``."""
    if not seqs:
        raise SiteError("no sequences to pad")
    t = max(len(s) for s in seqs)
    if t == 0:
        raise SiteError("every sequence is empty (the prompts tokenised to nothing)")
    tokens = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise SiteError(f"sequence {i} is empty (the prompt tokenised to nothing)")
        sl = slice(t - len(s), t) if side == "left" else slice(0, len(s))
        tokens[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, sl] = 1
    return tokens, mask


@dataclass
class SiteActivation:
    """One site's activation for one batch, as handed to a reducer.

    Attributes:
        site: canonical site name.
        layer: block index (None for ``logits``).
        value: the activation in the canonical layout (float32, detached; on the model's device).
        rows: which rows of the full input this batch holds (``slice``).
        attention_mask: ``[b, T]`` mask of this batch (1 = real token).
        final_index: ``[b]`` index of each row's final real token.
        positions: ``"all"`` or ``"final"`` (whether ``value`` still has the T axis).
    """

    site: str
    layer: int | None
    value: torch.Tensor
    rows: slice
    attention_mask: torch.Tensor
    final_index: torch.Tensor
    positions: Positions


class Activations(dict):
    """``{(site, layer): tensor}`` for the requested sites, rows in input order.

    ``acts["resid_post", 3]``, ``acts["logits"]`` (global sites need no layer), ``acts.stack("z")`` ->
    ``[n_layers_requested, ...]``. ``attention_mask`` and ``final_index`` describe the padded input.
    """

    attention_mask: torch.Tensor
    final_index: torch.Tensor

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            key = (key, None)
        key = (resolve_site(key[0]), key[1])
        try:
            return super().__getitem__(key)
        except KeyError:
            raise SiteError(f"activation {key} was not collected; collected: {sorted(self, key=str)}") from None

    def layers(self, site: str) -> list[int]:
        site = resolve_site(site)
        return sorted(k[1] for k in self if k[0] == site and k[1] is not None)

    def stack(self, site: str) -> torch.Tensor:
        """All collected layers of ``site`` stacked on a new leading axis (in layer order)."""
        return torch.stack([self[site, layer] for layer in self.layers(site)])
