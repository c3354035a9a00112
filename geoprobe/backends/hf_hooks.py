"""Shared planning for backends that hook the unwrapped HF modules (nnsight, plain torch).

Turns a :class:`CapturePlan` plus edits into, per layer, the :class:`Point`s to touch in execution order,
which canonical sites to read at each, and which edit functions to apply there; and assembles canonical
sites (post-RoPE q/k from pre-RoPE q/k and the model's cos/sin) once a layer's raw values are in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from geoprobe.backends.attention import apply_rotary
from geoprobe.backends.handle import CapturePlan, Edit, Emit
from geoprobe.backends.info import ModelInfo
from geoprobe.backends.layout import HFCodec, HFLayout, Point, layer_points, point_sites


def raw_sites_for(site: str, rotary: bool) -> list[str]:
    """Sites read from the model to produce canonical ``site`` (cos/sin come from the rotary module)."""
    if site in ("rot_q", "rot_k"):
        return [site[-1]]
    return [site]


@dataclass
class PointTask:
    point: Point
    want: set[str] = field(default_factory=set)
    fns: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = field(default_factory=dict)

    def edit_fns(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        def chain(fs: list[Callable]) -> Callable:
            def f(x: torch.Tensor) -> torch.Tensor:
                for g in fs:
                    x = g(x)
                return x

            return f

        return {s: chain(fs) for s, fs in self.fns.items()}


class HFHookPlan:
    """Per-layer point tasks for one forward pass."""

    def __init__(self, layout: HFLayout, info: ModelInfo, plan: CapturePlan, edits: Sequence[Edit]) -> None:
        self.layout, self.info, self.plan = layout, info, plan
        self.codec = HFCodec(layout, info.n_heads, info.n_kv_heads, info.d_head)
        self.rotary = info.positional == "rotary"
        self.need_rotary = self.rotary and any(s in ("rot_q", "rot_k") for s in plan.layer_sites) and bool(plan.layers)
        n_run = plan.stop_at_layer if plan.stop_at_layer is not None else info.n_layers
        self.tasks: dict[int, list[PointTask]] = {}
        for layer in range(n_run):
            pts = {p.key: PointTask(p) for p in layer_points(layout, layer)}
            by_site = {s: p for p in pts.values() for s in point_sites(p.point)}
            if layer in plan.layers:
                by_site["resid_post"].want.add("resid_post")  # the layer's end: where its sites are assembled
                for s in plan.layer_sites:
                    for r in raw_sites_for(s, self.rotary):
                        by_site[r].want.add(r)
            for e in edits:
                if e.layer == layer:
                    by_site[e.site].fns.setdefault(e.site, []).append(e.fn)
            used = [t for t in pts.values() if t.want or t.fns]
            if used:
                self.tasks[layer] = used

    def assemble(self, layer: int, got: dict[str, torch.Tensor], cos: torch.Tensor | None,
                 sin: torch.Tensor | None, emit: Emit) -> None:
        """Emit the canonical sites of ``layer`` from its raw values."""
        for s in self.plan.layer_sites:
            if s in ("rot_q", "rot_k"):
                pre = got[s[-1]]
                if self.rotary:
                    assert cos is not None and sin is not None
                    emit(s, layer, apply_rotary(pre.float(), cos, sin))
                else:
                    emit(s, layer, pre)
            else:
                emit(s, layer, got[s])


def forward_kwargs(info: ModelInfo, attention_mask: torch.Tensor) -> dict[str, Any]:
    """HF forward kwargs: the mask, and mask-derived positions (left padding) where positions exist."""
    from geoprobe.backends.sites import position_ids_from_mask

    kw: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
    if info.positional != "none":
        kw["position_ids"] = position_ids_from_mask(attention_mask)
    return kw


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module, needed: bool) -> Iterator[None]:
    """Switch the HF model to eager attention for the duration (patterns need it), then switch back."""
    old = getattr(model.config, "_attn_implementation", None)
    if not needed or old in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(old)
