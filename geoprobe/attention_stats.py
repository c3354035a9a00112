"""Attention statistics from captured queries and keys, without materialising the ``[B, H, T, T]`` pattern.

Inputs follow the canonical site layout: ``q [B, T, n_heads, d]`` and ``k [B, T, n_kv_heads, d]`` as attention
uses them (after rotary embedding), ``attention_mask [B, T]`` (1 = real token). Query head ``h`` reads KV head
``h // G`` with ``G = n_heads / n_kv_heads`` (grouped-query attention); keys are never repeated in memory.

Score of query position i and key position j in head h (the model's own logit, before the softmax)::

    s_ij = cap(scale * q_i . k_j) - m_h * (i - j)         if key j is visible to query i, else -inf
    cap(x) = c * tanh(x / c)                               (logit soft-capping with cap c; identity if None)
    visible(i, j) = j <= i  and  i - j < W  and  attention_mask[j] = 1      (W: sliding window, if any)

``m_h`` are ALiBi slopes (absent: 0). Any bias that differs from ``-m_h (i - j)`` by a per-row constant (BLOOM's
``+m_h j``) gives the same probabilities, so the same statistics. With ``p_ij = softmax_j(s_ij)``:

    lse_i   = log sum_j exp(s_ij)                                          (natural log)
    H_i     = -sum_j p_ij log2 p_ij = (lse_i - sum_j p_ij s_ij) / ln 2     (bits)
    mass_i(S) = sum_{j in S} p_ij                                          (attention mass on key set S)

A query row that sees no key (a padding position before the first real token) gets ``H = 0``, ``lse = -inf``
and zero mass, the convention of the eager pattern's all-zero rows.

Two exact paths compute these:

``stream`` (any device): per chunk of ``block_size`` query rows, one pass over key blocks of ``block_size``
keys (tiles that stay in cache) with a running maximum ``M``,
``l = sum_j exp(s_j - M)`` and ``a = sum_j exp(s_j - M) (s_j - M)``; when a block raises ``M`` to ``M'``
the sums are rescaled by ``alpha = exp(M - M')``: ``l <- alpha l``, ``a <- alpha (a + l (M - M'))``. At
the end ``lse = M + log l`` and ``H = (log l - a / l) / ln 2`` (``a`` holds scores relative to the
maximum, so no large numbers cancel). Key blocks wholly outside every row's causal/window range are
skipped. With ``queries="all"`` a tile is ``block_size`` rows by ``block_size`` keys; with P requested
positions (e.g. the final one) the P rows form one chunk and key blocks grow to
``max(block_size, block_size**2 // P)`` keys (one block for a final row up to T = ``block_size**2``), so
peak extra memory is at most ``B * n_heads * max(block_size**2, P * block_size)`` floats instead of
``B * n_heads * T * T``.

``flex`` (CUDA with ``torch.nn.attention.flex_attention``): one fused attention call with the keys in place of
the values, ``out_i = sum_j p_ij V_j`` with ``V_j = [k_j, j (ALiBi only), 1{j in S_1}, ...]``, returning
``lse_i``; then ``sum_j p_ij s_ij = scale * q_i . kbar_i - m_h (i - jbar_i)`` (``kbar``, ``jbar``: the first channels of
``out``), ``H = (lse - that) / ln 2`` and ``mass(S) = out[S channel]``. The identity needs a score linear
in k, so soft-capped scores always use ``stream``. ``method="auto"`` picks ``flex`` only on CUDA and only for
at least ``FLEX_MIN_ROWS`` query rows (every row of a long sequence): a compiled kernel is specialised to its
shapes, and for a few rows (the final query of each length bucket of a scan) one ``stream`` tile is cheaper
than compiling one kernel per batch length. Under ``auto`` a flex kernel that fails to build falls back to
``stream`` with one warning, and ``auto`` does not try flex again in this process. On CPU ``flex`` runs
PyTorch's reference (eager) implementation, which materialises the scores: it exists there only to test the
CUDA path's arithmetic (compiled flex on CPU cannot return the log-sum-exp).

QK alignment needs no pattern (cosines of the final query with every key); attention focusing needs the
final query's per-head entropy: ``queries="final"``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from geoprobe.errors import ConfigError
from geoprobe.infotheory import LN2

Queries = Literal["all", "final"]
METHODS = ("auto", "stream", "flex")
#: ``method="auto"`` uses flex attention (CUDA) only for at least this many query rows per call
FLEX_MIN_ROWS = 128
#: dynamo's recompile limit while the compiled flex kernel is in use (one compilation per distinct shape:
#: the default limit of 8 would silently fall back to the unfused kernel after 8 sequence lengths)
FLEX_RECOMPILE_LIMIT = 64
_FLEX_FAILED: str | None = None  # why compiled flex failed in this process (``auto`` then streams)


@dataclass
class AttentionStats:
    """Per-row attention statistics.

    Attributes:
        entropy_bits: ``[B, n_heads, P]`` row entropies H_i in bits (float32).
        lse: ``[B, n_heads, P]`` natural-log normaliser ``log sum_j exp(s_ij)`` (``-inf`` for rows that see no
            key).
        mass: ``[B, n_heads, P, S]`` attention mass on each key set, or None when no key sets were given.
        query_positions: ``[B, P]`` the query positions i of the rows (long).
        method: ``"stream"`` or ``"flex"`` (which exact path computed them).
    """

    entropy_bits: torch.Tensor
    lse: torch.Tensor
    mass: torch.Tensor | None
    query_positions: torch.Tensor
    method: str


def flex_available() -> bool:
    """Whether this torch has ``torch.nn.attention.flex_attention`` (PyTorch >= 2.5)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def final_query_index(attention_mask: torch.Tensor | None, batch: int, t: int, device: torch.device
                      ) -> torch.Tensor:
    """Index of each row's last real token ``max{t : mask[b, t] = 1}`` (``T - 1`` without a mask): ``[B]``."""
    if attention_mask is None:
        return torch.full((batch,), t - 1, dtype=torch.long, device=device)
    m = attention_mask.bool().to(device)
    if not bool(m.any(dim=1).all()):
        raise ConfigError("a sequence in the batch has no real token (its attention mask is all zeros)")
    return (t - 1 - m.flip(1).int().argmax(dim=1)).long()


def _check(q: torch.Tensor, k: torch.Tensor, attention_mask, key_sets, alibi_slopes, softcap, block_size,
           sliding_window, method) -> None:
    if q.ndim != 4 or k.ndim != 4:
        raise ConfigError(f"q and k must be [batch, seq, heads, d_head]; got {tuple(q.shape)} and {tuple(k.shape)}")
    b, t, h, d = q.shape
    if k.shape[0] != b or k.shape[1] != t or k.shape[3] != d:
        raise ConfigError(f"k {tuple(k.shape)} does not match q {tuple(q.shape)} in batch, seq or d_head")
    if k.shape[2] <= 0 or h % k.shape[2]:
        raise ConfigError(f"n_heads={h} is not a multiple of n_kv_heads={k.shape[2]}")
    if attention_mask is not None and tuple(attention_mask.shape) != (b, t):
        raise ConfigError(f"attention_mask must be [batch, seq] = {(b, t)}; got {tuple(attention_mask.shape)}")
    if key_sets is not None and (key_sets.ndim != 3 or key_sets.shape[0] not in (1, b) or key_sets.shape[2] != t):
        raise ConfigError(f"key_sets must be boolean [batch or 1, n_sets, seq={t}]; got {tuple(key_sets.shape)}")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) != (h,):
        raise ConfigError(f"alibi_slopes must have one slope per query head ({h}); got {tuple(alibi_slopes.shape)}")
    if softcap is not None and not softcap > 0:
        raise ConfigError(f"softcap must be a positive number or None; got {softcap}")
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1; got {block_size}")
    if sliding_window is not None and sliding_window < 1:
        raise ConfigError(f"sliding_window must be >= 1 or None; got {sliding_window}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; valid choices: {', '.join(METHODS)}")


def _query_positions(queries, attention_mask, b: int, t: int, device) -> torch.Tensor:
    if isinstance(queries, str):
        if queries == "all":
            return torch.arange(t, device=device).expand(b, t)
        if queries == "final":
            return final_query_index(attention_mask, b, t, device)[:, None]
        raise ConfigError(f"queries must be 'all', 'final' or a [batch, P] tensor of positions; got {queries!r}")
    pos = torch.as_tensor(queries, dtype=torch.long, device=device)
    if pos.ndim == 1:
        pos = pos.expand(b, pos.shape[0])
    if pos.ndim != 2 or pos.shape[0] != b:
        raise ConfigError(f"query positions must be [P] or [batch={b}, P]; got shape {tuple(pos.shape)}")
    pos = torch.where(pos < 0, pos + t, pos)
    if bool(((pos < 0) | (pos >= t)).any()):
        raise ConfigError(f"query positions must lie in [-{t}, {t}); got {queries}")
    return pos


def attention_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    scale: float,
    attention_mask: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    queries: Queries | torch.Tensor = "all",
    key_sets: torch.Tensor | None = None,
    block_size: int = 128,
    method: str = "auto",
) -> AttentionStats:
    """Row entropies (bits), log-normalisers and key-set masses of causal attention from ``q`` and ``k``.

    See the module docstring for the score, the statistics and both paths' formulas.

    Args:
        q: ``[B, T, n_heads, d]`` post-rotary queries (any float dtype; statistics are float32).
        k: ``[B, T, n_kv_heads, d]`` post-rotary keys, not expanded under grouped-query attention.
        scale: the model's factor on ``q . k`` (``ModelInfo.attn_scale``).
        attention_mask: ``[B, T]`` 1 = real token (padded keys get probability 0), left or right padding.
        sliding_window: W: query i sees keys ``i - W < j <= i`` (``ModelInfo.sliding_window``).
        softcap: logit soft-capping constant c, or None.
        alibi_slopes: ``[n_heads]`` ALiBi slopes m_h, or None.
        queries: ``"all"`` (P = T), ``"final"`` (P = 1: each row's last real token) or positions ``[P]`` /
            ``[B, P]`` (negative counts from the end).
        key_sets: boolean ``[B or 1, S, T]``: ``mass[..., s]`` is the attention on keys with
            ``key_sets[b, s, j]``.
        block_size: tile size of the ``stream`` path (query rows per chunk and keys per block).
        method: ``auto`` (``flex`` on CUDA when available and no soft-capping, else ``stream``), ``stream``
            or ``flex``.
    """
    _check(q, k, attention_mask, key_sets, alibi_slopes, softcap, block_size, sliding_window, method)
    b, t, _, _ = q.shape
    pos = _query_positions(queries, attention_mask, b, t, q.device)
    auto = method == "auto"
    if auto:
        method = _auto_method(q, softcap, pos.shape[1])
    if method == "flex":
        if not flex_available():
            raise ConfigError("method 'flex' needs torch.nn.attention.flex_attention (PyTorch >= 2.5); "
                              "valid choices here: auto, stream")
        if softcap is not None:
            raise ConfigError("method 'flex' cannot use soft-capped scores (the identity needs a score linear "
                              "in k); use method 'stream' or 'auto'")
        try:
            return _flex(q, k, pos, scale, attention_mask, sliding_window, alibi_slopes, key_sets)
        except Exception as exc:  # auto only: a kernel this GPU/torch cannot build falls back to streaming
            if not auto or isinstance(exc, torch.OutOfMemoryError):
                raise
            global _FLEX_FAILED
            _FLEX_FAILED = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            warnings.warn(f"flex attention failed ({_FLEX_FAILED}); computing attention statistics by streaming "
                          "instead (for the rest of this process)", RuntimeWarning, stacklevel=2)
    all_rows = isinstance(queries, str) and queries == "all"
    return _stream(q, k, pos, all_rows, scale, attention_mask, sliding_window, softcap, alibi_slopes, key_sets,
                   block_size)


def _auto_method(q: torch.Tensor, softcap: float | None, n_rows: int) -> str:
    """``flex`` on CUDA for at least ``FLEX_MIN_ROWS`` query rows when this torch has it, the score is linear
    in k and flex has not failed in this process; else ``stream``."""
    ok = q.is_cuda and softcap is None and n_rows >= FLEX_MIN_ROWS and _FLEX_FAILED is None
    return "flex" if ok and flex_available() else "stream"


def key_block_size(n_rows: int, block_size: int, all_rows: bool) -> int:
    """Keys per tile of the ``stream`` path: ``block_size`` for all rows, else ``max(block_size,
    block_size**2 // n_rows)`` (a tile of P requested rows holds at most ``max(block_size**2, P * block_size)``
    scores per head)."""
    return block_size if all_rows else max(block_size, block_size * block_size // max(1, n_rows))


def _stream(q, k, pos, all_rows, scale, attention_mask, window, softcap, alibi_slopes, key_sets, block_size
            ) -> AttentionStats:
    b, t, h, d = q.shape
    hk = k.shape[2]
    g = h // hk
    dev = q.device
    p = pos.shape[1]
    f32 = torch.float32
    # [B, Hkv, G, P, d]: query head h = kv * G + g (the repeat-interleave convention)
    qs = torch.gather(q, 1, pos[:, :, None, None].expand(b, p, h, d)).to(f32)
    qs = qs.permute(0, 2, 1, 3).reshape(b, hk, g, p, d) * scale  # scale folded into q
    kh = k.to(f32).permute(0, 2, 1, 3)  # [B, Hkv, T, d]
    kbias = None  # 0 on real keys, -inf on padding keys
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        kbias = torch.zeros(b, t, device=dev, dtype=f32).masked_fill_(~attention_mask.bool().to(dev), -math.inf)
    ind = key_sets.to(dev, f32) if key_sets is not None else None  # [B or 1, S, T]
    slopes = alibi_slopes.to(dev, f32).reshape(1, hk, g, 1, 1) if alibi_slopes is not None else None
    m = torch.full((b, hk, g, p), -math.inf, device=dev, dtype=f32)
    ell = torch.zeros((b, hk, g, p), device=dev, dtype=f32)
    a = torch.zeros((b, hk, g, p), device=dev, dtype=f32)
    mass = torch.zeros((b, hk, g, p, ind.shape[1]), device=dev, dtype=f32) if ind is not None else None
    w = window if window is not None else t + 1
    # tiles: chunks of block_size query rows ("all": rows are positions) x blocks of block_size keys, so a
    # tile's scores stay in cache; explicit positions form one chunk
    chunks = [slice(r0, min(p, r0 + block_size)) for r0 in range(0, p, block_size)] if all_rows else [slice(0, p)]
    kblock = key_block_size(p, block_size, all_rows)
    for rs in chunks:
        i = pos[:, rs]  # [B, R]
        i_lo, i_hi = int(i.min()), int(i.max())
        qb = qs[:, :, :, rs]
        r = qb.shape[3]
        qb = qb.reshape(b, hk, g * r, d)
        cm = torch.full((b, hk, g, r), -math.inf, device=dev, dtype=f32)
        cl = torch.zeros((b, hk, g, r), device=dev, dtype=f32)
        ca = torch.zeros((b, hk, g, r), device=dev, dtype=f32)
        cmass = torch.zeros((b, hk, g, r, ind.shape[1]), device=dev, dtype=f32) if ind is not None else None
        first = max(0, i_lo - w + 1) // kblock * kblock  # keys below i_lo - w + 1 are seen by no row
        for j0 in range(first, i_hi + 1, kblock):
            j1 = min(t, j0 + kblock)
            bk = j1 - j0
            s = torch.matmul(qb, kh[:, :, j0:j1].transpose(-1, -2)).view(b, hk, g, r, bk)
            if softcap is not None:
                s.div_(softcap).tanh_().mul_(softcap)
            j = torch.arange(j0, j1, device=dev)
            if slopes is not None:
                s.sub_(slopes * (i[:, :, None] - j[None, None, :])[:, None, None].to(f32))
            if kbias is not None:
                s.add_(kbias[:, None, None, None, j0:j1])
            if j1 - 1 > i_lo or i_hi - j0 >= w:  # some row misses some key of the tile (causal/window edge)
                dist = i[:, :, None] - j[None, None, :]  # [B, R, bk]
                s.masked_fill_(((dist < 0) | (dist >= w))[:, None, None], -math.inf)
            m_new = torch.maximum(cm, s.amax(-1))
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            alpha = torch.exp(cm - m_safe)  # 0 while a row has seen nothing
            shift = torch.where(cl > 0, cl * (cm - m_safe), torch.zeros_like(cl))
            s.sub_(m_safe[..., None])  # s - M' (-inf on hidden keys)
            e = torch.exp(s)  # 0 on hidden keys
            cl = alpha * cl + e.sum(-1)
            if cmass is not None:
                ib = ind[:, :, j0:j1].transpose(1, 2)[:, None, None]  # [B or 1, 1, 1, bk, S]
                cmass = alpha[..., None] * cmass + e @ ib
            s.clamp_min_(torch.finfo(f32).min)  # hidden keys: e = 0 times a finite number
            ca = alpha * (ca + shift) + e.mul_(s).sum(-1)
            cm = m_new
        m[:, :, :, rs], ell[:, :, :, rs], a[:, :, :, rs] = cm, cl, ca
        if mass is not None:
            mass[:, :, :, rs] = cmass
    seen = ell > 0
    l_safe = torch.where(seen, ell, torch.ones_like(ell))
    ent = torch.where(seen, (torch.log(l_safe) - a / l_safe) / LN2, torch.zeros_like(ell)).clamp_min(0.0)
    lse = torch.where(seen, m + torch.log(l_safe), torch.full_like(ell, -math.inf))
    if mass is not None:
        mass = (mass / l_safe[..., None]).reshape(b, h, p, -1)
    return AttentionStats(ent.reshape(b, h, p), lse.reshape(b, h, p), mass, pos, "stream")


_COMPILED_FLEX = None


def _flex_fn(device: torch.device):
    """Compiled flex attention on CUDA (cached); the eager reference elsewhere."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _COMPILED_FLEX is None:
        cfg = torch._dynamo.config
        name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
        setattr(cfg, name, max(int(getattr(cfg, name)), FLEX_RECOMPILE_LIMIT))
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def _flex(q, k, pos, scale, attention_mask, window, alibi_slopes, key_sets) -> AttentionStats:
    from torch.nn.attention.flex_attention import create_block_mask

    b, t, h, d = q.shape
    dev = q.device
    p = pos.shape[1]
    f32 = torch.float32
    qs = torch.gather(q, 1, pos[:, :, None, None].expand(b, p, h, d)).to(f32).transpose(1, 2).contiguous()
    kh = k.to(f32).transpose(1, 2).contiguous()  # [B, Hkv, T, d]
    hk = kh.shape[1]
    # values: [k_j, (j if ALiBi), 1{j in S_1}, ...], zero-padded to a power of two >= 16 channels (just k_j
    # when there is neither ALiBi nor a key set and d is a power of two: a standard attention call)
    chans = [kh]
    if alibi_slopes is not None:
        chans.append(torch.arange(t, device=dev, dtype=f32).view(1, 1, t, 1).expand(b, hk, t, 1))
    n_sets = 0
    if key_sets is not None:
        n_sets = key_sets.shape[1]
        chans.append(key_sets.to(dev, f32).transpose(1, 2)[:, None].expand(b, hk, t, n_sets))
    off = d + (1 if alibi_slopes is not None else 0)  # first key-set channel
    width = off + n_sets
    padded = max(16, 1 << (width - 1).bit_length())
    if padded > width:
        chans.append(torch.zeros(b, hk, t, padded - width, device=dev, dtype=f32))
    v = torch.cat(chans, dim=-1).contiguous() if len(chans) > 1 else kh.contiguous()
    key_ok = attention_mask.bool().to(dev) if attention_mask is not None else torch.ones(b, t, dtype=torch.bool,
                                                                                          device=dev)
    w = window if window is not None else t + 1

    def mask_mod(bi, hi, qi, kj):
        i = pos[bi, qi]
        return (kj <= i) & (i - kj < w) & key_ok[bi, kj]

    score_mod = None
    if alibi_slopes is not None:
        slopes = alibi_slopes.to(dev, f32)

        def score_mod(score, bi, hi, qi, kj):
            return score - slopes[hi] * (pos[bi, qi] - kj).to(f32)

    block_mask = create_block_mask(mask_mod, B=b, H=None, Q_LEN=p, KV_LEN=t, device=dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU reference path warns that it is not compiled
        out, lse = _flex_fn(dev)(qs, kh, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                                 enable_gqa=hk != h, return_lse=True)
    out, lse = out.float(), lse.float()
    mean_s = scale * (qs * out[..., :d]).sum(-1)  # sum_j p_j scale q.k_j
    if alibi_slopes is not None:
        mean_s = mean_s - alibi_slopes.to(dev, f32)[None, :, None] * (pos[:, None, :].to(f32) - out[..., d])
    seen = torch.isfinite(lse)
    ent = torch.where(seen, (lse - mean_s) / LN2, torch.zeros_like(lse)).clamp_min(0.0)
    lse = torch.where(seen, lse, torch.full_like(lse, -math.inf))
    mass = None
    if key_sets is not None:
        mass = torch.where(seen[..., None], out[..., off:off + n_sets], torch.zeros_like(out[..., :n_sets]))
    return AttentionStats(ent, lse, mass, pos, "flex")
