// A 2-D convolution ('f'orward) and its two gradients (w.r.t. the input: 'd'ata, w.r.t. the kernel: 'w'eights)
// through oneDNN, as XLA FFI custom calls for JAX's CPU backend. Activations are NHWC float32 and kernels HWIO
// float32, JAX's own layouts; oneDNN picks its weight layout (reordered here) and computes on NHWC activations in place.
// Built and loaded by hrnet_jax/kernels/onednn.py; see there for why.
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

// The engine, the per-thread streams and the primitive cache are never destroyed: XLA's worker threads can
// outlive static destructors at process exit, and a stream or primitive released after its engine crashes.
dnnl::engine& Engine() {
  static dnnl::engine* eng = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *eng;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream* s = new dnnl::stream(Engine());
  return *s;
}

struct Geometry {
  int64_t n, h, w, c, o, kh, kw, oh, ow, stride, pad;
  std::string Key(char kind, int threads) const {
    std::string k(1, kind);
    k += "," + std::to_string(threads);
    for (int64_t v : {n, h, w, c, o, kh, kw, oh, ow, stride, pad}) k += "," + std::to_string(v);
    return k;
  }
  memory::desc Src() const { return memory::desc({n, c, h, w}, dt::f32, tag::nhwc); }
  memory::desc Dst() const { return memory::desc({n, o, oh, ow}, dt::f32, tag::nhwc); }
  memory::desc WeiUser() const { return memory::desc({o, c, kh, kw}, dt::f32, tag::hwio); }
  memory::desc WeiAny() const { return memory::desc({o, c, kh, kw}, dt::f32, tag::any); }
  memory::dims Strides() const { return {stride, stride}; }
  memory::dims Pads() const { return {pad, pad}; }
};

// A user-managed scratchpad makes a cached primitive safe to run from several XLA threads at once.
dnnl::primitive_attr Attr() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc FwdPd(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, g.Src(), g.WeiAny(),
      g.Dst(), g.Strides(), g.Pads(), g.Pads(), Attr());
}

// One cached set of primitives per convolution geometry, direction and OpenMP team size (oneDNN's kernels
// are chosen and blocked for the number of threads they will run on).
struct Entry {
  dnnl::primitive conv;
  memory::desc wei_md;          // the kernel layout the conv primitive wants
  memory::desc scratch_md;
  bool reorder_wei = false;     // user HWIO <-> wei_md differ
  dnnl::reorder wei_reorder;    // HWIO -> wei_md (forward, bwd-data) or wei_md -> HWIO (bwd-weights)
};

std::mutex& CacheMutex() {
  static auto* mu = new std::mutex();
  return *mu;
}
std::unordered_map<std::string, Entry>& Cache() {
  static auto* cache = new std::unordered_map<std::string, Entry>();
  return *cache;
}

Entry& Get(const Geometry& g, char kind, int threads) {
  std::string key = g.Key(kind, threads);
  std::lock_guard<std::mutex> lock(CacheMutex());
  auto it = Cache().find(key);
  if (it != Cache().end()) return it->second;
  Entry e;
  auto fwd = FwdPd(g);
  if (kind == 'f') {
    e.conv = dnnl::convolution_forward(fwd);
    e.wei_md = fwd.weights_desc();
    e.scratch_md = fwd.scratchpad_desc();
  } else if (kind == 'd') {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.WeiAny(), g.Dst(), g.Strides(), g.Pads(),
        g.Pads(), fwd, Attr());
    e.conv = dnnl::convolution_backward_data(pd);
    e.wei_md = pd.weights_desc();
    e.scratch_md = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.Src(), g.WeiAny(), g.Dst(), g.Strides(), g.Pads(),
        g.Pads(), fwd, Attr());
    e.conv = dnnl::convolution_backward_weights(pd);
    e.wei_md = pd.diff_weights_desc();
    e.scratch_md = pd.scratchpad_desc();
  }
  e.reorder_wei = e.wei_md != g.WeiUser();
  if (e.reorder_wei) {
    memory::desc from = kind == 'w' ? e.wei_md : g.WeiUser();
    memory::desc to = kind == 'w' ? g.WeiUser() : e.wei_md;
    e.wei_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), from, Engine(), to));  // no scratchpad
  }
  return Cache().emplace(key, std::move(e)).first->second;
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k, ffi::Span<const int64_t> y,
                      int64_t stride, int64_t pad) {
  return Geometry{x[0], x[1], x[2], x[3], k[3], k[0], k[1], y[1], y[2], stride, pad};
}

ffi::Error Run(char kind, const Geometry& g, float* src, float* wei, float* dst, int64_t threads) {
  // OpenMP threads of this (XLA worker) thread's conv; 0 = one per core. omp_set_num_threads only sets this
  // calling thread's team size, so every call sets the size it wants.
  int team = threads > 0 ? static_cast<int>(threads) : omp_get_num_procs();
  if (omp_get_max_threads() != team) omp_set_num_threads(team);
  try {
    Entry& e = Get(g, kind, team);
    auto& s = Stream();
    memory src_m(g.Src(), Engine(), src), dst_m(g.Dst(), Engine(), dst);
    memory user_wei(g.WeiUser(), Engine(), wei);
    memory wei_m = e.reorder_wei ? memory(e.wei_md, Engine()) : user_wei;
    memory scratch(e.scratch_md, Engine());
    if (kind != 'w' && e.reorder_wei) e.wei_reorder.execute(s, user_wei, wei_m);  // the kernel is an input
    if (kind == 'f') {
      e.conv.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == 'd') {
      e.conv.execute(s, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      e.conv.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, wei_m}, {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
      if (e.reorder_wei) e.wei_reorder.execute(s, wei_m, user_wei);
    }
    s.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + err.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> y,
                       int64_t stride, int64_t pad, int64_t threads) {
  auto g = MakeGeometry(x.dimensions(), k.dimensions(), y->dimensions(), stride, pad);
  return Run('f', g, x.typed_data(), k.typed_data(), y->typed_data(), threads);
}

ffi::Error ConvBackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k, ffi::ResultBuffer<ffi::F32> dx,
                            int64_t stride, int64_t pad, int64_t threads) {
  auto g = MakeGeometry(dx->dimensions(), k.dimensions(), dy.dimensions(), stride, pad);
  return Run('d', g, dx->typed_data(), k.typed_data(), dy.typed_data(), threads);
}

ffi::Error ConvBackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dk,
                               int64_t stride, int64_t pad, int64_t threads) {
  auto g = MakeGeometry(x.dimensions(), dk->dimensions(), dy.dimensions(), stride, pad);
  return Run('w', g, x.typed_data(), dk->typed_data(), dy.typed_data(), threads);
}

}  // namespace

#define HRNET_BIND(A, B, R) \
  ffi::Ffi::Bind().Arg<A>().Arg<B>().Ret<R>().Attr<int64_t>("stride").Attr<int64_t>("pad").Attr<int64_t>("threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(HrnetOnednnConvForward, ConvForward,
                              HRNET_BIND(ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(HrnetOnednnConvBackwardData, ConvBackwardData,
                              HRNET_BIND(ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>));
XLA_FFI_DEFINE_HANDLER_SYMBOL(HrnetOnednnConvBackwardWeights, ConvBackwardWeights,
                              HRNET_BIND(ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>));
