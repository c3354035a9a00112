"""Where things live inside an (unwrapped) Hugging Face model, per family, and canonical weights from it.

Used by the nnsight and plain-torch backends (which leave the HF module tree untouched) and by tests. The
TransformerLens bridge rewires the tree in place, so the bridge backend reads weights from the bridge instead
(:mod:`geoprobe.backends.bridge`); both are checked against runtime activations by the recomputation tests.

Fused projections, the pitfall this module exists for:

* GPT-2 ``c_attn`` is a ``Conv1D`` (``y = x @ W + b``, ``W [d_model, 3 * H * d]``): output columns are
  ``[q heads | k heads | v heads]``, each head-major.
* GPT-NeoX ``query_key_value`` is a ``Linear`` (``W [3 * H * d, d_model]``) whose output is laid out per
  head as ``[H, 3, d]``: q, k, v of head 0, then of head 1, ... Slicing it as ``[3, H, d]`` silently mixes
  q, k and v.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from geoprobe.backends.errors import UnsupportedModelError
from geoprobe.backends.sites import layer_index


@dataclass(frozen=True)
class HFLayout:
    """Module paths (dotted, relative to the ``*ForCausalLM`` model) for one family."""

    family: str
    layers: str
    ln1: str
    attn: str | None = None
    q: str | None = None  # separate projections (relative to the attention module)
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused projection
    fused: Literal["gpt2", "neox"] | None = None
    o: str | None = None
    ln2: str | None = None  # None in parallel blocks (its input would be resid_mid)
    mlp: str | None = None
    rotary: str | None = None  # model-level rotary module returning (cos, sin)
    final_norm: str = ""
    lm_head: str = "lm_head"

    def qkv_order(self) -> list[str]:
        """Projection module names in execution order."""
        return [self.qkv] if self.qkv else [n for n in (self.q, self.k, self.v) if n]


LAYOUTS: dict[str, HFLayout] = {
    "gpt2": HFLayout("gpt2", layers="transformer.h", ln1="ln_1", attn="attn", qkv="c_attn", fused="gpt2",
                     o="c_proj", ln2="ln_2", mlp="mlp", final_norm="transformer.ln_f"),
    "gpt_neox": HFLayout("gpt_neox", layers="gpt_neox.layers", ln1="input_layernorm", attn="attention",
                         qkv="query_key_value", fused="neox", o="dense", ln2="post_attention_layernorm",
                         mlp="mlp", rotary="gpt_neox.rotary_emb", final_norm="gpt_neox.final_layer_norm"),
    "llama": HFLayout("llama", layers="model.layers", ln1="input_layernorm", attn="self_attn", q="q_proj",
                      k="k_proj", v="v_proj", o="o_proj", ln2="post_attention_layernorm", mlp="mlp",
                      rotary="model.rotary_emb", final_norm="model.norm"),
    "phi": HFLayout("phi", layers="model.layers", ln1="input_layernorm", attn="self_attn", q="q_proj",
                    k="k_proj", v="v_proj", o="dense", ln2=None, mlp="mlp", rotary="model.rotary_emb",
                    final_norm="model.final_layernorm"),
    "mamba": HFLayout("mamba", layers="backbone.layers", ln1="norm", final_norm="backbone.norm_f"),
}
LAYOUTS["mistral"] = LAYOUTS["llama"].__class__(**{**LAYOUTS["llama"].__dict__, "family": "mistral"})
LAYOUTS["qwen2"] = LAYOUTS["llama"].__class__(**{**LAYOUTS["llama"].__dict__, "family": "qwen2"})


def layout_for(family: str, hf_model: nn.Module | None = None) -> HFLayout:
    """The layout of ``family``; GPT-NeoX's ``parallel`` flag and head name are read from the model."""
    try:
        lay = LAYOUTS[family]
    except KeyError:
        raise UnsupportedModelError(f"no module layout for family {family!r}; known: {', '.join(LAYOUTS)}"
                                    ) from None
    if hf_model is not None:
        cfg = hf_model.config
        if family == "gpt_neox" and getattr(cfg, "use_parallel_residual", True):
            lay = HFLayout(**{**lay.__dict__, "ln2": None})
        if family == "gpt_neox" and not hasattr(hf_model, "lm_head") and hasattr(hf_model, "embed_out"):
            lay = HFLayout(**{**lay.__dict__, "lm_head": "embed_out"})
        if family == "phi" and getattr(cfg, "qk_layernorm", False):
            raise UnsupportedModelError("Phi with qk_layernorm is not supported (q/k are normalised after the "
                                        "projection; weights-based q/k would not match)")
    return lay


def get_module(root: Any, path: str) -> Any:
    """Follow a dotted path (integers index ModuleLists) from ``root``."""
    obj = root
    for part in path.split(".") if path else []:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


@dataclass
class AttentionWeights:
    """One layer's attention weights in the canonical layout (see :mod:`geoprobe.backends.sites`).

    ``q = ln1(x) @ W_Q + b_Q`` per head: ``einsum("btm,mhd->bthd", ln1(x), W_Q) + b_Q``;
    ``attn_out = einsum("bthd,hdm->btm", z, W_O) + b_O``.
    """

    W_Q: torch.Tensor  # [d_model, H, d]
    W_K: torch.Tensor  # [d_model, H_kv, d]
    W_V: torch.Tensor  # [d_model, H_kv, d]
    W_O: torch.Tensor  # [H, d, d_model]
    b_Q: torch.Tensor  # [H, d]
    b_K: torch.Tensor  # [H_kv, d]
    b_V: torch.Tensor  # [H_kv, d]
    b_O: torch.Tensor  # [d_model]

    def project(self, x_normed: torch.Tensor, which: Literal["q", "k", "v"]) -> torch.Tensor:
        """``x_normed [B, T, d_model]`` (after the block's input norm) -> ``[B, T, heads, d]``."""
        W, b = {"q": (self.W_Q, self.b_Q), "k": (self.W_K, self.b_K), "v": (self.W_V, self.b_V)}[which]
        return torch.einsum("btm,mhd->bthd", x_normed.float(), W.float()) + b.float()

    def float(self) -> AttentionWeights:
        return AttentionWeights(**{k: v.detach().float() for k, v in self.__dict__.items()})


def _bias(lin: nn.Module, n: int, device: Any) -> torch.Tensor:
    b = getattr(lin, "bias", None)
    return b.detach() if b is not None else torch.zeros(n, device=device)


def hf_attention_weights(hf_model: nn.Module, layout: HFLayout, layer: int, n_heads: int, n_kv: int,
                         d_head: int) -> AttentionWeights:
    """Canonical weights of ``layer`` read from an unwrapped HF model."""
    if layout.attn is None:
        raise UnsupportedModelError(f"family {layout.family!r} has no attention weights")
    attn = get_module(get_module(hf_model, layout.layers)[layer], layout.attn)
    o = get_module(attn, layout.o)
    hd = n_heads * d_head
    if layout.fused == "gpt2":  # Conv1D: weight [d_model, 3*hd], columns [q | k | v]
        W = get_module(attn, layout.qkv).weight.detach()
        b = get_module(attn, layout.qkv).bias.detach()
        dm = W.shape[0]
        Wq, Wk, Wv = W.split(hd, dim=1)
        bq, bk, bv = b.split(hd)
        W_O = o.weight.detach().reshape(n_heads, d_head, dm)
        b_O = _bias(o, dm, W.device)
        return AttentionWeights(Wq.reshape(dm, n_heads, d_head), Wk.reshape(dm, n_heads, d_head),
                                Wv.reshape(dm, n_heads, d_head), W_O, bq.reshape(n_heads, d_head),
                                bk.reshape(n_heads, d_head), bv.reshape(n_heads, d_head), b_O)
    if layout.fused == "neox":  # Linear: weight [H*3*d, d_model], rows laid out [H, 3, d]
        lin = get_module(attn, layout.qkv)
        dm = lin.weight.shape[1]
        W = lin.weight.detach().reshape(n_heads, 3, d_head, dm).permute(3, 1, 0, 2)  # [dm, 3, H, d]
        b = _bias(lin, 3 * hd, lin.weight.device).reshape(n_heads, 3, d_head).permute(1, 0, 2)  # [3, H, d]
        W_O = o.weight.detach().T.reshape(n_heads, d_head, dm)
        return AttentionWeights(W[:, 0], W[:, 1], W[:, 2], W_O, b[0], b[1], b[2], _bias(o, dm, W.device))
    q, k, v = (get_module(attn, n) for n in (layout.q, layout.k, layout.v))
    dm = q.weight.shape[1]
    dev = q.weight.device
    return AttentionWeights(
        q.weight.detach().T.reshape(dm, n_heads, d_head),
        k.weight.detach().T.reshape(dm, n_kv, d_head),
        v.weight.detach().T.reshape(dm, n_kv, d_head),
        o.weight.detach().T.reshape(n_heads, d_head, dm),
        _bias(q, hd, dev).reshape(n_heads, d_head),
        _bias(k, n_kv * d_head, dev).reshape(n_kv, d_head),
        _bias(v, n_kv * d_head, dev).reshape(n_kv, d_head),
        _bias(o, dm, dev),
    )


def split_fused_qkv(out: torch.Tensor, fused: str, n_heads: int, d_head: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused projection output ``[B, T, 3*H*d]`` into q, k, v ``[B, T, H, d]`` each."""
    b, t, _ = out.shape
    if fused == "gpt2":
        q, k, v = out.split(n_heads * d_head, dim=-1)
        return tuple(x.reshape(b, t, n_heads, d_head) for x in (q, k, v))  # type: ignore[return-value]
    if fused == "neox":
        x = out.reshape(b, t, n_heads, 3, d_head)
        return x[..., 0, :], x[..., 1, :], x[..., 2, :]
    raise ValueError(fused)


def join_fused_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: str) -> torch.Tensor:
    """Inverse of :func:`split_fused_qkv`."""
    b, t = q.shape[:2]
    if fused == "gpt2":
        return torch.cat([x.reshape(b, t, -1) for x in (q, k, v)], dim=-1)
    return torch.stack([q, k, v], dim=3).reshape(b, t, -1)


# ---------------------------------------------------------------------------------------------------------------
# Hook points on the unwrapped HF modules (nnsight and torch backends) and the raw <-> canonical conversion.

@dataclass(frozen=True)
class Point:
    """A module input/output that carries one or more canonical sites.

    ``key`` is ``resid_pre`` (block input), ``qkv`` (fused projection output), ``q``/``k``/
    ``v`` (separate projection outputs), ``z`` (output-projection input), ``attn`` (attention module output:
    ``(attn_out, pattern)``), ``resid_mid`` (ln2 input), ``mlp_out``, ``resid_post`` (block output).
    """

    key: str
    path: str
    kind: Literal["input", "output"]


def layer_points(layout: HFLayout, layer: int) -> list[Point]:
    """The points of block ``layer`` in execution order."""
    blk = f"{layout.layers}.{layer}"
    pts = [Point("resid_pre", blk, "input")]
    if layout.attn is not None:
        at = f"{blk}.{layout.attn}"
        if layout.qkv:
            pts.append(Point("qkv", f"{at}.{layout.qkv}", "output"))
        else:
            pts += [Point(k, f"{at}.{n}", "output")
                    for k, n in (("q", layout.q), ("k", layout.k), ("v", layout.v))]
        pts += [Point("z", f"{at}.{layout.o}", "input"), Point("attn", at, "output")]
        if layout.ln2:
            pts.append(Point("resid_mid", f"{blk}.{layout.ln2}", "input"))
        if layout.mlp:
            pts.append(Point("mlp_out", f"{blk}.{layout.mlp}", "output"))
    pts.append(Point("resid_post", blk, "output"))
    return pts


def point_sites(point: Point) -> tuple[str, ...]:
    """Canonical sites a point carries."""
    return {"qkv": ("q", "k", "v"), "attn": ("attn_out", "pattern")}.get(point.key,
                                                                                           (point.key,))


class HFCodec:
    """Raw module values <-> canonical site tensors for one model (head reshapes, fused splits, tuples)."""

    def __init__(self, layout: HFLayout, n_heads: int, n_kv: int, d_head: int) -> None:
        self.layout, self.h, self.hkv, self.d = layout, n_heads, n_kv, d_head

    def _heads(self, site: str) -> int:
        return self.h if site in ("q", "z") else self.hkv

    def decode(self, point: Point, raw: Any, want: set[str]) -> dict[str, torch.Tensor]:
        """Canonical tensors for the ``want``-ed sites carried by ``point``."""
        key = point.key
        if key == "attn":
            out: dict[str, torch.Tensor] = {}
            if "attn_out" in want:
                out["attn_out"] = raw[0]
            if "pattern" in want:
                if raw[1] is None:
                    raise RuntimeError("attention weights are None (SDPA/flash kernel): pattern needs eager")
                out["pattern"] = raw[1]
            return out
        x = raw[0] if isinstance(raw, tuple) else raw
        if key == "qkv":
            q, k, v = split_fused_qkv(x, self.layout.fused or "", self.h, self.d)
            return {s: t for s, t in zip(("q", "k", "v"), (q, k, v), strict=True) if s in want}
        if key in ("q", "k", "v", "z"):
            return {key: x.reshape(*x.shape[:-1], self._heads(key), self.d)}
        return {key: x}

    def encode(self, point: Point, raw: Any, fns: dict[str, Any]) -> Any:
        """``raw`` with each carried site ``s`` replaced by ``fns[s](canonical)``."""
        key = point.key
        if key == "attn":
            if "attn_out" not in fns:
                return raw
            return (fns["attn_out"](raw[0]), *raw[1:])
        x = raw[0] if isinstance(raw, tuple) else raw
        if key == "qkv":
            parts = list(split_fused_qkv(x, self.layout.fused or "", self.h, self.d))
            for i, s in enumerate(("q", "k", "v")):
                if s in fns:
                    parts[i] = fns[s](parts[i])
            new = join_fused_qkv(*parts, self.layout.fused or "")
        elif key in ("q", "k", "v", "z"):
            new = fns[key](x.reshape(*x.shape[:-1], self._heads(key), self.d)).reshape(x.shape)
        else:
            new = fns[key](x)
        return (new, *raw[1:]) if isinstance(raw, tuple) else new


class HFModuleAccess:
    """Weights and input norm read straight from the HF modules; mixed into handles that keep the plain HF
    model (``self.hf_model``) and its :class:`HFLayout` (``self.layout``): the nnsight and torch backends."""

    hf_model: nn.Module
    layout: HFLayout
    info: Any
    dtype: torch.dtype

    def attention_weights(self, layer: int) -> AttentionWeights:
        i = self.info
        layer = layer_index(layer, i.n_layers)
        return hf_attention_weights(self.hf_model, self.layout, layer, i.n_heads, i.n_kv_heads, i.d_head).float()

    def input_norm(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        layer = layer_index(layer, self.info.n_layers)
        ln = get_module(self.hf_model, f"{self.layout.layers}.{layer}.{self.layout.ln1}")

        def f(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return ln(x.to(self.dtype)).float()

        return f
