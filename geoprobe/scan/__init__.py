"""Building blocks of the LLM scan that do not depend on the probe engine.

* :mod:`geoprobe.scan.pools` -- built-in prompt pools (``math``, ``code``, ``prose``, ``knowledge``, ``mixed``).
* :mod:`geoprobe.scan.sources` -- user prompts from a text/JSONL file or the ``datasets`` library.
* :mod:`geoprobe.scan.readout` -- batched final-position readouts of a loaded model.
* :mod:`geoprobe.scan.stratify` -- next-token entropies and the entropy-quintile selection.
* :mod:`geoprobe.scan.sula` -- the in-context noisy-label experiment: prompts, Bayes posteriors, readout,
  controls.
* :mod:`geoprobe.scan.records` -- the ``prompts.jsonl`` record format.
* :mod:`geoprobe.scan.select` -- score, stratify and record in one call.
* :mod:`geoprobe.scan.driver` -- the scan itself (uses the probe engine; imported only when called).
* :mod:`geoprobe.scan.causal` -- the causal test: the entropy axis cut against matched random controls.
* :mod:`geoprobe.scan.table` -- cross-model table and prediction scorecard from saved scans.
* :mod:`geoprobe.scan.models` -- several models scanned as sweep jobs (local or Ray), then that table.
* :mod:`geoprobe.scan.revisions` -- one model's training revisions on the same prompts, and the trajectory.
* :mod:`geoprobe.scan.key_frames` -- each revision's saved key frames and their overlap with the final one.
* :mod:`geoprobe.scan.published` -- the published values of the models Paper III measured.

The package is callable: ``geoprobe.scan(model, domain="math", n=75, out=None, ...)`` runs
:func:`geoprobe.scan.driver.scan` and returns the Report.
"""

import sys as _sys
import types as _types

from geoprobe.scan.pools import BASE_DOMAINS, POOLS, Candidate, build_pool, check_domain, domains
from geoprobe.scan.records import (
    PromptRecord,
    read_prompts_jsonl,
    records_from_candidates,
    write_prompts_jsonl,
)
from geoprobe.scan.select import Selection, select_prompts
from geoprobe.scan.sources import (
    MissingDependencyError,
    PromptSet,
    PromptSourceError,
    load_dataset_prompts,
    parse_dataset_spec,
    read_prompt_file,
)
from geoprobe.scan.stratify import Stratification, next_token_entropies, stratify


class _CallableModule(_types.ModuleType):
    """This package, callable as :func:`geoprobe.scan.driver.scan`."""

    def __call__(self, *args, **kwargs):
        from geoprobe.scan.driver import scan

        return scan(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "Candidate", "POOLS", "BASE_DOMAINS", "build_pool", "check_domain", "domains",
    "PromptSet", "PromptSourceError", "MissingDependencyError", "read_prompt_file", "load_dataset_prompts",
    "parse_dataset_spec", "Stratification", "stratify", "next_token_entropies",
    "Selection", "select_prompts", "PromptRecord", "records_from_candidates", "write_prompts_jsonl", "read_prompts_jsonl",
]
