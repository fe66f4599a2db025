// Torch entry point of the quantized kernels (quant.h): check the tensors against each other, build one
// view per expert, and run each token's rows over threads (at::parallel_for). Decode-sized calls only:
// ops.py sends more tokens to torch's GEMM of the de-quantized weight.
#include <torch/extension.h>

#include <algorithm>
#include <string>
#include <vector>

#include "quant.h"

namespace se {

int isa_level(int64_t requested);  // ops.cpp

namespace {

void check_cpu_contiguous(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

int64_t code_bytes(int64_t count, int64_t bits) { return (count * bits + 7) / 8; }

}  // namespace

namespace {

// The checked view of the whole weight (expert 0's rows; `for_expert` moves it) and its rows per expert.
struct Checked {
  QuantView base;
  int64_t rows, groups;
};

Checked check_quant(const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                    const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                    int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in);

QuantView for_expert(const Checked& w, const torch::Tensor& index, const torch::Tensor& offsets,
                     const torch::Tensor& scales, const torch::Tensor& zeros, int64_t e) {
  QuantView view = w.base;
  const int64_t rows = w.rows, groups = w.groups;
  view.scales = scales.data_ptr<float>() + e * rows * groups;
  view.zeros = zeros.data_ptr<uint8_t>() + e * rows * groups;
  if (view.format == kQBitmask) {
    view.index = index.data_ptr<uint8_t>() + e * rows * view.index_bytes;
    view.offsets = offsets.data_ptr<int64_t>() + e * rows;
  } else {
    view.codes = w.base.codes + e * rows * view.code_row_bytes;
    view.codes_bytes = rows * view.code_row_bytes;
    if (view.format == kQNM) view.index = index.data_ptr<uint8_t>() + e * rows * view.index_bytes;
  }
  return view;
}

}  // namespace

// Expert `expert` (or the whole weight when experts == 1) de-quantized to a float32 [rows, in] tensor.
torch::Tensor quant_unpack(const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                           const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                           int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                           int64_t expert) {
  const Checked w = check_quant(format, values, index, offsets, scales, zeros, bits, group_size, n, m, experts, in);
  TORCH_CHECK(expert >= 0 && expert < experts, "expert ", expert, " is not in [0, ", experts, ")");
  const QuantView view = for_expert(w, index, offsets, scales, zeros, expert);
  auto dense = torch::empty({w.rows, in}, torch::kFloat);
  float* d = dense.data_ptr<float>();
  at::parallel_for(0, w.rows, 16, [&](int64_t r0, int64_t r1) { quant_unpack_rows(view, r0, r1, d + r0 * in); });
  return dense;
}

namespace {

Checked check_quant(const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                    const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                    int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in) {
  TORCH_CHECK(bits == 8 || bits == 4, "quantized values are 8 or 4 bits, got ", bits);
  TORCH_CHECK(group_size >= 1, "group_size must be positive");
  for (const auto& [t, name] : {std::pair{&values, "values"}, {&index, "index"}, {&offsets, "row_offsets"},
                                {&scales, "scales"}, {&zeros, "zeros"}})
    check_cpu_contiguous(*t, name);
  TORCH_CHECK(values.scalar_type() == torch::kByte && zeros.scalar_type() == torch::kByte &&
                  scales.scalar_type() == torch::kFloat && index.scalar_type() == torch::kByte,
              "codes, zeros and index must be uint8, scales float32");
  const int64_t groups = (in + group_size - 1) / group_size;
  TORCH_CHECK(scales.dim() >= 1 && scales.size(-1) == groups && zeros.sizes() == scales.sizes(),
              "scales and zeros must be [rows, ", groups, "]");
  const int64_t total_rows = scales.numel() / groups;
  TORCH_CHECK(experts > 0 && total_rows % experts == 0, total_rows, " rows do not split into ", experts, " experts");
  const int64_t rows = total_rows / experts;

  QuantView base{};
  base.bits = static_cast<int>(bits);
  base.codes = values.data_ptr<uint8_t>();
  base.codes_bytes = values.numel();
  base.in = in;
  base.groups = groups;
  base.group_size = group_size;
  if (format == "dense") {
    base.format = kQDense;
    base.code_row_bytes = code_bytes(in, bits);
    TORCH_CHECK(values.numel() == total_rows * base.code_row_bytes, "dense codes must be [rows, ",
                base.code_row_bytes, "]");
  } else if (format == "bitmask") {
    base.format = kQBitmask;
    base.index_bytes = (in + 7) / 8;
    TORCH_CHECK(index.numel() == total_rows * base.index_bytes, "mask must be uint8 [rows, ", base.index_bytes, "]");
    TORCH_CHECK(offsets.scalar_type() == torch::kLong && offsets.numel() == total_rows + 1,
                "row_offsets must be int64 [rows + 1]");
    const int64_t stored = offsets.data_ptr<int64_t>()[total_rows];
    TORCH_CHECK(code_bytes(stored, bits) == values.numel(), "row_offsets end at ", stored, " codes but there are ",
                values.numel(), " bytes of them");
  } else {
    TORCH_CHECK(0 < n && n < m && m <= 16 && in % m == 0, "bad N:M ", n, ":", m, " for in_features ", in);
    base.format = kQNM;
    base.n = n;
    base.m = m;
    base.index_bits = m <= 4 ? 2 : 4;
    base.per_row = in / m * n;
    base.code_row_bytes = code_bytes(base.per_row, bits);
    base.index_bytes = (base.per_row * base.index_bits + 7) / 8;
    TORCH_CHECK(values.numel() == total_rows * base.code_row_bytes, "N:M codes must be [rows, ", base.code_row_bytes,
                "]");
    TORCH_CHECK(index.numel() == total_rows * base.index_bytes, "N:M indices must be [rows, ", base.index_bytes, "]");
  }
  return Checked{base, rows, groups};
}

}  // namespace

namespace {

// Both entries below: `decode` picks quant_rows_decode (the act8 arithmetic where it applies) over the
// exact quant_rows.
torch::Tensor quant_matmul_impl(const torch::Tensor& x, const c10::optional<torch::Tensor>& labels,
                                const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                                const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                                int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                                const c10::optional<torch::Tensor>& bias, int64_t isa, bool decode,
                                const std::vector<torch::Tensor>& layout) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.dim() == 2 && x.size(1) == in, "x must be float32 [tokens, ",
              in, "]");
  check_cpu_contiguous(x, "x");
  const Checked w = check_quant(format, values, index, offsets, scales, zeros, bits, group_size, n, m, experts, in);
  const int64_t rows = w.rows;
  const int64_t count = x.size(0);
  const int64_t* lab = nullptr;
  if (labels) {
    TORCH_CHECK(labels->scalar_type() == torch::kLong && labels->numel() == count, "labels must be int64 [tokens]");
    check_cpu_contiguous(*labels, "labels");
    lab = labels->data_ptr<int64_t>();
  } else {
    TORCH_CHECK(experts == 1, "labels are needed to route tokens over ", experts, " experts");
  }
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->numel() == rows, "bias must be float32 [", rows, "]");
    check_cpu_contiguous(*bias, "bias");
  }
  auto y = torch::empty({count, rows}, x.options());
  const int level = isa_level(isa);
  const bool with_layout = decode && layout.size() == 2 && act8_layout_applies(w.base, level);
  if (with_layout) {
    const torch::Tensor &codes = layout[0], &starts = layout[1];
    check_cpu_contiguous(codes, "layout codes");
    check_cpu_contiguous(starts, "layout offsets");
    TORCH_CHECK(codes.scalar_type() == torch::kByte && starts.scalar_type() == torch::kLong &&
                    starts.numel() == experts * rows + 1 &&
                    codes.numel() == starts.data_ptr<int64_t>()[experts * rows] + 32,
                "the act8 layout does not fit this weight (build it with act8_layout)");
  }
  for (int64_t t = 0; t < count; ++t) {
    const int64_t e = lab ? lab[t] : 0;
    TORCH_CHECK(e >= 0 && e < experts, "label ", e, " is not an expert in [0, ", experts, ")");
    QuantView view = for_expert(w, index, offsets, scales, zeros, e);
    if (with_layout) {
      view.chunk_codes = layout[0].data_ptr<uint8_t>();
      view.chunk_offsets = layout[1].data_ptr<int64_t>() + e * rows;
    }
    const float* xt = x.data_ptr<float>() + t * in;
    float* yt = y.data_ptr<float>() + t * rows;
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      if (decode)
        quant_rows_decode(view, r0, r1, xt, yt, level);
      else
        quant_rows(view, r0, r1, xt, yt, level);
    });
    if (bias) {
      const float* b = bias->data_ptr<float>();
      for (int64_t r = 0; r < rows; ++r) yt[r] += b[r];
    }
  }
  return y;
}

}  // namespace

torch::Tensor quant_matmul(const torch::Tensor& x, const c10::optional<torch::Tensor>& labels,
                           const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                           const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                           int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                           const c10::optional<torch::Tensor>& bias, int64_t isa) {
  return quant_matmul_impl(x, labels, format, values, index, offsets, scales, zeros, bits, group_size, n, m, experts,
                           in, bias, isa, false, {});
}

torch::Tensor quant_decode_matmul(const torch::Tensor& x, const c10::optional<torch::Tensor>& labels,
                                  const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                                  const torch::Tensor& offsets, const torch::Tensor& scales,
                                  const torch::Tensor& zeros, int64_t bits, int64_t group_size, int64_t n, int64_t m,
                                  int64_t experts, int64_t in, const c10::optional<torch::Tensor>& bias, int64_t isa,
                                  const std::vector<torch::Tensor>& layout) {
  return quant_matmul_impl(x, labels, format, values, index, offsets, scales, zeros, bits, group_size, n, m, experts,
                           in, bias, isa, true, layout);
}

// The Act8Layout of a whole int4 bitmask weight (every expert's rows, in order) as [codes uint8, offsets int64
// [rows + 1]], for quant_decode_matmul; an empty list where the act8 vector kernel does not take one.
std::vector<torch::Tensor> act8_layout_tensors(const std::string& format, const torch::Tensor& values,
                                               const torch::Tensor& index, const torch::Tensor& offsets,
                                               const torch::Tensor& scales, const torch::Tensor& zeros, int64_t bits,
                                               int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                                               int64_t isa) {
  const Checked w = check_quant(format, values, index, offsets, scales, zeros, bits, group_size, n, m, experts, in);
  if (!act8_layout_applies(w.base, isa_level(isa))) return {};
  QuantView all = for_expert(w, index, offsets, scales, zeros, 0);
  Act8Layout layout;
  act8_layout(all, experts * w.rows, layout);
  auto codes = torch::empty({static_cast<int64_t>(layout.codes.size())}, torch::kByte);
  auto starts = torch::empty({static_cast<int64_t>(layout.offsets.size())}, torch::kLong);
  std::copy(layout.codes.begin(), layout.codes.end(), codes.data_ptr<uint8_t>());
  std::copy(layout.offsets.begin(), layout.offsets.end(), starts.data_ptr<int64_t>());
  return {codes, starts};
}

// The checked view of expert `expert` of a quantized weight: what the decode step keeps per linear.
QuantView quant_view(const std::string& format, const torch::Tensor& values, const torch::Tensor& index,
                     const torch::Tensor& offsets, const torch::Tensor& scales, const torch::Tensor& zeros,
                     int64_t bits, int64_t group_size, int64_t n, int64_t m, int64_t experts, int64_t in,
                     int64_t expert, int64_t* rows) {
  const Checked w = check_quant(format, values, index, offsets, scales, zeros, bits, group_size, n, m, experts, in);
  TORCH_CHECK(expert >= 0 && expert < experts, "expert ", expert, " is not in [0, ", experts, ")");
  *rows = w.rows;
  return for_expert(w, index, offsets, scales, zeros, expert);
}

}  // namespace se
