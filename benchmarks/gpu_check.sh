#!/usr/bin/env bash
# GPU check for geoprobe's attention statistics without the pattern (one CUDA GPU, no network, < 8 minutes).
#
#   bash benchmarks/gpu_check.sh               # on a machine with one CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu-smoke   # tiny shapes on CPU in seconds: proves the script runs
#
# Builds from configs, with random weights (speed does not depend on them), a Pythia-410M-shaped GPT-NeoX, a
# Llama-3.2-1B-shaped GQA model and a Mistral-7B-shaped model (sliding window), all in bfloat16, and prints
# for T = 512 / 2048 / 8192: the plain HF SDPA forward's time and peak memory, the streaming-statistics path
# (SDPA forward + post-rotary q/k capture + every row's entropy from geoprobe.attention_stats: "stream" lets
# it pick flex attention on CUDA, "stream-blocks" forces the key-block loop) and the eager-pattern path as
# ratios to it (rows print to stderr as JSON as they finish); first, per shape, the float32 equality check of the
# streaming and flex entropies against the eager pattern's entropy on a short left-padded batch (2 layers).
# Then the scan path on CUDA in bfloat16 (benchmarks/scan_speed.py): a Llama-3.2-1B-shaped random model with a
# byte-level tokenizer, 75 entropy-selected math prompts: plain SDPA forward, the scan's measurement pass and
# probe stage, TransformerLens run_with_cache (times and CUDA peak memory), and one end-to-end geoprobe.scan
# whose statistics must come back in float32.
# Exit status: 0 when every step passes, 1 otherwise. Environment: PYTHON (default: python).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="${PYTHON:-python}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ "${1:-}" == "--cpu-smoke" ]]; then
    "$py" "$here/attention_stats.py" --cpu-smoke
    # the scan path's benchmark on a tiny model (no selection, no memory subprocesses): proves it runs
    exec "$py" "$here/scan_speed.py" --model tiny --n 10 --repeats 1 --n-boot 20 --mem-n
fi
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA GPU visible (use --cpu-smoke on CPU)')"
"$py" -c "import torch; print('#', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
# one shape per call keeps a failure (e.g. out of memory) from hiding the other shapes' numbers
status=0
# per-step time limits (seconds) sum to 8 minutes; rows already measured are on stderr if one is hit
for spec in pythia-410m:100 llama-3.2-1b:120 mistral-7b:170; do
    shape="${spec%%:*}"
    timeout "${spec##*:}" "$py" "$here/attention_stats.py" --device cuda --dtype bfloat16 --shapes "$shape" \
        --lengths 512 2048 8192 --modes plain stream stream-blocks eager --repeats 3 --check \
        --block-size 512 || status=1
done
timeout 90 "$py" "$here/scan_speed.py" --model llama-3.2-1b --device cuda --dtype bfloat16 --n 75 --repeats 3 \
    --n-boot 200 --mem-n --full-scan || status=1
exit $status
