"""Paper II's routing law, checked on the heads of a trained wind tunnel.

For each attention head, autograd's gradient of the training loss with respect to the attention scores must
equal a_ij (u_i . v_j - sum_k a_ik u_i . v_k) (u = dL/d(head output), v = values, a = attention), and the
value gradient must equal sum_i a_ij u_i. Both are checked in float64 through the real model.

    python examples/routing_law_on_tunnel.py RUN_DIR    # a run from `geoprobe tunnel train` (transformer)
    python examples/routing_law_on_tunnel.py --smoke    # trains a seconds-long bijection tunnel first
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from geoprobe.gradients.tunnel import routing_check, value_step_check
from geoprobe.models import ARCHS
from geoprobe.models.checkpoint import load_run
from geoprobe.tasks import make_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="wind-tunnel run folder")
    ap.add_argument("--smoke", action="store_true", help="train a smoke-preset bijection tunnel first")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="geoprobe-example-")
    if args.smoke:
        from geoprobe.models import get_preset
        from geoprobe.models.run import train_tunnel

        run = Path(tmp.name) / "run"
        train_tunnel(run, "bijection", get_preset("bijection", "smoke"), device="cpu", progress=False)
    else:
        run = Path(args.run or ap.error("give RUN or --smoke"))

    model, task, manifest = load_run(run)
    arch = ARCHS.get(manifest["arch"])
    batch = task.sample(32, make_generator(0, "test"))
    rows, _, _ = routing_check(model, arch, batch, task.default_target)
    print("layer head  relative error dL/ds  relative error dL/dv")
    by = {(r.layer, r.head, r.statistic): r.value for r in rows}
    for layer, head in sorted({(r.layer, r.head) for r in rows}):
        print(f"{layer:>5} {head:>4}  {by[(layer, head, 'relative_error_scores')]:>20.2e}  "
              f"{by[(layer, head, 'relative_error_values')]:>20.2e}")
    worst = max(r.value for r in rows)
    assert worst < 1e-10, f"routing law violated: relative error {worst:.3g}"
    steps = value_step_check(model, arch, batch, task.default_target, layer=0, lrs=(1.0, 0.1, 0.01))
    for r in steps:
        print(f"value step lr={r.meta['lr']:<5}: actual/predicted loss change = {r.value:.6f}")
    print(f"routing law holds on all {len(rows) // 2} heads (worst relative error {worst:.1e})")
    tmp.cleanup()


if __name__ == "__main__":
    main()
