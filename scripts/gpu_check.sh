#!/usr/bin/env bash
# Device check of gpuload's CUDA path (issue 8): run on a machine with at least one GPU.
#
#   scripts/gpu_check.sh [--wheels DIR] [--out DIR] [--venv DIR] [--skip-bench]
#
# 1. A venv (--system-site-packages, so a preinstalled CuPy is used) with gpuload's
#    dependencies, installed offline from --wheels DIR (default .whl/, e.g. made with
#    `pip download -d .whl numpy ml_dtypes google-crc32c tqdm pytest hypothesis matplotlib
#    psutil "cupy-cuda12x>=14"`) when that directory exists, else from the index.
#    gpuload itself runs from this checkout (PYTHONPATH), nothing is built.
# 2. GPULOAD_REQUIRE_GPU=1 pytest -m gpu (hardware-only tests included).
# 3. A full load (256 MiB, 8 row parts float32 + 4 column parts bfloat16) on every GPU.
# 4. The GPU-0 context check: a process that loads onto GPU 1 only must not have a
#    primary context on GPU 0 (needs 2 GPUs; skipped with a message otherwise).
# 5. gpuload bench --devices gpu on a 1 GiB table (limits measured in the same run:
#    storage reads and pinned H2D), results into --out (default bench/results).
# A summary goes to <out>/gpu-check-<time>.md. Meant to take under 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS="${GPULOAD_WHEELS:-.whl}"
OUT="bench/results"
VENV=".venv-gpu"
BENCH=1
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --skip-bench) BENCH=0; shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
STAMP=$(date -u +%Y-%m-%dT%H%M)
mkdir -p "$OUT"
SUMMARY="$OUT/gpu-check-$STAMP.md"
log() { printf '== [%4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
note() { printf '%s\n' "$*" >>"$SUMMARY"; }
FAILED=0

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "nvidia-smi not found: this is not a GPU machine" >&2
  exit 1
fi
export CUDA_DEVICE_ORDER=PCI_BUS_ID  # CUDA and nvidia-smi number GPUs alike

log "venv $VENV (wheels: $WHEELS)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q)
if [ -d "$WHEELS" ]; then
  PIP+=(--no-index --find-links "$WHEELS")
fi
"${PIP[@]}" "numpy>=1.24" "ml_dtypes>=0.3" "google-crc32c>=1.5" "tqdm>=4.60" "pytest>=7" "hypothesis>=6.80" \
  "matplotlib>=3.6" "psutil>=5"
if ! "$PY" -c "import cupy" >/dev/null 2>&1; then
  CUDA_MAJOR=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
  "${PIP[@]}" "cupy-cuda${CUDA_MAJOR:-12}x>=14"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "# gpuload device check, $STAMP UTC"
  echo
  echo '```'
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv
  "$PY" -c "import cupy, sys; rt = cupy.cuda.runtime; print('python', sys.version.split()[0], '| cupy', cupy.__version__, '| CUDA runtime', rt.runtimeGetVersion(), '| driver API', rt.driverGetVersion())"
  echo '```'
  echo
} >"$SUMMARY"
NGPU=$("$PY" -c "import cupy; print(cupy.cuda.runtime.getDeviceCount())")
log "$NGPU GPU(s) visible"

log "pytest -m gpu"
set +e
GPULOAD_REQUIRE_GPU=1 timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu-check-$STAMP-pytest.log" | tail -n 25
RC=${PIPESTATUS[0]}
set -e
note "## pytest -m gpu (GPULOAD_REQUIRE_GPU=1): exit $RC"
note ""
note "    $(tail -n 1 "$OUT/gpu-check-$STAMP-pytest.log")"
note ""
[ "$RC" -eq 0 ] || FAILED=1

log "a full load on every GPU"
set +e
timeout 120 "$PY" - "$NGPU" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import sys, tempfile, time

import numpy as np

import gpuload
from gpuload import loader
from gpuload.backend import kernels

n = int(sys.argv[1])
print("## full loads (256 MiB float32 [1048576, 64])\n")
table = np.random.default_rng(0).standard_normal((1 << 20, 64), dtype=np.float32)
with tempfile.TemporaryDirectory() as d:
    prefix = d + "/m.ckpt"
    gpuload.save_checkpoint(prefix, {"t": table})
    print("    kernel warm-up: %.2f s" % kernels.warmup(variants=["b4_b4", "f32_bf16"]))
    for g in range(n):
        for dtype, parts in (("float32", [8, 1]), ("bfloat16", [1, 4])):
            gpuload.reset_default_graph()
            v = gpuload.get_variable("t", shape=list(table.shape), dtype=dtype,
                                     partitioner=lambda s, t, p=parts: p, device=f"/gpu:{g}")
            gpuload.init_from_checkpoint(prefix, {"t": "t"}, allow_cast=True)
            t = time.perf_counter()
            gpuload.global_variables_initializer().run()
            secs = time.perf_counter() - t
            st = loader.last_stats()[0]
            want = table.astype(dtype)
            got = np.concatenate([p.numpy() for p in v._get_variable_list()], axis=0 if parts[0] > 1 else 1)
            ok = np.array_equal(got.view(np.uint8), want.view(np.uint8))
            print(f"    GPU {g} {dtype} parts {parts}: {table.nbytes / secs / 1e9:.2f} GB/s, "
                  f"pin {st.pin_s:.3f} s, {'OK' if ok else 'MISMATCH'}")
            if not ok:
                sys.exit(1)
EOF
RC=${PIPESTATUS[0]}
set -e
[ "$RC" -eq 0 ] || { FAILED=1; note "full loads FAILED (exit $RC)"; }

log "GPU-0 context check"
if [ "$NGPU" -lt 2 ]; then
  msg="skipped: only $NGPU GPU visible (needs 2: load onto GPU 1, check that GPU 0 has no context)"
  echo "$msg"
  note "## GPU-0 context check: $msg"
else
  set +e
  timeout 60 "$PY" - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import ctypes, tempfile

import numpy as np

import gpuload

print("## GPU-0 context check\n")
table = np.arange(1 << 20, dtype=np.float32).reshape(-1, 64)
with tempfile.TemporaryDirectory() as d:
    gpuload.save_checkpoint(d + "/m.ckpt", {"t": table})
    v = gpuload.get_variable("t", shape=list(table.shape), dtype="bfloat16",
                             partitioner=lambda s, t: [1, 2], device="/gpu:1")
    gpuload.init_from_checkpoint(d + "/m.ckpt", {"t": "t"}, allow_cast=True)
    gpuload.global_variables_initializer().run()
    assert np.array_equal(v.as_array().astype(np.float32), table.astype(v.dtype).astype(np.float32))
cuda = ctypes.CDLL("libcuda.so.1")
active = []
for ordinal in (0, 1):
    dev, flags, on = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
    assert cuda.cuDeviceGet(ctypes.byref(dev), ordinal) == 0
    assert cuda.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(on)) == 0
    active.append(on.value)
print(f"    primary context active: GPU 0 {bool(active[0])}, GPU 1 {bool(active[1])}")
raise SystemExit(0 if active == [0, 1] else 1)
EOF
  RC=${PIPESTATUS[0]}
  set -e
  [ "$RC" -eq 0 ] || { FAILED=1; note "GPU-0 context check FAILED (exit $RC)"; }
fi

if [ "$BENCH" -eq 1 ]; then
  log "bench --devices gpu, 1 GiB"
  set +e
  timeout 600 "$PY" bench/bench_load.py --devices gpu --size 1GiB --layouts rows:1,rows:8,cols:4 --crc on \
    --repeat 1 --peers none --out "$OUT" --timeout 120 2>&1 | tee "$OUT/gpu-check-$STAMP-bench.log" | tail -n 30
  RC=${PIPESTATUS[0]}
  set -e
  note ""
  note "## bench (--devices gpu, 1 GiB): exit $RC; tables in $OUT/latest.md"
  [ "$RC" -eq 0 ] || FAILED=1
fi

log "done: $SUMMARY (failed=$FAILED)"
exit "$FAILED"
