"""Paper II on a trained wind tunnel: the routing law checked on the model's own attention heads, the
first-order loss change of a value step, and the EM-like optimiser schedule.

Routing law (see :mod:`geoprobe.gradients.routing`): for each head, with the model's real scores s, values v
and the real upstream gradient u = dL/do of its training loss,

    dL/ds_ij = a_ij (u_i . v_j - sum_k a_ik u_i . v_k)      and      dL/dv_j = sum_i a_ij u_i.

:func:`routing_check` recomputes each GPT-2 attention layer from its input (in float64, checked against the
layer's own output), backpropagates the task's readout loss, and compares autograd's dL/ds and dL/dv with the
formulas: the known answer is agreement to rounding (~1e-12 relative).

Value step: moving the values of one layer by Delta v = -lr dL/dv changes the loss by
-lr ||dL/dv||^2 to first order, so actual / predicted -> 1 as lr -> 0 (:func:`value_step_check`).

EM-like schedule: the same model trained from the same initialisation and batches with the value parameters'
learning rate multiplied by m (:func:`em_schedule_curves`; m = 1 is ordinary training).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from geoprobe.errors import ConfigError
from geoprobe.gradients.routing import first_order_loss_change, routing_gradient, value_gradient
from geoprobe.results import ResultRow

logger = logging.getLogger("geoprobe")

#: the table (in ``Report.tables``) with a sample of (autograd, routing-law) score-gradient pairs
ROUTING_SAMPLE_TABLE = "routing_law_sample"  # = geoprobe.plots.ROUTING_TABLE


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None or not all(hasattr(b.attn, "c_attn") for b in blocks):
        raise ConfigError(f"the routing-law check needs a GPT-2 style attention model (the wind-tunnel "
                          f"'transformer' architecture); this run holds {type(model).__name__}")
    return [b.attn for b in blocks]


class _Recorder:
    """Forward hook recomputing a GPT-2 attention layer from its input, keeping s, v and o in the graph."""

    def __init__(self, attn: torch.nn.Module, delta_v: torch.Tensor | None = None) -> None:
        self.attn, self.delta_v = attn, delta_v
        self.scores = self.values = self.out = None
        self.max_abs_diff = math.nan

    def __call__(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        h = args[0] if args else kwargs["hidden_states"]
        a = self.attn
        q, k, v = a.c_attn(h).split(a.split_size, dim=2)
        B, T, _ = q.shape
        q, k, v = (x.view(B, T, -1, a.head_dim).transpose(1, 2) for x in (q, k, v))  # [B, H, T, dh]
        if self.delta_v is not None:
            v = v + self.delta_v
        s = (q @ k.transpose(-1, -2)) * a.scaling
        causal = torch.ones(T, T, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~causal, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v
        if o.requires_grad:
            for t in (s, v, o):
                t.retain_grad()
        out = a.c_proj(o.transpose(1, 2).reshape(B, T, -1))
        self.scores, self.values, self.out = s, v, o
        self.max_abs_diff = float((out - output[0]).detach().abs().max())
        return (out,) + tuple(output[1:])


@contextlib.contextmanager
def _recording(model: torch.nn.Module, deltas: dict[int, torch.Tensor] | None = None) -> Iterator[list[_Recorder]]:
    recs = [_Recorder(attn, (deltas or {}).get(i)) for i, attn in enumerate(_attention_modules(model))]
    handles = [attn.register_forward_hook(r, with_kwargs=True) for attn, r in
               zip(_attention_modules(model), recs, strict=True)]
    try:
        yield recs
    finally:
        for hnd in handles:
            hnd.remove()


def _loss(model: torch.nn.Module, arch: Any, batch: Any, target: str) -> torch.Tensor:
    """The training objective of :func:`geoprobe.models.training.readout_loss` (cross-entropy over the readout
    slice at supervised positions, nats), evaluated in float64 so that tiny loss changes are resolved."""
    logits = arch.logits(model, batch.tokens, batch.features).double()
    log_q = torch.log_softmax(logits[..., batch.readout_ids], dim=-1)[batch.loss_mask]
    if target == "soft":
        return -(batch.target_probs[batch.loss_mask].double() * log_q).sum(-1).mean()
    return torch.nn.functional.nll_loss(log_q, batch.labels[batch.loss_mask])


def routing_check(model: torch.nn.Module, arch: Any, batch: Any, target: str, *, sample: int = 2000,
                  seed: int = 0) -> tuple[list[ResultRow], pd.DataFrame, list[_Recorder]]:
    """Per head: max |autograd - formula| of dL/ds and dL/dv relative to max |autograd| (rows
    ``routing_law``), plus a random sample of (autograd, formula) dL/ds pairs at unmasked entries."""
    model = model.double().eval()
    with _recording(model) as recs:
        loss = _loss(model, arch, batch, target)
        loss.backward()
    rows, pairs = [], []
    g = torch.Generator().manual_seed(seed)
    for layer, r in enumerate(recs):
        s, v, u = r.scores.detach(), r.values.detach(), r.out.grad
        gs_law, gv_law = routing_gradient(s, v, u), value_gradient(s, u)
        gs, gv = r.scores.grad, r.values.grad
        live = torch.isfinite(s)
        for head in range(s.shape[1]):
            for stat, law, auto in (("scores", gs_law[:, head], gs[:, head]),
                                    ("values", gv_law[:, head], gv[:, head])):
                scale = float(auto.abs().max())
                err = float((law - auto).abs().max())
                rows.append(ResultRow("routing_law", f"relative_error_{stat}", err / scale if scale > 0 else err,
                                      layer=layer, head=head,
                                      meta={"max_abs_error": err, "max_abs_gradient": scale,
                                            "recompute_max_abs_diff": r.max_abs_diff, "loss": loss.item()}))
        a_vals, l_vals = gs[live], gs_law[live]
        idx = torch.randperm(a_vals.numel(), generator=g)[: max(1, sample // len(recs))]
        pairs.append(pd.DataFrame({"layer": layer, "autograd": a_vals[idx].double().numpy(),
                                   "routing_law": l_vals[idx].double().numpy()}))
    return rows, pd.concat(pairs, ignore_index=True), recs


def value_step_check(model: torch.nn.Module, arch: Any, batch: Any, target: str, layer: int,
                     lrs: tuple[float, ...] = (1.0, 1e-1, 1e-2, 1e-3)) -> list[ResultRow]:
    """Loss change of the value step Delta v = -lr dL/dv at ``layer``: actual vs the first-order prediction
    -lr ||dL/dv||^2 (rows ``value_step``: statistic ``actual_over_predicted``, meta lr/actual/predicted)."""
    model = model.double().eval()
    with _recording(model) as recs:
        base = _loss(model, arch, batch, target)
        base.backward()
    r = recs[layer]
    s, u = r.scores.detach(), r.out.grad
    rows = []
    for lr in lrs:
        predicted = float(first_order_loss_change(s, u, lr).sum())
        delta = -lr * value_gradient(s, u)
        with torch.no_grad(), _recording(model, {layer: delta}):
            after = _loss(model, arch, batch, target)
        actual = float(after - base.detach())
        rows.append(ResultRow("value_step", "actual_over_predicted", actual / predicted if predicted else math.nan,
                              layer=layer, meta={"lr": lr, "actual": actual, "predicted": predicted}))
    return rows


def em_schedule_curves(task: Any, arch_name: str, size: Any, train_cfg: Any, *, multipliers=(1.0, 10.0),
                       steps: int = 100, seed: int = 0, eval_every: int = 10) -> list[ResultRow]:
    """Train the same model (same initialisation, same batches) with value learning rates lr * m for each
    ``m`` in ``multipliers``; rows ``em_schedule`` with statistic ``loss`` (training loss, nats) and
    ``entropy_mae_bits`` (held-out, every ``eval_every`` steps), meta step and multiplier."""
    from geoprobe.gradients.routing import em_param_groups
    from geoprobe.models import ARCHS
    from geoprobe.models.evaluate import evaluate_model
    from geoprobe.models.training import readout_loss
    from geoprobe.tasks import make_generator

    arch = ARCHS.get(arch_name)
    target = train_cfg.target or task.default_target
    rows = []
    for m in multipliers:
        model = arch.build(task.vocab_size, size, seed, n_features=task.n_features)
        split_value_weights(model)
        groups = em_param_groups(model, _is_value_param, train_cfg.lr, value_lr_multiplier=m)
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.0)
        gen = make_generator(seed, "train")
        model.train()
        for step in range(1, steps + 1):
            batch = task.sample(train_cfg.batch_size, gen)
            loss = readout_loss(arch.logits(model, batch.tokens, batch.features).float(), batch, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            opt.step()
            rows.append(ResultRow("em_schedule", "loss", loss.item(), variant=f"value lr x{m:g}",
                                  meta={"step": step, "multiplier": m}))
            if step % eval_every == 0 or step == steps:
                res = evaluate_model(model, arch, task, n_sequences=256, seed=seed, device="cpu")
                model.train()
                rows.append(ResultRow("em_schedule", "entropy_mae_bits", res.entropy_mae_bits,
                                      variant=f"value lr x{m:g}", meta={"step": step, "multiplier": m}))
    return rows


class _ValueColumns(torch.nn.Module):
    """Parametrisation of GPT-2's fused ``c_attn`` weight [d, 3d] whose value columns [:, 2d:] are their own
    parameter (``...parametrizations.weight.0.value``), so an optimiser can give W_V its own learning rate."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.d = weight.shape[1] // 3
        self.value = torch.nn.Parameter(weight[:, 2 * self.d:].detach().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.cat([weight[:, : 2 * self.d], self.value], dim=1)


def split_value_weights(model: torch.nn.Module) -> None:
    """Give every attention layer's W_V its own parameter (see :class:`_ValueColumns`); the fused weight's
    value columns are no longer used (they receive zero gradient)."""
    from torch.nn.utils import parametrize

    for attn in _attention_modules(model):
        parametrize.register_parametrization(attn.c_attn, "weight", _ValueColumns(attn.c_attn.weight),
                                             unsafe=True)


def _is_value_param(name: str, param: torch.nn.Parameter) -> bool:
    return name.endswith("parametrizations.weight.0.value")


def gradients_report(run_dir: str | Path, *, n: int = 64, seed: int = 0, em_steps: int = 100,
                     multipliers: tuple[float, ...] = (1.0, 10.0),
                     lrs: tuple[float, ...] = (1.0, 1e-1, 1e-2, 1e-3)):
    """Paper II readings of a wind-tunnel run folder as a Report (routing law per head, value step, EM-like
    schedule)."""
    from geoprobe.models import ARCHS
    from geoprobe.models.checkpoint import load_run, versions
    from geoprobe.models.presets import get_preset
    from geoprobe.plots import probe_figures
    from geoprobe.report import Report
    from geoprobe.results import rows_to_frame
    from geoprobe.tasks import make_generator

    if n < 1:
        raise ConfigError(f"--n must be >= 1 test sequences, got {n}")
    if em_steps < 0:
        raise ConfigError(f"--em-steps must be >= 0 (0 skips the schedule comparison), got {em_steps}")
    if not multipliers or any(not m > 0 for m in multipliers):
        raise ConfigError(f"value learning-rate multipliers must be > 0, got {list(multipliers)}")
    model, task, manifest = load_run(run_dir, device="cpu")
    arch = ARCHS.get(manifest["arch"])
    _attention_modules(model)  # fail early for attention-free runs
    batch = task.sample(n, make_generator(seed, "test"))
    target = (manifest.get("train") or {}).get("target") or task.default_target
    logger.info("routing-law check on %s (%d sequences)", run_dir, n)
    rows, sample, _ = routing_check(model, arch, batch, target, seed=seed)
    L = len(_attention_modules(model))
    rows += value_step_check(model, arch, batch, target, layer=L - 1, lrs=lrs)
    preset = get_preset(task.name, manifest.get("preset") or "smoke")
    from dataclasses import replace

    from geoprobe.models.architectures import ModelSize

    size = ModelSize(**manifest["size"]) if isinstance(manifest.get("size"), dict) else preset.size
    train_cfg = replace(preset.train, **{k: v for k, v in (manifest.get("train") or {}).items()
                                         if k in ("lr", "batch_size", "grad_clip", "target")})
    if em_steps > 0:
        logger.info("EM-like schedule: %d steps x %d multipliers", em_steps, len(multipliers))
        rows += em_schedule_curves(task, manifest["arch"], size, train_cfg, multipliers=multipliers,
                                   steps=em_steps, seed=seed, eval_every=max(1, em_steps // 10))
    frame = rows_to_frame(rows, include_meta=True)
    tables = {ROUTING_SAMPLE_TABLE: sample}
    summary = gradients_summary(frame)
    return Report(title=f"geoprobe gradients (Paper II): {Path(run_dir).name}", rows=frame, summary=summary,
                  figures=probe_figures(frame, tables), tables=tables,
                  manifest={"run": str(run_dir), "task": {"name": task.name, "config": task.config()},
                            "arch": manifest["arch"], "n_sequences": n, "seed": seed, "em_steps": em_steps,
                            "multipliers": list(multipliers), "value_step_lrs": list(lrs), "dtype": "float64",
                            "versions": versions()})


def gradients_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers: worst relative error of the routing law and value gradient over heads, the value step's
    actual/predicted loss change at each lr, and each schedule's final held-out MAE."""
    out: dict[str, Any] = {}
    rl = frame[frame["probe"] == "routing_law"]
    if len(rl):
        worst_s = float(rl[rl["statistic"] == "relative_error_scores"]["value"].max())
        worst_v = float(rl[rl["statistic"] == "relative_error_values"]["value"].max())
        out["routing_law"] = {"heads": int(len(rl) // 2), "max_relative_error_scores": worst_s,
                              "max_relative_error_values": worst_v,
                              "holds": bool(max(worst_s, worst_v) < 1e-8),
                              "paper_claim": "Paper II: dL/ds_ij = a_ij (b_ij - E_a[b]), dL/dv_j = sum_i a_ij u_i"}
    vs = frame[frame["probe"] == "value_step"]
    if len(vs):
        out["value_step"] = {"layer": int(vs["layer"].iloc[0])}
        for m, v in zip(vs["meta"], vs["value"], strict=True):
            out["value_step"][f"actual_over_predicted (lr={m['lr']:g})"] = float(v)
        out["value_step"]["paper_claim"] = ("Paper II: a value step lowers the loss by lr ||dL/dv||^2 to first "
                                            "order (the ratio tends to 1 as lr shrinks, until float64 rounding)")
    em = frame[(frame["probe"] == "em_schedule") & (frame["statistic"] == "entropy_mae_bits")]
    if len(em):
        out["em_schedule"] = {f"final_entropy_mae_bits ({variant})": float(g["value"].iloc[-1])
                              for variant, g in em.groupby("variant", sort=False)}
        out["em_schedule"]["steps"] = int(max(m["step"] for m in em["meta"]))
        out["em_schedule"]["paper_claim"] = "Paper II: EM-like schedules (faster value learning) calibrate faster"
    return out
