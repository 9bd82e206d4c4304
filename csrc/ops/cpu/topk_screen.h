// bfloat16-screened top-k for float32 inputs on CPU: the same result as the
// float32 path, from a GEMM that runs about 4x faster where the CPU has
// native bfloat16 products (AVX512-BF16 / AMX).
//
// 1. Screen. Every tile is one bfloat16 x bfloat16 -> float32 GEMM (MKL's
//    cblas_gemm_bf16bf16f32, found in the running libtorch; products of
//    bfloat16 numbers are exact in float32, the sums are float32). Each row
//    keeps its kc = kk + max(kk, 32) best screened values s^ (topk_select.h);
//    for topk_similarity_both each column too.
// 2. Certify. With x' the bfloat16 rounding of x and dx = x - x' (exact in
//    float32), a.b - a'.b' = a'.db + da.b' + da.db; Cauchy-Schwarz on each
//    term, with the row's own norms and the largest ones of the other side,
//    plus float32 summation error (gamma_d = d 2^-24 / (1 - d 2^-24)) of the
//    screened sum and of the rescored dot (and d 2^-126 (|a_i| + max |b| + 1)
//    for subnormal numbers the bfloat16 instructions flush to zero),
//    gives eps_i: every screened value
//    and every float32 evaluation of row i is within eps_i of the real
//    product. For unit rows eps is about 2^-8 (the worst case 2u |a||b| would
//    be about twice that). Let v be the kk-th best screened value of the row
//    and T the worst one kept. A column that was not kept has s^ <= T, so
//    when T + eps < v - eps it cannot reach the top kk; otherwise the row is
//    recomputed in float32.
// 3. Rescore. The kept columns whose s^ >= v - 2 eps (all others are beaten
//    by kk columns) get their float32 dot product; the kk best of those, ties
//    to the smaller column, are the row's output.
//
// Which path runs: environment variable PSQE_TOPK_SCREEN = "auto" (default:
// screen when the GEMM dominates: d >= 128, kc * 8 <= m (and <= n for the
// columns), a CPU with native bfloat16 products), "on" (screen whenever the
// MKL symbol exists: used by the tests on small inputs and on any CPU),
// "off" (never).
// screen_stats() counts the rows screened and recomputed since start-up, and
// the calls that gave up (more than a quarter of the rows failing).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <vector>

namespace psqe {
namespace cpu {

// True when topk_screened should serve this call (float32 a and b, the
// mode above, and the bfloat16 GEMM present); kc: the columns' k of
// topk_screened_both (0 for rows only).
bool screen_applies(const at::Tensor& a, const at::Tensor& b, int64_t kk, int64_t kc = 0);

// Fills values / indices [n, kk] for every row it can certify and returns
// the rows it did not (their output rows are left for the caller to fill
// with the float32 path). When more than a quarter of the rows screened so
// far fail, it stops screening: the remaining rows are returned too.
std::vector<int64_t> topk_screened(const at::Tensor& a, const at::Tensor& b,
                                   int64_t kk, const bool* excluded,
                                   at::Tensor& values, at::Tensor& indices);

// What topk_screened_both left for the float32 path: the uncertified rows
// and columns, or everything (`abandoned`: too many rows failed, or no
// useful error bound; then nothing of its output is usable).
struct ScreenFailures {
  bool abandoned = false;
  std::vector<int64_t> rows, cols;
};

// Both directions (topk_similarity_both): rows [n, kr] and columns [m, kc].
ScreenFailures topk_screened_both(const at::Tensor& a, const at::Tensor& b,
                                  int64_t kr, int64_t kc,
                                  at::Tensor& row_values,
                                  at::Tensor& row_indices,
                                  at::Tensor& col_values,
                                  at::Tensor& col_indices);

// {rows screened, rows of those recomputed in float32, calls that gave up}
// since the library was loaded (columns count as rows).
std::array<int64_t, 3> screen_stats();

}  // namespace cpu
}  // namespace psqe
