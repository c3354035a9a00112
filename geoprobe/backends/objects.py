"""Handles over model objects the caller already holds: no reloading, no copying, no rewiring.

=======================================  ===================  ==============================================
object                                   default backend      notes
=======================================  ===================  ==============================================
:class:`ModelHandle`                      (itself)             returned unchanged
``transformer_lens`` ``TransformerBridge``  ``transformer_lens``  tokenizer: ``bridge.tokenizer`` (it prepends
                                                               BOS, TransformerLens' default) unless given one
``transformers`` ``PreTrainedModel``      ``torch``            pass its ``tokenizer=``; ``nnsight`` also works;
                                                               ``transformer_lens`` is refused (booting a bridge
                                                               rewires the model object in place)
nnsight ``LanguageModel`` /               ``nnsight``          the wrapper is used as is (tokenizer: its own)
``TransformersModel``
=======================================  ===================  ==============================================

The weights stay where they are: device and dtype are read from the model's parameters. Handles put the
model in ``eval()`` mode (dropout off), as every geoprobe forward pass does.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from geoprobe.backends.errors import ModelLoadError, UnsupportedModelError
from geoprobe.backends.handle import ModelHandle
from geoprobe.backends.info import info_from_hf_config

OBJECT_KINDS = ("TransformerBridge", "transformers PreTrainedModel", "nnsight LanguageModel/TransformersModel",
                "geoprobe ModelHandle")


def object_kind(obj: Any) -> str | None:
    """``"handle"``, ``"bridge"``, ``"nnsight"``, ``"hf"`` or None (not a model object geoprobe knows)."""
    if isinstance(obj, ModelHandle):
        return "handle"
    if "nnsight" in sys.modules:
        from nnsight.modeling.transformers import TransformersModel

        if isinstance(obj, TransformersModel):
            return "nnsight"
    if "transformer_lens" in sys.modules:
        try:
            from transformer_lens.model_bridge import TransformerBridge
        except ImportError:  # pragma: no cover - older TransformerLens
            TransformerBridge = ()  # type: ignore[assignment]
        if TransformerBridge and isinstance(obj, TransformerBridge):
            return "bridge"
        if type(obj).__name__ == "HookedTransformer":
            raise UnsupportedModelError("HookedTransformer objects are not supported; pass a TransformerLens 4 "
                                        "TransformerBridge, or the transformers model and its tokenizer")
    if "transformers" in sys.modules:
        from transformers import PreTrainedModel

        if isinstance(obj, PreTrainedModel):
            return "hf"
    return None


def _params(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def _check_placement(kind: str, device: torch.device, dtype: torch.dtype, want_device: Any, want_dtype: Any
                     ) -> None:
    """Objects are used where they are: an explicit different device/dtype is an error, not a silent move."""
    if want_device not in (None, "auto") and torch.device(want_device) != device:
        raise ModelLoadError(f"the {kind} object lives on {device}, not {want_device}; move it yourself "
                             "(model.to(...)) or leave device unset")
    if want_dtype not in (None, "auto") and want_dtype != dtype and str(want_dtype) not in (
            str(dtype), str(dtype).replace("torch.", "")):
        raise ModelLoadError(f"the {kind} object holds {str(dtype).replace('torch.', '')} weights, not "
                             f"{want_dtype}; convert it yourself or leave dtype unset")


def _info(hf_model: Any, kind: str) -> Any:
    cfg = hf_model.config
    name = getattr(cfg, "_name_or_path", "") or type(hf_model).__name__
    return info_from_hf_config(cfg, "object", {"name": str(name), "object": kind})


def handle_from_object(obj: Any, *, backend: str | None = None, tokenizer: Any = None, device: Any = None,
                       dtype: Any = None) -> ModelHandle:
    """A :class:`ModelHandle` over ``obj`` (see the module table), without reloading anything."""
    kind = object_kind(obj)
    if kind is None:
        raise ModelLoadError(f"cannot load a {type(obj).__name__}: pass a run folder, HF folder, .gguf file, hub "
                             f"id, or one of: {', '.join(OBJECT_KINDS)}")
    if kind == "handle":
        if backend not in (None, obj.backend):
            raise ModelLoadError(f"this handle uses the {obj.backend} backend, not {backend}")
        return obj
    if kind == "bridge":
        from geoprobe.backends.bridge import BridgeHandle

        if backend not in (None, "transformer_lens"):
            raise ModelLoadError(f"a TransformerBridge runs on the transformer_lens backend, not {backend}")
        hf = obj.original_model
        dev, dt = _params(hf)
        _check_placement("TransformerBridge", dev, dt, device, dtype)
        tok = tokenizer if tokenizer is not None else getattr(obj, "tokenizer", None)
        return BridgeHandle(obj, _info(hf, "TransformerBridge"), tok, dev, dt)
    if kind == "nnsight":
        from geoprobe.backends.nnsight_backend import NNsightHandle

        if backend not in (None, "nnsight"):
            raise ModelLoadError(f"an nnsight model runs on the nnsight backend, not {backend}")
        hf = obj._module  # nnsight 0.8: the wrapped transformers model
        dev, dt = _params(hf)
        _check_placement("nnsight", dev, dt, device, dtype)
        tok = tokenizer if tokenizer is not None else getattr(obj, "tokenizer", None)
        return NNsightHandle(hf, _info(hf, "nnsight"), tok, dev, dt, nn_model=obj)
    # a plain transformers model
    backend = backend or "torch"
    if backend == "transformer_lens":
        raise ModelLoadError("a transformers model object cannot use the transformer_lens backend without "
                             "TransformerBridge rewiring it in place; use backend='torch' or 'nnsight', or pass "
                             "a TransformerBridge you booted yourself")
    dev, dt = _params(obj)
    _check_placement("transformers", dev, dt, device, dtype)
    if tokenizer is None:
        raise ModelLoadError("a transformers model object needs its tokenizer: load_model(model, "
                             "tokenizer=tokenizer)")
    info = _info(obj, "transformers")
    if backend == "nnsight":
        from geoprobe.backends.nnsight_backend import NNsightHandle

        return NNsightHandle(obj, info, tokenizer, dev, dt)
    if backend != "torch":
        raise ModelLoadError(f"unknown backend {backend!r}; valid choices for a transformers model: torch, nnsight")
    from geoprobe.backends.torch_hooks import hf_torch_handle

    return hf_torch_handle(obj, info, tokenizer, dev, dt)
