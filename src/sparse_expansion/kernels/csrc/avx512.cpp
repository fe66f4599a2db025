// AVX-512 kernels (F, BW, VL, VBMI2 + F16C/FMA), compiled function by function like avx2.cpp and
// called only after avx512_supported() says yes.
//
// Bitmask: two mask bytes are one 16-bit lane mask, and one masked expand-load (vexpandps for
// float32, vpexpandw for 16-bit values) moves the next popcount(mask) stored values into the lanes
// whose bits are set and zeroes the rest: the AVX2 kernel's table lookup, permute and blend in one
// instruction. An expand-load reads only the values it places, so no row needs a guard against
// reading past the end of the buffer.
//
// N:M with 16 values covering 32 input columns (2:4, 4:8, 8:16): the 16 in-window positions come
// from one 32- or 64-bit word, and one two-source permute (vpermt2ps) fetches each value's input
// from 32 loaded inputs. Other N:M shapes use the AVX2 kernel.
#include <algorithm>

#include "passes.h"
#include "sparse.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define SE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,avx2,fma,f16c,popcnt,bmi2")))

namespace se {
namespace {

template <int VT>
SE_AVX512 inline __m512 expand16(const void* values, int64_t p, __mmask16 m) {
  if (VT == kF32) return _mm512_maskz_expandloadu_ps(m, static_cast<const float*>(values) + p);
  const __m256i raw = _mm256_maskz_expandloadu_epi16(m, static_cast<const uint16_t*>(values) + p);
  if (VT == kF16) return _mm512_cvtph_ps(raw);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

template <int VT>
SE_AVX512 inline __m512 load16(const void* values, int64_t i) {
  if (VT == kF32) return _mm512_loadu_ps(static_cast<const float*>(values) + i);
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(values) + i));
  if (VT == kF16) return _mm512_cvtph_ps(raw);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

template <int VT>
constexpr int64_t elem_size() {
  return VT == kF32 ? 4 : 2;
}

// Prefetch 2 KB ahead of the value stream, as in avx2.cpp.
#ifndef SE_PF
#define SE_PF 2048
#endif
template <int VT>
constexpr int64_t prefetch_values() {
  return SE_PF / elem_size<VT>();
}

// Mask bits of 16 columns starting at byte b of a row of `row_bytes` bytes (one byte at a row's end).
inline unsigned mask16(const uint8_t* mask, int64_t b, int64_t row_bytes) {
  return b + 1 < row_bytes ? unsigned(mask[b]) | (unsigned(mask[b + 1]) << 8) : mask[b];
}

// One row against TB tokens; U accumulators per token hide the FMA latency when TB is small.
template <int VT, int TB>
SE_AVX512 void bitmask_row(const BitmaskView& w, int64_t r, const float* const* xs, float* const* ys) {
  constexpr int U = TB >= 4 ? 1 : 4 / TB;
  const uint8_t* mask = w.mask + r * w.row_bytes;
  int64_t p = w.offsets[r];
  __m512 acc[TB][U];
  for (int t = 0; t < TB; ++t)
    for (int u = 0; u < U; ++u) acc[t][u] = _mm512_setzero_ps();
  const int64_t full = w.in / 16;  // chunks of 16 whole columns
  int64_t c = 0;
  for (; c + U <= full; c += U) {
    _mm_prefetch(static_cast<const char*>(w.values) + (p + prefetch_values<VT>()) * elem_size<VT>(), _MM_HINT_T0);
    for (int u = 0; u < U; ++u) {
      uint16_t bits;
      __builtin_memcpy(&bits, mask + 2 * (c + u), 2);
      const __m512 wv = expand16<VT>(w.values, p, bits);
      p += __builtin_popcount(bits);
      for (int t = 0; t < TB; ++t)
        acc[t][u] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xs[t] + (c + u) * 16), acc[t][u]);
    }
  }
  for (; c < full; ++c) {
    uint16_t bits;
    __builtin_memcpy(&bits, mask + 2 * c, 2);
    const __m512 wv = expand16<VT>(w.values, p, bits);
    p += __builtin_popcount(bits);
    for (int t = 0; t < TB; ++t) acc[t][0] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xs[t] + c * 16), acc[t][0]);
  }
  if (w.in % 16) {  // the last, partial chunk: inputs past `in` are not read (their mask bits are 0)
    const unsigned bits = mask16(mask, full * 2, w.row_bytes);
    const __m512 wv = expand16<VT>(w.values, p, static_cast<__mmask16>(bits));
    const __mmask16 inside = static_cast<__mmask16>((1u << (w.in % 16)) - 1);
    for (int t = 0; t < TB; ++t)
      acc[t][0] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(inside, xs[t] + full * 16), acc[t][0]);
  }
  for (int t = 0; t < TB; ++t) {
    __m512 sum = acc[t][0];
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[t][u]);
    ys[t][r] = _mm512_reduce_add_ps(sum);
  }
}

template <int VT>
SE_AVX512 void bitmask_rows_vt(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xs[8];
    float* ys[8];
    for (int64_t i = 0; i < t.count;) {
      const int tb = token_block(t, t.x, i, xs, ys);
      switch (tb) {
        case 8: bitmask_row<VT, 8>(w, r, xs, ys); break;
        case 4: bitmask_row<VT, 4>(w, r, xs, ys); break;
        case 2: bitmask_row<VT, 2>(w, r, xs, ys); break;
        default: bitmask_row<VT, 1>(w, r, xs, ys); break;
      }
      i += tb;
    }
  }
}

template <int VT>
SE_AVX512 void bitmask_unpack_vt(const BitmaskView& w, int64_t r0, int64_t r1, float* dense) {
  const int64_t full = w.in / 16;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* mask = w.mask + r * w.row_bytes;
    float* out = dense + (r - r0) * w.in;
    int64_t p = w.offsets[r];
    for (int64_t c = 0; c < full; ++c) {
      uint16_t bits;
      __builtin_memcpy(&bits, mask + 2 * c, 2);
      _mm512_storeu_ps(out + c * 16, expand16<VT>(w.values, p, bits));
      p += __builtin_popcount(bits);
    }
    if (w.in % 16) {
      const unsigned bits = mask16(mask, full * 2, w.row_bytes);
      _mm512_mask_storeu_ps(out + full * 16, static_cast<__mmask16>((1u << (w.in % 16)) - 1),
                            expand16<VT>(w.values, p, static_cast<__mmask16>(bits)));
    }
  }
}

// --- N:M, 16 values in a window of 32 columns ---------------------------------------------------

template <int BITS>
struct NMConsts {
  __m512i lane_group, shifts, field;
};

template <int BITS>
SE_AVX512 inline NMConsts<BITS> nm_consts(const NMView& w) {
  NMConsts<BITS> k;
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  k.lane_group = _mm512_mullo_epi32(_mm512_srli_epi32(lanes, __builtin_ctz(static_cast<unsigned>(w.n))),
                                    _mm512_set1_epi32(static_cast<int>(w.m)));
  // 2-bit positions: lane l at bit 2l of a 32-bit word. 4-bit: lanes 0-7 in the low 32-bit word at
  // 4l, lanes 8-15 in the high word (broadcast separately), also at 4(l - 8).
  k.shifts = BITS == 2 ? _mm512_mullo_epi32(lanes, _mm512_set1_epi32(2))
                       : _mm512_mullo_epi32(_mm512_and_si512(lanes, _mm512_set1_epi32(7)), _mm512_set1_epi32(4));
  k.field = _mm512_set1_epi32((1 << BITS) - 1);
  return k;
}

// Columns (0..31 inside the window) of values [16c, 16c + 16) of a row.
template <int BITS>
SE_AVX512 inline __m512i nm_cols(const NMConsts<BITS>& k, const uint8_t* index, int64_t c) {
  __m512i words;
  if (BITS == 2) {
    uint32_t word;
    __builtin_memcpy(&word, index + c * 4, 4);
    words = _mm512_set1_epi32(static_cast<int>(word));
  } else {
    uint32_t lo, hi;
    __builtin_memcpy(&lo, index + c * 8, 4);
    __builtin_memcpy(&hi, index + c * 8 + 4, 4);
    words = _mm512_inserti64x4(_mm512_set1_epi32(static_cast<int>(lo)), _mm256_set1_epi32(static_cast<int>(hi)), 1);
  }
  return _mm512_add_epi32(k.lane_group, _mm512_and_si512(_mm512_srlv_epi32(words, k.shifts), k.field));
}

template <int VT, int TB, int BITS>
SE_AVX512 void nm_row(const NMConsts<BITS>& k, const NMView& w, int64_t r, const float* const* xs,
                      float* const* ys) {
  constexpr int U = TB >= 4 ? 1 : 4 / TB;
  const int64_t chunks = w.per_row / 16;
  const int64_t vbase = r * w.per_row;
  const uint8_t* index = w.index + r * w.index_bytes;
  __m512 acc[U][TB];
  for (int u = 0; u < U; ++u)
    for (int t = 0; t < TB; ++t) acc[u][t] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + U <= chunks; c += U) {
    _mm_prefetch(reinterpret_cast<const char*>(w.values) + (vbase + c * 16 + prefetch_values<VT>()) * elem_size<VT>(),
                 _MM_HINT_T0);
    for (int u = 0; u < U; ++u) {
      const __m512i cols = nm_cols<BITS>(k, index, c + u);
      const __m512 wv = load16<VT>(w.values, vbase + (c + u) * 16);
      const int64_t x0 = (c + u) * 32;
      for (int t = 0; t < TB; ++t) {
        const __m512 xv = _mm512_permutex2var_ps(_mm512_loadu_ps(xs[t] + x0), cols, _mm512_loadu_ps(xs[t] + x0 + 16));
        acc[u][t] = _mm512_fmadd_ps(wv, xv, acc[u][t]);
      }
    }
  }
  for (; c < chunks; ++c) {
    const __m512i cols = nm_cols<BITS>(k, index, c);
    const __m512 wv = load16<VT>(w.values, vbase + c * 16);
    for (int t = 0; t < TB; ++t) {
      const __m512 xv = _mm512_permutex2var_ps(_mm512_loadu_ps(xs[t] + c * 32), cols, _mm512_loadu_ps(xs[t] + c * 32 + 16));
      acc[0][t] = _mm512_fmadd_ps(wv, xv, acc[0][t]);
    }
  }
  float tail[TB] = {};
  if (w.per_row % 16) {  // leftover values (fewer than 32 columns): one by one
    const unsigned field = (1u << BITS) - 1;
    for (int64_t j = chunks * 16; j < w.per_row; ++j) {
      const unsigned pos = (index[j * BITS / 8] >> ((j * BITS) % 8)) & field;
      const int64_t col = j / w.n * w.m + pos;
      const float v = value_f32(w.values, VT, vbase + j);
      for (int t = 0; t < TB; ++t) tail[t] += v * xs[t][col];
    }
  }
  for (int t = 0; t < TB; ++t) {
    __m512 sum = acc[0][t];
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][t]);
    ys[t][r] = _mm512_reduce_add_ps(sum) + tail[t];
  }
}

template <int VT, int BITS>
SE_AVX512 void nm_rows_impl(const NMView& w, int64_t r0, int64_t r1, const Tokens& t) {
  const NMConsts<BITS> k = nm_consts<BITS>(w);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xs[8];
    float* ys[8];
    for (int64_t i = 0; i < t.count;) {
      const int tb = token_block(t, t.x, i, xs, ys);
      switch (tb) {
        case 8: nm_row<VT, 8, BITS>(k, w, r, xs, ys); break;
        case 4: nm_row<VT, 4, BITS>(k, w, r, xs, ys); break;
        case 2: nm_row<VT, 2, BITS>(k, w, r, xs, ys); break;
        default: nm_row<VT, 1, BITS>(k, w, r, xs, ys); break;
      }
      i += tb;
    }
  }
}

template <int VT>
SE_AVX512 void nm_rows_vt(const NMView& w, int64_t r0, int64_t r1, const Tokens& t) {
  w.bits == 2 ? nm_rows_impl<VT, 2>(w, r0, r1, t) : nm_rows_impl<VT, 4>(w, r0, r1, t);
}

// --- bitmask, bfloat16 values and bfloat16 inputs -------------------------------------------------
// Four mask bytes are one 32-bit lane mask: one expand-load places the next popcount stored bfloat16
// values among 32 lanes, and one VDPBF16PS multiplies them with 32 bfloat16 inputs and adds pairs
// of products into 16 float32 lanes: 32 columns for what the kernels above spend on 16.

#define SE_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,avx512bf16,avx2,fma,f16c,popcnt,bmi2")))

SE_AVX512BF16 inline __m512 dot_bf16(__m512 acc, __m512i w, __m512i x) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(w), reinterpret_cast<__m512bh&>(x));
}

template <int TB>
SE_AVX512BF16 void bitmask_row_bf16(const BitmaskView& w, int64_t r, const uint16_t* const* xs, float* const* ys) {
  constexpr int U = TB >= 4 ? 1 : 4 / TB;
  const uint8_t* mask = w.mask + r * w.row_bytes;
  const uint16_t* values = static_cast<const uint16_t*>(w.values);
  int64_t p = w.offsets[r];
  __m512 acc[TB][U];
  for (int t = 0; t < TB; ++t)
    for (int u = 0; u < U; ++u) acc[t][u] = _mm512_setzero_ps();
  const int64_t full = w.in / 32;
  int64_t c = 0;
  for (; c + U <= full; c += U) {
    _mm_prefetch(reinterpret_cast<const char*>(values + p) + 2048, _MM_HINT_T0);
    for (int u = 0; u < U; ++u) {
      uint32_t bits;
      __builtin_memcpy(&bits, mask + 4 * (c + u), 4);
      const __m512i wv = _mm512_maskz_expandloadu_epi16(bits, values + p);
      p += __builtin_popcount(bits);
      for (int t = 0; t < TB; ++t) acc[t][u] = dot_bf16(acc[t][u], wv, _mm512_loadu_si512(xs[t] + (c + u) * 32));
    }
  }
  for (; c < full; ++c) {
    uint32_t bits;
    __builtin_memcpy(&bits, mask + 4 * c, 4);
    const __m512i wv = _mm512_maskz_expandloadu_epi16(bits, values + p);
    p += __builtin_popcount(bits);
    for (int t = 0; t < TB; ++t) acc[t][0] = dot_bf16(acc[t][0], wv, _mm512_loadu_si512(xs[t] + c * 32));
  }
  const int64_t rest = w.in % 32;
  if (rest) {  // the last columns: their mask bytes one by one, inputs past `in` not read
    uint32_t bits = 0;
    for (int64_t b = 0; b * 8 < rest; ++b) bits |= uint32_t(mask[full * 4 + b]) << (8 * b);
    const __m512i wv = _mm512_maskz_expandloadu_epi16(bits, values + p);
    const __mmask32 inside = static_cast<__mmask32>((uint64_t(1) << rest) - 1);
    for (int t = 0; t < TB; ++t)
      acc[t][0] = dot_bf16(acc[t][0], wv, _mm512_maskz_loadu_epi16(inside, xs[t] + full * 32));
  }
  for (int t = 0; t < TB; ++t) {
    __m512 sum = acc[t][0];
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[t][u]);
    ys[t][r] = _mm512_reduce_add_ps(sum);
  }
}

}  // namespace

bool avx512bf16_supported() {
  __builtin_cpu_init();
  return avx512_supported() && __builtin_cpu_supports("avx512bf16");
}

SE_AVX512BF16 void bitmask_rows_avx512_bf16(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* xs[8];
    float* ys[8];
    for (int64_t i = 0; i < t.count;) {
      const int tb = token_block(t, t.xh, i, xs, ys);
      switch (tb) {
        case 8: bitmask_row_bf16<8>(w, r, xs, ys); break;
        case 4: bitmask_row_bf16<4>(w, r, xs, ys); break;
        case 2: bitmask_row_bf16<2>(w, r, xs, ys); break;
        default: bitmask_row_bf16<1>(w, r, xs, ys); break;
      }
      i += tb;
    }
  }
}

// --- dense bfloat16 weights times bfloat16 inputs (decode) ---------------------------------------
// torch's bfloat16 linear gains nothing over float32 at one token on this CPU; read as they are, the
// weights cost half the bytes. Four rows share each input load (rows r, r + step, r + 2 step, ...: passes.h);
// one or two tokens.

template <int TB>
SE_AVX512BF16 static void dense_rows4_bf16(const uint16_t* w, int64_t in, int64_t r, int64_t step,
                                           const uint16_t* const* xs, float* const* ys, int rows) {
  __m512 acc[TB][4];
  for (int t = 0; t < TB; ++t)
    for (int k = 0; k < 4; ++k) acc[t][k] = _mm512_setzero_ps();
  const int64_t full = in / 32, rest = in % 32;
  const __mmask32 inside = static_cast<__mmask32>((uint64_t(1) << rest) - 1);
  for (int64_t c = 0; c <= full; ++c) {
    if (c == full && rest == 0) break;
    const __mmask32 lanes = c < full ? static_cast<__mmask32>(~0u) : inside;
    __m512i xv[TB];
    for (int t = 0; t < TB; ++t) xv[t] = _mm512_maskz_loadu_epi16(lanes, xs[t] + c * 32);
    for (int k = 0; k < rows; ++k) {
      const uint16_t* row = w + (r + k * step) * in + c * 32;
      _mm_prefetch(reinterpret_cast<const char*>(row) + 1024, _MM_HINT_T0);
      const __m512i wv = _mm512_maskz_loadu_epi16(lanes, row);
      for (int t = 0; t < TB; ++t) acc[t][k] = dot_bf16(acc[t][k], wv, xv[t]);
    }
  }
  for (int t = 0; t < TB; ++t)
    for (int k = 0; k < rows; ++k) ys[t][r + k * step] = _mm512_reduce_add_ps(acc[t][k]);
}

// Unpack bfloat16 values to a dense bfloat16 tile for the prefill GEMM: one expand-load and one store per
// 32 columns, where unpacking to float32 spends two of each plus conversions and writes twice the bytes.
SE_AVX512BF16 void bitmask_unpack_avx512_bf16(const BitmaskView& w, int64_t r0, int64_t r1, uint16_t* dense) {
  const int64_t full = w.in / 32, rest = w.in % 32;
  const uint16_t* values = static_cast<const uint16_t*>(w.values);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* mask = w.mask + r * w.row_bytes;
    uint16_t* out = dense + (r - r0) * w.in;
    int64_t p = w.offsets[r];
    for (int64_t c = 0; c < full; ++c) {
      uint32_t bits;
      __builtin_memcpy(&bits, mask + 4 * c, 4);
      _mm512_storeu_si512(out + c * 32, _mm512_maskz_expandloadu_epi16(bits, values + p));
      p += __builtin_popcount(bits);
    }
    if (rest) {
      uint32_t bits = 0;
      for (int64_t b = 0; b * 8 < rest; ++b) bits |= uint32_t(mask[full * 4 + b]) << (8 * b);
      const __mmask32 inside = static_cast<__mmask32>((uint64_t(1) << rest) - 1);
      _mm512_mask_storeu_epi16(out + full * 32, inside, _mm512_maskz_expandloadu_epi16(bits, values + p));
    }
  }
}

SE_AVX512BF16 void dense_rows_avx512_bf16(const uint16_t* w, int64_t in, int64_t r0, int64_t r1,
                                          const uint16_t* const* xs, float* const* ys, int tokens) {
  quarter_passes(
      r0, r1,
      [&](int64_t r, int64_t q) {
        tokens == 2 ? dense_rows4_bf16<2>(w, in, r, q, xs, ys, 4) : dense_rows4_bf16<1>(w, in, r, q, xs, ys, 4);
      },
      [&](int64_t lo, int64_t hi) {
        const int rows = static_cast<int>(hi - lo);
        tokens == 2 ? dense_rows4_bf16<2>(w, in, lo, 1, xs, ys, rows) : dense_rows4_bf16<1>(w, in, lo, 1, xs, ys, rows);
      });
}

bool avx512_supported() {
  __builtin_cpu_init();
  return avx2_supported() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2") &&
         __builtin_cpu_supports("bmi2");
}

bool nm_avx512_shape(const NMView& w) { return 16 * w.m / w.n == 32 && 16 % w.n == 0; }

void bitmask_rows_avx512(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t) {
  switch (w.vtype) {
    case kF16: bitmask_rows_vt<kF16>(w, r0, r1, t); break;
    case kBF16: bitmask_rows_vt<kBF16>(w, r0, r1, t); break;
    default: bitmask_rows_vt<kF32>(w, r0, r1, t); break;
  }
}

void bitmask_unpack_avx512(const BitmaskView& w, int64_t r0, int64_t r1, float* dense) {
  switch (w.vtype) {
    case kF16: bitmask_unpack_vt<kF16>(w, r0, r1, dense); break;
    case kBF16: bitmask_unpack_vt<kBF16>(w, r0, r1, dense); break;
    default: bitmask_unpack_vt<kF32>(w, r0, r1, dense); break;
  }
}

void nm_rows_avx512(const NMView& w, int64_t r0, int64_t r1, const Tokens& t) {
  if (!nm_avx512_shape(w)) {
    nm_rows_avx2(w, r0, r1, t);
    return;
  }
  switch (w.vtype) {
    case kF16: nm_rows_vt<kF16>(w, r0, r1, t); break;
    case kBF16: nm_rows_vt<kBF16>(w, r0, r1, t); break;
    default: nm_rows_vt<kF32>(w, r0, r1, t); break;
  }
}

}  // namespace se

#else  // not x86-64

namespace se {
bool avx512_supported() { return false; }
bool avx512bf16_supported() { return false; }
void bitmask_rows_avx512_bf16(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t) {
  bitmask_rows_scalar(w, r0, r1, t);
}
void bitmask_rows_avx512(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t) {
  bitmask_rows_scalar(w, r0, r1, t);
}
void bitmask_unpack_avx512(const BitmaskView& w, int64_t r0, int64_t r1, float* dense) {
  bitmask_unpack_scalar(w, r0, r1, dense);
}
void nm_rows_avx512(const NMView& w, int64_t r0, int64_t r1, const Tokens& t) { nm_rows_scalar(w, r0, r1, t); }
void dense_rows_avx512_bf16(const uint16_t*, int64_t, int64_t, int64_t, const uint16_t* const*, float* const*, int) {}
void bitmask_unpack_avx512_bf16(const BitmaskView&, int64_t, int64_t, uint16_t*) {}
}  // namespace se

#endif
