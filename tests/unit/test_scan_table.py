"""Scan helpers without a model: batch-size back-off, published values, prediction scorecard, scan table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geoprobe.errors import ConfigError
from geoprobe.scan.batching import BatchSizer
from geoprobe.scan.published import PUBLISHED, published_for
from geoprobe.scan.table import load_scan, markdown, scorecard, table_frame

CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 8000000000 bytes."


def test_batch_sizer_halves_on_out_of_memory_only_when_auto():
    calls = []

    def fn(bs):
        calls.append(bs)
        if bs > 10:
            raise (torch.OutOfMemoryError("CUDA out of memory") if bs > 40 else RuntimeError(CPU_OOM))
        return bs * 2

    s = BatchSizer("auto")
    assert s.run(fn, "x") == 16 and calls == [64, 32, 16, 8]
    assert s.to_dict()["final"] == 8 and [h["failed_at"] for h in s.to_dict()["halvings"]] == [64, 32, 16]
    assert s.to_dict()["halvings"][1]["error"] == "out of memory (tried to allocate 7.5 GiB)"
    assert s.run(fn, "y") == 16 and calls[-1] == 8  # the size that worked carries over
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        BatchSizer(32).run(fn)  # a fixed size never changes
    with pytest.raises(ValueError):  # not an out-of-memory error: propagates at once
        BatchSizer("auto").run(lambda bs: (_ for _ in ()).throw(ValueError("bad")))
    always = BatchSizer("auto")
    with pytest.raises(torch.OutOfMemoryError):
        always.run(lambda bs: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    assert always.size == 1 and len(always.history) == 6  # 64 -> 1, then gives up
    with pytest.raises(ConfigError):
        BatchSizer(0)


@pytest.mark.parametrize("name,model", [("EleutherAI/pythia-410m", "Pythia-410M"), ("/models/Pythia-410M/", "Pythia-410M"),
                                        ("microsoft/phi-2", "Phi-2"), ("meta-llama/Llama-3.2-1B", "Llama-3.2-1B"),
                                        ("mistralai/Mistral-7B-v0.1", "Mistral-7B"), ("EleutherAI/pythia-12b", "Pythia-12B")])
def test_published_for_matches_the_measured_models(name, model):
    assert published_for(name).model == model


def test_published_for_other_models_is_none_and_values_are_the_tables():
    assert published_for("EleutherAI/pythia-410m-deduped") is None
    assert published_for("HuggingFaceTB/SmolLM2-135M") is None and published_for(None) is None
    assert PUBLISHED["pythia-410m"].pc12_mixed == (0.997, 0.997) and PUBLISHED["llama-3.2-1b"].pc12_math == (0.736, 0.736)
    assert PUBLISHED["phi-2"].focusing_percent == (86.0, 86.0) and PUBLISHED["phi-2"].sula_mae_bits == 0.31


def _summary(model="m", pc12=(0.2, 0.5), passed=(False, True, True), sula_rows=None, mae=0.3, rho=0.7,
             rho_ci=None):
    crit = {n: {"passed": p, "observed": {"x": i}} for i, (n, p) in
            enumerate(zip(("value_manifold", "key_orthogonality", "attention_focusing"), passed, strict=True))}

    def one(v, grade):
        return {"value_manifold": {"pc12_share": {"value": v, "ci": [v - 0.1, v + 0.1]},
                                   "rho_pc1_entropy": {"value": 0.25, "ci": [0.0, 0.5]}},
                "key_orthogonality": {"early_layers_mean_abs_cos": 0.12, "fraction_of_layers_below_0.20": 0.9},
                "attention_focusing": {"focusing_percent": 45.0},
                "verdict": {"grade": grade, "criteria": crit}}

    sets = {"mixed": one(pc12[0], "partial")}
    if pc12[1] is not None:
        sets["domain"] = one(pc12[1], "full")
    sula = None
    if sula_rows is not None:
        sula = {"by_condition_k": sula_rows, "mae_bits": mae, "rho_pc1_h_bayes": rho,
                "rho_ci": [rho - 0.04, rho + 0.05] if rho_ci is None else rho_ci,
                "per_prompt": _records(sula_rows, mae)}
    return {"model": model, "domain": "math", "sets": sets, "sula": sula}


def _records(rows, mae, n=20, noise=0.002):
    """Per-prompt SULA entropies matching ``rows`` (n prompts per (condition, k), tiny noise) with |H_model -
    H_Bayes| = ``mae`` exactly, in the column layout the scan saves (``sula.per_prompt``)."""
    out = {"condition": [], "k": [], "h_model_bits": [], "h_bayes_bits": []}
    for r in rows:
        for i in range(n):
            h = r["h_model_bits"] + noise * (i - (n - 1) / 2) / n
            for key, v in (("condition", r["condition"]), ("k", r["k"]), ("h_model_bits", h),
                           ("h_bayes_bits", h - mae)):
                out[key].append(v)
    return out


def _rows(falls):
    return [{"condition": c, "k": k, "h_model_bits": 1.0 - (f if k == 8 else 0.0)}
            for c, f in falls.items() for k in (0, 8)]


def test_scorecard_states_follow_the_rules():
    card = scorecard(_summary(sula_rows=_rows({"main": 0.3, "remap": 0.2, "shuffled": 0.0, "ablation": 0.01})))
    assert {k: v["state"] for k, v in card.items()} == {
        "value_manifold": "failed", "key_orthogonality": "held", "attention_focusing": "held",
        "domain_restriction": "held", "sula_tracks_evidence": "held", "sula_controls_flat": "held",
        "sula_calibrated": "held", "sula_entropy_axis": "held", "causal_axis_cut": "not measured",
        "causal_calibration": "not measured"}
    card = scorecard(_summary(pc12=(0.5, 0.4), mae=0.5, rho=-0.6,
                              sula_rows=_rows({"main": 0.3, "remap": 0.04, "shuffled": 0.2, "ablation": 0.0})))
    assert [card[k]["state"] for k in ("domain_restriction", "sula_tracks_evidence", "sula_controls_flat",
                                       "sula_calibrated", "sula_entropy_axis")] == ["failed"] * 5
    assert card["sula_tracks_evidence"]["value"] == pytest.approx({"main": 0.3, "remap": 0.04})
    card = scorecard(_summary(pc12=(0.5, None)))
    assert {card[k]["state"] for k in card if k.startswith("sula") or k == "domain_restriction"} == {"not measured"}


def test_sula_predictions_come_from_intervals_over_the_saved_prompts():
    """A main-condition fall of 0.08 bits (old rule: > 0.05, held) carried by a few prompts out of noisy ones
    has a CI reaching below 0.05; an MAE of 0.42 (old rule: <= 0.44, held) with a CI reaching above 0.44 is not
    established either."""
    rows = _rows({"main": 0.08, "remap": 0.3, "shuffled": 0.0, "ablation": 0.0})
    s = _summary(sula_rows=rows, mae=0.42)
    g = np.random.default_rng(1)
    pp = s["sula"]["per_prompt"]
    for i, cond in enumerate(pp["condition"]):
        if cond == "main":
            pp["h_model_bits"][i] += float(g.normal(0, 0.15))
            pp["h_bayes_bits"][i] = pp["h_model_bits"][i] - 0.42 * float(g.choice([0.2, 1.8]))
    card = scorecard(s)
    falls = card["sula_tracks_evidence"]
    assert falls["value"]["main"] == pytest.approx(0.08)  # the bare numbers the old rules compared
    assert falls["ci"]["main"][0] < 0.05 < falls["ci"]["main"][1] and falls["state"] == "failed"
    main = [i for i, c in enumerate(pp["condition"]) if c == "main"]
    mae = np.mean([abs(pp["h_model_bits"][i] - pp["h_bayes_bits"][i]) for i in main])
    assert card["sula_calibrated"]["ci"][0] < mae < card["sula_calibrated"]["ci"][1]
    assert card["sula_calibrated"]["ci"][1] > 0.44 and card["sula_calibrated"]["state"] == "failed"
    del s["sula"]["per_prompt"]
    assert {card[k]["state"] for card in [scorecard(s)] for k in ("sula_tracks_evidence", "sula_controls_flat",
                                                                  "sula_calibrated")} == {"not measured"}


def test_sula_entropy_axis_needs_the_whole_interval_beyond_0_65():
    """rho 0.70 with a 95% CI [0.45, 0.85] (n = 75 prompts): the old rule (|0.70| >= 0.65) said 'held'; the
    interval does not exclude values well below the published 0.65."""
    rows = _rows({"main": 0.3, "remap": 0.2, "shuffled": 0.0, "ablation": 0.01})
    card = scorecard(_summary(sula_rows=rows, rho=0.70, rho_ci=[0.45, 0.85]))
    assert card["sula_entropy_axis"]["state"] == "failed" and card["sula_entropy_axis"]["ci"] == [0.45, 0.85]
    assert scorecard(_summary(sula_rows=rows, rho=0.80, rho_ci=[0.66, 0.9]))["sula_entropy_axis"]["state"] == "held"
    assert scorecard(_summary(sula_rows=rows, rho=0.80, rho_ci=[None, None]))["sula_entropy_axis"]["state"] == (
        "not measured")


def test_domain_restriction_needs_non_overlapping_intervals_not_a_bare_comparison():
    """PC1+PC2 0.31 on the domain set vs 0.30 on the mixed set, each +-0.1: the old rule (0.31 > 0.30) said
    'held'; two independent prompt sets whose CIs overlap this much show no raise."""
    card = scorecard(_summary(pc12=(0.30, 0.31)))
    assert card["domain_restriction"]["state"] == "failed"
    assert card["domain_restriction"]["ci"] == {"mixed": pytest.approx([0.2, 0.4]), "domain": pytest.approx([0.21, 0.41])}
    assert scorecard(_summary(pc12=(0.30, 0.51)))["domain_restriction"]["state"] == "held"  # 0.41 > 0.40
    no_ci = _summary(pc12=(0.30, 0.6))
    no_ci["sets"]["domain"]["value_manifold"]["pc12_share"]["ci"] = None
    assert scorecard(no_ci)["domain_restriction"]["state"] == "not measured"


def test_table_and_markdown_carry_the_numbers_and_published_values(tmp_path):
    a = _summary(model="EleutherAI/pythia-410m", pc12=(0.31, 0.62))
    b = _summary(model="local/tiny", pc12=(0.2, None))
    t = table_frame([a, b])
    assert list(t["pc12_mixed"]) == [0.31, 0.2] and t.loc[0, "pc12_domain"] == 0.62
    assert t.loc[0, "published_pc12_mixed"] == "99.7%" and t.loc[1, "published_pc12_mixed"] is None
    md = markdown([a, b])
    assert "| EleutherAI/pythia-410m | 31.0% → 62.0% (math) | 0.120; 90% | 45.0% | +0.25 / +0.25 | partial (full) " \
           "| 99.7% → 99.9% | 0.11–0.13 | 82% |" in md
    assert "| local/tiny | 20.0% | 0.120; 90% | 45.0% | +0.25 | partial | – | – | – |" in md
    assert "| domain restriction raises PC1+PC2 | held | not measured |" in md
    assert "| \\|rho(PC1, H_Bayes)\\| >= 0.65 | not measured | not measured |" in md
    (tmp_path / "summary.json").write_text(json.dumps({"title": "x", "summary": {"verdict": {}}}))
    with pytest.raises(ConfigError, match="not a saved scan"):
        load_scan(tmp_path)
    with pytest.raises(ConfigError, match="no summary.json"):
        load_scan(tmp_path / "nothing")


def test_open_output_resumable_staging_is_kept_and_continued(tmp_path):
    from geoprobe.io import open_output, pending_replacement

    out = tmp_path / "scan"
    o = open_output(out, kind="scan", staged=True, resumable=True)
    assert o.created and o.staged
    (o.work / "stage.txt").write_text("done")
    o.close()  # stopped early: the staging folder stays, no result appears
    assert not out.exists() and (pending_replacement(out) / "stage.txt").read_text() == "done"
    o = open_output(out, kind="scan", staged=True, resumable=True, resume=True)
    assert not o.created and (o.work / "stage.txt").read_text() == "done"
    o.close()
    o = open_output(out, kind="scan", staged=True, resumable=True)  # no resume: a fresh start
    assert o.created and not (o.work / "stage.txt").exists()
    o.commit(lambda w: (w / "summary.json").write_text("{}"))
    assert (out / "summary.json").is_file() and pending_replacement(out) is None
    o = open_output(out, kind="scan", staged=True, overwrite=True)  # plain one-shot staging: discarded on close
    o.close()
    assert pending_replacement(out) is None


def test_the_sula_stage_saves_per_prompt_entropies_the_scorecard_reads(tiny_handle, monkeypatch):
    """The scan keeps each SULA prompt's model and Bayes entropy in its summary (the records go to prompts.jsonl),
    so the SULA predictions get intervals; the columns reproduce the stage's own per-(condition, k) means."""
    from geoprobe.scan import driver, sula
    from geoprobe.scan.batching import BatchSizer

    h = tiny_handle("llama", "torch")
    words = tuple(f"w{i}" for i in range(10, 30))
    monkeypatch.setattr(sula, "choose_label_pairs", lambda tok: [(" w5", " w6"), (" w7", " w8")])
    orig = sula.all_conditions
    monkeypatch.setattr(sula, "all_conditions", lambda **kw: orig(**kw, words=words, ks=(0, 2, 4)))
    monkeypatch.setattr(driver, "_sula_rho", lambda *a, **k: {"rho_pc1_h_bayes": None, "rho_ci": None})
    opts = driver.ScanOptions(sula_per_k=3, n_boot=20)
    out = driver._sula_stage(h, opts, BatchSizer(4), driver._start_stages(None, True, {}))
    pp = out["per_prompt"]
    assert len(pp["k"]) == len(out["records"]) == 4 * 3 * 3
    for row in out["by_condition_k"]:
        idx = [i for i, (c, k) in enumerate(zip(pp["condition"], pp["k"], strict=True))
               if c == row["condition"] and k == row["k"]]
        assert np.mean([pp["h_model_bits"][i] for i in idx]) == pytest.approx(row["h_model_bits"], abs=1e-12)
        assert np.mean([pp["h_bayes_bits"][i] for i in idx]) == pytest.approx(row["h_bayes_bits"], abs=1e-12)
    card = scorecard({"sets": {}, "sula": {k: v for k, v in out.items() if k != "records"}})
    for k in ("sula_tracks_evidence", "sula_controls_flat", "sula_calibrated"):
        assert card[k]["state"] in ("held", "failed") and card[k]["ci"] is not None


def _causal(change: float, p: float, cal_percent: float, *, joint: bool = True) -> dict:
    e = {"layers": [7, 15, 22] if joint else [7], "calibration_change_percent": cal_percent,
         "axis_entropy_corr": {"change": change, "p_empirical": p}}
    return {"applicable": True, "cut_sets": {"7": {**e, "layers": [7], "axis_entropy_corr":
                                                   {"change": 0.5, "p_empirical": 0.9}},
                                             **({"all": e} if joint else {})}}


@pytest.mark.parametrize("causal,states", [
    (_causal(-0.20, 0.05, 0.4), ("held", "held")),       # 19 controls all beaten: p = 0.05
    (_causal(-0.20, 0.10, 0.4), ("failed", "held")),
    (_causal(-0.20, 0.04, -0.99), ("held", "held")),
    (_causal(+0.20, 0.01, 1.0), ("failed", "failed")),   # a rise is not the predicted drop; 1% is not < 1%
    (_causal(-0.20, 0.01, 2.5, joint=False), ("failed", "failed")),  # one cut layer: that layer's numbers
    ({"applicable": False, "reason": "not applicable: no attention"}, ("not measured", "not measured")),
    (None, ("not measured", "not measured")),
])
def test_scorecard_reads_the_several_layer_causal_cut(causal, states):
    card = scorecard({**_summary(), "causal": causal})
    assert (card["causal_axis_cut"]["state"], card["causal_calibration"]["state"]) == states
    t = table_frame([{**_summary(), "causal": causal}])
    if causal and causal.get("applicable"):
        e = causal["cut_sets"].get("all") or causal["cut_sets"]["7"]
        assert t.loc[0, "causal_corr_change"] == e["axis_entropy_corr"]["change"]
        assert t.loc[0, "causal_layers"] == " ".join(map(str, e["layers"]))
        assert t.loc[0, "causal_calibration_change_percent"] == e["calibration_change_percent"]
    else:
        assert t.loc[0, "causal_corr_change"] is None
    md = markdown([{**_summary(), "causal": causal}])
    assert f"| cutting the entropy axis lowers corr(axis, entropy) beyond controls | {states[0]} |" in md
