"""A hub id in the local Hugging Face cache (offline): the cached revision loads, a revision that does not exist
is one line naming the model and the revision, exit code 2, and nothing is written."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def hub_cache(tiny_model_dirs, tmp_path, monkeypatch):
    """A Hugging Face cache holding ``geoprobe-test/tiny-llama`` at ``main`` (the tiny Llama's files)."""
    import huggingface_hub.constants as hc

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--geoprobe-test--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_model_dirs["llama"], repo / "snapshots" / commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return commit


def test_cached_revision_resolves_and_a_missing_one_is_one_line(hub_cache, tmp_path, capsys):
    from geoprobe.backends.sources import resolve_source
    from geoprobe.cli import main

    src = resolve_source("geoprobe-test/tiny-llama")
    assert src.kind == "hub" and src.detail["commit"] == hub_cache and (src.model_dir / "config.json").is_file()
    capsys.readouterr()
    out = tmp_path / "out"
    rc = main(["scan", "geoprobe-test/tiny-llama", "--revision", "v9.9", "--quiet", "--no-sula", "--n", "10",
               "--pool-size", "40", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0] == ("geoprobe: error: model 'geoprobe-test/tiny-llama' (revision v9.9) is not in the local "
                      "Hugging Face cache and HF_HUB_OFFLINE is set; download it once online (gated models: "
                      "huggingface-cli login first), or pass a local folder, GGUF file or geoprobe run")
    assert not out.exists() and not list(tmp_path.glob(".out*"))
