"""Prompt files for language-model probe runs: strict reading and an explicit, recorded selection.

Formats: a text file with one prompt per line (blank lines skipped), or JSON lines (``.jsonl``/``.json``) whose
records carry the prompt in a ``text``, ``prompt`` or ``question`` field. Files are decoded as UTF-8 (a leading
byte-order mark is allowed) **strictly**: a file that is not UTF-8 text (Latin-1 bytes, a binary file, NUL
bytes) is refused with the file name, byte offset and line, never decoded with replacement characters, so
the prompts probed are exactly the prompts written. An empty file, or one of blank lines, is refused too.

Selection (:func:`select_prompts`): the first ``n`` prompts in file order; without ``n`` the first
:data:`DEFAULT_MAX_PROMPTS`. The choice is returned as a record (``n_available``, ``n_used``, why) that the
CLI prints and stores in the run's manifest, so a long file is never cut silently.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from geoprobe.errors import ConfigError
from geoprobe.io import decode_utf8

PROMPT_FIELDS = ("text", "prompt", "question")
#: prompts a run uses when ``--n`` is not given (a probe run makes several forward passes over all of them)
DEFAULT_MAX_PROMPTS = 512
BUILTIN = "built-in mixed-domain prompts"


def load_prompts(path: str | Path | None, limit: int | None = None) -> list[str]:
    """All prompts of ``path`` (or the built-in set when None), in file order; the first ``limit`` if given."""
    if limit is not None and limit < 1:
        raise ConfigError(f"the number of prompts must be >= 1, got {limit}")
    if path is None:
        raw = files("geoprobe.assets").joinpath("prompts_mixed.txt").read_text(encoding="utf-8")
        prompts = [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#")]
        return prompts[:limit]
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"prompt file {p} is a folder, not a file")
    if not p.is_file():
        raise ConfigError(f"prompt file {p} does not exist")
    data = p.read_bytes()
    if not data.strip():
        raise ConfigError(f"prompt file {p} is empty" + (" (only blank lines)" if data else ""))
    text = decode_utf8(data, f"prompt file {p}")
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise ConfigError(f"prompt file {p} holds only blank lines")
    if p.suffix.lower() not in (".jsonl", ".json"):
        return [line.strip() for _, line in lines][:limit]
    prompts = []
    for lineno, line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{p}:{lineno} is not valid JSON") from None
        text = next((rec[f] for f in PROMPT_FIELDS if isinstance(rec, dict) and f in rec), None)
        if not isinstance(text, str):
            raise ConfigError(f"{p}:{lineno} has none of the fields {', '.join(PROMPT_FIELDS)}")
        if not text.strip():
            raise ConfigError(f"{p}:{lineno} has an empty prompt")
        prompts.append(text)
    return prompts[:limit]


def select_prompts(prompts: list[str], n: int | None, *, source: str | Path | None = None,
                   default_cap: int | None = None) -> tuple[list[str], dict[str, Any]]:
    """The first ``n`` prompts (default: the first ``default_cap``, :data:`DEFAULT_MAX_PROMPTS` unless given)
    and a record of the choice.

    The record holds ``source``, ``n_available``, ``n_used``, ``selection`` (``"first N of M"``), ``reason``
    (``"--n"``, ``"default cap"`` or ``"all"``) and ``note``, the one line to show the user.
    """
    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    default_cap = DEFAULT_MAX_PROMPTS if default_cap is None else default_cap
    m = len(prompts)
    where = BUILTIN if source is None else str(source)
    if n is None and m > default_cap:
        used, reason = default_cap, "default cap"
        note = f"using the first {used} of {m} prompts in {where} (default cap {default_cap}; --n to change)"
    elif n is not None and n < m:
        used, reason = n, "--n"
        note = f"using the first {used} of {m} prompts in {where} (--n {n})"
    else:
        used, reason = m, "all"
        more = f"; --n {n} asked for more than the file holds" if n is not None and n > m else ""
        note = f"using all {m} prompts in {where}{more}"
    info = {"source": where, "n_available": m, "n_used": used, "selection": f"first {used} of {m}",
            "reason": reason, "default_cap": default_cap, "note": note}
    return prompts[:used], info
