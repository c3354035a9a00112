"""Head bookkeeping shared by the probes: grouped-query attention (GQA) and head concatenation.

The functions live in :mod:`geoprobe.tensor_ops` (one low module that backends may import too).
"""

from geoprobe.tensor_ops import concat_heads, expand_kv, kv_group_size

__all__ = ["kv_group_size", "expand_kv", "concat_heads"]
