"""The routing law measured during training: does each optimisation step move scores and values the way the
law says?

On the toy head (:mod:`geoprobe.gradients.toy_model`) trained on a sticky chain, at log-spaced training steps t
the head's real scores s, values v and upstream gradients u = dL/do give the law's gradients

    dL/ds_ij = a_ij (b_ij - E_{a_i}[b]),  b_ij = u_i . v_j         (advantage-weighted attention update)
    g_j = dL/dv_j = sum_i a_ij u_i                                  (responsibility-weighted errors)

(:func:`geoprobe.gradients.routing.routing_gradient` / ``value_gradient``). The step t -> t + 1 that the
optimiser actually takes (plain SGD, value lr eta_V = lr x M, query/key lr eta) is compared with:

- ``score_update_vs_law``: the law's first-order score change, pushed through the parameters: dL/dq_i =
  sum_j dL/ds_ij k_j / sqrt(d_k), dL/dk_j = sum_i dL/ds_ij q_i / sqrt(d_k), Delta W_Q = -eta X^T dL/dq (same for
  W_K), Delta s_ij ~= (x_i Delta W_Q) . k_j / sqrt(d_k) + q_i . (x_j Delta W_K) / sqrt(d_k);
- ``score_update_vs_advantage``: -dL/ds itself (the direction Paper II says the scores move in, ignoring how the
  parameters couple the entries);
- ``value_update_vs_law``: Delta v = X Delta W_V = -eta_V X X^T g (exact for SGD: v is linear in W_V);
- ``value_update_vs_errors``: -g (values move toward the responsibility-weighted errors).

Each is the cosine between the actual and the predicted update over every live entry (score changes centred per
query row over its causal band first, since a constant shift of a row leaves the attention unchanged), with
``relative_error`` = ||actual - predicted|| / ||predicted|| for the two "law" predictions. Null (variant
``shuffled``): the same cosine after a random permutation of the predicted entries (expected 0 +- 1/sqrt(n)).

Known answers: with plain SGD and lr -> 0 the "law" cosines tend to 1 and their relative errors to 0
(O(lr) for scores, rounding for values); the shuffled cosines are ~0.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from geoprobe.gradients.routing import em_param_groups, routing_gradient, value_gradient
from geoprobe.gradients.toy_model import SingleHeadAttention, band_mask, is_value_param
from geoprobe.results import ResultRow

STATISTICS = ("score_update_vs_law", "score_update_vs_advantage", "value_update_vs_law", "value_update_vs_errors")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else math.nan


def _centre_rows(ds: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """Subtract each query row's mean over its live entries (zeros elsewhere)."""
    ds = torch.where(live, ds, torch.zeros_like(ds))
    return torch.where(live, ds - ds.sum(-1, keepdim=True) / live.sum(-1, keepdim=True), torch.zeros_like(ds))


def measure_step(model: SingleHeadAttention, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 *, generator: torch.Generator) -> dict[str, float]:
    """Take one SGD step of ``opt`` on replica 0 of ``model`` (the loss of :func:`per_seed_loss` on ``x``, ``y``)
    and return the cosines and relative errors described in the module docstring (keys ``<stat>`` and
    ``<stat>/shuffled``, ``score_update_vs_law/relative_error``, ``value_update_vs_law/relative_error``)."""
    from geoprobe.gradients.em_vs_sgd import per_seed_loss

    lrs = {}
    for group in opt.param_groups:
        for p in group["params"]:
            lrs[id(p)] = group["lr"]
    eta_q, eta_k, eta_v = (lrs[id(getattr(model, n))] for n in ("W_Q", "W_K", "W_V"))
    parts = model.parts(x, dense=True)
    parts.out.retain_grad()
    loss = per_seed_loss(parts.logits, y).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        xx = x.to(model.W_Q.dtype)
        xx = xx.expand(model.n_replicas, *xx.shape) if xx.dim() == 2 else xx
        scale = 1.0 / math.sqrt(model.sizes.d_k)
        s, v, u = parts.scores.detach(), parts.values.detach(), parts.out.grad.detach()
        q, k = xx @ model.W_Q, xx @ model.W_K
        gs = routing_gradient(s, v, u)  # dL/ds
        gv = value_gradient(s, u)  # responsibility-weighted errors
        dWq = -eta_q * xx.transpose(-1, -2) @ ((gs @ k) * scale)
        dWk = -eta_k * xx.transpose(-1, -2) @ ((gs.transpose(-1, -2) @ q) * scale)
        dWv = -eta_v * xx.transpose(-1, -2) @ gv
        ds_law = ((xx @ dWq) @ k.transpose(-1, -2) + q @ (xx @ dWk).transpose(-1, -2)) * scale
        dv_law = xx @ dWv
    opt.step()
    with torch.no_grad():
        after = model.parts(x, dense=True)
        live = band_mask(x.shape[-2], model.context, x.device).expand_as(s)
        ds = _centre_rows(after.scores - s, live)[live]
        ds_law = _centre_rows(ds_law, live)[live]
        ds_adv = _centre_rows(-gs, live)[live]
        dv = (after.values - v).flatten()
        dv_law, dv_err = dv_law.flatten(), (-gv).flatten()
        out = {}
        for name, actual, predicted in (("score_update_vs_law", ds, ds_law), ("score_update_vs_advantage", ds, ds_adv),
                                        ("value_update_vs_law", dv, dv_law), ("value_update_vs_errors", dv, dv_err)):
            out[name] = _cos(actual, predicted)
            perm = torch.randperm(predicted.numel(), generator=generator)
            out[f"{name}/shuffled"] = _cos(actual, predicted[perm])
        out["score_update_vs_law/relative_error"] = float((ds - ds_law).norm() / ds_law.norm())
        out["value_update_vs_law/relative_error"] = float((dv - dv_law).norm() / dv_law.norm())
        out["loss"] = float(loss)
    return out


def routing_dynamics(*, seed: int = 42, steps: int = 1000, lr: float = 0.01, value_lr_mult: float = 10.0,
                     T: int = 2000, context: int | None = 32, n_checkpoints: int = 16,
                     task_params: dict[str, Any] | None = None) -> list[ResultRow]:
    """Train the toy head of ``seed`` (float64, plain SGD, value lr x ``value_lr_mult``) for ``steps`` steps and
    measure the routing law on the steps at ``n_checkpoints`` log-spaced checkpoints (step 0 included).

    Rows: probe ``routing_dynamics``, statistic one of :data:`STATISTICS` (value = cosine), variant ``law`` or
    ``shuffled``; plus probe ``routing_dynamics_error``, statistic ``<stat>_relative_error`` for the two law
    predictions; meta step (the update measured is step -> step + 1), loss."""
    from geoprobe.gradients.em_vs_sgd import EMProtocol, make_chains, per_seed_loss
    from geoprobe.models.training import checkpoint_steps

    protocol = replace(EMProtocol(), seeds=(seed,), steps=steps, lr=lr, value_lr_mult=value_lr_mult, T=T,
                       context=context, task_params=dict(task_params or {}))
    data = make_chains(protocol)
    x, y = data.x.double(), data.y
    model = SingleHeadAttention((seed,), protocol.sizes, context=context, dtype=torch.float64)
    opt = torch.optim.SGD(em_param_groups(model, is_value_param, lr, value_lr_multiplier=value_lr_mult), lr=lr)
    at = set(checkpoint_steps(steps, n_checkpoints)) - {steps}
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in range(steps):
        if t in at:
            m = measure_step(model, opt, x, y, generator=g)
            meta = {"step": t, "loss": m["loss"], "seed": seed, "value_lr_mult": value_lr_mult, "lr": lr}
            for stat in STATISTICS:
                rows.append(ResultRow("routing_dynamics", stat, m[stat], variant="law", meta=meta))
                rows.append(ResultRow("routing_dynamics", stat, m[f"{stat}/shuffled"], variant="shuffled", meta=meta))
            for stat in ("score_update_vs_law", "value_update_vs_law"):
                rows.append(ResultRow("routing_dynamics_error", f"{stat}_relative_error",
                                      m[f"{stat}/relative_error"], variant="law", meta=meta))
            continue
        loss = per_seed_loss(model(x), y).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return rows


def routing_dynamics_summary(frame, probe: str = "routing_dynamics") -> dict[str, Any]:
    """Per statistic: median and minimum cosine over checkpoints (and heads) and the largest |cosine| of the
    shuffled null; the worst relative error of the first-order predictions (toy head)."""
    out: dict[str, Any] = {}
    df = frame[frame["probe"] == probe]
    for stat in dict.fromkeys(df["statistic"]):
        law = df[(df["statistic"] == stat) & (df["variant"] == "law")]["value"]
        null = df[(df["statistic"] == stat) & (df["variant"] == "shuffled")]["value"]
        out[f"{stat}_median_cos"] = float(law.median())
        out[f"{stat}_min_cos"] = float(law.min())
        out[f"{stat}_shuffled_max_abs_cos"] = float(null.abs().max())
    err = frame[frame["probe"] == "routing_dynamics_error"]
    for stat, g in err.groupby("statistic"):
        out[f"max_{stat}"] = float(g["value"].max())
    out["checkpoints"] = int(df["meta"].map(lambda m: m["step"]).nunique()) if len(df) else 0
    out["paper_claim"] = ("Paper II: scores move along -a_ij (b_ij - E_a[b]) (advantage-weighted) and values toward "
                          "the responsibility-weighted errors sum_i a_ij u_i")
    return {probe: out}


def routing_dynamics_report(run_dir=None, **kwargs: Any):
    """:func:`routing_dynamics` (toy head; ``kwargs`` are its settings) or, with ``run_dir``,
    :func:`checkpoint_routing` over a run's saved checkpoints (``kwargs``: n, seed), as a
    :class:`~geoprobe.report.Report` with its figure."""
    from geoprobe.models.checkpoint import versions
    from geoprobe.plots import probe_figures
    from geoprobe.report import Report
    from geoprobe.results import rows_to_frame

    if run_dir is not None:
        frame = rows_to_frame(checkpoint_routing(run_dir, **kwargs), include_meta=True)
        return Report(title=f"geoprobe paper2 routing: the routing law over the checkpoints of {run_dir}",
                      rows=frame, summary=routing_dynamics_summary(frame, "routing_checkpoints"),
                      figures=probe_figures(frame),
                      manifest={"run": str(run_dir), "settings": kwargs, "dtype": "float64", "versions": versions()})
    frame = rows_to_frame(routing_dynamics(**kwargs), include_meta=True)
    return Report(title="geoprobe paper2 routing: the routing law during training (Paper II)", rows=frame,
                  summary=routing_dynamics_summary(frame), figures=probe_figures(frame),
                  manifest={"settings": kwargs, "model": "single attention head (toy, float64)", "task": "sticky",
                            "optimizer": "torch.optim.SGD, full batch", "versions": versions()})


def checkpoint_routing(run_dir, *, n: int = 32, seed: int = 0, max_checkpoints: int | None = None
                       ) -> list[ResultRow]:
    """The routing law over the saved checkpoints of a GPT-2 wind-tunnel run (``RUN/checkpoints/step_N``).

    For consecutive checkpoints c -> c' and every head, on ``n`` fixed test sequences: the law's directions at c,
    -dL/ds (advantage-weighted; row-centred over the causal band) and -dL/dv = -sum_i a_ij u_i
    (responsibility-weighted errors), against the heads' actual change of scores and values from c to c'
    (many AdamW steps: a direction test, not a first-order identity). Rows ``routing_checkpoints`` with statistic
    ``score_update_vs_advantage`` / ``value_update_vs_errors`` (cosine), variant ``law`` or ``shuffled`` (predicted
    entries randomly re-paired), layer, head, meta step (c) and next_step (c')."""
    from geoprobe.errors import ConfigError
    from geoprobe.gradients.tunnel import _attention_modules, _loss, _recording
    from geoprobe.models import ARCHS
    from geoprobe.models.checkpoint import list_checkpoints, read_manifest, task_from_manifest
    from geoprobe.tasks import make_generator

    manifest = read_manifest(run_dir)
    arch = ARCHS.get(manifest["arch"])
    task = task_from_manifest(manifest)
    target = (manifest.get("train") or {}).get("target") or task.default_target
    ckpts = list_checkpoints(run_dir)
    if max_checkpoints is not None:
        ckpts = ckpts[:max_checkpoints]
    if len(ckpts) < 2:
        raise ConfigError(f"{run_dir} needs at least two saved training checkpoints for the routing law over "
                          f"training; it has {len(ckpts)}")
    batch = task.sample(n, make_generator(seed, "test"))
    g = torch.Generator().manual_seed(seed)

    def heads(folder):
        """(scores, values, upstream gradient) of every layer at one checkpoint, float64."""
        model = arch.load(folder, device="cpu").double().eval()
        _attention_modules(model)  # one line for attention-free runs
        with _recording(model) as recs:
            _loss(model, arch, batch, target).backward()
        return [(r.scores.detach(), r.values.detach(), r.out.grad) for r in recs]

    rows = []
    current = heads(ckpts[0][1])
    for (step, _), (next_step, folder) in zip(ckpts[:-1], ckpts[1:], strict=True):
        nxt = heads(folder)
        for layer, ((s, v, u), (s2, v2, _)) in enumerate(zip(current, nxt, strict=True)):
            live = torch.isfinite(s)
            gs, gv = routing_gradient(s, v, u), value_gradient(s, u)
            for head in range(s.shape[1]):
                lv = live[:, head]
                ds = _centre_rows(s2[:, head] - s[:, head], lv)[lv]
                adv = _centre_rows(-gs[:, head], lv)[lv]
                dv, err = (v2[:, head] - v[:, head]).flatten(), (-gv[:, head]).flatten()
                meta = {"step": step, "next_step": next_step}
                for stat, actual, predicted in (("score_update_vs_advantage", ds, adv),
                                                ("value_update_vs_errors", dv, err)):
                    rows.append(ResultRow("routing_checkpoints", stat, _cos(actual, predicted), layer=layer,
                                          head=head, variant="law", meta=meta))
                    perm = torch.randperm(predicted.numel(), generator=g)
                    rows.append(ResultRow("routing_checkpoints", stat, _cos(actual, predicted[perm]), layer=layer,
                                          head=head, variant="shuffled", meta=meta))
        current = nxt
    return rows
