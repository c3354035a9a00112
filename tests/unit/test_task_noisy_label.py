"""SULA and Beta-Bernoulli coin flips against independent computations."""

import math

import pytest
import torch
from scipy import integrate, stats

from geoprobe.errors import ConfigError
from geoprobe.tasks import make_generator, make_task
from geoprobe.tasks.noisy_label import sula_expected_entropy


def test_sula_expected_entropies_match_the_paper():
    got = [sula_expected_entropy(k) for k in (0, 1, 2, 4, 8)]
    assert got == pytest.approx([1.000, 0.469, 0.258, 0.078, 0.008], abs=6e-4)


def test_sula_predictive_by_direct_bayes_rule():
    task = make_task("sula", K=6)
    batch = task.sample(40, make_generator(0, "train"))
    L1 = task.n_words
    for i in range(40):
        shown = batch.tokens[i, 1::2].tolist()
        for j in range(6):
            like1 = math.prod(0.9 if s == L1 else 0.1 for s in shown[:j])  # y = L1
            like2 = math.prod(0.1 if s == L1 else 0.9 for s in shown[:j])  # y = L2
            post = like1 / (like1 + like2)
            pred = 0.9 * post + 0.1 * (1 - post)
            assert float(batch.target_probs[i, 2 * j, 0]) == pytest.approx(pred, abs=1e-6)
            assert float(batch.extras["posterior_L1"][i, 2 * j]) == pytest.approx(post, abs=1e-6)
            assert int(batch.labels[i, 2 * j]) == (0 if shown[j] == L1 else 1)


def test_sula_noise_rate_and_label_consistency():
    task = make_task("sula", K=8)
    batch = task.sample(4000, make_generator(1, "train"))
    shown = batch.labels[batch.loss_mask].view(4000, 8)
    wrong = (shown != batch.extras["label"][:, None]).float().mean()
    assert float(wrong) == pytest.approx(0.1, abs=0.01)


def test_coinflip_predictive_is_the_beta_posterior_mean():
    task = make_task("coinflip", n=6, a=2.0, b=3.0)
    batch = task.sample(10, make_generator(0, "train"))
    for i in range(10):
        flips = batch.tokens[i, 1:].tolist()
        for t in range(6):
            h = sum(f == 1 for f in flips[:t])
            post = stats.beta(2.0 + h, 3.0 + t - h)
            mean, _ = integrate.quad(lambda p, post=post: p * post.pdf(p), 0, 1)
            assert float(batch.target_probs[i, t, 0]) == pytest.approx(mean, abs=1e-6)


def test_coinflip_is_seeded_and_bias_distribution_is_beta():
    task = make_task("coinflip", n=4, a=2.0, b=5.0)
    a = task.sample(5000, make_generator(3, "train"))
    b = task.sample(5000, make_generator(3, "train"))
    assert torch.equal(a.tokens, b.tokens)
    p = a.extras["p"]
    assert float(p.mean()) == pytest.approx(2 / 7, abs=0.01)


@pytest.mark.parametrize("name,params,needle", [("sula", {"eps": 0.6}, "eps < 0.5"),
                                                ("sula", {"K": 0}, "K >= 1"), ("coinflip", {"a": 0}, "a > 0")])
def test_bad_parameters(name, params, needle):
    with pytest.raises(ConfigError, match=needle):
        make_task(name, **params)
