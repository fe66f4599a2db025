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

// Round half to even, for |v| <= 2^22: adding 1.5 * 2^23 leaves no fraction bits, and the default rounding
// mode rounds the sum as nearbyint rounds v (the magic number is even). Without SSE4.1 in the baseline
// flags, std::nearbyint is a libm call; the grids' quotients are at most 2^bits in size.
inline float round_half_even(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

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

// Float bitmask values rounded onto a min/max grid per row and group of `group_size` columns: formats.py's
// quantize_bitmask (the definition) in one pass over the stored values, rows over threads. Each group's grid
// spans min(w, 0)..max(w, 0) of its stored values ([-1, 1] when all are 0): scale = (hi - lo) / maxq,
// zero = round(-lo / scale); a value's code is clamp(round(w / scale) + zero, 0, maxq) (an exact 0 takes the
// zero point); a value whose code is the zero point de-quantizes to 0 and leaves the mask. Float32 throughout,
// rounding half to even (round_half_even), as torch computes the same: the codes are bit for bit torch's.
// values [nnz] float32, mask [rows, ceil(cols / 8)] uint8, offsets [rows + 1] int64 ->
// {codes packed (int4: two a byte, low nibble first), mask, offsets, scales [rows, groups], zeros uint8}.
std::vector<torch::Tensor> quantize_bitmask(const torch::Tensor& values, const torch::Tensor& mask,
                                            const torch::Tensor& offsets, int64_t cols, int64_t bits,
                                            int64_t group_size) {
  check_cpu_contiguous(values, "values");
  check_cpu_contiguous(mask, "mask");
  check_cpu_contiguous(offsets, "row_offsets");
  TORCH_CHECK(values.scalar_type() == torch::kFloat && values.dim() == 1, "values must be float32 [nnz]");
  TORCH_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8");
  TORCH_CHECK(group_size >= 1 && cols >= 1, "group size and columns must be positive");
  const int64_t bytes = (cols + 7) / 8;
  TORCH_CHECK(mask.scalar_type() == torch::kByte && mask.dim() == 2 && mask.size(1) == bytes,
              "mask must be uint8 [rows, ", bytes, "]");
  const int64_t rows = mask.size(0), groups = (cols + group_size - 1) / group_size;
  TORCH_CHECK(offsets.scalar_type() == torch::kLong && offsets.numel() == rows + 1, "row_offsets must be int64 [",
              rows + 1, "]");
  const int64_t* off = offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[rows] == values.numel(), "row_offsets do not span the values");
  const float maxq = static_cast<float>((1 << bits) - 1);
  auto scales = torch::empty({rows, groups}, torch::kFloat);
  auto zeros = torch::empty({rows, groups}, torch::kByte);
  auto new_mask = torch::empty_like(mask);  // every row written below
  auto kept_codes = torch::empty({values.numel()}, torch::kByte);  // each row's kept codes, at its old start
  auto kept = torch::empty({rows}, torch::kLong);
  const float* v = values.data_ptr<float>();
  const uint8_t* m = mask.data_ptr<uint8_t>();
  float* sc = scales.data_ptr<float>();
  uint8_t *zp = zeros.data_ptr<uint8_t>(), *nm = new_mask.data_ptr<uint8_t>(), *kc = kept_codes.data_ptr<uint8_t>();
  int64_t* kept_n = kept.data_ptr<int64_t>();
  // A row's values are its groups' values one group after another (columns ascend), so each group is a
  // slice of them: its size from the popcount of its mask bytes (groups of whole bytes), else from the bits.
  const bool byte_groups = groups == 1 || group_size % 8 == 0;
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> count(groups);
    std::vector<float> codes;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row_mask = m + r * bytes;
      const float* x = v + off[r];
      const int64_t stored = off[r + 1] - off[r];
      std::fill(count.begin(), count.end(), 0);
      int64_t seen = 0;
      if (groups == 1) {
        for (int64_t b = 0; b < bytes; ++b) seen += __builtin_popcount(row_mask[b]);
        count[0] = seen;
      } else if (byte_groups) {
        const int64_t per = group_size / 8;
        for (int64_t b = 0; b < bytes; ++b) count[b / per] += __builtin_popcount(row_mask[b]);
        for (int64_t g = 0; g < groups; ++g) seen += count[g];
      } else {
        for (int64_t b = 0; b < bytes; ++b)
          for (unsigned left = row_mask[b]; left; left &= left - 1, ++seen)
            ++count[(8 * b + __builtin_ctz(left)) / group_size];
      }
      TORCH_CHECK(seen == stored, "row ", r, ": the mask's popcount disagrees with row_offsets");
      codes.resize(stored);
      bool dropped = false;
      int64_t i = 0;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t n = count[g];
        float l = 0.f, h = 0.f;
        for (int64_t t = i; t < i + n; ++t) {
          l = std::min(l, x[t]);
          h = std::max(h, x[t]);
        }
        if (l == 0.f && h == 0.f) l = -1.f, h = 1.f;
        const float scale = (h - l) / maxq, zero = round_half_even(-l / scale);
        sc[r * groups + g] = scale;
        zp[r * groups + g] = static_cast<uint8_t>(zero);
        for (int64_t t = i; t < i + n; ++t) {
          const float q = std::min(std::max(round_half_even(x[t] / scale) + zero, 0.f), maxq);
          codes[t] = x[t] == 0.f ? zero : q;
          dropped |= codes[t] == zero;
        }
        // the zero point again, to find the dropped ones below (the codes are all that is kept)
        for (int64_t t = i; t < i + n && dropped; ++t) codes[t] = codes[t] == zero ? -1.f : codes[t];
        i += n;
      }
      int64_t kept_here = 0;
      if (!dropped) {
        for (int64_t t = 0; t < stored; ++t) kc[off[r] + t] = static_cast<uint8_t>(codes[t]);
        kept_here = stored;
        std::copy(row_mask, row_mask + bytes, nm + r * bytes);
      } else {  // a value that de-quantizes to 0 leaves the mask: walk the bits to clear its column
        i = 0;
        for (int64_t b = 0; b < bytes; ++b) {
          unsigned out = row_mask[b];
          for (unsigned left = row_mask[b]; left; left &= left - 1, ++i) {
            if (codes[i] < 0.f) {
              out &= ~(1u << __builtin_ctz(left));
            } else {
              kc[off[r] + kept_here++] = static_cast<uint8_t>(codes[i]);
            }
          }
          nm[r * bytes + b] = static_cast<uint8_t>(out);
        }
      }
      kept_n[r] = kept_here;
    }
  });
  auto new_offsets = torch::empty({rows + 1}, torch::kLong);
  int64_t* no = new_offsets.data_ptr<int64_t>();
  no[0] = 0;
  for (int64_t r = 0; r < rows; ++r) no[r + 1] = no[r] + kept_n[r];
  const int64_t total = no[rows];
  auto packed = torch::zeros({code_bytes(total, bits)}, torch::kByte);
  uint8_t* out = packed.data_ptr<uint8_t>();
  if (bits == 8) {
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::copy(kc + off[r], kc + off[r] + kept_n[r], out + no[r]);
    });
  } else {  // code t goes to byte t / 2, low nibble first: rows may share a byte, so gather by output byte
    auto flat = torch::empty({total}, torch::kByte);
    uint8_t* f = flat.data_ptr<uint8_t>();
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) std::copy(kc + off[r], kc + off[r] + kept_n[r], f + no[r]);
    });
    at::parallel_for(0, code_bytes(total, 4), 4096, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t t = 2 * b;
        out[b] = static_cast<uint8_t>(f[t] | (t + 1 < total ? f[t + 1] << 4 : 0));
      }
    });
  }
  return {packed, new_mask, new_offsets, scales, zeros};
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
