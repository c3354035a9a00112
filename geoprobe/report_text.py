"""One-sentence, human-readable readings of a probe run's summary (shown at the top of a Report).

Each probe's summary dict (the ``summary[probe]`` of a probe Report) is turned into one sentence with the
numbers that matter; probes without a sentence of their own get their scalar entries listed. Nothing here
computes a statistic: the numbers are the summary's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def format_value(x: Any, digits: int = 3, *, cells: bool = False) -> str:
    """A summary value as text: None and NaN ``n/a``, booleans ``yes``/``no``, numbers to ``digits`` significant
    digits, anything else ``str(x)``. ``cells=True`` (table cells such as the criteria tables) also writes
    mappings as ``key value, ...`` (a criterion's ``{"fraction_passing": f}`` as ``f% of elements pass``) and
    lists as ``[a, b, ...]``, element by element."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        if isinstance(x, float) and math.isnan(x):
            return "n/a"
        return f"{x:.{digits}g}"
    if cells and isinstance(x, Mapping):
        if "fraction_passing" in x:
            return f"{100 * x['fraction_passing']:.0f}% of elements pass"
        return ", ".join(f"{k} {format_value(v, digits, cells=True)}" for k, v in x.items())
    if cells and isinstance(x, Sequence) and not isinstance(x, str):
        return "[" + ", ".join(format_value(v, digits, cells=True) for v in x) + "]"
    return str(x)


_f = format_value  # the short name this module's sentences use


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) or math.isnan(x) else f"{100 * x:.0f}%"


def _signed_pct(x: Any) -> str:
    """A percentage that is already in percent units: ``-37.2`` -> ``-37%``."""
    if not isinstance(x, (int, float)) or math.isnan(x):
        return "n/a"
    return f"{x:+.1f}%" if abs(x) < 10 else f"{x:+.0f}%"


def fmt_fixed(x: float, decimals: int, sign: bool = False) -> str:
    """``x`` with ``decimals`` decimals; a value that rounds to zero prints as ``0.0`` (never ``-0.0``)."""
    text = f"{x:{'+' if sign else ''}.{decimals}f}"
    return f"{0.0:.{decimals}f}" if float(text) == 0 else text


def _ci(ci: Any, digits: int = 3) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f" [95% CI {_f(ci[0], digits)}, {_f(ci[1], digits)}]"
    return ""


def _key_orthogonality(s: dict[str, Any]) -> str:
    text = (f"Key orthogonality ({s.get('default_definition')}): layer-0 mean |cos| {_f(s.get('layer0_mean_abs_cos'))}"
            f" vs {_f(s.get('layer0_random_baseline'))} for random vectors "
            f"({_signed_pct(s.get('layer0_vs_random_percent'))})")
    if "layer0_at_initialisation" in s:
        text += f", {_f(s['layer0_at_initialisation'])} at initialisation"
    frac = s.get("fraction_of_layers_weights_below_0.20")
    if frac is not None:
        text += f"; weight keys below 0.20 in {_pct(frac)} of layers"
    ratios = [x for x in s.get("weights_ratio_to_random") or [] if isinstance(x, (int, float))]
    if ratios:
        text += (f"; weight keys are {_f(min(ratios), 2)}-{_f(max(ratios), 2)}x the random Gaussian baseline "
                 f"({_f((s.get('weights_layer_random_baseline') or [math.nan])[0])})")
    if s.get("weights_fraction_below_null") is not None:
        text += (f"; below both random and initial weights (95% CI over heads) in "
                 f"{_pct(s.get('weights_fraction_below_null'))} of layers ({s.get('weights_null_used')})")
    return text + "."


def _attention_focusing(s: dict[str, Any]) -> str:
    text = (f"Attention focusing: the final query's attention entropy goes from "
            f"{_f(s.get('first_layer_entropy_bits'))} bits (first layer) to {_f(s.get('last_layer_entropy_bits'))} "
            f"bits (last layer), focusing {_f(s.get('focusing_percent'), 3)}%{_ci(s.get('ci'))}"
            f"{'' if s.get('monotone_decrease') is None else '; monotone: ' + _f(s.get('monotone_decrease'))}")
    what = {"init": "the same architecture at initialisation", "shuffled": "the shuffled-context control"}
    nulls = [f"{what.get(n, n)} {_f(s.get(f'{n}_focusing_percent'), 3)}% (excess "
             f"{_f((s.get(f'focusing_minus_{n}') or {}).get('estimate'), 3)}{_ci((s.get(f'focusing_minus_{n}') or {}).get('ci'))}"
             f", p = {_f((s.get(f'focusing_minus_{n}') or {}).get('p_one_sided'), 3)})"
             for n in s.get("focusing_nulls_used") or []]
    if nulls:
        text += f"; under the same code {', '.join(nulls)}; beyond every null: {_f(s.get('focusing_above_null'))}"
    return text + "."


def _value_manifold(s: dict[str, Any]) -> str:
    return (f"Value manifold at layer {s.get('layer')} ({s.get('site')}, {s.get('positions')}, n={s.get('n')}): "
            f"PC1 holds {_pct(s.get('pc1_share'))} of the variance, PC1+PC2 {_pct(s.get('pc12_share'))}, "
            f"participation ratio {_f(s.get('participation_ratio'))}; Spearman rho(PC1, entropy) "
            f"{_f(s.get('spearman_rho_pc1_entropy'), 2)}{_ci(s.get('rho_ci'), 2)}"
            + (f" (permutation p = {_f(s.get('rho_pc1_perm_p'), 3)}; |rho| under no relation averages "
               f"{_f(s.get('rho_null_mean_abs'), 2)}); best of the first {s.get('pcs_searched')} components: "
               f"PC{s.get('best_pc')} |rho| {_f(s.get('best_pc_abs_rho'), 2)} (p = {_f(s.get('best_pc_perm_p'), 3)}, "
               f"corrected for choosing the best)" if "rho_pc1_perm_p" in s else "")
            + (f"; isotropic Gaussian data of the same n and D give PC1 {_pct(s.get('isotropic_null_pc1'))}"
               if s.get("isotropic_null_pc1") is not None else "") + "." + _position_control(s))


def _position_control(s: dict[str, Any]) -> str:
    if "entropy_determined_by_position" not in s:
        return ""
    text = f" Position control: rho(PC1, position) {_f(s.get('spearman_rho_pc1_position'), 2)}"
    if s["entropy_determined_by_position"]:
        return text + (". The Bayes entropy is a function of position here, so rho(PC1, entropy) cannot separate "
                       "entropy from position; train and probe on a stream where they decouple (bijection with "
                       "replacement=true).")
    return text + (f"; within-position rho(PC1, entropy) {_f(s.get('within_position_rho_pc1_entropy'), 2)} "
                   f"(p = {_f(s.get('within_position_rho_perm_p'), 3)}, entropies permuted within position); "
                   f"rank partial rho given position {_f(s.get('partial_rho_pc1_entropy_given_position'), 2)} "
                   f"(p = {_f(s.get('partial_rho_perm_p'), 3)}).")


def _qk_alignment(s: dict[str, Any]) -> str:
    d = [x for x in s.get("consistent_minus_eliminated_by_layer") or [] if x is not None]
    if not d:
        return "Query-key alignment: the heatmap shows cos(final query, keys); the consistent-minus-eliminated " \
               "score is not defined for this target."
    test = s.get("sharpening_test") or {}
    return (f"Query-key alignment: cos(final query, consistent hypotheses) minus cos(eliminated) is {_f(d[0])} at "
            f"the first layer and {_f(d[-1])} at the last; last minus first {_f(test.get('estimate'))}"
            f"{_ci(test.get('ci'))}, one-sided p = {_f(test.get('p_one_sided'), 3)} (sharpens with depth: "
            f"{_f(s.get('sharpens_with_depth'))}).")


def _ablation(s: dict[str, Any]) -> str:
    text = f"Ablations (metric {s.get('metric')}, baseline {_f(s.get('baseline'), 4)})"
    top = s.get("top_head")
    if isinstance(top, dict):
        text += f": strongest head L{top.get('layer')} H{top.get('head')} (x{_f(top.get('ratio'))})"
    by = [x for x in s.get("layer_bypass_ratios") or [] if isinstance(x, (int, float))]
    if by:
        text += f"; bypassing a whole layer multiplies it by x{_f(min(by))} to x{_f(max(by))}"
    med = [x for x in s.get("layer_bypass_null_median") or [] if isinstance(x, (int, float))]
    if med:
        over = [x for x in s.get("layer_bypass_over_null_q95") or [] if isinstance(x, (int, float))]
        text += (f"; a random kick of the same size multiplies it by x{_f(min(med))} to x{_f(max(med))} (median of "
                 f"{s.get('null_draws')} draws), so a bypass is x{_f(min(over))} to x{_f(max(over))} the kicks' 95th "
                 f"percentile; every layer beats the kicks (p < 0.05): {_f(s.get('every_layer_beats_null'))}")
    if s.get("init_layer_bypass_ratios"):
        r0 = s["init_layer_bypass_ratios"]
        text += f"; at initialisation a bypass gives x{_f(min(r0))} to x{_f(max(r0))}"
    return text + "."


def _entropy_axis(s: dict[str, Any]) -> str:
    cut, ctl = s.get("cut_axis_relative_change") or {}, s.get("cut_control_relative_change") or {}
    if not cut:
        return "Entropy axis: no interventions recorded."
    key = "None" if "None" in cut else sorted(cut)[-1]
    where = "all layers at once" if key == "None" else f"layer {key}"
    text = (f"Entropy axis: cutting it ({where}) changes {s.get('metric')} by {_signed_pct(100 * cut[key])}, an "
            f"orthogonal random direction by {_signed_pct(100 * ctl.get(key, math.nan))}")
    vs = (s.get("cut_vs_controls") or {}).get(s.get("metric"), {}).get(key)
    if vs:
        text += (f"; against {s.get('n_controls')} variance-matched random directions the cut's change "
                 f"{_f(vs['axis_change'], 4)} sits beside the controls' {_f(vs['control_change_mean'], 4)} "
                 f"(5-95% {_f(vs['control_change_q05'], 4)} to {_f(vs['control_change_q95'], 4)}, empirical p = "
                 f"{_f(vs['p_empirical'], 3)})")
    return text + "."


def _dynamics(s: dict[str, Any]) -> str:
    if "settling_ratio" in s:
        ci = s.get("settling_index_difference_ci")
        return (f"Training dynamics over {s.get('checkpoints')} checkpoints: relative to its own range, the "
                f"attention frame covers 90% of its change by step {s.get('frame_settling_step')} and the entropy "
                f"MAE by step {s.get('precision_settling_step')} (ratio {_f(s.get('settling_ratio'))}; MAE minus "
                f"frame {_f(s.get('settling_index_difference'))} checkpoints{_ci(ci, 2)}); dissociation: "
                f"{_f(s.get('dissociation'))}. Legacy 0.05-bit threshold: frame from step "
                f"{s.get('legacy_frame_stable_step')}, MAE improves x"
                f"{_f(s.get('legacy_mae_improvement_factor_after_stable'))} afterwards.")
    step = s.get("frame_stable_step")
    if step is None:
        return (f"Training dynamics over {s.get('checkpoints')} checkpoints: the attention frame never fell below "
                f"{_f(s.get('attention_threshold_bits'))} bits of JS divergence to the final checkpoint.")
    return (f"Training dynamics over {s.get('checkpoints')} checkpoints: the attention frame is in place from step "
            f"{step} (JS < {_f(s.get('attention_threshold_bits'))} bits), while the entropy MAE still improves "
            f"x{_f(s.get('mae_improvement_factor_after_stable'))} ({_f(s.get('mae_at_stable'))} -> "
            f"{_f(s.get('mae_final'))} bits).")


def _routing_law(s: dict[str, Any]) -> str:
    return (f"Routing law on {s.get('heads')} heads: autograd's dL/ds and dL/dv through the model agree with "
            f"a_ij (b_ij - E_a[b]) and sum_i a_ij u_i to a relative {_f(s.get('max_relative_error_scores'))} and "
            f"{_f(s.get('max_relative_error_values'))} (holds: {_f(s.get('holds'))}).")


def _value_step(s: dict[str, Any]) -> str:
    ratios = [f"{k.split('(')[-1].rstrip(')')}: {_f(v, 6)}" for k, v in s.items()
              if k.startswith("actual_over_predicted")]
    return (f"Value step at layer {s.get('layer')}: actual / first-order predicted loss change "
            f"(-lr ||dL/dv||^2) is " + "; ".join(ratios) + ".")


def _em_schedule(s: dict[str, Any]) -> str:
    finals = [f"{k.split('(')[-1].rstrip(')')}: {_f(v)} bits" for k, v in s.items()
              if k.startswith("final_entropy_mae_bits")]
    return f"EM-like schedule after {s.get('steps')} steps, held-out entropy MAE " + "; ".join(finals) + "."


def _em_vs_sgd(s: dict[str, Any]) -> str:
    em, ctrl, cal = s["em"], s["control"], s.get("calibration") or {}
    steps = ", ".join("never" if t is None else str(t) for t in em["steps_to_target_per_seed"])
    maes = "; ".join(f"{arm} {_f(v.get('final_entropy_mae_bits'))} bits" for arm, v in cal.items())
    return (f"EM-like vs SGD: speed-up {_f(em['speedup'])}{_ci(em['speedup_ci'])} (Paper II's definition: "
            f"{_f(em['steps_to_target_mean'])} +- {_f(em['steps_to_target_sd'])} steps to SGD's mean final loss "
            f"{_f(s.get('target_loss_nats'))} nats; per seed {steps}); seed-mean curves "
            f"{_f(em['speedup_symmetric'])}{_ci(em['speedup_symmetric_ci'])}, within-seed permutation p "
            f"{_f(em.get('permutation_p_symmetric'))}. Control (value lr x1): {_f(ctrl['speedup_symmetric'])}"
            f"{_ci(ctrl['speedup_symmetric_ci'])} (passes: {_f(s.get('control_passes'))}, permutation p "
            f"{_f(ctrl.get('permutation_p_symmetric'))}). Held-out entropy MAE to the Bayes predictive at the end: "
            f"{maes}." + "".join(
                f" Same multiplier on {arm}: {_f(st['speedup_symmetric'])}{_ci(st['speedup_symmetric_ci'])}."
                for arm, st in (s.get("specificity") or {}).items())
            + ("" if s.get("value_specific") is None else
               f" Specific to the values: {_f(s.get('value_specific'))}."))


def _routing_dynamics(s: dict[str, Any]) -> str:
    parts = [f"{k[: -len('_median_cos')].replace('_', ' ')} median cosine {_f(v)} (shuffled max "
             f"|cos| {_f(s.get(k[: -len('_median_cos')] + '_shuffled_max_abs_cos'))})"
             for k, v in s.items() if k.endswith("_median_cos")]
    return f"Routing law over {s.get('checkpoints')} training checkpoints: " + "; ".join(parts) + "."


def _share_ci(d: dict[str, Any], pct: bool = True) -> str:
    v, ci = d.get("value"), d.get("ci")
    if v is None:
        return "n/a"
    f = (lambda x: f"{fmt_fixed(100 * x, 1)}%") if pct else (lambda x: fmt_fixed(x, 2, sign=True))
    return f(v) + (f" [{f(ci[0])}, {f(ci[1])}]" if ci else "")


def scan_set_sentence(s: dict[str, Any]) -> str:
    """One line for one prompt set of a scan: PC1, PC1+PC2 (null), rho, key orthogonality, focusing, verdict."""
    vm, ko, af, v = s["value_manifold"], s["key_orthogonality"], s["attention_focusing"], s["verdict"]
    label = "mixed" if s["set"] == "mixed" else f"domain {s['domain']}"
    foc, ci = af.get("focusing_percent"), af.get("ci") or [None, None]
    foc_txt = "n/a" if foc is None else f"{fmt_fixed(foc, 1)}%" + (
        f" [{fmt_fixed(ci[0], 1)}, {fmt_fixed(ci[1], 1)}]" if ci[0] is not None else "")
    nulls = [f"{name} {fmt_fixed(af[k], 1)}%" for name, k in (("fresh weights", "init_focusing_percent"),
                                                          ("shuffled context", "shuffled_focusing_percent"))
             if af.get(k) is not None]
    if foc is not None and nulls:
        foc_txt += f" ({', '.join(nulls)})"
    frac = ko.get("fraction_of_layers_below_0.20")
    null = vm["pc12_share"].get("null_mean")
    return (f"{label} (n={s['n']}): value manifold at layer {vm['layer']} PC1 {_share_ci(vm['pc1_share'])}, "
            f"PC1+PC2 {_share_ci(vm['pc12_share'])} (isotropic null {'n/a' if null is None else f'{100 * null:.1f}%'}), "
            f"rho(PC1, H) {_share_ci(vm['rho_pc1_entropy'], pct=False)}; key orthogonality < 0.20 in "
            f"{_pct(frac)} of layers; focusing {foc_txt}; verdict {v.get('grade')} "
            f"({v.get('criteria_passed')}/{v.get('of')}).")


def _scan_sets(s: dict[str, Any]) -> str:
    """One line per prompt set (the page shows each on its own line)."""
    return "\n".join(scan_set_sentence(x) for x in s.values())


def _frame_precision(s: dict[str, Any]) -> str:
    """A multi-revision scan's frame-vs-precision reading, one clause per prompt set (the settling steps)."""
    parts = []
    for set_name, d in s.items():
        f, p = d.get("frame_settles_at"), d.get("precision_settles_at")
        after = d.get("precision_settles_after_frame")
        reading = ("n/a (a group never settles)" if after is None else
                   "precision settles after the frame" if after else "precision does not settle after the frame")
        parts.append(f"{set_name}: frame settles at step {'never' if f is None else f}, precision at step "
                     f"{'never' if p is None else p}, so {reading}")
    return ("Frame vs precision (a signature settles once at most 10% of its first-to-final change is left): "
            + "; ".join(parts) + ".")


def _scan_sula(s: dict[str, Any]) -> str:
    rho = s.get("rho_pc1_h_bayes")
    return (f"In-context noisy labels: MAE {_f(s.get('mae_bits'))} bits to the Bayes entropy (main condition), "
            f"discarded label-pair mass {_f(s.get('discarded_mass'))}, rho(PC1, H_Bayes) {_f(rho, 2)}"
            f"{_ci(s.get('rho_ci'), 2)}.")


def _scan_predictions(s: dict[str, Any]) -> str:
    return "Predictions: " + "; ".join(f"{v.get('prediction', k)}: {v.get('state')}" for k, v in s.items()) + "."


def _scan_domain_verdict(s: dict[str, Any]) -> str:
    return f"Domain set verdict: {s.get('grade')} ({s.get('criteria_passed')}/{s.get('of')} criteria)."


def _scan_published(s: dict[str, Any]) -> str:
    p = s.get("published") or {}
    return (f"Published for {p.get('model')}: PC1+PC2 mixed {p.get('pc12_mixed')}, math {p.get('pc12_math')}, key "
            f"orthogonality {p.get('key_orthogonality')}, focusing {p.get('focusing_percent')} %.")


SENTENCES: dict[str, Callable[[dict[str, Any]], str]] = {
    "routing_law": _routing_law,
    "value_step": _value_step,
    "em_schedule": _em_schedule,
    "em_vs_sgd": _em_vs_sgd,
    "routing_dynamics": _routing_dynamics,
    "routing_checkpoints": _routing_dynamics,
    "key_orthogonality": _key_orthogonality,
    "attention_focusing": _attention_focusing,
    "value_manifold": _value_manifold,
    "qk_alignment": _qk_alignment,
    "ablation": _ablation,
    "entropy_axis": _entropy_axis,
    "dynamics": _dynamics,
    # scan summaries (geoprobe scan)
    "sets": _scan_sets,
    "sula": _scan_sula,
    "predictions": _scan_predictions,
    "domain_verdict": _scan_domain_verdict,
    "published": _scan_published,
    "frame_precision": _frame_precision,  # geoprobe scan --revisions (geoprobe.scan.revisions)
    "causal": lambda s: s.get("sentence"),  # written by the scan's causal stage (geoprobe.scan.causal)
}


def humanise(key: str) -> str:
    """``layer0_mean_abs_cos`` -> ``layer0 mean abs cos``."""
    return str(key).replace("_", " ")


def describe(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(probe, sentence, paper claim) per probe entry of a probe-run summary (skipping ``verdict``)."""
    out = []
    for name, s in summary.items():
        if name == "verdict" or not isinstance(s, dict):
            continue
        fn = SENTENCES.get(name)
        if fn is not None:
            try:
                text = fn(s)
            except (TypeError, KeyError, ValueError):
                text = None
        else:
            text = None
        if text is None:
            scalars = [f"{humanise(k)} {_f(v)}" for k, v in s.items()
                       if k != "paper_claim" and (isinstance(v, (int, float, str, bool)) or v is None)]
            text = f"{humanise(name)}: " + "; ".join(scalars[:8]) + "."
        out.append((name, text, str(s.get("paper_claim", ""))))
    return out


def verdict_line(verdict: dict[str, Any]) -> tuple[str, str]:
    """(headline, level) of a verdict dict (``label``, ``criteria_passed``, ``of``, ``by_criterion``); level is
    ``pass``, ``partial`` or ``fail`` (for the colour)."""
    n, of = verdict.get("criteria_passed"), verdict.get("of")
    label = verdict.get("label", "")
    level = "pass" if n is not None and n == of else ("partial" if n and n > 0 else "fail")
    by = verdict.get("by_criterion") or {}
    parts = ", ".join(f"{humanise(k)} {'passes' if v else 'fails'}" for k, v in by.items())
    head = f"{label}" + (f": {n} of {of} criteria" if n is not None else "") + (f" ({parts})" if parts else "")
    return head, level


def verdict_notes(verdict: dict[str, Any]) -> list[str]:
    """Lines printed under the verdict: criteria a null model passes too (vacuous) and the null-calibrated
    criteria reported beside the paper's."""
    out = []
    details = verdict.get("details") or verdict.get("criteria") or {}  # a probe suite's / a scan's verdict
    for name in verdict.get("vacuous") or []:
        nulls = [k for k, v in (details.get(name, {}).get("nulls") or {}).items() if v.get("passed")]
        which = f"the null model(s) {', '.join(nulls)}" if nulls else "a null model"
        out.append(f"vacuous: {humanise(name)} also passes for {which} under the same rule, so it cannot tell this "
                   "model from them")
    cal = verdict.get("calibrated")
    if isinstance(cal, dict):
        parts = ", ".join(f"{k} {'passes' if v else 'fails'}" for k, v in (cal.get("by_criterion") or {}).items())
        out.append(f"null-calibrated: {cal.get('criteria_passed')} of {cal.get('of')} ({parts})")
    return out


def summary_table(summary: dict[str, Any]) -> str:
    """A plain-text table (probe, reading, value) of every scalar in a probe-run summary, verdict first."""
    lines = []
    verdict = summary.get("verdict")
    if isinstance(verdict, dict):
        lines.append("verdict: " + verdict_line(verdict)[0])
        lines += verdict_notes(verdict)
    records = []
    for name, s in summary.items():
        if name == "verdict" or not isinstance(s, dict):
            continue
        for k, v in s.items():
            if k == "paper_claim" or isinstance(v, (dict, list, tuple)):
                continue
            text = _f(v, 6)
            records.append((name, humanise(k), text if len(text) <= 60 else text[:57] + "..."))
    if records:
        w0 = max(len("probe"), *(len(r[0]) for r in records))
        w1 = max(len("reading"), *(len(r[1]) for r in records))
        lines.append(f"{'probe':<{w0}}  {'reading':<{w1}}  value")
        lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * 10}")
        last = None
        for probe, key, value in records:
            lines.append(f"{probe if probe != last else '':<{w0}}  {key:<{w1}}  {value}")
            last = probe
    return "\n".join(lines) + ("\n" if lines else "")
