#!/usr/bin/env bash
# The device check's one command (copied into .devcheck/ by scripts/device_pack.sh):
#   bash .devcheck/run.sh                 on the GPU machine (device tool: carry .devcheck)
#   bash .devcheck/run.sh --cpu           the rehearsal here: same pack, CPU mode, fewer iterations
# Unpacks the pack into /tmp, puts only the pack (and the GPU machine's cuBLAS/cuRAND)
# on the library path and runs scripts/device_check.py with the pack's Python; the JSON
# goes to $OUT/device_check.json (the device tool's OUT) or bench/device_check.json.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
D="${DEVCHECK_DIR:-/tmp/mtdnet-devcheck}"
rm -rf "$D"; mkdir -p "$D"
tar -C "$D" -xJf "$HERE/pack.tar.xz" || { echo "device_run: cannot unpack $HERE/pack.tar.xz" >&2; exit 1; }
P="$D/pack"
# cuBLAS / cuRAND of CUDA 13 (not in the pack): NVLIB, else the machine's nvidia wheels.
if [ -z "${NVLIB:-}" ]; then
  lib="$(find /opt /usr/local/lib /usr/lib /root -name 'libcublas.so.13' -path '*cu13*' 2>/dev/null | head -n1)"
  NVLIB="${lib%/*}"
fi
[ -n "$NVLIB" ] && [ -e "$NVLIB/libcublas.so.13" ] || {
  echo "device_run: no libcublas.so.13 found (set NVLIB to a folder with libcublas.so.13 and libcurand.so.10)" >&2; exit 1; }
PY="$(ls "$P"/python/bin/python3.* | head -n1)"
OUTDIR="${OUT:-$REPO/bench}"
mkdir -p "$OUTDIR"
exec env -i PATH="/usr/bin:/bin:/usr/local/nvidia/bin" HOME="${HOME:-/tmp}" OUT="$OUTDIR" \
  LD_LIBRARY_PATH="$P/lib:$NVLIB" PYTHONHOME="$P/python" PYTHONPATH="$REPO:$P/py" PYTHONNOUSERSITE=1 \
  PYTHONUNBUFFERED=1 MTDNET_CAFFE_BIN="$P/bin/caffe.bin" NVLIB="$NVLIB" \
  "$PY" "$REPO/scripts/device_check.py" --out "$OUTDIR/device_check.json" "$@"
