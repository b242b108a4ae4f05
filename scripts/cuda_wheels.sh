#!/usr/bin/env bash
# A CUDA toolkit for building Caffe, assembled from NVIDIA's PyPI wheels, so a
# GPU build needs no system CUDA toolkit (only a driver where it runs).
# Prints the toolkit's directory (use it as CUDA_HOME) on stdout; progress on stderr.
# usage: cuda_wheels.sh VENV_PYTHON CACHE_DIR
#
# All pins are from ONE CUDA release (13.0.0, the first CUDA 13): nvcc's CCCL
# and the runtime headers must match ("CUDA compiler and CUDA toolkit headers
# are incompatible" otherwise), and CUDA 13.0 needs driver >= 580.
# The result is cached under CACHE_DIR/cuda/<key>; the key hashes this file's
# pin list, so a re-run with nothing changed only checks a stamp.
set -euo pipefail
VPY="$1"; CACHE="$2"
CUDA_WHEELS=(
  nvidia-cuda-nvcc==13.0.48     # nvcc, ptxas, fatbinary, nvlink, cicc
  nvidia-cuda-crt==13.0.48      # nvcc's crt/ headers
  nvidia-nvvm==13.0.48          # libnvvm, libdevice
  nvidia-cuda-cccl==13.0.50     # thrust, cub, libcu++ (C++17)
  nvidia-cuda-runtime==13.0.48  # cudart and its headers
  nvidia-cublas==13.0.0.19      # cuBLAS (+ cuBLASLt), ~420 MB
  nvidia-curand==10.4.0.35      # cuRAND of CUDA 13.0.0
)
KEY="$(printf '%s\n' "${CUDA_WHEELS[@]}" | sha256sum | cut -c1-12)"
DEST="$CACHE/cuda/cu13.0.0-$KEY"
if [ -f "$DEST/.mtdnet-complete" ] && [ -x "$DEST/bin/nvcc" ]; then
  echo "$DEST"; exit 0
fi
WHEELS="$CACHE/cuda-wheels/$KEY"
mkdir -p "$WHEELS" "$CACHE/cuda"
# Counted without ls: with no wheel yet, ls exits 2 and pipefail would end the script.
shopt -s nullglob
have=("$WHEELS"/*.whl)
n_have=${#have[@]}
if [ "$n_have" -ne "${#CUDA_WHEELS[@]}" ]; then
  echo "    downloading ${#CUDA_WHEELS[@]} CUDA 13.0.0 wheels (~600 MB) into $WHEELS" >&2
  rm -f "$WHEELS"/*.whl
  # Wheels only, for Linux x86-64; --no-deps: the pins are the whole list.
  "$VPY" -m pip download -q --no-deps --only-binary=:all: \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
    --platform manylinux2010_x86_64 -d "$WHEELS" "${CUDA_WHEELS[@]}" >&2
fi
PART="$(mktemp -d "$CACHE/cuda/.partial-$KEY.XXXXXX")"
trap 'rm -rf "$PART"' EXIT
for w in "$WHEELS"/*.whl; do
  "$VPY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$PART/unz"
done
mv "$PART/unz/nvidia/cu13" "$PART/tk"
T="$PART/tk"
chmod +x "$T"/bin/* 2>/dev/null || true  # zipfile drops the mode bits
# nvcc.profile looks for cicc in <toolkit>/nvvm/bin; the wheel puts it in bin/.
mkdir -p "$T/nvvm/bin"; ln -sf ../../bin/cicc "$T/nvvm/bin/cicc"
# The wheels carry only the versioned sonames; the linker's -lcudart etc. need
# the unversioned names.
for l in cudart cublas cublasLt curand; do
  so="$(cd "$T/lib" && ls "lib$l.so."* | head -n1)"
  ln -sf "$so" "$T/lib/lib$l.so"
done
"$T/bin/nvcc" --version | grep -q 'release 13.0' || { echo "cuda_wheels: the assembled nvcc does not run" >&2; exit 1; }
printf '%s\n' "${CUDA_WHEELS[@]}" >"$T/.mtdnet-wheels"
touch "$T/.mtdnet-complete"
rm -rf "$DEST"; mv "$T" "$DEST"
echo "$DEST"
