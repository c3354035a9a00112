"""The real tier's model: SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 KV heads) from the shared GGUF file.

Tests skip when the file (or the ``gguf`` package) is absent. The first conversion dequantises (~20 s on 2 cores)
and caches a plain HF folder under ``$GEOPROBE_CACHE_DIR`` (default here: ``<tmp>/geoprobe-test-cache``); later
loads take about a second.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

#: the shared reference folder beside the repository (as SHARED_DIR in tests/conftest.py)
SMOLLM2_GGUF = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file; sets ``GEOPROBE_CACHE_DIR`` for the session when the caller has not."""
    if not SMOLLM2_GGUF.is_file():
        pytest.skip(f"{SMOLLM2_GGUF} is absent")
    pytest.importorskip("gguf")
    os.environ.setdefault("GEOPROBE_CACHE_DIR", str(Path(tempfile.gettempdir()) / "geoprobe-test-cache"))
    return SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2_cache_dir(smollm2_gguf) -> Path:
    return Path(os.environ["GEOPROBE_CACHE_DIR"])


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_gguf, smollm2_cache_dir):
    """The model on the plain-torch backend (CPU, float32), loaded once per session."""
    from geoprobe.backends import load_model

    return load_model(smollm2_gguf, backend="torch", device="cpu", cache_dir=smollm2_cache_dir)
