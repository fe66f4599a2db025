// Plain views of the compressed formats (see formats.py) shared by the scalar and AVX2 kernels.
// No torch headers here: the AVX2 translation unit must not instantiate torch's inline code with
// AVX2 enabled, or the linker could hand that copy to CPUs without AVX2.
#pragma once

#include <cstdint>

namespace se {

enum ValueType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// One expert's rows of a bitmask weight: mask/offsets already point at its first row.
struct BitmaskView {
  const void* values;      // the whole values buffer (offsets index into it)
  int64_t values_len;      // its length, so kernels know when an 8-wide load would overrun
  const uint8_t* mask;     // [rows, row_bytes]
  const int64_t* offsets;  // [rows + 1]
  int64_t in, row_bytes;
  int vtype;
};

// One expert's rows of an N:M weight: values/indices already point at its first row.
struct NMView {
  const void* values;    // [rows, per_row]
  const uint8_t* index;  // [rows, index_bytes]
  int64_t in, n, m, bits, per_row, index_bytes;
  int vtype;
};

// Which tokens a call computes: x rows tok[i] (or i when tok is null) -> y rows likewise.
struct Tokens {
  const float* x;
  int64_t ldx;
  float* y;
  int64_t ldy;
  const int64_t* tok;
  int64_t count;
  const uint16_t* xh = nullptr;  // the same inputs in bfloat16 (rows ldx apart), for the BF16 dot kernel
};

inline int64_t token_at(const Tokens& t, int64_t i) { return t.tok ? t.tok[i] : i; }

// The next block of tokens from i (8, 4, 2 or 1 of them): their input rows in `x` (t.x, or t.xh for
// bfloat16 inputs) and their output rows. Plain scalar code: inlined alike into every kernel file.
template <typename X>
inline int token_block(const Tokens& t, const X* x, int64_t i, const X** xs, float** ys) {
  const int64_t left = t.count - i;
  const int tb = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
  for (int j = 0; j < tb; ++j) {
    const int64_t tok = token_at(t, i + j);
    xs[j] = x + tok * t.ldx;
    ys[j] = t.y + tok * t.ldy;
  }
  return tb;
}

// y[tok, r] = sum_c W[r, c] x[tok, c] for rows r in [r0, r1) of the view (no bias).
void bitmask_rows_scalar(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t);
void nm_rows_scalar(const NMView& w, int64_t r0, int64_t r1, const Tokens& t);
// dense[r - r0, :] = W[r, :] in fp32, for rows [r0, r1); dense rows are `in` floats apart.
void bitmask_unpack_scalar(const BitmaskView& w, int64_t r0, int64_t r1, float* dense);
void nm_unpack_scalar(const NMView& w, int64_t r0, int64_t r1, float* dense);
// N:M rows with bfloat16 values to dense bfloat16 (the stored bits; any CPU), rows `in` apart.
void nm_unpack_bf16(const NMView& w, int64_t r0, int64_t r1, uint16_t* dense);

// One stored value as fp32, whatever its type (for the few values a vector loop leaves over).
float value_f32(const void* values, int vtype, int64_t i);

bool avx2_supported();
// The AVX2/FMA/F16C versions; callable only when avx2_supported().
void bitmask_rows_avx2(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t);
void nm_rows_avx2(const NMView& w, int64_t r0, int64_t r1, const Tokens& t);
void bitmask_unpack_avx2(const BitmaskView& w, int64_t r0, int64_t r1, float* dense);
void nm_unpack_avx2(const NMView& w, int64_t r0, int64_t r1, float* dense);

bool avx512_supported();
// The AVX-512 (F, BW, VL, VBMI2) versions; callable only when avx512_supported(). N:M shapes other
// than 16 values per 32 columns go to the AVX2 kernel (N:M unpacking always does).
void bitmask_rows_avx512(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t);
void nm_rows_avx512(const NMView& w, int64_t r0, int64_t r1, const Tokens& t);
void bitmask_unpack_avx512(const BitmaskView& w, int64_t r0, int64_t r1, float* dense);

bool avx512bf16_supported();
// bfloat16 values times bfloat16 inputs (t.xh) with the AVX512-BF16 dot product, 32 columns a step;
// callable only when avx512bf16_supported().
void bitmask_rows_avx512_bf16(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t);
// Bitmask rows with bfloat16 values to dense bfloat16 (the bits as stored), rows `in` apart;
// callable only when avx512bf16_supported().
void bitmask_unpack_avx512_bf16(const BitmaskView& w, int64_t r0, int64_t r1, uint16_t* dense);
// A dense bfloat16 [rows, in] weight times 1 or 2 bfloat16 input rows, rows [r0, r1): ys[t][r] =
// W[r, :] . xs[t]; callable only when avx512bf16_supported().
void dense_rows_avx512_bf16(const uint16_t* w, int64_t in, int64_t r0, int64_t r1, const uint16_t* const* xs,
                            float* const* ys, int tokens);

}  // namespace se
