"""Prompt files (text / JSONL, strict UTF-8) and local datasets through the `datasets` library."""

from __future__ import annotations

import json
import sys

import pytest

from geoprobe.scan.sources import (
    MissingDependencyError,
    PromptSourceError,
    load_dataset_prompts,
    parse_dataset_spec,
    read_prompt_file,
)


def test_text_file_keeps_lines_exactly_and_records_skipped_blanks(tmp_path):
    p = tmp_path / "my prompts.txt"
    p.write_bytes(b"The sky is\r\n\r\n  two leading spaces and a trailing one \nlast line without newline")
    got = read_prompt_file(p, domain="prose")
    assert got.texts == ["The sky is", "  two leading spaces and a trailing one ", "last line without newline"]
    assert [c.id for c in got.candidates] == ["my prompts-1", "my prompts-3", "my prompts-4"]
    assert {(c.pool, c.domain) for c in got.candidates} == {("file", "prose")}
    prov = got.provenance
    assert (prov["format"], prov["n_prompts"], prov["n_blank_lines_skipped"], prov["field"]) == ("text", 3, 1, None)
    import hashlib
    assert prov["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes("héllo\nwor".encode() + b"\xff" + b"ld\n")
    with pytest.raises(PromptSourceError) as e:
        read_prompt_file(p)
    msg = str(e.value)
    assert "byte 0xff at offset 10 (line 2)" in msg and "\n" not in msg


def test_jsonl_with_a_field(tmp_path):
    p = tmp_path / "q.jsonl"
    rows = [{"question": "What is 2+2?\nThink.", "answer": "4"}, {"question": "Name a colour."}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    got = read_prompt_file(p, field="question")
    assert got.texts == ["What is 2+2?\nThink.", "Name a colour."]
    assert got.provenance["format"] == "jsonl" and got.provenance["n_blank_lines_skipped"] == 1
    with pytest.raises(PromptSourceError, match="q.jsonl line 1 has no field 'text'; its fields: question, answer"):
        read_prompt_file(p)
    p.write_text('{"text": "ok"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(PromptSourceError, match="q.jsonl line 2: field 'text' is not a non-empty string"):
        read_prompt_file(p)
    p.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(PromptSourceError, match="q.jsonl line 2 is not valid JSON"):
        read_prompt_file(p)
    p.write_text("\n\n", encoding="utf-8")
    with pytest.raises(PromptSourceError, match="holds no prompts"):
        read_prompt_file(p)
    with pytest.raises(PromptSourceError, match="does not exist"):
        read_prompt_file(tmp_path / "nope.txt")


def test_dataset_spec_parsing():
    assert parse_dataset_spec("data.csv") == ("data.csv", None, "train", "text")
    assert parse_dataset_spec("org/name:main:test:question") == ("org/name", "main", "test", "question")
    assert parse_dataset_spec("x.jsonl:::prompt") == ("x.jsonl", None, "train", "prompt")
    with pytest.raises(PromptSourceError, match="is not NAME_OR_PATH"):
        parse_dataset_spec("a:b:c:d:e")


def test_missing_datasets_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(MissingDependencyError) as e:
        load_dataset_prompts(str(tmp_path / "x.csv"))
    assert str(e.value) == ("reading prompts with --dataset needs the optional package 'datasets': "
                            "pip install 'geoprobe[scan]' (or pip install datasets)")


@pytest.fixture
def local_frame(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return pd.DataFrame({"prompt": [f"Prompt number {i}:" for i in range(7)], "n": list(range(7))})


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_local_dataset_files(tmp_path, local_frame, suffix):
    p = tmp_path / f"local{suffix}"
    if suffix == ".csv":
        local_frame.to_csv(p, index=False)
    elif suffix == ".parquet":
        pytest.importorskip("pyarrow")
        local_frame.to_parquet(p)
    else:
        local_frame.to_json(p, orient="records", lines=True)
    got = load_dataset_prompts(f"{p}:::prompt", domain="math")
    assert got.texts == list(local_frame["prompt"])
    assert [c.id for c in got.candidates][:2] == ["local-0", "local-1"]
    assert {(c.pool, c.domain) for c in got.candidates} == {("dataset", "math")}
    assert got.provenance["n_prompts"] == 7 and got.provenance["limit"] is None
    assert load_dataset_prompts(f"{p}:::prompt", limit=3).texts == list(local_frame["prompt"][:3])
    with pytest.raises(PromptSourceError, match=r"has no field 'text'; its fields: prompt, n"):
        load_dataset_prompts(str(p))


def test_unsupported_local_file_type(tmp_path, local_frame):
    p = tmp_path / "x.xlsx"
    p.write_bytes(b"not really")
    with pytest.raises(PromptSourceError, match=r"unsupported file type '.xlsx'; valid: .json, .jsonl, .csv, .parquet"):
        load_dataset_prompts(str(p))


def test_byte_order_mark_is_removed_and_recorded(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbfFirst prompt\nSecond\n")
    got = read_prompt_file(p)
    assert got.texts == ["First prompt", "Second"] and got.provenance["utf8_bom_removed"] is True
    assert read_prompt_file(tmp_path / "bom.txt").provenance["n_prompts"] == 2
