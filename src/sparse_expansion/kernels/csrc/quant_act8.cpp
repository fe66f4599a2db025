// The decode arithmetic of quant.h ("act8"): the input quantized to int8 in blocks of 32, the codes
// dotted with it in exact integers (AVX-512 VNNI vpdpbusd, 64 columns an instruction), one float32
// fused multiply-add per 16 lanes and 64 columns, and the zero points' share once per row (quant.h step 4).
// The scalar loops are the definition; the vector ones follow them lane for lane, so both give the same bits.
//
// Codes reach the dot product in column order, one a byte: int8 dense rows as stored; int4 nibbles
// spread to bytes by widening and a shift (int4 bitmask codes from their Act8Layout, a chunk's codes on a
// fresh byte); bitmask codes put into the columns their mask bits name by vpexpandb, the columns it does
// not store filled with the group's zero point (whose share step 4 takes away with every other column's,
// so a bitmask row is computed as the dense row it stands for).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "passes.h"
#include "quant.h"

namespace se {

bool quant_act8_applies(const QuantView& w) {
  if (w.format == kQNM) return false;
  return w.groups == 1 || w.group_size == 32 || w.group_size % 64 == 0;
}

void quant_act8_size(int64_t in, Act8& a) {
  a.in = in;
  a.chunks = (in + 63) / 64;
  const size_t cols = static_cast<size_t>(a.chunks) * 64;
  if (a.q.size() < cols) {
    a.q.resize(cols);
    a.lane_d.resize(static_cast<size_t>(a.chunks) * 16);
    a.block_q.resize(static_cast<size_t>(a.chunks) * 2);
  }
}

void quant_act8_prepare(const float* x, int64_t in, Act8& a) {
  quant_act8_size(in, a);
  for (int64_t b = 0; b < 2 * a.chunks; ++b) {
    const int64_t lo = b * 32, hi = lo + 32 < in ? lo + 32 : in;
    float amax = 0.f;
    for (int64_t j = lo; j < hi; ++j) {
      const float v = std::fabs(x[j]);
      amax = v > amax ? v : amax;
    }
    const float inv = amax > 0.f ? 127.0f / amax : 0.f;
    int32_t sum = 0;
    for (int64_t j = lo; j < lo + 32; ++j) {
      float r = j < hi ? std::nearbyint(x[j] * inv) : 0.f;
      r = r > 127.f ? 127.f : r < -127.f ? -127.f : r;
      const int qj = r == r ? static_cast<int>(r) : 0;  // NaN -> 0
      a.q[j] = static_cast<int8_t>(qj);
      sum += qj;
    }
    a.block_q[b] = sum;
    const float d = amax / 127.0f;
    for (int l = 0; l < 8; ++l) a.lane_d[(b / 2) * 16 + (b % 2) * 8 + l] = d;
  }
}

namespace {

// The group of the block of lane half `half` in chunk k (clamped: blocks past the row have q = 0).
inline int64_t chunk_group(const QuantView& w, int64_t k, int half) {
  if (w.groups == 1) return 0;
  const int64_t g = (k * 64 + half * 32) / w.group_size;
  return g < w.groups ? g : w.groups - 1;
}

// Row r's codes in column order, [chunks * 64] bytes (a bitmask's unstored columns, and columns past
// the row, hold their group's zero point).
void row_codes(const QuantView& w, int64_t r, int64_t chunks, uint8_t* out) {
  for (int64_t c = 0; c < chunks * 64; ++c) out[c] = w.zeros[r * w.groups + chunk_group(w, c / 64, (c / 32) % 2)];
  if (w.format == kQDense) {
    const uint8_t* codes = w.codes + r * w.code_row_bytes;
    for (int64_t c = 0; c < w.in; ++c) out[c] = static_cast<uint8_t>(quant_code(codes, w.bits, c));
    return;
  }
  const uint8_t* mask = w.index + r * w.index_bytes;
  int64_t p = w.offsets[r];
  for (int64_t b = 0; b < w.index_bytes; ++b)
    for (unsigned bits = mask[b]; bits; bits &= bits - 1)
      out[b * 8 + __builtin_ctz(bits)] = static_cast<uint8_t>(quant_code(w.codes, w.bits, p++));
}

// X_g of quant.h step 4 for every group of w: the blocks' d_b * Q_b added in block order.
void group_inputs(const QuantView& w, const Act8& a, std::vector<float>& xg) {
  xg.assign(static_cast<size_t>(w.groups), 0.f);
  for (int64_t b = 0; b < 2 * a.chunks; ++b) {
    const float db = a.lane_d[(b / 2) * 16 + (b % 2) * 8];
    float& x = xg[chunk_group(w, b / 2, static_cast<int>(b % 2))];
    x = x + db * static_cast<float>(a.block_q[b]);
  }
}

// The 64 mask bits of chunk k (a fixed 8-byte load inside the row; the last chunk byte by byte).
inline uint64_t mask_bits(const uint8_t* mask, int64_t bytes, int64_t k) {
  uint64_t m = 0;
  if (8 * k + 8 <= bytes) {
    std::memcpy(&m, mask + 8 * k, 8);
    return m;
  }
  for (int64_t b = 8 * k; b < bytes; ++b) m |= uint64_t(mask[b]) << (8 * (b - 8 * k));
  return m;
}

// Whether row r of a bitmask stores nothing (its result is exactly 0).
inline bool empty_row(const QuantView& w, int64_t r) {
  return w.format == kQBitmask && w.offsets[r + 1] == w.offsets[r];
}

}  // namespace

void quant_rows_act8_scalar(const QuantView& w, int64_t r0, int64_t r1, const Act8& a, float* y) {
  std::vector<uint8_t> codes(static_cast<size_t>(a.chunks) * 64);
  std::vector<float> xg;
  group_inputs(w, a, xg);
  const bool per_row = w.groups == 1;  // the row's one scale applied after the sum (quant.h step 4)
  for (int64_t r = r0; r < r1; ++r) {
    row_codes(w, r, a.chunks, codes.data());
    float acc[16] = {};
    for (int64_t k = 0; k < a.chunks; ++k) {
      for (int l = 0; l < 16; ++l) {
        const int64_t g = chunk_group(w, k, l / 8);
        int v = 0;
        for (int i = 0; i < 4; ++i) {
          const int64_t j = k * 64 + 4 * l + i;
          v += int(codes[j]) * int(a.q[j]);
        }
        const float m = per_row ? a.lane_d[k * 16 + l] : a.lane_d[k * 16 + l] * w.scales[r * w.groups + g];
        acc[l] = std::fma(static_cast<float>(v), m, acc[l]);
      }
    }
    float p[16] = {};
    for (int64_t g = 0; g < w.groups; ++g) {
      const float z = static_cast<float>(w.zeros[r * w.groups + g]);
      const float zs = per_row ? z : z * w.scales[r * w.groups + g];
      p[g % 16] = std::fma(zs, xg[g], p[g % 16]);
    }
    for (int l = 0; l < 16; ++l) acc[l] = acc[l] - p[l];
    const float sum = per_row ? w.scales[r] * quant_tree_sum(acc) : quant_tree_sum(acc);
    y[r] = empty_row(w, r) ? 0.f : sum;
  }
}

}  // namespace se

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define SE_A8                                                                                                \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,avx512vnni,avx2,fma,f16c,popcnt," \
                        "bmi,bmi2")))

namespace se {
namespace {

// The 64 int4 codes of 32 bytes, one a byte in stream order (low nibble first): each byte widened to a
// 16-bit lane and its high nibble shifted into the lane's upper byte. Three instructions where a byte
// permute, a shift, a blend and a mask were four (a dense int4 row in cache: 4.65 -> 4.03 cycles per 64
// columns in a stand-alone loop; 5632x2048 from DRAM ~8-15% less, kernel_ab.sh).
SE_A8 inline __m512i spread_nibbles(__m256i raw) {
  const __m512i wide = _mm512_cvtepu8_epi16(raw);
  return _mm512_ternarylogic_epi32(wide, _mm512_slli_epi16(wide, 4), _mm512_set1_epi16(0x0F0F), 0xA8);  // (a|b)&c
}

// 32 bytes of `codes` from byte b, the bytes at or past `bytes` not read (zero).
SE_A8 inline __m256i load32(const uint8_t* codes, int64_t b, int64_t bytes) {
  if (b + 32 <= bytes) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b));
  return _mm256_maskz_loadu_epi8(static_cast<__mmask32>(_bzhi_u32(~0u, static_cast<unsigned>(bytes - b))), codes + b);
}

SE_A8 inline float tree(__m512 acc) {
  alignas(64) float s[16];
  _mm512_store_ps(s, acc);
  return quant_tree_sum(s);
}

// How a row's grids meet the chunks: one grid for the whole row (its scale and zero point read once),
// two groups of 32 columns a chunk, or groups of a multiple of 64 columns (one a chunk).
enum Grid : int { kPerRow = 0, kHalves = 1, kWide = 2 };

// Whether a loop's chunks need the bounds care of a short last chunk (Tail) or not (NoTail): both kernels run
// the chunks inside the row in loops of their own, without the test.
using NoTail = std::false_type;
using Tail = std::true_type;

// Row r's lanes acc[l] - p[l] (p of quant.h step 4, 16 groups a step: the scalar loop's lanes), whose tree is
// its result (times the row's scale for a per-row grid).
template <int GRID>
SE_A8 inline __m512 row_lanes(const QuantView& w, int64_t r, const float* xg, __m512 acc) {
  if (GRID == kPerRow) {
    const float p0 = std::fma(static_cast<float>(w.zeros[r]), xg[0], 0.f);
    return _mm512_mask_sub_ps(acc, 1, acc, _mm512_set1_ps(p0));
  }
  const uint8_t* z = w.zeros + r * w.groups;
  const float* s = w.scales + r * w.groups;
  __m512 p = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; g += 16) {
    const __mmask16 m = w.groups - g >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << (w.groups - g)) - 1);
    const __m512 zf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, z + g)));
    p = _mm512_fmadd_ps(_mm512_mul_ps(zf, _mm512_maskz_loadu_ps(m, s + g)), _mm512_maskz_loadu_ps(m, xg + g), p);
  }
  return _mm512_sub_ps(acc, p);
}

// Row r's result alone.
template <int GRID>
SE_A8 inline float row_result(const QuantView& w, int64_t r, const float* xg, __m512 acc) {
  const float t = tree(row_lanes<GRID>(w, r, xg, acc));
  return GRID == kPerRow ? w.scales[r] * t : t;
}

// quant_tree_sum of four rows' lanes side by side: the same sums of the same lanes, level by level, the rows
// packed two and then four to a register; lane 4i of the last level holds row i's. (One row at a time, the
// trees and the stores before them were ~12% of a 512x2048 bitmask int4 call in cache, in a stand-alone build.)
SE_A8 inline __m128 tree4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));  // l + 8
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
  const __m512 s4 = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));  // l + 4
  const __m512 s2 = _mm512_add_ps(s4, _mm512_permute_ps(s4, 0x0E));                                         // l + 2
  const __m512 s1 = _mm512_add_ps(s2, _mm512_permute_ps(s2, 0x01));                                         // l + 1
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s1));
}

// The results of rows rows[0..3] into y (a bitmask row that stores nothing: 0).
template <int GRID>
SE_A8 inline void four_results(const QuantView& w, const int64_t* rows, const float* xg, __m512 a0, __m512 a1, __m512 a2,
                               __m512 a3, float* y) {
  __m128 t = tree4(row_lanes<GRID>(w, rows[0], xg, a0), row_lanes<GRID>(w, rows[1], xg, a1),
                   row_lanes<GRID>(w, rows[2], xg, a2), row_lanes<GRID>(w, rows[3], xg, a3));
  if (GRID == kPerRow)
    t = _mm_mul_ps(_mm_setr_ps(w.scales[rows[0]], w.scales[rows[1]], w.scales[rows[2]], w.scales[rows[3]]), t);
  alignas(16) float out[4];
  _mm_store_ps(out, t);
  for (int i = 0; i < 4; ++i) y[rows[i]] = empty_row(w, rows[i]) ? 0.f : out[i];
}

// The scales of a chunk's two groups of 32 (kHalves) in its lanes 0-7 and 8-15 (s0: the first group's; s1:
// the second's). In a chunk inside the row (not `tail`) the second is the next group: one 8-byte load and a
// permute instead of two broadcasts and a blend (with halves_zero: 5632x2048 bitmask int4 70% in cache -12% in a
// stand-alone build; dense rows -10% there, unchanged through the library: BENCHMARKS.md).
SE_A8 inline __m512 halves_scale(bool tail, const float* s0, float s1) {
  if (tail) return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(*s0), _mm512_set1_ps(s1));
  const __m128i two = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s0));
  return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                               _mm512_castps128_ps512(_mm_castsi128_ps(two)));
}

// The same for the two groups' zero points, a byte a column (bytes 0-31 and 32-63).
SE_A8 inline __m512i halves_zero(bool tail, const uint8_t* z0, uint8_t z1) {
  if (tail)
    return _mm512_mask_blend_epi8(0xFFFFFFFF00000000ULL, _mm512_set1_epi8(static_cast<char>(*z0)),
                                  _mm512_set1_epi8(static_cast<char>(z1)));
  uint16_t two;
  std::memcpy(&two, z0, 2);
  return _mm512_permutexvar_epi8(_mm512_set_epi64(0x0101010101010101LL, 0x0101010101010101LL, 0x0101010101010101LL,
                                                  0x0101010101010101LL, 0, 0, 0, 0),
                                 _mm512_castsi128_si512(_mm_cvtsi32_si128(two)));
}

// R dense rows at once, r, r + step, ..., r + (R - 1) step: the input's chunk is loaded once for all of them.
// GRID: see Grid. `xg`: X_g. (Bitmask rows: bitmask_rows4.) The chunks inside the row run without the test for
// a short last chunk, which in the loop cost a branch a row and chunk (5632x2048 int4 in cache -17% for groups
// of 32, -25% for 128: results/2026-12-07-cpu2-zen5/kernel_ab_dense_5632x2048.md).
template <int BITS, int R, int GRID>
SE_A8 void rows_r(const QuantView& w, int64_t r, int64_t step, const Act8& a, const int32_t* block_group,
                  const float* xg, float* y) {
  __m512 acc[R];
  const uint8_t* codes[R];
  const float* sc[R];
  for (int i = 0; i < R; ++i) {
    const int64_t row = r + i * step;
    acc[i] = _mm512_setzero_ps();
    codes[i] = w.codes + row * w.code_row_bytes;
    sc[i] = w.scales + row * w.groups;
    // the zero points of the row 8 on: read once at a row's end, they are too slow a stream for the CPU's
    // own prefetcher (each line a miss; 192x576 int4 g32 from DRAM 6.7 -> 3.4 us, 5632x576 97 -> 74 in a
    // stand-alone build; per-row grids unchanged, so left out)
    if (GRID != kPerRow) _mm_prefetch(reinterpret_cast<const char*>(w.zeros + (row + 8) * w.groups), _MM_HINT_T0);
  }
  auto chunk = [&](auto tail, int64_t k) SE_A8 {
    constexpr bool TAIL = decltype(tail)::value;
    const __m512i q = _mm512_loadu_si512(a.q.data() + 64 * k);
    const __m512 d = _mm512_loadu_ps(a.lane_d.data() + 16 * k);
    const int64_t g0 = block_group[2 * k], g1 = block_group[2 * k + 1];
    const int64_t left = TAIL ? w.in - 64 * k : 64;
#pragma GCC unroll 4  // keeps acc[] in registers (not unrolled, GCC left them on the stack: 30% slower)
    for (int i = 0; i < R; ++i) {
      __m512 s = _mm512_set1_ps(sc[i][g0]);  // (unused for kPerRow: its scale comes after the sum)
      if (GRID == kHalves) s = halves_scale(TAIL, sc[i] + g0, sc[i][g1]);
      const uint8_t* row = codes[i] + (BITS == 8 ? 64 : 32) * k;
      // each stream's bytes 2 KB on for int4 (4 KB: 5632x2048 g128 from DRAM ~+12% in a stand-alone build; 1 and
      // 3 KB no better), 4 KB for int8 (2 KB took ~8% off from DRAM there but added ~15% in cache)
      _mm_prefetch(reinterpret_cast<const char*>(row) + (BITS == 8 ? 4096 : 2048), _MM_HINT_T0);
      __m512i c;
      if (BITS == 8) {
        c = left >= 64 ? _mm512_loadu_si512(row) : _mm512_maskz_loadu_epi8(_bzhi_u64(~0ULL, static_cast<unsigned>(left)), row);
      } else {
        c = spread_nibbles(load32(row, 0, left >= 64 ? 32 : (left + 1) / 2));
      }
      const __m512i v = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c, q);
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), GRID == kPerRow ? d : _mm512_mul_ps(d, s), acc[i]);
    }
  };
  const int64_t whole = w.in / 64;  // chunks of 64 columns inside the row
  for (int64_t k = 0; k < whole; ++k) chunk(NoTail{}, k);
  for (int64_t k = whole; k < a.chunks; ++k) chunk(Tail{}, k);
  if constexpr (R == 4) {
    const int64_t rows[4] = {r, r + step, r + 2 * step, r + 3 * step};
    four_results<GRID>(w, rows, xg, acc[0], acc[1], acc[2], acc[3], y);
  } else {
    for (int i = 0; i < R; ++i) y[r + i * step] = row_result<GRID>(w, r + i * step, xg, acc[i]);
  }
}

// One chunk k of one bitmask row: its codes put into the columns its mask bits name (the zero point zb in
// the others), dotted with the input's chunk q, added to acc with the lane factors f. `src` moves past the
// codes used (int4: the chunk's bytes in the Act8Layout). TAIL: the chunk's mask bytes may run past the row,
// or (int8) a 64-byte load past the stream (the layout's padding keeps int4 loads inside it).
template <int BITS, bool TAIL>
SE_A8 inline __m512 bitmask_chunk(const QuantView& w, const uint8_t* mask, int64_t k, const uint8_t*& src,
                                  const uint8_t* end, __m512i zb, __m512i q, __m512 f, __m512 acc) {
  uint64_t m;
  if (TAIL) {
    m = mask_bits(mask, w.index_bytes, k);
  } else {
    std::memcpy(&m, mask + 8 * k, 8);
  }
  const unsigned n = static_cast<unsigned>(_mm_popcnt_u64(m));
  __m512i packed;
  if (BITS == 4) {
    packed = spread_nibbles(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
    src += (n + 1) / 2;
  } else {
    packed = TAIL && src + 64 > end ? _mm512_maskz_loadu_epi8(_bzhi_u64(~0ULL, n), src) : _mm512_loadu_si512(src);
    src += n;
  }
  const __m512i v = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_mask_expand_epi8(zb, m, packed), q);
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), f, acc);
}

// Four bitmask rows r, r + step, r + 2 step, r + 3 step (step 0: row r alone, computed four times, for the
// rows a range leaves over) in the arithmetic of quant.h, each row's state in named variables (as a branch of
// the dense loop rows_r, with arrays, GCC kept the rows' pointers on the stack; this loop took 5632x2048 int4
// 70% from DRAM 435 / 445 -> 348 / 322 us, in cache 330 / 338 -> 275 / 258: results/2026-12-07-cpu2-zen5/
// kernel_ab_5632x2048.md). kWide and kPerRow walk a group at a time, its scale and zero point read once for
// all of its chunks; the whole groups before a short last chunk in a loop of plain pointers (the same steps in
// lambdas left GCC ~40 instructions a group, pointers on the stack: 5632x2048 int4 g128 in cache -6% in a
// stand-alone build). int4 rows run side by side (step 1): their codes (Act8Layout) are one stream, in order,
// and neighbouring masks share pages; int8 codes are read in the loop, four streams, which go faster far apart
// (passes.h; side by side, a development build not kept was ~1.6x slower from DRAM). int4 rows fetch ahead the
// masks and codes of rows `next` .. next + 3 (none where next < 0), a slice every chunk, so they arrive while
// these four are summed (fetched all at once before the rows, one quad ahead, they came in late; with the loop
// of plain pointers and tree4, 5632x2048 int4 70% from DRAM, groups of 128: 265 / 255 -> 210 / 203 us, of 32:
// 379 / 340 -> 314 / 308: results/2026-12-07-cpu2-zen5/kernel_ab_spread_*5632x2048.md). The chunks whose mask
// bytes and codes need no bounds care (`plain`: all but a short last chunk) run in loops of their own
// (NoTail), the rest after them: with one loop testing each chunk, GCC kept some of the rows' code pointers on
// the stack (int8 per row and int4 in groups of 32).
template <int BITS, int GRID>
SE_A8 void bitmask_rows4(const QuantView& w, int64_t r, int64_t step, int64_t next, const Act8& a, const int32_t* block_group,
                         const float* xg, float* y) {
  const int64_t ib = w.index_bytes, ng = w.groups, rows[4] = {r, r + step, r + 2 * step, r + 3 * step};
  const uint8_t *m0 = w.index + rows[0] * ib, *m1 = w.index + rows[1] * ib, *m2 = w.index + rows[2] * ib,
                *m3 = w.index + rows[3] * ib;
  const float* sc = w.scales + r * ng;  // row i's grids at sc[i * sstep + g]
  const uint8_t* zs = w.zeros + r * ng;
  const int64_t sstep = step * ng;
  const uint8_t* end = BITS == 8 ? w.codes + w.codes_bytes : nullptr;
  const uint8_t *s0, *s1, *s2, *s3;
  if (BITS == 4) {
    const uint8_t* cc = w.chunk_codes;
    const int64_t* co = w.chunk_offsets;
    s0 = cc + co[rows[0]], s1 = cc + co[rows[1]], s2 = cc + co[rows[2]], s3 = cc + co[rows[3]];
  } else {
    s0 = w.codes + w.offsets[rows[0]], s1 = w.codes + w.offsets[rows[1]], s2 = w.codes + w.offsets[rows[2]],
    s3 = w.codes + w.offsets[rows[3]];
  }
  // int4: the slice of rows next .. next + 3 fetched with each chunk (their masks, 4 ib bytes, and their codes
  // spread evenly over the chunks); without `next`, the strides are 0 and the fetches hit lines already here
  const char *pm = reinterpret_cast<const char*>(m0), *pc = reinterpret_cast<const char*>(s0);
  int64_t pm_step = 0, pc_step = 0;
  if (BITS == 4 && next >= 0) {
    const int64_t* co = w.chunk_offsets;
    pm = reinterpret_cast<const char*>(w.index + next * ib);
    pc = reinterpret_cast<const char*>(w.chunk_codes + co[next]);
    pm_step = (4 * ib + a.chunks - 1) / a.chunks;
    pc_step = (co[next + 4] - co[next] + a.chunks - 1) / a.chunks;
  }
  auto fetch_ahead = [&]() SE_A8 {
    if constexpr (BITS == 4) {
      _mm_prefetch(pm, _MM_HINT_T0);
      _mm_prefetch(pc, _MM_HINT_T0);
      pm += pm_step, pc += pc_step;
    }
  };
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const int64_t full = ib / 8;  // chunks whose 8 mask bytes all lie in the row
  const bool tail8 = BITS == 8 && w.offsets[rows[3] + 1] + 64 > w.codes_bytes;  // the last row ends last
  const int64_t plain = tail8 ? 0 : std::min(full, a.chunks);  // chunks before it need no tail care
  auto one_chunk = [&](auto tail, int64_t k, __m512 f0, __m512 f1, __m512 f2, __m512 f3, __m512i z0, __m512i z1, __m512i z2,
                  __m512i z3) SE_A8 {
    constexpr bool T = decltype(tail)::value;
    const __m512i q = _mm512_loadu_si512(a.q.data() + 64 * k);
    fetch_ahead();
    a0 = bitmask_chunk<BITS, T>(w, m0, k, s0, end, z0, q, f0, a0);
    a1 = bitmask_chunk<BITS, T>(w, m1, k, s1, end, z1, q, f1, a1);
    a2 = bitmask_chunk<BITS, T>(w, m2, k, s2, end, z2, q, f2, a2);
    a3 = bitmask_chunk<BITS, T>(w, m3, k, s3, end, z3, q, f3, a3);
  };
  auto zero = [&](int64_t i, int64_t g) SE_A8 { return _mm512_set1_epi8(static_cast<char>(zs[i * sstep + g])); };
  if (GRID == kHalves) {
    auto half = [&](auto tail, int64_t i, int64_t g0, int64_t g1, __m512 d) SE_A8 {
      return _mm512_mul_ps(d, halves_scale(decltype(tail)::value, sc + i * sstep + g0, sc[i * sstep + g1]));
    };
    auto zhalf = [&](auto tail, int64_t i, int64_t g0, int64_t g1) SE_A8 {
      return halves_zero(decltype(tail)::value, zs + i * sstep + g0, zs[i * sstep + g1]);
    };
    auto step = [&](auto tail, int64_t k) SE_A8 {
      const int64_t g0 = block_group[2 * k], g1 = block_group[2 * k + 1];
      const __m512 d = _mm512_loadu_ps(a.lane_d.data() + 16 * k);
      one_chunk(tail, k, half(tail, 0, g0, g1, d), half(tail, 1, g0, g1, d), half(tail, 2, g0, g1, d), half(tail, 3, g0, g1, d),
                zhalf(tail, 0, g0, g1), zhalf(tail, 1, g0, g1), zhalf(tail, 2, g0, g1), zhalf(tail, 3, g0, g1));
    };
    for (int64_t k = 0; k < plain; ++k) step(NoTail{}, k);
    for (int64_t k = plain; k < a.chunks; ++k) step(Tail{}, k);
  } else {
    const int64_t per = GRID == kPerRow ? a.chunks : w.group_size / 64;  // chunks a group
    auto tail_group = [&](int64_t k0, int64_t g) SE_A8 {  // a group from the first chunk that is not plain
      const int64_t gg = g < ng ? g : ng - 1;  // blocks past the row (q = 0) take the last group (chunk_group)
      const __m512 c0 = _mm512_set1_ps(sc[gg]), c1 = _mm512_set1_ps(sc[sstep + gg]), c2 = _mm512_set1_ps(sc[2 * sstep + gg]),
                   c3 = _mm512_set1_ps(sc[3 * sstep + gg]);
      const __m512i z0 = zero(0, gg), z1 = zero(1, gg), z2 = zero(2, gg), z3 = zero(3, gg);
      const int64_t k1 = k0 + per < a.chunks ? k0 + per : a.chunks;
      auto step = [&](auto tail, int64_t k) SE_A8 {
        const __m512 d = _mm512_loadu_ps(a.lane_d.data() + 16 * k);
        if (GRID == kPerRow)
          one_chunk(tail, k, d, d, d, d, z0, z1, z2, z3);
        else
          one_chunk(tail, k, _mm512_mul_ps(d, c0), _mm512_mul_ps(d, c1), _mm512_mul_ps(d, c2), _mm512_mul_ps(d, c3), z0, z1, z2, z3);
      };
      int64_t k = k0;
      for (; k < std::min(k1, plain); ++k) step(NoTail{}, k);  // its chunks before the tail (kPerRow: the row's)
      for (; k < k1; ++k) step(Tail{}, k);
    };
    // the whole groups before the tail chunks
    const int64_t whole = plain / per, ms1 = m1 - m0, ms2 = m2 - m0, ms3 = m3 - m0;
    const uint8_t* mk = m0;  // chunk k's mask bytes of row i at mk + msi
    const int8_t* qk = a.q.data();
    const float* dk = a.lane_d.data();
    for (int64_t g = 0; g < whole; ++g) {
      const float* sg = sc + g;
      const __m512 c0 = _mm512_set1_ps(sg[0]), c1 = _mm512_set1_ps(sg[sstep]), c2 = _mm512_set1_ps(sg[2 * sstep]),
                   c3 = _mm512_set1_ps(sg[3 * sstep]);
      const __m512i z0 = zero(0, g), z1 = zero(1, g), z2 = zero(2, g), z3 = zero(3, g);
      for (const uint8_t* const group_end = mk + 8 * per; mk != group_end; mk += 8, qk += 64, dk += 16) {
        const __m512i q = _mm512_loadu_si512(qk);
        const __m512 d = _mm512_loadu_ps(dk);
        fetch_ahead();
        const bool row_grid = GRID == kPerRow;  // (its scale comes after the sum)
        a0 = bitmask_chunk<BITS, false>(w, mk, 0, s0, end, z0, q, row_grid ? d : _mm512_mul_ps(d, c0), a0);
        a1 = bitmask_chunk<BITS, false>(w, mk + ms1, 0, s1, end, z1, q, row_grid ? d : _mm512_mul_ps(d, c1), a1);
        a2 = bitmask_chunk<BITS, false>(w, mk + ms2, 0, s2, end, z2, q, row_grid ? d : _mm512_mul_ps(d, c2), a2);
        a3 = bitmask_chunk<BITS, false>(w, mk + ms3, 0, s3, end, z3, q, row_grid ? d : _mm512_mul_ps(d, c3), a3);
      }
    }
    for (int64_t k0 = whole * per, g = whole; k0 < a.chunks; k0 += per, ++g) tail_group(k0, g);
  }
  four_results<GRID>(w, rows, xg, a0, a1, a2, a3, y);
}

// quant_act8_prepare's blocks 16 lanes at a time: the same max, the same quotient, the same rounding
// (cvtps2dq rounds half to even, as nearbyint; clamping before or after rounding to +-127 agrees).
SE_A8 void prepare_avx512(const float* x, int64_t in, Act8& a) {
  const __m512 lim = _mm512_set1_ps(127.f), nlim = _mm512_set1_ps(-127.f);
  for (int64_t b = 0; b < 2 * a.chunks; ++b) {
    const int64_t lo = b * 32, n = in - lo;
    const __mmask16 m0 = n >= 16 ? 0xffff : n > 0 ? static_cast<__mmask16>((1u << n) - 1) : 0;
    const __mmask16 m1 = n >= 32 ? 0xffff : n > 16 ? static_cast<__mmask16>((1u << (n - 16)) - 1) : 0;
    const __m512 x0 = _mm512_maskz_loadu_ps(m0, x + lo), x1 = _mm512_maskz_loadu_ps(m1, x + lo + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.0f / amax : 0.f);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x0, inv), nlim), lim));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x1, inv), nlim), lim));
    const __m256i q = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(q0)), _mm512_cvtepi32_epi8(q1), 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.q.data() + lo), q);
    a.block_q[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    const float d = amax / 127.0f;
    for (int l = 0; l < 8; ++l) a.lane_d[(b / 2) * 16 + (b % 2) * 8 + l] = d;
  }
}

template <int FMT, int BITS>
SE_A8 void rows_fb(const QuantView& w, int64_t r0, int64_t r1, const Act8& a, float* y) {
  thread_local std::vector<int32_t> block_group;  // the group of each block of 32 columns (a division per chunk
  block_group.resize(static_cast<size_t>(2 * a.chunks));  // in the loop cost as much as the dot products)
  for (int64_t b = 0; b < 2 * a.chunks; ++b) block_group[b] = static_cast<int32_t>(chunk_group(w, b / 2, b % 2));
  thread_local std::vector<float> xg;
  group_inputs(w, a, xg);
  const int32_t* bg = block_group.data();
  const float* x = xg.data();
  auto run = [&](auto grid) {
    constexpr int G = decltype(grid)::value;
    if constexpr (FMT == kQBitmask) {
      auto rest = [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) bitmask_rows4<BITS, G>(w, r, 0, -1, a, bg, x, y);
      };
      if (BITS == 4) {
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4)  // the four rows two on fetched ahead (where the range ends sooner, the next four)
          bitmask_rows4<BITS, G>(w, r, 1, r + 12 <= r1 ? r + 8 : r + 8 <= r1 ? r + 4 : -1, a, bg, x, y);
        rest(r, r1);
      } else {
        quarter_passes(r0, r1, [&](int64_t r, int64_t q) { bitmask_rows4<BITS, G>(w, r, q, -1, a, bg, x, y); }, rest);
      }
    } else {
      quarter_passes(
          r0, r1, [&](int64_t r, int64_t q) { rows_r<BITS, 4, G>(w, r, q, a, bg, x, y); },
          [&](int64_t lo, int64_t hi) {
            for (int64_t r = lo; r < hi; ++r) rows_r<BITS, 1, G>(w, r, 0, a, bg, x, y);
          });
    }
  };
  if (w.groups == 1)
    run(std::integral_constant<int, kPerRow>{});
  else if (w.group_size == 32)
    run(std::integral_constant<int, kHalves>{});
  else
    run(std::integral_constant<int, kWide>{});
}

}  // namespace

bool act8_vector_supported() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi") &&
                          __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512vnni") &&
                          __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  return yes;
}

void quant_act8_prepare_level(const float* x, int64_t in, Act8& a, int level) {
  if (level < 2 || !act8_vector_supported()) {
    quant_act8_prepare(x, in, a);
    return;
  }
  quant_act8_size(in, a);
  prepare_avx512(x, in, a);
}

void quant_rows_act8(const QuantView& w, int64_t r0, int64_t r1, const Act8& a, float* y, int level) {
  if (level < 2 || !act8_vector_supported() || (w.format == kQBitmask && w.bits == 4 && w.chunk_codes == nullptr)) {
    quant_rows_act8_scalar(w, r0, r1, a, y);
    return;
  }
  const bool bitmask = w.format == kQBitmask;
  if (w.bits == 8)
    bitmask ? rows_fb<kQBitmask, 8>(w, r0, r1, a, y) : rows_fb<kQDense, 8>(w, r0, r1, a, y);
  else
    bitmask ? rows_fb<kQBitmask, 4>(w, r0, r1, a, y) : rows_fb<kQDense, 4>(w, r0, r1, a, y);
}

}  // namespace se

#else  // not x86-64

namespace se {
bool act8_vector_supported() { return false; }
void quant_act8_prepare_level(const float* x, int64_t in, Act8& a, int) { quant_act8_prepare(x, in, a); }
void quant_rows_act8(const QuantView& w, int64_t r0, int64_t r1, const Act8& a, float* y, int) {
  quant_rows_act8_scalar(w, r0, r1, a, y);
}
}  // namespace se

#endif

namespace se {

bool act8_layout_applies(const QuantView& w, int level) {
  return w.format == kQBitmask && w.bits == 4 && level >= 2 && quant_act8_applies(w) && act8_vector_supported();
}

#if defined(__x86_64__) || defined(_M_X64)
#define SE_POPCNT __attribute__((target("popcnt")))  // (only called where act8's vector kernels run)
#else
#define SE_POPCNT
#endif

SE_POPCNT void act8_layout(const QuantView& w, int64_t rows, Act8Layout& out) {
  const int64_t chunks = (w.in + 63) / 64;
  out.offsets.assign(static_cast<size_t>(rows) + 1, 0);
  int64_t bytes = 0;
  for (int64_t r = 0; r < rows; ++r) {
    out.offsets[r] = bytes;
    for (int64_t k = 0; k < chunks; ++k)
      bytes += (__builtin_popcountll(mask_bits(w.index + r * w.index_bytes, w.index_bytes, k)) + 1) / 2;
  }
  out.offsets[rows] = bytes;
  out.codes.assign(static_cast<size_t>(bytes) + 32, 0);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* to = out.codes.data() + out.offsets[r];
    int64_t p = w.offsets[r];  // the chunk's first code in the stream
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t n = __builtin_popcountll(mask_bits(w.index + r * w.index_bytes, w.index_bytes, k));
      const int64_t size = (n + 1) / 2;
      const uint8_t* from = w.codes + p / 2;
      if (p % 2 == 0) {
        std::memcpy(to, from, static_cast<size_t>(size));
      } else {  // codes p, p + 1 are the high nibble of from[i] and the low one of from[i + 1]
        const int64_t last = w.codes_bytes - p / 2 - 1;  // from[last] is the stream's last byte
        for (int64_t i = 0; i < size; ++i) to[i] = static_cast<uint8_t>((from[i] >> 4) | (i < last ? from[i + 1] << 4 : 0));
      }
      if (n % 2) to[size - 1] &= 0x0F;  // the next chunk's code, which the copy above brought along
      to += size;
      p += n;
    }
  }
}

void quant_rows_decode(const QuantView& w, int64_t r0, int64_t r1, const float* x, float* y, int level) {
  if (!quant_act8_applies(w)) {
    quant_rows(w, r0, r1, x, y, level);
    return;
  }
  thread_local Act8 act;
  quant_act8_prepare_level(x, w.in, act, level);
  quant_rows_act8(w, r0, r1, act, y, level);
}

}  // namespace se
