"""SULA prompts for an LLM: Bayes posteriors by brute force, the generative model, readout and the controls."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from geoprobe.errors import ConfigError
from geoprobe.scan import sula


def brute_force_posterior(shown, eps):
    """P(y = first label | shown labels) by enumerating y with the i.i.d. noisy-label likelihood."""
    lik = []
    for y in (0, 1):
        p = 0.5
        for s in shown:
            p *= (1 - eps) if s == y else eps
        lik.append(p)
    return lik[0] / (lik[0] + lik[1])


def h2(p):
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_bayes_posterior_and_entropy_match_brute_force(eps):
    prompts = sula.sula_prompts(eps=eps, seed=2)
    assert Counter(p.k for p in prompts) == {0: 50, 1: 50, 2: 50, 4: 50, 8: 50}
    for p in prompts:
        assert len(p.words) == len(p.shown) == p.k and len(set(p.words)) == p.k
        assert p.m == sum(s == 0 for s in p.shown)
        want = brute_force_posterior(p.shown, eps)
        assert p.p_bayes_l1 == pytest.approx(want, abs=1e-12)
        assert p.h_bayes_bits == pytest.approx(h2(want), abs=1e-9)
    # every label sequence of length 4, not only the sampled ones
    for shown in itertools.product((0, 1), repeat=4):
        p, h = sula.bayes_posterior_l1(sum(s == 0 for s in shown), 4, eps)
        assert p == pytest.approx(brute_force_posterior(shown, eps), abs=1e-12)


def test_prompts_follow_the_generative_model_and_the_expected_entropies():
    big = sula.sula_prompts(ks=(0, 1, 2, 4, 8), n_per_k=3000, seed=0)
    k8 = [p for p in big if p.k == 8]
    agree = np.mean([s == p.hidden for p in k8 for s in p.shown])
    assert abs(agree - 0.9) < 0.01  # 24,000 examples: sd 0.002
    assert abs(np.mean([p.hidden for p in big]) - 0.5) < 0.015
    published = {0: 1.000, 1: 0.469, 2: 0.258, 4: 0.078, 8: 0.008}  # expected Bayes entropy per k
    for k, want in published.items():
        got = np.mean([p.h_bayes_bits for p in big if p.k == k])
        assert got == pytest.approx(want, abs=0.02)


def test_text_format_and_determinism():
    assert sula.format_prompt(("happy", "sad"), (0, 1), (" dax", " wug")) == "happy: dax, sad: wug. test:"
    assert sula.format_prompt((), (), (" dax", " wug")) == "test:"
    a = sula.sula_prompts(seed=4)
    assert a == sula.sula_prompts(seed=4) and a != sula.sula_prompts(seed=5)
    p = a[60]  # k = 1
    assert p.text == f"{p.words[0]}:{p.labels[p.shown[0]]}. test:" and p.id == "sula-main-k1-10"
    with pytest.raises(ConfigError, match="0 < eps < 0.5"):
        sula.sula_prompts(eps=0.5)
    with pytest.raises(ConfigError, match="k = 9 needs 9 distinct carrier words, only 3 given"):
        sula.sula_prompts(ks=(9,), words=("a", "b", "c"))
    with pytest.raises(ConfigError, match="two different non-empty strings"):
        sula.sula_prompts(labels=(" dax", " dax"))


def test_lexical_remap_changes_only_the_label_strings():
    main = sula.sula_prompts(seed=1)
    remap = sula.lexical_remap(main, (" blick", " fep"))
    for a, b in zip(main, remap, strict=True):
        assert (b.condition, b.labels) == ("remap", (" blick", " fep"))
        assert (a.words, a.shown, a.hidden, a.m, a.p_bayes_l1, a.h_bayes_bits) == (
            b.words, b.shown, b.hidden, b.m, b.p_bayes_l1, b.h_bayes_bits)
        assert b.text == a.text.replace(" dax", " blick").replace(" wug", " fep")


def test_shuffled_labels_keep_the_multiset_and_carry_no_evidence():
    main = sula.sula_prompts(seed=1)
    shuf = sula.shuffle_labels(main, seed=9)
    assert shuf == sula.shuffle_labels(main, seed=9)
    for k in sula.SULA_KS:
        a = [p for p in main if p.k == k]
        b = [p for p in shuf if p.k == k]
        for j in range(k):  # every slot keeps its multiset, hence the whole group does
            assert Counter(p.shown[j] for p in a) == Counter(p.shown[j] for p in b)
        for i, p in enumerate(b):
            assert p.words == a[i].words and p.hidden == a[i].hidden and p.condition == "shuffled"
            assert len(p.sources) == k and all(src != i for src in p.sources)  # nothing stays home
            assert all(p.shown[j] == a[p.sources[j]].shown[j] for j in range(k))
            assert p.m == sum(s == 0 for s in p.shown)
            assert (p.p_bayes_l1, p.h_bayes_bits) == (0.5, 1.0)
            assert p.text == sula.format_prompt(p.words, p.shown, p.labels)
        if k == 0:
            assert [p.text for p in b] == [p.text for p in a]
    assert sum(a.shown != b.shown for a, b in zip(main, shuf, strict=True)) > 100
    with pytest.raises(ConfigError, match="at least 2 prompts with k = 2"):
        sula.shuffle_labels(sula.sula_prompts(ks=(2,), n_per_k=1))


def test_evidence_ablation_removes_the_examples_or_their_labels():
    main = sula.sula_prompts(seed=3)
    gone = sula.ablate_evidence(main)
    assert {p.text for p in gone} == {"test:"}
    assert all((p.p_bayes_l1, p.h_bayes_bits, p.shown, p.condition) == (0.5, 1.0, (), "ablation") for p in gone)
    words = sula.ablate_evidence(main, mode="labels")
    for a, b in zip(main, words, strict=True):
        assert b.text == (", ".join(a.words) + ". test:" if a.k else "test:")
        assert " dax" not in b.text and " wug" not in b.text and b.h_bayes_bits == 1.0
    with pytest.raises(ConfigError, match="unknown evidence ablation 'mask'; valid: remove, labels"):
        sula.ablate_evidence(main, mode="mask")
    allc = sula.all_conditions(seed=0)
    assert Counter(p.condition for p in allc) == {"main": 250, "remap": 250, "shuffled": 250, "ablation": 250}
    assert len({p.id for p in allc}) == 1000


def test_label_pair_readout_renormalises_and_reports_the_discarded_mass():
    probs = torch.tensor([[0.3, 0.1, 0.2, 0.2, 0.1, 0.1], [0.05, 0.05, 0.9, 0.0, 0.0, 0.0]])
    r = sula.label_pair_readout(torch.log(probs.clamp_min(1e-30)) + 3.0, (0, 1))  # logits up to a constant
    assert r.p_l1 == pytest.approx([0.75, 0.5])
    assert r.discarded_mass == pytest.approx([0.6, 0.9])
    assert r.h_model_bits == pytest.approx([h2(0.75), 1.0])
    assert sula.mae_bits([0.1, 0.5, 1.0], [0.2, 0.5, 0.0]) == pytest.approx(1.1 / 3)
    with pytest.raises(ConfigError, match="equal-length"):
        sula.mae_bits([0.1], [0.1, 0.2])


def test_summarize_groups_by_condition_and_k():
    prompts = sula.all_conditions(seed=0, ks=(0, 2), n_per_k=3)
    n = len(prompts)
    h_model = np.linspace(0.0, 1.0, n)
    r = sula.PairReadout(np.full(n, 0.5), h_model, np.full(n, 0.25))
    rows = sula.summarize(prompts, r)
    assert [(row["condition"], row["k"], row["n"]) for row in rows] == [
        (c, k, 3) for c in ("main", "remap", "shuffled", "ablation") for k in (0, 2)]
    idx = [i for i, p in enumerate(prompts) if p.condition == "main" and p.k == 2]
    want = np.mean([abs(h_model[i] - prompts[i].h_bayes_bits) for i in idx])
    assert rows[1]["mae_bits"] == pytest.approx(want) and rows[1]["discarded_mass"] == pytest.approx(0.25)


class WordTokenizer:
    """Whitespace tokenizer with a fixed vocabulary (a stand-in for a HF tokenizer's __call__)."""

    vocab = {"test:": 1, " dax": 2, " wug": 3, " fep": 4}
    unk_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        ids = []
        for i, w in enumerate(text.split(" ")):
            ids += [self.vocab.get(w if i == 0 else " " + w, 0)]
        return {"input_ids": ids}


def test_label_token_ids_requires_one_token_per_label():
    tok = WordTokenizer()
    assert sula.label_token_ids(tok, (" dax", " wug")) == (2, 3)
    with pytest.raises(ConfigError, match=r"label ' fep zork' is not a single known token after 'test:' .*\(2 tokens\)"):
        sula.label_token_ids(tok, (" dax", " fep zork"))
    with pytest.raises(ConfigError, match=r"label ' zork' is not a single known token .*\(1 tokens\)"):  # unk
        sula.label_token_ids(tok, (" dax", " zork"))


def test_choose_label_pairs_keeps_single_token_candidates_in_order():
    tok = WordTokenizer()  # knows " dax", " wug", " fep" only
    assert sula.choose_label_pairs(tok, 1) == [(" dax", " wug")]
    assert sula.choose_label_pairs(tok, 1, candidates=(" zork", " fep", " dax")) == [(" fep", " dax")]
    with pytest.raises(ConfigError, match=r"only 3 of the 28 candidate labels are single tokens .*need 4"):
        sula.choose_label_pairs(tok, 2)


def test_sula_records_round_trip(tmp_path):
    from geoprobe.scan.records import read_prompts_jsonl, write_prompts_jsonl

    prompts = sula.all_conditions(seed=0, ks=(0, 2), n_per_k=2)
    n = len(prompts)
    r = sula.PairReadout(np.linspace(0.1, 0.9, n), np.full(n, 0.5), np.full(n, 0.2))
    back = read_prompts_jsonl(write_prompts_jsonl(tmp_path / "sula.jsonl", sula.to_records(prompts, r)))
    assert [b.id for b in back] == [p.id for p in prompts] and [b.text for b in back] == [p.text for p in prompts]
    for b, p, q in zip(back, prompts, r.p_l1, strict=True):
        assert (b.pool, b.domain, b.selected) == ("sula", "sula", True)
        assert b.extra["condition"] == p.condition and b.extra["k"] == p.k
        assert b.extra["shown"] == list(p.shown) and b.extra["labels"] == list(p.labels)
        assert b.extra["h_bayes_bits"] == p.h_bayes_bits and b.extra["p_model_l1"] == pytest.approx(q)
        # anyone can recompute the Bayes entropy from the record alone
        if p.condition in ("main", "remap"):
            assert sula.bayes_posterior_l1(b.extra["m"], b.extra["k"])[1] == pytest.approx(b.extra["h_bayes_bits"])
        else:
            assert b.extra["h_bayes_bits"] == 1.0


def test_remap_to_the_swapped_pair_is_the_label_swap_control():
    main = sula.sula_prompts(seed=6, ks=(4,), n_per_k=20)
    swap = sula.lexical_remap(main, (" wug", " dax"))
    for a, b in zip(main, swap, strict=True):
        assert b.text == a.text.replace(" dax", "\0").replace(" wug", " dax").replace("\0", " wug")
        assert b.p_bayes_l1 == a.p_bayes_l1  # P(first label of the pair), now " wug"
