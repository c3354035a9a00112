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


def _hb(p):
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) if 0 < p < 1 else 0.0


def test_sula_calibration_scores_predictive_and_latent_posterior_separately():
    from geoprobe.calibration import calibration_from_log_probs

    eps = 0.1
    task = make_task("sula", K=4, eps=eps)
    batch = task.sample(64, make_generator(5, "train"))
    n_words = task.n_words
    post = torch.zeros(64, 8)
    h_lat, h_pred = [], []
    for i in range(64):  # brute force from the tokens: Bayes rule over y in {L1, L2}
        votes = [int(batch.tokens[i, 2 * j + 1]) - n_words for j in range(4)]  # 0 = L1
        for j in range(4):
            lik1 = math.prod((1 - eps) if v == 0 else eps for v in votes[:j])
            lik2 = math.prod(eps if v == 0 else (1 - eps) for v in votes[:j])
            p = lik1 / (lik1 + lik2)
            post[i, 2 * j] = p
            h_lat.append(_hb(p))
            h_pred.append(_hb((1 - eps) * p + eps * (1 - p)))
    assert batch.extras["latent_posterior"][:, 0::2, 0] == pytest.approx(post[:, 0::2], abs=1e-6)
    assert batch.target_probs[0, 2, 0] == pytest.approx(
        (1 - eps) * float(post[0, 2]) + eps * (1 - float(post[0, 2])), abs=1e-6)
    gap = sum(abs(a - b) for a, b in zip(h_lat, h_pred, strict=True)) / len(h_lat)
    assert gap > 0.2  # the predictive never goes below H_b(eps) = 0.469 bits; the posterior does
    lat = batch.extras["latent_posterior"].clamp_min(1e-30).log()
    res = calibration_from_log_probs(lat, batch)  # a model that outputs the hidden-label posterior
    assert res.latent_entropy_mae_bits == pytest.approx(0.0, abs=1e-5)
    assert res.entropy_mae_bits == pytest.approx(gap, abs=1e-5)
    res = calibration_from_log_probs(batch.target_probs.clamp_min(1e-30).log(), batch)  # outputs the predictive
    assert res.entropy_mae_bits == pytest.approx(0.0, abs=1e-5)
    assert res.latent_entropy_mae_bits == pytest.approx(gap, abs=1e-5)
    assert res.to_dict()["latent_entropy_mae_bits"] == res.latent_entropy_mae_bits
    assert res.per_position["latent_entropy_bits"][0] == pytest.approx(1.0, abs=1e-6)  # k = 0: no evidence


def test_tasks_without_a_latent_posterior_report_none():
    from geoprobe.calibration import calibration_from_log_probs

    batch = make_task("coinflip", n=4).sample(8, make_generator(0, "train"))
    res = calibration_from_log_probs(batch.target_probs.clamp_min(1e-30).log(), batch)
    assert res.latent_entropy_mae_bits is None and "latent_entropy_bits" not in res.per_position
