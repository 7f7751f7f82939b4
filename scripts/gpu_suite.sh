#!/usr/bin/env bash
# The GPU checks and measurements, one part per command, on a machine whose
# python3 already has torch with CUDA and that may have no network. Packages it
# lacks come as wheels from $WHEELS; data come from $BUNDLE (both made on a
# machine with network by scripts/gpu_bundle.sh). Results go to OUT_DIR.
#
#   scripts/gpu_suite.sh verify OUT_DIR   build with CUDA; the whole test suite (CUDA tests included)
#   scripts/gpu_suite.sh bench OUT_DIR    build; op, Hamming and training benchmarks (JSON + logs)
#   scripts/gpu_suite.sh train OUT_DIR    build; LeNet-SSDH-48 on MNIST on the GPU (compare with the
#                                       CPU row of results/mnist); CIFAR-10 from scratch: FastNet-SSDH-48
#                                       at the CPU headline's recipe (compare with results/cifar10_fast/seed0),
#                                       then the ResNet-18 experiment
#
# Environment: PYTHON (python3), WHEELS (.whl), BUNDLE (.carry), EPOCHS (30, the train part),
# SANITIZE=1 (verify: also the CUDA Hamming tests under compute-sanitizer's memcheck).
set -euo pipefail
part=${1:?usage: scripts/gpu_suite.sh verify|bench|train OUT_DIR}
out=${2:?usage: scripts/gpu_suite.sh verify|bench|train OUT_DIR}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
BUNDLE=${BUNDLE:-.carry}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

wheels=$(ls "$WHEELS"/*.whl "$BUNDLE"/faiss/*.whl 2>/dev/null || true)
if [ -n "$wheels" ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ssdh-site $wheels
  export PYTHONPATH=/tmp/ssdh-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
MAX_JOBS=${MAX_JOBS:-16} "$PYTHON" setup.py --quiet build_ext --inplace 2>&1 | tail -20 | tee "$out/build.log"
"$PYTHON" -c "import ssdh_port._native as n, sys; print('extension with CUDA:', n.WITH_CUDA); sys.exit(0 if n.WITH_CUDA else 1)"

case "$part" in
  verify)
    SSDH_SHARED_DATA=$BUNDLE/shared "$PYTHON" -m pytest -q -p no:cacheprovider tests \
      2>&1 | tee "$out/tests.log"
    if [ "${SANITIZE:-0}" = 1 ]; then
      compute-sanitizer --tool memcheck --error-exitcode 1 "$PYTHON" -m pytest -q -p no:cacheprovider \
        tests/test_hamming.py -k cuda 2>&1 | tail -40 | tee "$out/memcheck.log"
    fi
    ;;
  bench)
    "$PYTHON" bench/bench_ops.py --device cuda --json "$out/bench_ops.json" 2>&1 | tee "$out/bench.log"
    "$PYTHON" bench/bench_hamming.py --device cuda --json "$out/bench_hamming.json" 2>&1 | tee -a "$out/bench.log"
    "$PYTHON" bench/bench_train.py --device cuda --json "$out/bench_train.json" 2>&1 | tee -a "$out/bench.log"
    "$PYTHON" bench/bench_fast_cifar.py --device cuda --iters 20 --json "$out/bench_fast_cifar.json" 2>&1 \
      | tee -a "$out/bench.log"
    ;;
  train)
    SSDH_PROGRESS=0 "$PYTHON" -m ssdh_port run cifar10_fast --device cuda --out-dir "$out/cifar10_fast" \
      --set data.dir=/tmp/ssdh-cifar10 --set data.archive="$BUNDLE"/cifar10-jpg.tar.gz 2>&1 | tail -30 \
      | tee "$out/train.log"
    "$PYTHON" -m ssdh_port demo --bits 48 --iters 10000 --solver-set solver_mode=GPU \
      --out-dir "$out/mnist_gpu" 2>&1 | tail -30 | tee -a "$out/train.log"
    "$PYTHON" -m ssdh_port run cifar10_resnet18 --device cuda --out-dir "$out/cifar10_resnet18" \
      --set data.dir=/tmp/ssdh-cifar10 --set data.archive="$BUNDLE"/cifar10-jpg.tar.gz \
      --set model.train.epochs="${EPOCHS:-30}" 2>&1 | tee -a "$out/train.log"
    ;;
  *)
    echo "unknown part '$part' (verify, bench or train)" >&2
    exit 2
    ;;
esac
