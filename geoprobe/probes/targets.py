"""What a probe run looks at: a loaded model plus its inputs and the reference entropies.

Two kinds of target share one interface (:class:`ProbeTarget`):

- ``tunnel``: a geoprobe run folder. Inputs are fresh sequences of the run's task from the ``test`` stream
  (never the training seed); the reference entropy at each supervised position is the exact Bayes entropy.
- ``llm``: any model ``load_model`` accepts (HF folder, hub id, GGUF file). Inputs are text prompts (a file, or
  the small built-in mixed-domain set); the reference entropy at the final token is the model's own next-token
  entropy H = -sum_w p(w) log2 p(w).

Prompts are left-padded so the final real token is the last column for every row (batched results then equal
per-prompt results; the backend masks the padding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geoprobe.errors import CheckpointError, ConfigError
from geoprobe.infotheory import entropy_from_logits_bits
from geoprobe.probes.prompts import load_prompts, select_prompts
from geoprobe.tasks.base import Task, TaskBatch

KINDS = ("tunnel", "llm")
__all__ = ["KINDS", "ProbeTarget", "is_run_dir", "llm_target", "load_prompts", "tokenize_prompts", "tunnel_target"]


@dataclass
class ProbeTarget:
    """A model handle with its inputs.

    Attributes:
        handle: a :class:`geoprobe.backends.ModelHandle`.
        kind: ``tunnel`` or ``llm``.
        name: what the user passed (run folder, model id or path).
        tokens: ``[N, T]`` input ids; attention_mask: ``[N, T]`` (1 = real token).
        final_entropy: ``[N]`` reference entropy (bits) at each row's final token (Bayes for tunnels, the
            model's own next-token entropy for LLMs).
        batch: tunnels: the :class:`TaskBatch` (exact posteriors); None for LLMs.
        task: tunnels: the task; None for LLMs.
        run_dir: tunnels: the run folder.
        texts: LLMs: the prompts.
        batch_size: rows per forward pass.
        seed: seed of the input stream and of every resampling.
        bucket: the shared probe pass orders rows by length and pads each batch only to its own longest row
            (results come back in input order; see :func:`geoprobe.probes.suite.collect_needs`).
    """

    handle: Any
    kind: str
    name: str
    tokens: torch.Tensor
    attention_mask: torch.Tensor
    final_entropy: torch.Tensor
    batch: TaskBatch | None = None
    task: Task | None = None
    run_dir: Path | None = None
    texts: list[str] | None = None
    batch_size: int = 64
    seed: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)
    bucket: bool = True

    @property
    def n(self) -> int:
        return self.tokens.shape[0]

    @property
    def final_index(self) -> torch.Tensor:
        """Index of each row's final real token (``T - 1`` under left padding)."""
        from geoprobe.backends import final_token_index

        return final_token_index(self.attention_mask)

    @property
    def hypothesis_ids(self) -> torch.Tensor | None:
        """Tunnels: the readout token ids (the hypotheses); None for LLMs."""
        return None if self.batch is None else self.batch.readout_ids

    def logits(self, **kw: Any) -> torch.Tensor:
        """Logits ``[N, T, vocab]`` under the handle's active interventions."""
        return self.handle.logits(self.tokens, self.attention_mask, batch_size=self.batch_size, **kw)


def is_run_dir(path: str | Path) -> bool:
    """True for a wind-tunnel run folder and for the model folders inside one (``RUN/model``,
    ``RUN/checkpoints/step_N``): what :func:`tunnel_target` accepts."""
    from geoprobe.backends.sources import run_of_folder

    return Path(path).is_dir() and run_of_folder(path) is not None


def tunnel_target(run_dir: str | Path, *, n: int = 512, seed: int = 0, backend: str = "transformer_lens",
                  device: str = "auto", dtype: str = "float32", batch_size: int = 128,
                  task: str | None = None, trust_remote_code: bool = False,
                  batch: TaskBatch | None = None) -> ProbeTarget:
    """A run's model with ``n`` fresh sequences of the run's task (``test`` stream of ``seed``).

    ``batch``: use these sequences of the run's task instead (e.g. the same saved sequences for every
    checkpoint of a trajectory); ``n`` is then ignored (``target.n`` is the batch's size).

    ``run_dir`` is a run folder (its final model), ``RUN/model``, or a training checkpoint
    ``RUN/checkpoints/step_N``; the checkpoint step is recorded in
    ``handle.info.source_detail["checkpoint_step"]`` (None for the final model), and ``ProbeTarget.run_dir``
    is always the run folder itself. ``task``, if given, must be the run's own task name. The loaded weights
    are checked against the manifest (vocabulary, depth, width) with
    :func:`geoprobe.models.checkpoint.check_model_matches`, as ``tunnel eval`` does: a mismatch is a
    :class:`~geoprobe.errors.CheckpointError`, never numbers from the wrong model.
    """
    from geoprobe.backends import load_model
    from geoprobe.backends.sources import run_of_folder
    from geoprobe.models.checkpoint import read_manifest, task_from_manifest
    from geoprobe.tasks.base import make_generator

    located = run_of_folder(run_dir) if Path(run_dir).is_dir() else None
    if located is None:
        raise CheckpointError(f"{run_dir} is not a geoprobe run folder, nor its model/ folder or one of its "
                              "checkpoints/step_NNNNNNN folders")
    root = located[0]
    manifest = read_manifest(root)
    run_task = task_from_manifest(manifest)
    if task is not None and task != run_task.name:
        raise ConfigError(f"{root} was trained on task {run_task.name!r}, not {task!r}")
    if run_task.n_features:
        raise ConfigError(f"probes read token inputs only; task {run_task.name!r} feeds continuous features "
                          "through an input projection, which the probe backends do not pass yet")
    handle = load_model(run_dir, backend=backend, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    check_handle_matches(handle, manifest, run_task)
    if batch is None:
        batch = run_task.sample(n, make_generator(seed, "test"))
    mask = torch.ones_like(batch.tokens)
    final = batch.bayes_entropy[:, -1] if bool(batch.loss_mask[:, -1].all()) else _last_supervised(batch)
    return ProbeTarget(handle=handle, kind="tunnel", name=str(run_dir), tokens=batch.tokens, attention_mask=mask,
                       final_entropy=final, batch=batch, task=run_task, run_dir=root, batch_size=batch_size,
                       seed=seed, manifest=manifest)


def check_handle_matches(handle: Any, manifest: dict[str, Any], task: Task) -> None:
    """:func:`geoprobe.models.checkpoint.check_model_matches` on a loaded handle of any backend: the model's
    vocabulary, depth and width (from ``handle.info``) against the run manifest and its task."""
    from types import SimpleNamespace

    from geoprobe.models.checkpoint import check_model_matches

    info = handle.info
    view = SimpleNamespace(config=SimpleNamespace(vocab_size=info.vocab_size, num_hidden_layers=info.n_layers,
                                                  hidden_size=info.d_model))
    folder = Path(info.source_detail.get("model_folder") or info.source_detail.get("path") or "?")
    check_model_matches(view, manifest, task, folder)


def _last_supervised(batch: TaskBatch) -> torch.Tensor:
    idx = (batch.loss_mask.long() * torch.arange(batch.tokens.shape[1])).argmax(1)
    return batch.bayes_entropy.gather(1, idx[:, None]).squeeze(1)


def llm_target(name: Any, *, prompts: list[str] | None = None, prompts_path: str | Path | None = None,
               n: int | None = None, max_tokens: int | None = None, seed: int = 0, backend: str | None = None,
               device: str = "auto", dtype: str | None = None, revision: str | None = None,
               batch_size: int = 16, tokenizer: Any = None, trust_remote_code: bool = False,
               progress: bool = False, final_entropy: Any = None, device_map: str | None = None) -> ProbeTarget:
    """Any loadable model with text prompts; reference entropy = the model's next-token entropy at the end.

    ``name`` is anything :func:`geoprobe.backends.load_model` accepts (``backend``/``dtype`` None = its
    defaults: transformer_lens and float32 for paths): a path or hub id, or a model object the caller already
    holds (a :class:`ModelHandle`, ``TransformerBridge``, ``transformers`` model with
    ``tokenizer``, nnsight ``LanguageModel``), used without reloading.

    ``prompts`` are used as given; otherwise :func:`~geoprobe.probes.prompts.select_prompts` picks the first
    ``n`` of ``prompts_path`` (default: the first ``DEFAULT_MAX_PROMPTS``). Every prompt is used whole
    (``max_tokens=None``, the default) up to the model's context ``info.max_positions``; a longer prompt is a
    :class:`~geoprobe.errors.ConfigError` naming both lengths. ``max_tokens=N`` is the explicit cut: prompts
    longer than N keep their last N tokens (see :func:`tokenize_prompts`). ``target.manifest["prompts"]``
    records which prompts were used, the choice (``max_tokens``) and how many prompts were cut. The reference
    pass runs ``batch_size`` prompts at a time in length buckets
    (:func:`geoprobe.backends.batches.map_final_logits`, final-position logits only) and, with ``progress``,
    shows a progress bar whose rate and time estimate appear after the first batch. ``final_entropy`` (one
    value per prompt, bits) skips the reference pass when the caller already knows them (the scan's selection
    scored every prompt).
    """
    from tqdm.auto import tqdm

    from geoprobe.backends import ModelHandle, load_model
    from geoprobe.backends.sites import pad_sequences

    check_max_tokens(max_tokens)  # before any loading
    if prompts is not None:
        texts, info = list(prompts), {"source": "given", "n_available": len(prompts), "n_used": len(prompts)}
    else:
        texts, info = select_prompts(load_prompts(prompts_path), n, source=prompts_path)
    if not texts:
        raise ConfigError("no prompts given")
    if isinstance(name, ModelHandle):
        handle = name
    else:
        handle = load_model(name, backend=backend, device=device, dtype=dtype, revision=revision,
                            trust_remote_code=trust_remote_code,
                            **({"tokenizer": tokenizer} if tokenizer is not None else {}),
                            **({"device_map": device_map} if device_map is not None else {}))
    label = str(name) if isinstance(name, (str, Path)) else handle.info.source_detail.get("name", handle.info.family)
    if handle.tokenizer is None:
        raise ConfigError(f"{label} has no tokenizer; text prompts cannot be used")
    ids, cut_info = tokenize_prompts(handle, texts, max_tokens)
    info = {**info, **cut_info}
    tokens, mask = pad_sequences(ids, handle.pad_token_id, side="left")
    target = ProbeTarget(handle=handle, kind="llm", name=str(label), tokens=tokens, attention_mask=mask,
                         final_entropy=torch.zeros(len(texts)), texts=texts, batch_size=batch_size,
                         seed=seed, manifest={"prompts": info})
    if final_entropy is not None:
        final = torch.as_tensor(final_entropy, dtype=torch.float32).reshape(-1)
        if final.numel() != len(texts):
            raise ConfigError(f"final_entropy has {final.numel()} values for {len(texts)} prompts")
        target.manifest["prompts"]["final_entropy"] = "given by the caller (no reference pass)"
    else:
        from geoprobe.backends.batches import map_final_logits

        with tqdm(total=len(texts), desc="reference pass", unit="prompt", disable=not progress) as bar:
            final = map_final_logits(handle, ids, entropy_from_logits_bits, batch_size=batch_size,
                                     on_batch=bar.update).float()
    target.final_entropy = final
    return target


def check_max_tokens(max_tokens: Any) -> None:
    """``max_tokens`` is None (whole prompts) or a positive integer; anything else is a ConfigError."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ConfigError(f"max_tokens must be a positive integer or None (whole prompts); got {max_tokens!r}")


def tokenize_prompts(handle: Any, texts: list[str], max_tokens: int | None = None
                     ) -> tuple[list[list[int]], dict[str, Any]]:
    """Token ids of each prompt (the tokenizer's special tokens included) and the record of any cut.

    ``max_tokens=None``: every prompt whole; a prompt longer than the model's context
    (``handle.info.max_positions``, when the model declares one) raises a one-line
    :class:`~geoprobe.errors.ConfigError` naming both lengths and the option. ``max_tokens=N``: a prompt longer
    than N keeps its last N tokens (N must fit the context). The record: ``max_tokens`` (the choice, None =
    whole prompts), ``n_cut_to_last_max_tokens`` (how many prompts were cut), ``prompt_tokens`` (min/max
    length before and after the cut).
    """
    limit = handle.info.max_positions
    if max_tokens is not None:
        check_max_tokens(max_tokens)
        if limit is not None and max_tokens > limit:
            raise ConfigError(f"max_tokens={max_tokens} exceeds the model's context of {limit} tokens; use at "
                              f"most {limit} (or None: whole prompts)")
    ids, cut, before = [], 0, []
    for i, t in enumerate(texts):
        seq = handle.tokenizer(t, add_special_tokens=True)["input_ids"]
        if not seq:
            raise ConfigError(f"prompt {i} ({t[:40]!r}) tokenises to nothing")
        before.append(len(seq))
        if max_tokens is None:
            if limit is not None and len(seq) > limit:
                raise ConfigError(f"prompt {i} is {len(seq)} tokens long but the model's context is {limit} tokens; "
                                  f"shorten it or keep the last N tokens of long prompts with max_tokens=N "
                                  f"(CLI: --max-tokens N)")
        elif len(seq) > max_tokens:
            cut += 1
            seq = seq[-max_tokens:]
        ids.append(seq)
    after = [len(s) for s in ids]
    return ids, {"max_tokens": max_tokens, "n_cut_to_last_max_tokens": cut,
                 "prompt_tokens": {"min": min(before), "max": max(before), "min_used": min(after),
                                   "max_used": max(after)}}


def make_target(obj: Any, **kwargs: Any) -> ProbeTarget:
    """A :class:`ProbeTarget` from a run folder (tunnel), or any model :func:`llm_target` accepts (path, hub
    id, or a model object already in memory). ``kwargs`` go to :func:`tunnel_target` / :func:`llm_target`."""
    if isinstance(obj, ProbeTarget):
        return obj
    if isinstance(obj, (str, Path)) and is_run_dir(obj):
        return tunnel_target(obj, **kwargs)
    return llm_target(obj, **kwargs)
