"""Batch size with back-off on out-of-memory, for the scan's forward passes.

:class:`BatchSizer` runs ``fn(batch_size)``; with ``auto=True`` an allocation failure (``torch.OutOfMemoryError``
on CUDA, the CPU allocator's ``RuntimeError``/``MemoryError``, as recognised by
:func:`geoprobe.memory.out_of_memory_message`) halves the size and runs ``fn`` again, down to 1. The size that
worked carries over to the next call, and every halving is recorded (:attr:`BatchSizer.history`) for the
manifest. With ``auto=False`` the error propagates unchanged. ``fn`` must be safe to re-run from scratch.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any, TypeVar

from geoprobe.errors import ConfigError
from geoprobe.memory import out_of_memory_message

T = TypeVar("T")
#: first size tried by ``--batch-size auto``
AUTO_START = 64


class BatchSizer:
    """The current batch size, halved on out-of-memory when ``auto`` (module docstring)."""

    def __init__(self, size: int | str = AUTO_START) -> None:
        self.auto = size == "auto"
        self.size = AUTO_START if self.auto else int(size)
        if self.size < 1:
            raise ConfigError(f"batch size must be >= 1 or 'auto', got {size}")
        self.start = self.size
        self.history: list[dict[str, Any]] = []

    def run(self, fn: Callable[[int], T], stage: str = "") -> T:
        """``fn(size)``, halving ``size`` after each out-of-memory error when ``auto``."""
        while True:
            try:
                return fn(self.size)
            except (MemoryError, RuntimeError) as exc:
                why = out_of_memory_message(exc)
                if not self.auto or why is None or self.size == 1:
                    raise
                self.history.append({"stage": stage, "failed_at": self.size, "error": why})
                self.size //= 2
                _free_memory()

    def to_dict(self) -> dict[str, Any]:
        return {"requested": "auto" if self.auto else self.start, "start": self.start, "final": self.size,
                "halvings": list(self.history)}


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
