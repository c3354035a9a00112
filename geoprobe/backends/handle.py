"""The backend-independent half of a loaded model: batching, final-token extraction, reducers, interventions.

A backend subclasses :class:`ModelHandle` and implements :meth:`ModelHandle._forward` (one batch: run the
model with the requested canonical sites captured and the active edits applied) and
:meth:`ModelHandle.attention_weights`. Everything a probe sees goes through :meth:`ModelHandle.run`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from numbers import Integral
from typing import Any

import torch

from geoprobe.backends.errors import SiteError
from geoprobe.backends.info import ModelInfo
from geoprobe.backends.layout import AttentionWeights
from geoprobe.backends.sites import (
    EDITABLE_SITES,
    LAYER_SITES,
    Activations,
    Positions,
    SiteActivation,
    check_layers,
    check_sites,
    final_token_index,
    gather_final,
    layer_index,
    pad_sequences,
)
from geoprobe.errors import ConfigError

#: ``reducer(activation)`` is called once per (site, layer, batch); nothing is cached when one is given
Reducer = Callable[[SiteActivation], None]
#: ``emit(site, layer, value)``: how a backend hands a canonical activation back to :meth:`ModelHandle.run`
Emit = Callable[[str, "int | None", torch.Tensor], None]


@dataclass(frozen=True)
class Edit:
    """Rewrite one canonical site during the forward pass: ``value := fn(value)`` (same shape, canonical
    layout, in the model's dtype). Activations captured at that site see the edited value."""

    site: str
    layer: int
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __post_init__(self) -> None:
        from geoprobe.backends.sites import resolve_site

        object.__setattr__(self, "site", resolve_site(self.site))
        if self.site not in EDITABLE_SITES:
            raise SiteError(f"site {self.site!r} cannot be edited; editable sites: {', '.join(EDITABLE_SITES)}")


@dataclass
class CapturePlan:
    """What one forward pass must hand back: ``sites`` at ``layers`` (canonical names)."""

    sites: list[str]
    layers: list[int]
    stop_at_layer: int | None = None  # run blocks [0, stop_at_layer) only (None: the whole model)
    #: only each row's final real position's logits are wanted: a backend may apply the unembedding to those
    #: rows alone and return ``[B, 1, vocab]`` (see :func:`final_rows_pre_hook`)
    final_logits_only: bool = False
    need_pattern: bool = field(init=False)

    def __post_init__(self) -> None:
        self.need_pattern = "pattern" in self.sites

    @property
    def layer_sites(self) -> list[str]:
        return [s for s in self.sites if s in LAYER_SITES]


def final_rows_pre_hook(attention_mask: torch.Tensor) -> Callable[..., Any]:
    """A forward pre-hook for the unembedding module (``lm_head``): its input ``[B, T, d_model]`` becomes
    ``[B, 1, d_model]``, each row's final real position (left or right padding), so the head computes
    ``[B, 1, vocab]`` logits instead of ``[B, T, vocab]``. The head acts on each position independently (and
    any logit soft-capping after it too), so these logits equal the full path's at those positions."""
    fi = final_token_index(attention_mask)

    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        b = torch.arange(x.shape[0], device=x.device)
        return (x[b, fi.to(x.device)][:, None], *args[1:])

    return hook


class ModelHandle:
    """A loaded model behind one backend, with the same API for every backend.

    Attributes:
        info: :class:`ModelInfo` (family, sizes, positional scheme, source).
        tokenizer: the model's tokenizer (a ``transformers`` tokenizer), or None for plain-torch models.
        backend: backend name (``transformer_lens``, ``nnsight``, ``torch``).
        device: torch device of the weights.
        dtype: torch dtype of the weights (activations are returned in float32 regardless).
        manifest: the geoprobe run manifest when loaded from a run folder.
    """

    backend: str = "?"

    def __init__(self, info: ModelInfo, tokenizer: Any, device: torch.device, dtype: torch.dtype,
                 manifest: dict[str, Any] | None = None) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        self.manifest = manifest
        self._edits: list[Edit] = []
        #: accelerate device map (``{"requested", "placement", "devices"}``) when the model was loaded with one
        self.device_map: dict[str, Any] | None = None

    @property
    def attention_implementation(self) -> str:
        """The attention kernel the model's own forward uses (``sdpa``, ``eager``, ``flash_attention_2``...;
        ``eager`` for TransformerLens' bridge, ``none`` without attention). Runs that capture ``pattern``
        switch the nnsight/torch backends to ``eager`` for that run only."""
        if not self.info.has_attention:
            return "none"
        model = getattr(self, "hf_model", None)
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        return str(impl) if impl else "unknown"

    # ----------------------------------------------------------------- backend hooks
    def _forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor, plan: CapturePlan, emit: Emit,
                 edits: Sequence[Edit]) -> torch.Tensor | None:
        """Run one batch; call ``emit`` for every (site, layer) in ``plan``; return logits (or None when
        stopped early)."""
        raise NotImplementedError

    def attention_weights(self, layer: int) -> AttentionWeights:
        """``W_Q/W_K/W_V/W_O`` and biases of ``layer`` in the canonical layout (float32 copies)."""
        raise NotImplementedError

    def stacked_weights(self, name: str) -> torch.Tensor:
        """One weight for every layer stacked on a leading axis, e.g. ``W_K -> [n_layers, d_model, H_kv, d]``."""
        if name not in AttentionWeights.__dataclass_fields__:
            raise SiteError(f"unknown weight {name!r}; valid: {', '.join(AttentionWeights.__dataclass_fields__)}")
        if not self.info.has_attention:
            raise SiteError("this model has no attention weights")
        return torch.stack([getattr(self.attention_weights(i), name) for i in range(self.info.n_layers)])

    def input_norm(self, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The block's input norm (ln1) as a function of ``resid_pre``: what attention reads."""
        raise NotImplementedError

    @property
    def available_sites(self) -> list[str]:
        """Canonical sites this model has."""
        if not self.info.has_attention:
            return ["resid_pre", "resid_post", "logits"]
        return [s for s in (*LAYER_SITES, "logits") if not (s == "resid_mid" and self.info.parallel_block)]

    # ----------------------------------------------------------------- inputs
    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
            v = getattr(tok, attr, None) if tok is not None else None
            if v is not None:
                return int(v)
        return 0

    def tokenize(self, texts: str | Sequence[str], *, padding_side: str = "right", add_bos: bool | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise prompts into ``(tokens [B, T], attention_mask [B, T])`` padded on ``padding_side``.

        ``add_bos=None`` follows the tokenizer (SmolLM2/Llama-style tokenizers add no BOS by default).
        """
        if self.tokenizer is None:
            raise SiteError("this model has no tokenizer; pass token ids to run()")
        if isinstance(texts, str):
            texts = [texts]
        ids = [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if add_bos and bos is not None:
            ids = [s if s[:1] == [bos] else [bos, *s] for s in ids]
        empty = [i for i, s in enumerate(ids) if not s]
        if empty:
            raise SiteError(f"prompt(s) {empty[:5]} tokenise to nothing")
        return pad_sequences(ids, self.pad_token_id, side=padding_side)  # type: ignore[arg-type]

    def _prepare(self, tokens: Any, attention_mask: torch.Tensor | None, padding_side: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(tokens, torch.Tensor):
            if tokens.ndim == 1:
                tokens = tokens[None]
            if tokens.ndim != 2:
                raise SiteError(f"tokens must be [batch, seq], got shape {tuple(tokens.shape)}")
            if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
                raise ConfigError(f"tokens must be integer ids, got a {tokens.dtype} tensor")
            if tokens.numel() == 0:
                raise ConfigError(f"empty batch: tokens have shape {tuple(tokens.shape)} (need at least one "
                                  "sequence of at least one token)")
            mask = torch.ones_like(tokens) if attention_mask is None else attention_mask
            if mask.shape != tokens.shape:
                raise SiteError(f"attention_mask shape {tuple(mask.shape)} != tokens {tuple(tokens.shape)}")
            return tokens.long(), mask.long()
        if attention_mask is not None:
            raise SiteError("attention_mask is only accepted with a token tensor")
        seqs = [list(s) for s in tokens]
        if not seqs:
            raise ConfigError("empty batch: no sequences were given (need at least one sequence of at least "
                              "one token)")
        return pad_sequences(seqs, self.pad_token_id, side=padding_side)  # type: ignore[arg-type]

    def check_inputs(self, tokens: torch.Tensor) -> None:
        """Refuse ids the model cannot embed and sequences longer than its positions, before any forward.

        Ids must lie in ``[0, vocab_size)``; the (padded) length ``T`` must not exceed
        ``ModelInfo.max_positions`` where the model declares one. Nothing is ever truncated: an over-long
        input is an error naming both lengths.
        """
        vocab = self.info.vocab_size
        bad = (tokens < 0) | (tokens >= vocab)
        if bool(bad.any()):
            row, pos = (int(i) for i in bad.nonzero()[0])
            raise ConfigError(f"token id {int(tokens[row, pos])} (row {row}, position {pos}) is outside the "
                              f"vocabulary of size {vocab} (valid ids 0..{vocab - 1})")
        limit = self.info.max_positions
        if limit is not None and tokens.shape[1] > limit:
            raise ConfigError(f"sequences are {tokens.shape[1]} tokens long but the model has only {limit} "
                              f"positions; shorten the inputs to at most {limit} tokens (nothing is truncated "
                              "silently)")

    # ----------------------------------------------------------------- running
    def run(self, tokens: torch.Tensor | Sequence[Sequence[int]], attention_mask: torch.Tensor | None = None, *,
            sites: Sequence[str], layers: int | Sequence[int] | None = None, reducer: Reducer | None = None,
            positions: Positions = "all", batch_size: int | None = None, padding_side: str = "right",
            store_device: str | torch.device = "cpu") -> Activations | None:
        """Run the model and collect ``sites`` at ``layers`` (see :mod:`geoprobe.backends.sites`).

        Inputs are checked before any forward pass (one-line :class:`~geoprobe.errors.ConfigError`): at least
        one non-empty sequence, ids inside the vocabulary, no more tokens than the model has positions (see
        :meth:`check_inputs`; nothing is truncated). Only the requested sites are hooked; the forward stops after the deepest requested layer unless
        ``logits`` is requested. Inputs are processed ``batch_size`` rows at a time (default: all). With a
        ``reducer`` every activation is handed to it as a :class:`SiteActivation` and dropped, so memory does
        not grow with the number of sequences; otherwise an :class:`Activations` dict is returned
        (``positions="final"`` keeps only each row's final real token, left or right padding).

        Args:
            tokens: ``[B, T]`` ids (with ``attention_mask``, 1 = real token) or ragged id lists (padded on
                ``padding_side``).
            sites: canonical site names.
            layers: int, list, or None for every layer (negative indices count from the end).
            reducer: optional per-activation callback; ``run`` then returns None.
            positions: ``"all"`` or ``"final"``.
            batch_size: rows per forward pass (a positive integer; None: all rows at once).
            store_device: where cached activations are kept.
        """
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, Integral)
                                       or batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer (or None for all rows at once), got "
                              f"{batch_size!r}")
        tokens, mask = self._prepare(tokens, attention_mask, padding_side)
        self.check_inputs(tokens)
        sites = check_sites(sites, has_attention=self.info.has_attention,
                            parallel_block=self.info.parallel_block, available=self.available_sites)
        if positions not in ("all", "final"):
            raise SiteError(f"positions must be 'all' or 'final', got {positions!r}")
        layer_list = check_layers(layers, self.info.n_layers)
        layer_sites = [s for s in sites if s in LAYER_SITES]
        stop = None
        if "logits" not in sites:  # edits at later layers cannot change earlier ones: stopping is safe
            stop = (max(layer_list) + 1) if layer_sites else 0
            if stop >= self.info.n_layers:
                stop = None
        plan = CapturePlan(sites=sites, layers=layer_list if layer_sites else [], stop_at_layer=stop,
                           final_logits_only=positions == "final" and "logits" in sites)
        n = tokens.shape[0]
        bs = n if batch_size is None else int(batch_size)
        store: dict[tuple[str, int | None], list[torch.Tensor]] = {}
        for s in range(0, n, bs):
            tb = tokens[s:s + bs].to(self.device)
            mb = mask[s:s + bs].to(self.device)
            final_idx = final_token_index(mb)
            rows = slice(s, s + tb.shape[0])

            def emit(site: str, layer: int | None, value: torch.Tensor, _rows=rows, _mb=mb, _fi=final_idx,
                     _gathered: bool = False) -> None:
                if positions == "final" and not _gathered:
                    value = gather_final(value, _fi, site)  # before the float32 copy: only the rows kept
                value = value.detach().to(torch.float32, copy=True)
                if reducer is not None:
                    reducer(SiteActivation(site, layer, value, _rows, _mb, _fi, positions))
                else:
                    store.setdefault((site, layer), []).append(value.to(store_device))

            with torch.no_grad():
                logits = self._forward(tb, mb, plan, emit, list(self._edits))
            if "logits" in sites:
                if logits is None:
                    raise RuntimeError("backend returned no logits")
                if positions == "final" and logits.shape[1] == 1:  # the backend unembedded the final rows only
                    emit("logits", None, logits[:, 0], _gathered=True)
                else:
                    emit("logits", None, logits)
        if reducer is not None:
            return None
        acts = Activations({k: torch.cat(v) for k, v in store.items()})
        acts.attention_mask = mask
        acts.final_index = final_token_index(mask)
        return acts

    def hook_names(self) -> list[str]:
        """Every TransformerLens hook name this model can be cached at (``logits`` last)."""
        from geoprobe.backends.sites import tl_hook_name

        return [tl_hook_name(s, layer) for layer in range(self.info.n_layers) for s in self.available_sites
                if s != "logits"] + ["logits"]

    def run_with_cache(self, tokens: torch.Tensor | Sequence[Sequence[int]],
                       attention_mask: torch.Tensor | None = None, *, names_filter: Any = None,
                       positions: Positions = "all", batch_size: int | None = None, padding_side: str = "right"
                       ) -> Any:
        """Run the model once and return an :class:`~geoprobe.backends.cache.ActivationCache` keyed by
        TransformerLens hook names (``blocks.{l}.hook_resid_post``, ``blocks.{l}.attn.hook_rot_k``, ``logits``).

        ``names_filter``: None (every hook), a hook name, a list of names, or a predicate ``name -> bool``.
        Only the selected sites are hooked, in one pass (see :meth:`run` for the other arguments).
        """
        from geoprobe.backends.cache import ActivationCache, hook_names_for
        from geoprobe.backends.sites import site_from_hook_name, tl_hook_name

        names = hook_names_for(names_filter, self.hook_names())
        pairs = [site_from_hook_name(n) for n in names]
        sites = list(dict.fromkeys(s for s, _ in pairs))
        layers = sorted({layer for _, layer in pairs if layer is not None})
        acts = self.run(tokens, attention_mask, sites=sites, layers=layers or None, positions=positions,
                        batch_size=batch_size, padding_side=padding_side)
        assert acts is not None
        cache = ActivationCache({tl_hook_name(s, layer): acts[s, layer] for s, layer in pairs})
        cache.attention_mask, cache.final_index = acts.attention_mask, acts.final_index
        return cache

    def logits(self, tokens: torch.Tensor | Sequence[Sequence[int]], attention_mask: torch.Tensor | None = None,
               *, batch_size: int | None = None, padding_side: str = "right") -> torch.Tensor:
        """Logits ``[B, T, vocab]`` (float32) with the active interventions applied."""
        acts = self.run(tokens, attention_mask, sites=["logits"], batch_size=batch_size,
                        padding_side=padding_side)
        assert acts is not None
        return acts["logits"]

    # ----------------------------------------------------------------- interventions
    @contextlib.contextmanager
    def intervene(self, edits: Sequence[Edit]) -> Iterator[ModelHandle]:
        """Apply ``edits`` to every forward pass inside the ``with`` block.

        ``Edit.layer`` may count from the end (``-1`` is the last block), as everywhere else. Nothing on the
        model is modified (edits live on the handle and are attached as temporary hooks per
        forward), so leaving the block restores the model exactly, also after an exception.
        """
        for e in edits:
            if e.site not in self.available_sites:
                raise SiteError(f"cannot edit {e.site!r}: not available for this model")
        edits = [replace(e, layer=layer_index(e.layer, self.info.n_layers)) for e in edits]
        self._edits.extend(edits)
        try:
            yield self
        finally:
            for e in edits:
                self._edits.remove(e)

    def ablate_heads(self, heads: dict[int, Sequence[int]], *, mode: str = "zero",
                     means: dict[int, torch.Tensor] | None = None):
        """Context manager: zero (or mean-) ablate heads through ``z``; see :mod:`geoprobe.backends.interventions`."""
        from geoprobe.backends.interventions import ablate_heads

        return ablate_heads(self, heads, mode=mode, means=means)

    def bypass_layers(self, layers: int | Sequence[int]):
        """Context manager: ``resid_post := resid_pre`` at ``layers`` (the block is skipped)."""
        from geoprobe.backends.interventions import bypass_layers

        return bypass_layers(self, layers)

    def zero_attention(self, layers: int | Sequence[int]):
        """Context manager: ``attn_out := 0`` at ``layers`` (MLP kept)."""
        from geoprobe.backends.interventions import zero_attention

        return zero_attention(self, layers)

    def zero_mlp(self, layers: int | Sequence[int]):
        """Context manager: ``mlp_out := 0`` at ``layers`` (attention kept)."""
        from geoprobe.backends.interventions import zero_mlp

        return zero_mlp(self, layers)

    def value_operator(self, layer: int, op: Callable[[torch.Tensor], torch.Tensor]):
        """Context manager: apply ``op`` to the concatenated-heads value vectors of ``layer``."""
        from geoprobe.backends.interventions import value_operator

        return value_operator(self, layer, op)

    def __repr__(self) -> str:
        i = self.info
        return (f"<{type(self).__name__} {i.family} L={i.n_layers} H={i.n_heads}/{i.n_kv_heads} "
                f"d={i.d_model} backend={self.backend} source={i.source}>")
