"""Bad inputs through the library API: one meaning of a layer index, one-line errors before any forward pass.

Every case runs on the three backends (TransformerLens bridge, nnsight, plain torch hooks) over the tiny
models of ``conftest.py``; a known answer is either an exact equality between two spellings of the same
request (``-1`` vs ``n_layers - 1``) or a planted bad input whose error must name the offending value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoprobe.backends import Edit, SiteError, head_means, project_out
from geoprobe.errors import ConfigError, GeoprobeError

TINY_VOCAB, TINY_CTX = 48, 32  # the tiny models of conftest.py (checked below against ModelInfo)

BACKENDS = ("transformer_lens", "nnsight", "torch")


def _tokens(n: int = 3, t: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, TINY_VOCAB, (n, t), generator=g)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    assert isinstance(exc.value, GeoprobeError)
    return msg


def _interventions(h, layer_of):
    """Each intervention at the layer ``layer_of(last)`` names (``last`` = n_layers - 1)."""
    toks = _tokens()
    last = h.info.n_layers - 1
    means = head_means(h, toks)  # keyed 0..n_layers-1
    u = torch.randn(h.info.value_dim, generator=torch.Generator().manual_seed(0))
    ly = layer_of(last)
    return {
        "ablate_heads": lambda: h.ablate_heads({ly: [0, 2]}),
        "ablate_heads_mean": lambda: h.ablate_heads({ly: [1]}, mode="mean", means=means),
        "bypass_layers": lambda: h.bypass_layers(ly),
        "bypass_layers_list": lambda: h.bypass_layers([ly]),
        "zero_attention": lambda: h.zero_attention(ly),
        "zero_mlp": lambda: h.zero_mlp([ly]),
        "value_operator": lambda: h.value_operator(ly, project_out(u)),
        "edit": lambda: h.intervene([Edit("attn_out", ly, torch.zeros_like)]),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_negative_layer_interventions_mean_the_last_layer(family, backend, tiny_handle):
    """``-1`` gives bit-identical logits to ``n_layers - 1`` for every intervention, and they do something."""
    h = tiny_handle(family, backend)
    toks = _tokens()
    base = h.logits(toks)
    neg = _interventions(h, lambda last: -1)
    pos = _interventions(h, lambda last: last)
    for name in neg:
        with neg[name]():
            got_neg = h.logits(toks)
        with pos[name]():
            got_pos = h.logits(toks)
        assert torch.equal(got_neg, got_pos), name
        assert (got_neg - base).abs().max() > 1e-4, f"{name} at layer -1 had no effect"
    # -n_layers is the first block, exactly like 0
    n = h.info.n_layers
    with h.zero_attention(-n):
        first_neg = h.logits(toks)
    with h.zero_attention(0):
        first = h.logits(toks)
    assert torch.equal(first_neg, first) and not torch.equal(first, base)
    assert torch.equal(h.logits(toks), base) and not h._edits
    # weights and the input norm follow the same rule
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q"):
        assert torch.equal(getattr(h.attention_weights(-1), name), getattr(h.attention_weights(n - 1), name))
    x = torch.randn(2, 3, h.info.d_model, generator=torch.Generator().manual_seed(2))
    assert torch.equal(h.input_norm(-1)(x), h.input_norm(n - 1)(x))
    assert not torch.equal(h.attention_weights(0).W_Q, h.attention_weights(-1).W_Q)
    # run(layers=...) follows the same rule
    a = h.run(toks, sites=["resid_post", "z"], layers=[-1, -n])
    b = h.run(toks, sites=["resid_post", "z"], layers=[n - 1, 0])
    assert sorted(a) == sorted(b) == sorted((s, layer) for s in ("resid_post", "z") for layer in (0, n - 1))
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_layers_are_one_line_site_errors(backend, tiny_handle):
    h = tiny_handle("gpt2", backend)
    n = h.info.n_layers
    u = torch.ones(h.info.value_dim)
    valid = f"valid: 0..{n - 1}, or -{n}..-1"
    cases = {
        "run": lambda b: h.run(_tokens(), sites=["resid_post"], layers=b),
        "ablate_heads": lambda b: h.ablate_heads({b: [0]}),
        "bypass_layers": lambda b: h.bypass_layers(b),
        "zero_attention": lambda b: h.zero_attention([0, b]),
        "zero_mlp": lambda b: h.zero_mlp(b),
        "value_operator": lambda b: h.value_operator(b, lambda v: v + u),
        "edit": lambda b: h.intervene([Edit("z", b, lambda z: z)]),
        "attention_weights": lambda b: h.attention_weights(b),
        "input_norm": lambda b: h.input_norm(b),
    }
    for bad in (n, -n - 1, 99):
        for name, make in cases.items():
            with pytest.raises(SiteError) as exc:
                ctx = make(bad)
                if name not in ("run", "attention_weights", "input_norm"):
                    ctx.__enter__()
            msg = _one_line(exc)
            assert f"layer {bad} is out of range for a model with {n} layers" in msg and valid in msg, (name, msg)
    with pytest.raises(SiteError) as exc:
        h.zero_mlp(1.5)
    assert "layer must be an integer" in _one_line(exc)
    with pytest.raises(SiteError) as exc:
        h.run(_tokens(), sites=["resid_post"], layers=[])
    assert "no layers requested" in _one_line(exc)
    assert not h._edits


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_size", [-1, 0, 1.5, True])
def test_bad_batch_size_is_a_config_error(backend, batch_size, tiny_handle):
    h = tiny_handle("gpt2", backend)
    with pytest.raises(ConfigError) as exc:
        h.run(_tokens(), sites=["resid_post"], batch_size=batch_size)
    assert f"batch_size must be a positive integer (or None for all rows at once), got {batch_size!r}" in \
        _one_line(exc)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_token_inputs_fail_before_the_forward_pass(backend, tiny_handle, monkeypatch):
    h = tiny_handle("gpt2", backend)
    assert (h.info.vocab_size, h.info.max_positions) == (TINY_VOCAB, TINY_CTX)
    ok = h.run(_tokens(2, 5), sites=["resid_post"], layers=-1, batch_size=1)  # the valid baseline still runs
    assert ok["resid_post", h.info.n_layers - 1].shape == (2, 5, h.info.d_model)
    same = h.run(_tokens(2, 5), sites=["resid_post"], layers=-1, batch_size=np.int64(1))  # numpy ints are ints
    assert torch.equal(same["resid_post", h.info.n_layers - 1], ok["resid_post", h.info.n_layers - 1])

    def no_forward(*a, **k):
        raise AssertionError("the forward pass ran on a bad input")

    monkeypatch.setattr(h, "_forward", no_forward)
    empties = [torch.empty(0, 4, dtype=torch.long), torch.empty(2, 0, dtype=torch.long),
               torch.tensor([], dtype=torch.long), []]
    for toks in empties:
        with pytest.raises(ConfigError) as exc:
            h.run(toks, sites=["resid_post"])
        assert "empty batch" in _one_line(exc)
    with pytest.raises(SiteError) as exc:  # ragged input with one zero-length sequence
        h.run([[3, 4], []], sites=["resid_post"])
    assert "sequence 1 is empty" in _one_line(exc)
    with pytest.raises(ConfigError) as exc:
        h.run(torch.tensor([[3.0, 4.7]]), sites=["resid_post"])
    assert "tokens must be integer ids, got a torch.float32 tensor" in _one_line(exc)

    toks = _tokens(2, 6)
    toks[1, 4] = TINY_VOCAB
    with pytest.raises(ConfigError) as exc:
        h.run(toks, sites=["logits"])
    assert _one_line(exc) == (f"token id {TINY_VOCAB} (row 1, position 4) is outside the vocabulary of size "
                              f"{TINY_VOCAB} (valid ids 0..{TINY_VOCAB - 1})")
    with pytest.raises(ConfigError) as exc:
        h.logits([[3, 4], [5, -7, 6]])
    assert "token id -7 (row 1, position 1) is outside the vocabulary of size 48" in _one_line(exc)

    long = _tokens(1, TINY_CTX + 1)
    with pytest.raises(ConfigError) as exc:
        h.run(long, sites=["resid_pre"], layers=0)
    msg = _one_line(exc)
    assert f"sequences are {TINY_CTX + 1} tokens long but the model has only {TINY_CTX} positions" in msg

    monkeypatch.undo()  # exactly max_positions tokens and the ids at the vocabulary's edges still run
    edge = _tokens(1, TINY_CTX)
    edge[0, 0], edge[0, 1] = 0, TINY_VOCAB - 1
    assert h.logits(edge).shape == (1, TINY_CTX, TINY_VOCAB)


# ------------------------------------------------------------------ run folders, checkpoints, manifests
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from geoprobe.models import get_preset
    from geoprobe.models.run import train_tunnel

    out = tmp_path_factory.mktemp("api_runs") / "bij"
    train_tunnel(out, "bijection", get_preset("bijection", "smoke", steps=8), device="cpu", progress=False)
    return out


def _probe(target, out, backend, *extra):
    from geoprobe.cli import main

    return main(["probe", str(target), "--probes", "ablation", "--out", str(out), "--n", "16", "--n-boot", "10",
                 "--device", "cpu", "--backend", backend, "--quiet", *extra])


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_on_a_checkpoint_folder_probes_that_checkpoint_as_a_tunnel(backend, smoke_run, tmp_path):
    """Known answer: probing RUN/checkpoints/step_N gives exactly the numbers of a copy of the run whose final
    model is that checkpoint; the step is recorded. (Before: the default LLM prompts hit IndexError.)"""
    import json
    import shutil

    import pandas as pd

    from geoprobe.models.checkpoint import list_checkpoints

    steps = dict(list_checkpoints(smoke_run))
    step = sorted(steps)[len(steps) // 2]
    assert 0 < step < max(steps)
    assert _probe(steps[step], tmp_path / "ckpt", backend) == 0
    twin = tmp_path / "twin"
    shutil.copytree(smoke_run, twin)
    shutil.rmtree(twin / "model")
    shutil.copytree(steps[step], twin / "model")
    assert _probe(twin, tmp_path / "twin_out", backend) == 0
    assert _probe(smoke_run / "model", tmp_path / "model_out", backend) == 0
    got = json.loads((tmp_path / "ckpt" / "summary.json").read_text())["manifest"]
    ref = json.loads((tmp_path / "twin_out" / "summary.json").read_text())["manifest"]
    final = json.loads((tmp_path / "model_out" / "summary.json").read_text())["manifest"]
    assert got["kind"] == ref["kind"] == final["kind"] == "tunnel" and got["task"] == ref["task"]
    assert got["model"]["source_detail"]["checkpoint_step"] == step
    assert ref["model"]["source_detail"]["checkpoint_step"] is None
    assert final["model"]["source_detail"]["checkpoint_step"] is None
    a = pd.read_csv(tmp_path / "ckpt" / "results.csv")
    b = pd.read_csv(tmp_path / "twin_out" / "results.csv")
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b)


def test_probe_on_a_plain_folder_with_over_long_prompts_is_one_line(smoke_run, tmp_path, capsys):
    """A tunnel model copied out of its run is just an HF folder: the LLM prompts exceed its 9 positions,
    which must be said in one line (nothing truncated), not an IndexError."""
    import shutil

    from geoprobe.cli import main

    loose = tmp_path / "loose"
    shutil.copytree(smoke_run / "model", loose)
    rc = main(["probe", str(loose), "--probes", "ablation", "--out", str(tmp_path / "o"), "--device", "cpu",
               "--quiet", "--backend", "torch"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("geoprobe: error: prompt ") and "the model's context is 9 tokens" in err
    assert "--max-tokens N" in err
    # the checkpoints/ folder itself: say which folders to pass
    rc = main(["probe", str(smoke_run / "checkpoints"), "--out", str(tmp_path / "o2"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "it holds training checkpoints step_0000000 ... step_0000008: pass one of them, or the run folder" in err


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("edit,detail", [
    (lambda m: m["task"]["config"].update(V=7), "vocab_size: weights 12 vs manifest 14"),
    (lambda m: m["size"].update(n_layers=3), "n_layers: weights 2 vs manifest 3"),
    (lambda m: m["size"].update(d_model=48), "d_model: weights 32 vs manifest 48"),
])
def test_probe_checks_the_manifest_against_the_weights(backend, edit, detail, smoke_run, tmp_path, capsys):
    import json
    import shutil

    from geoprobe.errors import CheckpointError
    from geoprobe.probes.targets import tunnel_target

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    edit(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))
    for where in (run, run / "checkpoints" / "step_0000000"):
        with pytest.raises(CheckpointError) as exc:
            tunnel_target(where, n=8, device="cpu", backend=backend)
        assert "does not match its manifest" in _one_line(exc) and detail in str(exc.value)
        assert f"model in {where if where.name.startswith('step_') else where / 'model'} " in str(exc.value)
    assert _probe(run, tmp_path / "out", backend) == 2
    assert detail in capsys.readouterr().err


def test_checkpoint_of_a_plain_torch_run_loads_that_checkpoint(tmp_path):
    """LSTM run: RUN/checkpoints/step_N through the torch backend equals load_run(RUN, step=N) (independent
    loader), and differs from the final model."""
    from geoprobe.backends import load_model
    from geoprobe.models import get_preset, load_run
    from geoprobe.models.checkpoint import list_checkpoints
    from geoprobe.models.run import train_tunnel
    from geoprobe.probes.targets import tunnel_target

    out = tmp_path / "lstm"
    train_tunnel(out, "bijection", get_preset("bijection", "smoke", steps=4), arch_name="lstm", device="cpu",
                 progress=False)
    step, folder = list_checkpoints(out)[1]
    target = tunnel_target(folder, n=8, device="cpu", backend="torch")
    assert target.run_dir == out and target.handle.info.source_detail["checkpoint_step"] == step
    model, _, _ = load_run(out, step=step)
    with torch.no_grad():
        assert torch.equal(target.logits(), model(target.tokens))
    assert not torch.equal(target.logits(), load_model(out, device="cpu").logits(target.tokens))


# ------------------------------------------------------------------ trust_remote_code
@pytest.mark.parametrize("backend", BACKENDS)
def test_trust_remote_code_is_off_unless_passed(backend, tiny_model_dirs, monkeypatch):
    """Every transformers entry point (and the bridge boot) receives trust_remote_code=False by default and
    exactly the caller's True when asked; a non-bool is refused."""
    import sys

    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    from geoprobe.backends import load_model

    seen: list[tuple[str, object]] = []

    def spy(owner, name):
        orig = getattr(owner, name)

        def wrapped(*a, **k):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("geoprobe."):  # geoprobe's own calls
                seen.append((f"{owner.__name__}.{name}", k.get("trust_remote_code", "<absent>")))
            return orig(*a, **k)

        monkeypatch.setattr(owner, name, wrapped)

    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        spy(cls, "from_pretrained")
    spy(TransformerBridge, "boot_transformers")
    for flag in (None, False, True):
        seen.clear()
        kw = {} if flag is None else {"trust_remote_code": flag}
        h = load_model(tiny_model_dirs["gpt2"], backend=backend, device="cpu", **kw)
        assert h.logits(_tokens(1, 4)).shape == (1, 4, TINY_VOCAB)
        ours = list(seen)  # TransformerLens forwards the boot's value to its own from_pretrained calls
        names = {s[0] for s in ours}
        assert {"AutoConfig.from_pretrained", "AutoTokenizer.from_pretrained"} <= names
        assert ("TransformerBridge.boot_transformers" in names) == (backend == "transformer_lens")
        assert ("AutoModelForCausalLM.from_pretrained" in names) == (backend != "transformer_lens")
        assert {v for _, v in ours} == {bool(flag)}, seen
    with pytest.raises(ConfigError) as exc:
        load_model(tiny_model_dirs["gpt2"], backend=backend, device="cpu", trust_remote_code="no")
    assert "trust_remote_code must be True or False, got 'no'" in _one_line(exc)


def test_cli_probe_has_an_explicit_trust_remote_code_flag():
    from geoprobe.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["probe", "m", "--out", "o"]).trust_remote_code is False
    assert parser.parse_args(["probe", "m", "--out", "o", "--trust-remote-code"]).trust_remote_code is True


# ------------------------------------------------------------------ GGUF conversion cache
def write_tiny_llama_gguf(path, seed: int = 0, V: int = 32, d: int = 16, L: int = 2, H: int = 2, ff: int = 32):
    """A tiny float32 Llama GGUF file (random weights, a byte-level BPE vocabulary), written with ``gguf``."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(H)
    w.add_head_count_kv(H)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(d // H)
    w.add_vocab_size(V)
    toks = (["<s>", "</s>"] + [chr(ord("a") + i) for i in range(26)] + [" ", "ab", "cd", "ef"])[:V]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types([1] * len(toks))
    w.add_token_merges(["a b", "c d", "e f"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)

    def rand(name, *shape):
        w.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))

    rand("token_embd.weight", V, d)
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        for m in ("q", "k", "v", "output"):
            rand(f"blk.{i}.attn_{m}.weight", d, d)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        rand(f"blk.{i}.ffn_gate.weight", ff, d)
        rand(f"blk.{i}.ffn_up.weight", ff, d)
        rand(f"blk.{i}.ffn_down.weight", d, ff)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    rand("output.weight", V, d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _corrupt_weights(folder):
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2:] = b"\x00" * (len(data) - len(data) // 2)  # zero the second half of the tensors
    f.write_bytes(bytes(data))


def _truncate_weights(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])


def _drop_record(folder):
    (folder / "geoprobe-gguf.json").unlink()


def _old_record(folder):  # what geoprobe wrote before conversion records listed their files
    import json

    meta = json.loads((folder / "geoprobe-gguf.json").read_text())
    meta.pop("files")
    (folder / "geoprobe-gguf.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_gguf_cache_is_rebuilt_not_blamed_on_the_gguf(backend, tmp_path):
    """Known answer: after each kind of damage to the cached conversion, loading warns, rebuilds it, and gives
    bit-identical logits to the first load; the .gguf is blamed only when it is itself unreadable."""
    from geoprobe.backends import ModelLoadError, load_model
    from geoprobe.backends.gguf import cached_conversion

    gguf_file = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    cache = tmp_path / "cache"
    toks = torch.tensor([[0, 3, 4, 5, 6], [0, 9, 8, 7, 2]])
    h = load_model(gguf_file, backend=backend, device="cpu", cache_dir=cache)
    assert h.info.source == "gguf" and h.info.family == "llama" and h.info.n_layers == 2
    ref = h.logits(toks)
    folder = next((cache / "gguf").glob("tiny-*"))
    meta, why = cached_conversion(folder, cache)
    assert meta is not None and why == "" and {"config.json", "model.safetensors"} <= set(meta["files"])
    assert torch.equal(load_model(gguf_file, backend=backend, device="cpu", cache_dir=cache).logits(toks), ref)
    (cache / "gguf" / "hashes.json").write_text("[]")  # a damaged hash memo is only a cache too
    damages = [(_corrupt_weights, "model.safetensors is missing or differs"),
               (_truncate_weights, "model.safetensors is missing or differs"),
               (_drop_record, "geoprobe-gguf.json is missing or unreadable"),
               (_old_record, "lists no files (written by an older geoprobe)")]
    for damage, reason in damages if backend == "torch" else damages[:1]:  # the cache is backend-independent
        damage(folder)
        assert cached_conversion(folder, cache)[0] is None
        with pytest.warns(UserWarning, match="cached conversion .* is damaged") as rec:
            again = load_model(gguf_file, backend=backend, device="cpu", cache_dir=cache)
        assert reason in str(rec[0].message), damage.__name__
        assert torch.equal(again.logits(toks), ref), damage.__name__
        assert cached_conversion(folder, cache)[0] is not None
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError) as exc:
        load_model(bad, backend=backend, device="cpu", cache_dir=cache)
    assert _one_line(exc).startswith(f"cannot read GGUF file {bad.resolve()}")
