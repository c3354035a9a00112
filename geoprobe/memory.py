"""Memory checks that turn an impossible allocation into one clear line.

- :func:`check_fits` refuses, before anything is allocated, a request whose *lower bound* in bytes already
  exceeds the memory available to this process (Linux: ``MemAvailable`` of ``/proc/meminfo``; elsewhere the
  physical memory; no check where neither is known). A lower bound never refuses a request that could fit.
- :func:`out_of_memory_message` recognises an allocation failure raised anyway (``MemoryError``, torch's
  ``OutOfMemoryError``, or a ``RuntimeError`` from the CPU allocator) and names the size it tried.
"""

from __future__ import annotations

import os
import re

from geoprobe.errors import ConfigError

_OOM_PATTERNS = ("not enough memory", "defaultcpuallocator", "out of memory", "cannot allocate memory")


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``, binary units up to PiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def available_bytes() -> int | None:
    """Memory this process can still allocate: ``MemAvailable`` (Linux), else total physical memory, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(nbytes: int, what: str) -> None:
    """Raise :class:`ConfigError` when ``nbytes`` (a lower bound of what ``what`` needs) cannot fit in memory."""
    avail = available_bytes()
    if avail is not None and nbytes > avail:
        raise ConfigError(f"{what} needs at least {format_bytes(nbytes)} of memory; {format_bytes(avail)} is "
                          "available: use smaller sizes")


def out_of_memory_message(exc: BaseException) -> str | None:
    """For an allocation failure, ``'out of memory (tried to allocate 3.6 TiB)'``; None for any other error."""
    if not isinstance(exc, (MemoryError, RuntimeError)):
        return None
    text = str(exc)
    if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError" and not any(
            p in text.lower() for p in _OOM_PATTERNS):
        return None
    size = ""
    m = re.search(r"allocate (\d+) bytes", text)
    if m:
        size = f" (tried to allocate {format_bytes(int(m.group(1)))})"
    else:
        m = re.search(r"allocate ([\d.]+ ?[KMGTP]i?B)", text)
        if m:
            size = f" (tried to allocate {m.group(1)})"
    return f"out of memory{size}"
