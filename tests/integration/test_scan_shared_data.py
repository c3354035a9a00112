"""Real prompt files read in place: GSM8K questions and HumanEval prompts, as files and through `datasets`."""

from __future__ import annotations

import json
import os

import pytest

from geoprobe.scan.sources import PromptSourceError, load_dataset_prompts, read_prompt_file


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gsm8k(shared_dir):
    p = shared_dir / "data" / "gsm8k_test.jsonl"
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="module")
def humaneval(shared_dir):
    p = shared_dir / "data" / "humaneval.jsonl"
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    return p


def test_gsm8k_questions_from_the_file_and_through_datasets(gsm8k, tmp_path, monkeypatch):
    want = [r["question"] for r in _rows(gsm8k)]
    got = read_prompt_file(gsm8k, field="question", domain="math")
    assert got.texts == want and len(want) == 1319
    assert got.candidates[0].id == "gsm8k_test-1" and got.provenance["field"] == "question"
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    ds = load_dataset_prompts(f"{gsm8k}:::question", domain="math", limit=25)
    assert ds.texts == want[:25] and ds.provenance["limit"] == 25 and ds.provenance["builder"] == "json"


def test_humaneval_prompts_keep_their_newlines(humaneval, tmp_path, monkeypatch):
    want = [r["prompt"] for r in _rows(humaneval)]
    assert len(want) == 164 and all("\n" in w for w in want)
    assert read_prompt_file(humaneval, field="prompt", domain="code").texts == want
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    assert load_dataset_prompts(f"{humaneval}:::prompt", domain="code").texts == want
    streamed = load_dataset_prompts(f"{humaneval}:::prompt", streaming=True, limit=5)
    assert streamed.texts == want[:5] and streamed.provenance["streaming"] is True


def test_unreachable_hub_dataset_is_one_line(monkeypatch):
    pytest.importorskip("datasets")
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("needs HF_HUB_OFFLINE=1 (the test suite's default)")
    with pytest.raises(PromptSourceError) as e:
        load_dataset_prompts("geoprobe-test/no-such-dataset:::question")
    assert str(e.value).startswith("dataset 'geoprobe-test/no-such-dataset' is not a local file or folder and "
                                   "could not be reached on the hub")
