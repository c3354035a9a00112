"""The EM-like two-timescale schedule for wind-tunnel training: value parameters at lr x M (``--value-lr-mult``).

Which parameters are "values" depends on the architecture:

- ``transformer-rope`` (Llama): every attention layer's ``v_proj.weight`` is its own tensor; the optimiser gets
  the parameter groups of :func:`geoprobe.gradients.routing.em_param_groups` (value group at lr x M), each split
  into matrices (weight decay) and vectors (none) as in :func:`geoprobe.models.training.make_optimizer`;
- ``transformer`` (GPT-2): W_V lives inside the fused ``c_attn`` weight ``[d, 3d]`` (columns ``2d:``) and bias
  (entries ``2d:``). A fused tensor has one learning rate, so the value slice's step is scaled after the
  optimiser's step instead: p_V <- p_V,before + M (p_V,after - p_V,before). For SGD, Adam and AdamW (decoupled
  weight decay included) the step is linear in lr given the optimiser state, and the state's update does not
  depend on lr, so this is exactly training the slice at lr x M;
- attention-free architectures (``mamba``, ``lstm``, ``mlp``) have no value parameters: refused.

M = 1 is ordinary training (no hooks, the usual two groups).
"""

from __future__ import annotations

from typing import Any

import torch

from geoprobe.errors import ConfigError

#: architectures with identifiable attention value parameters
VALUE_ARCHS = ("transformer", "transformer-rope")


def check_value_lr(arch_name: str, multiplier: float) -> None:
    """One line when ``multiplier != 1`` is asked of an architecture without value parameters."""
    if multiplier != 1.0 and arch_name not in VALUE_ARCHS:
        raise ConfigError(f"--value-lr-mult needs attention value parameters; architecture {arch_name!r} has none "
                          f"(valid choices: {', '.join(VALUE_ARCHS)})")


def is_llama_value(name: str, param: torch.nn.Parameter) -> bool:
    """Llama value projections (the predicate for ``em_param_groups``)."""
    return name.endswith("self_attn.v_proj.weight")


def gpt2_value_slices(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, tuple[Any, ...]]]:
    """(parameter, index) of every GPT-2 value slice: ``c_attn.weight[:, 2d:]`` and ``c_attn.bias[2d:]``."""
    out = []
    for name, module in model.named_modules():
        if name.endswith("attn.c_attn"):
            d = module.weight.shape[1] // 3
            out.append((module.weight, (slice(None), slice(2 * d, 3 * d))))
            if module.bias is not None:
                out.append((module.bias, (slice(2 * d, 3 * d),)))
    if not out:
        raise ConfigError("this model has no GPT-2 c_attn layers: its value parameters cannot be found")
    return out


class SliceStepScaler:
    """Optimiser step hooks scaling the step of parameter slices by ``multiplier`` (see the module docstring)."""

    def __init__(self, slices: list[tuple[torch.nn.Parameter, tuple[Any, ...]]], multiplier: float) -> None:
        self.slices, self.multiplier = slices, float(multiplier)
        self._before: list[torch.Tensor] = []

    def pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._before = [p.detach()[idx].clone() for p, idx in self.slices]

    @torch.no_grad()
    def post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for (p, idx), before in zip(self.slices, self._before, strict=True):
            p[idx] = before + self.multiplier * (p[idx] - before)
        self._before = []

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        optimizer.register_step_pre_hook(self.pre)
        optimizer.register_step_post_hook(self.post)
        optimizer.geoprobe_value_scaler = self  # keeps the hooks' owner alive with the optimiser
        return optimizer


def split_by_decay(groups: list[dict], weight_decay: float) -> list[dict]:
    """Each group split into matrices (``weight_decay``) and vectors (no decay), empty parts dropped."""
    out = []
    for g in groups:
        for decay in (True, False):
            params = [p for p in g["params"] if (p.ndim >= 2) == decay]
            if params:
                out.append({**g, "params": params, "weight_decay": weight_decay if decay else 0.0,
                            "name": f"{g.get('name', 'group')}/{'decay' if decay else 'no_decay'}"})
    return out


def value_lr_optimizer(model: torch.nn.Module, arch_name: str, lr: float, weight_decay: float, multiplier: float,
                       betas: tuple[float, float] = (0.9, 0.98)) -> torch.optim.Optimizer:
    """AdamW with the value parameters of ``arch_name`` at lr x ``multiplier`` (M != 1)."""
    from geoprobe.gradients.routing import em_param_groups

    check_value_lr(arch_name, multiplier)
    if arch_name == "transformer-rope":
        groups = split_by_decay(em_param_groups(model, is_llama_value, lr, multiplier), weight_decay)
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    plain = split_by_decay([{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr,
                             "name": "all"}], weight_decay)
    return SliceStepScaler(gpt2_value_slices(model), multiplier).attach(torch.optim.AdamW(plain, lr=lr, betas=betas))
