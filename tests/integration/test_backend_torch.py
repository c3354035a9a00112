"""Plain-torch wind tunnels (LSTM/MLP) plug into the same API through TorchHooksHandle + TORCH_RUN_LOADERS."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from geoprobe.backends import TORCH_RUN_LOADERS, ModelInfo, SiteError, load_model
from geoprobe.backends.torch_hooks import TorchHooksHandle


class ToyLSTM(nn.Module):
    def __init__(self, vocab: int = 12, d: int = 16, n_layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(nn.LSTM(d, d, batch_first=True) for _ in range(n_layers))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for lstm in self.layers:
            x = x + lstm(x)[0]
        return self.head(x)


class Residual(nn.Module):  # a named submodule whose output is resid_post
    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lstm(x)[0]


def make_handle(model: ToyLSTM) -> TorchHooksHandle:
    blocks = nn.ModuleList(Residual(lstm) for lstm in model.layers)
    model.blocks = blocks

    def forward(m: ToyLSTM, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = m.embed(tokens)
        for blk in m.blocks:
            x = blk(x)
        return m.head(x)

    info = ModelInfo(family="lstm", n_layers=2, n_heads=0, n_kv_heads=0, d_model=16, d_head=0, vocab_size=12,
                     has_attention=False, positional="none", source="module")
    return TorchHooksHandle(model, info, forward=forward, block=lambda i: blocks[i], sites={
        "resid_pre": lambda i: (blocks[i], "input"),
        "resid_post": lambda i: (blocks[i], "output"),
    })


def test_torch_hooks_handle_sites_stop_and_bypass():
    torch.manual_seed(0)
    model = ToyLSTM()
    h = make_handle(model)
    toks = torch.randint(0, 12, (3, 7))
    acts = h.run(toks, sites=["resid_pre", "resid_post", "logits"])
    assert torch.allclose(acts["logits"], model(toks), atol=1e-6)
    assert torch.equal(acts["resid_post", 0], acts["resid_pre", 1])
    early = h.run(toks, sites=["resid_post"], layers=[0])
    assert torch.equal(early["resid_post", 0], acts["resid_post", 0])
    before = h.logits(toks)
    with h.bypass_layers(1):
        a = h.run(toks, sites=["resid_pre", "resid_post"], layers=[1])
        assert torch.equal(a["resid_pre", 1], a["resid_post", 1])
    assert torch.equal(h.logits(toks), before)
    with pytest.raises(SiteError):
        h.run(toks, sites=["rot_k"])


def test_run_folder_with_a_registered_torch_loader(tmp_path):
    run = tmp_path / "lstm_run"
    (run / "model").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"kind": "geoprobe-tunnel-run", "arch": "toy-lstm",
                                                   "task": {"name": "bijection", "config": {}}}))
    torch.manual_seed(0)
    torch.save(ToyLSTM().state_dict(), run / "model" / "weights.pt")

    def loader(run_dir, manifest, device, dtype):
        m = ToyLSTM()
        m.load_state_dict(torch.load(run_dir / "model" / "weights.pt"))
        h = make_handle(m.to(device, dtype))
        h.manifest = manifest
        return h

    TORCH_RUN_LOADERS.register("toy-lstm", loader)
    try:
        h = load_model(run, device="cpu")
        assert h.info.family == "lstm" and h.manifest["arch"] == "toy-lstm"
        assert h.run(torch.randint(0, 12, (2, 5)), sites=["resid_post"], positions="final")["resid_post", 1
                                                                                           ].shape == (2, 16)
    finally:
        TORCH_RUN_LOADERS._items.pop("toy-lstm")
