"""The bad-input table: every careless or hostile command-line input gets one line, exit code 2, and leaves
every file as it was (no output folder created, the input run untouched, a sentinel folder untouched).

Rows run in-process through ``geoprobe.cli.main``; a few also through a real ``python -m geoprobe`` process to
prove the exit status and that stderr is exactly one line. Rows for output folders, resume and locking live
with the training tests; rows for the backend API with the backend tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geoprobe.cli import main
from geoprobe.models import get_preset
from geoprobe.models.run import train_tunnel

HUGE = str(10**12)  # sequences / vocabulary sizes no machine can hold


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    train_tunnel(out, "bijection", get_preset("bijection", "smoke", steps=4), device="cpu", progress=False)
    return out


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Input files of every kind, a sentinel folder, and the (not yet existing) output folder."""
    d = tmp_path / "inputs"
    d.mkdir()
    paths = {
        "latin1": d / "latin1.txt", "binary": d / "image.png", "nul": d / "nul.txt", "empty": d / "empty.txt",
        "blank": d / "blank.txt", "badjson": d / "bad.jsonl", "nofield": d / "nofield.jsonl",
        "note": d / "notes.txt", "folder": d / "a_folder",
    }
    paths["latin1"].write_bytes(b"w3 w4\nw5 caf\xe9 w6\n")  # Latin-1 e-acute at byte 12, line 2
    paths["binary"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    paths["nul"].write_bytes(b"w3 w4\nw5\x00w6\n")  # valid UTF-8, but a NUL byte at offset 8
    paths["empty"].write_bytes(b"")
    paths["blank"].write_bytes(b"\n   \n\t\n\n")
    paths["badjson"].write_text('{"text": "w3 w4"}\n{"text": w5\n', encoding="utf-8")
    paths["nofield"].write_text('{"text": "w3"}\n{"body": "w4"}\n', encoding="utf-8")
    paths["note"].write_text("not a model\n", encoding="utf-8")
    paths["folder"].mkdir()
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "results.csv").write_text("precious,1\n")
    paths["out"] = tmp_path / "out"
    return paths


def _snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``roots``."""
    snap: dict[str, bytes | None] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            snap[str(p)] = p.read_bytes() if p.is_file() else None
    return snap


S, T, E, P, C = (["tunnel", "sample", "bijection"], ["tunnel", "train", "bijection", "--preset", "smoke"],
                 ["tunnel", "eval", "{run}"], ["probe", "{run}"], ["tunnel", "compare", "--preset", "smoke"])
LLM = ["probe", "{llm}"]

# id, argv ({run}: a trained smoke run, {llm}: a tiny Llama folder, {name}: a file of `files`), exit, phrase
ROWS = [
    # --set values are converted by the task's declared parameter types
    ("set-int-abc", S + ["--set", "V=abc"], 2, "task bijection: parameter V expects int, V >= 2; got 'abc'"),
    ("set-int-abc-train", T + ["--set", "V=abc", "--out", "{out}"], 2, "parameter V expects int"),
    ("set-int-float", S + ["--set", "L=2.5"], 2, "parameter L expects int, L >= 1; got '2.5'"),
    ("set-bool-garbage", S + ["--set", "replacement=maybe"], 2,
     "parameter replacement expects bool (true/false, yes/no, 1/0); got 'maybe'"),
    ("set-unknown-key", S + ["--set", "W=3"], 2,
     "unknown parameter 'W'; valid parameters: V (int, V >= 2), L (int, L >= 1), layout (one of separate, "
     "paired_query), replacement (bool), query_only (bool)"),
    ("set-unknown-key-hmm", ["tunnel", "sample", "hmm", "--set", "states=3"], 2,
     "valid parameters: K (int, K >= 1), n_states (int, 2 <= n_states <= 20)"),
    ("set-no-equals", S + ["--set", "V"], 2, "--set expects KEY=VALUE, got 'V'"),
    ("set-twice", S + ["--set", "V=5", "--set", "V=6"], 2, "--set V given twice ('5' and '6')"),
    ("set-choice", ["tunnel", "sample", "hmm", "--set", "target=smoothing"], 2,
     "unknown hmm target 'smoothing'; valid choices: filter, next_obs"),
    ("set-hmm-range", ["tunnel", "sample", "hmm", "--set", "n_states=50"], 2,
     "hmm needs 2 <= n_states <= 20, got n_states=50"),
    ("set-recall-type", ["tunnel", "sample", "recall", "--set", "N=eight"], 2, "parameter N expects int"),
    ("set-linreg-zero", ["tunnel", "sample", "linreg", "--set", "sigma=0"], 2, "linreg needs sigma > 0"),
    ("set-linreg-inf", ["tunnel", "sample", "linreg", "--set", "tau=inf"], 2, "parameter tau expects float"),
    ("set-sula-nan", ["tunnel", "sample", "sula", "--set", "eps=nan"], 2, "parameter eps expects float"),
    ("set-sula-range", ["tunnel", "sample", "sula", "--set", "eps=0.5"], 2, "sula needs 0 < eps < 0.5"),
    ("set-coinflip-range", ["tunnel", "sample", "coinflip", "--set", "a=-1"], 2, "coinflip needs a > 0"),
    # sizes that cannot fit in memory: refused before anything is allocated or written
    ("huge-V-sample", S + ["--set", f"V={HUGE}"], 2, "needs at least"),
    ("huge-n-sample", S + ["--n", HUGE], 2, f"--n {HUGE} sequences of bijection(V=20"),
    ("huge-V-train", T + ["--set", f"V={HUGE}", "--out", "{out}"], 2, "needs at least"),
    ("huge-batch-train", T + ["--batch-size", HUGE, "--out", "{out}"], 2,
     f"a training batch of {HUGE} sequences of bijection(V=6"),
    ("huge-n-probe", P + ["--n", HUGE, "--out", "{out}"], 2, f"--n {HUGE} sequences of bijection(V=6"),
    ("huge-n-boot", P + ["--n-boot", HUGE, "--out", "{out}"], 2, "--n-boot must be <= 100000"),
    # integer options out of range
    ("probe-n-0", P + ["--n", "0", "--out", "{out}"], 2, "--n must be >= 1, got 0"),
    ("probe-n-negative-llm", LLM + ["--prompts", "{note}", "--n", "-1", "--out", "{out}"], 2,
     "--n must be >= 1, got -1"),
    ("probe-n-boot-0", P + ["--n-boot", "0", "--out", "{out}"], 2, "--n-boot must be >= 1, got 0"),
    ("probe-n-boot-negative", P + ["--n-boot", "-5", "--out", "{out}"], 2, "--n-boot must be >= 1, got -5"),
    ("probe-n-abc", P + ["--n", "abc", "--out", "{out}"], 2, "--n must be an integer >= 1, got 'abc'"),
    ("probe-seed-negative", P + ["--seed", "-1", "--out", "{out}"], 2, "--seed must be >= 0, got -1"),
    ("eval-n-0", E + ["--n", "0"], 2, "--n must be >= 1, got 0"),
    ("eval-lengths-0", E + ["--lengths", "5", "0"], 2, "--lengths must be >= 1, got 0"),
    ("sample-n-0", S + ["--n", "0"], 2, "--n must be >= 1, got 0"),
    ("sample-n-negative", S + ["--n", "-3"], 2, "--n must be >= 1, got -3"),
    ("train-steps-0", T + ["--steps", "0", "--out", "{out}"], 2, "--steps must be >= 1, got 0"),
    ("train-batch-0", T + ["--batch-size", "0", "--out", "{out}"], 2, "--batch-size must be >= 1, got 0"),
    ("compare-seeds-0", C + ["--seeds", "0", "--out", "{out}"], 2, "--seeds must be >= 1, got 0"),
    ("compare-acc-threshold", C + ["--acc-threshold", "1.5", "--out", "{out}"], 2,
     "--acc-threshold must be a finite number > 0 and <= 1, got 1.5"),
    ("compare-budget-negative", C + ["--budget-minutes", "-2", "--out", "{out}"], 2,
     "--budget-minutes must be positive (and finite), got -2"),
    ("compare-mae-nan", C + ["--mae-threshold", "nan", "--out", "{out}"], 2, "--mae-threshold must be positive (and finite), got nan"),
    ("unknown-option", S + ["--nn", "3"], 2, "unrecognized arguments: --nn 3"),
    # prompt files: strict UTF-8, never empty, and only for language models
    ("prompts-latin1", LLM + ["--prompts", "{latin1}", "--out", "{out}"], 2,
     "latin1.txt is not UTF-8 text: byte 0xe9 at offset 12 (line 2)"),
    ("prompts-binary", LLM + ["--prompts", "{binary}", "--out", "{out}"], 2,
     "image.png is not UTF-8 text: byte 0x89 at offset 0 (line 1)"),
    ("prompts-nul", LLM + ["--prompts", "{nul}", "--out", "{out}"], 2,
     "nul.txt is not a text file: NUL byte at offset 8 (line 2)"),
    ("prompts-empty", LLM + ["--prompts", "{empty}", "--out", "{out}"], 2, "empty.txt is empty"),
    ("prompts-blank-lines", LLM + ["--prompts", "{blank}", "--out", "{out}"], 2,
     "blank.txt is empty (only blank lines)"),
    ("prompts-missing", LLM + ["--prompts", "{folder}/none.txt", "--out", "{out}"], 2, "does not exist"),
    ("prompts-folder", LLM + ["--prompts", "{folder}", "--out", "{out}"], 2, "is a folder, not a file"),
    ("prompts-bad-json", LLM + ["--prompts", "{badjson}", "--out", "{out}"], 2, "bad.jsonl:2 is not valid JSON"),
    ("prompts-no-field", LLM + ["--prompts", "{nofield}", "--out", "{out}"], 2,
     "nofield.jsonl:2 has none of the fields text, prompt, question"),
    ("prompts-on-tunnel-run", P + ["--prompts", "{note}", "--out", "{out}"], 2,
     "--prompts applies to language models"),
    # an existing file that is not a model / run is named as such, not reported missing
    ("eval-file-target", ["tunnel", "eval", "{note}"], 2, "notes.txt is a file, not a run folder"),
    ("probe-file-target", ["probe", "{note}", "--out", "{out}"], 2, "notes.txt is a file but not a .gguf model"),
]


def _argv(argv: list[str], files: dict[str, Path], run: Path, llm: Path) -> list[str]:
    subs = {"{run}": str(run), "{llm}": str(llm), **{f"{{{k}}}": str(v) for k, v in files.items()}}
    out = []
    for a in argv:
        for key, value in subs.items():
            a = a.replace(key, value)
        out.append(a)
    return out


@pytest.mark.parametrize("argv,code,phrase", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_row(argv, code, phrase, files, smoke_run, tiny_model_dirs, tmp_path, capsys):
    argv = _argv(argv, files, smoke_run, tiny_model_dirs["llama"])
    before = _snapshot(tmp_path, smoke_run)
    assert main(argv) == code
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    assert err[0].startswith("geoprobe: error: ") and phrase in err[0], err[0]
    assert not files["out"].exists()
    assert _snapshot(tmp_path, smoke_run) == before  # nothing deleted, nothing half-written


SUBPROCESS_ROWS = ["set-int-abc", "probe-n-0", "prompts-latin1", "huge-V-sample"]


@pytest.mark.parametrize("row_id", SUBPROCESS_ROWS)
def test_bad_input_row_in_a_real_process(row_id, files, smoke_run, tiny_model_dirs, tmp_path):
    _, argv, code, phrase = next(r for r in ROWS if r[0] == row_id)
    argv = _argv(argv, files, smoke_run, tiny_model_dirs["llama"])
    before = _snapshot(tmp_path, smoke_run)
    proc = subprocess.run([sys.executable, "-m", "geoprobe", *argv], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
    assert proc.returncode == code
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("geoprobe: error: "), proc.stderr
    assert phrase in proc.stderr and "Traceback" not in proc.stderr
    assert _snapshot(tmp_path, smoke_run) == before


# ------------------------------------------------------------------------------- --set booleans are read by type


@pytest.mark.parametrize("text,expected", [("False", False), ("false", False), ("no", False), ("NO", False),
                                           ("0", False), ("True", True), ("yes", True), ("1", True)])
def test_set_bool_is_read_by_type(text, expected, capsys):
    argv = ["tunnel", "sample", "bijection", "--n", "1", "--set", "V=4", "--set", "L=6",
            "--set", f"replacement={text}"]
    if expected:
        assert main(argv) == 0
        rec = json.loads(capsys.readouterr().out.splitlines()[0])
        assert rec["config"]["replacement"] is True
    else:  # without replacement, L=6 > V=4 is impossible: the value really is False
        assert main(argv) == 2
        assert "L <= V" in capsys.readouterr().err
    argv = ["tunnel", "sample", "bijection", "--n", "4", "--set", "V=5", "--set", "L=5", "--set",
            "layout=paired_query", "--set", f"query_only={text}"]
    assert main(argv) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(r["config"]["query_only"] is expected for r in recs)
    # query_only supervises the final query alone; otherwise the 5 keys and the query
    assert all(len(r["supervised_positions"]) == (1 if expected else 6) for r in recs)


def test_set_false_is_recorded_false_in_the_manifest(tmp_path):
    out = tmp_path / "run"
    assert main(["tunnel", "train", "bijection", "--preset", "smoke", "--steps", "2", "--set", "V=5",
                 "--set", "L=5", "--set", "replacement=False", "--out", str(out), "--quiet",
                 "--device", "cpu"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"]["config"]["replacement"] is False


# ------------------------------------------------------------------------- allocation failures are one line too


def test_out_of_memory_is_one_line_naming_the_sizes(monkeypatch, capsys):
    import torch

    from geoprobe.tasks.bijection import BijectionTask

    def allocate(self, n, generator):  # 2 PiB: beyond any address space, refused by the allocator at once
        return torch.empty(2**48, dtype=torch.float64)

    monkeypatch.setattr(BijectionTask, "sample", allocate)
    assert main(["tunnel", "sample", "bijection", "--n", "3", "--set", "V=27"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["geoprobe: error: out of memory (tried to allocate 2.0 PiB) with --n 3, --set V=27; "
                   "use smaller sizes"]

    def python_oom(self, n, generator):
        raise MemoryError()

    monkeypatch.setattr(BijectionTask, "sample", python_oom)
    assert main(["tunnel", "sample", "bijection", "--n", "3"]) == 2
    assert capsys.readouterr().err.strip() == "geoprobe: error: out of memory with --n 3; use smaller sizes"


def test_other_runtime_errors_are_not_disguised_as_memory_errors(monkeypatch):
    from geoprobe.tasks.bijection import BijectionTask

    def bug(self, n, generator):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(BijectionTask, "sample", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["tunnel", "sample", "bijection", "--n", "3"])


# ---------------------------------------------------------------------------- long prompt files: an explicit cap


def test_default_prompt_cap_is_printed_recorded_and_applied(tiny_model_dirs, tmp_path, capsys, monkeypatch):
    import geoprobe.probes.prompts as prompts_mod

    monkeypatch.setattr(prompts_mod, "DEFAULT_MAX_PROMPTS", 6)
    path = tmp_path / "long.txt"
    path.write_text("\n".join(f"w{3 + i % 40} w{4 + i % 30} w{5 + i % 20}" for i in range(20)) + "\n")
    out = tmp_path / "out"
    assert main(["probe", str(tiny_model_dirs["llama"]), "--prompts", str(path), "--probes", "key_orthogonality",
                 "--n-boot", "10", "--out", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert f"using the first 6 of 20 prompts in {path} (default cap 6; --n to change)" in captured.out
    assert "reference pass" in captured.err and "6/6" in captured.err  # progress bar over the prompts
    manifest = json.loads((out / "summary.json").read_text())["manifest"]
    assert manifest["n_inputs"] == 6
    rec = manifest["prompts"]
    assert (rec["n_available"], rec["n_used"], rec["reason"], rec["default_cap"]) == (20, 6, "default cap", 6)
    assert rec["n_cut_to_last_max_tokens"] == 0 and rec["source"] == str(path)


def test_n_larger_than_the_file_uses_all_and_says_so(tiny_model_dirs, tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text("w3 w4\nw5 w6 w7\nw8\n")
    out = tmp_path / "out"
    assert main(["probe", str(tiny_model_dirs["llama"]), "--prompts", str(path), "--n", "10", "--probes",
                 "key_orthogonality", "--n-boot", "10", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    assert f"using all 3 prompts in {path}; --n 10 asked for more than the file holds" in capsys.readouterr().out
    rec = json.loads((out / "summary.json").read_text())["manifest"]["prompts"]
    assert (rec["n_available"], rec["n_used"], rec["reason"]) == (3, 3, "all")


def test_n_keeps_the_last_prompt(tiny_model_dirs, tmp_path):
    """--n 3 of 3 prompts uses all three (the old code's --n -1 dropped the last one silently)."""
    from geoprobe.probes.targets import llm_target

    path = tmp_path / "p.txt"
    path.write_text("w3 w4\nw5 w6 w7\nw8 w9\n")
    target = llm_target(str(tiny_model_dirs["llama"]), prompts_path=path, n=3, device="cpu")
    assert target.texts == ["w3 w4", "w5 w6 w7", "w8 w9"]
    assert target.final_entropy.shape == (3,) and bool(target.final_entropy.isfinite().all())


# ------------------------------------------------------------------- nnsight's argv sniffing leaves us alone


def test_importing_nnsight_does_not_change_our_argument_parsing(monkeypatch, capsys):
    pytest.importorskip("nnsight")
    argv = ["tunnel", "sample", "bijection", "--n", "1", "--seed", "2", "--set", "V=3", "--set", "L=2"]
    assert main(argv) == 0
    expected = capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["geoprobe", *argv, ])
    import nnsight  # noqa: F401  (reads -v/--verbose from sys.argv at import)

    assert sys.argv == ["geoprobe", *argv]
    assert main() == 0  # argv taken from sys.argv, parsed exactly as the explicit list
    assert capsys.readouterr().out == expected
