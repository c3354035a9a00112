"""``load_model``: one entry point for run folders, HF folders, hub ids and GGUF files, on any backend."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from geoprobe.backends.errors import ModelLoadError, UnsupportedModelError
from geoprobe.backends.handle import ModelHandle
from geoprobe.backends.info import info_from_hf_config
from geoprobe.backends.sources import ResolvedSource, resolve_source
from geoprobe.errors import ConfigError
from geoprobe.logs import quiet_libraries
from geoprobe.registry import Registry

BACKENDS = ("transformer_lens", "nnsight", "torch")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}

#: plain-torch run architectures (LSTM, MLP...): ``arch name -> loader(run_dir, manifest, device, dtype)``
#: returning a :class:`~geoprobe.backends.torch_hooks.TorchHooksHandle` of ``run_dir/model``; a loader with a
#: ``model_dir`` keyword can also load training checkpoints. Registered by ``geoprobe.models``.
TORCH_RUN_LOADERS: Registry[Callable[..., ModelHandle]] = Registry("plain-torch run architecture")


def resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but no CUDA GPU is available; use device='cpu' or 'auto'")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise ModelLoadError(f"unknown device {device!r}; valid choices: auto, cpu, cuda, cuda:N")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype; ``"auto"`` gives None (keep the checkpoint's own dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; valid choices: auto, float32, bfloat16, float16"
                             ) from None


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map: str | None, backend: str) -> None:
    """``device_map`` is None or one of :data:`DEVICE_MAPS`, used with the nnsight/torch backends, and
    ``accelerate`` is installed; else one line saying what to change."""
    if device_map is None:
        return
    if device_map not in DEVICE_MAPS:
        raise ConfigError(f"unknown device map {device_map!r}; valid choices: {', '.join(DEVICE_MAPS)}")
    if backend == "transformer_lens":
        raise ConfigError("--device-map applies to the torch and nnsight backends (TransformerBridge boots the "
                          "model on one device); pass --backend torch")
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ConfigError("--device-map needs the accelerate package: pip install 'accelerate>=0.26'") from None


def check_dtype_device(dtype: torch.dtype | None, device: torch.device) -> None:
    """float16 weights need a GPU: CPU matmul/softmax kernels in half precision are missing or very slow in
    many torch builds, so a CPU float16 run is refused in one line (bfloat16 works on CPU)."""
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("float16 is not supported on CPU; use --dtype bfloat16 or float32 on CPU (float16 "
                          "needs --device cuda)")


def checkpoint_dtype(cfg: Any) -> torch.dtype:
    """The dtype a checkpoint was saved in (``config.dtype``/``torch_dtype``; float32 when it says nothing)."""
    raw = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(raw, torch.dtype):
        return raw
    if isinstance(raw, str) and raw in _DTYPES:
        return _DTYPES[raw]
    return torch.float32


@quiet_libraries()
def load_model(name_or_path: str | os.PathLike | Any, *, backend: str | None = None, revision: str | None = None,
               device: str | torch.device = "auto", dtype: str | torch.dtype | None = None,
               cache_dir: str | Path | None = None, attn_implementation: str | None = None,
               trust_remote_code: bool = False, tokenizer: Any = None, device_map: str | None = None,
               **backend_kwargs: Any) -> ModelHandle:
    """Load a model for probing and return a :class:`ModelHandle`.

    Args:
        name_or_path: a geoprobe run folder, a local HF folder, a ``.gguf`` file, or a hub id; or a model
            object already in memory, used without reloading (:mod:`geoprobe.backends.objects`): a
            ``TransformerBridge``, a ``transformers`` model (with ``tokenizer=``), an nnsight
            ``LanguageModel``/``TransformersModel``, or a :class:`ModelHandle`. Objects keep their device and
            dtype.
        backend: ``transformer_lens`` (default for paths; TransformerBridge, always eager attention),
            ``nnsight`` (keeps the HF attention kernel) or ``torch`` (plain forward hooks on the HF modules).
            Objects default to their own backend (``torch`` for a transformers model).
        revision: hub branch/tag/commit (hub ids only).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda[:N]``.
        dtype: ``float32`` (default), ``bfloat16``, ``float16``, or ``auto`` (the checkpoint's own dtype) for
            the weights; activations handed back are always float32.
        tokenizer: the tokenizer of a ``transformers`` model object (paths load their own).
        cache_dir: where converted GGUF folders live (default ``$GEOPROBE_CACHE_DIR`` or ~/.cache/geoprobe).
        attn_implementation: nnsight/torch backends only: HF attention kernel (default: the model's, usually
            ``sdpa``; patterns switch to ``eager`` for the runs that request them).
        trust_remote_code: let ``transformers`` import and run Python code shipped in the model folder or
            hub repository (custom architectures). Off unless passed explicitly; every ``from_pretrained``
            and the TransformerBridge boot receive exactly this value.
        device_map: nnsight/torch backends only: ``auto`` (or ``balanced``, ``balanced_low_0``,
            ``sequential``) spreads the layers over the visible GPUs and the CPU with accelerate
            (``from_pretrained(device_map=...)``); with no GPU everything lands on the CPU. Inputs go to the
            device of the embedding; the handle records the map (``handle.device_map``).
        **backend_kwargs: passed to ``TransformerBridge.boot_transformers`` (transformer_lens backend only).

    Raises:
        ModelLoadError: (and subclasses ModelNotFoundError, OfflineModelError, GatedModelError,
            UnsupportedModelError) with a one-line message.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        from geoprobe.backends.objects import handle_from_object

        if backend is not None and backend not in BACKENDS:
            raise ModelLoadError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
        return handle_from_object(name_or_path, backend=backend, tokenizer=tokenizer,
                                  device=None if device == "auto" else device, dtype=dtype)
    backend = backend or "transformer_lens"
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
    if not isinstance(trust_remote_code, bool):  # a string such as "no" would otherwise be truthy
        raise ConfigError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    dev = resolve_device(device)
    dt = resolve_dtype("float32" if dtype is None else dtype)
    check_dtype_device(dt, dev)
    check_device_map(device_map, backend)
    src = resolve_source(name_or_path, revision=revision, cache_dir=cache_dir)
    if src.model_dir is None:  # plain-torch run
        arch = (src.manifest or {}).get("arch", "?")
        import geoprobe.models  # noqa: F401  (registers the LSTM/MLP run loaders)

        if arch not in TORCH_RUN_LOADERS:
            known = ", ".join(TORCH_RUN_LOADERS.names()) or "none registered"
            raise UnsupportedModelError(
                f"run {name_or_path} holds a plain-torch {arch!r} model with no backend loader (known: {known}); "
                "register one in geoprobe.backends.TORCH_RUN_LOADERS")
        loader = TORCH_RUN_LOADERS.get(arch)
        model_dir = Path(src.detail["model_folder"])
        if model_dir == Path(src.detail["path"]) / "model":
            handle = loader(Path(src.detail["path"]), src.manifest, dev, dt or torch.float32)
        elif "model_dir" in inspect.signature(loader).parameters:
            handle = loader(Path(src.detail["path"]), src.manifest, dev, dt or torch.float32, model_dir=model_dir)
        else:
            raise UnsupportedModelError(f"the {arch!r} run loader reads only the final model (RUN/model), not "
                                        f"{model_dir}; give it a model_dir parameter")
        handle.info.source_detail.update(src.detail)
        return handle
    from transformers import AutoConfig, AutoTokenizer

    try:
        cfg = AutoConfig.from_pretrained(src.model_dir, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the config in {src.model_dir}: {str(exc).splitlines()[0]}") from None
    info = info_from_hf_config(cfg, src.kind, {"name": str(name_or_path), **src.detail})
    if dt is None:  # --dtype auto: keep the checkpoint's dtype
        dt = checkpoint_dtype(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.model_dir, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"no usable tokenizer in {src.model_dir} ({str(exc).splitlines()[0]}); save one "
                             "beside the model (tokenizer.json)") from None
    if backend == "transformer_lens":
        from geoprobe.backends.bridge import boot_bridge

        return boot_bridge(src, info, tokenizer, dev, dt, trust_remote_code=trust_remote_code, **backend_kwargs)
    if backend_kwargs:
        raise ModelLoadError(f"options {sorted(backend_kwargs)} only apply to the transformer_lens backend")
    hf_model = _load_hf(src, cfg, dev, dt, attn_implementation, trust_remote_code, device_map=device_map)
    if device_map is not None:  # inputs go where the embedding is
        dev = hf_model.get_input_embeddings().weight.device
    if backend == "nnsight":
        from geoprobe.backends.nnsight_backend import NNsightHandle

        handle: ModelHandle = NNsightHandle(hf_model, info, tokenizer, dev, dt, manifest=src.manifest)
    else:
        from geoprobe.backends.torch_hooks import hf_torch_handle

        handle = hf_torch_handle(hf_model, info, tokenizer, dev, dt, manifest=src.manifest)
    handle.device_map = device_map_of(hf_model, device_map)
    return handle


def device_map_of(hf_model: torch.nn.Module, requested: str | None) -> dict[str, Any] | None:
    """What a device map did, for manifests: the request and ``{module: device}`` (accelerate's
    ``hf_device_map``); None when no map was requested."""
    if requested is None:
        return None
    placed = getattr(hf_model, "hf_device_map", None) or {}  # absent when everything fits one device
    devices = {str(v) for v in placed.values()} or {str(p.device) for p in hf_model.parameters()}
    return {"requested": requested, "placement": {str(k): str(v) for k, v in placed.items()},
            "devices": sorted(devices)}


def _load_hf(src: ResolvedSource, cfg: Any, device: torch.device, dtype: torch.dtype,
             attn_implementation: str | None, trust_remote_code: bool = False, device_map: str | None = None
             ) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": bool(trust_remote_code)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(src.model_dir, **kwargs)
    except Exception as exc:
        raise UnsupportedModelError(f"cannot load {src.name} with transformers: {str(exc).splitlines()[0]}"
                                    ) from None
    return model.eval() if device_map is not None else model.to(device).eval()


def load_hf_model(name_or_path: str | os.PathLike, *, revision: str | None = None, device: str = "cpu",
                  dtype: str | torch.dtype = "float32", cache_dir: str | Path | None = None,
                  attn_implementation: str | None = "eager", trust_remote_code: bool = False
                  ) -> tuple[torch.nn.Module, Any]:
    """The plain HF model and tokenizer of any source (for reference computations in tests and notebooks)."""
    from transformers import AutoConfig, AutoTokenizer

    src = resolve_source(name_or_path, revision=revision, cache_dir=cache_dir)
    if src.model_dir is None:
        raise UnsupportedModelError(f"{name_or_path} is not a Hugging Face model")
    cfg = AutoConfig.from_pretrained(src.model_dir, trust_remote_code=trust_remote_code)
    model = _load_hf(src, cfg, resolve_device(device), resolve_dtype(dtype), attn_implementation,
                     trust_remote_code)
    return model, AutoTokenizer.from_pretrained(src.model_dir, trust_remote_code=trust_remote_code)
