// Quantized values (int8, int4) in the compressed formats (formats.py): plain C++ views and kernels,
// no torch, so a C++ decode step can call them directly. quant_torch.cpp is the torch entry point.
//
// Arithmetic, the same on every C++ path (scalar and AVX-512 agree bit for bit): a code c in column j
// of row r is de-quantized to the float32 w = float(c - zero) * scale of its group (one rounding: the
// value formats.py's `decompress` gives); then p = w * x[j] (rounded) is added (rounded) to one of 16
// float32 partial sums, which starts at +0.0. The partial sum a value goes to is its column mod 16
// (bitmask, dense) or its index in the row mod 16 (N:M), values in increasing order; a bitmask adds
// nothing for the weights it does not store. The 16 sums are then added as a fixed tree: s[l] +=
// s[l + 8], then s[l] += s[l + 4], s[l] += s[l + 2], and the result is s[0] + s[1]. No fused
// multiply-add, so a CPU without FMA computes the same bits.
#pragma once

#include <cstdint>

namespace se {

enum QuantFormat : int { kQDense = 0, kQBitmask = 1, kQNM = 2 };

// The rows of one [out, in] weight (one expert of a stacked one): every pointer already at its first
// row, except `codes` of a bitmask, which is the whole buffer that the (absolute) offsets index.
struct QuantView {
  int format;
  int bits;                 // 8 or 4
  const uint8_t* codes;     // uint8 codes; int4: two a byte, low nibble first
  int64_t codes_bytes;      // bytes readable from `codes` (a kernel never reads past them)
  int64_t code_row_bytes;   // dense and N:M: bytes from one row's codes to the next
  const uint8_t* index;     // bitmask: mask [rows, index_bytes]; N:M: positions [rows, index_bytes]
  int64_t index_bytes;
  const int64_t* offsets;   // bitmask: [rows + 1] code numbers where each row starts
  const float* scales;      // [rows, groups]
  const uint8_t* zeros;     // [rows, groups]
  int64_t in, groups, group_size;
  int64_t n, m, index_bits, per_row;  // N:M: values per row = in / m * n
};

// y[r] = W[r, :] . x for rows [r0, r1) of the view, one token (float32 x [in], y indexed by row).
void quant_rows_scalar(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y);
// The AVX-512 (F, BW, VL, VBMI2, BMI2) version; callable only when avx512_supported(). Group sizes that
// are not multiples of 16 (32 for N:M) and N:M shapes other than 16 values per 32 columns run the
// scalar loops (the same bits).
void quant_rows_avx512(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y);
// Either, by instruction-set level (ops.cpp's isa_level: 2 AVX-512, else scalar).
void quant_rows(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y, int level);

// dense[r - r0, :] = W[r, :] de-quantized to float32 (quant.h's values, 0.0 where a bitmask stores
// nothing), rows [r0, r1), rows `in` floats apart: the GEMM path's first step for many tokens.
void quant_unpack_rows(const QuantView& w, int64_t r0, int64_t r1, float* dense);

// The fixed reduction tree of the 16 partial sums (the order the header describes).
inline float quant_tree_sum(const float* s16) {
  float s[16];
  for (int l = 0; l < 16; ++l) s[l] = s16[l];
  for (int l = 0; l < 8; ++l) s[l] = s[l] + s[l + 8];
  for (int l = 0; l < 4; ++l) s[l] = s[l] + s[l + 4];
  for (int l = 0; l < 2; ++l) s[l] = s[l] + s[l + 2];
  return s[0] + s[1];
}

// Code number i of a code stream (no bounds check).
inline unsigned quant_code(const uint8_t* codes, int bits, int64_t i) {
  return bits == 8 ? codes[i] : (codes[i >> 1] >> ((i & 1) * 4)) & 15u;
}

}  // namespace se
