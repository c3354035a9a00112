"""nnsight 0.8 backend: ``nnsight.modeling.transformers.TransformersModel`` over the unwrapped HF model.

Sites are read at the same HF module points as the plain-torch backend (:func:`layout.layer_points`), in
execution order (nnsight requires it); post-RoPE q/k come from the projection outputs and the model-level
rotary module's (cos, sin). The HF attention kernel is kept (SDPA: 1.01-1.03x of plain HF, BACKENDS.md)
except for runs that request ``pattern``, which switch the model to eager attention for that forward.

nnsight reads ``-d/--debug`` from ``sys.argv`` when imported, so it is imported lazily here, with those flags
hidden from it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from geoprobe.backends.errors import UnsupportedModelError
from geoprobe.backends.handle import CapturePlan, Edit, Emit, ModelHandle, final_rows_pre_hook
from geoprobe.backends.hf_hooks import HFHookPlan, eager_attention, forward_kwargs
from geoprobe.backends.info import ModelInfo
from geoprobe.backends.layout import HFModuleAccess, get_module, layout_for


def _import_nnsight() -> Any:
    argv = sys.argv
    sys.argv = [a for a in argv if a not in ("-d", "--debug")]
    try:
        from nnsight.modeling.transformers import TransformersModel
    except ImportError:
        raise UnsupportedModelError("the nnsight backend needs nnsight>=0.8: pip install 'geoprobe[nnsight]'"
                                    ) from None
    finally:
        sys.argv = argv
    return TransformersModel


class NNsightHandle(HFModuleAccess, ModelHandle):
    """:class:`ModelHandle` over an nnsight-wrapped HF causal LM."""

    backend = "nnsight"

    def __init__(self, hf_model: nn.Module, info: ModelInfo, tokenizer: Any, device: torch.device,
                 dtype: torch.dtype, manifest: dict[str, Any] | None = None, nn_model: Any = None) -> None:
        super().__init__(info, tokenizer, device, dtype, manifest)
        self.hf_model = hf_model.eval()
        self.layout = layout_for(info.family, hf_model)
        if nn_model is not None:  # the caller's own nnsight wrapper, used as is
            self.nn = nn_model
            return
        TransformersModel = _import_nnsight()
        pad_side = getattr(tokenizer, "padding_side", None)
        self.nn = TransformersModel(hf_model, tokenizer=tokenizer)
        if pad_side is not None:  # nnsight switches causal tokenizers to left padding; keep the user's choice
            tokenizer.padding_side = pad_side

    @property
    def model(self) -> Any:
        return self.nn

    def _forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor, plan: CapturePlan, emit: Emit,
                 edits: Sequence[Edit]) -> torch.Tensor | None:
        hp = HFHookPlan(self.layout, self.info, plan, edits)
        saved: dict[int, dict[str, Any]] = {}
        rot: dict[str, Any] = {}
        stop = plan.stop_at_layer
        head_hook = None
        if stop is None and plan.final_logits_only:  # unembed each row's final position only
            head = get_module(self.hf_model, self.layout.lm_head)
            head_hook = head.register_forward_pre_hook(final_rows_pre_hook(attention_mask))
        try:
            return self._trace(tokens, attention_mask, plan, emit, hp, saved, rot)
        finally:
            if head_hook is not None:
                head_hook.remove()

    def _trace(self, tokens: torch.Tensor, attention_mask: torch.Tensor, plan: CapturePlan, emit: Emit,
               hp: HFHookPlan, saved: dict[int, dict[str, Any]], rot: dict[str, Any]) -> torch.Tensor | None:
        logits: Any = None
        stop = plan.stop_at_layer
        with eager_attention(self.hf_model, plan.need_pattern):
            with self.nn.trace(tokens, **forward_kwargs(self.info, attention_mask)) as tracer:
                if hp.need_rotary:
                    cs = get_module(self.nn, self.layout.rotary).output
                    rot["cos"] = cs[0].save()
                    rot["sin"] = cs[1].save()
                for layer, tasks in hp.tasks.items():
                    for task in tasks:
                        env = get_module(self.nn, task.point.path)
                        raw = env.input if task.point.kind == "input" else env.output
                        fns = task.edit_fns()
                        if fns:
                            new = hp.codec.encode(task.point, raw, fns)
                            if task.point.kind == "input":
                                env.input = new
                            else:
                                env.output = new
                            raw = new
                        if task.want:
                            for s, v in hp.codec.decode(task.point, raw, task.want).items():
                                saved.setdefault(layer, {})[s] = v.save()
                        if task.point.key == "resid_post" and layer in plan.layers:
                            x = raw[0] if isinstance(raw, tuple) else raw
                            saved.setdefault(layer, {})["resid_post"] = x.save()
                if stop is None:
                    logits = get_module(self.nn, self.layout.lm_head).output.save()
                else:
                    tracer.stop()
        for layer in plan.layers:
            hp.assemble(layer, saved.get(layer, {}), rot.get("cos"), rot.get("sin"), emit)
        return logits
