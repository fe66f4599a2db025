// AVX2 + FMA + F16C kernels, compiled for those instructions function by function (target
// attribute) so the library still loads on CPUs without them; ops.cpp calls them only after
// avx2_supported() says yes. No torch or std templates here (see sparse.h).
//
// Bitmask: every mask byte covers 8 input columns. Eight values are loaded from the current
// position in the row's values, a 256-entry table of permutations moves value i to the lane of
// the i-th set bit, lanes whose bit is clear are zeroed, and the 8-wide weight vector is
// multiplied with 8 inputs of each token. The work per byte does not depend on the bits, so
// there is no data-dependent branch to mispredict.
//
// N:M (N dividing 8): eight values sit in a window of W = 8M/N input columns, and their
// positions in one 16- (2-bit) or 32-bit (4-bit) word. Inputs are fetched to the values' lanes:
// with W <= 16 by two in-register permutes of 16 loaded inputs; wider windows by a gather.
#include "sparse.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define SE_AVX2 __attribute__((target("avx2,fma,f16c,popcnt")))

namespace se {
namespace {

struct ExpandTable {
  alignas(32) int32_t perm[256][8];  // lane l takes value (set bits of the byte below l)
  alignas(32) int32_t keep[256][8];  // all ones where bit l is set
  ExpandTable() {
    for (int byte = 0; byte < 256; ++byte) {
      int seen = 0;
      for (int lane = 0; lane < 8; ++lane) {
        const bool on = (byte >> lane) & 1;
        perm[byte][lane] = on ? seen : 0;
        keep[byte][lane] = on ? -1 : 0;
        seen += on;
      }
    }
  }
};

const ExpandTable& expand_table() {
  static const ExpandTable table;
  return table;
}

template <int VT>
SE_AVX2 inline __m256 load8(const void* values, int64_t i) {
  if (VT == kF32) return _mm256_loadu_ps(static_cast<const float*>(values) + i);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(values) + i));
  if (VT == kF16) return _mm256_cvtph_ps(raw);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

template <int VT>
constexpr int64_t elem_size() {
  return VT == kF32 ? 4 : 2;
}

// Prefetch distance, in values, for 2 KB ahead of the current value: the hardware prefetcher
// alone left the loops waiting on DRAM (1536x576 fp16 at 50%: 240 us -> 125 us a matvec;
// 256 B ahead gained half of that, 1-4 KB all the same).
template <int VT>
constexpr int64_t prefetch_values() {
  return 2048 / elem_size<VT>();
}

SE_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lanes [0, n) all ones: for loads that must not touch memory past a row's end.
SE_AVX2 inline __m256i first_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The dense 8-wide weights of mask byte `bits`, whose values start at values[p].
template <int VT>
SE_AVX2 inline __m256 expand8(const ExpandTable& lut, unsigned bits, const void* values, int64_t p) {
  const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(lut.perm[bits]));
  const __m256 keep = _mm256_load_ps(reinterpret_cast<const float*>(lut.keep[bits]));
  return _mm256_and_ps(_mm256_permutevar8x32_ps(load8<VT>(values, p), perm), keep);
}

// One row against TB tokens; U accumulators per token hide the FMA latency when TB is small.
template <int VT, int TB>
SE_AVX2 void bitmask_row(const ExpandTable& lut, const BitmaskView& w, int64_t r, const float* const* xs,
                         float* const* ys) {
  constexpr int U = TB >= 4 ? 1 : 4 / TB;
  const uint8_t* mask = w.mask + r * w.row_bytes;
  int64_t p = w.offsets[r];
  __m256 acc[TB][U];
  for (int t = 0; t < TB; ++t)
    for (int u = 0; u < U; ++u) acc[t][u] = _mm256_setzero_ps();
  const int64_t full = w.in / 8;
  int64_t b = 0;
  for (; b + U <= full; b += U) {
    _mm_prefetch(static_cast<const char*>(w.values) + (p + prefetch_values<VT>()) * elem_size<VT>(), _MM_HINT_T0);
    for (int u = 0; u < U; ++u) {
      const unsigned bits = mask[b + u];
      const __m256 wv = expand8<VT>(lut, bits, w.values, p);
      p += __builtin_popcount(bits);
      for (int t = 0; t < TB; ++t) acc[t][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[t] + (b + u) * 8), acc[t][u]);
    }
  }
  for (; b < full; ++b) {
    const unsigned bits = mask[b];
    const __m256 wv = expand8<VT>(lut, bits, w.values, p);
    p += __builtin_popcount(bits);
    for (int t = 0; t < TB; ++t) acc[t][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[t] + b * 8), acc[t][0]);
  }
  if (w.in % 8) {  // the last, partial byte: inputs past `in` are not read
    const __m256 wv = expand8<VT>(lut, mask[full], w.values, p);
    const __m256i inside = first_lanes(w.in % 8);
    for (int t = 0; t < TB; ++t)
      acc[t][0] = _mm256_fmadd_ps(wv, _mm256_maskload_ps(xs[t] + full * 8, inside), acc[t][0]);
  }
  for (int t = 0; t < TB; ++t) {
    __m256 sum = acc[t][0];
    for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[t][u]);
    ys[t][r] = hsum(sum);
  }
}

template <int VT>
SE_AVX2 void bitmask_rows_vt(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t) {
  const ExpandTable& lut = expand_table();
  for (int64_t r = r0; r < r1; ++r) {
    // An 8-wide load may read up to 7 values past the row's end: the last rows of the buffer
    // take the scalar path instead of reading past it.
    if (w.offsets[r + 1] + 8 > w.values_len) {
      bitmask_rows_scalar(w, r, r + 1, t);
      continue;
    }
    const float* xs[8];
    float* ys[8];
    for (int64_t i = 0; i < t.count;) {
      const int tb = token_block(t, t.x, i, xs, ys);
      switch (tb) {
        case 8: bitmask_row<VT, 8>(lut, w, r, xs, ys); break;
        case 4: bitmask_row<VT, 4>(lut, w, r, xs, ys); break;
        case 2: bitmask_row<VT, 2>(lut, w, r, xs, ys); break;
        default: bitmask_row<VT, 1>(lut, w, r, xs, ys); break;
      }
      i += tb;
    }
  }
}

template <int VT>
SE_AVX2 void bitmask_unpack_vt(const BitmaskView& w, int64_t r0, int64_t r1, float* dense) {
  const ExpandTable& lut = expand_table();
  const int64_t full = w.in / 8;
  for (int64_t r = r0; r < r1; ++r) {
    if (w.offsets[r + 1] + 8 > w.values_len) {
      bitmask_unpack_scalar(w, r, r + 1, dense + (r - r0) * w.in);
      continue;
    }
    const uint8_t* mask = w.mask + r * w.row_bytes;
    float* out = dense + (r - r0) * w.in;
    int64_t p = w.offsets[r];
    for (int64_t b = 0; b < full; ++b) {
      _mm256_storeu_ps(out + b * 8, expand8<VT>(lut, mask[b], w.values, p));
      p += __builtin_popcount(mask[b]);
    }
    if (w.in % 8) _mm256_maskstore_ps(out + full * 8, first_lanes(w.in % 8), expand8<VT>(lut, mask[full], w.values, p));
  }
}

// --- N:M --------------------------------------------------------------------------------------

// Constants of one N:M call: lane -> first column of its group, and how to unpack positions.
struct NMConsts {
  __m256i lane_group, shifts, field;
  int64_t window;  // input columns covered by 8 values
};

template <int BITS>
SE_AVX2 inline NMConsts nm_consts(const NMView& w) {
  NMConsts k;
  k.lane_group = _mm256_mullo_epi32(
      _mm256_srli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), __builtin_ctz(static_cast<unsigned>(w.n))),
      _mm256_set1_epi32(static_cast<int>(w.m)));
  k.shifts = BITS == 2 ? _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14) : _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  k.field = _mm256_set1_epi32((1 << BITS) - 1);
  k.window = 8 * w.m / w.n;
  return k;
}

// Values [8c, 8c + 8) of a row against TB tokens, added into acc[0..TB).
template <int VT, int TB, int BITS, bool GATHER>
SE_AVX2 __attribute__((always_inline)) inline void nm_chunk(const NMConsts& k, const NMView& w, const uint8_t* index,
                                                            int64_t vbase, int64_t c, const float* const* xs,
                                                            __m256* acc) {
  uint32_t word = 0;
  __builtin_memcpy(&word, index + c * BITS, BITS == 2 ? 2 : 4);  // 8 positions of BITS bits
  const __m256i cols = _mm256_add_epi32(
      k.lane_group, _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), k.shifts), k.field));
  const __m256 wv = load8<VT>(w.values, vbase + c * 8);
  const int64_t x0 = c * k.window;
  if (GATHER) {
    for (int t = 0; t < TB; ++t) acc[t] = _mm256_fmadd_ps(wv, _mm256_i32gather_ps(xs[t] + x0, cols, 4), acc[t]);
    return;
  }
  const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(cols, 28));  // sign bit = column >= 8
  const bool whole = x0 + 16 <= w.in;
  const __m256i inside = first_lanes(w.in - x0 - 8);
  for (int t = 0; t < TB; ++t) {
    const __m256 lo = _mm256_loadu_ps(xs[t] + x0);
    const __m256 hi = whole ? _mm256_loadu_ps(xs[t] + x0 + 8) : _mm256_maskload_ps(xs[t] + x0 + 8, inside);
    const __m256 xv = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, cols), _mm256_permutevar8x32_ps(hi, cols), upper);
    acc[t] = _mm256_fmadd_ps(wv, xv, acc[t]);
  }
}

template <int VT, int TB, int BITS, bool GATHER>
SE_AVX2 void nm_row(const NMConsts& k, const NMView& w, int64_t r, const float* const* xs, float* const* ys) {
  constexpr int U = TB >= 4 ? 1 : 4 / TB;
  const int64_t chunks = w.per_row / 8;
  const int64_t vbase = r * w.per_row;
  const uint8_t* index = w.index + r * w.index_bytes;
  __m256 acc[U][TB];
  for (int u = 0; u < U; ++u)
    for (int t = 0; t < TB; ++t) acc[u][t] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + U <= chunks; c += U) {
    _mm_prefetch(reinterpret_cast<const char*>(w.values) + (vbase + c * 8 + prefetch_values<VT>()) * elem_size<VT>(),
                 _MM_HINT_T0);
    for (int u = 0; u < U; ++u) nm_chunk<VT, TB, BITS, GATHER>(k, w, index, vbase, c + u, xs, acc[u]);
  }
  for (; c < chunks; ++c) nm_chunk<VT, TB, BITS, GATHER>(k, w, index, vbase, c, xs, acc[0]);

  float tail[TB] = {};
  if (w.per_row % 8) {  // leftover values: one by one
    const unsigned mask = (1u << BITS) - 1;
    for (int64_t j = chunks * 8; j < w.per_row; ++j) {
      const unsigned pos = (index[j * BITS / 8] >> ((j * BITS) % 8)) & mask;
      const int64_t col = j / w.n * w.m + pos;
      const float v = value_f32(w.values, VT, vbase + j);
      for (int t = 0; t < TB; ++t) tail[t] += v * xs[t][col];
    }
  }
  for (int t = 0; t < TB; ++t) {
    __m256 sum = acc[0][t];
    for (int u = 1; u < U; ++u) sum = _mm256_add_ps(sum, acc[u][t]);
    ys[t][r] = hsum(sum) + tail[t];
  }
}

template <int VT, int BITS, bool GATHER>
SE_AVX2 void nm_rows_impl(const NMView& w, int64_t r0, int64_t r1, const Tokens& t) {
  const NMConsts k = nm_consts<BITS>(w);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xs[8];
    float* ys[8];
    for (int64_t i = 0; i < t.count;) {
      const int tb = token_block(t, t.x, i, xs, ys);
      switch (tb) {
        case 8: nm_row<VT, 8, BITS, GATHER>(k, w, r, xs, ys); break;
        case 4: nm_row<VT, 4, BITS, GATHER>(k, w, r, xs, ys); break;
        case 2: nm_row<VT, 2, BITS, GATHER>(k, w, r, xs, ys); break;
        default: nm_row<VT, 1, BITS, GATHER>(k, w, r, xs, ys); break;
      }
      i += tb;
    }
  }
}

// Rows of an N:M weight to dense fp32: positions decoded 8 at a time as in nm_chunk, then the
// 8 values stored one by one (AVX2 has no scatter); 4-8x faster than decoding per value.
template <int VT, int BITS>
SE_AVX2 void nm_unpack_impl(const NMView& w, int64_t r0, int64_t r1, float* dense) {
  const NMConsts k = nm_consts<BITS>(w);
  const int64_t chunks = w.per_row / 8;
  alignas(32) int32_t cols[8];
  alignas(32) float vals[8];
  for (int64_t r = r0; r < r1; ++r) {
    float* out = dense + (r - r0) * w.in;
    for (int64_t c = 0; c < w.in; ++c) out[c] = 0.f;
    const uint8_t* index = w.index + r * w.index_bytes;
    const int64_t vbase = r * w.per_row;
    for (int64_t c = 0; c < chunks; ++c) {
      uint32_t word = 0;
      __builtin_memcpy(&word, index + c * BITS, BITS == 2 ? 2 : 4);
      const __m256i pos = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), k.shifts),
                                           k.field);
      _mm256_store_si256(reinterpret_cast<__m256i*>(cols), _mm256_add_epi32(k.lane_group, pos));
      _mm256_store_ps(vals, load8<VT>(w.values, vbase + c * 8));
      float* window = out + c * k.window;
      for (int l = 0; l < 8; ++l) window[cols[l]] = vals[l];
    }
    const unsigned field = (1u << BITS) - 1;
    for (int64_t j = chunks * 8; j < w.per_row; ++j) {
      const unsigned p = (index[j * BITS / 8] >> ((j * BITS) % 8)) & field;
      out[j / w.n * w.m + p] = value_f32(w.values, VT, vbase + j);
    }
  }
}

// The same where 8 values cover exactly 16 columns (2:4, 4:8, 8:16, 1:2): the positions become a
// 16-bit mask, and the two halves are expanded like bitmask bytes, with no scalar stores.
template <int VT, int BITS>
SE_AVX2 void nm_unpack_window16(const NMView& w, int64_t r0, int64_t r1, float* dense) {
  const ExpandTable& lut = expand_table();
  const NMConsts k = nm_consts<BITS>(w);
  const int64_t chunks = w.per_row / 8;
  const __m256i one = _mm256_set1_epi32(1);
  for (int64_t r = r0; r < r1; ++r) {
    float* out = dense + (r - r0) * w.in;
    const uint8_t* index = w.index + r * w.index_bytes;
    const int64_t vbase = r * w.per_row;
    for (int64_t c = 0; c < chunks; ++c) {
      uint32_t word = 0;
      __builtin_memcpy(&word, index + c * BITS, BITS == 2 ? 2 : 4);
      const __m256i pos = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), k.shifts),
                                           k.field);
      __m256i bits = _mm256_sllv_epi32(one, _mm256_add_epi32(k.lane_group, pos));  // one bit per value
      bits = _mm256_or_si256(bits, _mm256_permute2x128_si256(bits, bits, 1));
      bits = _mm256_or_si256(bits, _mm256_shuffle_epi32(bits, 0x4e));
      bits = _mm256_or_si256(bits, _mm256_shuffle_epi32(bits, 0xb1));
      const unsigned mask = static_cast<unsigned>(_mm256_cvtsi256_si32(bits));
      const unsigned lo = mask & 0xff, hi = mask >> 8;
      const __m256 v = load8<VT>(w.values, vbase + c * 8);
      const __m256i lo_perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(lut.perm[lo]));
      const __m256i hi_perm = _mm256_add_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(lut.perm[hi])),
                                               _mm256_set1_epi32(__builtin_popcount(lo)));
      _mm256_storeu_ps(out + c * 16, _mm256_and_ps(_mm256_permutevar8x32_ps(v, lo_perm),
                                                   _mm256_load_ps(reinterpret_cast<const float*>(lut.keep[lo]))));
      _mm256_storeu_ps(out + c * 16 + 8, _mm256_and_ps(_mm256_permutevar8x32_ps(v, hi_perm),
                                                       _mm256_load_ps(reinterpret_cast<const float*>(lut.keep[hi]))));
    }
    if (chunks * 8 < w.per_row) {  // leftover groups: zero their columns, then place values
      for (int64_t col = chunks * 16; col < w.in; ++col) out[col] = 0.f;
      const unsigned field = (1u << BITS) - 1;
      for (int64_t j = chunks * 8; j < w.per_row; ++j) {
        const unsigned p = (index[j * BITS / 8] >> ((j * BITS) % 8)) & field;
        out[j / w.n * w.m + p] = value_f32(w.values, VT, vbase + j);
      }
    }
  }
}

template <int VT>
SE_AVX2 void nm_unpack_vt(const NMView& w, int64_t r0, int64_t r1, float* dense) {
  if (8 * w.m / w.n == 16) {
    w.bits == 2 ? nm_unpack_window16<VT, 2>(w, r0, r1, dense) : nm_unpack_window16<VT, 4>(w, r0, r1, dense);
  } else {
    w.bits == 2 ? nm_unpack_impl<VT, 2>(w, r0, r1, dense) : nm_unpack_impl<VT, 4>(w, r0, r1, dense);
  }
}

template <int VT>
SE_AVX2 void nm_rows_vt(const NMView& w, int64_t r0, int64_t r1, const Tokens& t) {
  const bool gather = 8 * w.m / w.n > 16;
  if (w.bits == 2) {
    gather ? nm_rows_impl<VT, 2, true>(w, r0, r1, t) : nm_rows_impl<VT, 2, false>(w, r0, r1, t);
  } else {
    gather ? nm_rows_impl<VT, 4, true>(w, r0, r1, t) : nm_rows_impl<VT, 4, false>(w, r0, r1, t);
  }
}

}  // namespace

bool avx2_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
         __builtin_cpu_supports("popcnt");
}

void bitmask_rows_avx2(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t) {
  switch (w.vtype) {
    case kF16: bitmask_rows_vt<kF16>(w, r0, r1, t); break;
    case kBF16: bitmask_rows_vt<kBF16>(w, r0, r1, t); break;
    default: bitmask_rows_vt<kF32>(w, r0, r1, t); break;
  }
}

void bitmask_unpack_avx2(const BitmaskView& w, int64_t r0, int64_t r1, float* dense) {
  switch (w.vtype) {
    case kF16: bitmask_unpack_vt<kF16>(w, r0, r1, dense); break;
    case kBF16: bitmask_unpack_vt<kBF16>(w, r0, r1, dense); break;
    default: bitmask_unpack_vt<kF32>(w, r0, r1, dense); break;
  }
}

// N dividing 8 only (one window per 8 values); callers route other N:M to the scalar kernel.
void nm_rows_avx2(const NMView& w, int64_t r0, int64_t r1, const Tokens& t) {
  switch (w.vtype) {
    case kF16: nm_rows_vt<kF16>(w, r0, r1, t); break;
    case kBF16: nm_rows_vt<kBF16>(w, r0, r1, t); break;
    default: nm_rows_vt<kF32>(w, r0, r1, t); break;
  }
}

// N dividing 8 only, as nm_rows_avx2.
void nm_unpack_avx2(const NMView& w, int64_t r0, int64_t r1, float* dense) {
  switch (w.vtype) {
    case kF16: nm_unpack_vt<kF16>(w, r0, r1, dense); break;
    case kBF16: nm_unpack_vt<kBF16>(w, r0, r1, dense); break;
    default: nm_unpack_vt<kF32>(w, r0, r1, dense); break;
  }
}

}  // namespace se

#else  // not x86-64: only the scalar kernels exist

namespace se {
bool avx2_supported() { return false; }
void bitmask_rows_avx2(const BitmaskView& w, int64_t r0, int64_t r1, const Tokens& t) { bitmask_rows_scalar(w, r0, r1, t); }
void nm_rows_avx2(const NMView& w, int64_t r0, int64_t r1, const Tokens& t) { nm_rows_scalar(w, r0, r1, t); }
void bitmask_unpack_avx2(const BitmaskView& w, int64_t r0, int64_t r1, float* dense) {
  bitmask_unpack_scalar(w, r0, r1, dense);
}
void nm_unpack_avx2(const NMView& w, int64_t r0, int64_t r1, float* dense) { nm_unpack_scalar(w, r0, r1, dense); }
}  // namespace se

#endif
