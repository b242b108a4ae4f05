// The CPU fast path of our Caffe build (scripts/patch_caffe.sh, section F).
// Shared helpers of the patched Convolution, Pooling, LRN and ReLU layers.
#ifndef CAFFE_UTIL_MTDNET_CPU_HPP_
#define CAFFE_UTIL_MTDNET_CPU_HPP_

#include <atomic>
#include <cstddef>

#include "caffe/util/mkl_alternate.hpp"  // CBLAS_TRANSPOSE

namespace caffe {

// A run-time switch: *state once read from the environment variable `env` (0, no
// or false: off; anything else or unset: on), -1 until then; the tests set it.
bool mtdnet_switch(std::atomic<int>* state, const char* env);

// False when MTDNET_CAFFE_FAST=0 (or no / false): the stock code paths run.
bool mtdnet_cpu_fast();

// Threads for the patched loops and GEMMs: OpenBLAS's own count (read once,
// then OpenBLAS is set to 1), so one setting (OPENBLAS_NUM_THREADS) governs
// all of Caffe's CPU work and two trainings side by side with one thread each
// do not oversubscribe the cores.
int mtdnet_cpu_threads();  // 1 when !mtdnet_cpu_fast()

// Floats of the convolution workspace (the column matrix, output and input
// phases of a chunk of images); a chunk holds as many images as fit, at least
// one. Larger chunks make larger GEMMs but fall out of the caches: 16 MiB ran
// the scratch MTDnet fastest (4 and 64 MiB were 3% and 12% slower).
// MTDNET_CONV_WORKSPACE_MB overrides it (the tests use it to force chunks).
const size_t kMtdnetConvWorkspaceFloats = size_t(4) << 20;  // 16 MiB

// cblas_?gemm (row-major) split over mtdnet_cpu_threads(); stock's
// caffe_cpu_gemm calls it.
template <typename Dtype>
void mtdnet_gemm(const CBLAS_TRANSPOSE ta, const CBLAS_TRANSPOSE tb,
    int m, int n, int k, Dtype alpha, const Dtype* a, int lda, const Dtype* b,
    int ldb, Dtype beta, Dtype* c, int ldc);

// ReLU over the cores with vectorised loops, as stock's element loops compute it.
template <typename Dtype>
void mtdnet_relu_forward(const Dtype* x, Dtype* y, int count, Dtype negative_slope);
template <typename Dtype>
void mtdnet_relu_backward(const Dtype* x, const Dtype* dy, Dtype* dx, int count,
                          Dtype negative_slope);

// y = x * scale + shift over the cores (Power with power 1: the nets' input scaling).
template <typename Dtype>
void mtdnet_scale_shift(const Dtype* x, Dtype* y, int count, Dtype scale, Dtype shift);

// A scratch buffer per thread and type that only grows.
template <typename Dtype>
Dtype* mtdnet_workspace(size_t count);

// The convolution engine (util/mtdnet_dnnl.cpp): oneDNN's direct convolution
// on float, where it takes the shape; false leaves the call to the im2col path.
// MTDNET_CAFFE_DNNL=0 selects the im2col path for every call.
struct MtdnetConvShape {
  int num, channels, height, width, out_channels, out_h, out_w;
  int kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w;
  int groups;
  bool bias;
};
bool mtdnet_dnnl_on();
// y = conv(x, w) + b.
bool mtdnet_dnnl_forward(const MtdnetConvShape& s, const float* x, const float* w,
                         const float* b, float* y);
// As Caffe: dw += dL/dw and db += dL/db where not NULL, dx = dL/dx where not NULL.
bool mtdnet_dnnl_backward(const MtdnetConvShape& s, const float* x, const float* w,
                          const float* dy, float* dw, float* db, float* dx);
inline bool mtdnet_dnnl_forward(const MtdnetConvShape&, const double*, const double*,
                                const double*, double*) { return false; }
inline bool mtdnet_dnnl_backward(const MtdnetConvShape&, const double*, const double*,
                                 const double*, double*, double*, double*) { return false; }

}  // namespace caffe

#endif  // CAFFE_UTIL_MTDNET_CPU_HPP_
