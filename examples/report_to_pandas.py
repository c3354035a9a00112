"""Read a saved geoprobe Report into pandas and join it with a table of your own.

    python examples/report_to_pandas.py REPORT_DIR     # a folder written by `geoprobe probe ... --out`
    python examples/report_to_pandas.py --smoke        # trains a seconds-long wind tunnel and probes it first

`Report.load` returns the tidy rows (one statistic per layer/head/position, with the `meta` dict of each row:
baselines, checkpoint steps, metrics) as a DataFrame, the summary as a dict, and rebuilds the figures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from geoprobe.report import Report


def smoke_report(folder: Path) -> Path:
    from geoprobe.models import get_preset
    from geoprobe.models.run import train_tunnel
    from geoprobe.probes.suite import ProbeOptions, run_probes
    from geoprobe.probes.targets import tunnel_target

    run = folder / "run"
    train_tunnel(run, "bijection", get_preset("bijection", "smoke"), device="cpu", progress=False)
    report = run_probes(tunnel_target(run, n=64, device="cpu"), ["key_orthogonality", "attention_focusing"],
                        ProbeOptions(n_boot=50))
    return report.save(folder / "report")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir", nargs="?", help="folder of a saved report (summary.json, results.csv)")
    ap.add_argument("--smoke", action="store_true", help="make a small report first (seconds)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="geoprobe-example-")
    folder = smoke_report(Path(tmp.name)) if args.smoke else Path(args.report_dir or ap.error("give REPORT_DIR"))

    report = Report.load(folder)
    rows = report.rows  # pandas DataFrame
    print(f"{len(rows)} rows, probes: {sorted(rows['probe'].unique())}; figures: {list(report.figures)}")

    # per-layer key orthogonality with the random baseline taken out of each row's meta
    ko = rows[(rows["probe"] == "key_orthogonality") & rows["head"].isna()].copy()
    ko["random_baseline"] = [m.get("baseline_random") for m in ko["meta"]]
    wide = ko.pivot_table(index="layer", columns="variant", values="value")

    # your own table, e.g. notes or measurements per layer from another analysis
    mine = pd.DataFrame({"layer": range(len(wide)), "my_label": [f"block {i}" for i in range(len(wide))]})
    ent = rows[(rows["statistic"] == "attention_entropy_bits") & rows["head"].isna()][["layer", "value"]]
    joined = (mine.merge(wide.reset_index(), on="layer")
                  .merge(ent.rename(columns={"value": "attention_entropy_bits"}), on="layer"))
    print(joined.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    tmp.cleanup()


if __name__ == "__main__":
    main()
