"""The wind-tunnel interface: a task samples sequences together with their exact Bayesian predictive.

Conventions:
- Next-token convention: the logits at position ``p`` are supervised when ``loss_mask[b, p]`` is true, and
  ``target_probs[b, p]`` is the exact Bayes predictive distribution over the task's *readout slice*
  (``readout_ids``: the vocabulary ids whose logits are the model's answer, e.g. the V value tokens).
- Entropies are in bits. ``bayes_entropy[b, p] = H(target_probs[b, p])`` and is 0 where unsupervised.
- ``labels[b, p]`` is the index (into the readout slice) of the realised answer at a supervised position, used
  for hard-label training and accuracy; -100 where there is no realised answer or the position is unsupervised.
- ``step[b, p]`` numbers the supervised positions of a sequence 0, 1, 2, ... (the x axis of per-position
  curves); -1 elsewhere.
- Every sampler takes a ``torch.Generator`` and is vectorised over the batch.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from geoprobe.errors import ConfigError
from geoprobe.registry import Registry
from geoprobe.tasks.params import Param, check_params, describe_params

IGNORE_INDEX = -100


@dataclass
class TaskBatch:
    """A batch of wind-tunnel sequences with their exact posteriors.

    Attributes:
        tokens: ``[B, T]`` int64 input token ids.
        loss_mask: ``[B, T]`` bool, positions whose logits are supervised.
        target_probs: ``[B, T, H]`` float32 exact Bayes predictive over the readout slice (zeros where unsupervised).
        bayes_entropy: ``[B, T]`` float32 entropy of ``target_probs`` in bits (0 where unsupervised).
        labels: ``[B, T]`` int64 realised answer as an index into the readout slice, or -100.
        step: ``[B, T]`` int64 index of the supervised position within its sequence, or -1.
        readout_ids: ``[H]`` int64 vocabulary ids of the readout slice.
        features: ``[B, T, F]`` float32 continuous inputs added to the token embeddings through the model's
            input projection (tasks with ``n_features > 0``, e.g. linear regression), else None.
        extras: task-specific tensors (latent permutations, matrices, ...), batch-first.
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor
    target_probs: torch.Tensor
    bayes_entropy: torch.Tensor
    labels: torch.Tensor
    step: torch.Tensor
    readout_ids: torch.Tensor
    features: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    #: fields that are not batch-first tensors
    _SHARED = ("readout_ids", "extras", "features")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        """Move every tensor to ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in moved.items()}
        out["extras"] = {k: v.to(device) for k, v in self.extras.items()}
        return TaskBatch(**out)

    def _rows(self, start: int, stop: int) -> dict[str, Any]:
        return {f.name: getattr(self, f.name)[start:stop] for f in fields(self) if f.name not in self._SHARED}

    def slice(self, start: int, stop: int) -> TaskBatch:
        """Rows ``start:stop`` of the batch (``readout_ids`` is shared)."""
        return TaskBatch(
            **self._rows(start, stop),
            readout_ids=self.readout_ids,
            features=None if self.features is None else self.features[start:stop],
            extras={k: v[start:stop] for k, v in self.extras.items()},
        )

    @staticmethod
    def concat(batches: list[TaskBatch]) -> TaskBatch:
        """Concatenate batches of equal sequence length along the batch axis."""
        first = batches[0]
        kw = {
            f.name: torch.cat([getattr(b, f.name) for b in batches])
            for f in fields(first)
            if f.name not in TaskBatch._SHARED
        }
        extras = {k: torch.cat([b.extras[k] for b in batches]) for k in first.extras}
        features = None if first.features is None else torch.cat([b.features for b in batches])
        return TaskBatch(**kw, readout_ids=first.readout_ids, features=features, extras=extras)


class Task(ABC):
    """A wind tunnel: a generator of sequences whose exact Bayes predictive is known in closed form.

    Subclasses define ``name``, the constructor parameters (stored by :meth:`config`), the vocabulary and
    :meth:`sample`. A fresh latent structure is drawn for every sequence.

    Every constructor parameter is declared in :attr:`params` (type and range, see
    :mod:`geoprobe.tasks.params`); the subclass's ``__init__`` is wrapped so that it only ever receives
    values converted to the declared types and inside the declared ranges (``"false"`` -> ``False``,
    ``"10"`` -> ``10``), whoever constructs the task (``make_task``, a manifest, ``--set``). Constraints
    between parameters are checked by the constructor itself.
    """

    name: ClassVar[str]
    #: a short description used by ``geoprobe tunnel list``
    summary: ClassVar[str] = ""
    #: training target when the run does not choose one: "hard" (realised answer) or "soft" (exact posterior)
    default_target: ClassVar[str] = "soft"
    #: type and range of every constructor parameter, by name
    params: ClassVar[dict[str, Param]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        names = list(inspect.signature(init).parameters)[1:]
        if set(names) != set(cls.params):  # a programming error in the task module, caught at import
            raise TypeError(f"{cls.__name__}.params must declare exactly the constructor parameters {names}")

        @functools.wraps(init)
        def checked_init(self: Task, *args: Any, **given: Any) -> None:
            if len(args) > len(names):
                raise ConfigError(f"task {cls.name} takes at most {len(names)} parameters, got {len(args)}")
            given = {**dict(zip(names[:len(args)], args, strict=True)), **given}
            init(self, **check_params(cls.name, cls.params, given))

        cls.__init__ = checked_init  # type: ignore[method-assign]

    @classmethod
    def describe_params(cls) -> str:
        """Every parameter with its type and range: ``V (int, V >= 2), L (int, L >= 1), ...``."""
        return describe_params(cls.params)

    @property
    def readout_size(self) -> int:
        """H, the number of readout ids (override when building ``readout_ids`` would be costly)."""
        return int(self.readout_ids.numel())

    def batch_nbytes(self, n: int) -> int:
        """Bytes of the dense tensors of a sampled batch of ``n`` sequences: a lower bound on what
        :meth:`sample` allocates (``target_probs`` float32 ``[n, T, H]``; tokens, labels, step int64;
        loss_mask bool; bayes_entropy float32)."""
        return int(n) * self.seq_len * (4 * self.readout_size + 3 * 8 + 1 + 4)

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of token ids the model's embedding and unembedding must cover (inputs and readout)."""

    @property
    @abstractmethod
    def seq_len(self) -> int:
        """Length of every sampled sequence."""

    @property
    @abstractmethod
    def readout_ids(self) -> torch.Tensor:
        """``[H]`` vocabulary ids whose logits form the model's prediction."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The constructor parameters that reproduce this task: ``make_task(name, **config())``."""

    @abstractmethod
    def token_names(self) -> list[str]:
        """A human-readable name for every token id (length ``vocab_size``)."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> TaskBatch:
        """Sample ``n`` sequences with their exact posteriors (vectorised; no per-token Python loops)."""

    @property
    def n_features(self) -> int:
        """Width of the continuous input features (``TaskBatch.features``); 0 for purely token tasks."""
        return 0

    def with_length(self, **overrides: Any) -> Task:
        """A copy of this task with some parameters overridden (e.g. a longer HMM for length generalisation)."""
        return make_task(self.name, **{**self.config(), **overrides})

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{self.name}({params})"


TASKS: Registry[type[Task]] = Registry("task")


def make_task(name: str, **params: Any) -> Task:
    """Instantiate the task registered as ``name`` with ``params`` (errors list valid names/parameters).

    Values are converted by the task's declared parameter types (strings as given on the command line are
    accepted; see :mod:`geoprobe.tasks.params`).
    """
    return TASKS.get(name)(**params)


SPLITS = ("train", "eval", "test")


def stream_seed(seed: int, split: str) -> int:
    """Seed of the sample stream ``split`` of a run seeded with ``seed``.

    Streams of different splits never share a seed, for any pair of run seeds: the seed is derived from a hash
    of (seed, split), and the split names are part of the hash input. Evaluation data therefore never comes
    from the training generator.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    digest = hashlib.sha256(f"geoprobe/{split}/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def make_generator(seed: int, split: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` for the ``split`` stream of run seed ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_seed(seed, split))
    return g


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds (parameter validation)."""
    if not condition:
        raise ConfigError(message)
