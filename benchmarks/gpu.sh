#!/usr/bin/env bash
# GPU checks for a machine with one CUDA GPU and no network. Four parts, each with its own time limit:
#   tests   the GPU-marked tests          python -m pytest -m gpu -q                       (under 150 s)
#   bench   the benchmark tables          python -m benchmarks.bench --device cuda         (under 200 s)
#   accel   the accelerations table       python -m benchmarks.bench --device cuda --accel (under 100 s)
#   paper   the mmnist preset at the paper's batch (50 x 100 frames) for PAPER_SECONDS (default 240), stopped by
#           SIGTERM (the run saves its checkpoint), then evaluated on 16 test videos x 3 samples to frame 1000,
#           with its training curves drawn                                             (PAPER_SECONDS + under 250 s)
#   graph   --cuda-graph: its GPU tests (graphed against eager over 50 steps, resume, a refused variant, bad
#           steps, watchers between replays), the graphed rows (eager Pyro, graphed Pyro, reference; mmnist and
#           minerl at 50 x 100 frames), each one's kernels by family at the mmnist size (python -m benchmarks.graph
#           --device cuda --profile 1), and mmnist 1000-frame rollouts at batch 300, whose time says whether a
#           graphed rollout would pay          (time limits 180 + 200 + 100 + 60 s: under 10 min with the install)
#
# Run from anywhere:   bash benchmarks/gpu.sh [RESULTS_DIR [PART ...]]    (default: runs/gpu-bench, every part)
#   e.g.   bash benchmarks/gpu.sh runs/gpu-bench tests bench accel
#          PAPER_SECONDS=300 bash benchmarks/gpu.sh runs/gpu-paper paper
#
# Nothing is downloaded. Packages the machine lacks (pyro-ppl, pyro-api, netCDF4, cftime, mlxtend and av, which the
# data readers import, are missing from a plain CUDA image with torch) come as wheels in a .whl/ folder
# in the repository root, if there is one; they are installed into .site/ and put on PYTHONPATH. The project
# itself is installed in editable mode (no build isolation, no index). The logs, tables and the paper run's small
# files (history.nc, config.json, paper-eval.nc, figures; not its checkpoint) are written to RESULTS_DIR as well
# as printed. Extra arguments for bench.py go in BENCH_ARGS, e.g. BENCH_ARGS="--quick".
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1  # a part stopped by its time limit keeps what it printed until then
RESULTS="${1:-runs/gpu-bench}"
shift $(( $# > 0 ? 1 : 0 ))
PARTS="${*:-tests bench accel paper}"
for part in $PARTS; do
  case "$part" in
    tests|bench|accel|paper|graph) ;;
    *) echo "unknown part '$part': choose from tests bench accel paper graph"; exit 2;;
  esac
done
wanted() { [[ " $PARTS " == *" $1 "* ]]; }
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
import importlib.util, sys
# Everything a part imports, checked here, early: pyro_cwvae itself imports its dependencies only where used.
needed = ["torch", "pyro", "pyroapi", "numpy", "xarray", "netCDF4", "cftime", "mlxtend", "av", "matplotlib", "typer",
          "tqdm", "PIL", "pyro_cwvae"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"missing packages: {', '.join(missing)} (put their wheels in .whl/)")
import torch, pyro
print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, pyro-ppl {pyro.__version__}, "
      f"CUDA available: {torch.cuda.is_available()}")
sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")
EOF

if wanted tests; then
echo "== GPU tests"
timeout 150 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$RESULTS/tests.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 5 ]; then
  echo "(no test is marked gpu yet)"
elif [ "$rc" -ne 0 ]; then
  echo "GPU tests failed (exit $rc)"; status=1
fi
fi

if wanted bench; then
echo "== benchmark"
# shellcheck disable=SC2086
timeout 200 "$PYTHON" -m benchmarks.bench --device cuda ${BENCH_ARGS:-} 2> "$RESULTS/bench.err" \
  | tee "$RESULTS/bench.md"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "benchmark failed (exit $rc; 124: timed out):"; tail -20 "$RESULTS/bench.err"; status=1
fi
fi
if wanted accel; then
echo "== accelerations"
timeout 100 "$PYTHON" -m benchmarks.bench --device cuda --accel --sizes mmnist --repeats 3 2> "$RESULTS/accel.err" \
  | tee "$RESULTS/accel.md"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "accelerations table failed (exit $rc; 124: timed out):"; tail -20 "$RESULTS/accel.err"; status=1
fi
fi

if wanted graph; then
echo "== CUDA graph: tests"
timeout 180 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -k "graph" tests/test_gpu.py 2>&1 \
  | tee "$RESULTS/graph-tests.log"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "CUDA graph tests failed (exit $rc; 124: timed out)"; status=1
fi
echo "== CUDA graph: benchmark"
timeout 200 "$PYTHON" -m benchmarks.graph --device cuda 2> "$RESULTS/graph.err" | tee "$RESULTS/graph.md"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "graphed benchmark failed (exit $rc; 124: timed out):"; tail -20 "$RESULTS/graph.err"; status=1
fi
echo "== CUDA graph: the kernels of each step (a process of its own: a profiler fault cannot cost the table above)"
timeout 100 "$PYTHON" -m benchmarks.graph --device cuda --sizes mmnist --repeats 2 --profile 1 \
  2> "$RESULTS/graph-profile.err" | tee "$RESULTS/graph-profile.md"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "kernel profile failed (exit $rc; 124: timed out):"; tail -20 "$RESULTS/graph-profile.err"; status=1
fi
echo "== open-loop rollouts of 1000 frames at an evaluation's batch (100 sequences x 3 samples)"
timeout 60 "$PYTHON" -m benchmarks.bench --device cuda --no-steps --no-memory --sizes mmnist \
  --rollout-batch 300 --rollout-repeats 2 2> "$RESULTS/rollout.err" | tee "$RESULTS/rollout.md"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
  echo "rollout benchmark failed (exit $rc; 124: timed out):"; tail -20 "$RESULTS/rollout.err"; status=1
fi
fi

if wanted paper; then
echo "== the mmnist preset at the paper's batch for ${PAPER_SECONDS:=240} s"
run="runs/gpu-paper-mmnist"
rm -rf "$run"
start=$(date +%s)
# SIGTERM asks fit to finish its step and save (exit 130); -k kills it if saving hangs.
timeout --preserve-status -s TERM -k 60 "$PAPER_SECONDS" \
  "$PYTHON" -m pyro_cwvae fit --dataset mmnist --run-dir "$run" --steps 100000 --checkpoint-every 100 --quiet \
  > "$RESULTS/paper-fit.log" 2>&1
rc=$?
seconds=$(( $(date +%s) - start ))
tail -3 "$RESULTS/paper-fit.log"
if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ]; then
  echo "the paper-size run failed (exit $rc)"; status=1
else
  cp "$run/history.nc" "$run/config.json" "$RESULTS/"
  "$PYTHON" -m benchmarks.run_speed "$run/history.nc" "$seconds" | tee "$RESULTS/paper-speed.md"
  "$PYTHON" -m pyro_cwvae plot "$RESULTS/history.nc" --out "$RESULTS" || status=1
  timeout 200 "$PYTHON" -m pyro_cwvae evaluate "$run" --sequences 16 --samples 3 --no-perceptual \
    --out "$RESULTS/paper-eval.nc" --quiet > "$RESULTS/paper-eval.log" 2>&1
  rc=$?
  tail -8 "$RESULTS/paper-eval.log"
  if [ "$rc" -eq 0 ]; then
    "$PYTHON" -m pyro_cwvae plot "$RESULTS/paper-eval.nc" --out "$RESULTS" || status=1
  else
    echo "evaluating the paper-size run failed (exit $rc; 124: timed out)"; status=1
  fi
fi
fi
exit $status
