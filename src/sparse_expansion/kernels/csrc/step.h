// Kernels of the whole-model decode step (decode_step.cpp) that no weight format owns: dense float32
// and bfloat16 rows for one token, and the attention's dot products. No torch headers (see sparse.h).
#pragma once

#include <cstdint>

#include "sparse.h"

namespace se {

// y[r] = W[r, :] . x for rows [r0, r1) of a dense row-major [rows, in] weight, one token.
void dense_rows_f32(const float* w, int64_t in, int64_t r0, int64_t r1, const float* x, float* y, int level);
// The same for bfloat16 weights and float32 inputs (the AVX512-BF16 path, dense_rows_avx512_bf16,
// takes bfloat16 inputs instead; this one is for CPUs without it).
void dense_rows_bf16_f32(const uint16_t* w, int64_t in, int64_t r0, int64_t r1, const float* x, float* y);

// sum_i a[i] b[i] and out[i] += s b[i], for attention over the cached keys and values.
float dot_f32(const float* a, const float* b, int64_t n, int level);
void axpy_f32(float s, const float* b, float* out, int64_t n, int level);

// acc[j] += (x[i] - mean[i]) * m[i * k + j] for i = 0, 1, ..., in - 1 in that order, every j < k (mean
// may be null: x[i] alone): a router's scores (folded: bias + x . matrix) or its PCA projection. Each
// product is rounded, then added, in the same order on every path, so all of them give the same bits.
void accumulate_columns(const float* x, const float* mean, int64_t in, const float* m, int64_t k, float* acc,
                        int level);

// `nq` (1..8) query heads that share one KV head, over positions [0, n) of its cached keys and values
// (rows head_dim apart): out[h] = softmax(scale q[h].K^T) V, q and out rows head_dim apart. Each key
// and value row is read once for all nq heads. `scores` holds nq * n floats of scratch. Returns false
// when this CPU or head_dim (64, 128 and 256 are vectorised) has no fast version; the caller then uses
// dot_f32/axpy_f32.
bool attend_heads_avx512(const float* q, int nq, const float* keys, const float* values, int64_t n,
                         int64_t head_dim, float scale, float* scores, float* out);

}  // namespace se
