"""load_model: run folders, local folders, hub ids (offline/missing: fast one-line errors), bad input."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from geoprobe.backends import (
    ModelLoadError,
    ModelNotFoundError,
    OfflineModelError,
    UnsupportedModelError,
    load_model,
)
from geoprobe.errors import GeoprobeError


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg, repr(msg)
    return msg


def test_run_folder_loads_as_gpt2_with_manifest_and_tokenizer(tunnel_run_dir):
    h = load_model(tunnel_run_dir, device="cpu")
    i = h.info
    assert (i.family, i.n_layers, i.n_heads, i.n_kv_heads, i.d_model, i.d_head) == ("gpt2", 2, 4, 4, 32, 8)
    assert i.positional == "learned" and i.has_attention and i.vocab_size == 48 and i.source == "run"
    assert h.manifest["kind"] == "geoprobe-tunnel-run" and i.source_detail["arch"] == "transformer"
    toks, mask = h.tokenize(["w3 w4 w5", "w6"], padding_side="left")
    assert toks.tolist() == [[3, 4, 5], [0, 0, 6]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    logits = h.logits(toks, mask)
    assert logits.shape == (2, 3, 48) and logits.dtype == torch.float32


def test_local_folder_and_backends_share_info(tiny_model_dirs):
    infos = {be: load_model(tiny_model_dirs["llama"], backend=be, device="cpu").info
             for be in ("transformer_lens", "torch")}
    assert infos["transformer_lens"] == infos["torch"]
    i = infos["torch"]
    assert (i.family, i.n_heads, i.n_kv_heads, i.positional, i.source) == ("llama", 4, 2, "rotary", "local")
    assert i.kv_group_size == 2 and i.value_dim == 16


def test_offline_hub_id_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(OfflineModelError) as exc:
        load_model("geoprobe-test/definitely-not-cached-model", device="cpu")
    assert time.perf_counter() - t0 < 5
    msg = _one_line(exc.value)
    assert "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg
    assert isinstance(exc.value, GeoprobeError)


def test_unreachable_hub_fails_fast_without_retrying(monkeypatch):
    """Online mode with no route to the hub: one quick request, then a clear error (no 46 s retries)."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(OfflineModelError) as exc:
        load_model("geoprobe-test/not-a-model", revision="main", device="cpu")
    assert time.perf_counter() - t0 < 15
    assert "cannot reach the Hugging Face hub" in _one_line(exc.value)


def test_missing_paths_and_bad_folders(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        load_model(tmp_path / "nope", device="cpu")
    with pytest.raises(ModelNotFoundError):
        load_model("./relative/missing.gguf", device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="neither a geoprobe run"):
        load_model(empty, device="cpu")
    txt = tmp_path / "weights.bin"
    txt.write_text("x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_model(txt, device="cpu")
    with pytest.raises(ModelLoadError, match="valid choices"):
        load_model(empty, backend="jax")
    with pytest.raises(ModelLoadError, match="revision"):
        load_model(empty, revision="main")


def test_bad_manifests_and_unsupported_architectures(tmp_path, tiny_model_dirs):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="corrupted"):
        load_model(run, device="cpu")
    (run / "manifest.json").write_text(json.dumps({"kind": "something-else"}))
    with pytest.raises(ModelLoadError, match="not a geoprobe"):
        load_model(run, device="cpu")
    (run / "manifest.json").write_text(json.dumps({"kind": "geoprobe-tunnel-run", "arch": "gru"}))
    (run / "model").mkdir()
    with pytest.raises(UnsupportedModelError, match="plain-torch 'gru' model"):
        load_model(run, device="cpu")
    (run / "manifest.json").write_text(json.dumps({"kind": "geoprobe-tunnel-run", "arch": "lstm"}))
    from geoprobe.errors import CheckpointError

    with pytest.raises(CheckpointError, match="geoprobe_config.json missing"):  # registered arch, empty folder
        load_model(run, device="cpu")
    odd = tmp_path / "odd"
    shutil.copytree(tiny_model_dirs["gpt2"], odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["model_type"] = "bert"
    (odd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="not supported"):
        load_model(odd, device="cpu")


def test_gguf_hash_is_memoised_by_size_and_mtime(tmp_path):
    from geoprobe.backends.gguf import file_sha256

    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc")
    h1 = file_sha256(f, tmp_path / "cache")
    memo = json.loads((tmp_path / "cache" / "gguf" / "hashes.json").read_text())
    assert list(memo.values()) == [h1] and h1.startswith("ba7816bf")  # sha256("abc")
    f.write_bytes(b"abcd")  # new size -> new key
    assert file_sha256(f, tmp_path / "cache") != h1


@pytest.mark.parametrize("error, expected, match", [
    ("GatedRepoError", "GatedModelError", "gated"),
    ("RevisionNotFoundError", "ModelNotFoundError", "no revision"),
    ("RepositoryNotFoundError", "ModelNotFoundError", "no model"),
])
def test_hub_errors_are_told_apart(monkeypatch, error, expected, match):
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    import geoprobe.backends as gb

    def fake_model_info(self, repo_id, **kwargs):
        cls = getattr(hf_errors, error)
        exc = cls.__new__(cls)
        Exception.__init__(exc, "404")
        raise exc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", fake_model_info)
    with pytest.raises(getattr(gb, expected), match=match) as exc:
        load_model("geoprobe-test/some-model", revision="v1", device="cpu")
    _one_line(exc.value)
