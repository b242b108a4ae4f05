// The fast path's convolution engine: oneDNN (Debian's libdnnl), for float.
//
// oneDNN's direct convolution kernels (JIT-compiled for the machine's vector
// width) run the scratch MTDnet's convolutions at 1.5-2.5x the chunked
// im2col + GEMM path and close to the GEMM peak: they work on channel-blocked
// layouts (16 channels side by side) with no column matrix at all. Caffe's
// blobs stay NCHW; each call reorders its inputs into the layouts oneDNN chose
// and its outputs back (memory-bound copies, a few percent of the time).
//
// What Caffe's semantics need and oneDNN does differently:
// - Caffe adds parameter gradients into the diffs (shared weights sum their
//   branches); oneDNN writes them: they are computed into a buffer and added.
// - Caffe's output size is floor((in + 2 pad - extent) / stride) + 1, the same
//   integer division oneDNN checks with padding_r = padding_l.
// - Shapes oneDNN does not take (it throws) are remembered and left to the
//   im2col path; so are doubles.
//
// The primitives of one shape (batch included) are made once per process and
// shared by the layers with that shape (conv1, conv1_p, conv1_n); temporaries
// come from one grow-only buffer per thread, oneDNN's scratchpad included.
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "caffe/common.hpp"
#include "caffe/util/mtdnet_cpu.hpp"

namespace caffe {

namespace {

using dnnl::memory;
using tag = memory::format_tag;
const memory::data_type f32 = memory::data_type::f32;

// -1: not read yet; MTDNET_CAFFE_DNNL=0 (no, false) selects the im2col path;
// mtdnet_caffe_set_dnnl switches within a process (the tests run both).
std::atomic<int> dnnl_path(-1);
// Convolution calls (forward or backward) oneDNN ran: the tests check that the
// engine is used rather than silently falling back.
std::atomic<long> dnnl_calls(0);

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Primitives {
  memory::desc src, dst, weights, bias;  // Caffe's layouts
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights weights_grad;
  bool gemm;  // one of the three fell back to oneDNN's im2col + GEMM
};

typedef std::array<int, 18> Key;

Key key_of(const MtdnetConvShape& s, int threads) {
  return Key{{s.num, s.channels, s.height, s.width, s.out_channels, s.out_h, s.out_w,
              s.kernel_h, s.kernel_w, s.pad_h, s.pad_w, s.stride_h, s.stride_w,
              s.dilation_h, s.dilation_w, s.groups, s.bias ? 1 : 0, threads}};
}

// layout: of the activations and their gradients in oneDNN (tag::any: its choice).
std::unique_ptr<Primitives> make_primitives(const MtdnetConvShape& s, tag layout) {
  std::unique_ptr<Primitives> p(new Primitives);
  const memory::dims src{s.num, s.channels, s.height, s.width};
  const memory::dims dst{s.num, s.out_channels, s.out_h, s.out_w};
  const memory::dims weights = s.groups > 1
      ? memory::dims{s.groups, s.out_channels / s.groups, s.channels / s.groups, s.kernel_h, s.kernel_w}
      : memory::dims{s.out_channels, s.channels, s.kernel_h, s.kernel_w};
  const memory::dims strides{s.stride_h, s.stride_w};
  const memory::dims dilates{s.dilation_h - 1, s.dilation_w - 1};
  const memory::dims pad{s.pad_h, s.pad_w};
  p->src = memory::desc(src, f32, tag::nchw);
  p->dst = memory::desc(dst, f32, tag::nchw);
  p->weights = memory::desc(weights, f32, s.groups > 1 ? tag::goihw : tag::oihw);
  p->bias = memory::desc({s.out_channels}, f32, tag::x);
  const memory::desc src_any(src, f32, layout), dst_any(dst, f32, layout),
      weights_any(weights, f32, tag::any);
  const memory::desc no_bias;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto direct = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::desc fd(dnnl::prop_kind::forward_training, direct, src_any,
      weights_any, s.bias ? p->bias : no_bias, dst_any, strides, dilates, pad, pad);
  p->forward_pd = dnnl::convolution_forward::primitive_desc(fd, attr, cpu_engine());
  dnnl::convolution_backward_data::desc dd(direct, src_any, weights_any, dst_any, strides,
                                           dilates, pad, pad);
  p->data_pd = dnnl::convolution_backward_data::primitive_desc(dd, attr, cpu_engine(), p->forward_pd);
  dnnl::convolution_backward_weights::desc wd(direct, src_any, weights_any,
      s.bias ? p->bias : no_bias, dst_any, strides, dilates, pad, pad);
  p->weights_pd = dnnl::convolution_backward_weights::primitive_desc(wd, attr, cpu_engine(),
                                                                      p->forward_pd);
  p->gemm = false;
  for (const char* impl : {p->forward_pd.impl_info_str(), p->data_pd.impl_info_str(),
                           p->weights_pd.impl_info_str()}) {
    p->gemm = p->gemm || std::strstr(impl, "gemm") != NULL;
  }
  p->forward = dnnl::convolution_forward(p->forward_pd);
  p->data = dnnl::convolution_backward_data(p->data_pd);
  p->weights_grad = dnnl::convolution_backward_weights(p->weights_pd);
  return p;
}

// The primitives for a shape, or NULL where oneDNN does not take it.
const Primitives* primitives_for(const MtdnetConvShape& s, int threads) {
  static std::mutex lock;
  static std::map<Key, std::unique_ptr<Primitives> > made;
  std::lock_guard<std::mutex> hold(lock);
  const Key key = key_of(s, threads);
  auto it = made.find(key);
  if (it != made.end()) return it->second.get();
  // A net's shapes are few; a process reshaping endlessly starts over.
  if (made.size() >= 256) made.clear();
  std::unique_ptr<Primitives> p;
  try {
    // oneDNN's blocked layouts hold 16 channels side by side; a grouped convolution
    // whose groups do not fall on those blocks (MTDnet's scratch conv2: 12 input
    // channels a group) gets oneDNN's GEMM path there, 2-3x slower than its direct
    // kernels on channels-last (nhwc) activations.
    p = make_primitives(s, tag::any);
    if (p->gemm) {
      std::unique_ptr<Primitives> nhwc = make_primitives(s, tag::nhwc);
      if (!nhwc->gemm) p = std::move(nhwc);
    }
  } catch (const dnnl::error&) {
    p.reset();
  }
  return (made[key] = std::move(p)).get();
}

// One call's temporaries: carved from a grow-only buffer once their total is known.
class Temporaries {
 public:
  // Reserves room for a memory of `desc`; returns its slot.
  int add(const memory::desc& desc) {
    sizes_[count_] = (desc.get_size() + 63) / 64 * 64;
    descs_[count_] = desc;
    return count_++;
  }
  // Allocates every slot; after this memory(slot) is valid until the next call.
  void allocate() {
    size_t total = 0;
    for (int i = 0; i < count_; ++i) total += sizes_[i];
    static thread_local std::unique_ptr<char, void (*)(void*)> buffer(nullptr, std::free);
    static thread_local size_t capacity = 0;
    if (capacity < total) {
      buffer.reset();
      buffer.reset(static_cast<char*>(std::aligned_alloc(64, total)));
      if (!buffer) throw std::bad_alloc();
      capacity = total;
    }
    char* at = buffer.get();
    for (int i = 0; i < count_; ++i) {
      mems_[i] = memory(descs_[i], cpu_engine(), at);
      at += sizes_[i];
    }
  }
  memory& operator[](int slot) { return mems_[slot]; }

 private:
  int count_ = 0;
  size_t sizes_[8];
  memory::desc descs_[8];
  memory mems_[8];
};

dnnl::stream& cpu_stream() {
  static thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

// Wraps Caffe's array as a oneDNN memory in Caffe's layout.
memory user(const memory::desc& desc, const float* data) {
  return memory(desc, cpu_engine(), const_cast<float*>(data));
}

void reorder(const memory& from, const memory& to) {
  dnnl::reorder(from, to).execute(cpu_stream(), const_cast<memory&>(from), const_cast<memory&>(to));
}

// Caffe's array in oneDNN's layout: the array itself when slot < 0 (the
// layouts agree), else slot `slot` of t filled by a reorder.
memory in_layout(const memory& caffe, Temporaries& t, int slot) {
  if (slot < 0) return caffe;
  reorder(caffe, t[slot]);
  return t[slot];
}
// Where oneDNN writes an output: Caffe's array itself when slot < 0, else slot
// `slot` of t, which from_layout then reorders into Caffe's array.
memory out_layout(const memory& caffe, Temporaries& t, int slot) {
  return slot < 0 ? caffe : t[slot];
}
void from_layout(const memory& out, const memory& caffe, int slot) {
  if (slot >= 0) reorder(out, caffe);
}
int slot_if_differs(const memory::desc& caffe, const memory::desc& want, Temporaries& t) {
  return caffe == want ? -1 : t.add(want);
}

void add_into(float* to, const float* from, size_t n, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (n > 32768)
  for (size_t i = 0; i < n; ++i) to[i] += from[i];
}

// The primitives for this call, or NULL when the im2col path is to run it.
const Primitives* engaged(const MtdnetConvShape& s) {
  if (!mtdnet_dnnl_on()) return NULL;
  const int threads = mtdnet_cpu_threads();
  omp_set_num_threads(threads);  // oneDNN runs on OpenMP's default team
  return primitives_for(s, threads);
}

}  // namespace

bool mtdnet_dnnl_on() { return mtdnet_switch(&dnnl_path, "MTDNET_CAFFE_DNNL"); }

bool mtdnet_dnnl_forward(const MtdnetConvShape& s, const float* x, const float* w,
                         const float* b, float* y) {
  const Primitives* p = engaged(s);
  if (!p) return false;
  const dnnl::convolution_forward::primitive_desc& pd = p->forward_pd;
  Temporaries t;
  const int src_slot = slot_if_differs(p->src, pd.src_desc(), t);
  const int w_slot = slot_if_differs(p->weights, pd.weights_desc(), t);
  const int dst_slot = slot_if_differs(p->dst, pd.dst_desc(), t);
  const int pad_slot = t.add(pd.scratchpad_desc());
  t.allocate();
  const memory src = in_layout(user(p->src, x), t, src_slot);
  const memory weights = in_layout(user(p->weights, w), t, w_slot);
  const memory top = user(p->dst, y);
  const memory dst = out_layout(top, t, dst_slot);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights},
      {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, t[pad_slot]}};
  if (s.bias) args[DNNL_ARG_BIAS] = user(p->bias, b);
  p->forward.execute(cpu_stream(), args);
  from_layout(dst, top, dst_slot);
  cpu_stream().wait();
  dnnl_calls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool mtdnet_dnnl_backward(const MtdnetConvShape& s, const float* x, const float* w,
                          const float* dy, float* dw, float* db, float* dx) {
  const Primitives* p = engaged(s);
  if (!p) return false;
  const int threads = mtdnet_cpu_threads();
  const memory top_diff = user(p->dst, dy);
  if (dw) {
    const dnnl::convolution_backward_weights::primitive_desc& pd = p->weights_pd;
    Temporaries t;
    const int src_slot = slot_if_differs(p->src, pd.src_desc(), t);
    const int dy_slot = slot_if_differs(p->dst, pd.diff_dst_desc(), t);
    const int dw_slot = t.add(pd.diff_weights_desc());
    // Caffe adds gradients into the diffs: oneDNN's go to buffers first.
    const int dw_caffe_slot = pd.diff_weights_desc() == p->weights ? dw_slot : t.add(p->weights);
    const int db_slot = db ? t.add(p->bias) : -1;
    const int pad_slot = t.add(pd.scratchpad_desc());
    t.allocate();
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, in_layout(user(p->src, x), t, src_slot)},
        {DNNL_ARG_DIFF_DST, in_layout(top_diff, t, dy_slot)},
        {DNNL_ARG_DIFF_WEIGHTS, t[dw_slot]}, {DNNL_ARG_SCRATCHPAD, t[pad_slot]}};
    if (s.bias) args[DNNL_ARG_DIFF_BIAS] = db ? t[db_slot] : memory(p->bias, cpu_engine());
    p->weights_grad.execute(cpu_stream(), args);
    if (dw_caffe_slot != dw_slot) reorder(t[dw_slot], t[dw_caffe_slot]);
    cpu_stream().wait();
    add_into(dw, static_cast<const float*>(t[dw_caffe_slot].get_data_handle()),
             p->weights.get_size() / sizeof(float), threads);
    if (db) add_into(db, static_cast<const float*>(t[db_slot].get_data_handle()),
                     s.out_channels, 1);
  } else if (db) {
    // Weights frozen, bias learnt: the bias gradient alone, per image as stock.
    const size_t plane = static_cast<size_t>(s.out_h) * s.out_w;
    for (int n = 0; n < s.num; ++n) {
      for (int m = 0; m < s.out_channels; ++m) {
        const float* from = dy + (static_cast<size_t>(n) * s.out_channels + m) * plane;
        float sum = 0;
        for (size_t i = 0; i < plane; ++i) sum += from[i];
        db[m] += sum;
      }
    }
  }
  if (dx) {
    const dnnl::convolution_backward_data::primitive_desc& pd = p->data_pd;
    Temporaries t;
    const int dy_slot = slot_if_differs(p->dst, pd.diff_dst_desc(), t);
    const int w_slot = slot_if_differs(p->weights, pd.weights_desc(), t);
    const int dx_slot = slot_if_differs(p->src, pd.diff_src_desc(), t);
    const int pad_slot = t.add(pd.scratchpad_desc());
    t.allocate();
    const memory bottom_diff = user(p->src, dx);
    const memory diff_src = out_layout(bottom_diff, t, dx_slot);
    p->data.execute(cpu_stream(), {
        {DNNL_ARG_DIFF_DST, in_layout(top_diff, t, dy_slot)},
        {DNNL_ARG_WEIGHTS, in_layout(user(p->weights, w), t, w_slot)},
        {DNNL_ARG_DIFF_SRC, diff_src}, {DNNL_ARG_SCRATCHPAD, t[pad_slot]}});
    from_layout(diff_src, bottom_diff, dx_slot);
    cpu_stream().wait();
  }
  dnnl_calls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace caffe

// For ctypes (the tests): whether convolutions go to oneDNN, how many did,
// and the switch.
extern "C" int mtdnet_caffe_dnnl() { return caffe::mtdnet_dnnl_on() ? 1 : 0; }
extern "C" long mtdnet_caffe_dnnl_calls() { return caffe::dnnl_calls.load(); }
extern "C" void mtdnet_caffe_set_dnnl(int on) { caffe::dnnl_path.store(on ? 1 : 0); }
