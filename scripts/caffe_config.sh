#!/usr/bin/env bash
# Prints the Makefile.config for our Caffe build.
# usage: caffe_config.sh VENV_PYTHON CUDA(0|1) CUDA_HOME "ARCH LIST"
set -euo pipefail
VPY="$1"; CUDA="$2"; CUDA_HOME="$3"; ARCHS="$4"
read -r PYVER PYINC PYLIBDIR NPINC < <("$VPY" -c '
import sys, sysconfig, numpy
print("%d%d" % sys.version_info[:2], sysconfig.get_paths()["include"],
      sysconfig.get_config_var("LIBDIR"), numpy.get_include())')
PYDOT="${PYVER:0:1}.${PYVER:1}"
cat <<CFG
# Written by scripts/caffe_config.sh (make setup). Do not edit by hand.
USE_CUDNN := 0
USE_OPENCV := 0
USE_LEVELDB := 0
USE_LMDB := 1
USE_HDF5 := 1
BLAS := open
BLAS_INCLUDE := /usr/include/x86_64-linux-gnu/openblas-pthread
WITH_PYTHON_LAYER := 1
PYTHON_LIBRARIES := boost_python$PYVER python$PYDOT
PYTHON_INCLUDE := $PYINC $NPINC
PYTHON_LIB := $PYLIBDIR
INCLUDE_DIRS := \$(PYTHON_INCLUDE) /usr/local/include /usr/include/hdf5/serial
LIBRARY_DIRS := \$(PYTHON_LIB) /usr/local/lib /usr/lib /usr/lib/x86_64-linux-gnu/hdf5/serial
# The embedding Python's libpython may live outside the loader's path (pyenv).
LINKFLAGS += -Wl,-rpath,$PYLIBDIR
BUILD_DIR := build
DISTRIBUTE_DIR := distribute
Q ?= @
CFG
if [ "$CUDA" = "1" ]; then
  echo "CUDA_DIR := $CUDA_HOME"
  # CUDA 13's CCCL (thrust/cub) refuses anything older than C++17.
  echo "NVCCFLAGS += -std=c++17"
  # cudart/cuBLAS/cuRAND found by rpath (no LD_LIBRARY_PATH); the \$ORIGIN
  # entries find them beside libcaffe.so in a relocated copy (the device check).
  for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib"; do
    [ -d "$d" ] && echo "LINKFLAGS += -Wl,-rpath,$d"
  done
  echo 'LINKFLAGS += -Wl,-rpath,\$$ORIGIN -Wl,-rpath,\$$ORIGIN/../lib'
  printf 'CUDA_ARCH :='
  for a in $ARCHS; do printf ' -gencode arch=compute_%s,code=sm_%s' "$a" "$a"; done
  last="${ARCHS##* }"
  printf ' -gencode arch=compute_%s,code=compute_%s\n' "$last" "$last"
else
  echo "CPU_ONLY := 1"
fi
