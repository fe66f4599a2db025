// A design study, not library code: would a sparse layout whose work follows the stored values beat the act8
// bitmask kernel (csrc/quant_act8.cpp) on one decode matvec? Same random 70% int4 weights in both, 1 token,
// 1 thread, rounds alternated; from DRAM (cycling through copies) and in cache (one copy).
//
// The index layout: per row and 128-column block, the n stored columns' offsets in the block (a byte each),
// then their int4 codes (n / 2 bytes, low nibble first); the counts n in an array of their own, so that where
// a block starts does not wait on a load from the stream (with the count in the stream, a row's blocks were
// a chain of dependent loads: 3x slower from DRAM). A block's product is one
// vpermi2b (the stored columns' activations, from the block's 128 int8 inputs held as q + 128), one nibble
// spread of the codes (minus the zero point) and one vpdpbusd; 128 * sum(c - z) over the block, kept per row
// and block, takes the +128 back out. Blocks here hold at most 64 values (a real layout would split fuller
// ones). Its arithmetic is not act8's (other lanes, one activation scale per 128 columns), so it is checked
// against a float64 sum, not bit for bit.
//
//   g++ -O3 -std=c++17 -fno-math-errno -fno-trapping-math -ffp-contract=off \
//       -I src/sparse_expansion/kernels/csrc -o /tmp/index_layout benchmarks/decode/prototypes/index_layout.cpp \
//       src/sparse_expansion/kernels/csrc/quant_act8.cpp src/sparse_expansion/kernels/csrc/quant_scalar.cpp \
//       src/sparse_expansion/kernels/csrc/quant_avx512.cpp
//   /tmp/index_layout [DENSITY=0.3] [COPIES=40] [ROUNDS=3]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "quant.h"

#define SE_IDX __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx2,bmi2")))

namespace {

constexpr int kRows = 5632, kIn = 2048, kGroup = 128, kBlocks = kIn / kGroup;

struct Weights {
  // the library's int4 bitmask (groups of 128)
  std::vector<uint8_t> mask, codes, zeros;
  std::vector<int64_t> offsets;
  std::vector<float> scales;
  se::QuantView view{};
  // the index layout of the same values
  std::vector<uint8_t> stream, count;  // count: [rows, blocks]
  std::vector<int64_t> row_start;
  std::vector<int32_t> plus128;  // 128 * sum(c - z) per row and block
  // float64 reference per row: sum (c - z) s q d over stored columns, with q, d per 128 columns
  std::vector<int> ref_col, ref_code;
  std::vector<int64_t> ref_start;
};

void build(Weights& w, float density, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  w.mask.assign(static_cast<size_t>(kRows) * kIn / 8, 0);
  w.offsets.resize(kRows + 1);
  w.row_start.resize(kRows + 1);
  w.ref_start.resize(kRows + 1);
  w.scales.resize(kRows * kBlocks);
  w.zeros.resize(kRows * kBlocks);
  std::vector<uint8_t> values;
  for (int r = 0; r < kRows; ++r) {
    w.offsets[r] = static_cast<int64_t>(values.size());
    w.row_start[r] = static_cast<int64_t>(w.stream.size());
    w.ref_start[r] = static_cast<int64_t>(w.ref_col.size());
    for (int b = 0; b < kBlocks; ++b) {
      const float s = 0.01f + 0.01f * u(rng);
      const uint8_t z = rng() & 15;
      w.scales[r * kBlocks + b] = s;
      w.zeros[r * kBlocks + b] = z;
      std::vector<int> cols, codes;
      for (int j = 0; j < kGroup; ++j)
        if (u(rng) < density && cols.size() < 64) cols.push_back(j), codes.push_back(static_cast<int>(rng() & 15));
      w.count.push_back(static_cast<uint8_t>(cols.size()));
      int32_t sum = 0;
      for (int j : cols) w.stream.push_back(static_cast<uint8_t>(j));
      for (size_t i = 0; i < codes.size(); i += 2)
        w.stream.push_back(static_cast<uint8_t>(codes[i] | ((i + 1 < codes.size() ? codes[i + 1] : 0) << 4)));
      for (size_t i = 0; i < cols.size(); ++i) {
        const int col = b * kGroup + cols[i];
        w.mask[static_cast<size_t>(r) * kIn / 8 + col / 8] |= static_cast<uint8_t>(1u << (col % 8));
        values.push_back(static_cast<uint8_t>(codes[i]));
        w.ref_col.push_back(col);
        w.ref_code.push_back(codes[i]);
        sum += codes[i] - z;
      }
      w.plus128.push_back(128 * sum);
    }
  }
  w.offsets[kRows] = static_cast<int64_t>(values.size());
  w.row_start[kRows] = static_cast<int64_t>(w.stream.size());
  w.ref_start[kRows] = static_cast<int64_t>(w.ref_col.size());
  w.stream.resize(w.stream.size() + 128, 0);  // the kernel's full-width loads may read past the last block
  w.codes.assign((values.size() + 1) / 2, 0);
  for (size_t i = 0; i < values.size(); ++i) w.codes[i / 2] |= static_cast<uint8_t>(values[i] << ((i & 1) * 4));
  se::QuantView v{};
  v.format = se::kQBitmask;
  v.bits = 4;
  v.codes = w.codes.data();
  v.codes_bytes = static_cast<int64_t>(w.codes.size());
  v.index = w.mask.data();
  v.index_bytes = kIn / 8;
  v.offsets = w.offsets.data();
  v.scales = w.scales.data();
  v.zeros = w.zeros.data();
  v.in = kIn;
  v.groups = kBlocks;
  v.group_size = kGroup;
  w.view = v;
}

// The inputs quantized per 128 columns: q (int8), q + 128 (uint8), d per block.
struct Input {
  alignas(64) int8_t q[kIn];
  alignas(64) uint8_t qu[kIn];
  float d[kBlocks];
};

void quantize_input(const std::vector<float>& x, Input& in) {
  for (int b = 0; b < kBlocks; ++b) {
    float amax = 0.f;
    for (int j = 0; j < kGroup; ++j) amax = std::max(amax, std::fabs(x[b * kGroup + j]));
    in.d[b] = amax / 127.f;
    for (int j = 0; j < kGroup; ++j) {
      const int q = amax > 0.f ? static_cast<int>(std::nearbyint(x[b * kGroup + j] * (127.f / amax))) : 0;
      in.q[b * kGroup + j] = static_cast<int8_t>(q);
      in.qu[b * kGroup + j] = static_cast<uint8_t>(q + 128);
    }
  }
}

SE_IDX inline __m512i spread_nibbles(__m256i raw) {
  const __m512i wide = _mm512_cvtepu8_epi16(raw);
  return _mm512_ternarylogic_epi32(wide, _mm512_slli_epi16(wide, 4), _mm512_set1_epi16(0x0F0F), 0xA8);
}

// Rows r .. r + 3 of the index layout.
SE_IDX void index_rows4(const Weights& w, const Input& in, int r, int step, float* y) {
  const int rows[4] = {r, r + step, r + 2 * step, r + 3 * step};
  const uint8_t* p[4];
  __m512 acc[4];
  for (int i = 0; i < 4; ++i) p[i] = w.stream.data() + w.row_start[rows[i]], acc[i] = _mm512_setzero_ps();
  for (int b = 0; b < kBlocks; ++b) {
    const __m512i lo = _mm512_load_si512(in.qu + kGroup * b), hi = _mm512_load_si512(in.qu + kGroup * b + 64);
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      const int row = rows[i];
      const unsigned n = w.count[row * kBlocks + b];
      _mm_prefetch(reinterpret_cast<const char*>(p[i]) + 1024, _MM_HINT_T0);
      const __mmask64 k = _bzhi_u64(~0ULL, n);
      const __m512i x = _mm512_maskz_permutex2var_epi8(k, lo, _mm512_maskz_loadu_epi8(k, p[i]), hi);
      const __m512i c = _mm512_sub_epi8(spread_nibbles(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p[i] + n))),
                                        _mm512_set1_epi8(static_cast<char>(w.zeros[row * kBlocks + b])));
      __m512i v = _mm512_dpbusd_epi32(_mm512_setzero_si512(), x, c);
      v = _mm512_mask_sub_epi32(v, 1, v, _mm512_set1_epi32(w.plus128[row * kBlocks + b]));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(in.d[b] * w.scales[row * kBlocks + b]), acc[i]);
      p[i] += n + (n + 1) / 2;
    }
  }
  for (int i = 0; i < 4; ++i) y[rows[i]] = _mm512_reduce_add_ps(acc[i]);
}

void index_matvec(const Weights& w, const Input& in, float* y) {
  for (int r = 0; r < kRows / 4; ++r) index_rows4(w, in, r, kRows / 4, y);  // four streams far apart (passes.h)
}

double reference(const Weights& w, const Input& in, int r) {
  double s = 0;
  for (int64_t t = w.ref_start[r]; t < w.ref_start[r + 1]; ++t) {
    const int col = w.ref_col[t], b = col / kGroup;
    s += double(w.ref_code[t] - w.zeros[r * kBlocks + b]) * in.q[col] * double(in.d[b]) * w.scales[r * kBlocks + b];
  }
  return s;
}

template <class F>
double median_us(const std::vector<Weights>& ws, int copies, int reps, F f) {
  std::vector<double> t;
  for (int rep = 0; rep < reps; ++rep)
    for (int c = 0; c < copies; ++c) {
      const auto start = std::chrono::steady_clock::now();
      f(ws[c]);
      t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
    }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (!__builtin_cpu_supports("avx512vbmi") || !__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("bmi2")) {
    std::printf("index_layout: needs AVX-512 VBMI and VNNI and BMI2; this CPU lacks one\n");
    return 0;
  }
  const float density = argc > 1 ? std::strtof(argv[1], nullptr) : 0.3f;
  const int copies = argc > 2 ? std::atoi(argv[2]) : 40, rounds = argc > 3 ? std::atoi(argv[3]) : 3;
  std::vector<Weights> ws(copies);
  for (int c = 0; c < copies; ++c) build(ws[c], density, 7 + c);
  std::vector<float> x(kIn), y(kRows);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  Input in;
  quantize_input(x, in);
  se::Act8 act;
  se::quant_act8_prepare_level(x.data(), kIn, act, 2);
  index_matvec(ws[0], in, y.data());
  double err = 0, scale = 0;
  for (int r = 0; r < kRows; ++r) err = std::max(err, std::fabs(y[r] - reference(ws[0], in, r))), scale = std::max(scale, std::fabs(reference(ws[0], in, r)));
  const Weights& w0 = ws[0];
  const double bitmask_mb = (w0.codes.size() + w0.mask.size() + w0.offsets.size() * 8.0 + w0.scales.size() * 5.0) / 1e6;
  const double index_mb = (w0.stream.size() - 128 + w0.count.size() + w0.row_start.size() * 8.0 + w0.scales.size() * 5.0 + w0.plus128.size() * 4.0) / 1e6;
  std::printf("%dx%d, %.0f%% stored, int4 groups of %d, %d copies; act8 vector kernels: %s\n", kRows, kIn, 100 * density,
              kGroup, copies, se::act8_vector_supported() ? "yes" : "no (bitmask times are the scalar loops)");
  std::printf("index layout: max |y - float64 sum| = %.2e of max |y| %.2e\n", err, scale);
  std::printf("| round | bitmask act8 (%.2f MB), us from DRAM | in cache | index layout (%.2f MB), us from DRAM | in cache |\n",
              bitmask_mb, index_mb);
  std::printf("|---|---|---|---|---|\n");
  auto bitmask = [&](const Weights& w) { se::quant_rows_act8(w.view, 0, kRows, act, y.data(), 2); };
  auto index = [&](const Weights& w) { index_matvec(w, in, y.data()); };
  for (int round = 1; round <= rounds; ++round) {
    const double bd = median_us(ws, copies, 3, bitmask), bc = median_us(ws, 1, 30, bitmask);
    const double id = median_us(ws, copies, 3, index), ic = median_us(ws, 1, 30, index);
    std::printf("| %d | %.0f | %.0f | %.0f | %.0f |\n", round, bd, bc, id, ic);
  }
  return 0;
}
