#!/usr/bin/env bash
# Source patches applied to the unpacked Caffe tree before building.
# usage: patch_caffe.sh CAFFE_SRC_DIR
set -euo pipefail
cd "$1"
# 1. pycaffe's _caffe.so is linked with rpath $ORIGIN/../../build/lib, but this
#    Makefile builds into .temp_release/: point the rpath at the real library so
#    `import caffe` works without LD_LIBRARY_PATH.
grep -q 'rpath,$(ORIGIN)/../../build/lib' Makefile
sed -i 's#-Wl,-rpath,$(ORIGIN)/../../build/lib#-Wl,-rpath,$(ORIGIN)/../../$(BUILD_DIR)/lib#' Makefile
# 2. The shipped Makefile.config points at a conda Python; ours replaces it.
rm -f Makefile.config
# 3. The sdist ships a stale, pre-generated python/caffe/proto/caffe_pb2.py
#    (old protoc output, newer mtime than caffe.proto, so make keeps it) that
#    current protobuf runtimes reject ("duplicate file name"). Delete it so
#    the build regenerates it with the system protoc.
rm -f python/caffe/proto/caffe_pb2.py
echo "patch_caffe: ok"
