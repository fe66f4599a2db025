// AVX-512 quantized kernels (F, BW, VL, VBMI2 + BMI2): quant.h's arithmetic, 16 columns (bitmask,
// dense) or 16 values (N:M) a step, one float32 lane per partial sum, so they equal the scalar loops
// bit for bit. Called only after avx512_supported() says yes.
//
// int8 codes are widened and de-quantized as float(c - zero) * scale. int4 codes are looked up in a
// 16-entry table of the group's de-quantized values (the same products, made once per group) with
// one permute. Bitmask: two mask bytes are one 16-lane mask; an expand (vpexpandb) puts the next
// popcount codes into the lanes whose bits are set (int8 straight from memory; int4 after BMI2's pdep
// spreads 16 nibbles into 16 bytes), and a masked add leaves the other lanes' sums untouched.
#include <cstring>

#include "quant.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define SE_Q512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2,avx2,fma,f16c,popcnt,bmi2")))

namespace se {
namespace {

// 16 int4 codes from code number p of a stream of `bytes` bytes, one a byte (codes past the end are 0).
SE_Q512 inline __m128i nibbles16(const uint8_t* codes, int64_t bytes, int64_t p) {
  const int64_t b = p >> 1;
  const bool odd = p & 1;
  uint64_t lo, extra = 0;
  if (b + (odd ? 9 : 8) <= bytes) {
    std::memcpy(&lo, codes + b, 8);
    if (odd) extra = codes[b + 8];
  } else {
    uint8_t tmp[9] = {};
    for (int64_t i = 0; i < 9 && b + i < bytes; ++i) tmp[i] = codes[b + i];
    std::memcpy(&lo, tmp, 8);
    extra = tmp[8];
  }
  const uint64_t nib = odd ? (lo >> 4) | (extra << 60) : lo;
  constexpr uint64_t kLow = 0x0F0F0F0F0F0F0F0FULL;
  return _mm_set_epi64x(static_cast<long long>(_pdep_u64(nib >> 32, kLow)),
                        static_cast<long long>(_pdep_u64(nib & 0xffffffffULL, kLow)));
}

// One group's grid: int8 takes (zero, scale), int4 the table of its 16 de-quantized values.
struct Grid {
  __m512i zero;
  __m512 scale, table;
};

SE_Q512 inline Grid grid_of(const QuantView& w, int64_t r, int64_t g) {
  Grid k;
  const float s = w.scales[r * w.groups + g];
  const int z = w.zeros[r * w.groups + g];
  k.zero = _mm512_set1_epi32(z);
  k.scale = _mm512_set1_ps(s);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  k.table = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(iota, k.zero)), k.scale);
  return k;
}

// 16 codes (one a byte) -> 16 de-quantized float32 weights.
template <int BITS>
SE_Q512 inline __m512 dequant16(const Grid& k, __m128i codes) {
  const __m512i wide = _mm512_cvtepu8_epi32(codes);
  if (BITS == 4) return _mm512_permutexvar_ps(wide, k.table);
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(wide, k.zero)), k.scale);
}

SE_Q512 inline float finish(__m512 acc) {
  alignas(64) float s[16];
  _mm512_store_ps(s, acc);
  return quant_tree_sum(s);
}

template <int BITS>
SE_Q512 float bitmask_row(const QuantView& w, int64_t r, const float* x) {
  const uint8_t* mask = w.index + r * w.index_bytes;
  int64_t p = w.offsets[r];
  __m512 acc = _mm512_setzero_ps();
  const int64_t chunks = (w.in + 15) / 16;
  int64_t g = -1;
  Grid k{};
  for (int64_t c = 0; c < chunks; ++c) {
    const unsigned bits = 2 * c + 1 < w.index_bytes ? unsigned(mask[2 * c]) | (unsigned(mask[2 * c + 1]) << 8)
                                                    : mask[2 * c];
    if (!bits) continue;
    const int64_t gc = c * 16 / w.group_size;
    if (gc != g) k = grid_of(w, r, g = gc);
    const __mmask16 lanes = static_cast<__mmask16>(bits);
    const __m128i q = BITS == 8 ? _mm_maskz_expandloadu_epi8(lanes, w.codes + p)
                                : _mm_maskz_expand_epi8(lanes, nibbles16(w.codes, w.codes_bytes, p));
    p += __builtin_popcount(bits);
    const __m512 prod = _mm512_mul_ps(dequant16<BITS>(k, q), _mm512_maskz_loadu_ps(lanes, x + c * 16));
    acc = _mm512_mask_add_ps(acc, lanes, acc, prod);
  }
  return finish(acc);
}

template <int BITS>
SE_Q512 float dense_row(const QuantView& w, int64_t r, const float* x) {
  const uint8_t* codes = w.codes + r * w.code_row_bytes;
  __m512 acc = _mm512_setzero_ps();
  const int64_t chunks = (w.in + 15) / 16;
  int64_t g = -1;
  Grid k{};
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t left = w.in - c * 16;
    const __mmask16 lanes = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
    const int64_t gc = c * 16 / w.group_size;
    if (gc != g) k = grid_of(w, r, g = gc);
    __m128i q;
    if (BITS == 8)
      q = left >= 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + c * 16))
                     : _mm_maskz_loadu_epi8(lanes, codes + c * 16);
    else
      q = nibbles16(codes, w.code_row_bytes, c * 16);
    const __m512 prod = _mm512_mul_ps(dequant16<BITS>(k, q), _mm512_maskz_loadu_ps(lanes, x + c * 16));
    acc = _mm512_mask_add_ps(acc, lanes, acc, prod);
  }
  return finish(acc);
}

// N:M with 16 values in a window of 32 columns: each value's input by one two-source permute.
template <int BITS, int IBITS>
SE_Q512 float nm_row(const QuantView& w, int64_t r, const float* x) {
  const uint8_t* codes = w.codes + r * w.code_row_bytes;
  const uint8_t* index = w.index + r * w.index_bytes;
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lane_group = _mm512_mullo_epi32(_mm512_srli_epi32(lanes, __builtin_ctz(static_cast<unsigned>(w.n))),
                                                _mm512_set1_epi32(static_cast<int>(w.m)));
  const __m512i shifts = IBITS == 2 ? _mm512_mullo_epi32(lanes, _mm512_set1_epi32(2))
                                    : _mm512_mullo_epi32(_mm512_and_si512(lanes, _mm512_set1_epi32(7)),
                                                         _mm512_set1_epi32(4));
  const __m512i field = _mm512_set1_epi32((1 << IBITS) - 1);
  __m512 acc = _mm512_setzero_ps();
  const int64_t chunks = w.per_row / 16;
  int64_t g = -1;
  Grid k{};
  for (int64_t c = 0; c < chunks; ++c) {
    __m512i words;
    if (IBITS == 2) {
      uint32_t word;
      std::memcpy(&word, index + c * 4, 4);
      words = _mm512_set1_epi32(static_cast<int>(word));
    } else {
      uint32_t lo, hi;
      std::memcpy(&lo, index + c * 8, 4);
      std::memcpy(&hi, index + c * 8 + 4, 4);
      words = _mm512_inserti64x4(_mm512_set1_epi32(static_cast<int>(lo)), _mm256_set1_epi32(static_cast<int>(hi)), 1);
    }
    const __m512i cols = _mm512_add_epi32(lane_group, _mm512_and_si512(_mm512_srlv_epi32(words, shifts), field));
    const int64_t gc = c * 32 / w.group_size;
    if (gc != g) k = grid_of(w, r, g = gc);
    const __m128i q = BITS == 8 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + c * 16))
                                : nibbles16(codes, w.code_row_bytes, c * 16);
    const __m512 xv = _mm512_permutex2var_ps(_mm512_loadu_ps(x + c * 32), cols, _mm512_loadu_ps(x + c * 32 + 16));
    acc = _mm512_add_ps(acc, _mm512_mul_ps(dequant16<BITS>(k, q), xv));
  }
  alignas(64) float s[16];
  _mm512_store_ps(s, acc);
  const unsigned ifield = (1u << IBITS) - 1;
  for (int64_t j = chunks * 16; j < w.per_row; ++j) {  // the last values (fewer than 16): one by one
    const int64_t bit = j * IBITS;
    const int64_t col = j / w.n * w.m + ((index[bit >> 3] >> (bit & 7)) & ifield);
    const int64_t gj = col / w.group_size;
    const float v = float(int(quant_code(codes, BITS, j)) - int(w.zeros[r * w.groups + gj])) * w.scales[r * w.groups + gj];
    const float prod = v * x[col];
    s[j & 15] = s[j & 15] + prod;
  }
  return quant_tree_sum(s);
}

template <int BITS>
SE_Q512 void rows_bits(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y) {
  if (w.format == kQBitmask) {
    for (int64_t r = r0; r < r1; ++r) y[r] = bitmask_row<BITS>(w, r, x);
  } else if (w.format == kQDense) {
    for (int64_t r = r0; r < r1; ++r) y[r] = dense_row<BITS>(w, r, x);
  } else if (w.index_bits == 2) {
    for (int64_t r = r0; r < r1; ++r) y[r] = nm_row<BITS, 2>(w, r, x);
  } else {
    for (int64_t r = r0; r < r1; ++r) y[r] = nm_row<BITS, 4>(w, r, x);
  }
}

bool vector_shape(const QuantView& w) {
  if (w.format == kQNM) {
    const bool window = 16 * w.m / w.n == 32 && 16 % w.n == 0 && 16 * w.m % w.n == 0;
    return window && (w.group_size % 32 == 0 || w.group_size >= w.in);
  }
  return w.group_size % 16 == 0 || w.group_size >= w.in;
}

}  // namespace

void quant_rows_avx512(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y) {
  if (!vector_shape(w)) {
    quant_rows_scalar(w, r0, r1, x, y);
    return;
  }
  if (w.bits == 8)
    rows_bits<8>(w, r0, r1, x, y);
  else
    rows_bits<4>(w, r0, r1, x, y);
}

}  // namespace se

#else  // not x86-64

namespace se {
void quant_rows_avx512(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y) {
  quant_rows_scalar(w, r0, r1, x, y);
}
}  // namespace se

#endif
