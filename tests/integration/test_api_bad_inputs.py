"""Bad inputs through the library API: one meaning of a layer index, one-line errors before any forward pass.

Every case runs on the three backends (TransformerLens bridge, nnsight, plain torch hooks) over the tiny
models of ``conftest.py``; a known answer is either an exact equality between two spellings of the same
request (``-1`` vs ``n_layers - 1``) or a planted bad input whose error must name the offending value.
"""

from __future__ import annotations

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
    }
    for bad in (n, -n - 1, 99):
        for name, make in cases.items():
            with pytest.raises(SiteError) as exc:
                ctx = make(bad)
                if name != "run":
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
