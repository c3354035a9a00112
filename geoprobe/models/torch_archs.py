"""Plain-PyTorch wind-tunnel architectures: an LSTM language model and the parameter-matched MLP control.

Both are residual stacks of blocks (``x_{l+1} = x_l + f_l(x_l)``), so the canonical sites ``resid_pre`` (a block's
input) and ``resid_post`` (its output) exist for probes through plain forward hooks
(:class:`geoprobe.backends.torch_hooks.TorchHooksHandle`, registered in ``TORCH_RUN_LOADERS``).

- ``lstm``: token embedding (no positions: the recurrence carries order), ``n_layers`` residual blocks
  ``x + LSTM(LN(x))`` of width d_model, final LayerNorm, linear readout.
- ``mlp``: token + learned position embedding, ``n_layers`` residual blocks ``x + W2 gelu(W1 LN(x) + b1) + b2``
  applied to every position independently (nothing mixes positions, so it cannot route evidence), final
  LayerNorm, linear readout. Its hidden width h is solved so that the parameter count matches the
  ``transformer`` architecture at the same size and vocabulary (within 5%; exact up to rounding of h).

Saved as ``geoprobe_config.json`` + ``model.safetensors`` (the name keeps HF tooling from mistaking the folder for
a Hugging Face model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geoprobe.errors import CheckpointError
from geoprobe.models.architectures import (
    ARCHS,
    Architecture,
    ModelSize,
    attach_feature_projection,
    check_features,
    embed_with_features,
    n_params,
)

CONFIG_FILE = "geoprobe_config.json"
WEIGHTS_FILE = "model.safetensors"


class LSTMBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.lstm = nn.LSTM(d, d, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lstm(self.norm(x))[0]


class MLPBlock(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


class ResidualStackLM(nn.Module):
    """Embedding (+ optional learned positions) -> residual blocks -> LayerNorm -> readout."""

    def __init__(self, kind: str, vocab_size: int, d_model: int, n_layers: int, max_positions: int,
                 hidden: int = 0, n_features: int = 0) -> None:
        super().__init__()
        self.config_dict = {"kind": kind, "vocab_size": vocab_size, "d_model": d_model, "n_layers": n_layers,
                            "max_positions": max_positions, "hidden": hidden}
        if n_features:
            self.config_dict["n_features"] = n_features
        self.embed = nn.Embedding(vocab_size, d_model)
        attach_feature_projection(self, n_features, d_model)
        self.pos = nn.Embedding(max_positions, d_model) if kind == "mlp" else None
        if kind == "lstm":
            self.blocks = nn.ModuleList(LSTMBlock(d_model) for _ in range(n_layers))
        else:
            self.blocks = nn.ModuleList(MLPBlock(d_model, hidden) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(tokens) if features is None else embed_with_features(self, tokens, features)
        if self.pos is not None:
            x = x + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class _TorchArchitecture(Architecture):
    is_hf = False
    kind: str

    def _hidden(self, vocab_size: int, size: ModelSize) -> int:
        return 0

    def build(self, vocab_size: int, size: ModelSize, seed: int, n_features: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return ResidualStackLM(self.kind, vocab_size, size.d_model, size.n_layers, size.max_positions,
                               self._hidden(vocab_size, size), n_features)

    def save(self, model: nn.Module, folder: Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(model.config_dict, indent=2))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))

    def load(self, folder: Path, device: str | torch.device = "cpu") -> nn.Module:
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            cfg = json.loads((folder / CONFIG_FILE).read_text())
            state = load_file(str(folder / WEIGHTS_FILE))
        except FileNotFoundError as exc:
            raise CheckpointError(f"{folder} is not a saved {self.name} model ({exc.filename} missing)") from None
        except Exception as exc:
            raise CheckpointError(f"cannot read the model in {folder}: {exc}") from None
        if cfg.get("kind") != self.kind:
            raise CheckpointError(f"{folder} holds a {cfg.get('kind')!r} model, not {self.kind!r}")
        model = ResidualStackLM(**cfg)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        bad = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
        if missing or unexpected or bad:
            raise CheckpointError(f"checkpoint {folder} does not match its config: missing={missing[:5]} "
                                  f"unexpected={unexpected[:5]} wrong shapes={bad[:5]}")
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()

    def logits(self, model: nn.Module, tokens: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if features is None:
            check_features(model, None)
        return model(tokens, features=features)


class LSTMArchitecture(_TorchArchitecture):
    """LSTM language model (accumulation by recurrence; no content-based routing)."""

    name = kind = "lstm"


class MLPArchitecture(_TorchArchitecture):
    """Per-position residual MLP control, parameter-matched to the transformer (cannot route across positions)."""

    name = kind = "mlp"

    def _hidden(self, vocab_size: int, size: ModelSize) -> int:
        target = n_params(ARCHS.get("transformer").build(vocab_size, size, seed=0))
        d, L = size.d_model, size.n_layers
        fixed = vocab_size * d + size.max_positions * d + 2 * d + d * vocab_size  # embeddings, final LN, head
        # each block: LN (2d) + fc1 (d h + h) + fc2 (h d + d)  =  h (2d + 1) + 3d
        return max(1, round(((target - fixed) / L - 3 * d) / (2 * d + 1)))


ARCHS.register("lstm", LSTMArchitecture())
ARCHS.register("mlp", MLPArchitecture())


def torch_run_handle(run_dir: Path, manifest: dict[str, Any], device: torch.device, dtype: torch.dtype,
                     model_dir: Path | None = None):
    """Load an LSTM/MLP run folder (its final model, or the checkpoint folder ``model_dir``) as a
    :class:`TorchHooksHandle` with ``resid_pre``/``resid_post`` sites."""
    from geoprobe.backends.info import ModelInfo
    from geoprobe.backends.torch_hooks import TorchHooksHandle

    arch = ARCHS.get(manifest["arch"])
    model = arch.load(Path(run_dir) / "model" if model_dir is None else Path(model_dir), device=device).to(dtype)
    cfg = model.config_dict
    info = ModelInfo(family=cfg["kind"], n_layers=cfg["n_layers"], n_heads=0, n_kv_heads=0,
                     d_model=cfg["d_model"], d_head=0, vocab_size=cfg["vocab_size"], has_attention=False,
                     positional="learned" if cfg["kind"] == "mlp" else "none", source="run",
                     max_positions=cfg["max_positions"], architecture=type(model).__name__,
                     source_detail={"path": str(run_dir)})
    sites = {"resid_pre": lambda layer: (model.blocks[layer], "input"),
             "resid_post": lambda layer: (model.blocks[layer], "output")}
    return TorchHooksHandle(model, info, sites=sites, forward=lambda m, toks, mask: m(toks),
                            block=lambda layer: model.blocks[layer], device=device, dtype=dtype,
                            manifest=manifest)


def _register_loaders() -> None:
    from geoprobe.backends.loading import TORCH_RUN_LOADERS

    for name in ("lstm", "mlp"):
        if name not in TORCH_RUN_LOADERS:
            TORCH_RUN_LOADERS.register(name, torch_run_handle)


_register_loaders()
