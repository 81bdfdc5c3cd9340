#!/usr/bin/env bash
# Check a Llama-shaped synthetic head on this machine's accelerator and compare it with the
# device's own float32 and bfloat16 products and with a CPU run (see scripts/gpu_bench.py).
# No network: it runs the checkout it is in with the installed JAX (a CUDA build on a GPU).
#
#   scripts/gpu_bench.sh                       # 128256 x 4096, CPU check of 256 tokens
#   scripts/gpu_bench.sh --shape 32000,4096 --cpu-report cpu-out/
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
python="${PYTHON:-python3}"
"$python" -c "import jax; print('jax', jax.__version__, 'backend', jax.default_backend(), jax.devices())" \
  || { echo "gpu_bench: JAX does not import with $python; expected an installed JAX (a CUDA build on a GPU)" >&2; exit 2; }
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# Fail within the 5-minute budget rather than hang (override with GPU_BENCH_TIMEOUT=seconds).
exec timeout "${GPU_BENCH_TIMEOUT:-300}" "$python" "$here/gpu_bench.py" "$@"
