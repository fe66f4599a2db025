// AVX-512 quantized kernels (F, BW, VL, VBMI, VBMI2): quant.h's arithmetic, 16 columns (bitmask,
// dense) or 16 values (N:M) a step, one float32 lane per partial sum, so they equal the scalar loops
// bit for bit. Called only after avx512_supported() says yes (int4 bitmask also needs VBMI's vpermb).
//
// int8 codes are widened and de-quantized as float(c - zero) * scale. int4 codes are looked up in a
// 16-entry table of the group's de-quantized values (the same products, made once per group) with
// one permute. Bitmask: two mask bytes are one 16-lane mask; a byte shuffle by a table of ranks puts
// the next popcount codes into the lanes whose bits are set (int8: pshufb over the next 16 codes;
// int4: vpermb over the 32 nibbles of the next 16 bytes), and a masked add leaves the other lanes'
// sums untouched. Four rows run at once, so their additions' latencies overlap. No vpexpandb: on the
// AMD EPYC this was written on, the expand was the slowest step (int8 70% bitmask 1536x576: 293 -> 149 us).
#include <cstring>

#include "quant.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define SE_Q512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,avx2,fma,f16c,popcnt,bmi2")))

namespace se {
namespace {

// The 16 int4 codes starting at an even code number p, one a byte: 8 bytes, their nibbles interleaved.
SE_Q512 inline __m128i even_nibbles16(const uint8_t* codes, int64_t bytes, int64_t p) {
  const int64_t b = p >> 1;
  const __m128i raw = b + 8 <= bytes ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + b))
                                     : _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << (bytes - b)) - 1), codes + b);
  const __m128i low = _mm_set1_epi8(15);
  return _mm_unpacklo_epi8(_mm_and_si128(raw, low), _mm_and_si128(_mm_srli_epi16(raw, 4), low));
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

// For each mask byte, where each of its 8 lanes finds its code among the row's next codes: byte j is
// the rank of bit j among the set bits, or 0x80 (pshufb's "zero") where bit j is clear.
struct RankTable {
  uint64_t lanes[256];
  RankTable() {
    for (unsigned b = 0; b < 256; ++b) {
      uint64_t entry = 0;
      unsigned rank = 0;
      for (unsigned j = 0; j < 8; ++j) entry |= uint64_t((b >> j) & 1 ? rank++ : 0x80u) << (8 * j);
      lanes[b] = entry;
    }
  }
};
const RankTable kRanks;

// 16 consecutive int8 codes from code number p (past the stream's end 0).
SE_Q512 inline __m128i codes16(const QuantView& w, int64_t p) {
  if (p + 16 <= w.codes_bytes) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.codes + p));
  return _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << (w.codes_bytes - p)) - 1), w.codes + p);
}

// The codes of the 16 columns whose mask bytes are b0, b1, in their column lanes (0 where not stored),
// by the rank table (the second byte's ranks start after the first byte's popcount). int8: pshufb over
// the next 16 codes.
SE_Q512 inline __m128i bitmask_codes8(const QuantView& w, int64_t p, unsigned b0, unsigned b1) {
  const uint64_t shift = uint64_t(__builtin_popcount(b0)) * 0x0101010101010101ULL;
  const __m128i idx = _mm_set_epi64x(static_cast<long long>(kRanks.lanes[b1] + shift),
                                     static_cast<long long>(kRanks.lanes[b0]));
  return _mm_shuffle_epi8(codes16(w, p), idx);
}

// int4: 32 codes from the even code number `base` (16 bytes, nibbles spread one a byte; 0 past the end).
// A bitmask row at 70% sparsity spends ~5 codes per 16 columns, so one window serves several steps.
SE_Q512 inline __m256i window32(const QuantView& w, int64_t base) {
  const int64_t b = base >> 1;
  const __m128i raw = b + 16 <= w.codes_bytes
                          ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.codes + b))
                          : _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << (w.codes_bytes - b)) - 1), w.codes + b);
  const __m128i low = _mm_set1_epi8(15);
  const __m128i lo = _mm_and_si128(raw, low), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi8(lo, hi)), _mm_unpackhi_epi8(lo, hi), 1);
}

// int4: one byte permute (vpermb) over the window picks each stored lane's code (p - base <= 16, so the
// highest index is 7 + 8 + 16 = 31), zeroing the lanes not stored.
SE_Q512 inline __m128i bitmask_codes4(__m256i window, int64_t offset, unsigned b0, unsigned b1) {
  const uint64_t shift = uint64_t(__builtin_popcount(b0)) * 0x0101010101010101ULL;
  const uint64_t start = uint64_t(offset) * 0x0101010101010101ULL;
  const __m128i idx = _mm_set_epi64x(static_cast<long long>(kRanks.lanes[b1] + shift + start),
                                     static_cast<long long>(kRanks.lanes[b0] + start));
  const __mmask32 lanes = b0 | (b1 << 8);
  return _mm256_castsi256_si128(_mm256_maskz_permutexvar_epi8(lanes, _mm256_castsi128_si256(idx), window));
}

// R rows at once (independent sums, so the additions' latency overlaps); one input load per 16 columns.
template <int BITS, int R>
SE_Q512 void bitmask_rows_r(const QuantView& w, int64_t r, const float* x, float* y) {
  const uint8_t* mask[R];
  int64_t p[R], base[R];  // int4: row i's window holds codes base[i] .. base[i] + 31
  __m512 acc[R];
  __m256i window[R];
  Grid k[R];
  for (int i = 0; i < R; ++i) {
    mask[i] = w.index + (r + i) * w.index_bytes;
    p[i] = w.offsets[r + i];
    base[i] = p[i] - 32;  // forces a load at the first step
    window[i] = _mm256_setzero_si256();
    acc[i] = _mm512_setzero_ps();
  }
  const int64_t chunks = (w.in + 15) / 16;
  int64_t g = 0, next = 0;  // the group of the current chunk, and the column where the next one starts
  for (int64_t c = 0; c < chunks; ++c) {
    if (c * 16 >= next) {
      g = c * 16 / w.group_size;
      next = (g + 1) * w.group_size;
      for (int i = 0; i < R; ++i) k[i] = grid_of(w, r + i, g);
    }
    const bool full = c * 16 + 16 <= w.in;
    const __m512 xv = full ? _mm512_loadu_ps(x + c * 16)
                           : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (w.in - c * 16)) - 1), x + c * 16);
    for (int i = 0; i < R; ++i) {
      const unsigned b0 = mask[i][2 * c], b1 = 2 * c + 1 < w.index_bytes ? mask[i][2 * c + 1] : 0;
      const __mmask16 lanes = static_cast<__mmask16>(b0 | (b1 << 8));
      __m128i q;
      if (BITS == 8) {
        q = bitmask_codes8(w, p[i], b0, b1);
      } else {
        if (p[i] + 16 > base[i] + 32) window[i] = window32(w, base[i] = p[i] & ~int64_t(1));
        q = bitmask_codes4(window[i], p[i] - base[i], b0, b1);
      }
      p[i] += __builtin_popcount(b0 | (b1 << 8));
      acc[i] = _mm512_mask_add_ps(acc[i], lanes, acc[i], _mm512_mul_ps(dequant16<BITS>(k[i], q), xv));
    }
  }
  for (int i = 0; i < R; ++i) y[r + i] = finish(acc[i]);
}

template <int BITS, int R>
SE_Q512 void dense_rows_r(const QuantView& w, int64_t r, const float* x, float* y) {
  const uint8_t* codes[R];
  __m512 acc[R];
  Grid k[R];
  for (int i = 0; i < R; ++i) {
    codes[i] = w.codes + (r + i) * w.code_row_bytes;
    acc[i] = _mm512_setzero_ps();
  }
  const int64_t chunks = (w.in + 15) / 16;
  int64_t g = 0, next = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    if (c * 16 >= next) {
      g = c * 16 / w.group_size;
      next = (g + 1) * w.group_size;
      for (int i = 0; i < R; ++i) k[i] = grid_of(w, r + i, g);
    }
    const int64_t left = w.in - c * 16;
    const __mmask16 lanes = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
    const __m512 xv = _mm512_maskz_loadu_ps(lanes, x + c * 16);
    for (int i = 0; i < R; ++i) {
      __m128i q;
      if (BITS == 8)
        q = left >= 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[i] + c * 16))
                       : _mm_maskz_loadu_epi8(lanes, codes[i] + c * 16);
      else
        q = even_nibbles16(codes[i], w.code_row_bytes, c * 16);
      acc[i] = _mm512_mask_add_ps(acc[i], lanes, acc[i], _mm512_mul_ps(dequant16<BITS>(k[i], q), xv));
    }
  }
  for (int i = 0; i < R; ++i) y[r + i] = finish(acc[i]);
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
  int64_t next = 0;  // the column where the next group starts
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
    if (c * 32 >= next) {
      const int64_t g = c * 32 / w.group_size;
      next = (g + 1) * w.group_size;
      k = grid_of(w, r, g);
    }
    const __m128i q = BITS == 8 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + c * 16))
                                : even_nibbles16(codes, w.code_row_bytes, c * 16);
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
  constexpr int R = 4;
  if (w.format == kQBitmask) {
    int64_t r = r0;
    for (; r + R <= r1; r += R) bitmask_rows_r<BITS, R>(w, r, x, y);
    for (; r < r1; ++r) bitmask_rows_r<BITS, 1>(w, r, x, y);
  } else if (w.format == kQDense) {
    int64_t r = r0;
    for (; r + R <= r1; r += R) dense_rows_r<BITS, R>(w, r, x, y);
    for (; r < r1; ++r) dense_rows_r<BITS, 1>(w, r, x, y);
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
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi");  // vpermb (int4 bitmask codes)
  if (!vector_shape(w) || !vbmi) {
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
