"""Paper II routing law and value update against autograd; EM-like parameter groups."""

import pytest
import torch

from geoprobe.errors import ConfigError
from geoprobe.gradients import (
    autograd_reference,
    em_param_groups,
    first_order_loss_change,
    routing_gradient,
    routing_law_residual,
    value_gradient,
    value_update,
)


def _tensors(seed=0, causal=False):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(2, 7, 7, generator=g, dtype=torch.float64) * 2
    if causal:
        s = s.masked_fill(~torch.tril(torch.ones(7, 7, dtype=torch.bool)), float("-inf"))
    v = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    u = torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    return s, v, u


@pytest.mark.parametrize("causal", [False, True])
def test_routing_law_matches_autograd(causal):
    s, v, u = _tensors(causal=causal)
    gs, gv = autograd_reference(s, v, u)
    assert torch.allclose(routing_gradient(s, v, u), gs, atol=1e-6, rtol=0)
    assert torch.allclose(value_gradient(s, u), gv, atol=1e-6, rtol=0)
    res = routing_law_residual(s, v, u)
    assert res["scores"] < 1e-6 and res["values"] < 1e-6


def test_value_update_decreases_loss_to_first_order():
    s, v, u = _tensors(1)
    lr = 1e-4
    a = torch.softmax(s, -1)
    loss = lambda vals: (a @ vals * u).sum()  # noqa: E731  linear loss with dL/do = u
    dv = value_update(s, u, lr)
    assert torch.allclose(dv, -lr * a.transpose(-1, -2) @ u)
    change = loss(v + dv) - loss(v)
    assert float(change) == pytest.approx(float(first_order_loss_change(s, u, lr).sum()), rel=1e-9)
    assert float(change) <= 0
    # dominant query: one query with all weight on key j gives -lr a^2 ||u||^2
    s1 = torch.full((1, 3), -1e9, dtype=torch.float64)
    s1[0, 1] = 0.0
    u1 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert float(first_order_loss_change(s1, u1, lr)) == pytest.approx(-lr * 1.0 * 5.0)


def test_em_param_groups_toy_module():
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W_Q = torch.nn.Linear(4, 3)
            self.W_K = torch.nn.Linear(4, 3)
            self.W_V = torch.nn.Linear(4, 3)
            self.frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)

    m = Head()
    groups = em_param_groups(m, lambda n, p: n.startswith("W_V"), lr=0.01)
    by = {g["name"]: g for g in groups}
    assert by["value"]["lr"] == pytest.approx(0.1) and by["other"]["lr"] == pytest.approx(0.01)
    assert {id(p) for p in by["value"]["params"]} == {id(m.W_V.weight), id(m.W_V.bias)}
    assert len(by["other"]["params"]) == 4
    opt = torch.optim.SGD(groups, lr=0.01)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.1])
    with pytest.raises(ConfigError):
        em_param_groups(m, lambda n, p: False, lr=0.01)
