"""Wind-tunnel models: architectures (:data:`ARCHS`), presets, training loop, checkpoints."""

from geoprobe.models import torch_archs as _torch_archs  # noqa: F401  (registers "lstm", "mlp")
from geoprobe.models.architectures import ARCHS, Architecture, ModelSize, n_params
from geoprobe.models.checkpoint import list_checkpoints, load_run, read_manifest
from geoprobe.models.presets import PRESET_NAMES, Preset, get_preset
from geoprobe.models.training import TrainConfig

__all__ = [
    "ARCHS", "Architecture", "ModelSize", "n_params", "load_run", "read_manifest", "list_checkpoints",
    "PRESET_NAMES", "Preset", "get_preset", "TrainConfig",
]
