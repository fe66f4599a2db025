// One decode step of a Llama-shaped decoder (Llama, Mistral, Qwen2/3, Gemma 3, Granite; SmolLM2) for
// one token, in one call: embedding (times a scale), per layer RMSNorm -> q/k/v -> [per-head q/k
// RMSNorm] -> rotary (one table per layer kind) -> GQA attention over a preallocated KV cache (a
// sliding window where the layer has one, scores soft-capped where the model caps them) -> o ->
// [RMSNorm of the attention output] -> residual -> RMSNorm -> gate/up -> act(gate) * up (SiLU or
// GELU) -> down -> [RMSNorm of the MLP output] -> residual, then the final norm, the LM head and its
// scale / soft cap. The bracketed parts are the families' extras (Qwen 3 and Gemma 3: q/k norms;
// Gemma 3: the sandwich norms), each switched on by giving its weights. Python
// (sparse_expansion/decode.py, its LAYOUTS table) builds it once from a loaded model, sharing the
// model's tensors, and calls it once per token: no torch dispatch, no Python, no allocation inside a
// step. RMSNorm weights come in as the factor the model multiplies by (Gemma's 1 + w precomputed).
//
// Every linear is a descriptor (LinearDesc): its kind (dense, bitmask, N:M), the value type of
// sparse.h, the tensors, and optionally a router (SparseExpertLinear: the token's expert is chosen
// once per router and step, so gate and up, which share one, route once). int8 / int4 values (any
// kind) are one quant.h view per expert, run by quant_rows_decode (an int4 bitmask view with its act8
// layout, which the step builds and keeps).
//
// Threads: one OpenMP parallel region per step (the team is torch's, so torch.set_num_threads
// applies); inside it, phases separated by barriers, every linear's rows split evenly over the
// threads, attention split by query heads, norms and routing on thread 0. The residual adds and the
// SiLU gate are done by the thread that computed those rows, so they need no barrier of their own.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <time.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <string>
#include <vector>

#include "quant.h"
#include "sparse.h"
#include "step.h"

namespace se {

QuantView quant_view(const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                     const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                     int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                     int64_t expert, int64_t* rows);  // quant_torch.cpp

namespace {

enum LinearKind : int { kDense = 0, kBitmask = 1, kNM = 2 };
enum Activation : int { kSilu = 0, kGeluTanh = 1, kGelu = 2 };  // the MLP's act(gate)

struct LinearDesc {
  int kind = kDense;
  int vtype = kF32;
  int64_t rows = 0, in = 0, experts = 1;
  int router = -1;               // index into DecodeStep::routers_, -1 when not routed
  const void* values = nullptr;  // dense weight [experts, rows, in] or compressed values
  int64_t values_len = 0;
  const uint8_t* index = nullptr;     // bitmask mask / N:M indices
  const int64_t* offsets = nullptr;   // bitmask row offsets
  int64_t row_bytes = 0;              // bitmask
  int64_t n = 0, m = 0, per_row = 0, index_bytes = 0;  // N:M
  const float* bias = nullptr;
  std::vector<QuantView> quant;       // int8 / int4 values: one view per expert (empty otherwise)
};

// A folded router scores argmin_j bias[j] + x . matrix[:, j] (with step.h's accumulate_columns, as
// ops.cpp `route` does, so the step routes exactly as a module does); an unfolded one projects onto the
// PCA components and takes the nearest centroid.
struct RouterDesc {
  bool folded = true;
  int64_t in = 0, k = 0, p = 0;
  const float* bias = nullptr;
  const float* matrix = nullptr;
  const float* mean = nullptr;
  const float* components = nullptr;
  const float* centroids = nullptr;
  std::vector<float> c2;  // |c|^2 of every centroid (unfolded)
};

int value_type_of(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat: return kF32;
    case torch::kHalf: return kF16;
    case torch::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "values must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

// What a bitmask and an N:M linear share: `total` rows of values with their uint8 index, split into
// `experts` equal blocks.
LinearDesc compressed_desc(int kind, const torch::Tensor& values, const torch::Tensor& index, int64_t total,
                           int64_t experts, int64_t in) {
  TORCH_CHECK(experts > 0 && total % experts == 0, total, " rows do not split into ", experts, " experts");
  LinearDesc d;
  d.kind = kind;
  d.vtype = value_type_of(values);
  d.experts = experts;
  d.rows = total / experts;
  d.in = in;
  d.values = values.data_ptr();
  d.values_len = values.numel();
  d.index = index.data_ptr<uint8_t>();
  return d;
}

void check_cpu(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor");
}

const float* f32_ptr(const torch::Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK(t.scalar_type() == torch::kFloat, name, " must be float32");
  return t.data_ptr<float>();
}

inline uint16_t to_bf16(float f) {  // round to nearest even, as torch's conversion
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN stays NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float from_bf16(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The rows [lo, hi) of n that thread t of T takes: blocks of `align` rows, so no two threads write
// into one cache line of the output.
inline void split(int64_t n, int t, int T, int64_t align, int64_t* lo, int64_t* hi) {
  const int64_t blocks = (n + align - 1) / align;
  *lo = std::min(n, blocks * t / T * align);
  *hi = std::min(n, blocks * (t + 1) / T * align);
}

// An activation vector in float32 and, for bfloat16 models, the same values as bfloat16 bits (the
// AVX512-BF16 kernels read those). In a bfloat16 model the float32 copy is rounded too, so every
// kernel sees the inputs the Hugging Face forward would give it.
struct Vec {
  std::vector<float> f;
  std::vector<uint16_t> h;
  void resize(int64_t n) {
    f.assign(n, 0.f);
    h.assign(n, 0);
  }
};

// What each thread keeps for itself: the normed input (every thread norms and routes redundantly,
// which costs less than a barrier), the routes it computed and their scratch.
struct ThreadState {
  Vec xn;
  std::vector<int64_t> labels;
  std::vector<float> scratch;
};

struct LayerDesc {
  const float* input_norm = nullptr;     // before attention
  const float* post_norm = nullptr;      // before the MLP (Llama's post_attention_layernorm)
  const float* attn_out_norm = nullptr;  // on the attention output, before the residual (Gemma), or none
  const float* mlp_out_norm = nullptr;   // on the MLP output, before the residual (Gemma), or none
  const float* q_norm = nullptr;         // per query head [head_dim] (Qwen 3, Gemma 3), or none
  const float* k_norm = nullptr;         // per key head [head_dim], or none
  int64_t window = 0;                    // attend to the last `window` positions; 0: all
  int64_t rope = 0;                      // which rotary table (the layer's kind)
  int q = -1, k = -1, v = -1, o = -1, gate = -1, up = -1, down = -1;
};

// The phases of a step, each ended by a barrier (the norms and routes before a phase count to it): the
// order of DecodeStep::phase_profile's columns.
enum Phase { kEmbedding, kQKV, kAttention, kAttentionOut, kAttentionOutNorm, kGateUp, kDown, kMlpOutNorm, kHead, kPhases };
const char* const kPhaseNames[kPhases] = {"embedding", "q/k/v", "attention", "o", "o norm", "gate/up", "down",
                                          "down norm", "lm head"};

class DecodeStep {
 public:
  DecodeStep(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t layers, double eps,
             double scaling, bool act_bf16, int64_t level)
      : hidden_(hidden), heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(static_cast<float>(eps)),
        scaling_(static_cast<float>(scaling)), act_bf16_(act_bf16), level_(static_cast<int>(level)),
        bf16dot_(level >= 2 && avx512bf16_supported()), layers_(layers) {
    TORCH_CHECK(hidden > 0 && heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim > 0 && head_dim % 2 == 0,
                "bad attention shape: ", heads, " heads, ", kv_heads, " kv heads, head_dim ", head_dim);
  }

  // --- building ------------------------------------------------------------------------------
  int64_t add_router_folded(const torch::Tensor& bias, const torch::Tensor& matrix) {
    RouterDesc r;
    r.folded = true;
    r.bias = f32_ptr(bias, "router bias");
    r.matrix = f32_ptr(matrix, "router matrix");
    TORCH_CHECK(matrix.dim() == 2 && bias.numel() == matrix.size(1), "router matrix must be [in, k], bias [k]");
    r.in = matrix.size(0);
    r.k = matrix.size(1);
    keep_.push_back(bias);
    keep_.push_back(matrix);
    routers_.push_back(std::move(r));
    return static_cast<int64_t>(routers_.size()) - 1;
  }

  int64_t add_router(const torch::Tensor& mean, const torch::Tensor& components, const torch::Tensor& centroids) {
    RouterDesc r;
    r.folded = false;
    r.mean = f32_ptr(mean, "router mean");
    r.components = f32_ptr(components, "router components");
    r.centroids = f32_ptr(centroids, "router centroids");
    TORCH_CHECK(components.dim() == 2 && centroids.dim() == 2 && components.size(1) == centroids.size(1) &&
                    mean.numel() == components.size(0),
                "router buffers must be mean [in], components [in, p], centroids [k, p]");
    r.in = components.size(0);
    r.p = components.size(1);
    r.k = centroids.size(0);
    r.c2.assign(r.k, 0.f);
    for (int64_t c = 0; c < r.k; ++c)
      for (int64_t j = 0; j < r.p; ++j) r.c2[c] += r.centroids[c * r.p + j] * r.centroids[c * r.p + j];
    keep_.push_back(mean);
    keep_.push_back(components);
    keep_.push_back(centroids);
    routers_.push_back(std::move(r));
    return static_cast<int64_t>(routers_.size()) - 1;
  }

  // A dense weight [rows, in], or [experts, rows, in] behind a router; float32 or bfloat16.
  int64_t add_dense(const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias, int64_t router) {
    check_cpu(weight, "weight");
    TORCH_CHECK(weight.dim() == 2 || weight.dim() == 3, "dense weight must be [rows, in] or [experts, rows, in]");
    LinearDesc d;
    d.kind = kDense;
    d.vtype = value_type_of(weight);
    TORCH_CHECK(d.vtype != kF16, "dense float16 weights are not supported by the decode step");
    d.experts = weight.dim() == 3 ? weight.size(0) : 1;
    d.rows = weight.size(-2);
    d.in = weight.size(-1);
    d.values = weight.data_ptr();
    keep_.push_back(weight);
    return finish(d, bias, router);
  }

  int64_t add_bitmask(const torch::Tensor& values, const torch::Tensor& mask, const torch::Tensor& offsets,
                      int64_t experts, int64_t in, const c10::optional<torch::Tensor>& bias, int64_t router) {
    check_cpu(values, "values");
    check_cpu(mask, "mask");
    check_cpu(offsets, "row_offsets");
    TORCH_CHECK(mask.scalar_type() == torch::kByte && mask.size(-1) == (in + 7) / 8, "mask must be uint8 [.., ",
                (in + 7) / 8, "]");
    TORCH_CHECK(offsets.scalar_type() == torch::kLong && offsets.numel() == mask.numel() / mask.size(-1) + 1 &&
                    offsets.data_ptr<int64_t>()[offsets.numel() - 1] == values.numel(),
                "row_offsets must be int64 [rows + 1] ending at the number of values");
    LinearDesc d = compressed_desc(kBitmask, values, mask, offsets.numel() - 1, experts, in);
    d.offsets = offsets.data_ptr<int64_t>();
    d.row_bytes = mask.size(-1);
    keep_.insert(keep_.end(), {values, mask, offsets});
    return finish(d, bias, router);
  }

  int64_t add_nm(const torch::Tensor& values, const torch::Tensor& indices, int64_t n, int64_t m, int64_t experts,
                 int64_t in, const c10::optional<torch::Tensor>& bias, int64_t router) {
    check_cpu(values, "values");
    check_cpu(indices, "indices");
    TORCH_CHECK(0 < n && n < m && m <= 16 && in % m == 0, "bad N:M ", n, ":", m, " for in_features ", in);
    const int64_t per_row = in / m * n, bits = m <= 4 ? 2 : 4;
    TORCH_CHECK(values.size(-1) == per_row && indices.scalar_type() == torch::kByte &&
                    indices.size(-1) == (per_row * bits + 7) / 8 &&
                    indices.numel() / indices.size(-1) == values.numel() / per_row,
                "N:M values / indices do not match ", n, ":", m, " with in_features ", in);
    LinearDesc d = compressed_desc(kNM, values, indices, values.numel() / per_row, experts, in);
    d.n = n;
    d.m = m;
    d.per_row = per_row;
    d.index_bytes = indices.size(-1);
    keep_.insert(keep_.end(), {values, indices});
    return finish(d, bias, router);
  }

  // int8 / int4 values in any format (formats.py; ops._quant_args gives the arguments), one linear or
  // `experts` stacked behind a router; run by quant_rows_decode (quant.h's act8 arithmetic where it applies).
  int64_t add_quant(const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                    const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                    int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                    const c10::optional<torch::Tensor>& bias, int64_t router) {
    LinearDesc d;
    d.kind = format == "dense" ? kDense : format == "bitmask" ? kBitmask : kNM;
    d.experts = experts;
    d.in = in;
    for (int64_t e = 0; e < experts; ++e) {
      d.quant.push_back(quant_view(format, values, index, offsets, scales, zeros, bits, group_size, n, m, experts, in,
                                   e, &d.rows));
      if (act8_layout_applies(d.quant.back(), level_)) {
        layouts_.emplace_back();
        act8_layout(d.quant.back(), d.rows, layouts_.back());
        layouts_.back().attach(d.quant.back());
      }
    }
    keep_.insert(keep_.end(), {values, index, offsets, scales, zeros});
    return finish(d, bias, router);
  }

  // Norm weights are float32, the factor the model multiplies the normalised vector by; the optional
  // ones switch their part on. `window` > 0: a sliding-window layer; `rope`: its rotary table.
  void set_layer(int64_t l, const torch::Tensor& input_norm, const torch::Tensor& post_norm,
                 const std::vector<int64_t>& linears, const c10::optional<torch::Tensor>& attn_out_norm,
                 const c10::optional<torch::Tensor>& mlp_out_norm, const c10::optional<torch::Tensor>& q_norm,
                 const c10::optional<torch::Tensor>& k_norm, int64_t window, int64_t rope) {
    TORCH_CHECK(l >= 0 && l < layers_, "layer ", l, " out of range");
    TORCH_CHECK(linears.size() == 7, "a layer has 7 linears: q k v o gate up down");
    TORCH_CHECK(window >= 0 && rope >= 0, "window and rope must be >= 0");
    if (layer_descs_.empty()) layer_descs_.resize(layers_);
    LayerDesc& L = layer_descs_[l];
    auto norm = [&](const torch::Tensor& w, int64_t n, const char* name) {
      TORCH_CHECK(w.numel() == n, name, " weights must have ", n, " values");
      keep_.push_back(w);
      return f32_ptr(w, name);
    };
    auto optional_norm = [&](const c10::optional<torch::Tensor>& w, int64_t n, const char* name) -> const float* {
      return w ? norm(*w, n, name) : nullptr;
    };
    L.input_norm = norm(input_norm, hidden_, "input norm");
    L.post_norm = norm(post_norm, hidden_, "post-attention norm");
    L.attn_out_norm = optional_norm(attn_out_norm, hidden_, "attention output norm");
    L.mlp_out_norm = optional_norm(mlp_out_norm, hidden_, "MLP output norm");
    L.q_norm = optional_norm(q_norm, head_dim_, "query norm");
    L.k_norm = optional_norm(k_norm, head_dim_, "key norm");
    TORCH_CHECK((L.q_norm == nullptr) == (L.k_norm == nullptr), "query and key norms come together");
    L.window = window;
    L.rope = rope;
    int* slots[7] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
    for (int i = 0; i < 7; ++i) {
      TORCH_CHECK(linears[i] >= 0 && linears[i] < static_cast<int64_t>(linears_.size()), "unknown linear ", linears[i]);
      *slots[i] = static_cast<int>(linears[i]);
    }
    const int64_t qd = heads_ * head_dim_, kvd = kv_heads_ * head_dim_;
    const LinearDesc &q = linears_[L.q], &k = linears_[L.k], &v = linears_[L.v], &o = linears_[L.o];
    const LinearDesc &g = linears_[L.gate], &u = linears_[L.up], &dn = linears_[L.down];
    TORCH_CHECK(q.in == hidden_ && k.in == hidden_ && v.in == hidden_ && q.rows == qd && k.rows == kvd &&
                    v.rows == kvd && o.in == qd && o.rows == hidden_,
                "layer ", l, ": attention projections do not match hidden ", hidden_, ", ", heads_, " x ", head_dim_);
    TORCH_CHECK(g.in == hidden_ && u.in == hidden_ && g.rows == u.rows && dn.in == g.rows && dn.rows == hidden_,
                "layer ", l, ": MLP linears do not fit together");
    inter_ = std::max(inter_, g.rows);
  }

  // What the family computes around the layers: the embedding times embed_scale (rounded to the
  // model's dtype, as its forward multiplies), residual += residual_scale * branch, logits divided by
  // logit_scale and then soft-capped (cap * tanh(logits / cap), 0: none), attention scores soft-capped
  // the same way, the MLP's activation (Activation). Defaults: Llama's.
  void set_layout(double embed_scale, double residual_scale, double logit_scale, double final_softcap,
                  double attn_softcap, int64_t activation) {
    TORCH_CHECK(logit_scale != 0 && final_softcap >= 0 && attn_softcap >= 0, "bad logit scale or soft cap");
    TORCH_CHECK(activation >= kSilu && activation <= kGelu, "unknown activation ", activation);
    embed_scale_ = static_cast<float>(embed_scale);
    residual_scale_ = static_cast<float>(residual_scale);
    logit_scale_ = static_cast<float>(logit_scale);
    final_softcap_ = static_cast<float>(final_softcap);
    attn_softcap_ = static_cast<float>(attn_softcap);
    activation_ = static_cast<int>(activation);
  }

  // embed [vocab, hidden] (float32 or bfloat16), final norm [hidden], lm_head a linear id, rotary
  // cos/sin [max_len, head_dim] or one table per layer kind [kinds, max_len, head_dim] (Hugging
  // Face's, attention scaling included), K/V caches [layers, kv_heads, max_len, head_dim] float32.
  void set_model(const torch::Tensor& embed, const torch::Tensor& final_norm, int64_t lm_head, const torch::Tensor& cos,
                 const torch::Tensor& sin, const torch::Tensor& k_cache, const torch::Tensor& v_cache) {
    check_cpu(embed, "embedding");
    TORCH_CHECK(embed.dim() == 2 && embed.size(1) == hidden_, "embedding must be [vocab, ", hidden_, "]");
    embed_vtype_ = value_type_of(embed);
    TORCH_CHECK(embed_vtype_ != kF16, "float16 embeddings are not supported by the decode step");
    embed_ = embed.data_ptr();
    vocab_ = embed.size(0);
    final_norm_ = f32_ptr(final_norm, "final norm");
    TORCH_CHECK(lm_head >= 0 && lm_head < static_cast<int64_t>(linears_.size()), "unknown LM head");
    lm_head_ = static_cast<int>(lm_head);
    TORCH_CHECK(linears_[lm_head_].in == hidden_, "LM head must read [hidden]");
    cos_ = f32_ptr(cos, "cos");
    sin_ = f32_ptr(sin, "sin");
    TORCH_CHECK((cos.dim() == 2 || cos.dim() == 3) && cos.size(-1) == head_dim_ && sin.sizes() == cos.sizes(),
                "cos/sin must be [kinds, max_len, ", head_dim_, "] or [max_len, ", head_dim_, "]");
    max_len_ = cos.size(-2);
    const int64_t kinds = cos.dim() == 3 ? cos.size(0) : 1;
    kc_ = const_cast<float*>(f32_ptr(k_cache, "key cache"));
    vc_ = const_cast<float*>(f32_ptr(v_cache, "value cache"));
    const std::vector<int64_t> want{layers_, kv_heads_, max_len_, head_dim_};
    TORCH_CHECK(k_cache.sizes() == want && v_cache.sizes() == want, "caches must be [", layers_, ", ", kv_heads_, ", ",
                max_len_, ", ", head_dim_, "]");
    keep_.insert(keep_.end(), {embed, final_norm, cos, sin, k_cache, v_cache});
    TORCH_CHECK(static_cast<int64_t>(layer_descs_.size()) == layers_, "set every layer before the model");
    for (const auto& L : layer_descs_) {
      TORCH_CHECK(L.input_norm != nullptr, "a layer was not set");
      TORCH_CHECK(L.rope < kinds, "a layer's rotary table ", L.rope, " is not among the ", kinds, " given");
    }
    logits_ = torch::empty({linears_[lm_head_].rows}, torch::kFloat);
    logits_ptr_ = logits_.data_ptr<float>();
    h_.assign(hidden_, 0.f);
    attn_.resize(heads_ * head_dim_);
    act_.resize(inter_);
    q_.assign(heads_ * head_dim_, 0.f);
    k_.assign(kv_heads_ * head_dim_, 0.f);
    v_.assign(kv_heads_ * head_dim_, 0.f);
    tmp_.assign(std::max(hidden_, inter_), 0.f);
    up_.assign(inter_, 0.f);
    route_scratch_ = 1;
    for (const auto& r : routers_) route_scratch_ = std::max(route_scratch_, r.k + r.p);
    states_.clear();
    ready_ = true;
  }

  // --- running -------------------------------------------------------------------------------
  // Only the linears of one step, on the inputs and routes the last step left (embedding, norms,
  // rotary, attention and routing skipped): what a step costs in the weight kernels alone, for
  // benchmarks/decode_speed.py. Overwrites the activations and (without_linears) cache row pos.
  // `without_linears` the other way round: everything but the linears (attention over pos + 1 cached
  // positions included), the part of a step no weight format touches.
  void partial(int64_t repeats, bool without_linears, int64_t pos) {
    TORCH_CHECK(ready_, "the decode step is not complete (set_model)");
    mode_ = without_linears ? kNoLinears : kLinearsOnly;
    for (int64_t i = 0; i < repeats; ++i) step(0, pos);
    mode_ = kAll;
  }

  // The logits [vocab] after `token` at position `pos` (the cache holds positions < pos). The same
  // tensor is returned (and overwritten) by every call.
  torch::Tensor step(int64_t token, int64_t pos) {
    TORCH_CHECK(ready_, "the decode step is not complete (set_model)");
    TORCH_CHECK(token >= 0 && token < vocab_, "token ", token, " outside the vocabulary of ", vocab_);
    TORCH_CHECK(pos >= 0 && pos < max_len_, "position ", pos, " outside the cache of ", max_len_);
    const int threads = std::max(1, at::get_num_threads());
    const int64_t scratch = std::min<int64_t>(8, heads_ / kv_heads_) * max_len_;  // per thread
    if (static_cast<int64_t>(scores_.size()) < threads * scratch) scores_.assign(threads * scratch, 0.f);
    while (static_cast<int>(states_.size()) < threads) {
      ThreadState st;
      st.xn.resize(hidden_);
      st.labels.assign(routers_.size(), 0);
      st.scratch.assign(route_scratch_, 0.f);
      states_.push_back(std::move(st));
    }
    if (profile_ && static_cast<int>(phase_seconds_.size()) < threads) phase_seconds_.resize(threads, {});
    const double start = profile_ ? cpu_seconds() : 0;
    {
      pybind11::gil_scoped_release release;
#ifdef _OPENMP
      if (threads > 1) {
#pragma omp parallel num_threads(threads)
        body(token, pos, omp_get_thread_num(), omp_get_num_threads());
      } else {
        body(token, pos, 0, 1);
      }
#else
      body(token, pos, 0, 1);
#endif
    }
    if (profile_) {
      step_seconds_ += cpu_seconds() - start;
      ++steps_;
    }
    return logits_;
  }

  void set_profile(bool on) {
    profile_ = on;
    step_seconds_ = linear_seconds_ = attention_seconds_ = 0;
    steps_ = 0;
    phase_seconds_.clear();
  }
  // (steps, CPU seconds in them, of those in the weight kernels (with the barriers after them), of those
  // in attention), all on the calling thread's CPU clock (thread 0 of the team).
  std::tuple<int64_t, double, double, double> profile() const {
    return {steps_, step_seconds_, linear_seconds_, attention_seconds_};
  }
  // Per thread of the team, per phase (kPhaseNames' order): wall seconds computing it, then wall seconds
  // waiting at its barrier for the other threads, summed over the profiled steps. A thread's waits are
  // the imbalance: the phases it finished before the others.
  std::vector<std::vector<double>> phase_profile() const {
    std::vector<std::vector<double>> out;
    for (const auto& p : phase_seconds_) out.emplace_back(p.begin(), p.end());
    return out;
  }
  static std::vector<std::string> phase_names() { return {kPhaseNames, kPhaseNames + kPhases}; }
  int64_t max_len() const { return max_len_; }
  int64_t threads_used() const { return std::max(1, at::get_num_threads()); }

 private:
  int64_t finish(LinearDesc& d, const c10::optional<torch::Tensor>& bias, int64_t router) {
    if (bias) {
      d.bias = f32_ptr(*bias, "bias");
      TORCH_CHECK(bias->numel() == d.rows, "bias must have ", d.rows, " values");
      keep_.push_back(*bias);
    }
    if (router >= 0) {
      TORCH_CHECK(router < static_cast<int64_t>(routers_.size()), "unknown router ", router);
      TORCH_CHECK(routers_[router].k == d.experts && routers_[router].in == d.in, "router does not fit the experts");
      d.router = static_cast<int>(router);
    } else {
      TORCH_CHECK(d.experts == 1, "experts need a router");
    }
    linears_.push_back(d);
    return static_cast<int64_t>(linears_.size()) - 1;
  }

  static inline void barrier(int T) {
#ifdef _OPENMP
    if (T > 1) {
#pragma omp barrier
    }
#else
    (void)T;
#endif
  }

  int64_t route(const RouterDesc& r, const float* x, float* score) const {
    if (r.folded) {
      std::copy(r.bias, r.bias + r.k, score);
      accumulate_columns(x, nullptr, r.in, r.matrix, r.k, score, level_);
    } else {
      float* z = score + r.k;
      std::fill(z, z + r.p, 0.f);
      accumulate_columns(x, r.mean, r.in, r.components, r.p, z, level_);
      for (int64_t c = 0; c < r.k; ++c) {
        float dot = 0;
        for (int64_t j = 0; j < r.p; ++j) dot += z[j] * r.centroids[c * r.p + j];
        score[c] = r.c2[c] - 2 * dot;
      }
    }
    int64_t best = 0;
    for (int64_t j = 1; j < r.k; ++j)
      if (score[j] < score[best]) best = j;
    return best;
  }

  // Route every linear of a phase that has a router (a shared router once), into the thread's state.
  void route_for(std::initializer_list<int> ids, const Vec& x, ThreadState& st) const {
    int last = -1;
    for (int id : ids) {
      const int r = linears_[id].router;
      if (r < 0 || r == last) continue;
      st.labels[r] = route(routers_[r], x.f.data(), st.scratch.data());
      last = r;
    }
  }

  void round_inputs(Vec& x, int64_t lo, int64_t hi) const {
    if (!act_bf16_) return;
    for (int64_t i = lo; i < hi; ++i) {
      x.h[i] = to_bf16(x.f[i]);
      x.f[i] = from_bf16(x.h[i]);
    }
  }

  // 1 / sqrt(mean(x^2) + eps): float32 in Hugging Face; double here costs nothing and is at least as exact.
  float inv_rms(const float* x, int64_t n) const {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    return 1.0f / std::sqrt(static_cast<float>(ss / n) + eps_);
  }

  float round_act(float v) const { return act_bf16_ ? from_bf16(to_bf16(v)) : v; }

  void rmsnorm(const float* w, Vec& out) const {
    const float inv = inv_rms(h_.data(), hidden_);
    for (int64_t i = 0; i < hidden_; ++i) out.f[i] = w[i] * (h_[i] * inv);
    round_inputs(out, 0, hidden_);
  }

  // In place, every head of `heads` vectors of head_dim (Qwen 3 / Gemma 3 q_norm, k_norm).
  void head_norm(const float* w, float* x, int64_t heads) const {
    if (w == nullptr) return;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + h * head_dim_;
      const float inv = inv_rms(v, head_dim_);
      for (int64_t i = 0; i < head_dim_; ++i) v[i] = round_act(w[i] * (v[i] * inv));
    }
  }

  // h[lo:hi] += residual_scale * branch[lo:hi], the branch first normed by w (over all of it) when
  // the layer norms its outputs (Gemma), rounded to the model's dtype as its forward hands it over.
  void add_residual(const float* w, const float* branch, int64_t lo, int64_t hi) {
    if (w == nullptr) {
      for (int64_t r = lo; r < hi; ++r) h_[r] += residual_scale_ * branch[r];
      return;
    }
    const float inv = inv_rms(branch, hidden_);
    for (int64_t r = lo; r < hi; ++r) h_[r] += residual_scale_ * round_act(w[r] * (branch[r] * inv));
  }

  float activate(float g) const {
    switch (activation_) {
      case kGeluTanh: {
        const float inner = 0.7978845608028654f * (g + 0.044715f * g * g * g);
        return 0.5f * g * (1.0f + std::tanh(inner));
      }
      case kGelu: return 0.5f * g * (1.0f + std::erf(g * 0.7071067811865476f));
      default: return g / (1.0f + std::exp(-g));
    }
  }

  // y[r0:r1] = W x (+ bias), W the linear's weight or its routed expert's.
  void run_linear(const LinearDesc& L, const Vec& x, float* y, int64_t r0, int64_t r1, const ThreadState& st) const {
    if (r0 >= r1 || mode_ == kNoLinears) return;
    const int64_t e = L.router >= 0 ? st.labels[L.router] : 0;
    if (!L.quant.empty()) {
      quant_rows_decode(L.quant[e], r0, r1, x.f.data(), y, level_);
      if (L.bias)
        for (int64_t r = r0; r < r1; ++r) y[r] += L.bias[r];
      return;
    }
    switch (L.kind) {
      case kDense: {
        if (L.vtype == kF32) {
          dense_rows_f32(static_cast<const float*>(L.values) + e * L.rows * L.in, L.in, r0, r1, x.f.data(), y, level_);
        } else {
          const uint16_t* w = static_cast<const uint16_t*>(L.values) + e * L.rows * L.in;
          if (bf16dot_ && act_bf16_) {
            const uint16_t* xs[1] = {x.h.data()};
            float* ys[1] = {y};
            dense_rows_avx512_bf16(w, L.in, r0, r1, xs, ys, 1);
          } else {
            dense_rows_bf16_f32(w, L.in, r0, r1, x.f.data(), y);
          }
        }
        break;
      }
      case kBitmask: {
        const BitmaskView view{L.values, L.values_len, L.index + e * L.rows * L.row_bytes, L.offsets + e * L.rows,
                               L.in, L.row_bytes, L.vtype};
        const Tokens t{x.f.data(), L.in, y, L.rows, nullptr, 1, x.h.data()};
        if (L.vtype == kBF16 && act_bf16_ && bf16dot_)
          bitmask_rows_avx512_bf16(view, r0, r1, t);
        else if (level_ >= 2)
          bitmask_rows_avx512(view, r0, r1, t);
        else if (level_ == 1)
          bitmask_rows_avx2(view, r0, r1, t);
        else
          bitmask_rows_scalar(view, r0, r1, t);
        break;
      }
      default: {  // kNM
        const int64_t esize = L.vtype == kF32 ? 4 : 2;
        const NMView view{static_cast<const char*>(L.values) + e * L.rows * L.per_row * esize,
                          L.index + e * L.rows * L.index_bytes, L.in, L.n, L.m, L.m <= 4 ? 2 : 4, L.per_row,
                          L.index_bytes, L.vtype};
        const Tokens t{x.f.data(), L.in, y, L.rows, nullptr, 1, nullptr};
        if (8 % L.n != 0 || level_ == 0)  // the vector N:M kernels need N to divide 8 (as ops.cpp)
          nm_rows_scalar(view, r0, r1, t);
        else if (level_ >= 2)
          nm_rows_avx512(view, r0, r1, t);
        else
          nm_rows_avx2(view, r0, r1, t);
        break;
      }
    }
    if (L.bias)
      for (int64_t r = r0; r < r1; ++r) y[r] += L.bias[r];
  }

  // Rotary embedding of `heads` vectors of head_dim at position pos (Hugging Face's rotate_half).
  void rotate(float* x, int64_t heads, int64_t pos, int64_t table) const {
    const int64_t half = head_dim_ / 2;
    const float* c = cos_ + (table * max_len_ + pos) * head_dim_;
    const float* s = sin_ + (table * max_len_ + pos) * head_dim_;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + h * head_dim_;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i + half] + a * s[i + half];
      }
    }
  }

  // Query heads [lo, hi) of layer `layer` at position pos, over the cached positions it sees (all,
  // or the last `window`): runs of heads that share a KV head go through the vector kernel together
  // (their keys and values read once); soft-capped scores take the plain loop.
  void attention_heads(int64_t layer, int64_t lo, int64_t hi, int64_t pos, float* scores) {
    const int64_t group = heads_ / kv_heads_;
    const int64_t window = layer_descs_[layer].window;
    const int64_t first = window > 0 ? std::max<int64_t>(0, pos + 1 - window) : 0, n = pos + 1 - first;
    for (int64_t head = lo; head < hi;) {
      const int64_t g = head / group;
      const int64_t end = std::min(hi, (g + 1) * group);
      const float* keys = kc_ + ((layer * kv_heads_ + g) * max_len_ + first) * head_dim_;
      const float* values = vc_ + ((layer * kv_heads_ + g) * max_len_ + first) * head_dim_;
      const float* q = q_.data() + head * head_dim_;
      float* out = attn_.f.data() + head * head_dim_;
      const int64_t nq = end - head;
      if (!(level_ >= 2 && nq <= 8 && attn_softcap_ == 0 &&
            attend_heads_avx512(q, static_cast<int>(nq), keys, values, n, head_dim_, scaling_, scores, out))) {
        for (int64_t h = 0; h < nq; ++h) attend_one(q + h * head_dim_, keys, values, n, scores, out + h * head_dim_);
      }
      head = end;
    }
  }

  void attend_one(const float* q, const float* keys, const float* values, int64_t n, float* scores, float* out) const {
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      scores[j] = dot_f32(q, keys + j * head_dim_, head_dim_, level_) * scaling_;
      if (attn_softcap_ > 0) scores[j] = attn_softcap_ * std::tanh(scores[j] / attn_softcap_);
      top = std::max(top, scores[j]);
    }
    float sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      scores[j] = std::exp(scores[j] - top);
      sum += scores[j];
    }
    const float inv = 1.0f / sum;
    std::fill(out, out + head_dim_, 0.f);
    for (int64_t j = 0; j < n; ++j) axpy_f32(scores[j] * inv, values + j * head_dim_, out, head_dim_, level_);
  }

  static double wall_seconds() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
  }

  static double cpu_seconds() {  // this thread's CPU time: a descheduled thread does not count its wait
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
  }

  // Where position pos of KV head g of layer l sits in the key (and value) cache.
  int64_t cache_at(int64_t l, int64_t g, int64_t pos) const { return ((l * kv_heads_ + g) * max_len_ + pos) * head_dim_; }

  // Thread t's heads [*h0, *h1) of the `count` starting at `first` in the list of all q, k and v heads
  // (heads_ + 2 kv_heads_ of them), which the threads share out in runs of whole heads.
  void head_share(int t, int T, int64_t first, int64_t count, int64_t* h0, int64_t* h1) const {
    int64_t u0, u1;
    split(heads_ + 2 * kv_heads_, t, T, 1, &u0, &u1);
    *h0 = std::min(count, std::max<int64_t>(0, u0 - first));
    *h1 = std::max(*h0, std::min(count, u1 - first));
  }

  // Barriers: after the embedding, then five a layer (after q/k/v, attention, o, gate/up, down).
  // Rows of q, k and v are split by whole heads, so the thread that computed a head also rotates it
  // (and stores k or v in the cache); norms and routes are computed by every thread for itself.
  void body(int64_t token, int64_t pos, int t, int T) {
    const bool timing = profile_ && t == 0;
    double linear = 0, attention = 0, mark = 0;
    auto begin = [&] {
      if (timing) mark = cpu_seconds();
    };
    auto end = [&](double& into) {
      if (timing) into += cpu_seconds() - mark;
    };
    double phase_mark = profile_ ? wall_seconds() : 0;
    auto sync = [&](Phase phase) {  // the barrier that ends `phase`, timed on both sides when profiling
      if (!profile_) {
        barrier(T);
        return;
      }
      const double reached = wall_seconds();
      barrier(T);
      const double left = wall_seconds();
      phase_seconds_[t][phase] += reached - phase_mark;
      phase_seconds_[t][kPhases + phase] += left - reached;
      phase_mark = left;
    };
    const bool all = mode_ != kLinearsOnly;
    ThreadState& st = states_[t];
    int64_t lo, hi;
    split(hidden_, t, T, 16, &lo, &hi);
    if (all) {
      if (embed_vtype_ == kF32) {
        const float* row = static_cast<const float*>(embed_) + token * hidden_;
        std::copy(row + lo, row + hi, h_.begin() + lo);
      } else {
        const uint16_t* row = static_cast<const uint16_t*>(embed_) + token * hidden_;
        for (int64_t i = lo; i < hi; ++i) h_[i] = from_bf16(row[i]);
      }
      if (embed_scale_ != 1.0f)
        for (int64_t i = lo; i < hi; ++i) h_[i] = round_act(h_[i] * embed_scale_);
    }
    sync(kEmbedding);
    float* scores = scores_.data() + t * std::min<int64_t>(8, heads_ / kv_heads_) * max_len_;
    for (int64_t l = 0; l < layers_; ++l) {
      const LayerDesc& L = layer_descs_[l];
      if (all) {
        rmsnorm(L.input_norm, st.xn);
        route_for({L.q, L.k, L.v}, st.xn, st);
      }
      begin();
      // q, k and v heads as one list (9 + 3 + 3 on SmolLM2: 8 and 7 to two threads, not 9 and 6 if
      // each were split alone).
      int64_t q0, q1, k0, k1, v0, v1;
      head_share(t, T, 0, heads_, &q0, &q1);
      head_share(t, T, heads_, kv_heads_, &k0, &k1);
      head_share(t, T, heads_ + kv_heads_, kv_heads_, &v0, &v1);
      run_linear(linears_[L.q], st.xn, q_.data(), q0 * head_dim_, q1 * head_dim_, st);
      run_linear(linears_[L.k], st.xn, k_.data(), k0 * head_dim_, k1 * head_dim_, st);
      run_linear(linears_[L.v], st.xn, v_.data(), v0 * head_dim_, v1 * head_dim_, st);
      end(linear);
      if (all) {
        head_norm(L.q_norm, q_.data() + q0 * head_dim_, q1 - q0);
        head_norm(L.k_norm, k_.data() + k0 * head_dim_, k1 - k0);
        rotate(q_.data() + q0 * head_dim_, q1 - q0, pos, L.rope);
        rotate(k_.data() + k0 * head_dim_, k1 - k0, pos, L.rope);
        for (int64_t g = k0; g < k1; ++g)
          std::copy(k_.begin() + g * head_dim_, k_.begin() + (g + 1) * head_dim_, kc_ + cache_at(l, g, pos));
        for (int64_t g = v0; g < v1; ++g)
          std::copy(v_.begin() + g * head_dim_, v_.begin() + (g + 1) * head_dim_, vc_ + cache_at(l, g, pos));
      }
      sync(kQKV);
      begin();
      if (all) {
        int64_t h0, h1;
        split(heads_, t, T, 1, &h0, &h1);
        attention_heads(l, h0, h1, pos, scores);
        round_inputs(attn_, h0 * head_dim_, h1 * head_dim_);
      }
      sync(kAttention);
      end(attention);
      if (all) route_for({L.o}, attn_, st);
      begin();
      run_linear(linears_[L.o], attn_, tmp_.data(), lo, hi, st);
      if (L.attn_out_norm == nullptr || !all) add_residual(nullptr, tmp_.data(), lo, hi);
      sync(kAttentionOut);
      end(linear);
      if (L.attn_out_norm != nullptr && all) {  // the norm reads the whole output: after the barrier
        add_residual(L.attn_out_norm, tmp_.data(), lo, hi);
        sync(kAttentionOutNorm);
      }
      if (all) {
        rmsnorm(L.post_norm, st.xn);
        route_for({L.gate, L.up}, st.xn, st);
      }
      begin();
      {
        const int64_t inter = linears_[L.gate].rows;
        int64_t g0, g1;
        split(inter, t, T, 16, &g0, &g1);
        run_linear(linears_[L.gate], st.xn, tmp_.data(), g0, g1, st);
        run_linear(linears_[L.up], st.xn, up_.data(), g0, g1, st);
        float* a = act_.f.data();
        for (int64_t r = g0; r < g1; ++r) a[r] = activate(tmp_[r]) * up_[r];
        round_inputs(act_, g0, g1);
      }
      sync(kGateUp);
      end(linear);
      if (all) route_for({L.down}, act_, st);
      begin();
      run_linear(linears_[L.down], act_, tmp_.data(), lo, hi, st);
      if (L.mlp_out_norm == nullptr || !all) add_residual(nullptr, tmp_.data(), lo, hi);
      sync(kDown);
      end(linear);
      if (L.mlp_out_norm != nullptr && all) {
        add_residual(L.mlp_out_norm, tmp_.data(), lo, hi);
        sync(kMlpOutNorm);
      }
    }
    if (all) {
      rmsnorm(final_norm_, st.xn);
      route_for({lm_head_}, st.xn, st);
    }
    begin();
    {
      int64_t v0, v1;
      split(linears_[lm_head_].rows, t, T, 16, &v0, &v1);
      run_linear(linears_[lm_head_], st.xn, logits_ptr_, v0, v1, st);
      if (all && (logit_scale_ != 1.0f || final_softcap_ > 0))
        for (int64_t r = v0; r < v1; ++r) {
          float z = logits_ptr_[r] / logit_scale_;
          logits_ptr_[r] = final_softcap_ > 0 ? final_softcap_ * std::tanh(z / final_softcap_) : z;
        }
    }
    sync(kHead);
    end(linear);
    if (timing) {
      linear_seconds_ += linear;
      attention_seconds_ += attention;
    }
  }

  const int64_t hidden_, heads_, kv_heads_, head_dim_;
  const float eps_, scaling_;
  const bool act_bf16_;
  const int level_;
  const bool bf16dot_;
  const int64_t layers_;
  int64_t inter_ = 0, vocab_ = 0, max_len_ = 0;
  std::vector<LinearDesc> linears_;
  std::vector<RouterDesc> routers_;
  std::vector<LayerDesc> layer_descs_;
  std::vector<torch::Tensor> keep_;  // every tensor the descriptors point into stays alive
  std::deque<Act8Layout> layouts_;   // int4 bitmask views' act8 layouts (quant.h); a deque never moves them
  const void* embed_ = nullptr;
  int embed_vtype_ = kF32;
  const float* final_norm_ = nullptr;
  int lm_head_ = -1;
  const float *cos_ = nullptr, *sin_ = nullptr;
  float embed_scale_ = 1, residual_scale_ = 1, logit_scale_ = 1, final_softcap_ = 0, attn_softcap_ = 0;
  int activation_ = kSilu;
  float *kc_ = nullptr, *vc_ = nullptr;
  torch::Tensor logits_;
  float* logits_ptr_ = nullptr;
  std::vector<float> h_, q_, k_, v_, tmp_, up_, scores_;
  Vec attn_, act_;
  std::vector<ThreadState> states_;
  int64_t route_scratch_ = 1;
  enum Mode { kAll, kLinearsOnly, kNoLinears };
  Mode mode_ = kAll;
  bool ready_ = false, profile_ = false;
  int64_t steps_ = 0;
  double step_seconds_ = 0, linear_seconds_ = 0, attention_seconds_ = 0;
  std::vector<std::array<double, 2 * kPhases>> phase_seconds_;  // per thread: work by phase, then waits
};

}  // namespace

void register_decode_step(pybind11::module_& m) {
  namespace py = pybind11;
  py::class_<DecodeStep>(m, "DecodeStep", "one decode step of a Llama-family decoder (see decode_step.cpp)")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, double, double, bool, int64_t>(), py::arg("hidden"),
           py::arg("heads"), py::arg("kv_heads"), py::arg("head_dim"), py::arg("layers"), py::arg("eps"),
           py::arg("scaling"), py::arg("act_bf16"), py::arg("level"))
      .def("add_router_folded", &DecodeStep::add_router_folded)
      .def("add_router", &DecodeStep::add_router)
      .def("add_dense", &DecodeStep::add_dense)
      .def("add_bitmask", &DecodeStep::add_bitmask)
      .def("add_nm", &DecodeStep::add_nm)
      .def("add_quant", &DecodeStep::add_quant)
      .def("set_layout", &DecodeStep::set_layout, py::arg("embed_scale") = 1.0, py::arg("residual_scale") = 1.0,
           py::arg("logit_scale") = 1.0, py::arg("final_softcap") = 0.0, py::arg("attn_softcap") = 0.0,
           py::arg("activation") = 0)
      .def("set_layer", &DecodeStep::set_layer, py::arg("layer"), py::arg("input_norm"), py::arg("post_norm"),
           py::arg("linears"), py::arg("attn_out_norm") = py::none(), py::arg("mlp_out_norm") = py::none(),
           py::arg("q_norm") = py::none(), py::arg("k_norm") = py::none(), py::arg("window") = 0,
           py::arg("rope") = 0)
      .def("set_model", &DecodeStep::set_model)
      .def("step", &DecodeStep::step, "logits [vocab] after token at position pos")
      .def("partial", &DecodeStep::partial, "repeat only the linears of the last step, or all but them")
      .def("set_profile", &DecodeStep::set_profile)
      .def("profile", &DecodeStep::profile)
      .def("phase_profile", &DecodeStep::phase_profile)
      .def_static("phase_names", &DecodeStep::phase_names)
      .def("max_len", &DecodeStep::max_len)
      .def("threads_used", &DecodeStep::threads_used);
}

}  // namespace se
