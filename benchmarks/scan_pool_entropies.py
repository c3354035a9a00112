"""Next-token entropy spread of every built-in prompt pool on a real model.

Usage: ``python benchmarks/scan_pool_entropies.py MODEL [--n 300] [--seed 0] [--backend torch]``

Prints, per pool, the 0/10/25/50/75/90/100 % quantiles of the next-token entropy (bits) over ``n``
candidates, the medians of the ``determined`` and ``open`` templates, and the quintile ranges of the
stratification; writes nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from geoprobe.backends import load_model
from geoprobe.scan.pools import build_pool, domains
from geoprobe.scan.stratify import next_token_entropies, stratify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    handle = load_model(args.model, backend=args.backend, device="cpu")
    qs = [0, 10, 25, 50, 75, 90, 100]
    print(f"{'pool':10s} " + " ".join(f"q{q:<4d}" for q in qs) + "  det.med open.med  seconds")
    for d in domains():
        pool = build_pool(d, args.n, args.seed)
        t = time.time()
        h = next_token_entropies(handle, [c.text for c in pool], batch_size=args.batch_size)
        dt = time.time() - t
        det = np.median([x for x, c in zip(h, pool, strict=True) if c.ending == "determined"])
        opn = np.median([x for x, c in zip(h, pool, strict=True) if c.ending == "open"])
        print(f"{d:10s} " + " ".join(f"{v:5.2f}" for v in np.percentile(h, qs)) + f"  {det:7.2f} {opn:8.2f}  {dt:6.1f}")
        st = stratify(h, seed=args.seed)
        print("           quintiles: " + "  ".join(f"[{b.min_entropy:.2f}, {b.max_entropy:.2f}] n={b.n_candidates}"
                                                   for b in st.bins))


if __name__ == "__main__":
    main()
