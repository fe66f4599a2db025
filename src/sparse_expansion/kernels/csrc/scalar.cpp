// Portable kernels (any CPU the compiler targets): correct everywhere, fast nowhere in particular.
// Each row is first turned into (column, value) pairs, then dotted with every token.
#include <cstring>
#include <vector>

#include "sparse.h"

namespace se {
namespace {

float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// IEEE half -> float, exact for every input (subnormals, infinities, NaN).
float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    exp = 113;  // a subnormal is 2^-14 * 0.man: shift until the implicit bit appears
    while (!(man & 0x400u)) {
      man <<= 1;
      --exp;
    }
    return bits_to_float(sign | (exp << 23) | ((man & 0x3ffu) << 13));
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

float value_at(const void* values, int vtype, int64_t i) {
  switch (vtype) {
    case kF16: return half_to_float(static_cast<const uint16_t*>(values)[i]);
    case kBF16: return bits_to_float(uint32_t(static_cast<const uint16_t*>(values)[i]) << 16);
    default: return static_cast<const float*>(values)[i];
  }
}

// The non-zero columns and values of one row, in ascending column order.
struct RowPairs {
  std::vector<int64_t> cols;
  std::vector<float> vals;
  void clear() {
    cols.clear();
    vals.clear();
  }
  void add(int64_t c, float v) {
    cols.push_back(c);
    vals.push_back(v);
  }
};

void bitmask_row_pairs(const BitmaskView& w, int64_t r, RowPairs& out) {
  out.clear();
  const uint8_t* mask = w.mask + r * w.row_bytes;
  int64_t p = w.offsets[r];
  for (int64_t b = 0; b < w.row_bytes; ++b) {
    for (unsigned bits = mask[b]; bits; bits &= bits - 1) {
      out.add(b * 8 + __builtin_ctz(bits), value_at(w.values, w.vtype, p++));
    }
  }
}

void nm_row_pairs(const NMView& w, int64_t r, RowPairs& out) {
  out.clear();
  const uint8_t* index = w.index + r * w.index_bytes;
  const unsigned field = (1u << w.bits) - 1;
  int64_t j = 0;  // value number in the row; no divisions in the loop (they dominated it)
  for (int64_t group = 0; group < w.in; group += w.m) {
    for (int64_t i = 0; i < w.n; ++i, ++j) {
      const int64_t bit = j * w.bits;
      const unsigned pos = (index[bit >> 3] >> (bit & 7)) & field;
      out.add(group + pos, value_at(w.values, w.vtype, r * w.per_row + j));
    }
  }
}

void dot_tokens(const RowPairs& row, int64_t r, const Tokens& t) {
  const size_t nnz = row.cols.size();
  for (int64_t i = 0; i < t.count; ++i) {
    const int64_t tok = token_at(t, i);
    const float* x = t.x + tok * t.ldx;
    float acc = 0.f;
    for (size_t j = 0; j < nnz; ++j) acc += row.vals[j] * x[row.cols[j]];
    t.y[tok * t.ldy + r] = acc;
  }
}

void scatter_row(const RowPairs& row, int64_t in, float* dense) {
  std::memset(dense, 0, sizeof(float) * in);
  for (size_t j = 0; j < row.cols.size(); ++j) dense[row.cols[j]] = row.vals[j];
}

}  // namespace

void bitmask_rows_scalar(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t) {
  RowPairs row;
  for (int64_t r = r0; r < r1; ++r) {
    bitmask_row_pairs(w, r, row);
    dot_tokens(row, r, t);
  }
}

void nm_rows_scalar(const NMView& w, int64_t r0, int64_t r1, const Tokens& t) {
  RowPairs row;
  for (int64_t r = r0; r < r1; ++r) {
    nm_row_pairs(w, r, row);
    dot_tokens(row, r, t);
  }
}

void bitmask_unpack_scalar(const BitmaskView& w, int64_t r0, int64_t r1, float* dense) {
  RowPairs row;
  for (int64_t r = r0; r < r1; ++r) {
    bitmask_row_pairs(w, r, row);
    scatter_row(row, w.in, dense + (r - r0) * w.in);
  }
}

void nm_unpack_scalar(const NMView& w, int64_t r0, int64_t r1, float* dense) {
  RowPairs row;
  for (int64_t r = r0; r < r1; ++r) {
    nm_row_pairs(w, r, row);
    scatter_row(row, w.in, dense + (r - r0) * w.in);
  }
}

void nm_unpack_bf16(const NMView& w, int64_t r0, int64_t r1, uint16_t* dense) {
  const unsigned field = (1u << w.bits) - 1;
  const uint16_t* values = static_cast<const uint16_t*>(w.values);
  for (int64_t r = r0; r < r1; ++r) {
    uint16_t* out = dense + (r - r0) * w.in;
    std::memset(out, 0, sizeof(uint16_t) * w.in);
    const uint8_t* index = w.index + r * w.index_bytes;
    const uint16_t* v = values + r * w.per_row;
    int64_t j = 0;
    for (int64_t group = 0; group < w.in; group += w.m)
      for (int64_t i = 0; i < w.n; ++i, ++j) {
        const int64_t bit = j * w.bits;
        out[group + ((index[bit >> 3] >> (bit & 7)) & field)] = v[j];
      }
  }
}

float value_f32(const void* values, int vtype, int64_t i) { return value_at(values, vtype, i); }

}  // namespace se
