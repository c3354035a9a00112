"""The text a reader sees on a whole scan page (a tiny model's scan, causal stage included): no 'nan', 'None',
'<NA>' or '-0.0' where a number, 'n/a' or an empty cell is meant, no floats with more than 4 significant digits
in the summary tables, and each prompt set on its own line."""

from __future__ import annotations

import html
import re

import pytest

from geoprobe.scan import driver


@pytest.fixture
def words(monkeypatch):
    from conftest import word_pool

    monkeypatch.setattr(driver, "build_pool", word_pool)


def visible_text(page: str) -> str:
    """The page's text without scripts (plotly's own code and figure data) and tags."""
    body = page[page.index("<body>"):]
    body = re.sub(r"<script.*?</script>", " ", body, flags=re.S)
    body = re.sub(r"<pre>.*?</pre>", " ", body, flags=re.S)  # the manifest: raw provenance JSON, kept exact
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def test_scan_page_text_has_no_placeholders_or_long_floats(words, tiny_model_dirs):
    rep = driver.scan(tiny_model_dirs["gpt2"], domain="code", n=10, pool_size=40, sula=False, n_boot=30,
                      causal_controls=9, backend="torch", device="cpu")
    assert rep.summary["causal"]["applicable"]
    text = visible_text(rep.to_html())
    for bad in (r"\bnan\b", r"\bNaN\b", r"\bNone\b", r"<NA>", r"(?<![\d.])-0\.0+(?![\d])"):
        assert re.search(bad, text) is None, (bad, re.search(r".{0,60}" + bad + r".{0,30}", text, re.S).group(0))
    # summary tables: numbers at 4 significant digits (a 17-digit float was the raw repr)
    assert re.search(r"\d\.\d{8,}", text) is None
    header = rep.header_html()
    sets = re.search(r"<li>(mixed \(n=10\).*?)</li>", header, re.S).group(1)
    assert "<br>domain code (n=10)" in sets
