// Portable quantized kernels: the arithmetic quant.h defines, one value at a time. Also the reference
// the AVX-512 kernels are tested against bit for bit.
#include "quant.h"

namespace se {
namespace {

inline float dequant(const QuantView& w, unsigned code, int64_t r, int64_t col) {
  const int64_t g = col / w.group_size;
  return float(int(code) - int(w.zeros[r * w.groups + g])) * w.scales[r * w.groups + g];
}

float dense_row(const QuantView& w, int64_t r, const float* x) {
  float s[16] = {};
  const uint8_t* codes = w.codes + r * w.code_row_bytes;
  for (int64_t c = 0; c < w.in; ++c) {
    const float p = dequant(w, quant_code(codes, w.bits, c), r, c) * x[c];
    s[c & 15] = s[c & 15] + p;
  }
  return quant_tree_sum(s);
}

float bitmask_row(const QuantView& w, int64_t r, const float* x) {
  float s[16] = {};
  const uint8_t* mask = w.index + r * w.index_bytes;
  int64_t p = w.offsets[r];
  for (int64_t b = 0; b < w.index_bytes; ++b) {
    for (unsigned bits = mask[b]; bits; bits &= bits - 1) {
      const int64_t c = b * 8 + __builtin_ctz(bits);
      const float prod = dequant(w, quant_code(w.codes, w.bits, p++), r, c) * x[c];
      s[c & 15] = s[c & 15] + prod;
    }
  }
  return quant_tree_sum(s);
}

float nm_row(const QuantView& w, int64_t r, const float* x) {
  float s[16] = {};
  const uint8_t* codes = w.codes + r * w.code_row_bytes;
  const uint8_t* index = w.index + r * w.index_bytes;
  const unsigned field = (1u << w.index_bits) - 1;
  int64_t j = 0;
  for (int64_t group = 0; group < w.in; group += w.m) {
    for (int64_t i = 0; i < w.n; ++i, ++j) {
      const int64_t bit = j * w.index_bits;
      const int64_t c = group + ((index[bit >> 3] >> (bit & 7)) & field);
      const float prod = dequant(w, quant_code(codes, w.bits, j), r, c) * x[c];
      s[j & 15] = s[j & 15] + prod;
    }
  }
  return quant_tree_sum(s);
}

}  // namespace

void quant_rows_scalar(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    y[r] = w.format == kQDense ? dense_row(w, r, x) : w.format == kQBitmask ? bitmask_row(w, r, x) : nm_row(w, r, x);
  }
}

void quant_unpack_rows(const QuantView& w, int64_t r0, int64_t r1, float* dense) {
  for (int64_t r = r0; r < r1; ++r) {
    float* out = dense + (r - r0) * w.in;
    if (w.format == kQDense) {
      const uint8_t* codes = w.codes + r * w.code_row_bytes;
      for (int64_t c = 0; c < w.in; ++c) out[c] = dequant(w, quant_code(codes, w.bits, c), r, c);
      continue;
    }
    for (int64_t c = 0; c < w.in; ++c) out[c] = 0.0f;
    if (w.format == kQBitmask) {
      const uint8_t* mask = w.index + r * w.index_bytes;
      int64_t p = w.offsets[r];
      for (int64_t b = 0; b < w.index_bytes; ++b)
        for (unsigned bits = mask[b]; bits; bits &= bits - 1) {
          const int64_t c = b * 8 + __builtin_ctz(bits);
          out[c] = dequant(w, quant_code(w.codes, w.bits, p++), r, c);
        }
      continue;
    }
    const uint8_t* codes = w.codes + r * w.code_row_bytes;
    const uint8_t* index = w.index + r * w.index_bytes;
    const unsigned field = (1u << w.index_bits) - 1;
    int64_t j = 0;
    for (int64_t group = 0; group < w.in; group += w.m)
      for (int64_t i = 0; i < w.n; ++i, ++j) {
        const int64_t bit = j * w.index_bits;
        const int64_t c = group + ((index[bit >> 3] >> (bit & 7)) & field);
        out[c] = dequant(w, quant_code(codes, w.bits, j), r, c);
      }
  }
}

void quant_rows(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y, int level) {
  if (level >= 2)
    quant_rows_avx512(w, r0, r1, x, y);
  else
    quant_rows_scalar(w, r0, r1, x, y);
}

}  // namespace se
