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
#include <vector>

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
  // int4 bitmask, act8's vector kernel only (Act8Layout): the codes again, each 64-column chunk of a row
  // starting on a fresh byte, and where each row starts there, in bytes. Null elsewhere.
  const uint8_t* chunk_codes = nullptr;
  const int64_t* chunk_offsets = nullptr;
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

// --- the decode arithmetic ("act8"): int8 activations, integer dot products --------------------------
// What the fast decode step (and ops.quant_decode_linear) computes for dense and bitmask weights whose
// group size is 32, a multiple of 64, or the whole row (`quant_act8_applies`); other weights (N:M views, odd
// group sizes) take the exact arithmetic above (Python hands N:M codes over as the bitmask view they stand
// for: formats.nm_as_bitmask). It is llama.cpp's Q8 idea with its own layout:
//   1. The input is quantized once per call in blocks of 32 columns (the last block zero-padded to a
//      multiple of 64 columns): d_b = amax_b / 127, q_j = clamp(nearbyint(x_j * (127 / amax_b)), -127, 127)
//      (d_b = 0 and q = 0 for an all-zero block).
//   2. A row is read 64 columns ("a chunk") at a time; lane l (0..15) of chunk k holds the exact integer
//      v = sum over columns j = 64k + 4l .. 64k + 4l + 3 of c_j q_j, c_j the code of column j (the zero
//      point z_g of its group g where a bitmask stores nothing: weight 0.0).
//   3. acc[l] = fma(float(v), d_b * s_g, acc[l]) (d_b * s_g rounded to float32 first), b = 2k + l / 8.
//   4. The zero points' share, sum_j z_g q_j d_b s_g, depends on the row only through z_g s_g, so it is
//      taken once per row instead of as a second dot product per chunk: with Q_b = sum of q over block b
//      (an exact integer), X_g = the sum over the blocks b of group g, in increasing b, of d_b * Q_b (each
//      product and sum rounded to float32), and p[g mod 16] = fma(float(z_g) * s_g, X_g, p[g mod 16]) over
//      the groups in increasing g (p starts at +0.0), the row's result is quant_tree_sum(acc[l] - p[l]).
//      A grid per row (one group) takes its scale out of the loop: step 3 uses d_b alone, p[0] =
//      fma(float(z), X_0, +0.0), and the result is s * quant_tree_sum(acc[l] - p[l]).
//      A bitmask row that stores nothing gives exactly 0.
// Every step is exact or one defined float32 rounding, so the scalar and the AVX-512 VNNI kernels agree
// bit for bit. Against the exact de-quantized product it differs by the input's rounding, |y - W x| <=
// sum_j |w_j| d_b(j) / 2, plus float32 rounding of the sums (step 4 subtracts sums that hold the zero
// points' products, so that rounding is relative to sum_j z_g s_g |x_j| rather than to |y|).
struct Act8 {
  int64_t in = 0, chunks = 0;
  std::vector<int8_t> q;        // [chunks * 64]
  std::vector<float> lane_d;    // [chunks * 16]: d of each lane's block
  std::vector<int32_t> block_q; // [chunks * 2]: Q_b, the sum of q over block b
};

bool quant_act8_applies(const QuantView& w);
// Step 1 for one input vector x [in]: the portable loops, and the same bits by level (2: AVX-512).
void quant_act8_size(int64_t in, Act8& a);
void quant_act8_prepare(const float* x, int64_t in, Act8& a);
void quant_act8_prepare_level(const float* x, int64_t in, Act8& a, int level);
// Steps 2-3 for rows [r0, r1): y[r] = W[r, :] . x, by level (2: AVX-512 VNNI where the CPU has it).
void quant_rows_act8(const QuantView& w, int64_t r0, int64_t r1, const Act8& a, float* y, int level);
void quant_rows_act8_scalar(const QuantView& w, int64_t r0, int64_t r1, const Act8& a, float* y);
// Whether quant_rows_act8 at level 2 runs vector code on this CPU (AVX-512 F/BW/VL/VBMI/VBMI2/VNNI, BMI2).
bool act8_vector_supported();
// The decode entry: act8 where it applies (x quantized into a per-thread buffer), else quant_rows.
void quant_rows_decode(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y, int level);

// An int4 bitmask's codes laid out for act8's vector kernel: each 64-column chunk's codes (two a byte, low
// nibble first, as the stream) start on a fresh byte, so the kernel spreads a chunk's codes in registers from
// one 32-byte load at a known byte instead of spreading the rows' streams to a buffer first (5632x2048 int4
// 70%, groups of 128: from DRAM ~290 -> ~265 us, in cache ~270 -> ~228; groups of 32: -10 to -20% from DRAM,
// -13 to -23% in cache: BENCHMARKS.md). It costs the codes' bytes again (+2.6% in the 70% folders that
// benchmarks/decode/step_build_cost.py measured: a half byte for every chunk with an odd count) and one pass
// to build; the owner of the view keeps it and points the view at it (`attach`). Without it that kernel runs
// the scalar loop (the same bits).
struct Act8Layout {
  std::vector<uint8_t> codes;    // the chunks' codes, then 32 zero bytes (a chunk's load never runs past)
  std::vector<int64_t> offsets;  // [rows + 1] byte where each row starts
  void attach(QuantView& w) const {
    w.chunk_codes = codes.data();
    w.chunk_offsets = offsets.data();
  }
};
// Whether `act8_layout` applies: int4 bitmask views act8 runs, where this CPU runs act8's vector kernels
// at `level` (no layout is needed elsewhere).
bool act8_layout_applies(const QuantView& w, int level);
// The layout of rows [0, rows) of w.
void act8_layout(const QuantView& w, int64_t rows, Act8Layout& out);

// Code number i of a code stream (no bounds check).
inline unsigned quant_code(const uint8_t* codes, int bits, int64_t i) {
  return bits == 8 ? codes[i] : (codes[i >> 1] >> ((i & 1) * 4)) & 15u;
}

}  // namespace se
