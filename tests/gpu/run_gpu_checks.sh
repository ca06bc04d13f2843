#!/usr/bin/env bash
# The GPU checks on a bare, offline GPU machine (issue 14), printing everything:
#   1. benchmarks/gpu_throughput.py               (parent / Super-pattern child / transformers, bf16; ~1-2 min)
#   2. python -m pytest -m gpu tests/gpu -q       (SDPA attention, packing, engine log-probs, tiny recipes on CUDA)
#   3. with GPU_UNIT_TESTS set: python -m pytest $GPU_UNIT_TESTS (e.g. "tests/unit -k engine")
# Run from the repository root or anywhere inside it:  bash tests/gpu/run_gpu_checks.sh
# When megatron-core is not importable, the wheels in .whl/ (from ../shared/tools/device-prep) are installed into
# /tmp/site first. The working tree's nemotron_plugins always wins over an installed wheel (PYTHONPATH).
# Environment: GPU_BENCH_ARGS (benchmark arguments on CUDA, default "--with-local --without-fusions"; extra ones on CPU), GPU_TEST_TIMEOUT / GPU_BENCH_TIMEOUT
# / GPU_UNIT_TIMEOUT (seconds; default 900 / 420 / 300). Without CUDA the tests skip and the benchmark runs its tiny --cpu version instead.
# Exit status: non-zero when a step failed (every step still runs).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" || exit 1
py=python3
command -v "$py" >/dev/null 2>&1 || py=python

if ! "$py" -c "import megatron.core" >/dev/null 2>&1; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing .whl/ into /tmp/site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "run_gpu_checks: installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
  else
    echo "run_gpu_checks: megatron-core is not importable and there is no .whl/ (run ../shared/tools/device-prep)" >&2
    exit 1
  fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

echo "== environment"
"$py" - <<'EOF'
import platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
else:
    print("no CUDA: GPU tests skip, the benchmark runs its --cpu version")
for name in ("megatron.core", "transformers", "nemotron_plugins"):
    module = __import__(name, fromlist=["__version__"])
    print(f"{name} {getattr(module, '__version__', '?')} from {module.__file__}")
try:
    import transformer_engine  # noqa: F401

    print("transformer_engine: present")
except ImportError:
    print("transformer_engine: absent (the default layer spec is puzzle_sdpa)")
EOF

status=0
echo "== benchmarks/gpu_throughput.py"
if "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # shellcheck disable=SC2086  # GPU_BENCH_ARGS is a list of arguments
  timeout "${GPU_BENCH_TIMEOUT:-420}" "$py" benchmarks/gpu_throughput.py ${GPU_BENCH_ARGS---with-local --without-fusions} || status=$?
else
  # shellcheck disable=SC2086
  timeout "${GPU_BENCH_TIMEOUT:-420}" "$py" benchmarks/gpu_throughput.py --cpu --layers 4 --skip-sft ${GPU_BENCH_ARGS:-} \
    || status=$?
fi
echo "== pytest -m gpu tests/gpu"
timeout "${GPU_TEST_TIMEOUT:-900}" "$py" -m pytest -m gpu tests/gpu -q -rA -s -p no:cacheprovider || status=$?

if [ -n "${GPU_UNIT_TESTS:-}" ]; then
  echo "== pytest $GPU_UNIT_TESTS"
  # shellcheck disable=SC2086  # GPU_UNIT_TESTS is a list of pytest arguments
  timeout "${GPU_UNIT_TIMEOUT:-300}" "$py" -m pytest -q -rfE -p no:cacheprovider $GPU_UNIT_TESTS || status=$?
fi
echo "== run_gpu_checks: exit status $status"
exit "$status"
