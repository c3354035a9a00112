"""The in-context noisy-label (SULA) experiment for a pretrained language model: prompts, readout, controls.

Generative model (the two-hypothesis task of :mod:`geoprobe.tasks.noisy_label`): a hidden label
``y in {L1, L2}`` with uniform prior; each of ``k`` in-context examples shows ``y`` with probability
``1 - eps`` (default ``eps = 0.1``) and the other label otherwise. With ``m`` of ``k`` examples showing L1 the
exact posterior is ``P(L1 | m, k) = 1 / (1 + ((1-eps)/eps)^(k - 2m))``
(:func:`geoprobe.tasks.noisy_label.sula_posterior_l1`) and the Bayes entropy is its binary entropy in bits.

Prompt text: ``"w1: L, w2: L, ..., wk: L. test:"`` (``k = 0``: ``"test:"``) with ``k`` distinct carrier words
from :data:`CARRIER_WORDS` and two nonsense labels that must each be one token with a leading space after
``"test:"`` (:func:`label_token_ids` checks this; :func:`choose_label_pairs` picks the first single-token
pairs from :data:`LABEL_CANDIDATES` for a given tokenizer -- e.g. " dax" is two tokens for SmolLM2, whose
pairs are " lum"/" pim" and, for the remap, " fum"/" vex"). Default: 50 prompts per ``k in {0, 1, 2, 4, 8}``.

Readout (:func:`label_pair_readout`): the model's next-token probabilities ``p1, p2`` of the two label tokens,
renormalised, ``q = p1 / (p1 + p2)``; the model's entropy is ``H_b(q)`` bits and ``1 - p1 - p2`` is reported as
the discarded mass. The headline number is ``MAE = mean |H_b(q) - H_Bayes|`` in bits.

Controls (each changes one thing; ``condition`` names it):

* ``remap`` (:func:`lexical_remap`): the two labels are replaced by another pair of arbitrary tokens; words,
  label sequence, hidden label and Bayes posterior are unchanged.
* ``shuffled`` (:func:`shuffle_labels`): within each ``k``, example slot ``j`` of prompt ``i`` receives the label
  shown in slot ``j`` of prompt ``sigma_j(i)``, with ``sigma_j`` a random permutation without fixed points
  (independent per slot). The multiset of labels in every slot, hence of the whole group, is kept; no prompt keeps
  its own labels, so the shown labels are independent of its hidden label and ``H_Bayes = 1`` bit at every ``k``.
* ``ablation`` (:func:`ablate_evidence`): the examples are removed (``mode="remove"``: the prompt is
  ``"test:"``) or their labels are (``mode="labels"``: ``"w1, w2, ..., wk. test:"``); ``H_Bayes = 1`` bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from geoprobe.errors import ConfigError
from geoprobe.infotheory import binary_entropy_bits
from geoprobe.scan.readout import map_final_logits
from geoprobe.scan.records import PromptRecord
from geoprobe.tasks.noisy_label import sula_posterior_l1

SULA_KS = (0, 1, 2, 4, 8)
DEFAULT_PER_K = 50
DEFAULT_EPS = 0.1
DEFAULT_LABELS = (" dax", " wug")
DEFAULT_REMAP_LABELS = (" blick", " fep")
CONDITIONS = ("main", "remap", "shuffled", "ablation")
#: nonsense label candidates, in order of preference; :func:`choose_label_pairs` keeps the single-token ones
LABEL_CANDIDATES = (" dax", " wug", " blick", " fep", " zib", " toma", " kiki", " bouba", " glorp", " zorp",
                    " mip", " nux", " zog", " quib", " tov", " wex", " yar", " zem", " gax", " tup", " lum",
                    " pim", " fum", " kip", " zup", " vop", " vex", " rem")
ABLATION_MODES = ("remove", "labels")

#: carrier words (a sentiment word list written for geoprobe); k examples use k distinct words
CARRIER_WORDS = (
    "happy", "sad", "bright", "gloomy", "kind", "cruel", "calm", "angry", "warm", "cold", "brave", "afraid",
    "gentle", "harsh", "joyful", "bitter", "proud", "ashamed", "lucky", "unlucky", "cheerful", "tired", "eager",
    "bored", "hopeful", "lonely", "grateful", "jealous", "relaxed", "nervous", "pleasant", "awful", "lovely",
    "nasty", "friendly", "hostile", "delighted", "upset", "peaceful", "tense",
)


@dataclass(frozen=True)
class SulaPrompt:
    """One SULA prompt.

    Attributes:
        id: ``sula-<condition>-k<k>-<index>``.
        condition: ``main``, ``remap``, ``shuffled`` or ``ablation``.
        k: number of in-context examples the prompt was built with.
        index: position within its ``k`` group.
        words: carrier words of the examples (in order).
        shown: label index shown by each example (0 = first label of ``labels``, 1 = second).
        labels: the label pair (strings with their leading space).
        hidden: the hidden label index ``y``.
        m: how many shown labels are the first label.
        p_bayes_l1: the exact posterior of the first label given what this condition's prompt shows.
        h_bayes_bits: binary entropy of ``p_bayes_l1``.
        text: the prompt text.
        sources: for ``shuffled``: the prompt index each slot's label came from; else empty.
    """

    id: str
    condition: str
    k: int
    index: int
    words: tuple[str, ...]
    shown: tuple[int, ...]
    labels: tuple[str, str]
    hidden: int
    m: int
    p_bayes_l1: float
    h_bayes_bits: float
    text: str
    sources: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("words", "shown", "labels", "sources"):
            d[key] = list(d[key])
        return d


def bayes_posterior_l1(m: int, k: int, eps: float = DEFAULT_EPS) -> tuple[float, float]:
    """``(P(L1 | m of k), its binary entropy in bits)`` (closed form of :mod:`geoprobe.tasks.noisy_label`)."""
    p = sula_posterior_l1(torch.tensor(m), torch.tensor(k), eps)
    return float(p), float(binary_entropy_bits(p.double()))


def format_prompt(words: Sequence[str], shown: Sequence[int], labels: Sequence[str]) -> str:
    """``"w1: L, ..., wk: L. test:"`` (labels carry their own leading space); ``"test:"`` when ``k = 0``."""
    if not words:
        return "test:"
    return ", ".join(f"{w}:{labels[s]}" for w, s in zip(words, shown, strict=True)) + ". test:"


def _check_labels(labels: Sequence[str]) -> tuple[str, str]:
    if len(labels) != 2 or labels[0] == labels[1] or not all(isinstance(x, str) and x.strip() for x in labels):
        raise ConfigError(f"a SULA label pair needs two different non-empty strings, got {tuple(labels)!r}")
    return (labels[0], labels[1])


def sula_prompts(*, ks: Sequence[int] = SULA_KS, n_per_k: int = DEFAULT_PER_K, eps: float = DEFAULT_EPS,
                 seed: int = 0, labels: Sequence[str] = DEFAULT_LABELS,
                 words: Sequence[str] = CARRIER_WORDS) -> list[SulaPrompt]:
    """The main-condition prompts: ``n_per_k`` per ``k`` drawn from the generative model (module docstring).

    Deterministic given ``seed`` (``numpy.random.default_rng``).
    """
    labels = _check_labels(labels)
    if not 0.0 < float(eps) < 0.5:
        raise ConfigError(f"SULA label noise must satisfy 0 < eps < 0.5, got {eps}")
    if int(n_per_k) < 1:
        raise ConfigError(f"SULA needs n_per_k >= 1 prompts per k, got {n_per_k}")
    ks = [int(k) for k in ks]
    if any(k < 0 for k in ks) or len(set(ks)) != len(ks):
        raise ConfigError(f"SULA k values must be distinct and >= 0, got {ks}")
    if ks and max(ks) > len(words):
        raise ConfigError(f"k = {max(ks)} needs {max(ks)} distinct carrier words, only {len(words)} given")
    rng = np.random.default_rng(seed)
    out: list[SulaPrompt] = []
    for k in ks:
        for i in range(int(n_per_k)):
            y = int(rng.integers(2))
            flip = rng.random(k) < eps
            shown = tuple(int(1 - y if f else y) for f in flip)
            w = tuple(str(words[j]) for j in rng.choice(len(words), size=k, replace=False))
            m = sum(1 for s in shown if s == 0)
            p, h = bayes_posterior_l1(m, k, eps)
            out.append(SulaPrompt(f"sula-main-k{k}-{i}", "main", k, i, w, shown, labels, y, m, p, h,
                                  format_prompt(w, shown, labels)))
    return out


def lexical_remap(prompts: Sequence[SulaPrompt], labels: Sequence[str] = DEFAULT_REMAP_LABELS
                  ) -> list[SulaPrompt]:
    """The same prompts with the label pair replaced by ``labels`` (posterior and everything else unchanged)."""
    labels = _check_labels(labels)
    return [replace(p, id=f"sula-remap-k{p.k}-{p.index}", condition="remap", labels=labels,
                    text=format_prompt(p.words, p.shown, labels)) for p in prompts]


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def shuffle_labels(prompts: Sequence[SulaPrompt], *, seed: int = 0, eps: float = DEFAULT_EPS
                   ) -> list[SulaPrompt]:
    """Labels moved between prompts of the same ``k`` (slot-wise derangements; see the module docstring).

    Raises:
        ConfigError: a ``k >= 1`` group with fewer than two prompts (nothing to shuffle with).
    """
    rng = np.random.default_rng(seed)
    groups: dict[int, list[SulaPrompt]] = {}
    for p in prompts:
        groups.setdefault(p.k, []).append(p)
    out: list[SulaPrompt] = []
    half, h_half = bayes_posterior_l1(0, 0, eps)  # no evidence: 0.5 and 1 bit
    for k, group in groups.items():
        n = len(group)
        if k > 0 and n < 2:
            raise ConfigError(f"shuffling labels needs at least 2 prompts with k = {k}, got {n}")
        perms = [_derangement(n, rng) for _ in range(k)]
        for i, p in enumerate(group):
            src = tuple(int(perms[j][i]) for j in range(k))
            shown = tuple(group[src[j]].shown[j] for j in range(k))
            m = sum(1 for s in shown if s == 0)
            out.append(replace(p, id=f"sula-shuffled-k{k}-{p.index}", condition="shuffled", shown=shown, m=m,
                               p_bayes_l1=half, h_bayes_bits=h_half, sources=src,
                               text=format_prompt(p.words, shown, p.labels)))
    return out


def ablate_evidence(prompts: Sequence[SulaPrompt], *, mode: str = "remove", eps: float = DEFAULT_EPS
                    ) -> list[SulaPrompt]:
    """The prompts without their evidence: ``remove`` drops the examples, ``labels`` keeps only the words."""
    if mode not in ABLATION_MODES:
        raise ConfigError(f"unknown evidence ablation {mode!r}; valid: {', '.join(ABLATION_MODES)}")
    half, h_half = bayes_posterior_l1(0, 0, eps)
    out = []
    for p in prompts:
        text = "test:" if mode == "remove" or not p.words else ", ".join(p.words) + ". test:"
        out.append(replace(p, id=f"sula-ablation-k{p.k}-{p.index}", condition="ablation", shown=(), m=0,
                           p_bayes_l1=half, h_bayes_bits=h_half, text=text,
                           words=p.words if mode == "labels" else ()))
    return out


def all_conditions(*, seed: int = 0, eps: float = DEFAULT_EPS, ablation: str = "remove",
                   remap_labels: Sequence[str] = DEFAULT_REMAP_LABELS, **kwargs: Any) -> list[SulaPrompt]:
    """Main prompts (``sula_prompts(seed=seed, eps=eps, **kwargs)``) followed by the three controls.

    Order: main, remap (``remap_labels``), shuffled (shuffle seed ``seed + 1``), ablation (``ablation`` mode).
    """
    main = sula_prompts(seed=seed, eps=eps, **kwargs)
    return (main + lexical_remap(main, remap_labels) + shuffle_labels(main, seed=seed + 1, eps=eps)
            + ablate_evidence(main, mode=ablation, eps=eps))


def _token_count_after(tokenizer: Any, prefix: str, label: str) -> tuple[int, int | None]:
    """(number of tokens ``label`` adds after ``prefix``, its id when that is exactly one known token)."""
    base = list(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(prefix + label, add_special_tokens=False)["input_ids"])
    n = len(full) - len(base)
    unk = getattr(tokenizer, "unk_token_id", None)
    ok = n == 1 and full[:len(base)] == base and (unk is None or full[-1] != unk)
    return n, (full[-1] if ok else None)


def label_token_ids(tokenizer: Any, labels: Sequence[str], *, prefix: str = "test:") -> tuple[int, int]:
    """The token id of each label as the next token after ``prefix``.

    Each label must tokenise, appended to ``prefix``, as exactly ``ids(prefix) + [one id]``; otherwise the
    readout would score the wrong token.

    Raises:
        ConfigError: a label that is not one token there (says how it tokenises and what to do).
    """
    labels = _check_labels(labels)
    ids = []
    for lab in labels:
        n, tid = _token_count_after(tokenizer, prefix, lab)
        if tid is None:
            raise ConfigError(f"label {lab!r} is not a single known token after {prefix!r} for this tokenizer "
                              f"({n} tokens); choose labels that are (choose_label_pairs finds some)")
        ids.append(tid)
    if ids[0] == ids[1]:
        raise ConfigError(f"labels {labels[0]!r} and {labels[1]!r} are the same token ({ids[0]}) for this tokenizer")
    return ids[0], ids[1]


def choose_label_pairs(tokenizer: Any, n_pairs: int = 2, *, candidates: Sequence[str] = LABEL_CANDIDATES,
                       prefix: str = "test:") -> list[tuple[str, str]]:
    """The first ``2 * n_pairs`` candidates that are one token after ``prefix``, paired in order.

    Pair 0 is meant for the main prompts, pair 1 for the lexical remap (so the remap uses different tokens).

    Raises:
        ConfigError: fewer single-token candidates than needed (pass your own labels instead).
    """
    ok: list[str] = []
    for c in dict.fromkeys(candidates):
        if _token_count_after(tokenizer, prefix, c)[1] is None:
            continue
        ok.append(c)
        if len(ok) == 2 * n_pairs:
            return [(ok[2 * i], ok[2 * i + 1]) for i in range(n_pairs)]
    raise ConfigError(f"only {len(ok)} of the {len(candidates)} candidate labels are single tokens for this "
                      f"tokenizer ({', '.join(map(repr, ok)) or 'none'}); need {2 * n_pairs}: pass labels explicitly")


@dataclass(frozen=True)
class PairReadout:
    """Label-pair readout of a batch: renormalised ``q = P(first label)``, ``H_b(q)`` bits, discarded mass."""

    p_l1: np.ndarray
    h_model_bits: np.ndarray
    discarded_mass: np.ndarray


def label_pair_readout(logits: torch.Tensor, ids: tuple[int, int]) -> PairReadout:
    """Readout from next-token logits ``[N, vocab]`` (module docstring), computed in float64 log space."""
    return _from_pair_logp(torch.log_softmax(logits.double(), dim=-1)[:, list(ids)])


def read_model(handle: Any, prompts: Sequence[SulaPrompt], *, batch_size: int = 8) -> PairReadout:
    """Run ``prompts`` through ``handle`` and read out each prompt's own label pair (final position only)."""
    prompts = list(prompts)
    if not prompts:
        raise ConfigError("no SULA prompts to run")
    by_pair: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(prompts):
        by_pair.setdefault(p.labels, []).append(i)
    n = len(prompts)
    q, h, d = np.empty(n), np.empty(n), np.empty(n)
    for pair, rows in by_pair.items():
        ids = label_token_ids(handle.tokenizer, pair)
        packed = map_final_logits(handle, [prompts[i].text for i in rows],
                                  lambda z, _ids=ids: torch.log_softmax(z.double(), -1)[:, list(_ids)],
                                  batch_size=batch_size)
        r = _from_pair_logp(packed)
        q[rows], h[rows], d[rows] = r.p_l1, r.h_model_bits, r.discarded_mass
    return PairReadout(q, h, d)


def _from_pair_logp(pair_logp: torch.Tensor) -> PairReadout:
    """Readout from the two labels' normalised next-token log-probabilities ``[N, 2]``."""
    q = torch.softmax(pair_logp, dim=-1)[:, 0]
    kept = pair_logp.exp().sum(-1)
    return PairReadout(q.numpy(), binary_entropy_bits(q).numpy(), (1.0 - kept).clamp_min(0.0).numpy())


def to_records(prompts: Sequence[SulaPrompt], readout: PairReadout | None = None) -> list[PromptRecord]:
    """One ``prompts.jsonl`` record per SULA prompt (pool and domain ``sula``; every field in ``extra``).

    ``extra`` holds the condition, k, words, shown labels, label pair, hidden label, m, sources, the Bayes
    posterior and entropy, and with a readout the model's renormalised ``p_l1``, ``h_model_bits`` and
    ``discarded_mass``. Selected is True for every prompt (all of them are measured).
    """
    out = []
    for i, p in enumerate(prompts):
        extra = {k: v for k, v in p.to_dict().items() if k not in ("id", "text")}
        if readout is not None:
            extra.update(p_model_l1=float(readout.p_l1[i]), h_model_bits=float(readout.h_model_bits[i]),
                         discarded_mass=float(readout.discarded_mass[i]))
        out.append(PromptRecord(p.id, p.text, "sula", "sula", None, None, True, extra))
    return out


def mae_bits(h_model: Sequence[float] | np.ndarray, h_bayes: Sequence[float] | np.ndarray) -> float:
    """Mean absolute error ``mean_i |H_model,i - H_Bayes,i|`` in bits."""
    a, b = np.asarray(h_model, dtype=np.float64), np.asarray(h_bayes, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ConfigError(f"MAE needs two equal-length non-empty arrays, got {a.shape} and {b.shape}")
    return float(np.mean(np.abs(a - b)))


def summarize(prompts: Sequence[SulaPrompt], readout: PairReadout) -> list[dict[str, Any]]:
    """Rows per (condition, k): n, mean Bayes and model entropy (bits), MAE (bits), mean discarded mass."""
    rows = []
    keys = sorted({(p.condition, p.k) for p in prompts}, key=lambda t: (CONDITIONS.index(t[0]), t[1]))
    for cond, k in keys:
        idx = [i for i, p in enumerate(prompts) if p.condition == cond and p.k == k]
        hb = np.array([prompts[i].h_bayes_bits for i in idx])
        hm = readout.h_model_bits[idx]
        rows.append({"condition": cond, "k": k, "n": len(idx), "h_bayes_bits": float(hb.mean()),
                     "h_model_bits": float(hm.mean()), "mae_bits": mae_bits(hm, hb),
                     "discarded_mass": float(readout.discarded_mass[idx].mean())})
    return rows
