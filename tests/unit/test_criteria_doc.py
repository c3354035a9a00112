"""docs/criteria.md cannot go stale: the tiny random Llama's column is re-measured with the same script and the
same settings and must equal the file's cells (criteria and flags)."""

import importlib.util
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "criteria.md"


def _script():
    spec = importlib.util.spec_from_file_location("criteria_nulls", ROOT / "benchmarks" / "criteria_nulls.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    parts, cur, i = [], "", 0
    while i < len(inner):  # split on | that is not escaped
        if inner[i] == "\\" and i + 1 < len(inner) and inner[i + 1] == "|":
            cur += "|"
            i += 2
            continue
        if inner[i] == "|":
            parts.append(cur.strip())
            cur = ""
        else:
            cur += inner[i]
        i += 1
    parts.append(cur.strip())
    return parts


_NUM = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _same_cell(doc: str, now: str) -> bool:
    """Equal text, and numbers equal to 2% relative: a random model's focusing is a ratio of two nearly equal layer
    entropies (about -5e-4 %), whose 3rd digit moves with float32 summation order (thread count, batching)."""
    if _NUM.sub("#", doc) != _NUM.sub("#", now):
        return False
    return all(math.isclose(float(a), float(b), rel_tol=0.02, abs_tol=1e-9)
               for a, b in zip(_NUM.findall(doc), _NUM.findall(now), strict=True))


def _section(text: str, title: str) -> list[list[str]]:
    lines = text.split(title, 1)[1].splitlines()
    table = [ln for ln in lines[1:] if ln.startswith("|")]
    start = next(i for i, ln in enumerate(lines[1:]) if ln.startswith("|"))
    rows = []
    for ln in lines[1 + start:]:
        if not ln.startswith("|"):
            break
        rows.append(_cells(ln))
    assert table, title
    return rows


def test_the_docs_tiny_llama_column_is_what_the_script_measures_now(tmp_path):
    cn = _script()
    text = DOC.read_text(encoding="utf-8")
    summary = cn.measure("tiny-llama", tmp_path)
    crit = _section(text, "## Suite `paper3-llm`")
    col = crit[0].index("tiny random Llama [`tiny-llama`]")
    fresh = cn.criteria_rows("paper3-llm", {"tiny-llama": summary})
    assert [r[0] for r in crit[2:]] == [r[0] for r in fresh]  # every criterion of the suite, in order
    for doc_row, row in zip(crit[2:], fresh, strict=True):
        assert doc_row[:5] == row[:5]  # name, role, probe, rule, nulls
        assert _same_cell(doc_row[col], row[5]), (doc_row[0], doc_row[col], row[5])
    flags = _section(text, "## Flags")
    fcol = flags[0].index("`tiny-llama`")
    for doc_row, row in zip(flags[2:], cn.flag_rows({"tiny-llama": summary}), strict=True):
        assert doc_row[:3] == row[:3] and _same_cell(doc_row[fcol], row[3]), doc_row[1]
    # the tiny random model fails every calibrated criterion, measured, not typed
    cal = [r for r in fresh if r[1] == "calibrated"]
    assert cal and all("→ FAIL" in r[5] for r in cal)


def test_every_suite_criterion_is_in_the_doc():
    from geoprobe.probes.suites import load_suite

    text = DOC.read_text(encoding="utf-8")
    for suite in ("paper1-tunnels", "paper3-llm"):
        names = [r[0] for r in _section(text, f"## Suite `{suite}`")[2:]]
        assert names == [c.name for c in load_suite(suite).criteria], suite


def test_cell_formatting_known_answers():
    cn = _script()
    assert _same_cell("-0.000473 → FAIL", "-0.000474 → FAIL") and not _same_cell("0.473 → FAIL", "0.49 → FAIL")
    assert not _same_cell("0.5 → pass", "0.5 → FAIL") and not _same_cell("1 → pass", "-1 → pass")
    from geoprobe.report_text import format_value

    cell = cn.format_value  # the report's own formatting, in its table-cell form
    assert cell is format_value
    assert cell(True, cells=True) == "yes" and cell(None, cells=True) == "n/a"
    assert cell(0.123456, cells=True) == "0.123"
    assert cell({"fraction_passing": 0.5}, cells=True) == "50% of elements pass"
    assert cell({"pc1_share": 0.25, "ok": False}, cells=True) == "pc1_share 0.25, ok no"
    assert cell([1.0, float("nan")], cells=True) == "[1, n/a]" and cell([1.0, 2.0]) == "[1.0, 2.0]"
    assert _cells("| a | b \\| c | d |") == ["a", "b | c", "d"]
