#!/usr/bin/env bash
# Pack what scripts/device_check.py needs on a bare GPU machine (no registries) into
# one folder of at most 60 MiB: .devcheck/pack.tar.xz and .devcheck/run.sh.
#
#   bash scripts/device_pack.sh [CAFFE_BUILD_DIR] [DEST]
#
# CAFFE_BUILD_DIR: a `make setup CUDA=1` build (default: the newest cuda-* under the
# cache; for the device check build it with CUDA_ARCH_LIST=90). DEST: default .devcheck
# (add `/.devcheck/` to .git/info/exclude and name it in the device tool's carry).
#
# The pack holds: caffe.bin, libcaffe, pycaffe; this machine's Python (interpreter,
# standard library without tests/tk/idle) and the packages the check imports (numpy,
# protobuf, lmdb, tqdm, six; stubs of skimage and scipy.ndimage: pycaffe's caffe.io imports them, the check
# never reads an image file); every shared library these load except glibc's and
# except cuBLAS/cuRAND: those (~700 MB) do not fit 60 MiB and come from the GPU
# machine's own CUDA 13 wheels (its PyTorch's nvidia/cu13/lib), which run.sh finds.
# cudart comes along (it must match the build).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MTDNET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mtdnet}"
BUILD="${1:-$(ls -dt "$CACHE"/caffe/cuda-* 2>/dev/null | head -n1)}"
DEST="${2:-$REPO/.devcheck}"
[ -x "$BUILD/.temp_release/tools/caffe.bin" ] || { echo "device_pack: no Caffe build at '$BUILD'" >&2; exit 1; }
VPY="${VPY:-$REPO/.venv/bin/python}"
read -r PYBASE PYVER PYLIB LDLIB < <("$VPY" -c 'import sys, sysconfig
print(sys.base_prefix, "%d.%d" % sys.version_info[:2], sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY"))')

STAGE="$(mktemp -d)"; trap 'rm -rf "$STAGE"' EXIT
# copy DIR into DEST, leaving out the names given (tar's --exclude patterns)
copy() { local src="$1" dst="$2"; shift 2
  tar -C "$(dirname "$src")" "${@/#/--exclude=}" -cf - "$(basename "$src")" | tar -C "$dst" -xf -; }
P="$STAGE/pack"; mkdir -p "$P"/{bin,lib,py,python/bin,python/lib}
# Caffe
cp "$BUILD/.temp_release/tools/caffe.bin" "$P/bin/"
cp -P "$BUILD"/.temp_release/lib/libcaffe.so* "$P/lib/"
copy "$BUILD/python/caffe" "$P/py" __pycache__ test imagenet
# Python: interpreter, libpython, the standard library (lib-dynload included)
cp "$PYBASE/bin/python$PYVER" "$P/python/bin/"
cp -L "$PYLIB/$LDLIB" "$P/lib/"
copy "$PYBASE/lib/python$PYVER" "$P/python/lib" __pycache__ site-packages test tests idlelib tkinter \
  turtledemo ensurepip lib2to3 'config-*' pydoc_data '_tkinter*' '_test*'
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for pkg in numpy numpy.libs google lmdb tqdm six.py; do
  copy "$SITE/$pkg" "$P/py" __pycache__ tests '*.pyi' '*.pxd' '*.c' '*.h' f2py
done
mkdir -p "$P/py/skimage"
cat >"$P/py/skimage/__init__.py" <<'EOF'
"""Stub for the device check: pycaffe's caffe.io imports skimage; nothing here reads images."""
def img_as_float(*a, **k):
    raise ImportError("scikit-image is not in the device-check pack")
EOF
printf 'from skimage import img_as_float as imread\n' >"$P/py/skimage/io.py"
printf 'from skimage import img_as_float as resize\n' >"$P/py/skimage/transform.py"
mkdir -p "$P/py/scipy"   # caffe.io: from scipy.ndimage import zoom (resizing; unused here)
echo '"""Stub for the device check: pycaffe imports scipy.ndimage.zoom."""' >"$P/py/scipy/__init__.py"
printf 'from skimage import img_as_float as zoom\n' >"$P/py/scipy/ndimage.py"
# CUDA runtime of the build (cuBLAS/cuRAND: the GPU machine's own, see above)
CUDA_LIB="$(grep -o 'rpath,[^ ]*cu13[^ ]*/lib' "$BUILD/Makefile.config" 2>/dev/null | head -n1 | cut -d, -f2 || true)"
[ -n "$CUDA_LIB" ] && cp -L "$CUDA_LIB"/libcudart.so.* "$P/lib/" 2>/dev/null || true
# Every other shared library they load, except glibc's and CUDA's math libraries.
SKIP='^(libc|libm|libdl|libpthread|librt|libutil|ld-linux-x86-64|linux-vdso|libcublas|libcublasLt|libcurand|libcuda)\.so'
{ echo "$P/bin/caffe.bin"; ls "$P"/lib/libcaffe.so*; find "$P/py" "$P/python" -name '*.so*'; } | sort -u |
while read -r f; do
  LD_LIBRARY_PATH="$P/lib:$PYLIB${CUDA_LIB:+:$CUDA_LIB}" ldd "$f" 2>/dev/null | awk '/=> \//{print $1, $3}'
done | sort -u | while read -r name path; do
  [[ "$name" =~ $SKIP ]] && continue
  case "$path" in "$P"/*) continue ;; esac
  [ -e "$P/lib/$name" ] || cp -L "$path" "$P/lib/$name"
done
strip --strip-unneeded "$P"/lib/*.so* "$P/bin/caffe.bin" 2>/dev/null || true
raw_mb=$(du -sm "$P" | cut -f1)
mkdir -p "$DEST"
rm -f "$DEST/pack.tar.xz"
tar -C "$STAGE" -cf - pack | xz -T1 -9 >"$DEST/pack.tar.xz"
cp "$REPO/scripts/device_run.sh" "$DEST/run.sh"
size=$(stat -c %s "$DEST/pack.tar.xz")
echo "device_pack: $DEST/pack.tar.xz: $((size / 1048576)) MiB (unpacked $raw_mb MiB) from $BUILD"
[ "$size" -le $((60 * 1048576)) ] || { echo "device_pack: over the 60 MiB limit" >&2; exit 1; }
