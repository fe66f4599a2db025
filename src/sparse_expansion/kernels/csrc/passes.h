// Which rows a decode kernel runs together. Kernels that run four rows at once (one input load for all
// four) take them from the four quarters of their range [r0, r1), not side by side: each quarter is then
// one sequential stream through memory. Four neighbouring rows sit in the same few pages, and a CPU
// streams that pattern from DRAM at about half the rate (dense int8 5632x2048 from DRAM: 1.27 -> 0.74 ms
// on the AMD EPYC this was measured on, BENCHMARKS.md section llamacpp). Only the order of the rows
// changes, never a row's arithmetic. Not every kernel: act8's int4 bitmask rows read their codes once, in order,
// before the loop, and go faster side by side (quant_act8.cpp, bitmask_rows4).
#pragma once

#include <cstdint>

namespace se {

// four(r, q) for r in [r0, r0 + q), q = (r1 - r0) / 4: the pass of rows r, r + q, r + 2q, r + 3q;
// then rest(lo, r1) for the last (r1 - r0) % 4 rows, if any.
template <class Four, class Rest>
inline void quarter_passes(int64_t r0, int64_t r1, Four four, Rest rest) {
  const int64_t quarter = (r1 - r0) / 4, lo = r0 + 4 * quarter;
  for (int64_t r = r0; r < r0 + quarter; ++r) four(r, quarter);
  if (lo < r1) rest(lo, r1);
}

}  // namespace se
