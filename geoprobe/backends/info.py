"""What a loaded model is: :class:`ModelInfo`, derived from its Hugging Face config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from geoprobe.backends.errors import UnsupportedModelError

Positional = Literal["rotary", "learned", "none"]

#: HF ``model_type`` -> geoprobe family name
FAMILIES: dict[str, str] = {
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "llama": "llama",
    "mistral": "mistral",
    "phi": "phi",
    "qwen2": "qwen2",
    "mamba": "mamba",
}

_LEARNED_POSITIONS = {"gpt2"}
_NO_ATTENTION = {"mamba"}


@dataclass(frozen=True)
class ModelInfo:
    """Shape and provenance of a model, the same for every backend.

    Attributes:
        family: geoprobe family (``gpt2``, ``gpt_neox``, ``llama``, ``mistral``, ``phi``, ``qwen2``,
            ``mamba``, or a plain-torch architecture name such as ``lstm``).
        n_layers: number of blocks.
        n_heads: query heads per layer (0 for attention-free models).
        n_kv_heads: key/value heads per layer (< n_heads under grouped-query attention; query head ``h``
            reads KV head ``h // (n_heads // n_kv_heads)``).
        d_model: residual width.
        d_head: per-head width of q, k, v and z.
        vocab_size: output vocabulary.
        has_attention: False for Mamba/LSTM/MLP.
        positional: ``rotary`` (RoPE inside attention), ``learned`` (absolute table) or ``none``.
        source: where the weights came from (``run``, ``local``, ``hub``, ``gguf``, ``module``) plus path,
            revision and hashes in :attr:`source_detail`.
        rotary_dim: dimensions of each head that RoPE rotates (``d_head * partial_rotary_factor``); 0 if none.
        parallel_block: attention and MLP both read ``resid_pre`` (GPT-NeoX, Phi): no ``resid_mid`` site.
        sliding_window: keys a query may see (query i attends j with ``i - window < j <= i``), else None.
        attn_scale: factor on q.k before the softmax.
        max_positions: context length of the config.
        architecture: the HF class name (``LlamaForCausalLM``...).
    """

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    vocab_size: int
    has_attention: bool
    positional: Positional
    source: str
    rotary_dim: int = 0
    parallel_block: bool = False
    sliding_window: int | None = None
    attn_scale: float = 1.0
    max_positions: int | None = None
    architecture: str = ""
    source_detail: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def kv_group_size(self) -> int:
        """Query heads per KV head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads if self.n_kv_heads else 0

    @property
    def value_dim(self) -> int:
        """Width of the concatenated-heads value space that value operators act on: n_kv_heads * d_head."""
        return self.n_kv_heads * self.d_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _partial_rotary_factor(cfg: Any) -> float:
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("partial_rotary_factor") is not None:
        return float(rope["partial_rotary_factor"])
    return float(_get(cfg, "partial_rotary_factor", "rotary_pct", default=1.0))


def info_from_hf_config(cfg: Any, source: str, source_detail: dict[str, Any] | None = None) -> ModelInfo:
    """Build :class:`ModelInfo` from a ``transformers`` config; unknown families raise a clear error."""
    model_type = getattr(cfg, "model_type", None)
    family = FAMILIES.get(model_type or "")
    if family is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported by geoprobe's backends; supported: "
            f"{', '.join(sorted(FAMILIES))}"
        )
    n_layers = int(_get(cfg, "num_hidden_layers", "n_layer"))
    d_model = int(_get(cfg, "hidden_size", "n_embd", "d_model"))
    vocab = int(cfg.vocab_size)
    archs = getattr(cfg, "architectures", None) or [""]
    if family in _NO_ATTENTION:
        return ModelInfo(family=family, n_layers=n_layers, n_heads=0, n_kv_heads=0, d_model=d_model, d_head=0,
                         vocab_size=vocab, has_attention=False, positional="none", source=source,
                         architecture=archs[0], source_detail=dict(source_detail or {}))
    n_heads = int(_get(cfg, "num_attention_heads", "n_head"))
    n_kv = int(_get(cfg, "num_key_value_heads", default=n_heads))
    d_head = int(_get(cfg, "head_dim", default=d_model // n_heads))
    positional: Positional = "learned" if family in _LEARNED_POSITIONS else "rotary"
    rotary_dim = int(d_head * _partial_rotary_factor(cfg)) if positional == "rotary" else 0
    scale = d_head ** -0.5
    if family == "gpt2":
        if not getattr(cfg, "scale_attn_weights", True):
            scale = 1.0
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            raise UnsupportedModelError("GPT-2 with scale_attn_by_inverse_layer_idx (per-layer scale) is not "
                                        "supported")
    parallel = family == "phi" or (family == "gpt_neox" and bool(getattr(cfg, "use_parallel_residual", True)))
    window = getattr(cfg, "sliding_window", None) if family in ("mistral", "qwen2") else None
    if family == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        window = None
    return ModelInfo(
        family=family, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, d_model=d_model, d_head=d_head,
        vocab_size=vocab, has_attention=True, positional=positional, source=source, rotary_dim=rotary_dim,
        parallel_block=parallel, sliding_window=int(window) if window else None, attn_scale=scale,
        max_positions=_get(cfg, "max_position_embeddings", "n_positions"),
        architecture=archs[0], source_detail=dict(source_detail or {}),
    )
