"""prompts.jsonl: exact round trip, null for missing/non-finite values, atomic write, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geoprobe.scan import PromptRecord, build_pool, read_prompts_jsonl, records_from_candidates, stratify
from geoprobe.scan import write_prompts_jsonl as write
from geoprobe.scan.sources import PromptSourceError


def test_round_trip_of_a_stratified_pool(tmp_path):
    pool = build_pool("mixed", 100, seed=0)
    h = np.random.default_rng(0).random(100) * 8
    st = stratify(h, n_per_bin=4, seed=1)
    recs = records_from_candidates(pool, h, st.bin_of, st.selected)
    path = write(tmp_path / "prompts.jsonl", recs)
    assert not (tmp_path / "prompts.jsonl.partial").exists()
    back = read_prompts_jsonl(path)
    assert back == recs
    assert sum(r.selected for r in back) == 20
    assert [i for i, r in enumerate(back) if r.selected] == sorted(st.selected.tolist())
    assert all(r.entropy_bits == float(h[i]) and r.quintile == int(st.bin_of[i]) for i, r in enumerate(back))
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == sorted(first)  # keys sorted
    assert first["extra"] == {"template": pool[0].template, "ending": pool[0].ending}
    assert first["pool"] == "mixed" and first["domain"] == pool[0].domain


def test_nan_is_written_as_null_and_unicode_survives(tmp_path):
    recs = [PromptRecord("a-1", "Café “quotes”\nline two", "file", "custom", None, float("nan"), True,
                         {"k": np.int64(3), "h": np.float64(0.25)})]
    path = write(tmp_path / "p.jsonl", recs)
    row = json.loads(path.read_text(encoding="utf-8"))
    assert row["entropy_bits"] is None and row["extra"] == {"k": 3, "h": 0.25}
    assert read_prompts_jsonl(path)[0].text == "Café “quotes”\nline two"


def test_bad_lines_and_lengths_are_one_line_errors(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "x"}\n', encoding="utf-8")
    with pytest.raises(PromptSourceError, match=r"bad.jsonl line 1 is not a prompt record: fields \['id'\]"):
        read_prompts_jsonl(p)
    p.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(PromptSourceError, match="bad.jsonl line 1 is not valid JSON"):
        read_prompts_jsonl(p)
    with pytest.raises(Exception, match="entropies has 2 values for 3 candidates"):
        records_from_candidates(build_pool("math", 3), [0.1, 0.2])


def test_line_separator_characters_inside_a_text_survive(tmp_path):
    recs = [PromptRecord("u", "a\u2028b\u2029c\x85d", "file", "custom"), PromptRecord("v", "next", "file", "custom")]
    assert read_prompts_jsonl(write(tmp_path / "u.jsonl", recs)) == recs
