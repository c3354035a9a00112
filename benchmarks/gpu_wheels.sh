#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.sh needs on a GPU machine without network, beyond torch/transformers/accelerate/
# pandas/scipy/scikit-learn (which such a machine's image is expected to hold): TransformerLens 4.x and the
# packages it imports that are not there (datasets, dill, multiprocess), and plotly (the end-to-end scan writes
# plotly figures). Run it on a machine with PyPI access, in the repository root; it fills .whl/ (ignored by
# git, ~15 MB), which gpu_check.sh installs into a temporary folder with pip --no-index before it runs.
#
#   bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12 (the GPU image's Python)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pyver="${1:-3.12}"
py="${PYTHON:-python3}"
mkdir -p "$root/.whl"
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    plat+=(--platform "$p")
done
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${plat[@]}" -d "$root/.whl" \
    "transformer-lens==4.3.0" "datasets==5.2.0" "dill==0.4.1" "multiprocess==0.70.19" "plotly==7.1.0"
du -sh "$root/.whl"
