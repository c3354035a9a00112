"""Regenerate the README screenshots from saved reports (needs Chromium; see tests/integration/_chromium.py).

    python docs/make_screenshots.py --llm LLM_REPORT_DIR --tunnel TUNNEL_REPORT_DIR --gradients GRAD_REPORT_DIR

Each argument is a folder written by ``Report.save`` (``geoprobe probe ... --out``, ``geoprobe gradients ...
--out``). A screenshot shows the top of a page: title, verdict, one-sentence summaries and the first figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import _chromium  # noqa: E402

from geoprobe.report import Report  # noqa: E402


def shot(report_dir: str, figures: list[str] | None, png: Path, height: int) -> None:
    rep = Report.load(report_dir)
    # a model given by path is named by its file name (the page shows the full path)
    rep.title = " ".join(Path(w).name if "/" in w else w for w in rep.title.split(" "))
    if figures is not None:
        rep.figures = {t: rep.figures[t] for t in figures}
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(rep.to_html(), encoding="utf-8")
        _chromium.screenshot(page, png, width=1000, height=height)
    print(f"{png} ({png.stat().st_size // 1024} KB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", help="saved probe report of a language model")
    ap.add_argument("--tunnel", help="saved probe report of a wind tunnel (with ablation and dynamics)")
    ap.add_argument("--gradients", help="saved `geoprobe gradients` report")
    ap.add_argument("--out", default=str(HERE / "img"), help="folder for the PNG files")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.llm:
        shot(args.llm, ["Attention entropy vs depth"], out / "report-llm.png", 1000)
    if args.tunnel:
        shot(args.tunnel, ["Ablations (ratio to baseline)", "Frame-precision dissociation"],
             out / "report-tunnel.png", 1820)
    if args.gradients:
        shot(args.gradients, ["Routing law: autograd vs formula"], out / "report-gradients.png", 820)


if __name__ == "__main__":
    main()
