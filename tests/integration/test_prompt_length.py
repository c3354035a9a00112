"""Prompts are used whole up to the model's context; a cut is an explicit, recorded option; and left padding of
prompts with very different lengths gives the per-prompt numbers."""

import json

import pytest
import torch
from conftest import _tiny_config, build_word_tokenizer

from geoprobe.cli import main
from geoprobe.errors import ConfigError
from geoprobe.infotheory import entropy_from_logits_bits
from geoprobe.probes.contract import PROBES, ProbeOptions, ProbeState
from geoprobe.probes.suite import collect_needs
from geoprobe.probes.targets import llm_target

CTX = 96


def _words(n: int, seed: int) -> str:
    return " ".join(f"w{3 + (seed * 11 + 7 * j) % 45}" for j in range(n))


# lengths 2 .. 90 words: one prompt longer than the old silent 64-token cut, others very short
PROMPTS = [_words(n, i) for i, n in enumerate([2, 90, 5, 70, 3, 40, 12, 81])]


@pytest.fixture(scope="module")
def long_ctx_dirs(tmp_path_factory):
    """Tiny Llama (rotary) and GPT-2 (learned absolute positions) folders with a 96-token context."""
    import transformers

    out = {}
    for family in ("llama", "gpt2"):
        cfg = _tiny_config(family)
        setattr(cfg, "n_positions" if family == "gpt2" else "max_position_embeddings", CTX)
        folder = tmp_path_factory.mktemp(f"{family}_ctx{CTX}")
        transformers.set_seed(1)
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
        build_word_tokenizer(folder)
        out[family] = folder
    return out


def test_whole_prompts_by_default_and_recorded(long_ctx_dirs):
    t = llm_target(str(long_ctx_dirs["llama"]), prompts=PROMPTS, device="cpu", backend="torch")
    lengths = [len(t.handle.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert max(lengths) == 90 > 64
    assert t.attention_mask.sum(1).tolist() == lengths  # nothing cut (the old default kept the last 64)
    assert t.tokens.shape[1] == 90
    rec = t.manifest["prompts"]
    assert rec["max_tokens"] is None and rec["n_cut_to_last_max_tokens"] == 0
    assert rec["prompt_tokens"] == {"min": 2, "max": 90, "min_used": 2, "max_used": 90}


def test_explicit_cut_keeps_the_last_tokens_and_records_how_many(long_ctx_dirs):
    t = llm_target(str(long_ctx_dirs["llama"]), prompts=PROMPTS, device="cpu", backend="torch", max_tokens=30)
    tok = t.handle.tokenizer
    for row, p in enumerate(PROMPTS):
        ids = tok(p)["input_ids"]
        real = t.tokens[row][t.attention_mask[row].bool()].tolist()
        assert real == ids[-30:]
    rec = t.manifest["prompts"]
    assert rec["max_tokens"] == 30 and rec["n_cut_to_last_max_tokens"] == 4  # the 90, 70, 40 and 81-word prompts
    assert rec["prompt_tokens"]["max_used"] == 30


def test_prompt_longer_than_the_context_is_one_clear_error(long_ctx_dirs):
    with pytest.raises(ConfigError) as e:
        llm_target(str(long_ctx_dirs["llama"]), prompts=[_words(3, 0), _words(100, 1)], device="cpu",
                   backend="torch")
    msg = str(e.value)
    assert "\n" not in msg and "prompt 1 is 100 tokens" in msg and "context is 96 tokens" in msg
    assert "max_tokens=N" in msg and "--max-tokens N" in msg
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="max_tokens must be a positive integer"):
            llm_target(str(long_ctx_dirs["llama"]), prompts=PROMPTS, device="cpu", max_tokens=bad)
    with pytest.raises(ConfigError, match="max_tokens=200 exceeds the model's context of 96 tokens"):
        llm_target(str(long_ctx_dirs["llama"]), prompts=PROMPTS, device="cpu", backend="torch", max_tokens=200)


def test_cli_max_tokens(long_ctx_dirs, tmp_path, capsys):
    path = tmp_path / "p.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "cut"
    assert main(["probe", str(long_ctx_dirs["llama"]), "--prompts", str(path), "--probes", "key_orthogonality",
                 "--n-boot", "10", "--max-tokens", "30", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    rec = json.loads((out / "summary.json").read_text())["manifest"]["prompts"]
    assert (rec["max_tokens"], rec["n_cut_to_last_max_tokens"]) == (30, 4)
    whole = tmp_path / "whole"
    assert main(["probe", str(long_ctx_dirs["llama"]), "--prompts", str(path), "--probes", "key_orthogonality",
                 "--n-boot", "10", "--out", str(whole), "--device", "cpu", "--quiet"]) == 0
    rec = json.loads((whole / "summary.json").read_text())["manifest"]["prompts"]
    assert (rec["max_tokens"], rec["n_cut_to_last_max_tokens"], rec["prompt_tokens"]["max_used"]) == (None, 0, 90)
    path.write_text(_words(120, 0) + "\n")
    capsys.readouterr()
    assert main(["probe", str(long_ctx_dirs["llama"]), "--prompts", str(path), "--probes", "key_orthogonality",
                 "--out", str(tmp_path / "long"), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geoprobe: error: prompt 0 is 120 tokens long but the model's context is 96 tokens")
    assert not (tmp_path / "long").exists()


@pytest.mark.parametrize("family,backend", [("llama", "transformer_lens"), ("llama", "torch"),
                                            ("gpt2", "transformer_lens"), ("gpt2", "nnsight")])
def test_left_padding_equals_one_prompt_at_a_time(long_ctx_dirs, family, backend):
    """Prompts of 2..90 tokens left-padded into batches of 4 (up to 88 padding columns in a row) give the
    per-prompt numbers: the reference entropy, the value vectors the value manifold reads, and the final-row
    attention entropies of attention_focusing (from post-rotary q/k in length buckets), against the eager
    pattern of unpadded single-prompt runs."""
    t = llm_target(str(long_ctx_dirs[family]), prompts=PROMPTS, device="cpu", backend=backend, batch_size=4)
    state = ProbeState(target=t, options=ProbeOptions(layers=(1,)))
    needs = [n for name in ("value_manifold", "attention_focusing") for n in PROBES.get(name).needs(state)]
    got = collect_needs(state, needs)
    v_key = next(k for k in got if k[0] == "v")
    f_key = next(k for k in got if k[1].startswith("final_row_entropy"))  # from rot_q/rot_k, not the pattern
    h = t.handle
    for row, p in enumerate(PROMPTS):
        ids = torch.tensor([h.tokenizer(p)["input_ids"]])
        one = h.run(ids, sites=["v", "pattern", "logits"], positions="final")
        assert float(entropy_from_logits_bits(one["logits"])[0]) == pytest.approx(float(t.final_entropy[row]),
                                                                                 abs=1e-5)
        torch.testing.assert_close(got[v_key][1][row], one["v", 1][0], atol=1e-5, rtol=1e-5)
        for layer in (0, 1):
            ent = -(one["pattern", layer][0] * one["pattern", layer][0].clamp_min(1e-30).log2()).sum(-1)
            torch.testing.assert_close(got[f_key][layer][row], ent, atol=1e-5, rtol=1e-5)
