"""Interventions as context managers built from canonical-site :class:`~geoprobe.backends.handle.Edit`s.

Each returns a context manager from :meth:`ModelHandle.intervene`: the edits apply to every forward pass
(``handle.run``/``handle.logits``) inside the ``with`` block and are gone afterwards; the model's weights and
modules are never modified, so outputs before and after are bit-identical. Layers follow
:func:`geoprobe.backends.sites.layer_index` everywhere, as in ``run(layers=...)``: ``-1`` is the last block,
and an index outside ``-n_layers..n_layers-1`` is a :class:`SiteError` naming the valid range.

===================  =========================================================================================
intervention          edit
===================  =========================================================================================
``ablate_heads``      ``z[..., h, :] := 0`` (``mode="zero"``) or ``:= mean_h`` (``mode="mean"``, means over real
                      tokens of a reference set: :func:`head_means`) for the listed heads; through ``z`` so
                      the head's whole contribution ``z_h @ W_O[h]`` goes
``bypass_layers``     ``resid_post := resid_pre`` (the whole block skipped)
``zero_attention``    ``attn_out := 0`` (MLP still runs, reading the un-attended residual)
``zero_mlp``          ``mlp_out := 0``
``value_operator``    ``v := op(v)`` on the concatenated-heads value vectors ``[..., n_kv_heads * d_head]`` of one
                      layer at every position. Under grouped-query attention this is the un-expanded KV space
                      (``ModelInfo.value_dim``); an axis computed on expanded values must be folded back first.
                      ``op`` is any callable (the operator maths lives in ``geoprobe.tensor_ops``);
                      :func:`project_out`, :func:`keep_only`, :func:`shift` are reference implementations.
===================  =========================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from geoprobe.backends.errors import SiteError
from geoprobe.backends.handle import Edit
from geoprobe.backends.sites import layer_index

if TYPE_CHECKING:
    from geoprobe.backends.handle import ModelHandle


def _layers(handle: ModelHandle, layers: int | Sequence[int]) -> list[int]:
    """``layers`` (an index or a list; negative counts from the end) as block indices in ``[0, n_layers)``."""
    single = isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable)
    as_list = [layers] if single else list(layers)  # type: ignore[arg-type]
    return [layer_index(layer, handle.info.n_layers) for layer in as_list]


def ablate_heads(handle: ModelHandle, heads: dict[int, Sequence[int]], *, mode: str = "zero",
                 means: dict[int, torch.Tensor] | None = None):
    """Zero- or mean-ablate ``heads`` (``{layer: [head, ...]}``, negative layers count from the end) through
    ``z``.

    ``means[layer]`` is ``[n_heads, d_head]`` (from :func:`head_means`), required for ``mode="mean"``.
    """
    if mode not in ("zero", "mean"):
        raise SiteError(f"ablation mode must be 'zero' or 'mean', got {mode!r}")
    if not handle.info.has_attention:
        raise SiteError("head ablation needs attention heads; this model has none")
    edits = []
    for key, hs in heads.items():
        layer = layer_index(key, handle.info.n_layers)
        hs = list(hs)
        bad = [h for h in hs if not 0 <= h < handle.info.n_heads]
        if bad:
            raise SiteError(f"heads {bad} out of range (model has {handle.info.n_heads} heads per layer)")
        if mode == "mean":
            mean = None if means is None else means.get(layer, means.get(key))
            if mean is None:
                raise SiteError(f"mean ablation of layer {layer} needs means[{layer}] (see head_means)")

            def fn(z: torch.Tensor, _hs=hs, _m=mean) -> torch.Tensor:
                z = z.clone()
                z[..., _hs, :] = _m[_hs].to(z.dtype).to(z.device)
                return z
        else:
            def fn(z: torch.Tensor, _hs=hs) -> torch.Tensor:
                z = z.clone()
                z[..., _hs, :] = 0
                return z
        edits.append(Edit("z", layer, fn))
    return handle.intervene(edits)


def head_means(handle: ModelHandle, tokens, attention_mask=None, *, layers: int | Sequence[int] | None = None,
               batch_size: int | None = None) -> dict[int, torch.Tensor]:
    """Mean ``z`` per head over the real tokens of a reference set: ``{layer: [n_heads, d_head]}``, streamed
    through :class:`geoprobe.tensor_ops.HeadMeans` (constant memory)."""
    from geoprobe.tensor_ops import HeadMeans

    acc = HeadMeans()

    def reducer(a) -> None:
        acc.update(a.layer, a.value, a.attention_mask.bool())

    handle.run(tokens, attention_mask, sites=["z"], layers=layers, reducer=reducer, batch_size=batch_size)
    return {layer: acc.means(layer).float().cpu() for layer in acc.layers}


def bypass_layers(handle: ModelHandle, layers: int | Sequence[int]):
    """``resid_post := resid_pre`` at each of ``layers``."""
    edits = []
    for layer in _layers(handle, layers):
        saved: dict[str, torch.Tensor] = {}

        def keep(x: torch.Tensor, _s=saved) -> torch.Tensor:
            _s["x"] = x
            return x

        def restore(x: torch.Tensor, _s=saved) -> torch.Tensor:
            return _s.pop("x")

        edits += [Edit("resid_pre", layer, keep), Edit("resid_post", layer, restore)]
    return handle.intervene(edits)


def zero_attention(handle: ModelHandle, layers: int | Sequence[int]):
    """``attn_out := 0`` at ``layers``."""
    if not handle.info.has_attention:
        raise SiteError("this model has no attention to zero")
    return handle.intervene([Edit("attn_out", layer, torch.zeros_like) for layer in _layers(handle, layers)])


def zero_mlp(handle: ModelHandle, layers: int | Sequence[int]):
    """``mlp_out := 0`` at ``layers``."""
    if "mlp_out" not in handle.available_sites:
        raise SiteError("this model has no mlp_out site")
    return handle.intervene([Edit("mlp_out", layer, torch.zeros_like) for layer in _layers(handle, layers)])


def value_operator(handle: ModelHandle, layer: int, op: Callable[[torch.Tensor], torch.Tensor]):
    """``v := op(v)`` in the concatenated-heads value space ``[..., n_kv_heads * d_head]`` of ``layer``
    (negative counts from the end).

    ``op`` receives float32 ``[B, T, n_kv_heads * d_head]`` and must return the same shape.
    """
    if not handle.info.has_attention:
        raise SiteError("value operators need attention values; this model has none")

    def fn(v: torch.Tensor) -> torch.Tensor:
        b, t, h, d = v.shape
        flat = v.reshape(b, t, h * d).float()
        out = op(flat)
        if out.shape != flat.shape:
            raise SiteError(f"value operator returned shape {tuple(out.shape)}, expected {tuple(flat.shape)}")
        return out.to(v.dtype).reshape(b, t, h, d)

    return handle.intervene([Edit("v", layer_index(layer, handle.info.n_layers), fn)])


# ------------------------------------------------------------------ reference operators (unit direction u)
# The operator maths lives in geoprobe.tensor_ops; these are closures ready for value_operator.
def project_out(u: torch.Tensor, lam: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v - lam (v.u) u`` (:func:`geoprobe.tensor_ops.cut`)."""
    from geoprobe.tensor_ops import make_operator

    return make_operator("cut", u, lam=lam)


def keep_only(u: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(v.u) u`` (:func:`geoprobe.tensor_ops.keep_only`)."""
    from geoprobe.tensor_ops import make_operator

    return make_operator("keep_only", u)


def shift(u: torch.Tensor, amount: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v + amount u`` (e.g. ``amount = ±1 sigma``; :func:`geoprobe.tensor_ops.shift`)."""
    from geoprobe.tensor_ops import make_operator

    return make_operator("shift", u, k=amount, sigma=1.0)
