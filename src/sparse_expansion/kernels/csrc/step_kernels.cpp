// Dense float32 / bfloat16 rows and attention dot products for the decode step: AVX-512 where the
// CPU has it (function by function, as in avx512.cpp), portable loops elsewhere. `level` is the
// instruction set the caller may use (ops.py: 0 portable, 1 AVX2, 2 AVX-512); AVX2 takes the
// portable loops, which the compiler vectorises where it can.
#include <cstring>

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

// Four rows share every input load; two column chunks per step keep eight FMA chains in flight.
SE_STEP_AVX512 void dense_rows4_f32(const float* w, int64_t in, int64_t r, int rows, const float* x, float* y) {
  __m512 acc[4][2];
  for (int k = 0; k < 4; ++k) acc[k][0] = acc[k][1] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 32 <= in; c += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + c), x1 = _mm512_loadu_ps(x + c + 16);
    for (int k = 0; k < rows; ++k) {
      const float* row = w + (r + k) * in + c;
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
      acc[k][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, w + (r + k) * in + c), xv, acc[k][0]);
  }
  for (int k = 0; k < rows; ++k) y[r + k] = _mm512_reduce_add_ps(_mm512_add_ps(acc[k][0], acc[k][1]));
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

}  // namespace

void dense_rows_f32(const float* w, int64_t in, int64_t r0, int64_t r1, const float* x, float* y, int level) {
  if (level < 2) {
    dense_rows_f32_scalar(w, in, r0, r1, x, y);
    return;
  }
  for (int64_t r = r0; r < r1; r += 4) dense_rows4_f32(w, in, r, static_cast<int>(r1 - r < 4 ? r1 - r : 4), x, y);
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
float dot_f32(const float* a, const float* b, int64_t n, int) { return dot_scalar(a, b, n); }
void axpy_f32(float s, const float* b, float* out, int64_t n, int) {
  for (int64_t i = 0; i < n; ++i) out[i] += s * b[i];
}
}  // namespace se

#endif
