"""Model + batch + sites -> activations, behind one API for every backend.

``load_model(name_or_path, backend=...)`` returns a :class:`ModelHandle`; ``handle.run(tokens, mask,
sites=[...], layers=..., reducer=...)`` collects canonical sites (names and shapes:
:mod:`geoprobe.backends.sites`); interventions are context managers on the handle
(:mod:`geoprobe.backends.interventions`). Backends: ``transformer_lens`` (TransformerBridge, default),
``nnsight``, ``torch`` (plain forward hooks; also the way LSTM/MLP wind tunnels plug in).
"""

from geoprobe.backends.attention import (
    apply_rotary,
    attention_entropy,
    attention_out,
    attention_pattern,
    attention_z,
    expand_kv,
    final_row_attention,
)
from geoprobe.backends.errors import (
    GatedModelError,
    ModelLoadError,
    ModelNotFoundError,
    OfflineModelError,
    SiteError,
    UnsupportedModelError,
)
from geoprobe.backends.handle import Edit, ModelHandle
from geoprobe.backends.info import ModelInfo
from geoprobe.backends.interventions import head_means, keep_only, project_out, shift
from geoprobe.backends.layout import AttentionWeights
from geoprobe.backends.loading import BACKENDS, TORCH_RUN_LOADERS, load_hf_model, load_model
from geoprobe.backends.sites import (
    EDITABLE_SITES,
    SITES,
    Activations,
    SiteActivation,
    final_token_index,
    pad_sequences,
    position_ids_from_mask,
)

__all__ = [
    "load_model", "load_hf_model", "ModelHandle", "ModelInfo", "Activations", "SiteActivation", "Edit",
    "AttentionWeights", "SITES", "EDITABLE_SITES", "BACKENDS", "TORCH_RUN_LOADERS",
    "final_token_index", "position_ids_from_mask", "pad_sequences",
    "apply_rotary", "expand_kv", "attention_pattern", "attention_z", "attention_out", "attention_entropy",
    "final_row_attention", "head_means", "project_out", "keep_only", "shift",
    "ModelLoadError", "ModelNotFoundError", "OfflineModelError", "GatedModelError", "UnsupportedModelError",
    "SiteError",
]
