"""Headless Chromium helpers for the report tests and the README screenshots (Debian package ``chromium``).

``render(html)`` loads a page with an error trap injected at the top of ``<head>`` (uncaught errors and
``console.error`` calls are collected into ``<pre id="gp-errors">``), lets scripts run, and returns the DOM
after JavaScript. ``figure_marks(dom)`` counts what each plotly figure actually drew.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=10000"]

_TRAP = ("<script>window.__gp_errors=[];"
         "window.addEventListener('error',function(e){window.__gp_errors.push(String(e.message))});"
         "(function(){var o=console.error;console.error=function(){"
         "window.__gp_errors.push(Array.from(arguments).join(' '));o.apply(console,arguments)}})();"
         "window.addEventListener('load',function(){setTimeout(function(){var d=document.createElement('pre');"
         "d.id='gp-errors';d.textContent=JSON.stringify(window.__gp_errors);document.body.appendChild(d)},300)});"
         "</script>")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="gp-chromium-") as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def render(html_path: Path) -> tuple[str, list[str]]:
    """(DOM after scripts ran, collected console errors) of the page at ``html_path``."""
    html_path = Path(html_path)
    trapped = html_path.with_name(html_path.stem + ".trapped.html")
    trapped.write_text(html_path.read_text(encoding="utf-8").replace("<head>", "<head>" + _TRAP, 1),
                       encoding="utf-8")
    try:
        res = _run(["--dump-dom", trapped.resolve().as_uri()])
    finally:
        trapped.unlink()
    dom = res.stdout
    m = re.search(r'<pre id="gp-errors">(.*?)</pre>', dom, re.S)
    if m is None:
        raise RuntimeError(f"the page did not finish loading in Chromium (rc {res.returncode}): {res.stderr[-500:]}")
    import html

    return dom, json.loads(html.unescape(m.group(1)))


def figure_marks(dom: str) -> list[dict[str, int]]:
    """Per plotly figure in the DOM (in page order): its ``main-svg`` layers and the marks drawn in its
    trace layers (scatter points, line paths, bar paths, heatmap images)."""
    chunks = re.split(r'<div id="[^"]*" class="plotly-graph-div[^"]*"', dom)[1:]
    out = []
    for c in chunks:
        out.append({
            "main_svg": len(re.findall(r'class="main-svg"', c)),
            "points": len(re.findall(r'<path class="point"', c)),
            "lines": len(re.findall(r'class="js-line" d="M', c)),
            "bars": len(re.findall(r'<g class="point"><path d="M', c)),
            "images": len(re.findall(r'<image ', c)),
        })
    return out


def screenshot(html_path: Path, png: Path, width: int = 1100, height: int = 1400) -> Path:
    """PNG of the top ``width`` x ``height`` pixels of the page."""
    res = _run([f"--window-size={width},{height}", f"--screenshot={Path(png).resolve()}",
                Path(html_path).resolve().as_uri()])
    if not Path(png).is_file():
        raise RuntimeError(f"Chromium wrote no screenshot (rc {res.returncode}): {res.stderr[-500:]}")
    return Path(png)
