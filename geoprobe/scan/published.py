"""Published Paper III values for the models it measured, to print beside a scan's own numbers.

Values (the paper's comparison table): PC1+PC2 share of the final-token value manifold on the mixed prompt
pool and on the mathematics-restricted set, mean |off-diagonal cos| of the key weights in the early layers,
attention focusing (% drop of the final query's attention entropy from the first to the last layer),
Spearman rho(PC1, next-token entropy) on mixed / math prompts, and the in-context noisy-label MAE (bits).
A range ``(low, high)`` is what the paper gives as a range; ``(x, x)`` is a single value; None = not reported.
The paper's own text disagrees with its tables in places; these are the table values.

:func:`published_for` matches a model id or path by its last component, case-insensitively
(``EleutherAI/pythia-410m``, ``/models/Pythia-410M`` and ``pythia-410m`` all match; ``pythia-410m-deduped``
is a different model and does not).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any

Range = tuple[float, float]


@dataclass(frozen=True)
class Published:
    """Published values for one model (see the module docstring for units)."""

    model: str
    attention: str
    pc12_mixed: Range | None
    pc12_math: Range | None
    key_orthogonality: Range | None
    focusing_percent: Range | None
    rho_mixed: float | None = None
    rho_math: float | None = None
    sula_mae_bits: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


PUBLISHED: dict[str, Published] = {
    "pythia-410m": Published("Pythia-410M", "MHA", (0.997, 0.997), (0.999, 0.999), (0.11, 0.13), (82.0, 82.0),
                             -0.32, -0.14, 0.44),
    "phi-2": Published("Phi-2", "MHA", (0.606, 0.606), (0.635, 0.635), (0.034, 0.051), (86.0, 86.0),
                       0.34, 0.16, 0.31),
    "llama-3.2-1b": Published("Llama-3.2-1B", "GQA 32q/8kv", (0.514, 0.514), (0.736, 0.736), (0.15, 0.18),
                              (31.0, 31.0), 0.59, -0.51, 0.36),
    "mistral-7b": Published("Mistral-7B", "GQA + sliding window", (0.15, 0.20), (0.80, 0.80), (0.05, 0.06),
                            (20.0, 30.0), note="math PC1+PC2 given as ~80%"),
    "pythia-12b": Published("Pythia-12B", "MHA", (0.19, 0.19), (0.90, 0.90), (0.05, 0.10), None,
                            note="focusing reported as non-monotone; PC1+PC2 given as ~19% / ~90%"),
}
#: range of the in-context MAE over the models the paper measured (bits)
PUBLISHED_SULA_MAE_RANGE: Range = (0.31, 0.44)
#: published |rho(PC1, Bayes entropy)| on the in-context prompts
PUBLISHED_SULA_RHO_RANGE: Range = (0.65, 0.80)

_VERSION_SUFFIX = re.compile(r"-v\d+(\.\d+)*$")


def published_key(name: str) -> str:
    """The lookup key of a model id or path: its last component, lower case, without a ``-vN.M`` suffix."""
    base = PurePath(str(name).rstrip("/")).name.lower()
    return _VERSION_SUFFIX.sub("", base)


def published_for(name: str | None) -> Published | None:
    """The published values of model ``name`` (id or path), or None when the paper did not measure it."""
    if not name:
        return None
    return PUBLISHED.get(published_key(name))
