"""Wind-tunnel architectures, looked up by name in :data:`ARCHS`.

Every architecture is built for a task (vocabulary, sequence length) and a :class:`ModelSize`, and returns a
``torch.nn.Module`` whose ``forward(tokens)`` gives logits ``[B, T, vocab]`` under the next-token convention.
The transformers are real Hugging Face architectures (GPT-2: learned positions, pre-norm, as in Paper I; or a
rotary Llama without grouped-query attention) so that the TransformerLens bridge that hooks Pythia hooks them
unchanged. Each architecture also knows how to save and strictly reload itself.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from geoprobe.errors import CheckpointError, ConfigError
from geoprobe.registry import Registry


@dataclass(frozen=True)
class ModelSize:
    """Width and depth of a wind-tunnel model.

    Attributes:
        n_layers: number of blocks.
        n_heads: attention heads per block (ignored by attention-free architectures).
        d_model: residual width; d_head = d_model / n_heads.
        d_mlp: MLP hidden width (default 4 d_model).
        max_positions: positions the model supports (>= the longest sequence it will be evaluated on).
    """

    n_layers: int
    n_heads: int
    d_model: int
    max_positions: int
    d_mlp: int | None = None

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.d_model < 1 or self.n_heads < 1:
            raise ConfigError(f"model size needs positive layers/heads/width, got {self}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    @property
    def mlp_width(self) -> int:
        return self.d_mlp or 4 * self.d_model


class Architecture(ABC):
    """Builds, saves and strictly loads one kind of wind-tunnel model."""

    name: str
    #: True when the saved folder is a Hugging Face model folder that TransformerLens can boot.
    is_hf: bool = True

    @abstractmethod
    def build(self, vocab_size: int, size: ModelSize, seed: int, n_features: int = 0) -> torch.nn.Module:
        """A freshly initialised model (deterministic given ``seed``).

        ``n_features > 0`` adds a learned input projection ``Linear(n_features, d_model, bias=False)`` whose
        output is added to the token embeddings (continuous-input tasks; see :func:`embed_with_features`).
        """

    @abstractmethod
    def save(self, model: torch.nn.Module, folder: Path) -> None:
        """Write the model's config and weights to ``folder``."""

    @abstractmethod
    def load(self, folder: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
        """Load a model saved by :meth:`save`, strictly (every tensor present, no extra, shapes equal)."""

    #: keyword arguments every forward call of this architecture's model needs
    forward_kwargs: dict[str, Any] = {}

    def logits(self, model: torch.nn.Module, tokens: torch.Tensor,
               features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]`` for ``tokens`` ``[B, T]`` (and continuous ``features`` ``[B, T, F]``)."""
        if features is None:
            check_features(model, None)
            return model(tokens, **self.forward_kwargs).logits
        return model(inputs_embeds=embed_with_features(model, tokens, features), **self.forward_kwargs).logits


#: name of the input-projection submodule added to models of continuous-input tasks
FEATURE_PROJ = "geoprobe_feature_proj"


def attach_feature_projection(model: torch.nn.Module, n_features: int, d_model: int) -> None:
    """Give ``model`` the input projection of a continuous-input task (no-op for ``n_features == 0``)."""
    if n_features:
        model.add_module(FEATURE_PROJ, torch.nn.Linear(n_features, d_model, bias=False))


def check_features(model: torch.nn.Module, features: torch.Tensor | None) -> None:
    proj = getattr(model, FEATURE_PROJ, None)
    if proj is None and features is not None:
        raise ConfigError("this model has no input projection: it was not built for continuous features")
    if proj is not None and features is None:
        raise ConfigError(f"this model reads {proj.in_features} continuous features per position; pass them")
    if proj is not None and features.shape[-1] != proj.in_features:
        raise ConfigError(f"this model reads {proj.in_features} features per position, got {features.shape[-1]}")


def embed_with_features(model: torch.nn.Module, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Input embeddings of a continuous-input model: ``E[tokens] + W_proj features`` (``[B, T, d_model]``)."""
    check_features(model, features)
    embed = model.get_input_embeddings()
    return embed(tokens) + getattr(model, FEATURE_PROJ)(features.to(embed.weight.dtype))


ARCHS: Registry[Architecture] = Registry("architecture")


def n_params(model: torch.nn.Module) -> int:
    """Number of trainable parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


class _HFArchitecture(Architecture):
    """Shared save/strict-load logic for Hugging Face causal LMs."""

    #: names of the transformers classes (imported lazily)
    hf_model_class: str
    hf_config_class: str

    @property
    def model_cls(self) -> Any:
        import transformers

        return getattr(transformers, self.hf_model_class)

    @property
    def config_cls(self) -> Any:
        import transformers

        return getattr(transformers, self.hf_config_class)

    def _config(self, vocab_size: int, size: ModelSize) -> Any:
        raise NotImplementedError

    def build(self, vocab_size: int, size: ModelSize, seed: int, n_features: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        cfg = self._config(vocab_size, size)
        cfg._attn_implementation = "eager"
        if n_features:
            cfg.geoprobe_n_features = n_features  # saved in config.json; load() re-attaches the projection
        model = self.model_cls(cfg)
        attach_feature_projection(model, n_features, size.d_model)
        return model

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)

    def load(self, folder: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
        from safetensors.torch import load_file

        folder = Path(folder)
        weights = folder / "model.safetensors"
        if not (folder / "config.json").is_file() or not weights.is_file():
            raise CheckpointError(f"{folder} is not a saved model folder (config.json/model.safetensors missing)")
        try:
            cfg = self.config_cls.from_pretrained(folder)
            state = load_file(str(weights))
        except Exception as exc:  # corrupted file
            raise CheckpointError(f"cannot read the model in {folder}: {exc}") from None
        cfg._attn_implementation = "eager"
        model = self.model_cls(cfg)
        attach_feature_projection(model, getattr(cfg, "geoprobe_n_features", 0), cfg.hidden_size)
        expected = model.state_dict()
        tied = {k for k in expected if k not in state and self._is_tied(model, k)}
        missing = sorted(set(expected) - set(state) - tied)
        unexpected = sorted(set(state) - set(expected))
        bad_shape = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
        if missing or unexpected or bad_shape:
            raise CheckpointError(
                f"checkpoint {folder} does not match its config: missing={missing[:5]} "
                f"unexpected={unexpected[:5]} wrong shapes={bad_shape[:5]}"
            )
        model.load_state_dict(state, strict=False)  # tied weights are re-tied by the model itself
        if tied:
            model.tie_weights()
        return model.to(device).eval()

    @staticmethod
    def _is_tied(model: torch.nn.Module, key: str) -> bool:
        out = model.get_output_embeddings()
        return (
            out is not None
            and key.startswith("lm_head")
            and out.weight is model.get_input_embeddings().weight
        )


class GPT2Transformer(_HFArchitecture):
    """GPT-2 (pre-norm, learned absolute positions, GELU MLP): the Paper I wind-tunnel transformer."""

    name = "transformer"
    hf_model_class, hf_config_class = "GPT2LMHeadModel", "GPT2Config"

    def _config(self, vocab_size: int, size: ModelSize) -> Any:
        return self.config_cls(
            vocab_size=vocab_size,
            n_positions=size.max_positions,
            n_embd=size.d_model,
            n_layer=size.n_layers,
            n_head=size.n_heads,
            n_inner=size.mlp_width,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=None,
            eos_token_id=None,
            tie_word_embeddings=False,
        )


class LlamaTransformer(_HFArchitecture):
    """Llama (pre-RMSNorm, rotary positions, SwiGLU MLP, one KV head per query head): a transformer whose
    positions extrapolate, for length-generalisation experiments."""

    name = "transformer-rope"
    hf_model_class, hf_config_class = "LlamaForCausalLM", "LlamaConfig"

    def _config(self, vocab_size: int, size: ModelSize) -> Any:
        return self.config_cls(
            vocab_size=vocab_size,
            hidden_size=size.d_model,
            intermediate_size=size.mlp_width,
            num_hidden_layers=size.n_layers,
            num_attention_heads=size.n_heads,
            num_key_value_heads=size.n_heads,
            max_position_embeddings=size.max_positions,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )


class MambaSSM(_HFArchitecture):
    """Mamba-1 selective state-space model (HF ``MambaForCausalLM``). Attention-free: ``n_heads`` is ignored;
    d_model is the width (state size 16, expansion 2, convolution width 4).

    Scan implementations (the same function): on the CPU, geoprobe's :class:`~geoprobe.models.mamba_scan.
    SelectiveScan` for every forward pass made through :meth:`logits` (training, evaluation; ~2.7x faster
    per training step than ``mambapy``); elsewhere transformers' choice: the fused CUDA kernels of
    ``mamba_ssm`` when installed, else the parallel scan of ``mambapy`` (extra ``geoprobe[mamba-cpu]``;
    ``use_mambapy=True`` is set in the config), else transformers' sequential reference loop.

    Args:
        fast_cpu_scan: False keeps transformers' implementation on the CPU too (benchmark baselines).
    """

    name = "mamba"
    hf_model_class, hf_config_class = "MambaForCausalLM", "MambaConfig"
    forward_kwargs = {"use_cache": False}

    def __init__(self, fast_cpu_scan: bool = True) -> None:
        self.fast_cpu_scan = fast_cpu_scan

    def logits(self, model: torch.nn.Module, tokens: torch.Tensor,
               features: torch.Tensor | None = None) -> torch.Tensor:
        from geoprobe.models.mamba_scan import fast_cpu_scan

        with fast_cpu_scan(self.fast_cpu_scan):
            return super().logits(model, tokens, features)

    def _config(self, vocab_size: int, size: ModelSize) -> Any:
        return self.config_cls(vocab_size=vocab_size, hidden_size=size.d_model, num_hidden_layers=size.n_layers,
                               state_size=16, expand=2, conv_kernel=4, use_cache=False, use_mambapy=True,
                               bos_token_id=None, eos_token_id=None, pad_token_id=None,
                               tie_word_embeddings=False)


ARCHS.register("transformer", GPT2Transformer())
ARCHS.register("transformer-rope", LlamaTransformer())
ARCHS.register("mamba", MambaSSM())


def describe_size(size: ModelSize) -> dict[str, Any]:
    return asdict(size)


def size_from_dict(d: dict[str, Any]) -> ModelSize:
    return ModelSize(**d)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is corrupted: {exc}") from None
