"""Plain ``torch`` forward-hook backend: any ``nn.Module`` plus a map from canonical sites to submodules.

Two uses:

* :class:`TorchHooksHandle` for plain-torch wind tunnels (LSTM, MLP) that have no HF/TransformerLens
  architecture. Give it the module, a :class:`ModelInfo` and ``sites``: ``{canonical site: layer ->
  (submodule, "input" | "output")}`` whose values are already in the canonical layout (a tuple output
  contributes its first element), and a ``forward(module, tokens, attention_mask) -> logits``. E.g. for an
  LSTM stack: ``{"resid_post": lambda l: (model.layers[l], "output")}``. Register a loader for run folders
  with :data:`geoprobe.backends.TORCH_RUN_LOADERS` so ``load_model(run_dir)`` finds it.
* :func:`hf_torch_handle` for HF models (``backend="torch"``): the same HF module layout as the nnsight
  backend, with no dependency beyond torch; keeps the model's SDPA kernel unless a pattern is requested.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from geoprobe.backends.handle import CapturePlan, Edit, Emit, ModelHandle, final_rows_pre_hook
from geoprobe.backends.hf_hooks import HFHookPlan, eager_attention, forward_kwargs
from geoprobe.backends.info import ModelInfo
from geoprobe.backends.layout import AttentionWeights, HFModuleAccess, get_module, layout_for

SiteMap = dict[str, Callable[[int], tuple[nn.Module, str]]]


class _Stop(Exception):
    pass


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, tuple) else x


def _input_hook(fn: Callable[[Any], Any]) -> Callable:
    """A forward pre-hook (with kwargs) that passes the first input through ``fn`` (which may replace it)."""

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            new = fn(args[0])
            return None if new is args[0] else ((new, *args[1:]), kwargs)
        key = next(iter(kwargs))
        new = fn(kwargs[key])
        return None if new is kwargs[key] else (args, {**kwargs, key: new})

    return hook


class TorchHooksHandle(ModelHandle):
    """:class:`ModelHandle` over a plain module with a canonical site map (see the module docstring)."""

    backend = "torch"

    def __init__(self, module: nn.Module, info: ModelInfo, *, sites: SiteMap,
                 forward: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                 block: Callable[[int], nn.Module] | None = None, tokenizer: Any = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 manifest: dict[str, Any] | None = None) -> None:
        super().__init__(info, tokenizer, torch.device(device), dtype, manifest)
        self.module = module.eval()
        self.site_map = sites
        self.forward_fn = forward
        self.block = block  # block(l) gets a pre-hook that stops the forward before layer l

    @property
    def model(self) -> nn.Module:
        return self.module

    @property
    def available_sites(self) -> list[str]:
        return [*self.site_map, "logits"]

    def _forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor, plan: CapturePlan, emit: Emit,
                 edits: Sequence[Edit]) -> torch.Tensor | None:
        handles = []
        try:
            for layer in sorted({*plan.layers, *(e.layer for e in edits)}):
                for site in {*(plan.layer_sites if layer in plan.layers else []),
                             *(e.site for e in edits if e.layer == layer)}:
                    mod, kind = self.site_map[site](layer)
                    fns = [e.fn for e in edits if e.layer == layer and e.site == site]
                    cap = layer in plan.layers and site in plan.layer_sites

                    def apply(x: Any, _fns=fns, _cap=cap, _s=site, _l=layer) -> Any:
                        v = _first(x)
                        for f in _fns:
                            v = f(v)
                        if _cap:
                            emit(_s, _l, v)
                        if not _fns:
                            return x
                        return (v, *x[1:]) if isinstance(x, tuple) else v

                    if kind == "input":
                        handles.append(mod.register_forward_pre_hook(_input_hook(apply), with_kwargs=True))
                    else:
                        handles.append(mod.register_forward_hook(lambda m, a, o, _f=apply: _f(o)))
            stop = plan.stop_at_layer
            if stop is not None and self.block is not None:
                def halt(m: nn.Module, a: Any, k: Any) -> None:
                    raise _Stop

                handles.append(self.block(stop).register_forward_pre_hook(halt, with_kwargs=True))
            try:
                logits = self.forward_fn(self.module, tokens, attention_mask)
            except _Stop:
                return None
            return _first(logits)
        finally:
            for h in handles:
                h.remove()

    def attention_weights(self, layer: int) -> AttentionWeights:
        from geoprobe.backends.errors import SiteError

        raise SiteError(f"{self.info.family} models have no attention weights")


class HFTorchHandle(HFModuleAccess, ModelHandle):
    """Plain forward hooks on an unwrapped HF causal LM (``backend="torch"``)."""

    backend = "torch"

    def __init__(self, hf_model: nn.Module, info: ModelInfo, tokenizer: Any, device: torch.device,
                 dtype: torch.dtype, manifest: dict[str, Any] | None = None) -> None:
        super().__init__(info, tokenizer, device, dtype, manifest)
        self.hf_model = hf_model.eval()
        self.layout = layout_for(info.family, hf_model)

    @property
    def model(self) -> nn.Module:
        return self.hf_model

    def _forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor, plan: CapturePlan, emit: Emit,
                 edits: Sequence[Edit]) -> torch.Tensor | None:
        hp = HFHookPlan(self.layout, self.info, plan, edits)
        got: dict[int, dict[str, torch.Tensor]] = {}
        rot: dict[str, torch.Tensor] = {}
        handles = []
        try:
            if hp.need_rotary:
                def grab_rot(m: nn.Module, a: Any, out: Any) -> None:
                    rot["cos"], rot["sin"] = out[0], out[1]

                handles.append(get_module(self.hf_model, self.layout.rotary).register_forward_hook(grab_rot))
            for layer, tasks in hp.tasks.items():
                for task in tasks:
                    fns = task.edit_fns()

                    def apply(raw: Any, _t=task, _fns=fns, _l=layer) -> Any:
                        new = hp.codec.encode(_t.point, raw, _fns) if _fns else raw
                        if _t.want:
                            got.setdefault(_l, {}).update(hp.codec.decode(_t.point, new, _t.want))
                        if _t.point.key == "resid_post" and _l in hp.plan.layers:
                            hp.assemble(_l, got.pop(_l, {}) | {"resid_post": _first(new)},
                                        rot.get("cos"), rot.get("sin"), emit)
                        return new

                    mod = get_module(self.hf_model, task.point.path)
                    if task.point.kind == "input":
                        handles.append(mod.register_forward_pre_hook(_input_hook(apply), with_kwargs=True))
                    else:
                        handles.append(mod.register_forward_hook(lambda m, a, o, _f=apply: _f(o)))
            stop = plan.stop_at_layer
            if stop is not None:
                def halt(m: nn.Module, a: Any, k: Any) -> None:
                    raise _Stop

                blk = get_module(self.hf_model, f"{self.layout.layers}.{stop}")
                handles.append(blk.register_forward_pre_hook(halt, with_kwargs=True))
            elif "logits" not in plan.sites and self.layout.final_norm:  # nothing after the last block is read
                def halt_head(m: nn.Module, a: Any) -> None:
                    raise _Stop

                handles.append(get_module(self.hf_model, self.layout.final_norm).register_forward_pre_hook(halt_head))
            elif plan.final_logits_only:
                head = get_module(self.hf_model, self.layout.lm_head)
                handles.append(head.register_forward_pre_hook(final_rows_pre_hook(attention_mask)))
            with eager_attention(self.hf_model, plan.need_pattern):
                try:
                    out = self.hf_model(tokens, **forward_kwargs(self.info, attention_mask))
                except _Stop:
                    return None
            return out.logits
        finally:
            for h in handles:
                h.remove()


def hf_torch_handle(hf_model: nn.Module, info: ModelInfo, tokenizer: Any, device: torch.device,
                    dtype: torch.dtype, manifest: dict[str, Any] | None = None) -> HFTorchHandle:
    return HFTorchHandle(hf_model, info, tokenizer, device, dtype, manifest)
