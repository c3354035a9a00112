"""``geoprobe scan --max-tokens N``: over-long prompts keep their last N tokens, the cut texts are what
prompts.jsonl records, and the manifest lists every cut prompt with its original length."""

from __future__ import annotations

import json

from test_scan_causal import word_pool

from geoprobe.scan import driver
from geoprobe.scan.cut import cut_text
from geoprobe.scan.records import read_prompts_jsonl


def test_cut_text_keeps_the_last_tokens(tiny_model_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    words = [f"w{3 + i % 40}" for i in range(37)]
    assert cut_text(tok, " ".join(words), 20) == (" ".join(words[-20:]), 37)
    assert cut_text(tok, "w3 w4", 20) == ("w3 w4", 2)


def test_scan_with_max_tokens_cuts_and_records(tiny_model_dirs, tmp_path, monkeypatch, capsys):
    from geoprobe.cli import main

    monkeypatch.setattr(driver, "build_pool", word_pool)
    lines = [" ".join(f"w{3 + (i + j) % 40}" for j in range(5 + 3 * i)) for i in range(12)]  # 5 ... 38 words
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "scan"
    rc = main(["scan", str(tiny_model_dirs["llama"]), "--prompts", str(tmp_path / "p.txt"), "--max-tokens", "20",
               "--n", "10", "--pool-size", "40", "--no-sula", "--no-causal", "--n-boot", "10", "--backend", "torch",
               "--device", "cpu", "--quiet", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    long_ids = {f"p-{i + 1}": len(line.split()) for i, line in enumerate(lines) if len(line.split()) > 20}
    assert man["options"]["max_tokens"] == 20
    assert man["choices"]["prompt_truncation"]["max_tokens"] == 20
    assert man["choices"]["prompt_truncation"]["cut"] == {"domain": long_ids}
    recs = {r.id: r for r in read_prompts_jsonl(out / "prompts.jsonl") if r.extra.get("set") == "domain"}
    for i, line in enumerate(lines):
        words = line.split()
        assert recs[f"p-{i + 1}"].text == " ".join(words[-20:] if len(words) > 20 else words)
