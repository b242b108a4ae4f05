"""Whether the Caffe in use was built with CUDA, and the one-line error for GPU=1 without it.

A CPU-only Caffe aborts deep inside C++ ("Cannot use GPU in CPU-only Caffe") on
`solver_mode: GPU` or `caffe.set_mode_gpu()`; these checks say it first, in one
line. `make setup` links pycaffe and the `caffe` tool from the same build, so
pycaffe's library answers for both.
"""
import os

import caffe  # noqa: F401  (loads libcaffe, whose path answers the question)

from core import MtdnetError


def caffe_library():
    """The path of the libcaffe that pycaffe loaded (None if not found)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libcaffe.so"):
                    return path
    except OSError:
        pass
    return None


def build_has_cuda(lib=None):
    """True if libcaffe links the CUDA runtime (a `make setup CUDA=1` build)."""
    lib = lib or caffe_library()
    if lib is None:
        return True        # cannot tell (not Linux): let Caffe decide
    with open(lib, "rb") as f:
        return b"libcudart.so" in f.read()


def require_gpu_build():
    lib = caffe_library()
    if not build_has_cuda(lib):
        raise MtdnetError(f"GPU=1, but this Caffe ({lib}) is a CPU-only build: build the CUDA one with "
                          "`make setup CUDA=1` (needs an NVIDIA driver to run), or leave GPU=1 out")
