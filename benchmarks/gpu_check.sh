#!/usr/bin/env bash
# The prepared GPU check of geoprobe's attention statistics without the pattern (one CUDA GPU, no network,
# about 7 minutes): see benchmarks/gpu_check.py for the sections and what each measures.
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--only SECTION...]    # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu-smoke [--out DIR]             # tiny shapes on CPU: proves every section
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh                   #   runs (the same as --cpu-smoke)
#
# Python: $PYTHON if set, else the repository's .venv/bin/python if it imports torch, else python3. Packages the
# GPU machine lacks (TransformerLens, plotly, ...) travel as wheels in .whl/ (benchmarks/gpu_wheels.sh fills it
# on a machine with PyPI access); they are installed into a temporary folder with pip --no-index. Without
# them the TransformerLens rows are skipped with the reason and the end-to-end scan reports its error.
# Results: --out DIR, default $OUT, else ./gpu_check_out (gpu_check.json, gpu_check.md, rows.jsonl, scan.json,
# gpu_check.log). Exit status 0 when every check passes and no section or mode failed, else 1 (2: no GPU).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x "$root/.venv/bin/python" ]] && "$root/.venv/bin/python" -c "import torch" 2>/dev/null; then
    py="$root/.venv/bin/python"
else
    py="$(command -v python3 || command -v python)"
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
shopt -s nullglob
wheels=("$root"/.whl/*.whl)
if (( ${#wheels[@]} )); then
    site="${TMPDIR:-/tmp}/geoprobe-gpu-check-site"
    if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "${wheels[@]}"; then
        export PYTHONPATH="$PYTHONPATH:$site"
    else
        echo "# gpu_check.sh: installing .whl/ failed; going on without those packages" >&2
    fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
args=()
smoke="${GPU_CHECK_SMOKE:-}"
for x in "$@"; do
    if [[ "$x" == "--cpu-smoke" ]]; then smoke=1; else args+=("$x"); fi
done
if [[ -n "$smoke" && "$smoke" != 0 ]]; then
    args=(--smoke "${args[@]}")
fi
echo "# gpu_check.sh: python $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"
exec "$py" "$here/gpu_check.py" "${args[@]}"
