"""Helpers the probes share: token embeddings, supervised samples, single-site collection for the passes of
intervention probes, the behavioural metric interventions are judged by, and layer selection."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from geoprobe.errors import ConfigError
from geoprobe.infotheory import entropy_bits
from geoprobe.probes.contract import ProbeOptions
from geoprobe.probes.targets import ProbeTarget


def token_embeddings(handle: Any, ids: torch.Tensor) -> torch.Tensor:
    """Input embeddings ``[n, d_model]`` of token ``ids`` (no positions), float32."""
    emb = handle.hf_model.get_input_embeddings()
    with torch.no_grad():
        return emb(ids.to(handle.device)).float()


def supervised_samples(t: ProbeTarget, max_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) indices of up to ``max_samples`` supervised positions (deterministic subsample)."""
    assert t.batch is not None
    rows, pos = torch.nonzero(t.batch.loss_mask, as_tuple=True)
    if rows.numel() > max_samples:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(rows.numel(), generator=g)[:max_samples].sort().values
        rows, pos = rows[keep], pos[keep]
    return rows, pos


def collect(t: ProbeTarget, site: str, layers: list[int], select: Callable[[Any], torch.Tensor]
            ) -> dict[int, torch.Tensor]:
    """Run the model once, reducing each (site, layer, batch) activation with ``select`` on the fly.

    ``select(activation)`` returns the part to keep (e.g. a few positions); results are concatenated per layer
    in input order. Memory holds only the selected parts.
    """
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}

    def reducer(act: Any) -> None:
        parts[act.layer].append(select(act).cpu())

    t.handle.run(t.tokens, t.attention_mask, sites=[site], layers=layers, reducer=reducer,
                 batch_size=t.batch_size)
    return {layer: torch.cat(v) for layer, v in parts.items()}


def select_final(act: Any) -> torch.Tensor:
    """Each row's final real token: ``[b, T, ...] -> [b, ...]``; pattern ``[b, H, T, T] -> [b, H, T]`` (the
    final query's row)."""
    r = torch.arange(act.value.shape[0], device=act.value.device)
    if act.site == "pattern":
        return act.value[r, :, act.final_index]
    return act.value[r, act.final_index]


def select_samples(act: Any, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The (row, position) samples that fall in this batch, in input order: ``[n_in_batch, ...]``."""
    r0 = act.rows.start
    m = (rows >= r0) & (rows < r0 + act.value.shape[0])
    return act.value[(rows[m] - r0).to(act.value.device), pos[m].to(act.value.device)]


def manifold_positions(t: ProbeTarget, opts: ProbeOptions) -> str:
    """``all_positions`` (tunnels' default: supervised positions) or ``final`` (LLMs' default)."""
    positions = opts.manifold_positions or ("all_positions" if t.kind == "tunnel" else "final")
    if positions == "all_positions" and t.kind != "tunnel":
        raise ConfigError("the all_positions value-manifold variant needs a wind tunnel (supervised positions)")
    return positions


def sample_entropy(t: ProbeTarget, positions: str, samples: tuple[torch.Tensor, torch.Tensor] | None
                   ) -> torch.Tensor:
    """Reference entropy (bits) of each sample: Bayes entropy at the supervised samples, else final-token."""
    if positions == "all_positions":
        assert samples is not None and t.batch is not None
        rows, pos = samples
        return t.batch.bayes_entropy[rows, pos].float()
    return t.final_entropy.float()


def values_at_samples(t: ProbeTarget, layers: list[int], opts: ProbeOptions, site: str = "v"
                      ) -> tuple[dict[int, torch.Tensor], torch.Tensor, str]:
    """Concatenated-heads value vectors (``site="v"``) or residual vectors (``"resid_post"``) and their
    reference entropies, per layer, from a forward pass of their own (used under interventions).

    Tunnels: every supervised position (subsampled to ``max_samples``) with the Bayes entropy there
    (variant ``all_positions``, default) or the final token only (``opts.manifold_positions="final"``); LLMs:
    the final token with the model's next-token entropy (``final``).
    Returns ({layer: [n, D]}, entropy [n], positions variant). KV heads are not expanded.
    """
    positions = manifold_positions(t, opts)
    if positions == "all_positions":
        rows, pos = supervised_samples(t, opts.max_samples, opts.seed)
        vals = collect(t, site, layers, lambda a: select_samples(a, rows, pos))
        ent = sample_entropy(t, positions, (rows, pos))
    else:
        vals = collect(t, site, layers, select_final)
        ent = sample_entropy(t, positions, None)
    return {k: v.reshape(v.shape[0], -1) for k, v in vals.items()}, ent, positions


def calibration_metric(t: ProbeTarget) -> dict[str, float]:
    """The behavioural metric interventions are judged by.

    Tunnels: per-sample entropy MAE against the exact posterior (bits) and KL. LLMs: mean next-token negative
    log-likelihood over the prompts' real tokens (bits) and mean final-token entropy (bits).
    """
    logits = t.logits()
    if t.kind == "tunnel":
        from geoprobe.calibration import calibration_from_log_probs, readout_log_probs

        res = calibration_from_log_probs(readout_log_probs(logits, t.batch.readout_ids), t.batch)
        return {"entropy_mae_bits": res.entropy_mae_bits, "kl_bits": res.kl_bits}
    logp = torch.log_softmax(logits.float(), -1)
    nxt = t.tokens[:, 1:].to(logp.device)
    m = (t.attention_mask[:, 1:] * t.attention_mask[:, :-1]).bool().to(logp.device)
    nll = -logp[:, :-1].gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
    final = logits[torch.arange(t.n), t.final_index.to(logits.device)]
    return {"nll_bits": float(nll[m].mean() / math.log(2)),
            "final_entropy_bits": float(entropy_bits(torch.softmax(final.float(), -1)).mean())}


def default_layers(t: ProbeTarget, opts: ProbeOptions) -> list[int]:
    L = t.handle.info.n_layers
    if opts.layers is not None:
        bad = [x for x in opts.layers if not -L <= x < L]
        if bad:
            raise ConfigError(f"layers {bad} out of range (model has {L} layers)")
        return sorted({x % L for x in opts.layers})
    return list(range(L)) if t.kind == "tunnel" else [L - 1]


def row_figures(probe: str):
    """``Probe.figures`` of a built-in probe: the figures :data:`geoprobe.plots.PROBE_FIGURES` draws for
    ``probe`` from its rows (with ``meta``) and sample tables, the same code :meth:`Report.load` uses, so a saved
    report redraws exactly these figures."""

    def build(out: Any) -> dict[str, Any]:
        from geoprobe.plots import probe_figures

        return probe_figures(out.rows, out.tables, probes=[probe])

    return build
