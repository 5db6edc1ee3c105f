#!/usr/bin/env bash
# GPU checks for a machine with one CUDA GPU and no network, in well under 8 minutes:
#   1. the GPU-marked tests          python -m pytest -m gpu -q   (none yet is fine)
#   2. the benchmark tables          python benchmarks/bench.py --device cuda
#   3. the accelerations table       python benchmarks/bench.py --device cuda --accel --sizes mmnist
#
# Run from anywhere:   bash benchmarks/gpu.sh [RESULTS_DIR]      (default RESULTS_DIR: runs/gpu-bench, git-ignored)
#
# Nothing is downloaded. Packages the machine lacks (pyro-ppl, pyro-api, ...) come as wheels in a .whl/ folder
# in the repository root, if there is one; they are installed into .site/ and put on PYTHONPATH. The project
# itself is installed in editable mode (no build isolation, no index). The logs and the tables are written to
# RESULTS_DIR as well as printed. Extra arguments for bench.py go in BENCH_ARGS, e.g. BENCH_ARGS="--quick".
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
RESULTS="${1:-runs/gpu-bench}"
mkdir -p "$RESULTS"
status=0

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"

echo "== install (offline)"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$PWD/.site" .whl/*.whl \
    || { echo "installing the wheels in .whl/ failed"; exit 1; }
  export PYTHONPATH="$PWD/.site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
  || { echo "the editable install of the project failed"; exit 1; }
"$PYTHON" - <<'EOF' || exit 1
import sys
import torch, pyro, pyro_cwvae  # noqa: F401  (fails here, early, if a package is missing)
print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, pyro-ppl {pyro.__version__}, "
      f"CUDA available: {torch.cuda.is_available()}")
sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")
EOF

echo "== GPU tests"
timeout 150 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$RESULTS/tests.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 5 ]; then
  echo "(no test is marked gpu yet)"
elif [ "$rc" -ne 0 ]; then
  echo "GPU tests failed (exit $rc)"; status=1
fi

echo "== benchmark"
# shellcheck disable=SC2086
timeout 200 "$PYTHON" benchmarks/bench.py --device cuda ${BENCH_ARGS:-} 2> "$RESULTS/bench.err" \
  | tee "$RESULTS/bench.md"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "benchmark failed (exit $rc; 124: timed out):"; tail -20 "$RESULTS/bench.err"; status=1
fi
echo "== accelerations"
timeout 100 "$PYTHON" benchmarks/bench.py --device cuda --accel --sizes mmnist --repeats 3 2> "$RESULTS/accel.err" \
  | tee "$RESULTS/accel.md"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "accelerations table failed (exit $rc; 124: timed out):"; tail -20 "$RESULTS/accel.err"; status=1
fi
exit $status
