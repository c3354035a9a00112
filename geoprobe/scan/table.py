"""Cross-model table and prediction scorecard from saved scans (``geoprobe scan-table``).

The table follows the paper's comparison layout, one row per scan: model, PC1+PC2 on the mixed set ->
the domain set, key orthogonality (early-layer mean |cos| of the key weights and the fraction of layers below
0.20), attention focusing, rho(PC1, entropy) mixed / domain, the verdict (mixed; domain in brackets), and the
published values beside them where the paper measured that model.

The scorecard checks every falsifiable prediction the papers make about a pretrained model and a scan measures,
each ``held``, ``failed`` or ``not measured``. Every state comes from an interval, not a bare comparison: the
SULA intervals are percentile bootstraps (1000 resamples, seed 0) over the per-prompt entropies the scan saves
(``sula.per_prompt``; the fall resamples the k = 0 and largest-k prompts independently); a scan saved without
them, or a set without CIs, gives ``not measured``.

=====================  ==========================================================================================
prediction             held when
=====================  ==========================================================================================
value_manifold         PC1 or PC1+PC2 share of the last-layer value manifold > 0.30 (mixed set)
key_orthogonality      key-weight mean |cos| < 0.20 in >= 50% of layers (mixed set)
attention_focusing     focusing > 30% (mixed set)
domain_restriction     PC1+PC2 on the domain set above PC1+PC2 on the mixed set: the domain set's 95% CI lies
                       entirely above the mixed set's (two independent prompt sets; needs a domain set and CIs)
sula_tracks_evidence   in-context: mean model entropy at the largest k below k = 0 by > 0.05 bits, in the main
                       AND the lexical-remap condition: the 95% bootstrap CI of the fall lies above 0.05
sula_controls_flat     the shuffled-label and evidence-ablation controls do NOT fall by > 0.05 bits: the CI of
                       each control's fall lies below 0.05
sula_calibrated        in-context MAE to the Bayes entropy <= 0.44 bits (the largest published value): the CI of
                       the MAE over the main prompts lies below 0.44
sula_entropy_axis      |rho(PC1, H_Bayes)| >= 0.65 (the smallest published value) on the main SULA prompts, for
                       the whole 95% CI of rho (not only the point estimate); no CI: not measured
causal_axis_cut        cutting the entropy axis at all cut layers together lowers the downstream corr(axis,
                       entropy), beyond the matched random controls (change < 0, empirical p <= 0.05)
causal_calibration     that cut changes calibration (next-token NLL on the prompts) by less than 1%
=====================  ==========================================================================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoprobe.errors import ConfigError

HELD, FAILED, NOT_MEASURED = "held", "failed", "not measured"
#: a fall in mean model entropy larger than this (bits) counts as "entropy falls with k"
FALL_BITS = 0.05
PREDICTIONS = {
    "value_manifold": "value manifold PC1 or PC1+PC2 > 30% (mixed)",
    "key_orthogonality": "key orthogonality < 0.20 in >= 50% of layers",
    "attention_focusing": "attention focusing > 30%",
    "domain_restriction": "domain restriction raises PC1+PC2",
    "sula_tracks_evidence": "in-context entropy falls with k (main and remap)",
    "sula_controls_flat": "no fall with k under shuffled labels / evidence ablation",
    "sula_calibrated": "in-context MAE <= 0.44 bits",
    "sula_entropy_axis": "|rho(PC1, H_Bayes)| >= 0.65",
    "causal_axis_cut": "cutting the entropy axis lowers corr(axis, entropy) beyond controls",
    "causal_calibration": "the axis cut changes calibration (NLL) by < 1%",
}
#: the paper: the cut leaves calibration within 1%
CALIBRATION_PERCENT = 1.0
#: empirical p-value at or below which the axis cut counts as beyond the controls
CAUSAL_P = 0.05


def causal_headline(causal: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cut set the scorecard reads: all cut layers together (``"all"``), or the single one; None when the
    causal test did not run or does not apply."""
    if not causal or not causal.get("applicable") or not causal.get("cut_sets"):
        return None
    cs = causal["cut_sets"]
    return cs.get("all") or next(iter(cs.values()))


def _state(ok: bool | None) -> str:
    return NOT_MEASURED if ok is None else (HELD if ok else FAILED)


N_BOOT = 1000


def _sula_groups(sula: dict[str, Any]) -> dict[tuple[str, int], np.ndarray] | None:
    """Per (condition, k): the saved per-prompt [n, 2] array (model entropy, Bayes entropy) from the SULA
    summary's ``per_prompt`` columns, or None (a scan saved without them)."""
    pp = sula.get("per_prompt") or {}
    cols = [pp.get(c) for c in ("condition", "k", "h_model_bits", "h_bayes_bits")]
    if any(c is None for c in cols) or len({len(c) for c in cols}) != 1:
        return None
    groups: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for cond, k, hm, hb in zip(*cols, strict=True):
        groups.setdefault((str(cond), int(k)), []).append((float(hm), float(hb)))
    return {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()} or None


def _boot_means(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x[rng.integers(0, len(x), (N_BOOT, len(x)))].mean(1)


def _fall_ci(groups: dict[tuple[str, int], np.ndarray], condition: str) -> list[float] | None:
    """95% CI of mean H_model(k = 0) - mean H_model(largest k) of ``condition``: each group resampled."""
    ks = sorted(k for c, k in groups if c == condition)
    if len(ks) < 2:
        return None
    rng = np.random.default_rng(0)
    d = _boot_means(groups[(condition, ks[0])][:, 0], rng) - _boot_means(groups[(condition, ks[-1])][:, 0], rng)
    return [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))]


def _mae_ci(groups: dict[tuple[str, int], np.ndarray], condition: str = "main") -> list[float] | None:
    """95% CI of the MAE |H_model - H_Bayes| over the prompts of ``condition``."""
    err = [np.abs(g[:, 0] - g[:, 1]) for (c, _), g in groups.items() if c == condition]
    if not err:
        return None
    a = np.concatenate(err)
    m = _boot_means(a, np.random.default_rng(0))
    return [float(np.quantile(m, 0.025)), float(np.quantile(m, 0.975))]


def _fall(rows: Sequence[dict[str, Any]], condition: str) -> float | None:
    """Mean model entropy at k = 0 minus at the largest k of ``condition`` (bits), or None."""
    rr = sorted((r for r in rows if r["condition"] == condition), key=lambda r: r["k"])
    if len(rr) < 2:
        return None
    return float(rr[0]["h_model_bits"] - rr[-1]["h_model_bits"])


def scorecard(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{prediction: {"state": held|failed|not measured, "value": ..., "rule": ...}}`` for one scan summary."""
    sets = summary.get("sets") or {}
    mixed = sets.get("mixed")
    out: dict[str, dict[str, Any]] = {}
    crit = (mixed or {}).get("verdict", {}).get("criteria", {})
    for name in ("value_manifold", "key_orthogonality", "attention_focusing"):
        c = crit.get(name)
        out[name] = {"state": _state(None if c is None else bool(c["passed"])),
                     "value": None if c is None else c["observed"]}
    dom = sets.get("domain")
    if mixed is not None and dom is not None:
        a, b = mixed["value_manifold"]["pc12_share"], dom["value_manifold"]["pc12_share"]
        ok = None if a.get("ci") is None or b.get("ci") is None else bool(b["ci"][0] > a["ci"][1])
        out["domain_restriction"] = {"state": _state(ok), "value": {"mixed": a["value"], "domain": b["value"]},
                                     "ci": {"mixed": a.get("ci"), "domain": b.get("ci")}}
    else:
        out["domain_restriction"] = {"state": NOT_MEASURED, "value": None}
    sula = summary.get("sula")
    if sula:
        rows = sula["by_condition_k"]
        falls = {c: _fall(rows, c) for c in ("main", "remap", "shuffled", "ablation")}
        groups = _sula_groups(sula)
        cis = {c: _fall_ci(groups, c) if groups else None for c in falls}
        tracks = None if cis["main"] is None or cis["remap"] is None else \
            cis["main"][0] > FALL_BITS and cis["remap"][0] > FALL_BITS
        flat = None if cis["shuffled"] is None or cis["ablation"] is None else \
            cis["shuffled"][1] <= FALL_BITS and cis["ablation"][1] <= FALL_BITS
        out["sula_tracks_evidence"] = {"state": _state(tracks), "value": {c: falls[c] for c in ("main", "remap")},
                                       "ci": {c: cis[c] for c in ("main", "remap")}}
        out["sula_controls_flat"] = {"state": _state(flat), "value": {c: falls[c] for c in ("shuffled", "ablation")},
                                     "ci": {c: cis[c] for c in ("shuffled", "ablation")}}
        mae, mci = sula.get("mae_bits"), _mae_ci(groups) if groups else None
        out["sula_calibrated"] = {"state": _state(None if mci is None else mci[1] <= 0.44), "value": mae,
                                  "ci": mci}
        rho, ci = sula.get("rho_pc1_h_bayes"), sula.get("rho_ci")
        ok = None if rho is None or not ci or None in ci else bool(ci[0] >= 0.65 or ci[1] <= -0.65)
        out["sula_entropy_axis"] = {"state": _state(ok), "value": rho, "ci": ci}
    else:
        for k in ("sula_tracks_evidence", "sula_controls_flat", "sula_calibrated", "sula_entropy_axis"):
            out[k] = {"state": NOT_MEASURED, "value": None}
    e = causal_headline(summary.get("causal"))
    if e is None:
        out["causal_axis_cut"] = {"state": NOT_MEASURED, "value": None}
        out["causal_calibration"] = {"state": NOT_MEASURED, "value": None}
    else:
        a = e["axis_entropy_corr"]
        ok = None if a["change"] is None or a["p_empirical"] is None else \
            bool(a["change"] < 0 and a["p_empirical"] <= CAUSAL_P)
        out["causal_axis_cut"] = {"state": _state(ok), "value": {"change": a["change"], "p": a["p_empirical"],
                                                                 "layers": e["layers"]}}
        pc = e.get("calibration_change_percent")
        out["causal_calibration"] = {"state": _state(None if pc is None else abs(pc) < CALIBRATION_PERCENT),
                                     "value": pc}
    for k, v in out.items():
        v["prediction"] = PREDICTIONS[k]
    return out


def load_scan(folder: str | Path) -> dict[str, Any]:
    """The ``summary`` of a saved scan folder (one clear error for anything else)."""
    p = Path(folder)
    f = p / "summary.json"
    if not f.is_file():
        raise ConfigError(f"{p} is not a saved scan (no summary.json)")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{f} is not valid JSON: {e}") from None
    s = data.get("summary") if isinstance(data, dict) else None
    if not isinstance(s, dict) or "sets" not in s or "mixed" not in s.get("sets", {}):
        raise ConfigError(f"{p} is not a saved scan (its summary.json has no per-set scan results; was it "
                          "written by `geoprobe probe`?)")
    return s


def _pct(x: Any) -> str:
    from geoprobe.report_text import fmt_fixed

    return "n/a" if x is None else f"{fmt_fixed(100 * x, 1)}%"


def _range(r: Any, pct: bool = False, digits: int = 3) -> str:
    if r is None:
        return "–"
    lo, hi = r
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.{digits}g}")
    return f(lo) if lo == hi else f"{f(lo)}–{f(hi)}"


def table_frame(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per scan in the comparison layout (module docstring), published values in ``published_*``."""
    from geoprobe.scan.published import published_for

    recs = []
    for s in summaries:
        m = s["sets"]["mixed"]
        d = s["sets"].get("domain")
        pub = published_for(s.get("model"))
        ko = m["key_orthogonality"]
        rec = {
            "model": s.get("model"), "domain": s.get("domain"),
            "pc12_mixed": m["value_manifold"]["pc12_share"]["value"],
            "pc12_domain": None if d is None else d["value_manifold"]["pc12_share"]["value"],
            "key_orth_early": ko.get("early_layers_mean_abs_cos"),
            "key_orth_fraction_below_0.20": ko.get("fraction_of_layers_below_0.20"),
            "focusing_percent": m["attention_focusing"]["focusing_percent"],
            "rho_mixed": m["value_manifold"]["rho_pc1_entropy"]["value"],
            "rho_domain": None if d is None else d["value_manifold"]["rho_pc1_entropy"]["value"],
            "verdict": m["verdict"].get("grade"),
            "verdict_domain": None if d is None else d["verdict"].get("grade"),
            "sula_mae_bits": (s.get("sula") or {}).get("mae_bits"),
            **_causal_columns(s.get("causal")),
            "published_pc12_mixed": None if pub is None else _range(pub.pc12_mixed, pct=True),
            "published_pc12_math": None if pub is None else _range(pub.pc12_math, pct=True),
            "published_key_orth": None if pub is None else _range(pub.key_orthogonality),
            "published_focusing": None if pub is None else (
                "non-monotone" if pub.focusing_percent is None else _range(pub.focusing_percent) + "%"),
        }
        recs.append(rec)
    return pd.DataFrame.from_records(recs).astype(object).where(lambda d: d.notna(), None)


def _causal_columns(causal: dict[str, Any] | None) -> dict[str, Any]:
    e = causal_headline(causal)
    a = None if e is None else e["axis_entropy_corr"]
    return {"causal_layers": None if e is None else " ".join(map(str, e["layers"])),
            "causal_corr_change": None if a is None else a["change"],
            "causal_corr_p": None if a is None else a["p_empirical"],
            "causal_calibration_change_percent": None if e is None else e.get("calibration_change_percent")}


def scorecard_frame(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Prediction x model: held / failed / not measured (recomputed from each summary)."""
    cols = {}
    for s in summaries:
        card = scorecard(s)
        cols[str(s.get("model"))] = {PREDICTIONS[k]: v["state"] for k, v in card.items()}
    df = pd.DataFrame(cols)
    df.index.name = "prediction"
    return df.reset_index()


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and x != x)


def markdown(summaries: Sequence[dict[str, Any]]) -> str:
    """The table and the scorecard as markdown text."""
    from geoprobe.report_text import fmt_fixed

    t = table_frame(summaries)
    lines = ["| model | PC1+PC2 mixed → domain | key orth. (early; % layers < 0.20) | focusing | rho mixed / domain "
             "| verdict mixed (domain) | published PC1+PC2 mixed → math | published key orth. | published focusing |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        dom = "" if _missing(r["pc12_domain"]) else f" → {_pct(r['pc12_domain'])} ({r['domain']})"
        ko = "n/a" if pd.isna(r["key_orth_early"]) else f"{r['key_orth_early']:.3f}; " \
            f"{100 * r['key_orth_fraction_below_0.20']:.0f}%"
        foc = "n/a" if pd.isna(r["focusing_percent"]) else f"{fmt_fixed(r['focusing_percent'], 1)}%"
        rho = ("n/a" if pd.isna(r["rho_mixed"]) else fmt_fixed(r["rho_mixed"], 2, sign=True)) + (
            "" if _missing(r["rho_domain"]) else f" / {fmt_fixed(r['rho_domain'], 2, sign=True)}")
        ver = str(r["verdict"]) + ("" if _missing(r["verdict_domain"]) else f" ({r['verdict_domain']})")
        pub = "–" if _missing(r["published_pc12_mixed"]) else \
            f"{r['published_pc12_mixed']} → {r['published_pc12_math']}"
        ko_pub = "–" if _missing(r["published_key_orth"]) else r["published_key_orth"]
        foc_pub = "–" if _missing(r["published_focusing"]) else r["published_focusing"]
        lines.append(f"| {r['model']} | {_pct(r['pc12_mixed'])}{dom} | {ko} | {foc} | {rho} | {ver} | {pub} | "
                     f"{ko_pub} | {foc_pub} |")
    card = scorecard_frame(summaries)
    models = [c for c in card.columns if c != "prediction"]
    lines += ["", "| prediction | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for _, r in card.iterrows():
        text = str(r["prediction"]).replace("|", "\\|")  # a literal | would split the markdown cell
        lines.append(f"| {text} | " + " | ".join(str(r[m]) for m in models) + " |")
    return "\n".join(lines) + "\n"


def csv_text(summaries: Sequence[dict[str, Any]]) -> str:
    """The table rows followed by one ``prediction:<name>`` column per prediction."""
    t = table_frame(summaries)
    for s_i, s in enumerate(summaries):
        for k, v in scorecard(s).items():
            t.loc[s_i, f"prediction:{k}"] = v["state"]
    return t.to_csv(index=False)
