// Frozen-tower kernels on CPU through oneDNN, as XLA FFI custom calls: a whole pre-LN encoder block
// (SmartvlmDnnlEncoderBlock), and the linear layers and self-attention it is made of on their own.
//
// On AMX machines XLA:CPU runs the towers' bfloat16 GEMMs at ~1,300 GFLOP/s where oneDNN's brgemm kernels
// reach ~2,000 with weights in oneDNN's blocked ("packed") layout, and XLA's attention (score dot, exp,
// PV dot and the transposes around them) takes ~4x what oneDNN's batched matmuls and softmax take. The
// towers are frozen, so each kernel is packed once, outside jit (smartvlm_dnnl_pack), and every call
// multiplies by the packed copy: y = act(x @ W + b), accumulation in float32.
//
// Built on first use by smartvlm_jax/towers/backends/onednn.py against jaxlib's FFI headers and the
// onednn wheels.

#include <sys/mman.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

// The packed layout is chosen for this many rows; calls with other row counts reuse it (oneDNN's
// brgemm kernels take the same blocked weights for any M).
constexpr int64_t kPackRows = 1024;

// Activations fused into the GEMM as an oneDNN post-op; numbering shared with onednn.py.
enum Activation : int64_t { kNone = 0, kGeluErf = 1, kGeluTanh = 2 };

// Bytes rounded up to whole cache lines: AMX tile loads from buffers that are not 64-byte aligned ran
// the block's GEMMs ~10 % slower.
size_t Aligned(size_t bytes) { return (bytes + 63) / 64 * 64; }

// A growing buffer for intermediates, used by the executor thread only (one per call site), so calls
// reuse warm memory. 2 MiB-aligned and offered to transparent huge pages (fewer TLB misses).
class Scratch {
 public:
  char* Get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + kHuge - 1) / kHuge * kHuge;
      data_ = static_cast<char*>(std::aligned_alloc(kHuge, size_));
      if (data_ == nullptr) throw std::bad_alloc();
      madvise(data_, size_, MADV_HUGEPAGE);  // advice only: ignored where THP is off
    }
    return data_;
  }

 private:
  static constexpr size_t kHuge = 2 << 20;
  char* data_ = nullptr;
  size_t size_ = 0;
};

// Runs every oneDNN call on one long-lived thread. XLA invokes a custom call from whichever of its worker
// threads is free, and each new calling thread gets its own OpenMP team: the idle teams' spinning threads
// then steal the cores from the busy one (measured: the towers' GEMMs ~25 % slower). One thread, one
// team; concurrent calls (independent branches of one program) take turns instead of oversubscribing.
// A process forked after the first call has no executor thread: its children must not run the kernels
// (the data workers, the only forked processes here, never do).
class Executor {
 public:
  static Executor& Get() {
    static Executor* executor = new Executor();  // never destroyed: its thread runs until exit
    return *executor;
  }

  void Run(const std::function<void()>& task) {
    std::lock_guard<std::mutex> one_at_a_time(call_mutex_);
    std::unique_lock<std::mutex> lock(mutex_);
    task_ = &task;
    wake_.notify_one();
    done_.wait(lock, [this] { return task_ == nullptr; });
  }

 private:
  Executor() { std::thread([this] { Loop(); }).detach(); }

  void Loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return task_ != nullptr; });
      lock.unlock();
      (*task_)();
      lock.lock();
      task_ = nullptr;
      done_.notify_one();
    }
  }

  std::mutex call_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void()>* task_ = nullptr;
};

// Bad arguments found while running (shapes that only the executor sees); reported as InvalidArgument.
struct BadArgument : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs `body` on the executor; a BadArgument becomes InvalidArgument, any other error (oneDNN's)
// Internal "<what>: <message>".
ffi::Error RunDnnl(const char* what, const std::function<void()>& body) {
  std::string failure;
  bool bad_argument = false;
  Executor::Get().Run([&] {
    try {
      body();
    } catch (const BadArgument& e) {
      failure = e.what(), bad_argument = true;
    } catch (const std::exception& e) {
      failure = std::string(what) + ": " + e.what();
    } catch (...) {  // nothing may escape into the executor thread
      failure = std::string(what) + ": unknown error";
    }
  });
  if (failure.empty()) return ffi::Error::Success();
  return bad_argument ? ffi::Error::InvalidArgument(failure) : ffi::Error::Internal(failure);
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::data_type WeightType(int code) {
  return code == 1 ? memory::data_type::bf16 : memory::data_type::f32;
}

memory::desc PlainWeights(int64_t k, int64_t n, memory::data_type type) {
  return memory::desc({k, n}, type, memory::format_tag::ab);
}

// The blocked layout oneDNN's matmul prefers for a [k, n] kernel of `type` (asked once per shape).
memory::desc PackedWeights(int64_t k, int64_t n, memory::data_type type) {
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int>, memory::desc> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_tuple(k, n, static_cast<int>(type));
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  memory::desc src({kPackRows, k}, type, memory::format_tag::ab);
  memory::desc weights({k, n}, type, memory::format_tag::any);
  memory::desc dst({kPackRows, n}, memory::data_type::f32, memory::format_tag::ab);
  memory::desc packed = dnnl::matmul::primitive_desc(Engine(), src, weights, dst).weights_desc();
  return cache.emplace(key, packed).first->second;
}

using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int64_t>;  // m, k, n, src, dst, act

// One primitive per shape: creating it JIT-generates the kernels, which must not happen per call.
dnnl::matmul& Primitive(int64_t m, int64_t k, int64_t n, memory::data_type src_type,
                        memory::data_type dst_type, int64_t act) {
  static std::mutex mutex;
  static std::map<Key, dnnl::matmul> cache;
  std::lock_guard<std::mutex> lock(mutex);
  Key key{m, k, n, static_cast<int>(src_type), static_cast<int>(dst_type), act};
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  dnnl::primitive_attr attr;
  if (act != kNone) {
    dnnl::post_ops ops;
    ops.append_eltwise(act == kGeluErf ? dnnl::algorithm::eltwise_gelu_erf
                                       : dnnl::algorithm::eltwise_gelu_tanh,
                       0.f, 0.f);
    attr.set_post_ops(ops);
  }
  memory::desc src({m, k}, src_type, memory::format_tag::ab);
  memory::desc bias({1, n}, memory::data_type::f32, memory::format_tag::ab);
  memory::desc dst({m, n}, dst_type, memory::format_tag::ab);
  dnnl::matmul::primitive_desc pd(Engine(), src, PackedWeights(k, n, src_type), bias, dst, attr);
  return cache.emplace(key, dnnl::matmul(pd)).first->second;
}

memory::data_type DnnlType(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F32:
      return memory::data_type::f32;
    case ffi::DataType::BF16:
      return memory::data_type::bf16;
    default:
      return memory::data_type::undef;
  }
}

size_t Bytes(memory::data_type type) { return type == memory::data_type::bf16 ? 2 : 4; }

void CheckPacked(const ffi::AnyBuffer& packed, int64_t k, int64_t n, memory::data_type type, const char* what) {
  if (DnnlType(packed.element_type()) != type)
    throw BadArgument(std::string(what) + ": the packed kernel's dtype differs from its input's");
  const size_t want = PackedWeights(k, n, type).get_size();
  if (packed.size_bytes() != want)
    throw BadArgument(std::string(what) + ": packed kernel holds " + std::to_string(packed.size_bytes()) +
                      " bytes, a [" + std::to_string(k) + ", " + std::to_string(n) +
                      "] kernel packs into " + std::to_string(want));
}

// y[m, n] = act(x[m, k] @ W + bias), W packed.
void RunLinear(dnnl::stream& stream, int64_t m, int64_t k, int64_t n, memory::data_type src_type,
               memory::data_type dst_type, int64_t act, void* x, void* packed, float* bias, void* y) {
  dnnl::engine& engine = Engine();
  dnnl::matmul& matmul = Primitive(m, k, n, src_type, dst_type, act);
  memory src({{m, k}, src_type, memory::format_tag::ab}, engine, x);
  memory weights(PackedWeights(k, n, src_type), engine, packed);
  memory bias_mem({{1, n}, memory::data_type::f32, memory::format_tag::ab}, engine, bias);
  memory dst({{m, n}, dst_type, memory::format_tag::ab}, engine, y);
  matmul.execute(stream, {{DNNL_ARG_SRC, src},
                          {DNNL_ARG_WEIGHTS, weights},
                          {DNNL_ARG_BIAS, bias_mem},
                          {DNNL_ARG_DST, dst}});
}

ffi::Error Linear(ffi::AnyBuffer x, ffi::AnyBuffer packed, ffi::Buffer<ffi::F32> bias,
                  ffi::Result<ffi::AnyBuffer> y, int64_t act) {
  auto dims = x.dimensions();
  if (dims.size() < 1) return ffi::Error::InvalidArgument("onednn linear: x must have rank >= 1");
  const int64_t k = dims.back();
  const int64_t m = k == 0 ? 0 : static_cast<int64_t>(x.element_count()) / k;
  const int64_t n = bias.dimensions().back();
  const memory::data_type src_type = DnnlType(x.element_type());
  const memory::data_type dst_type = DnnlType(y->element_type());
  if (src_type == memory::data_type::undef || dst_type == memory::data_type::undef)
    return ffi::Error::InvalidArgument("onednn linear: x and y must be float32 or bfloat16");
  if (act < kNone || act > kGeluTanh)
    return ffi::Error::InvalidArgument("onednn linear: unknown activation " + std::to_string(act));
  if (static_cast<int64_t>(y->element_count()) != m * n)
    return ffi::Error::InvalidArgument("onednn linear: y must hold rows(x) * n elements");
  return RunDnnl("onednn linear", [&] {
    CheckPacked(packed, k, n, src_type, "onednn linear");
    if (m == 0) return;
    dnnl::stream stream(Engine());
    RunLinear(stream, m, k, n, src_type, dst_type, act, x.untyped_data(), packed.untyped_data(),
              bias.typed_data(), y->untyped_data());
    stream.wait();
  });
}

// LayerNorm over the last axis of float32 x[m, d] (biased variance), written in `dst_type`.
void RunLayerNorm(dnnl::stream& stream, int64_t m, int64_t d, memory::data_type dst_type, float eps,
                  float* x, float* scale, float* shift, void* y) {
  using Ln = dnnl::layer_normalization_forward;
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int, float>, Ln> cache;
  dnnl::engine& engine = Engine();
  memory::desc src({m, d}, memory::data_type::f32, memory::format_tag::ab);
  memory::desc dst({m, d}, dst_type, memory::format_tag::ab);
  Ln* ln;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto key = std::make_tuple(m, d, static_cast<int>(dst_type), eps);
    auto found = cache.find(key);
    if (found == cache.end()) {
      Ln::primitive_desc pd(engine, dnnl::prop_kind::forward_inference, src, dst, eps,
                            dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift);
      found = cache.emplace(key, Ln(pd)).first;
    }
    ln = &found->second;
  }
  memory::desc channels({d}, memory::data_type::f32, memory::format_tag::a);
  ln->execute(stream, {{DNNL_ARG_SRC, memory(src, engine, x)},
                       {DNNL_ARG_DST, memory(dst, engine, y)},
                       {DNNL_ARG_SCALE, memory(channels, engine, scale)},
                       {DNNL_ARG_SHIFT, memory(channels, engine, shift)}});
}

// Self-attention from the fused projection's output, where q, k, v of head h at token t of image i are
// qkv[i, t, 0 | 1 | 2, h, :]. q, k, v are copied head-major ([B * H, T, Dh], so the batched matmuls get
// dense operands and oneDNN's AMX kernels; strided views fell back to a slower GEMM); then, a few
// (image, head) problems at a time, as many as keep their float32 scores within kScoreBytes (in cache):
// scores = scale * q k^T (float32), softmax to the compute dtype, P v; the result is copied back to
// ctx[i, t, h, :].
constexpr int64_t kScoreBytes = 2 << 20;

struct AttentionPrimitives {
  dnnl::matmul scores, context;
  dnnl::softmax_forward softmax;
  memory::desc heads, keys, s, p;  // q / v / output [H, T, Dh]; k^T [H, Dh, T] over k's storage; s; p
};

// (image-heads, tokens, head dim, dtype, scale)
using AttentionKey = std::tuple<int64_t, int64_t, int64_t, int, float>;

// Primitives for h (images x heads) attention problems of t tokens.
AttentionPrimitives& Attention(int64_t h, int64_t t, int64_t dh, memory::data_type type, float scale) {
  static std::mutex mutex;
  static std::map<AttentionKey, AttentionPrimitives> cache;
  std::lock_guard<std::mutex> lock(mutex);
  AttentionKey key{h, t, dh, static_cast<int>(type), scale};
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  memory::desc heads({h, t, dh}, type, memory::format_tag::abc);
  memory::desc keys({h, dh, t}, type, memory::format_tag::acb);  // k [H, T, Dh] read as k^T
  memory::desc s({h, t, t}, memory::data_type::f32, memory::format_tag::abc);
  memory::desc p({h, t, t}, type, memory::format_tag::abc);
  dnnl::primitive_attr scaled;
  dnnl::post_ops ops;
  ops.append_eltwise(dnnl::algorithm::eltwise_linear, scale, 0.f);
  scaled.set_post_ops(ops);
  dnnl::engine& engine = Engine();
  AttentionPrimitives prims{
      dnnl::matmul(dnnl::matmul::primitive_desc(engine, heads, keys, s, scaled)),
      dnnl::matmul(dnnl::matmul::primitive_desc(engine, p, heads, heads)),
      dnnl::softmax_forward(dnnl::softmax_forward::primitive_desc(
          engine, dnnl::prop_kind::forward_inference, dnnl::algorithm::softmax_accurate, s, p, 2)),
      heads, keys, s, p};
  return cache.emplace(key, std::move(prims)).first->second;
}

// Copies n images' [T, H, Dh] rows (token stride `stride` elements) to [n, H, T, Dh], or back with
// `to_heads` false.
void CopyHeads(char* tokens, char* heads, int64_t n, int64_t t, int64_t h, int64_t dh, int64_t stride,
               size_t elem, bool to_heads) {
  const size_t row = dh * elem;
#pragma omp parallel for collapse(3) schedule(static)
  for (int64_t image = 0; image < n; ++image) {
    for (int64_t head = 0; head < h; ++head) {
      for (int64_t token = 0; token < t; ++token) {
        char* a = tokens + ((image * t + token) * stride + head * dh) * elem;
        char* b = heads + ((image * h + head) * t + token) * row;
        if (to_heads)
          std::memcpy(b, a, row);
        else
          std::memcpy(a, b, row);
      }
    }
  }
}

// ctx[b, t, heads * dh] = attention of qkv[b, t, 3 * heads * dh], both of `type`.
void RunAttention(dnnl::stream& stream, int64_t b, int64_t t, int64_t heads, int64_t dh,
                  memory::data_type type, float scale, char* qkv, char* ctx) {
  const int64_t d = heads * dh, problems = b * heads;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(problems, kScoreBytes / (t * t * 4)));
  const size_t elem = Bytes(type), head_bytes = Aligned(problems * t * dh * elem);
  static Scratch scratch;  // q, k, v and output of all problems, then one chunk's scores and probabilities
  AttentionPrimitives& full = Attention(chunk, t, dh, type, scale);
  const size_t s_bytes = Aligned(full.s.get_size());
  char* base = scratch.Get(4 * head_bytes + s_bytes + full.p.get_size());
  char* q = base;
  char* k = base + head_bytes;
  char* v = base + 2 * head_bytes;
  char* out = base + 3 * head_bytes;
  CopyHeads(qkv, q, b, t, heads, dh, 3 * d, elem, true);
  CopyHeads(qkv + d * elem, k, b, t, heads, dh, 3 * d, elem, true);
  CopyHeads(qkv + 2 * d * elem, v, b, t, heads, dh, 3 * d, elem, true);
  dnnl::engine& engine = Engine();
  for (int64_t i = 0; i < problems; i += chunk) {
    const int64_t n = std::min(chunk, problems - i);
    AttentionPrimitives& prims = n == chunk ? full : Attention(n, t, dh, type, scale);
    const size_t offset = i * t * dh * elem;
    memory s(prims.s, engine, base + 4 * head_bytes), p(prims.p, engine, base + 4 * head_bytes + s_bytes);
    memory q_mem(prims.heads, engine, q + offset), k_mem(prims.keys, engine, k + offset);
    memory v_mem(prims.heads, engine, v + offset), out_mem(prims.heads, engine, out + offset);
    prims.scores.execute(stream, {{DNNL_ARG_SRC, q_mem}, {DNNL_ARG_WEIGHTS, k_mem}, {DNNL_ARG_DST, s}});
    prims.softmax.execute(stream, {{DNNL_ARG_SRC, s}, {DNNL_ARG_DST, p}});
    prims.context.execute(stream, {{DNNL_ARG_SRC, p}, {DNNL_ARG_WEIGHTS, v_mem}, {DNNL_ARG_DST, out_mem}});
  }
  stream.wait();
  CopyHeads(ctx, out, b, t, heads, dh, d, elem, false);
}

ffi::Error SelfAttention(ffi::AnyBuffer qkv, ffi::Result<ffi::AnyBuffer> ctx, int64_t heads, float scale) {
  auto dims = qkv.dimensions();
  if (dims.size() != 3 || heads <= 0 || dims[2] % (3 * heads))
    return ffi::Error::InvalidArgument("onednn attention: qkv must be [B, T, 3 * heads * head_dim]");
  const int64_t b = dims[0], t = dims[1], dh = dims[2] / (3 * heads);
  const memory::data_type type = DnnlType(qkv.element_type());
  if (type == memory::data_type::undef || ctx->element_type() != qkv.element_type())
    return ffi::Error::InvalidArgument("onednn attention: qkv and ctx must share a float32 / bfloat16 dtype");
  if (static_cast<int64_t>(ctx->element_count()) != b * t * heads * dh)
    return ffi::Error::InvalidArgument("onednn attention: ctx must be [B, T, heads * head_dim]");
  if (b == 0 || t == 0) return ffi::Error::Success();
  return RunDnnl("onednn attention", [&] {
    dnnl::stream stream(Engine());
    RunAttention(stream, b, t, heads, dh, type, scale, static_cast<char*>(qkv.untyped_data()),
                 static_cast<char*>(ctx->untyped_data()));
  });
}

// y[m, d] = residual + scale * y (scale per channel), in place.
void AddResidual(float* y, const float* residual, const float* scale, int64_t m, int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < m; ++row) {
    float* out = y + row * d;
    const float* in = residual + row * d;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) out[c] = in[c] + scale[c] * out[c];
  }
}

// One pre-LN transformer block on the float32 residual stream x[B, T, D], in one call:
//   h = x + ls1 * (attention(ln1(x) @ Wqkv + bqkv) @ Wo + bo)
//   y = h + ls2 * (act(ln2(h) @ W1 + b1) @ W2 + b2)
// with the matmuls' inputs in the packed kernels' dtype, float32 accumulation, LayerNorm, residuals and
// layer scales in float32 (a block without layer scales passes ones: y * 1 is exact). The intermediates
// stay in buffers of the executor thread, reused from call to call.
ffi::Error EncoderBlock(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> ln1_scale, ffi::Buffer<ffi::F32> ln1_shift,
                        ffi::AnyBuffer qkv_w, ffi::Buffer<ffi::F32> qkv_b, ffi::AnyBuffer out_w,
                        ffi::Buffer<ffi::F32> out_b, ffi::Buffer<ffi::F32> ls1, ffi::Buffer<ffi::F32> ln2_scale,
                        ffi::Buffer<ffi::F32> ln2_shift, ffi::AnyBuffer fc1_w, ffi::Buffer<ffi::F32> fc1_b,
                        ffi::AnyBuffer fc2_w, ffi::Buffer<ffi::F32> fc2_b, ffi::Buffer<ffi::F32> ls2,
                        ffi::Result<ffi::Buffer<ffi::F32>> y, int64_t heads, float eps, int64_t act,
                        float scale) {
  auto dims = x.dimensions();
  if (dims.size() != 3 || heads <= 0 || dims[2] % heads)
    return ffi::Error::InvalidArgument("onednn block: x must be [B, T, D] with D a multiple of heads");
  const int64_t b = dims[0], t = dims[1], d = dims[2], m = b * t, f = fc1_b.element_count();
  const memory::data_type type = DnnlType(qkv_w.element_type());
  if (type == memory::data_type::undef)
    return ffi::Error::InvalidArgument("onednn block: kernels must be float32 or bfloat16");
  if (act < kNone || act > kGeluTanh)
    return ffi::Error::InvalidArgument("onednn block: unknown activation " + std::to_string(act));
  for (auto* channels : {&ln1_scale, &ln1_shift, &out_b, &ls1, &ln2_scale, &ln2_shift, &fc2_b, &ls2})
    if (static_cast<int64_t>(channels->element_count()) != d)
      return ffi::Error::InvalidArgument("onednn block: norms, output biases and layer scales must be [D]");
  if (static_cast<int64_t>(qkv_b.element_count()) != 3 * d)
    return ffi::Error::InvalidArgument("onednn block: the q/k/v bias must be [3 D]");
  if (m == 0) return ffi::Error::Success();
  return RunDnnl("onednn block", [&] {
    CheckPacked(qkv_w, d, 3 * d, type, "onednn block q/k/v");
    CheckPacked(out_w, d, d, type, "onednn block output projection");
    CheckPacked(fc1_w, d, f, type, "onednn block fc1");
    CheckPacked(fc2_w, f, d, type, "onednn block fc2");
    const size_t elem = Bytes(type);
    static Scratch scratch;
    const size_t normed = Aligned(m * d * elem), qkv = Aligned(3 * m * d * elem), ctx = Aligned(m * d * elem);
    char* normed_buf = scratch.Get(normed + qkv + ctx + Aligned(m * f * elem) + m * d * 4);
    char* qkv_buf = normed_buf + normed;
    char* ctx_buf = qkv_buf + qkv;
    char* hidden_buf = ctx_buf + ctx;
    float* mid = reinterpret_cast<float*>(hidden_buf + Aligned(m * f * elem));  // h, between the halves
    dnnl::stream stream(Engine());
    RunLayerNorm(stream, m, d, type, eps, x.typed_data(), ln1_scale.typed_data(), ln1_shift.typed_data(),
                 normed_buf);
    RunLinear(stream, m, d, 3 * d, type, type, kNone, normed_buf, qkv_w.untyped_data(),
              qkv_b.typed_data(), qkv_buf);
    RunAttention(stream, b, t, heads, d / heads, type, scale, qkv_buf, ctx_buf);
    RunLinear(stream, m, d, d, type, memory::data_type::f32, kNone, ctx_buf, out_w.untyped_data(),
              out_b.typed_data(), mid);
    AddResidual(mid, x.typed_data(), ls1.typed_data(), m, d);
    RunLayerNorm(stream, m, d, type, eps, mid, ln2_scale.typed_data(), ln2_shift.typed_data(), normed_buf);
    RunLinear(stream, m, d, f, type, type, act, normed_buf, fc1_w.untyped_data(), fc1_b.typed_data(),
              hidden_buf);
    RunLinear(stream, m, f, d, type, memory::data_type::f32, kNone, hidden_buf,
              fc2_w.untyped_data(), fc2_b.typed_data(), y->typed_data());
    AddResidual(y->typed_data(), mid, ls2.typed_data(), m, d);
    stream.wait();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmartvlmDnnlAttention, SelfAttention,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("heads")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmartvlmDnnlEncoderBlock, EncoderBlock,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ln1 scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ln1 shift
                                  .Arg<ffi::AnyBuffer>()         // q/k/v packed
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q/k/v bias
                                  .Arg<ffi::AnyBuffer>()         // output projection packed
                                  .Arg<ffi::Buffer<ffi::F32>>()  // its bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ls1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ln2 scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ln2 shift
                                  .Arg<ffi::AnyBuffer>()         // fc1 packed
                                  .Arg<ffi::Buffer<ffi::F32>>()  // fc1 bias
                                  .Arg<ffi::AnyBuffer>()         // fc2 packed
                                  .Arg<ffi::Buffer<ffi::F32>>()  // fc2 bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ls2
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("heads")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("act")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmartvlmDnnlLinear, Linear,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("act"));

extern "C" {

// Bytes a [k, n] kernel takes once packed (dtype: 0 float32, 1 bfloat16); -1 if oneDNN refuses.
int64_t smartvlm_dnnl_packed_bytes(int64_t k, int64_t n, int dtype) {
  try {
    return static_cast<int64_t>(PackedWeights(k, n, WeightType(dtype)).get_size());
  } catch (const dnnl::error&) {
    return -1;
  }
}

// Packs the row-major [k, n] kernel at `src` into `dst` (smartvlm_dnnl_packed_bytes bytes); 0 on success.
int smartvlm_dnnl_pack(const void* src, int64_t k, int64_t n, int dtype, void* dst) {
  ffi::Error status = RunDnnl("pack", [&] {
    dnnl::engine& engine = Engine();
    memory::data_type type = WeightType(dtype);
    memory plain(PlainWeights(k, n, type), engine, const_cast<void*>(src));
    memory packed(PackedWeights(k, n, type), engine, dst);
    dnnl::stream stream(engine);
    dnnl::reorder(plain, packed).execute(stream, plain, packed);
    stream.wait();
  });
  return status.success() ? 0 : 1;
}

}  // extern "C"
