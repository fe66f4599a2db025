// Dense float32 / bfloat16 rows and attention dot products for the decode step: AVX-512 where the
// CPU has it (function by function, as in avx512.cpp), portable loops elsewhere. `level` is the
// instruction set the caller may use (ops.py: 0 portable, 1 AVX2, 2 AVX-512); AVX2 takes the
// portable loops, which the compiler vectorises where it can.
#include <cstring>

#include "passes.h"
#include "step.h"

namespace se {
namespace {

float bf16_to_f32(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void dense_rows_f32_scalar(const float* w, int64_t in, int64_t r0, int64_t r1, const float* x, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = w + r * in;
    float acc[8] = {};
    int64_t c = 0;
    for (; c + 8 <= in; c += 8)
      for (int k = 0; k < 8; ++k) acc[k] += row[c + k] * x[c + k];
    float sum = 0;
    for (; c < in; ++c) sum += row[c] * x[c];
    for (int k = 0; k < 8; ++k) sum += acc[k];
    y[r] = sum;
  }
}

float dot_scalar(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  float sum = 0;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (int k = 0; k < 8; ++k) sum += acc[k];
  return sum;
}

void accumulate_columns_scalar(const float* x, const float* mean, int64_t in, const float* m, int64_t k,
                               float* acc) {
  for (int64_t i = 0; i < in; ++i) {
    const float xi = mean == nullptr ? x[i] : x[i] - mean[i];
    const float* mi = m + i * k;
    for (int64_t j = 0; j < k; ++j) acc[j] += xi * mi[j];
  }
}

}  // namespace

void dense_rows_bf16_f32(const uint16_t* w, int64_t in, int64_t r0, int64_t r1, const float* x, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = w + r * in;
    float acc[8] = {};
    int64_t c = 0;
    for (; c + 8 <= in; c += 8)
      for (int k = 0; k < 8; ++k) acc[k] += bf16_to_f32(row[c + k]) * x[c + k];
    float sum = 0;
    for (; c < in; ++c) sum += bf16_to_f32(row[c]) * x[c];
    for (int k = 0; k < 8; ++k) sum += acc[k];
    y[r] = sum;
  }
}

}  // namespace se

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define SE_STEP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

namespace se {
namespace {

// Four rows (r, r + step, ...) share every input load; two column chunks per step keep eight FMA chains in
// flight.
SE_STEP_AVX512 void dense_rows4_f32(const float* w, int64_t in, int64_t r, int64_t step, int rows, const float* x,
                                    float* y) {
  __m512 acc[4][2];
  for (int k = 0; k < 4; ++k) acc[k][0] = acc[k][1] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= in; c += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
    for (int k = 0; k < rows; ++k) {
      const float* row = w + (r + k * step) * in + c;
      _mm_prefetch(reinterpret_cast<const char*>(row) + 2048, _MM_HINT_T0);
      acc[k][0] = _mm512_fmadd_ps(_mm512_loadu_ps(row), x0, acc[k][0]);
      acc[k][1] = _mm512_fmadd_ps(_mm512_loadu_ps(row + 16), x1, acc[k][1]);
    }
  }
  for (; c < in; c += 16) {
    const __mmask16 lanes = in - c >= 16 ? static_cast<__mmask16>(0xffff)
                                         : static_cast<__mmask16>((1u << (in - c)) - 1);
    const __m512 xv = _mm512_maskz_loadu_ps(lanes, x + c);
    for (int k = 0; k < rows; ++k)
      acc[k][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, w + (r + k * step) * in + c), xv, acc[k][0]);
  }
  for (int k = 0; k < rows; ++k) y[r + k * step] = _mm512_reduce_add_ps(_mm512_add_ps(acc[k][0], acc[k][1]));
}

// Up to 64 columns at once, held in registers across the whole pass over x (the portable loop keeps
// them in memory, a store and a load per input); a product is rounded before its addition, as there.
template <int BLOCKS, bool CENTRED>
SE_STEP_AVX512 void accumulate_block(const float* x, const float* mean, int64_t in, const float* m, int64_t k,
                                     int64_t width, float* acc) {
  __mmask16 lanes[BLOCKS];
  __m512 a[BLOCKS];
  for (int b = 0; b < BLOCKS; ++b) {
    const int64_t n = width - 16 * b;
    lanes[b] = n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1);
    a[b] = _mm512_maskz_loadu_ps(lanes[b], acc + 16 * b);
  }
  const int64_t ahead = (1024 + 4 * k - 1) / (4 * k) * k;  // floats: the rows ~1 KB on
  for (int64_t i = 0; i < in; ++i) {
    const __m512 xi = _mm512_set1_ps(CENTRED ? x[i] - mean[i] : x[i]);
    const float* row = m + i * k;
    for (int b = 0; b < BLOCKS; ++b) _mm_prefetch(reinterpret_cast<const char*>(row + ahead + 16 * b), _MM_HINT_T0);
    for (int b = 0; b < BLOCKS; ++b)
      a[b] = _mm512_add_ps(a[b], _mm512_mul_ps(xi, _mm512_maskz_loadu_ps(lanes[b], row + 16 * b)));
  }
  for (int b = 0; b < BLOCKS; ++b) _mm512_mask_storeu_ps(acc + 16 * b, lanes[b], a[b]);
}

template <bool CENTRED>
void accumulate_columns_avx512(const float* x, const float* mean, int64_t in, const float* m, int64_t k,
                               float* acc) {
  for (int64_t j = 0; j < k; j += 64) {
    const int64_t width = k - j < 64 ? k - j : 64;
    switch ((width + 15) / 16) {
      case 1: accumulate_block<1, CENTRED>(x, mean, in, m + j, k, width, acc + j); break;
      case 2: accumulate_block<2, CENTRED>(x, mean, in, m + j, k, width, acc + j); break;
      case 3: accumulate_block<3, CENTRED>(x, mean, in, m + j, k, width, acc + j); break;
      default: accumulate_block<4, CENTRED>(x, mean, in, m + j, k, width, acc + j); break;
    }
  }
}

SE_STEP_AVX512 float dot_avx512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, a + i), _mm512_maskz_loadu_ps(lanes, b + i), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

SE_STEP_AVX512 void axpy_avx512(float s, const float* b, float* out, int64_t n) {
  const __m512 sv = _mm512_set1_ps(s);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, lanes,
                          _mm512_fmadd_ps(sv, _mm512_maskz_loadu_ps(lanes, b + i), _mm512_maskz_loadu_ps(lanes, out + i)));
  }
}

// exp(x) for 16 lanes: 2^n e^r with n = round(x log2 e), r = x - n ln 2 (two-part ln 2) and a degree-6
// polynomial on |r| <= ln2/2; within 2 ulp of expf on the softmax's range (x <= 0), 0 below -87.
SE_STEP_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// The queries (scaled once) against every cached key, each key row loaded once for all of them; the
// exponentials 16 at a time; then the weighted values summed in registers, each value row loaded once.
template <int H>  // head_dim / 16
SE_STEP_AVX512 void attend_impl(const float* q, int nq, const float* keys, const float* values, int64_t n,
                                float scale, float* scores, float* out) {
  constexpr int G = 8;
  __m512 qv[G][H];
  float top[G];
  for (int g = 0; g < nq; ++g) {
    for (int h = 0; h < H; ++h) qv[g][h] = _mm512_mul_ps(_mm512_loadu_ps(q + (g * H + h) * 16), _mm512_set1_ps(scale));
    top[g] = -3.4e38f;
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* k = keys + j * 16 * H;
    __m512 kv[H];
    for (int h = 0; h < H; ++h) kv[h] = _mm512_loadu_ps(k + 16 * h);
    for (int g = 0; g < nq; ++g) {
      __m512 a0 = _mm512_mul_ps(qv[g][0], kv[0]);
      __m512 a1 = _mm512_mul_ps(qv[g][1], kv[1]);
      for (int h = 2; h < H; h += 2) {
        a0 = _mm512_fmadd_ps(qv[g][h], kv[h], a0);
        a1 = _mm512_fmadd_ps(qv[g][h + 1], kv[h + 1], a1);
      }
      const float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
      scores[g * n + j] = s;
      top[g] = s > top[g] ? s : top[g];
    }
  }
  float inv[G];
  for (int g = 0; g < nq; ++g) {
    float* sc = scores + g * n;
    const __m512 topv = _mm512_set1_ps(top[g]);
    __m512 sumv = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 lanes =
          n - j >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - j)) - 1);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, sc + j), topv));
      _mm512_mask_storeu_ps(sc + j, lanes, e);
      sumv = _mm512_add_ps(sumv, _mm512_maskz_mov_ps(lanes, e));
    }
    inv[g] = 1.0f / _mm512_reduce_add_ps(sumv);
  }
  __m512 acc[G][H];
  for (int g = 0; g < nq; ++g)
    for (int h = 0; h < H; ++h) acc[g][h] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* v = values + j * 16 * H;
    __m512 vv[H];
    for (int h = 0; h < H; ++h) vv[h] = _mm512_loadu_ps(v + 16 * h);
    for (int g = 0; g < nq; ++g) {
      const __m512 p = _mm512_set1_ps(scores[g * n + j]);
      for (int h = 0; h < H; ++h) acc[g][h] = _mm512_fmadd_ps(p, vv[h], acc[g][h]);
    }
  }
  for (int g = 0; g < nq; ++g)
    for (int h = 0; h < H; ++h) _mm512_storeu_ps(out + (g * H + h) * 16, _mm512_mul_ps(acc[g][h], _mm512_set1_ps(inv[g])));
}

}  // namespace

bool attend_heads_avx512(const float* q, int nq, const float* keys, const float* values, int64_t n,
                         int64_t head_dim, float scale, float* scores, float* out) {
  if (!avx512_supported() || nq < 1 || nq > 8) return false;
  switch (head_dim) {
    case 64: attend_impl<4>(q, nq, keys, values, n, scale, scores, out); return true;
    case 128: attend_impl<8>(q, nq, keys, values, n, scale, scores, out); return true;
    case 256: attend_impl<16>(q, nq, keys, values, n, scale, scores, out); return true;  // Gemma 3
    default: return false;
  }
}

void dense_rows_f32(const float* w, int64_t in, int64_t r0, int64_t r1, const float* x, float* y, int level) {
  if (level < 2) {
    dense_rows_f32_scalar(w, in, r0, r1, x, y);
    return;
  }
  quarter_passes(
      r0, r1, [&](int64_t r, int64_t q) { dense_rows4_f32(w, in, r, q, 4, x, y); },
      [&](int64_t lo, int64_t hi) { dense_rows4_f32(w, in, lo, 1, static_cast<int>(hi - lo), x, y); });
}

void accumulate_columns(const float* x, const float* mean, int64_t in, const float* m, int64_t k, float* acc,
                        int level) {
  if (level < 2 || !avx512_supported())
    accumulate_columns_scalar(x, mean, in, m, k, acc);
  else if (mean == nullptr)
    accumulate_columns_avx512<false>(x, mean, in, m, k, acc);
  else
    accumulate_columns_avx512<true>(x, mean, in, m, k, acc);
}

float dot_f32(const float* a, const float* b, int64_t n, int level) {
  return level >= 2 ? dot_avx512(a, b, n) : dot_scalar(a, b, n);
}

void axpy_f32(float s, const float* b, float* out, int64_t n, int level) {
  if (level >= 2) {
    axpy_avx512(s, b, out, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] += s * b[i];
}

}  // namespace se

#else  // not x86-64

namespace se {
void dense_rows_f32(const float* w, int64_t in, int64_t r0, int64_t r1, const float* x, float* y, int) {
  dense_rows_f32_scalar(w, in, r0, r1, x, y);
}
void accumulate_columns(const float* x, const float* mean, int64_t in, const float* m, int64_t k, float* acc, int) {
  accumulate_columns_scalar(x, mean, in, m, k, acc);
}
float dot_f32(const float* a, const float* b, int64_t n, int) { return dot_scalar(a, b, n); }
void axpy_f32(float s, const float* b, float* out, int64_t n, int) {
  for (int64_t i = 0; i < n; ++i) out[i] += s * b[i];
}
bool attend_heads_avx512(const float*, int, const float*, const float*, int64_t, int64_t, float, float*, float*) {
  return false;
}
}  // namespace se

#endif
