// CPU tiling of the similarity A @ B^T shared by topk_similarity and mic_keep.
//
// The full n x m similarity never exists: rows of A are taken in blocks of
// `row_tile`, columns (rows of B) in blocks of `col_tile`; each block pair is
// one GEMM (at::mm, called outside any parallel region so BLAS uses its own
// threads) into a reused buffer, handed to a callback that is free to use
// at::parallel_for over the tile's rows. Half inputs (and bfloat16 ones
// where the CPU has no native bfloat16 products) are converted one block at a
// time, so the extra memory stays one tile plus two blocks.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "bf16_gemm.h"

namespace psqe {
namespace cpu {

// Tile budget: 2048 x 4096 fp32 = 32 MiB (measured: MKL runs this shape
// about 12% faster than 512 x 8192 at d = 1024). Large enough that the GEMM runs near
// peak on these machines, small enough to keep the 100k x 100k case far below
// the 300 MB bound of the benchmark.
constexpr int64_t kRowTile = 2048;
constexpr int64_t kColTile = 4096;

// The tile loop with the product left to `gemm(tile, row0, rows, col0,
// cols)`, which fills the contiguous float [rows, cols] `tile` (of dtype
// `options`) with A[row0:row0+rows] @ B[col0:col0+cols]^T; then
// fn(tile, row0, col0) as below. Row blocks are the outer loop, so a caller
// can finish a block of rows (fn_done(row0, rows)) before the next starts.
template <typename GemmFn, typename TileFn, typename DoneFn>
void for_each_tile(int64_t n, int64_t m, const at::TensorOptions& options,
                   GemmFn&& gemm, TileFn&& fn, DoneFn&& fn_done) {
  at::Tensor buffer = at::empty({std::min(n, kRowTile), std::min(m, kColTile)}, options);
  // The last column block is narrower: a narrowed view of `buffer` would not
  // be contiguous, so it gets one buffer of its own, made once per call.
  const int64_t tail_cols = m % kColTile;
  at::Tensor tail;
  if (m > kColTile && tail_cols != 0) {
    tail = at::empty({std::min(n, kRowTile), tail_cols}, options);
  }
  for (int64_t r0 = 0; r0 < n; r0 += kRowTile) {
    const int64_t rows = std::min(kRowTile, n - r0);
    for (int64_t c0 = 0; c0 < m; c0 += kColTile) {
      const int64_t cols = std::min(kColTile, m - c0);
      at::Tensor& store = cols == buffer.size(1) ? buffer : tail;
      at::Tensor tile = store.narrow(0, 0, rows);
      gemm(tile, r0, rows, c0, cols);
      fn(tile, r0, c0);
    }
    fn_done(r0, rows);
  }
}

// Calls fn(tile, row0, col0) for every tile; `tile` is a contiguous
// [rows, cols] tensor of `acc` dtype holding A[row0:row0+rows] @
// B[col0:col0+cols]^T (at::mm in `acc`).
// bfloat16 inputs on a CPU with native bfloat16 products go through the
// bfloat16 x bfloat16 -> float32 GEMM (bf16_gemm.h): the products are exact
// in float32 either way, so this is the float32 computation without the
// conversion, about 2.5-4x faster.
template <typename TileFn, typename DoneFn>
void for_each_similarity_tile(const at::Tensor& a, const at::Tensor& b,
                              at::ScalarType acc, TileFn&& fn,
                              DoneFn&& fn_done) {
  at::Tensor a_blk;
  int64_t a_row0 = -1;
  const int64_t d = a.size(1);
  if (a.scalar_type() == at::kBFloat16 && acc == at::kFloat && d > 0 &&
      std::max({a.size(0), b.size(0), d}) <= INT_MAX && bf16_gemm_fast()) {
    for_each_tile(
        a.size(0), b.size(0), a.options().dtype(acc),
        [&](at::Tensor& tile, int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
          if (r0 != a_row0) {
            a_blk = a.narrow(0, r0, rows).contiguous();
            a_row0 = r0;
          }
          const at::Tensor b_blk = b.narrow(0, c0, cols).contiguous();
          gemm_bf16(a_blk.const_data_ptr<at::BFloat16>(), b_blk.const_data_ptr<at::BFloat16>(),
                    tile.data_ptr<float>(), rows, cols, d);
        },
        fn, fn_done);
    return;
  }
  for_each_tile(
      a.size(0), b.size(0), a.options().dtype(acc),
      [&](at::Tensor& tile, int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
        if (r0 != a_row0) {  // converted once per row block
          a_blk = a.narrow(0, r0, rows).to(acc);
          a_row0 = r0;
        }
        at::mm_out(tile, a_blk, b.narrow(0, c0, cols).to(acc).t());
      },
      fn, fn_done);
}

}  // namespace cpu
}  // namespace psqe
