"""Named training presets: task parameters, model size and optimisation schedule per task.

- ``smoke``: seconds, for tests.
- ``cpu``: minutes on 2 CPU cores; the README's demo and the calibration targets of issue 2.
- ``paper``: the sizes of Paper I (V=20, L=19, 6 layers x 6 heads x d=192 for the bijection;
  HMM K=20 with 9 layers x 8 heads x d=256); meant for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from geoprobe.errors import UnknownNameError
from geoprobe.models.architectures import ModelSize
from geoprobe.models.training import TrainConfig

PRESET_NAMES = ("smoke", "cpu", "paper")


@dataclass(frozen=True)
class Preset:
    """Everything needed to train one wind tunnel reproducibly."""

    name: str
    task_params: dict[str, Any]
    size: ModelSize
    train: TrainConfig
    #: extra task parameters to evaluate length generalisation at (e.g. HMM K=30, 50)
    eval_lengths: tuple[int, ...] = field(default_factory=tuple)


def _bijection(name: str) -> Preset:
    if name == "smoke":
        return Preset(name, {"V": 6, "L": 5}, ModelSize(2, 2, 32, 9),
                      TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5, eval_every=20,
                                  eval_sequences=256))
    if name == "cpu":
        return Preset(name, {"V": 20, "L": 19}, ModelSize(4, 4, 128, 37),
                      TrainConfig(steps=2500, batch_size=64, lr=1e-3, warmup=200, eval_every=250,
                                  eval_sequences=2048))
    return Preset(name, {"V": 20, "L": 19}, ModelSize(6, 6, 192, 37),
                  TrainConfig(steps=50_000, batch_size=128, lr=3e-4, warmup=1000, eval_every=1000,
                              eval_sequences=4096))


def _hmm(name: str) -> Preset:
    # positions up to K=50 so that length generalisation can be evaluated (53 + 2 * 50 tokens)
    if name == "smoke":
        return Preset(name, {"K": 5}, ModelSize(2, 2, 32, 53 + 2 * 8),
                      TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5, eval_every=20,
                                  eval_sequences=256), eval_lengths=(5, 8))
    if name == "cpu":
        return Preset(name, {"K": 20}, ModelSize(4, 4, 128, 153),
                      TrainConfig(steps=4000, batch_size=64, lr=1e-3, warmup=200, eval_every=250,
                                  eval_sequences=2048), eval_lengths=(20, 30, 50))
    return Preset(name, {"K": 20}, ModelSize(9, 8, 256, 153),
                  TrainConfig(steps=50_000, batch_size=128, lr=3e-4, warmup=1000, eval_every=1000,
                              eval_sequences=4096), eval_lengths=(20, 30, 50))


def _recall(name: str) -> Preset:
    if name == "smoke":
        return Preset(name, {"N": 4, "n_keys": 8, "n_values": 8, "fillers": 2, "queries": 2},
                      ModelSize(2, 2, 32, 16), TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5,
                                                           eval_every=20, eval_sequences=256))
    if name == "cpu":
        return Preset(name, {"N": 8, "n_keys": 16, "n_values": 16, "fillers": 8, "queries": 4},
                      ModelSize(4, 4, 128, 36), TrainConfig(steps=2500, batch_size=64, lr=1e-3, warmup=200,
                                                            eval_every=250, eval_sequences=2048))
    return Preset(name, {"N": 8, "n_keys": 16, "n_values": 16, "fillers": 8, "queries": 4},
                  ModelSize(6, 6, 192, 36), TrainConfig(steps=50_000, batch_size=128, lr=3e-4, warmup=1000,
                                                        eval_every=1000, eval_sequences=4096))


def _small_task(task_params: dict[str, Any], smoke_params: dict[str, Any], seq_len: int, smoke_len: int):
    """Presets for the small in-context tasks (sula, coinflip, linreg): bijection-sized models."""

    def build(name: str) -> Preset:
        if name == "smoke":
            return Preset(name, smoke_params, ModelSize(2, 2, 32, smoke_len),
                          TrainConfig(steps=40, batch_size=32, lr=3e-3, warmup=5, eval_every=20,
                                      eval_sequences=256))
        if name == "cpu":
            return Preset(name, task_params, ModelSize(4, 4, 128, seq_len),
                          TrainConfig(steps=2500, batch_size=64, lr=1e-3, warmup=200, eval_every=250,
                                      eval_sequences=2048))
        return Preset(name, task_params, ModelSize(6, 6, 192, seq_len),
                      TrainConfig(steps=50_000, batch_size=128, lr=3e-4, warmup=1000, eval_every=1000,
                                  eval_sequences=4096))

    return build


_BUILDERS = {
    "bijection": _bijection, "hmm": _hmm, "recall": _recall,
    "sula": _small_task({"K": 8}, {"K": 4}, 16, 8),
    "coinflip": _small_task({"n": 16}, {"n": 6}, 17, 7),
    "linreg": _small_task({"d": 2, "K": 12, "n_bins": 32}, {"d": 2, "K": 4, "n_bins": 8}, 24, 8),
    # Paper II's chain is T=2000 (its single-head toy model: geoprobe.gradients.em_vs_sgd); the transformer
    # presets train on shorter chains of the same process
    "sticky": _small_task({"T": 64}, {"T": 16}, 64, 16),
}
#: the parameter that sets the evaluated length, per task (used by length generalisation)
LENGTH_PARAM = {"hmm": "K", "bijection": "L", "sula": "K", "coinflip": "n", "linreg": "K", "recall": "N",
                "sticky": "T"}


def get_preset(task: str, name: str, **train_overrides: Any) -> Preset:
    """The preset ``name`` for ``task``, with optional :class:`TrainConfig` field overrides."""
    if name not in PRESET_NAMES:
        raise UnknownNameError(f"unknown preset {name!r}; valid choices: {', '.join(PRESET_NAMES)}")
    builder = _BUILDERS.get(task)
    if builder is None:
        raise UnknownNameError(
            f"no presets for task {task!r}; tasks with presets: {', '.join(sorted(_BUILDERS))}"
        )
    preset = builder(name)
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    return replace(preset, train=replace(preset.train, **overrides)) if overrides else preset
