// Torch entry points: check arguments, group tokens by expert, split rows over threads
// (at::parallel_for, so torch.set_num_threads applies) and pick a kernel for each group:
// a sparse kernel for few tokens, unpack-to-fp32 + GEMM for many (the weights are then read
// once for many tokens, and the GEMM is faster than any sparse product).
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "sparse.h"
#include "step.h"

namespace se {

// quant_torch.cpp: int8 / int4 values in any format, a few tokens.
torch::Tensor quant_matmul(const torch::Tensor& x, const c10::optional<torch::Tensor>& labels,
                           const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                           const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                           int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                           const c10::optional<torch::Tensor>& bias, int64_t isa);
torch::Tensor quant_decode_matmul(const torch::Tensor& x, const c10::optional<torch::Tensor>& labels,
                                  const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                                  const torch::Tensor& offsets, const torch::Tensor& scales,
                                  const torch::Tensor& zeros, int64_t bits, int64_t group_size, int64_t n, int64_t m,
                                  int64_t experts, int64_t in, const c10::optional<torch::Tensor>& bias, int64_t isa,
                                  const std::vector<torch::Tensor>& layout);
std::vector<torch::Tensor> act8_layout_tensors(const std::string& format, const torch::Tensor& values,
                                               const torch::Tensor& index, const torch::Tensor& offsets,
                                               const torch::Tensor& scales, const torch::Tensor& zeros, int64_t bits,
                                               int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                                               int64_t isa);
bool act8_vector_supported();  // quant_act8.cpp
std::vector<torch::Tensor> quantize_bitmask(const torch::Tensor& values, const torch::Tensor& mask,
                                            const torch::Tensor& offsets, int64_t cols, int64_t bits,
                                            int64_t group_size);
torch::Tensor quant_unpack(const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                           const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                           int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                           int64_t expert);

namespace {

constexpr int64_t kTileBytes = 256 * 1024;  // fp32 weight tile of the GEMM path: well inside L2
constexpr int64_t kTileMinRows = 128;
// From this many tokens a bfloat16 GEMM (AMX here) beats the float32 one despite re-laying out the
// weight on each call; 1536x576 bf16 70%, 1 thread: 64 tokens 0.99 vs 1.27 ms, 512 tokens 2.8 vs 6.4.
constexpr int64_t kHalfGemmFrom = 64;
constexpr int64_t kBf16DotTokens = 2;  // the BF16 dot kernel up to this many tokens per call

int value_type(const torch::Tensor& values) {
  switch (values.scalar_type()) {
    case torch::kFloat: return kF32;
    case torch::kHalf: return kF16;
    case torch::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "compressed values must be float32, float16 or bfloat16, got ", values.scalar_type());
  }
}

void check_cpu_contiguous(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Tokens sorted by expert: order[starts[e] .. starts[e + 1]) are expert e's tokens, in order.
struct Groups {
  std::vector<int64_t> order, starts;
};

Groups group_by_expert(const torch::Tensor& labels, int64_t experts) {
  const int64_t* lab = labels.data_ptr<int64_t>();
  const int64_t n = labels.numel();
  Groups g;
  g.starts.assign(experts + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(lab[i] >= 0 && lab[i] < experts, "label ", lab[i], " is not an expert in [0, ", experts, ")");
    ++g.starts[lab[i] + 1];
  }
  for (int64_t e = 0; e < experts; ++e) g.starts[e + 1] += g.starts[e];
  g.order.resize(n);
  std::vector<int64_t> fill(g.starts.begin(), g.starts.end() - 1);
  for (int64_t i = 0; i < n; ++i) g.order[fill[lab[i]]++] = i;
  return g;
}

// What a kernel needs to run the rows of one expert for some tokens.
template <typename View>
struct Job {
  View view;
  Tokens tokens;
};

// Rows are cheap and many: parallelise over (group, row) pairs in one region, so small groups
// of a prefill still use every thread without one parallel region per expert.
template <typename View, typename Kernel>
void run_sparse(const std::vector<Job<View>>& jobs, int64_t rows, Kernel kernel) {
  if (jobs.empty()) return;
  const int64_t total = rows * static_cast<int64_t>(jobs.size());
  at::parallel_for(0, total, 16, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t j = begin / rows, r0 = begin % rows;
      const int64_t r1 = std::min(rows, r0 + (end - begin));
      kernel(jobs[j].view, r0, r1, jobs[j].tokens);
      begin += r1 - r0;
    }
  });
}

// y[tokens] = x[tokens] @ W^T by GEMM on tiles of W unpacked to fp32: a tile stays in L2, where
// the whole fp32 matrix (3.5 MB for 1536x576) would be written out to L3 or DRAM and read back.
// With `half` (bfloat16 inputs and bfloat16 values) the tile is turned into bfloat16, exactly,
// and the GEMM runs in bfloat16 with float32 accumulation, as torch's own bfloat16 linear does
// (AMX or AVX512-BF16 where the CPU has them); its outputs are rounded to bfloat16 once.
template <typename View>
using HalfUnpack = void (*)(const View&, int64_t, int64_t, uint16_t*);

// Copy a GEMM's [tokens, r1 - r0] float32 result into y's rows of those tokens, columns [r0, r1).
void scatter_rows(const torch::Tensor& part, const Tokens& t, int64_t r0, int64_t r1) {
  const float* src = part.data_ptr<float>();
  for (int64_t i = 0; i < t.count; ++i)
    std::copy(src + i * (r1 - r0), src + (i + 1) * (r1 - r0), t.y + token_at(t, i) * t.ldy + r0);
}

// The whole weight unpacked straight to a bfloat16 [rows, in] matrix, rows over threads.
template <typename View>
torch::Tensor unpack_to_bf16(const View& view, int64_t rows, HalfUnpack<View> unpack_half) {
  torch::Tensor w = torch::empty({rows, view.in}, torch::kBFloat16);
  uint16_t* d = reinterpret_cast<uint16_t*>(w.data_ptr<at::BFloat16>());
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) { unpack_half(view, r0, r1, d + r0 * view.in); });
  return w;
}

template <typename View, typename Unpack>
void run_dense(const View& view, int64_t rows, const torch::Tensor& x, torch::Tensor& y, const Tokens& t,
               Unpack unpack, bool half, HalfUnpack<View> unpack_half = nullptr) {
  torch::Tensor xs = x;
  if (t.tok != nullptr)
    xs = x.index_select(0, torch::from_blob(const_cast<int64_t*>(t.tok), {t.count}, torch::kLong));
  if (half && unpack_half != nullptr) {  // bfloat16 values straight into a bfloat16 weight, one GEMM
    scatter_rows(torch::mm(xs, unpack_to_bf16(view, rows, unpack_half).t()).to(torch::kFloat).contiguous(), t, 0,
                 rows);
    return;
  }
  // At least kTileMinRows rows: a GEMM only 40 outputs wide (1536 inputs) ran 1.4x slower. A bfloat16
  // GEMM re-lays out its weight operand on every call: one call for the whole weight costs least.
  const int64_t tile_rows =
      half ? rows : std::min(rows, std::max<int64_t>(kTileMinRows, kTileBytes / (4 * view.in) / 8 * 8));
  const int64_t tiles = (rows + tile_rows - 1) / tile_rows;
  at::parallel_for(0, tiles, 1, [&](int64_t b0, int64_t b1) {
    torch::Tensor tile = torch::empty({tile_rows, view.in}, torch::kFloat);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * tile_rows, r1 = std::min(rows, r0 + tile_rows);
      unpack(view, r0, r1, tile.data_ptr<float>());
      torch::Tensor w = tile.narrow(0, 0, r1 - r0);
      if (half) w = w.to(torch::kBFloat16);
      scatter_rows(torch::mm(xs, w.t()).to(torch::kFloat).contiguous(), t, r0, r1);
    }
  });
}

void add_bias(torch::Tensor& y, const c10::optional<torch::Tensor>& bias) {
  if (!bias) return;
  const float* b = bias->data_ptr<float>();
  float* out = y.data_ptr<float>();
  const int64_t rows = y.size(0), cols = y.size(1);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) out[i * cols + c] += b[c];
}

// The shared driver: `make_view(e)` gives expert e's view; kernels and unpack do the rest.
template <typename View, typename MakeView, typename Kernel, typename Unpack>
torch::Tensor routed_matmul(const torch::Tensor& x, const c10::optional<torch::Tensor>& labels, int64_t experts,
                            int64_t rows, int64_t in, const c10::optional<torch::Tensor>& bias, int64_t dense_from,
                            bool value_bf16, MakeView make_view, Kernel kernel, Unpack unpack,
                            Kernel bf16_kernel = nullptr, HalfUnpack<View> unpack_half = nullptr) {
  TORCH_CHECK((x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16) && x.dim() == 2 &&
                  x.size(1) == in,
              "x must be float32 or bfloat16 [tokens, ", in, "], got ", x.scalar_type(), " ", x.sizes());
  check_cpu_contiguous(x, "x");
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->numel() == rows, "bias must be float32 [", rows, "]");
    check_cpu_contiguous(*bias, "bias");
  }
  const int64_t count = x.size(0);
  if (labels) {
    TORCH_CHECK(labels->numel() == count && labels->scalar_type() == torch::kLong && labels->dim() == 1,
                "labels must be int64 [tokens]: one expert per token");
    check_cpu_contiguous(*labels, "labels");
  }
  // bfloat16 inputs with bfloat16 values: the BF16 dot kernel (when given) reads them as they are, and
  // so does the GEMM path for big groups; anything else computes on float32 inputs.
  const bool dense_ok = dense_from > 0;
  const bool half_ok = x.scalar_type() == torch::kBFloat16 && value_bf16;
  if (!labels && !bias && half_ok && unpack_half != nullptr && dense_ok && count >= dense_from) {
    // One weight, every token through its bfloat16 GEMM (a prompt, an eval batch): torch's bfloat16 result
    // is the answer, returned as it is. The float32 output, its copy and the caller's rounding back to
    // bfloat16 gave these very bits, 1.3x a dense bfloat16 linear's time (BENCHMARKS.md, decode).
    TORCH_CHECK(experts == 1, "labels are needed to route tokens over ", experts, " experts");
    return torch::mm(x, unpack_to_bf16(make_view(0), rows, unpack_half).t());
  }
  if (labels && count > kBf16DotTokens && !bias && half_ok && unpack_half != nullptr && dense_ok) {
    // Routed bfloat16 tokens (an expanded model's eval batch or prompt) into a bfloat16 output: an expert's
    // group of dense_from or more tokens is a bfloat16 GEMM whose result goes straight to its rows; the
    // few tokens of the other experts are gathered, run by the sparse kernel in float32 and rounded into
    // theirs. The bits of the float32 output and the caller's rounding, with no float32 copy of every
    // input and output.
    const Groups g = group_by_expert(*labels, experts);
    torch::Tensor out = torch::empty({count, rows}, x.options());
    uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
    std::vector<int64_t> few;  // the tokens of small groups, expert by expert
    std::vector<std::pair<int64_t, int64_t>> few_groups;  // (expert, its first index in `few`)
    for (int64_t e = 0; e < experts; ++e) {
      const int64_t n = g.starts[e + 1] - g.starts[e];
      const int64_t* tok = g.order.data() + g.starts[e];
      if (n == 0) continue;
      if (n < dense_from) {
        few_groups.push_back({e, static_cast<int64_t>(few.size())});
        few.insert(few.end(), tok, tok + n);
        continue;
      }
      const torch::Tensor xs = x.index_select(0, torch::from_blob(const_cast<int64_t*>(tok), {n}, torch::kLong));
      const torch::Tensor r = torch::mm(xs, unpack_to_bf16(make_view(e), rows, unpack_half).t()).contiguous();
      const uint16_t* src = reinterpret_cast<const uint16_t*>(r.data_ptr<at::BFloat16>());
      at::parallel_for(0, n, 64, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) std::copy(src + i * rows, src + (i + 1) * rows, o + tok[i] * rows);
      });
    }
    if (!few.empty()) {
      const int64_t m = static_cast<int64_t>(few.size());
      const torch::Tensor xs =
          x.index_select(0, torch::from_blob(few.data(), {m}, torch::kLong)).to(torch::kFloat).contiguous();
      torch::Tensor ys = torch::empty({m, rows}, x.options().dtype(torch::kFloat));
      std::vector<int64_t> local(m);
      for (int64_t i = 0; i < m; ++i) local[i] = i;
      std::vector<Job<View>> jobs;
      for (size_t j = 0; j < few_groups.size(); ++j) {
        const int64_t first = few_groups[j].second;
        const int64_t last = j + 1 < few_groups.size() ? few_groups[j + 1].second : m;
        jobs.push_back({make_view(few_groups[j].first),
                        Tokens{xs.data_ptr<float>(), in, ys.data_ptr<float>(), rows, local.data() + first, last - first}});
      }
      run_sparse(jobs, rows, kernel);
      const float* src = ys.data_ptr<float>();
      for (int64_t i = 0; i < m; ++i) {
        at::BFloat16* dst = out.data_ptr<at::BFloat16>() + few[i] * rows;
        for (int64_t c = 0; c < rows; ++c) dst[c] = at::BFloat16(src[i * rows + c]);
      }
    }
    return out;
  }
  auto y = torch::empty({count, rows}, x.options().dtype(torch::kFloat));
  if (count == 0) return y;
  // It pays at decode (1536x576 bf16 70%, weights from DRAM: 110 -> 86 us a token), not for blocks of 8
  // tokens, where the dot products, not the expansion, are the work (208 -> 231 us).
  const bool use_dot = half_ok && bf16_kernel != nullptr && count <= kBf16DotTokens;
  if (use_dot) kernel = bf16_kernel;
  const bool need_float = !use_dot || (dense_ok && count >= dense_from);
  const torch::Tensor xf = x.scalar_type() == torch::kFloat || !need_float ? x : x.to(torch::kFloat);
  Tokens all{xf.scalar_type() == torch::kFloat ? xf.data_ptr<float>() : nullptr, in, y.data_ptr<float>(), rows,
             nullptr, count};
  if (half_ok) all.xh = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());

  Groups groups;
  std::vector<std::pair<int64_t, Tokens>> parts;  // (expert, its tokens)
  if (!labels) {
    TORCH_CHECK(experts == 1, "labels are needed to route tokens over ", experts, " experts");
    parts.push_back({0, all});
  } else {
    if (count == 1) {  // decode: one expert, no sorting
      const int64_t e = labels->data_ptr<int64_t>()[0];
      TORCH_CHECK(e >= 0 && e < experts, "label ", e, " is not an expert in [0, ", experts, ")");
      parts.push_back({e, all});
    } else {
      groups = group_by_expert(*labels, experts);
      for (int64_t e = 0; e < experts; ++e) {
        const int64_t n = groups.starts[e + 1] - groups.starts[e];
        if (n == 0) continue;
        Tokens t = all;
        t.tok = groups.order.data() + groups.starts[e];
        t.count = n;
        parts.push_back({e, t});
      }
    }
  }
  std::vector<Job<View>> sparse;
  for (const auto& [e, t] : parts) {
    if (dense_ok && t.count >= dense_from) {
      // Unpacked straight to bfloat16, the bfloat16 GEMM wins from the first group that takes a GEMM;
      // through float32 it pays only from kHalfGemmFrom tokens.
      const bool half = half_ok && (unpack_half != nullptr || t.count >= kHalfGemmFrom);
      run_dense(make_view(e), rows, half ? x : xf, y, t, unpack, half, unpack_half);
    } else {
      sparse.push_back({make_view(e), t});
    }
  }
  run_sparse(sparse, rows, kernel);
  add_bias(y, bias);
  return y;
}

BitmaskView bitmask_view(const torch::Tensor& values, const torch::Tensor& mask, const torch::Tensor& offsets,
                         int64_t in, int64_t rows, int64_t e) {
  const int64_t row_bytes = mask.size(-1);
  return BitmaskView{values.data_ptr(), values.numel(), mask.data_ptr<uint8_t>() + e * rows * row_bytes,
                     offsets.data_ptr<int64_t>() + e * rows, in, row_bytes, value_type(values)};
}

void check_bitmask(const torch::Tensor& values, const torch::Tensor& mask, const torch::Tensor& offsets, int64_t in) {
  check_cpu_contiguous(values, "values");
  check_cpu_contiguous(mask, "mask");
  check_cpu_contiguous(offsets, "row_offsets");
  TORCH_CHECK(mask.scalar_type() == torch::kByte && mask.size(-1) == (in + 7) / 8, "mask must be uint8 [.., ",
              (in + 7) / 8, "]");
  TORCH_CHECK(offsets.scalar_type() == torch::kLong && offsets.numel() == mask.numel() / mask.size(-1) + 1,
              "row_offsets must be int64 [rows + 1]");
  TORCH_CHECK(offsets.data_ptr<int64_t>()[offsets.numel() - 1] == values.numel(),
              "row_offsets end at ", offsets.data_ptr<int64_t>()[offsets.numel() - 1], " but there are ",
              values.numel(), " values");
  value_type(values);
}

NMView nm_view(const torch::Tensor& values, const torch::Tensor& indices, int64_t n, int64_t m, int64_t in,
               int64_t rows, int64_t e) {
  const int64_t per_row = values.size(-1), index_bytes = indices.size(-1);
  const int64_t esize = values.element_size();
  return NMView{static_cast<const char*>(values.data_ptr()) + e * rows * per_row * esize,
                indices.data_ptr<uint8_t>() + e * rows * index_bytes,
                in, n, m, m <= 4 ? 2 : 4, per_row, index_bytes, value_type(values)};
}

void check_nm(const torch::Tensor& values, const torch::Tensor& indices, int64_t n, int64_t m, int64_t in) {
  check_cpu_contiguous(values, "values");
  check_cpu_contiguous(indices, "indices");
  TORCH_CHECK(0 < n && n < m && m <= 16 && in % m == 0, "bad N:M ", n, ":", m, " for in_features ", in);
  const int64_t per_row = in / m * n, bits = m <= 4 ? 2 : 4;
  TORCH_CHECK(values.size(-1) == per_row, "N:M values must have ", per_row, " per row");
  TORCH_CHECK(indices.scalar_type() == torch::kByte && indices.size(-1) == (per_row * bits + 7) / 8 &&
                  indices.numel() / indices.size(-1) == values.numel() / per_row,
              "N:M indices must be uint8 [rows, ", (per_row * bits + 7) / 8, "]");
  value_type(values);
}


}  // namespace

// Instruction sets, as the Python side names them: 0 portable C++, 1 AVX2, 2 AVX-512. A request is
// capped by what this CPU runs.
int isa_level(int64_t requested) {
  if (requested >= 2 && avx512_supported()) return 2;
  if (requested >= 1 && avx2_supported()) return 1;
  return 0;
}

namespace {

template <typename View>
using RowsKernel = void (*)(const View&, int64_t, int64_t, const Tokens&);
template <typename View>
using UnpackKernel = void (*)(const View&, int64_t, int64_t, float*);

RowsKernel<BitmaskView> bitmask_rows(int level) {
  return level == 2 ? bitmask_rows_avx512 : level == 1 ? bitmask_rows_avx2 : bitmask_rows_scalar;
}
UnpackKernel<BitmaskView> bitmask_unpack_kernel(int level) {
  return level == 2 ? bitmask_unpack_avx512 : level == 1 ? bitmask_unpack_avx2 : bitmask_unpack_scalar;
}
// The vector N:M kernels need N to divide 8 (one window per 8 values).
RowsKernel<NMView> nm_rows(int level, int64_t n) {
  if (8 % n != 0) return nm_rows_scalar;
  return level == 2 ? nm_rows_avx512 : level == 1 ? nm_rows_avx2 : nm_rows_scalar;
}
UnpackKernel<NMView> nm_unpack_kernel(int level, int64_t n) {
  return level >= 1 && 8 % n == 0 ? nm_unpack_avx2 : nm_unpack_scalar;
}

}  // namespace

torch::Tensor bitmask_matmul(const torch::Tensor& x, const c10::optional<torch::Tensor>& labels,
                             const torch::Tensor& values, const torch::Tensor& mask, const torch::Tensor& offsets,
                             int64_t experts, int64_t in, const c10::optional<torch::Tensor>& bias,
                             int64_t dense_from, int64_t isa) {
  check_bitmask(values, mask, offsets, in);
  const int64_t total_rows = offsets.numel() - 1;
  TORCH_CHECK(experts > 0 && total_rows % experts == 0, total_rows, " rows do not split into ", experts, " experts");
  const int64_t rows = total_rows / experts;
  const int level = isa_level(isa);
  const bool bf16_dot = level == 2 && avx512bf16_supported();
  return routed_matmul<BitmaskView>(
      x, labels, experts, rows, in, bias, dense_from, values.scalar_type() == torch::kBFloat16,
      [&](int64_t e) { return bitmask_view(values, mask, offsets, in, rows, e); }, bitmask_rows(level),
      bitmask_unpack_kernel(level), bf16_dot ? bitmask_rows_avx512_bf16 : nullptr,
      bf16_dot ? bitmask_unpack_avx512_bf16 : nullptr);
}

torch::Tensor nm_matmul(const torch::Tensor& x, const c10::optional<torch::Tensor>& labels,
                        const torch::Tensor& values, const torch::Tensor& indices, int64_t n, int64_t m,
                        int64_t experts, int64_t in, const c10::optional<torch::Tensor>& bias, int64_t dense_from,
                        int64_t isa) {
  check_nm(values, indices, n, m, in);
  const int64_t total_rows = values.numel() / values.size(-1);
  TORCH_CHECK(experts > 0 && total_rows % experts == 0, total_rows, " rows do not split into ", experts, " experts");
  const int64_t rows = total_rows / experts;
  const int level = isa_level(isa);
  return routed_matmul<NMView>(
      x, labels, experts, rows, in, bias, dense_from, values.scalar_type() == torch::kBFloat16,
      [&](int64_t e) { return nm_view(values, indices, n, m, in, rows, e); }, nm_rows(level, n),
      nm_unpack_kernel(level, n), RowsKernel<NMView>{nullptr},
      values.scalar_type() == torch::kBFloat16 ? nm_unpack_bf16 : nullptr);
}

torch::Tensor bitmask_unpack(const torch::Tensor& values, const torch::Tensor& mask, const torch::Tensor& offsets,
                             int64_t in, int64_t isa) {
  check_bitmask(values, mask, offsets, in);
  const int64_t rows = offsets.numel() - 1;
  auto dense = torch::empty({rows, in}, torch::kFloat);
  const BitmaskView view = bitmask_view(values, mask, offsets, in, rows, 0);
  const auto unpack = bitmask_unpack_kernel(isa_level(isa));
  float* d = dense.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) { unpack(view, r0, r1, d + r0 * in); });
  return dense;
}

torch::Tensor nm_unpack(const torch::Tensor& values, const torch::Tensor& indices, int64_t n, int64_t m, int64_t in,
                        int64_t isa) {
  check_nm(values, indices, n, m, in);
  const int64_t rows = values.numel() / values.size(-1);
  auto dense = torch::empty({rows, in}, torch::kFloat);
  const NMView view = nm_view(values, indices, n, m, in, rows, 0);
  const auto unpack = nm_unpack_kernel(isa_level(isa), n);
  float* d = dense.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) { unpack(view, r0, r1, d + r0 * in); });
  return dense;
}

// y = x @ W^T (+ bias) for a dense bfloat16 W and one or two bfloat16 tokens, by the AVX512-BF16 dot
// product; float32 out. The caller checks bf16_dense_supported() (ops.py falls back to torch).
torch::Tensor dense_bf16_matvec(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(avx512bf16_supported(), "this CPU has no AVX512-BF16");
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && w.scalar_type() == torch::kBFloat16,
              "x and W must be bfloat16");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "x must be [tokens, ", w.size(1), "]");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 2, "1 or 2 tokens, got ", x.size(0));
  check_cpu_contiguous(x, "x");
  check_cpu_contiguous(w, "W");
  const int64_t tokens = x.size(0), rows = w.size(0), in = w.size(1);
  auto y = torch::empty({tokens, rows}, torch::kFloat);
  const uint16_t* xs[2];
  float* ys[2];
  for (int64_t t = 0; t < tokens; ++t) {
    xs[t] = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()) + t * in;
    ys[t] = y.data_ptr<float>() + t * rows;
  }
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  at::parallel_for(0, (rows + 3) / 4, 16, [&](int64_t b0, int64_t b1) {
    dense_rows_avx512_bf16(wp, in, b0 * 4, std::min(rows, b1 * 4), xs, ys, static_cast<int>(tokens));
  });
  if (bias) {
    TORCH_CHECK(bias->numel() == rows, "bias must have ", rows, " values");
    y.add_(bias->to(torch::kFloat));
  }
  return y;
}

namespace {

// bias[j] + x . matrix[:, j] for every token and j (a folded router's scores) into `out` [tokens, k],
// each sum in input order (step.h's accumulate_columns: the decode step scores the same way).
const float* folded_scores(const torch::Tensor& x_in, const torch::Tensor& bias, const torch::Tensor& matrix,
                           int64_t isa, torch::Tensor& out) {
  TORCH_CHECK(x_in.dim() == 2, "x must be [tokens, in]");
  const torch::Tensor x = (x_in.scalar_type() == torch::kFloat ? x_in : x_in.to(torch::kFloat)).contiguous();
  TORCH_CHECK(matrix.scalar_type() == torch::kFloat && matrix.dim() == 2 && matrix.size(0) == x.size(1),
              "matrix must be float32 [in, k]");
  TORCH_CHECK(bias.scalar_type() == torch::kFloat && bias.numel() == matrix.size(1), "bias must be float32 [k]");
  check_cpu_contiguous(x, "x");
  check_cpu_contiguous(matrix, "matrix");
  check_cpu_contiguous(bias, "bias");
  const int64_t tokens = x.size(0), in = x.size(1), k = matrix.size(1);
  const int level = isa_level(isa);
  out = torch::empty({tokens, k}, torch::kFloat);
  float* scores = out.data_ptr<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = scores + t * k;
    std::copy(bias.data_ptr<float>(), bias.data_ptr<float>() + k, row);
    accumulate_columns(x.data_ptr<float>() + t * in, nullptr, in, matrix.data_ptr<float>(), k, row, level);
  }
  return scores;
}

}  // namespace

// A folded router's scores [tokens, k] (for tests and inspection; `route` takes their argmin).
torch::Tensor route_scores(const torch::Tensor& x, const torch::Tensor& bias, const torch::Tensor& matrix,
                           int64_t isa) {
  torch::Tensor out;
  folded_scores(x, bias, matrix, isa, out);
  return out;
}

// Nearest centroid for a few tokens: argmin_j (bias[j] + x . matrix[:, j]), the router's folded
// scoring (expand/router.py), in one call instead of five torch ops. Ties go to the lowest j, as
// torch's argmin. Meant for decode; a batch of many tokens is better served by torch's GEMM.
torch::Tensor route(const torch::Tensor& x, const torch::Tensor& bias, const torch::Tensor& matrix, int64_t isa) {
  torch::Tensor scores;
  const float* s = folded_scores(x, bias, matrix, isa, scores);
  const int64_t tokens = scores.size(0), k = scores.size(1);
  auto labels = torch::empty({tokens}, torch::kLong);
  int64_t* out = labels.data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = s + t * k;
    int64_t best = 0;
    for (int64_t j = 1; j < k; ++j)
      if (row[j] < row[best]) best = j;
    out[t] = best;
  }
  return labels;
}

void register_decode_step(pybind11::module_& m);  // decode_step.cpp

}  // namespace se

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sparse_expansion compressed-weight kernels (see sparse_expansion/kernels)";
  m.def("simd_supported", &se::avx2_supported, "whether this CPU runs the AVX2/FMA/F16C kernels");
  m.def("isa_level", &se::isa_level, "the instruction set a request runs with here: 0 C++, 1 AVX2, 2 AVX-512");
  m.def("bitmask_matmul", &se::bitmask_matmul, "y = x @ W^T for bitmask W (one or routed experts)");
  m.def("nm_matmul", &se::nm_matmul, "y = x @ W^T for N:M W (one or routed experts)");
  m.def("bf16_dense_supported", &se::avx512bf16_supported, "whether dense_bf16_matvec runs on this CPU");
  m.def("dense_bf16_matvec", &se::dense_bf16_matvec, "y = x @ W^T for dense bfloat16 W and 1-2 bfloat16 tokens");
  m.def("route", &se::route, "argmin over k of bias + x @ matrix, per token (a folded router)");
  m.def("route_scores", &se::route_scores, "bias + x @ matrix per token, each sum in input order (a folded router)");
  m.def("bitmask_unpack", &se::bitmask_unpack, "bitmask W -> dense fp32 [rows, in]");
  m.def("nm_unpack", &se::nm_unpack, "N:M W -> dense fp32 [rows, in]");
  m.def("quant_matmul", &se::quant_matmul, "y = x @ W^T for int8 / int4 W (dense, bitmask, N:M; a few tokens)");
  m.def("quant_decode_matmul", &se::quant_decode_matmul,
        "as quant_matmul, in the decode arithmetic (int8 inputs, VNNI) where it applies (quant.h)");
  m.def("act8_vector_supported", &se::act8_vector_supported, "whether the act8 kernels run vector code here");
  m.def("act8_layout", &se::act8_layout_tensors,
        "an int4 bitmask's codes laid out for the act8 vector kernel ([] where it takes none; quant.h Act8Layout)");
  m.def("quant_unpack", &se::quant_unpack, "int8 / int4 W (one expert) -> de-quantized dense fp32 [rows, in]");
  m.def("quantize_bitmask", &se::quantize_bitmask,
        "float bitmask values -> int8 / int4 codes on a min/max grid per row and group (formats.quantize_bitmask)");
  se::register_decode_step(m);
}
