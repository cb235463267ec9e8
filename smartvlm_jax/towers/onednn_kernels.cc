// Frozen-tower kernels on CPU through oneDNN, as XLA FFI custom calls: linear layers and self-attention.
//
// XLA:CPU runs the towers' bfloat16 GEMMs at ~1,300 GFLOP/s on AMX machines where oneDNN's brgemm
// kernels reach ~2,000 with weights stored in oneDNN's blocked ("packed") layout, and its attention
// (score dot, exp, PV dot, plus the transposes around them) takes ~4x what oneDNN's batched matmuls and
// softmax take. The towers are frozen, so each kernel is packed once, outside jit (smartvlm_dnnl_pack),
// and every call multiplies by the packed copy: y = act(x @ W + b), accumulation in float32.
//
// Built on first use by smartvlm_jax/towers/onednn.py against jaxlib's FFI headers and the onednn wheels.

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

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

// Runs every oneDNN call on one long-lived thread. XLA invokes a custom call from whichever of its worker
// threads is free, and each new calling thread gets its own OpenMP team: the idle teams' spinning threads
// then steal the cores from the busy one (measured: the towers' GEMMs ~25 % slower). One thread, one
// team; concurrent calls (independent branches of one program) take turns instead of oversubscribing.
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

// Runs `body` on the executor; a oneDNN error becomes the FFI error "<what>: <message>".
ffi::Error RunDnnl(const char* what, const std::function<void()>& body) {
  std::string failure;
  Executor::Get().Run([&] {
    try {
      body();
    } catch (const dnnl::error& e) {
      failure = e.what();
    }
  });
  if (failure.empty()) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(what) + ": " + failure);
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

struct KeyHash {
  size_t operator()(const Key& key) const {
    size_t h = 0;
    auto mix = [&h](int64_t v) { h = h * 1000003u ^ std::hash<int64_t>()(v); };
    mix(std::get<0>(key)), mix(std::get<1>(key)), mix(std::get<2>(key));
    mix(std::get<3>(key)), mix(std::get<4>(key)), mix(std::get<5>(key));
    return h;
  }
};

// One primitive per shape: creating it JIT-generates the kernels, which must not happen per call.
dnnl::matmul& Primitive(int64_t m, int64_t k, int64_t n, memory::data_type src_type,
                        memory::data_type dst_type, int64_t act) {
  static std::mutex mutex;
  static std::unordered_map<Key, dnnl::matmul, KeyHash> cache;
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
  if (x.element_type() != packed.element_type())
    return ffi::Error::InvalidArgument("onednn linear: x and the packed kernel differ in dtype");
  if (act < kNone || act > kGeluTanh)
    return ffi::Error::InvalidArgument("onednn linear: unknown activation " + std::to_string(act));
  const size_t want = PackedWeights(k, n, src_type).get_size();
  if (packed.size_bytes() != want)
    return ffi::Error::InvalidArgument("onednn linear: packed kernel holds " +
                                       std::to_string(packed.size_bytes()) + " bytes, a [" +
                                       std::to_string(k) + ", " + std::to_string(n) +
                                       "] kernel packs into " + std::to_string(want));
  if (static_cast<int64_t>(y->element_count()) != m * n)
    return ffi::Error::InvalidArgument("onednn linear: y must hold rows(x) * n elements");
  if (m == 0) return ffi::Error::Success();
  return RunDnnl("onednn linear", [&] {
    dnnl::matmul& matmul = Primitive(m, k, n, src_type, dst_type, act);
    dnnl::engine& engine = Engine();
    memory src({{m, k}, src_type, memory::format_tag::ab}, engine, x.untyped_data());
    memory weights(PackedWeights(k, n, src_type), engine, packed.untyped_data());
    memory bias_mem({{1, n}, memory::data_type::f32, memory::format_tag::ab}, engine,
                    bias.typed_data());
    memory dst({{m, n}, dst_type, memory::format_tag::ab}, engine, y->untyped_data());
    dnnl::stream stream(engine);
    matmul.execute(stream, {{DNNL_ARG_SRC, src},
                            {DNNL_ARG_WEIGHTS, weights},
                            {DNNL_ARG_BIAS, bias_mem},
                            {DNNL_ARG_DST, dst}});
    stream.wait();
  });
}

// Self-attention from the fused projection's output, where q, k, v of head h at token t of image i are
// qkv[i, t, 0 | 1 | 2, h, :]. A few images at a time (as many as keep their float32 scores within
// kScoreBytes, in cache): q, k, v copied head-major ([n * H, T, Dh], so the batched matmuls get dense
// operands and oneDNN's AMX kernels; strided views fell back to a slower GEMM), scores (float32) =
// scale * q k^T, softmax to the compute dtype, P v, copied back to ctx[i, t, h, :].
constexpr int64_t kScoreBytes = 4 << 20;

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

ffi::Error SelfAttention(ffi::AnyBuffer qkv, ffi::Result<ffi::AnyBuffer> ctx, int64_t heads, float scale) {
  auto dims = qkv.dimensions();
  if (dims.size() != 3 || heads <= 0 || dims[2] % (3 * heads))
    return ffi::Error::InvalidArgument("onednn attention: qkv must be [B, T, 3 * heads * head_dim]");
  const int64_t b = dims[0], t = dims[1], dh = dims[2] / (3 * heads), d = heads * dh;
  const memory::data_type type = DnnlType(qkv.element_type());
  if (type == memory::data_type::undef || ctx->element_type() != qkv.element_type())
    return ffi::Error::InvalidArgument("onednn attention: qkv and ctx must share a float32 / bfloat16 dtype");
  if (static_cast<int64_t>(ctx->element_count()) != b * t * d)
    return ffi::Error::InvalidArgument("onednn attention: ctx must be [B, T, heads * head_dim]");
  if (b == 0 || t == 0) return ffi::Error::Success();
  return RunDnnl("onednn attention", [&] {
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(b, kScoreBytes / (heads * t * t * 4)));
    const size_t elem = type == memory::data_type::bf16 ? 2 : 4;
    dnnl::engine& engine = Engine();
    dnnl::stream stream(engine);
    char* in = static_cast<char*>(qkv.untyped_data());
    char* dst = static_cast<char*>(ctx->untyped_data());
    // q, k, v, output, scores and probabilities of one chunk, kept per thread: no page faults per call
    thread_local std::vector<char> scratch;
    for (int64_t i = 0; i < b; i += chunk) {
      const int64_t n = std::min(chunk, b - i);
      AttentionPrimitives& prims = Attention(n * heads, t, dh, type, scale);
      const size_t head_bytes = prims.heads.get_size(), s_bytes = prims.s.get_size();
      if (scratch.size() < 4 * head_bytes + s_bytes + prims.p.get_size())
        scratch.resize(4 * head_bytes + s_bytes + prims.p.get_size());
      char* base = scratch.data();
      memory q(prims.heads, engine, base), k(prims.keys, engine, base + head_bytes);
      memory v(prims.heads, engine, base + 2 * head_bytes), out(prims.heads, engine, base + 3 * head_bytes);
      memory s(prims.s, engine, base + 4 * head_bytes), p(prims.p, engine, base + 4 * head_bytes + s_bytes);
      char* images = in + i * t * 3 * d * elem;
      CopyHeads(images, base, n, t, heads, dh, 3 * d, elem, true);
      CopyHeads(images + d * elem, base + head_bytes, n, t, heads, dh, 3 * d, elem, true);
      CopyHeads(images + 2 * d * elem, base + 2 * head_bytes, n, t, heads, dh, 3 * d, elem, true);
      prims.scores.execute(stream, {{DNNL_ARG_SRC, q}, {DNNL_ARG_WEIGHTS, k}, {DNNL_ARG_DST, s}});
      prims.softmax.execute(stream, {{DNNL_ARG_SRC, s}, {DNNL_ARG_DST, p}});
      prims.context.execute(stream, {{DNNL_ARG_SRC, p}, {DNNL_ARG_WEIGHTS, v}, {DNNL_ARG_DST, out}});
      stream.wait();
      CopyHeads(dst + i * t * d * elem, base + 3 * head_bytes, n, t, heads, dh, d, elem, false);
    }
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmartvlmDnnlAttention, SelfAttention,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("heads")
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
