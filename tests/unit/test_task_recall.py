"""Associative recall: answers checked by scanning the tokens, layout, validation."""

import pytest
import torch

from geoprobe.errors import ConfigError
from geoprobe.tasks import make_generator, make_task
from geoprobe.tasks.base import IGNORE_INDEX


@pytest.mark.parametrize("params", [{}, {"N": 3, "fillers": 0, "queries": 3}, {"N": 5, "n_keys": 5,
                                                                                 "n_values": 9, "queries": 1}])
def test_answer_is_the_value_stored_with_the_query_key(params):
    task = make_task("recall", **params)
    batch = task.sample(64, make_generator(0, "train"))
    names = task.token_names()
    for i in range(64):
        toks = [names[t] for t in batch.tokens[i].tolist()]
        stored = {toks[j]: toks[j + 1] for j in range(0, 2 * task.N, 2)}  # independent scan of the pairs
        assert len(stored) == task.N  # keys distinct
        assert len(set(stored.values())) == task.N  # values distinct
        for p in batch.loss_mask[i].nonzero().squeeze(1).tolist():
            assert toks[p - 1] == "[Q]"
            answer = names[int(batch.readout_ids[batch.labels[i, p]])]
            assert answer == stored[toks[p]] == toks[p + 1]
            assert batch.target_probs[i, p].max() == 1.0 and batch.bayes_entropy[i, p] == 0.0
        assert (batch.labels[i][~batch.loss_mask[i]] == IGNORE_INDEX).all()


def test_token_ranges_are_disjoint_and_sizes_add_up():
    task = make_task("recall")
    batch = task.sample(32, make_generator(1, "eval"))
    N = task.N
    keys, values = batch.tokens[:, 0:2 * N:2], batch.tokens[:, 1:2 * N:2]
    assert (keys < task.n_keys).all()
    assert ((values >= task.n_keys) & (values < task.n_keys + task.n_values)).all()
    assert batch.tokens.shape == (32, task.seq_len) and int(batch.tokens.max()) < task.vocab_size
    assert batch.loss_mask.sum(1).eq(task.queries).all()
    q_keys = batch.tokens[batch.loss_mask].view(32, -1)
    assert all(len(set(r.tolist())) == task.queries for r in q_keys)  # distinct queries


@pytest.mark.parametrize("params,needle", [({"N": 9, "n_keys": 8}, "n_keys >= N"),
                                           ({"queries": 9}, "queries <= N"), ({"N": 0}, "N >= 1")])
def test_bad_parameters(params, needle):
    with pytest.raises(ConfigError, match=needle):
        make_task("recall", **params)


def test_same_seed_same_batch():
    task = make_task("recall")
    a = task.sample(8, make_generator(5, "train"))
    b = task.sample(8, make_generator(5, "train"))
    assert torch.equal(a.tokens, b.tokens)
