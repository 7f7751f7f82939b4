#!/usr/bin/env bash
# Gather, on a machine with network, what scripts/gpu_suite.sh needs on a GPU
# machine without one: wheels of the packages its python lacks (for Python
# 3.12, x86-64 Linux) in .whl/, and the data in .carry/ (both git-ignored).
#
#   scripts/gpu_bundle.sh [SHARED_DATA]     SHARED_DATA: the real Caffe artefacts (default ../shared/data)
#
# What each part takes along (the working tree and these travel together, 64 MiB
# at most): verify .whl + .carry/shared (the artefacts the tests read, about
# 28 MB: no CIFAR-10 archive, MNIST linked to the repository's copy); bench .whl
# + .carry/faiss (faiss-cpu, 19 MB, the CPU baseline); train .whl +
# .carry/cifar10-jpg.tar.gz (the authors' archive, 20 MB).
set -euo pipefail
shared=${1:-../shared/data}
PYTHON=${PYTHON:-python3}
test -d "$shared/caffe-oracle" || { echo "no Caffe artefacts at $shared" >&2; exit 2; }

rm -rf .whl.tmp && mkdir -p .whl.tmp
# Versions pinned as in requirements.txt; protobuf for the generated caffe_pb2.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl.tmp \
  $(grep -E '^(lmdb|plyvel|faiss-cpu|expecttest|protobuf|tqdm)==' requirements.txt)
rm -rf .carry && mkdir -p .carry/shared .carry/faiss
mv .whl.tmp/faiss_cpu-*.whl .carry/faiss/
rm -rf .whl && mv .whl.tmp .whl

for part in caffe-oracle caffe-models; do
  cp -r "$shared/$part" .carry/shared/
done
ln -s ../../data/mnist .carry/shared/mnist  # the same files as the repository's data/mnist
mkdir -p .carry/shared/ssdh-reference
(cd "$shared/ssdh-reference" && find . -type f ! -name '*.tar.gz' ! -name '*.sha256.gz' -print0 |
  xargs -0 -I{} cp --parents {} "$OLDPWD/.carry/shared/ssdh-reference/")
cp "$shared/PROVENANCE.md" .carry/shared/
archive=$(find "$shared/ssdh-reference" -name 'cvprw15-cifar10-dataset-jpg.tar.gz' | head -1)
cp "$archive" .carry/cifar10-jpg.tar.gz
du -sh .whl .carry/faiss .carry/shared .carry/cifar10-jpg.tar.gz
