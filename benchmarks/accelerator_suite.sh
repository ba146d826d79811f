#!/usr/bin/env bash
# benchmarks/accelerator_suite.py on a device machine (GPU/TPU): no network,
# the machine's own JAX/PyTorch stack, the missing pure-Python packages
# (ml_collections) carried as wheels.
#
#   bash benchmarks/accelerator_suite.sh [WHEELS_DIR] [MAX_SECONDS] [suite flags...]
#
# WHEELS_DIR (default .whl): *.whl installed with pip --no-index --no-deps
# into $SITE (default /tmp/jaxdiff_site), put on PYTHONPATH after the
# checkout. MAX_SECONDS (default 420): the suite's --max_seconds (rows not
# started by then are recorded as skipped); the run is interrupted 150 s
# later (SIGINT, the JSON keeps the finished rows). The JSON and the log go
# to $OUT when it is set (the device tool's folder), else
# benchmarks/results/. Python: $PYTHON, default python3.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${1:-$ROOT/.whl}"
BUDGET="${2:-420}"
shift $(( $# < 2 ? $# : 2 ))
PY="${PYTHON:-python3}"
SITE="${SITE:-/tmp/jaxdiff_site}"
OUT_DIR="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$OUT_DIR"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$SITE"
  echo "installed into $SITE: $(cd "$WHEELS" && echo *.whl)"
else
  echo "no wheels in $WHEELS: using what $PY has"
fi
export PYTHONUNBUFFERED=1
# The PyTorch section compiles jaxdiff's steps once per PyTorch mode: the
# second compilation of the same program loads from this cache.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxdiff_jit_cache}"

# Fail fast, naming the missing module, before any device time is spent.
if ! "$PY" -c "import jaxdiff.config, jaxdiff.train, jaxdiff.trained" ; then
  echo "jaxdiff does not import here: carry the missing package's wheel in" \
       "$WHEELS (benchmarks/README.md, 'Accelerator suite')." >&2
  exit 3
fi
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
command -v nvidia-smi >/dev/null && nvidia-smi -L

timeout -s INT -k 30 $(( ${BUDGET%.*} + 150 )) \
  "$PY" "$ROOT/benchmarks/accelerator_suite.py" --max_seconds "$BUDGET" \
  --out_dir "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/accelerator_suite.log"
exit "${PIPESTATUS[0]}"
