"""Model objects the user already holds: used as they are (no reload), same activations as load_model(folder)."""

import pytest
import torch

import geoprobe as gp
from geoprobe.backends import load_model
from geoprobe.probes.suite import run_probes

SITES = ["resid_pre", "rot_q", "rot_k", "q", "k", "v", "pattern", "z", "attn_out", "resid_post", "logits"]
TEXTS = ["w3 w4 w5 w9 w11", "w7 w8", "w20 w21 w22 w23 w24 w25 w30"]


@pytest.fixture()
def no_reload(monkeypatch):
    """Any call that would load weights again fails the test."""
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    def boom(*a, **k):
        raise AssertionError("geoprobe reloaded a model it was handed")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", boom)


def _same(a, b, sites, tol=1e-5):
    for s in sites:
        for layer in ([None] if s == "logits" else [0, 1]):
            x, y = (a[s] if layer is None else a[s, layer]), (b[s] if layer is None else b[s, layer])
            assert x.shape == y.shape, s
            assert (x - y).abs().max() <= tol * max(1.0, float(y.abs().max())), (s, layer)


@pytest.fixture(scope="module")
def reference(tiny_model_dirs):
    """Activations from load_model(folder) on each backend (loaded before any patching)."""
    folder = tiny_model_dirs["llama"]
    out = {}
    for backend in ("torch", "nnsight", "transformer_lens"):
        h = load_model(folder, backend=backend, device="cpu")
        out["tokens"] = h.tokenize(TEXTS)
        out[backend] = h.run(*out["tokens"], sites=SITES)
    return out


@pytest.fixture(scope="module")
def objects(tiny_model_dirs):
    from nnsight.modeling.transformers import TransformersModel
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(tiny_model_dirs["llama"])
    tok = AutoTokenizer.from_pretrained(folder)
    return {
        "hf": AutoModelForCausalLM.from_pretrained(folder).eval(),
        "nnsight": TransformersModel(AutoModelForCausalLM.from_pretrained(folder).eval(), tokenizer=tok),
        "bridge": TransformerBridge.boot_transformers(folder, device="cpu", tokenizer=tok),
        "tok": tok,
    }


@pytest.mark.parametrize("kind,backend", [("hf", "torch"), ("hf", "nnsight"), ("nnsight", "nnsight"),
                                          ("bridge", "transformer_lens")])
def test_each_object_gives_the_folder_activations(objects, reference, kind, backend, no_reload):
    obj = objects[kind]
    kw = {"tokenizer": objects["tok"]} if kind == "hf" else {}
    h = load_model(obj, backend=backend if kind == "hf" else None, **kw)
    assert h.backend == backend
    if kind == "bridge":
        assert h.bridge is obj
    elif kind == "nnsight":
        assert h.nn is obj and h.hf_model is obj._module
    else:
        assert h.hf_model is obj
    _same(h.run(*reference["tokens"], sites=SITES), reference[backend], SITES)  # the same ids in
    assert load_model(h) is h  # a handle passes straight through


def test_objects_refuse_silent_moves_and_rewiring(objects):
    with pytest.raises(gp.GeoprobeError, match="needs its tokenizer"):
        load_model(objects["hf"])
    with pytest.raises(gp.GeoprobeError, match="rewiring it in place"):
        load_model(objects["hf"], tokenizer=objects["tok"], backend="transformer_lens")
    with pytest.raises(gp.GeoprobeError, match="holds float32 weights, not bfloat16"):
        load_model(objects["hf"], tokenizer=objects["tok"], dtype="bfloat16")
    with pytest.raises(gp.GeoprobeError, match="cannot load a list"):
        load_model([1, 2])


PROMPTS = [" ".join(f"w{3 + (i * 5 + j * 3) % 40}" for j in range(3 + i % 6)) for i in range(12)]
OPTS = gp.ProbeOptions(n_boot=30)
PROBES = ["key_orthogonality", "qk_alignment", "attention_focusing", "value_manifold"]


@pytest.fixture(scope="module")
def folder_report(tiny_model_dirs):
    return run_probes(str(tiny_model_dirs["llama"]), PROBES, OPTS, prompts=PROMPTS, device="cpu")


@pytest.mark.parametrize("kind", ["bridge", "nnsight", "hf"])
def test_run_probes_on_an_object_matches_the_folder(objects, folder_report, kind, no_reload):
    # the folder's tokenizer for every object (a bridge's own tokenizer prepends BOS: TransformerLens' default)
    kw = {"tokenizer": objects["tok"]} if kind in ("hf", "bridge") else {}
    got = run_probes(objects[kind], PROBES, OPTS, prompts=PROMPTS, **kw)
    a, b = got.rows, folder_report.rows
    assert list(a["statistic"]) == list(b["statistic"]) and list(a["hook"]) == list(b["hook"])
    diff = (a["value"] - b["value"]).abs().max()
    assert diff < 1e-4, diff  # bridge: same kernels; nnsight/torch: HF eager vs the bridge's attention
    assert got.summary["verdict"]["label"] == folder_report.summary["verdict"]["label"]


def test_a_bridge_object_tokenizes_with_its_own_tokenizer_unless_given_one(objects, no_reload):
    assert load_model(objects["bridge"]).tokenize(["w3 w4"])[0].tolist() == [[2, 3, 4]]  # BOS = 2 prepended
    assert load_model(objects["bridge"], tokenizer=objects["tok"]).tokenize(["w3 w4"])[0].tolist() == [[3, 4]]


def test_run_with_cache_is_keyed_by_transformer_lens_hook_names(objects, no_reload):
    h = load_model(objects["bridge"])
    toks, mask = h.tokenize(TEXTS)
    cache = h.run_with_cache(toks, mask, names_filter=lambda n: n.endswith(("hook_rot_k", "hook_resid_post")))
    assert sorted(cache) == ["blocks.0.attn.hook_rot_k", "blocks.0.hook_resid_post", "blocks.1.attn.hook_rot_k",
                             "blocks.1.hook_resid_post"]
    # the bridge's own cache under the same names (TransformerLens computes these itself)
    _, tl_cache = objects["bridge"].run_with_cache(toks, attention_mask=mask)
    for name in cache:
        if name in tl_cache:
            assert (cache[name] - tl_cache[name].float()).abs().max() < 1e-5, name
    assert "blocks.1.hook_resid_post" in tl_cache
    assert torch.equal(cache["rot_k", 1], cache["blocks.1.attn.hook_rot_k"])  # TransformerLens-style lookup
    assert cache.stack("resid_post").shape == (2, *cache["resid_post", 0].shape)
    one = h.run_with_cache(toks, mask, names_filter="blocks.1.attn.hook_k")
    assert list(one) == ["blocks.1.attn.hook_k"]
    with pytest.raises(gp.GeoprobeError, match="not a hook name geoprobe captures"):
        h.run_with_cache(toks, mask, names_filter=["blocks.1.attn.hook_attn_scores"])


def test_dtype_auto_keeps_the_checkpoint_dtype(tmp_path):
    import transformers as tf
    from conftest import _tiny_config, build_word_tokenizer

    model = tf.AutoModelForCausalLM.from_config(_tiny_config("llama")).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "m")
    build_word_tokenizer(tmp_path / "m")
    assert load_model(tmp_path / "m", backend="torch", device="cpu", dtype="auto").dtype == torch.bfloat16
    h = load_model(tmp_path / "m", backend="torch", device="cpu")
    assert h.dtype == torch.float32 and next(h.hf_model.parameters()).dtype == torch.float32
