// The CPU fast path of our Caffe build (scripts/patch_caffe.sh, section F).
//
// Stock Caffe convolves one image at a time: a single-threaded im2col, a small
// GEMM per image and group, the bias added by a rank-1 GEMM, and the im2col
// redone per image in backward; pooling, LRN and ReLU run on one core. Here a
// convolution lowers a chunk of images at once (im2col / col2im spread over the
// cores), runs one large GEMM per group and adds the bias while copying the
// result into place; pooling, LRN and ReLU split their images over the cores;
// every GEMM of Caffe's runs on the same threads (mtdnet_gemm).
// Every loop keeps stock Caffe's per-element arithmetic and order where it
// can; what differs is the summation order inside the GEMMs and of the bias
// gradient (float rounding only).
//
// MTDNET_CAFFE_FAST=0 in the environment runs the stock code paths instead
// (the benchmark and the tests compare the two in one build; the tests also
// switch between them within a process, mtdnet_caffe_set_fast).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "caffe/layers/base_conv_layer.hpp"
#include "caffe/layers/lrn_layer.hpp"
#include "caffe/layers/pooling_layer.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/mtdnet_cpu.hpp"

extern "C" int openblas_get_num_threads(void);
extern "C" void openblas_set_num_threads(int);

namespace caffe {

namespace {
// -1: not read yet; then 0 or 1. MTDNET_CAFFE_FAST sets it; mtdnet_caffe_set_fast
// switches it (the tests run a stock forward and a fast backward in one process).
std::atomic<int> fast_path(-1);
}  // namespace

bool mtdnet_switch(std::atomic<int>* state, const char* env) {
  int on = state->load(std::memory_order_relaxed);
  if (on < 0) {
    const char* v = std::getenv(env);
    on = (v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "no") == 0 ||
                std::strcmp(v, "false") == 0)) ? 0 : 1;
    state->store(on, std::memory_order_relaxed);
  }
  return on == 1;
}

bool mtdnet_cpu_fast() { return mtdnet_switch(&fast_path, "MTDNET_CAFFE_FAST"); }

// One pool of threads: OpenBLAS would keep its own workers spinning beside
// OpenMP's (on 2 cores the two pools take turns by the scheduler's time slice).
// When the fast path first runs, OpenBLAS is set to one thread and its thread
// count becomes ours; mtdnet_gemm splits each large GEMM over our threads.
int mtdnet_cpu_threads() {
  static const int threads = [] {
    const int n = openblas_get_num_threads();
    return n > 0 ? n : 1;
  }();
  if (!mtdnet_cpu_fast()) return 1;
  static std::once_flag single;
  std::call_once(single, [] { openblas_set_num_threads(1); });
  return threads;
}

namespace {
inline void blas_gemm(const CBLAS_TRANSPOSE ta, const CBLAS_TRANSPOSE tb,
    int m, int n, int k, float alpha, const float* a, int lda, const float* b,
    int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_gemm(const CBLAS_TRANSPOSE ta, const CBLAS_TRANSPOSE tb,
    int m, int n, int k, double alpha, const double* a, int lda, const double* b,
    int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
}  // namespace

template <typename Dtype>
void mtdnet_gemm(const CBLAS_TRANSPOSE ta, const CBLAS_TRANSPOSE tb,
    int m, int n, int k, Dtype alpha, const Dtype* a, int lda, const Dtype* b,
    int ldb, Dtype beta, Dtype* c, int ldc) {
  const int threads = mtdnet_cpu_threads();
  // Below ~1 MFLOP a split costs more than it saves.
  if (threads == 1 || 2.0 * m * n * k < 1e6) {
    blas_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split the larger side of C into column (or row) blocks, multiples of 16;
  // each element's sum over k is the same as in one call.
  const bool by_cols = n >= m;
  const int side = by_cols ? n : m;
  const int parts = std::min(threads, std::max(1, side / 16));
  const int step = ((side + parts - 1) / parts + 15) / 16 * 16;
#pragma omp parallel for num_threads(parts) schedule(static)
  for (int p = 0; p < parts; ++p) {
    const int from = p * step;
    const int len = std::min(side, from + step) - from;
    if (len <= 0) continue;
    if (by_cols) {
      const Dtype* bp = (tb == CblasNoTrans) ? b + from : b + static_cast<size_t>(from) * ldb;
      blas_gemm(ta, tb, m, len, k, alpha, a, lda, bp, ldb, beta, c + from, ldc);
    } else {
      const Dtype* ap = (ta == CblasNoTrans) ? a + static_cast<size_t>(from) * lda : a + from;
      blas_gemm(ta, tb, len, n, k, alpha, ap, lda, b, ldb, beta,
                c + static_cast<size_t>(from) * ldc, ldc);
    }
  }
}
template void mtdnet_gemm<float>(const CBLAS_TRANSPOSE, const CBLAS_TRANSPOSE,
    int, int, int, float, const float*, int, const float*, int, float, float*, int);
template void mtdnet_gemm<double>(const CBLAS_TRANSPOSE, const CBLAS_TRANSPOSE,
    int, int, int, double, const double*, int, const double*, int, double, double*, int);

template <typename Dtype>
Dtype* mtdnet_workspace(size_t count) {
  static thread_local std::vector<Dtype> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}
template float* mtdnet_workspace<float>(size_t);
template double* mtdnet_workspace<double>(size_t);

namespace {

// The hot loops: optimised further than Caffe's -O2 and compiled for several
// vector widths, chosen at load time (GCC function multi-versioning).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MTDNET_KERNEL __attribute__((optimize("O3", "no-tree-loop-distribute-patterns"), \
                                     target_clones("avx512f", "avx2", "default")))
#else
#define MTDNET_KERNEL
#endif

template <typename Dtype>
MTDNET_KERNEL void relu_forward_span(const Dtype* x, Dtype* y, size_t n, Dtype slope) {
  for (size_t i = 0; i < n; ++i) y[i] = std::max(x[i], Dtype(0)) + slope * std::min(x[i], Dtype(0));
}

template <typename Dtype>
MTDNET_KERNEL void relu_backward_span(const Dtype* x, const Dtype* dy, Dtype* dx, size_t n,
                                      Dtype slope) {
  for (size_t i = 0; i < n; ++i) dx[i] = dy[i] * ((x[i] > 0) + slope * (x[i] <= 0));
}

template <typename Dtype>
MTDNET_KERNEL void scale_shift_span(const Dtype* x, Dtype* y, size_t n, Dtype scale, Dtype shift) {
  for (size_t i = 0; i < n; ++i) y[i] = x[i] * scale + shift;
}

// f(begin, length) over `count` elements, in one span per thread (multiples of 64 bytes).
template <typename F>
void over_threads(size_t count, F f) {
  const int threads = count > 32768 ? mtdnet_cpu_threads() : 1;
  const size_t step = ((count + threads - 1) / threads + 15) / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int t = 0; t < threads; ++t) {
    const size_t from = std::min(count, t * step);
    f(from, std::min(count, from + step) - from);
  }
}

// A convolution's geometry (channels: all input channels, of every group).
typedef MtdnetConvShape ConvGeometry;

// The output columns [lo, hi) whose input column ow * stride + offset lies
// inside [0, width): the loops below run branch-free over them.
inline void valid_range(int offset, int stride, int width, int out_w, int* lo, int* hi) {
  *lo = offset >= 0 ? 0 : std::min(out_w, (-offset + stride - 1) / stride);
  *hi = width - offset <= 0 ? 0 : std::min(out_w, (width - offset + stride - 1) / stride);
  *hi = std::max(*hi, *lo);
}

// Max pooling of one plane: each output the first largest input of its window in
// row-major order (stock's strict >), with selects instead of branches (after a
// ReLU, inputs tie at zero and stock's comparisons mispredict); the index goes to
// `mask` (int) or `top_mask` (Dtype), whichever is not NULL.
template <typename Dtype>
MTDNET_KERNEL void max_pool_plane(const Dtype* in, int height, int width, int pooled_h,
    int pooled_w, int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
    Dtype* out, Dtype* top_mask, int* mask) {
  for (int ph = 0; ph < pooled_h; ++ph) {
    for (int pw = 0; pw < pooled_w; ++pw) {
      int hstart = ph * stride_h - pad_h;
      int wstart = pw * stride_w - pad_w;
      const int hend = std::min(hstart + kernel_h, height);
      const int wend = std::min(wstart + kernel_w, width);
      hstart = std::max(hstart, 0);
      wstart = std::max(wstart, 0);
      Dtype best = -FLT_MAX;
      int best_index = -1;
      for (int h = hstart; h < hend; ++h) {
        for (int w = wstart; w < wend; ++w) {
          const Dtype v = in[h * width + w];
          const bool larger = v > best;
          best = larger ? v : best;
          best_index = larger ? h * width + w : best_index;
        }
      }
      const int i = ph * pooled_w + pw;
      out[i] = best;
      if (mask) {
        mask[i] = best_index;
      } else {
        top_mask[i] = static_cast<Dtype>(best_index);
      }
    }
  }
}

// im2col in two steps. First each input row is split into its stride phases
// with the padding's zeros in place (phase p of a row holds columns p,
// p + stride, ... of the padded row); then every row of the column matrix is
// a set of contiguous runs of one phase row: short plain copies the compiler
// vectorises, instead of a strided, bounds-checked gather per element.
inline int phase_span(const ConvGeometry& g) {
  return g.out_w + (g.dilation_w * (g.kernel_w - 1)) / g.stride_w;
}
inline size_t phase_plane(const ConvGeometry& g) {
  return static_cast<size_t>(g.height) * g.stride_w * phase_span(g);
}

template <typename Dtype>
MTDNET_KERNEL void split_phases(const Dtype* image, const ConvGeometry& g, int c,
                                Dtype* phases) {
  const Dtype* plane = image + static_cast<size_t>(c) * g.height * g.width;
  const int s = g.stride_w, span = phase_span(g);
  for (int ih = 0; ih < g.height; ++ih) {
    const Dtype* in = plane + ih * g.width;
    for (int p = 0; p < s; ++p) {
      Dtype* out = phases + (static_cast<size_t>(ih) * s + p) * span;
      for (int x = 0; x < span; ++x) {
        const int w = x * s + p - g.pad_w;
        out[x] = (w >= 0 && w < g.width) ? in[w] : Dtype(0);
      }
    }
  }
}

// The rows (c * kernel_h + i) * kernel_w + j, j < kernel_w, of one image's
// column matrix (row stride ld) from channel c's phase rows, as stock im2col_cpu.
template <typename Dtype>
MTDNET_KERNEL void im2col_rows(const Dtype* phases, const ConvGeometry& g, int c,
                               int i, Dtype* col, size_t ld) {
  const int s = g.stride_w, span = phase_span(g);
  const size_t row0 = static_cast<size_t>(c * g.kernel_h + i) * g.kernel_w;
  for (int oh = 0; oh < g.out_h; ++oh) {
    const int ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
    const bool inside = ih >= 0 && ih < g.height;
    for (int j = 0; j < g.kernel_w; ++j) {
      Dtype* out = col + (row0 + j) * ld + oh * g.out_w;
      if (!inside) {
        for (int ow = 0; ow < g.out_w; ++ow) out[ow] = Dtype(0);
        continue;
      }
      const int k = j * g.dilation_w;
      const Dtype* from = phases + (static_cast<size_t>(ih) * s + k % s) * span + k / s;
      for (int ow = 0; ow < g.out_w; ++ow) out[ow] = from[ow];
    }
  }
}

// The column matrix of `images` images (row stride ld = images * spatial).
template <typename Dtype>
void im2col_chunk(const Dtype* data, size_t image_dim, int images, const ConvGeometry& g,
                  int spatial, Dtype* col, Dtype* phases, int threads) {
  const size_t ld = static_cast<size_t>(images) * spatial;
  const size_t pp = phase_plane(g);
#pragma omp parallel num_threads(threads)
  {
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < images; ++b) {
      for (int c = 0; c < g.channels; ++c) {
        split_phases(data + b * image_dim, g, c, phases + (static_cast<size_t>(b) * g.channels + c) * pp);
      }
    }
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < images; ++b) {
      for (int ci = 0; ci < g.channels * g.kernel_h; ++ci) {
        const int c = ci / g.kernel_h;
        im2col_rows(phases + (static_cast<size_t>(b) * g.channels + c) * pp, g, c,
                    ci % g.kernel_h, col + static_cast<size_t>(b) * spatial, ld);
      }
    }
  }
}

// Input channel c of one image's gradient from its column rows (row stride
// ld), in stock col2im_cpu's order of accumulation.
template <typename Dtype>
MTDNET_KERNEL void col2im_channel(const Dtype* col, size_t ld, const ConvGeometry& g, int c,
                    Dtype* image) {
  Dtype* plane = image + static_cast<size_t>(c) * g.height * g.width;
  std::fill(plane, plane + g.height * g.width, Dtype(0));
  for (int i = 0; i < g.kernel_h; ++i) {
    for (int j = 0; j < g.kernel_w; ++j) {
      const Dtype* row = col + (static_cast<size_t>(c * g.kernel_h + i) * g.kernel_w + j) * ld;
      const int offset = j * g.dilation_w - g.pad_w;
      int lo, hi;
      valid_range(offset, g.stride_w, g.width, g.out_w, &lo, &hi);
      for (int oh = 0; oh < g.out_h; ++oh) {
        const int ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
        if (ih < 0 || ih >= g.height) continue;
        const Dtype* in = row + oh * g.out_w;
        Dtype* out = plane + ih * g.width + offset;
        if (g.stride_w == 1) {
          for (int ow = lo; ow < hi; ++ow) out[ow] += in[ow];
        } else {
          for (int ow = lo; ow < hi; ++ow) out[ow * g.stride_w] += in[ow];
        }
      }
    }
  }
}

// One convolution call's geometry, chunk of images, thread count and
// workspace: the column matrix, the GEMM output and the input phases of a chunk
// (after im2col the phase area holds the transposed weight gradient).
template <typename Dtype>
struct ConvPlan {
  ConvGeometry g;
  int chunk, rows, out_channels, group_rows, group_out, spatial, threads;
  size_t max_cols;
  Dtype* col;
  Dtype* out;
  Dtype* phases;
};

// The im2col path's chunk of images and its workspace.
template <typename Dtype>
void conv_workspace(ConvPlan<Dtype>& p) {
  const ConvGeometry& g = p.g;
  const size_t phase_floats = static_cast<size_t>(g.channels) * phase_plane(g);
  const size_t per_image = static_cast<size_t>(p.rows + p.out_channels) * p.spatial + phase_floats;
  static const size_t budget = [] {
    const char* v = std::getenv("MTDNET_CONV_WORKSPACE_MB");
    const double mb = v ? std::atof(v) : 0;
    return mb > 0 ? static_cast<size_t>(mb * (1 << 20) / sizeof(float))
                  : kMtdnetConvWorkspaceFloats;
  }();
  const size_t fit = budget / std::max<size_t>(per_image, 1);
  p.chunk = static_cast<int>(std::max<size_t>(1, std::min<size_t>(fit, g.num)));
  p.max_cols = static_cast<size_t>(p.chunk) * p.spatial;
  p.col = mtdnet_workspace<Dtype>((p.rows + p.out_channels) * p.max_cols +
      std::max(p.chunk * phase_floats, static_cast<size_t>(p.group_rows) * p.group_out));
  p.out = p.col + p.rows * p.max_cols;
  p.phases = p.out + p.out_channels * p.max_cols;
}

}  // namespace

// ---------------------------------------------------------------- ReLU

template <typename Dtype>
void mtdnet_relu_forward(const Dtype* x, Dtype* y, int count, Dtype negative_slope) {
  over_threads(count, [=](size_t from, size_t n) {
    relu_forward_span(x + from, y + from, n, negative_slope);
  });
}
template void mtdnet_relu_forward<float>(const float*, float*, int, float);
template void mtdnet_relu_forward<double>(const double*, double*, int, double);

template <typename Dtype>
void mtdnet_relu_backward(const Dtype* x, const Dtype* dy, Dtype* dx, int count,
                          Dtype negative_slope) {
  over_threads(count, [=](size_t from, size_t n) {
    relu_backward_span(x + from, dy + from, dx + from, n, negative_slope);
  });
}
template void mtdnet_relu_backward<float>(const float*, const float*, float*, int, float);
template void mtdnet_relu_backward<double>(const double*, const double*, double*, int, double);

template <typename Dtype>
void mtdnet_scale_shift(const Dtype* x, Dtype* y, int count, Dtype scale, Dtype shift) {
  over_threads(count, [=](size_t from, size_t n) {
    scale_shift_span(x + from, y + from, n, scale, shift);
  });
}
template void mtdnet_scale_shift<float>(const float*, float*, int, float, float);
template void mtdnet_scale_shift<double>(const double*, double*, int, double, double);

// ---------------------------------------------------------------- convolution

template <typename Dtype>
bool BaseConvolutionLayer<Dtype>::mtdnet_conv_plan(void* plan) {
  if (!mtdnet_cpu_fast() || reverse_dimensions() || force_nd_im2col_ ||
      num_spatial_axes_ != 2) {
    return false;
  }
  ConvPlan<Dtype>& p = *static_cast<ConvPlan<Dtype>*>(plan);
  ConvGeometry& g = p.g;
  const int* kernel = kernel_shape_.cpu_data();
  const int* pad = pad_.cpu_data();
  const int* stride = stride_.cpu_data();
  const int* dilation = dilation_.cpu_data();
  const int* input = conv_input_shape_.cpu_data();
  g.channels = conv_in_channels_;
  g.height = input[1];
  g.width = input[2];
  g.kernel_h = kernel[0];
  g.kernel_w = kernel[1];
  g.pad_h = pad[0];
  g.pad_w = pad[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.out_h = output_shape_[0];
  g.out_w = output_shape_[1];
  p.rows = kernel_dim_ * group_;
  p.out_channels = conv_out_channels_;
  p.group_rows = kernel_dim_;
  p.group_out = conv_out_channels_ / group_;
  p.spatial = conv_out_spatial_dim_;
  p.threads = mtdnet_cpu_threads();
  g.num = num_;
  g.out_channels = conv_out_channels_;
  g.groups = group_;
  g.bias = bias_term_;
  p.col = p.out = p.phases = NULL;  // conv_workspace, for the im2col path
  return true;
}

template <typename Dtype>
bool BaseConvolutionLayer<Dtype>::mtdnet_forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  ConvPlan<Dtype> p;
  if (!mtdnet_conv_plan(&p)) return false;
  const ConvGeometry& g = p.g;
  const Dtype* weight = this->blobs_[0]->cpu_data();
  const Dtype* bias = bias_term_ ? this->blobs_[1]->cpu_data() : NULL;
  for (int i = 0; i < bottom.size(); ++i) {
    const Dtype* bottom_data = bottom[i]->cpu_data();
    Dtype* top_data = top[i]->mutable_cpu_data();
    if (mtdnet_dnnl_forward(g, bottom_data, weight, bias, top_data)) continue;
    if (!p.col) conv_workspace(p);
    for (int n0 = 0; n0 < num_; n0 += p.chunk) {
      const int images = std::min(p.chunk, num_ - n0);
      const size_t cols = static_cast<size_t>(images) * p.spatial;
      im2col_chunk(bottom_data + static_cast<size_t>(n0) * bottom_dim_, bottom_dim_, images,
                   g, p.spatial, p.col, p.phases, p.threads);
      for (int gr = 0; gr < group_; ++gr) {
        caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, p.group_out, cols,
            p.group_rows, Dtype(1), weight + weight_offset_ * gr,
            p.col + gr * p.group_rows * cols, Dtype(0),
            p.out + gr * p.group_out * cols);
      }
#pragma omp parallel for collapse(2) num_threads(p.threads) schedule(static)
      for (int b = 0; b < images; ++b) {
        for (int m = 0; m < p.out_channels; ++m) {
          const Dtype* from = p.out + m * cols + static_cast<size_t>(b) * p.spatial;
          Dtype* to = top_data + static_cast<size_t>(n0 + b) * top_dim_ +
                      static_cast<size_t>(m) * p.spatial;
          if (bias) {
            const Dtype bm = bias[m];
            for (int s = 0; s < p.spatial; ++s) to[s] = from[s] + bm;
          } else {
            std::memcpy(to, from, sizeof(Dtype) * p.spatial);
          }
        }
      }
    }
  }
  return true;
}

template <typename Dtype>
bool BaseConvolutionLayer<Dtype>::mtdnet_backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  ConvPlan<Dtype> p;
  if (!mtdnet_conv_plan(&p)) return false;
  const ConvGeometry& g = p.g;
  const Dtype* weight = this->blobs_[0]->cpu_data();
  Dtype* weight_diff =
      this->param_propagate_down_[0] ? this->blobs_[0]->mutable_cpu_diff() : NULL;
  Dtype* bias_diff = (bias_term_ && this->param_propagate_down_[1])
                         ? this->blobs_[1]->mutable_cpu_diff() : NULL;
  for (int i = 0; i < top.size(); ++i) {
    Dtype* bottom_diff = propagate_down[i] ? bottom[i]->mutable_cpu_diff() : NULL;
    if (!weight_diff && !bias_diff && !bottom_diff) continue;
    const Dtype* top_diff = top[i]->cpu_diff();
    const Dtype* bottom_data = bottom[i]->cpu_data();
    if (mtdnet_dnnl_backward(g, bottom_data, weight, top_diff, weight_diff, bias_diff,
                             bottom_diff)) {
      continue;
    }
    if (!p.col) conv_workspace(p);
    for (int n0 = 0; n0 < num_; n0 += p.chunk) {
      const int images = std::min(p.chunk, num_ - n0);
      const size_t cols = static_cast<size_t>(images) * p.spatial;
      // The chunk's output gradient as one matrix per group; the bias
      // gradient summed per image as stock's per-image gemv does.
#pragma omp parallel for num_threads(p.threads) schedule(static)
      for (int m = 0; m < p.out_channels; ++m) {
        for (int b = 0; b < images; ++b) {
          const Dtype* from = top_diff + static_cast<size_t>(n0 + b) * top_dim_ +
                              static_cast<size_t>(m) * p.spatial;
          std::memcpy(p.out + m * cols + static_cast<size_t>(b) * p.spatial, from,
                      sizeof(Dtype) * p.spatial);
          if (bias_diff) {
            Dtype sum = 0;
            for (int s = 0; s < p.spatial; ++s) sum += from[s];
            bias_diff[m] += sum;
          }
        }
      }
      if (weight_diff) {
        im2col_chunk(bottom_data + static_cast<size_t>(n0) * bottom_dim_, bottom_dim_, images,
                     g, p.spatial, p.col, p.phases, p.threads);
        // The transposed product (rows x outputs, then added in place): OpenBLAS runs
        // this orientation of a long-k, small-output GEMM 10-30% faster.
        Dtype* wt = p.phases;  // free again after im2col; ConvPlan sizes it for this too
        for (int gr = 0; gr < group_; ++gr) {
          caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, p.group_rows, p.group_out, cols,
              Dtype(1), p.col + gr * p.group_rows * cols, p.out + gr * p.group_out * cols,
              Dtype(0), wt);
          Dtype* dw = weight_diff + weight_offset_ * gr;
          for (int m = 0; m < p.group_out; ++m) {
            for (int k = 0; k < p.group_rows; ++k) dw[m * p.group_rows + k] += wt[k * p.group_out + m];
          }
        }
      }
      if (bottom_diff) {
        for (int gr = 0; gr < group_; ++gr) {
          caffe_cpu_gemm<Dtype>(CblasTrans, CblasNoTrans, p.group_rows, cols,
              p.group_out, Dtype(1), weight + weight_offset_ * gr,
              p.out + gr * p.group_out * cols, Dtype(0),
              p.col + gr * p.group_rows * cols);
        }
#pragma omp parallel for collapse(2) num_threads(p.threads) schedule(static)
        for (int b = 0; b < images; ++b) {
          for (int c = 0; c < g.channels; ++c) {
            col2im_channel(p.col + static_cast<size_t>(b) * p.spatial, cols, g, c,
                           bottom_diff + static_cast<size_t>(n0 + b) * bottom_dim_);
          }
        }
      }
    }
  }
  return true;
}

template bool BaseConvolutionLayer<float>::mtdnet_conv_plan(void*);
template bool BaseConvolutionLayer<double>::mtdnet_conv_plan(void*);
template bool BaseConvolutionLayer<float>::mtdnet_forward_cpu(
    const vector<Blob<float>*>&, const vector<Blob<float>*>&);
template bool BaseConvolutionLayer<double>::mtdnet_forward_cpu(
    const vector<Blob<double>*>&, const vector<Blob<double>*>&);
template bool BaseConvolutionLayer<float>::mtdnet_backward_cpu(
    const vector<Blob<float>*>&, const vector<bool>&, const vector<Blob<float>*>&);
template bool BaseConvolutionLayer<double>::mtdnet_backward_cpu(
    const vector<Blob<double>*>&, const vector<bool>&, const vector<Blob<double>*>&);

// ---------------------------------------------------------------- max pooling

template <typename Dtype>
bool PoolingLayer<Dtype>::mtdnet_forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  if (!mtdnet_cpu_fast() ||
      this->layer_param_.pooling_param().pool() != PoolingParameter_PoolMethod_MAX) {
    return false;
  }
  const Dtype* bottom_data = bottom[0]->cpu_data();
  Dtype* top_data = top[0]->mutable_cpu_data();
  const bool use_top_mask = top.size() > 1;
  Dtype* top_mask = use_top_mask ? top[1]->mutable_cpu_data() : NULL;
  int* mask = use_top_mask ? NULL : max_idx_.mutable_cpu_data();
  const int planes = bottom[0]->num() * channels_;
  const int in_plane = height_ * width_;
  const int out_plane = pooled_height_ * pooled_width_;
#pragma omp parallel for num_threads(mtdnet_cpu_threads()) schedule(static)
  for (int p = 0; p < planes; ++p) {
    const size_t o = static_cast<size_t>(p) * out_plane;
    max_pool_plane(bottom_data + static_cast<size_t>(p) * in_plane, height_, width_,
        pooled_height_, pooled_width_, kernel_h_, kernel_w_, stride_h_, stride_w_, pad_h_, pad_w_,
        top_data + o, use_top_mask ? top_mask + o : NULL, use_top_mask ? NULL : mask + o);
  }
  return true;
}

template <typename Dtype>
bool PoolingLayer<Dtype>::mtdnet_backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!mtdnet_cpu_fast() ||
      this->layer_param_.pooling_param().pool() != PoolingParameter_PoolMethod_MAX) {
    return false;
  }
  if (!propagate_down[0]) return true;
  const Dtype* top_diff = top[0]->cpu_diff();
  Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
  const bool use_top_mask = top.size() > 1;
  const Dtype* top_mask = use_top_mask ? top[1]->cpu_data() : NULL;
  const int* mask = use_top_mask ? NULL : max_idx_.cpu_data();
  const int planes = bottom[0]->num() * channels_;
  const int in_plane = height_ * width_;
  const int out_plane = pooled_height_ * pooled_width_;
#pragma omp parallel for num_threads(mtdnet_cpu_threads()) schedule(static)
  for (int p = 0; p < planes; ++p) {
    Dtype* diff = bottom_diff + static_cast<size_t>(p) * in_plane;
    std::fill(diff, diff + in_plane, Dtype(0));
    const size_t o = static_cast<size_t>(p) * out_plane;
    for (int i = 0; i < out_plane; ++i) {
      const int index = use_top_mask ? static_cast<int>(top_mask[o + i]) : mask[o + i];
      diff[index] += top_diff[o + i];
    }
  }
  return true;
}

template bool PoolingLayer<float>::mtdnet_forward_cpu(
    const vector<Blob<float>*>&, const vector<Blob<float>*>&);
template bool PoolingLayer<double>::mtdnet_forward_cpu(
    const vector<Blob<double>*>&, const vector<Blob<double>*>&);
template bool PoolingLayer<float>::mtdnet_backward_cpu(
    const vector<Blob<float>*>&, const vector<bool>&, const vector<Blob<float>*>&);
template bool PoolingLayer<double>::mtdnet_backward_cpu(
    const vector<Blob<double>*>&, const vector<bool>&, const vector<Blob<double>*>&);

// ---------------------------------------------------------------- LRN

namespace {
// scale^-beta; AlexNet's beta 0.75 as two square roots (a few ulp from pow,
// several times faster).
template <typename Dtype>
inline Dtype lrn_power(Dtype scale, Dtype beta) {
  if (beta == Dtype(0.75)) {
    const Dtype r = std::sqrt(scale);
    return Dtype(1) / (r * std::sqrt(r));
  }
  return std::pow(scale, -beta);
}
}  // namespace

template <typename Dtype>
bool LRNLayer<Dtype>::mtdnet_forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  if (!mtdnet_cpu_fast() || this->layer_param_.lrn_param().norm_region() !=
      LRNParameter_NormRegion_ACROSS_CHANNELS) {
    return false;
  }
  const Dtype* bottom_data = bottom[0]->cpu_data();
  Dtype* top_data = top[0]->mutable_cpu_data();
  Dtype* scale_data = scale_.mutable_cpu_data();
  const int plane = height_ * width_;
  const size_t image = static_cast<size_t>(channels_) * plane;
  const size_t padded = static_cast<size_t>(channels_ + size_ - 1) * plane;
  const Dtype alpha_over_size = alpha_ / size_;
#pragma omp parallel num_threads(mtdnet_cpu_threads())
  {
    Dtype* square = mtdnet_workspace<Dtype>(padded);
    std::fill(square, square + padded, Dtype(0));
#pragma omp for schedule(static)
    for (int n = 0; n < num_; ++n) {
      const Dtype* x = bottom_data + n * image;
      Dtype* scale = scale_data + n * image;
      Dtype* y = top_data + n * image;
      Dtype* sq = square + pre_pad_ * plane;
      for (size_t i = 0; i < image; ++i) sq[i] = x[i] * x[i];
      std::fill(scale, scale + plane, k_);
      for (int c = 0; c < size_; ++c) {
        const Dtype* s = square + c * plane;
        for (int i = 0; i < plane; ++i) scale[i] += alpha_over_size * s[i];
      }
      for (int c = 1; c < channels_; ++c) {
        const Dtype* prev = scale + (c - 1) * plane;
        Dtype* cur = scale + c * plane;
        const Dtype* head = square + (c + size_ - 1) * plane;
        const Dtype* tail = square + (c - 1) * plane;
        for (int i = 0; i < plane; ++i) {
          cur[i] = prev[i] + alpha_over_size * head[i] - alpha_over_size * tail[i];
        }
      }
      for (size_t i = 0; i < image; ++i) y[i] = lrn_power(scale[i], beta_) * x[i];
    }
  }
  return true;
}

template <typename Dtype>
bool LRNLayer<Dtype>::mtdnet_backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!mtdnet_cpu_fast() || this->layer_param_.lrn_param().norm_region() !=
      LRNParameter_NormRegion_ACROSS_CHANNELS) {
    return false;
  }
  const Dtype* top_diff = top[0]->cpu_diff();
  const Dtype* top_data = top[0]->cpu_data();
  const Dtype* bottom_data = bottom[0]->cpu_data();
  const Dtype* scale_data = scale_.cpu_data();
  Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
  const int plane = height_ * width_;
  const size_t image = static_cast<size_t>(channels_) * plane;
  const size_t padded = static_cast<size_t>(channels_ + size_ - 1) * plane;
  const Dtype cache_ratio_value = 2. * alpha_ * beta_ / size_;
  const int inverse_pre_pad = size_ - (size_ + 1) / 2;
#pragma omp parallel num_threads(mtdnet_cpu_threads())
  {
    Dtype* ratio = mtdnet_workspace<Dtype>(padded + plane);
    Dtype* accum = ratio + padded;
    std::fill(ratio, ratio + padded, Dtype(0));
#pragma omp for schedule(static)
    for (int n = 0; n < num_; ++n) {
      const size_t off = n * image;
      const Dtype* dy = top_diff + off;
      const Dtype* y = top_data + off;
      const Dtype* x = bottom_data + off;
      const Dtype* scale = scale_data + off;
      Dtype* dx = bottom_diff + off;
      Dtype* r = ratio + inverse_pre_pad * plane;
      for (size_t i = 0; i < image; ++i) {
        dx[i] = dy[i] * lrn_power(scale[i], beta_);
        r[i] = dy[i] * y[i] / scale[i];
      }
      std::fill(accum, accum + plane, Dtype(0));
      for (int c = 0; c < size_ - 1; ++c) {
        const Dtype* s = ratio + c * plane;
        for (int i = 0; i < plane; ++i) accum[i] += s[i];
      }
      for (int c = 0; c < channels_; ++c) {
        const Dtype* head = ratio + (c + size_ - 1) * plane;
        const Dtype* tail = ratio + c * plane;
        const Dtype* xc = x + c * plane;
        Dtype* dxc = dx + c * plane;
        for (int i = 0; i < plane; ++i) {
          accum[i] += head[i];
          dxc[i] -= cache_ratio_value * (xc[i] * accum[i]);
          accum[i] -= tail[i];
        }
      }
    }
  }
  return true;
}

template bool LRNLayer<float>::mtdnet_forward_cpu(
    const vector<Blob<float>*>&, const vector<Blob<float>*>&);
template bool LRNLayer<double>::mtdnet_forward_cpu(
    const vector<Blob<double>*>&, const vector<Blob<double>*>&);
template bool LRNLayer<float>::mtdnet_backward_cpu(
    const vector<Blob<float>*>&, const vector<bool>&, const vector<Blob<float>*>&);
template bool LRNLayer<double>::mtdnet_backward_cpu(
    const vector<Blob<double>*>&, const vector<bool>&, const vector<Blob<double>*>&);

}  // namespace caffe

// For ctypes (mtdnet.caffe_speed.caffe_threads): whether this process runs
// the fast path, and on how many threads.
extern "C" int mtdnet_caffe_fast() { return caffe::mtdnet_cpu_fast() ? 1 : 0; }
extern "C" int mtdnet_caffe_threads() {
  return caffe::mtdnet_cpu_fast() ? caffe::mtdnet_cpu_threads() : openblas_get_num_threads();
}
extern "C" void mtdnet_caffe_set_fast(int on) { caffe::fast_path.store(on ? 1 : 0); }
