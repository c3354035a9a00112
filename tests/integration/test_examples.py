"""Every script in examples/ runs with --smoke (in-process, so the imports are shared) and prints its result."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, monkeypatch, capsys, *args: str) -> str:
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def test_examples_folder_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(
        ["probe_model_object.py", "report_to_pandas.py", "routing_law_on_tunnel.py", "register_wind_tunnel.py",
         "add_your_own_probe.py"])


@pytest.fixture()
def no_save_or_reload(monkeypatch):
    """The held model must be used as it is: saving it or loading weights again fails the test."""
    import transformers

    def boom(*a, **k):
        raise AssertionError("the example saved or reloaded the model it holds")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", boom)
    monkeypatch.setattr(transformers.PreTrainedTokenizerBase, "save_pretrained", boom)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def test_probe_model_object(monkeypatch, capsys, no_save_or_reload):
    out = run_example("probe_model_object.py", monkeypatch, capsys, "--smoke")
    assert "runs the object you hold: True" in out
    assert re.search(r"key_orthogonality\s+20", out)  # 2 layers x (4 heads + 1 mean) x weights/runtime keys
    assert re.search(r"^\s+n\s+24$", out, re.M)  # the 24 prompts of the held model's probe


def _first_token_mass_by_hand(handle, prompts) -> list[float]:
    """Independent answer: the final query's attention row from a plain handle.run, read at the first real key,
    averaged over heads per prompt and then over prompts (one prompt at a time: no padding at all)."""
    per_layer = [[] for _ in range(handle.info.n_layers)]
    for text in prompts:
        tokens, mask = handle.tokenize([text])
        acts = handle.run(tokens, mask, sites=["pattern"], positions="final")
        for layer in range(handle.info.n_layers):
            per_layer[layer].append(float(acts["pattern", layer][0, :, 0].mean()))
    return [sum(v) / len(v) for v in per_layer]


def test_add_your_own_probe(monkeypatch, capsys, no_save_or_reload):
    from geoprobe.probes.contract import PROBES

    calls = []
    from geoprobe.backends.torch_hooks import HFTorchHandle

    inner = HFTorchHandle._forward

    def counted(self, *a, **kw):
        calls.append(a[0].shape[0])
        return inner(self, *a, **kw)

    monkeypatch.setattr(HFTorchHandle, "_forward", counted)
    try:
        out = run_example("add_your_own_probe.py", monkeypatch, capsys, "--smoke")
        assert "first_token_attention" in PROBES.names()
    finally:
        PROBES.unregister("first_token_attention")
    # 12 prompts, batches of 8: the reference (logits) pass and ONE shared pass for both probes = 2 x 2 batches,
    # then attention_focusing's nulls: the same config at initialisation and the shuffled-context control
    assert calls == [8, 4] * 4
    assert "one streaming pass per batch for first_token_attention, attention_focusing" in out
    got = {int(m.group(1)): float(m.group(2)) for m in
           re.finditer(r"^\s*(\d+)\s+first_token_attention_mass\s+([0-9.]+)\s+blocks\.\d\.attn\.hook_pattern$",
                       out, re.M)}
    assert sorted(got) == [0, 1]
    mod = runpy.run_path(str(EXAMPLES / "add_your_own_probe.py"))  # the same model and prompts, built again
    model, tok = mod["tiny_llama_with_tokenizer"]()
    import geoprobe as gp

    want = _first_token_mass_by_hand(gp.load_model(model, tokenizer=tok), mod["PROMPTS"])
    assert [got[0], got[1]] == pytest.approx(want, abs=2e-6)  # printed with 6 decimals


def test_own_probe_known_answer_with_uniform_attention(no_save_or_reload):
    """Planted structure: with W_Q = 0 every score is 0, attention is uniform over the visible keys, and the
    mass on the first token is exactly 1 / (prompt length) in every head and layer."""
    import geoprobe as gp
    from geoprobe.probes.contract import PROBES

    mod = runpy.run_path(str(EXAMPLES / "add_your_own_probe.py"))
    model, tok = mod["tiny_llama_with_tokenizer"]()
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.data.zero_()
    handle = gp.load_model(model, tokenizer=tok)
    prompts = mod["PROMPTS"]
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    assert len(set(lengths)) > 1  # batches are padded: the reducer must find each row's first real token
    gp.register_probe(mod["PROBE"], replace=True)
    try:
        report = gp.run_probes(handle, ["first_token_attention"], gp.ProbeOptions(n_boot=20), prompts=prompts,
                               batch_size=5)
    finally:
        PROBES.unregister("first_token_attention")
    want = sum(1 / n for n in lengths) / len(lengths)
    assert report.rows["value"].tolist() == pytest.approx([want, want], rel=1e-6)


def test_report_to_pandas(monkeypatch, capsys):
    out = run_example("report_to_pandas.py", monkeypatch, capsys, "--smoke")
    assert "probes: ['attention_focusing', 'key_orthogonality']" in out
    lines = [ln.split() for ln in out.splitlines() if ln.strip().startswith(("0 ", "1 "))]
    assert [ln[:3] for ln in lines] == [["0", "block", "0"], ["1", "block", "1"]]


def test_routing_law_on_tunnel(monkeypatch, capsys):
    out = run_example("routing_law_on_tunnel.py", monkeypatch, capsys, "--smoke")
    assert "routing law holds on all 4 heads" in out
    ratios = [float(x) for x in re.findall(r"actual/predicted loss change = ([0-9.]+)", out)]
    assert len(ratios) == 3 and abs(ratios[-1] - 1) < 1e-3


def test_register_wind_tunnel(monkeypatch, capsys):
    from geoprobe.tasks import TASKS

    if "dirichlet_die" in TASKS.names():
        pytest.skip("already registered in this process")
    try:
        out = run_example("register_wind_tunnel.py", monkeypatch, capsys, "--smoke")
        assert "dirichlet_die" in TASKS.names()
    finally:  # leave the registry as other tests expect it
        TASKS._items.pop("dirichlet_die", None)
    mae = float(re.search(r"entropy MAE vs the exact posterior ([0-9.]+) bits", out).group(1))
    assert 0 <= mae < 0.5
