// CUDA kernel of psqe::mic_keep (semantics in csrc/psqe_ops.h).
//
// Tiled like topk_similarity: left @ right^T is computed one tile at a time by
// cuBLAS into one reused buffer (never s x s). After each tile a row kernel
// folds the tile rows into the running row maxima and picks up the diagonal
// when the tile holds it; with both_directions a column kernel folds the tile
// columns into column maxima. Diagonal and maxima are the very same GEMM
// values, so a pair is never dropped by a rounding difference.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../../psqe_ops.h"

namespace psqe {
namespace {

// Same tile budget as topk_similarity: 128 MiB of GEMM output per tile.
constexpr int64_t kTileBytes = int64_t(128) << 20;
constexpr int64_t kColTile = 8192;
constexpr int kThreads = 256;
// Rows a column-kernel thread folds before its one atomicMax: 64 keeps the
// atomics at 1/64 of the tile while giving thousands of blocks per tile.
constexpr int kRowChunk = 64;

// Unsigned image of a value whose unsigned order is the value order, so column
// maxima from many blocks can use integer atomicMax. Zero is below the image
// of every non-NaN value (even -inf), so it is the "no value yet" start.
__device__ inline unsigned int ordered(float v) {
  unsigned int u = __float_as_uint(v);
  u = (u << 1) == 0 ? 0u : u;  // -0.0 == +0.0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ inline unsigned long long ordered(double v) {
  unsigned long long u = static_cast<unsigned long long>(__double_as_longlong(v));
  u = (u << 1) == 0 ? 0ull : u;
  return (u >> 63) ? ~u : (u | (1ull << 63));
}

template <typename scalar_t>
using OrderedKey = decltype(ordered(scalar_t(0)));

// One warp per tile row. A row is owned by one warp per launch and launches
// are ordered on the stream, so row_max needs no atomics.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
row_kernel(const scalar_t* __restrict__ tile, int64_t rows, int64_t cols,
           int64_t r0, int64_t c0, scalar_t* row_max, scalar_t* diag) {
  const int64_t r = int64_t(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;  // whole warp leaves together
  const scalar_t* row = tile + r * cols;
  scalar_t best = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t j = lane; j < cols; j += 32) best = row[j] > best ? row[j] : best;
  for (int o = 16; o > 0; o >>= 1) {
    const scalar_t other = __shfl_down_sync(0xffffffffu, best, o);
    best = other > best ? other : best;
  }
  if (lane == 0) {
    const int64_t g = r0 + r;
    row_max[g] = best > row_max[g] ? best : row_max[g];
    const int64_t own = g - c0;  // column of this row's own partner
    if (own >= 0 && own < cols) diag[g] = row[own];
  }
}

// Thread per column, kRowChunk rows per block (coalesced row-major reads).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
col_kernel(const scalar_t* __restrict__ tile, int64_t rows, int64_t cols,
           int64_t c0, OrderedKey<scalar_t>* col_key) {
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= cols) return;
  const int64_t begin = int64_t(blockIdx.y) * kRowChunk;
  const int64_t end = std::min<int64_t>(rows, begin + kRowChunk);
  scalar_t best = tile[begin * cols + j];
  for (int64_t r = begin + 1; r < end; ++r) {
    const scalar_t v = tile[r * cols + j];
    best = v > best ? v : best;
  }
  atomicMax(&col_key[c0 + j], ordered(best));
}

template <typename scalar_t>
__global__ void keep_kernel(const scalar_t* diag, const scalar_t* row_max,
                            const OrderedKey<scalar_t>* col_key, int64_t s,
                            bool both_directions, bool* keep) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= s) return;
  // Ties keep the pair (>=); the ordered image turns the column test into an
  // integer compare that agrees with the float one (-0.0 == +0.0 included).
  keep[k] = diag[k] >= row_max[k] && (!both_directions || ordered(diag[k]) >= col_key[k]);
}

template <typename scalar_t>
void mic_cuda_impl(const at::Tensor& left, const at::Tensor& right,
                   bool both_directions, at::Tensor& keep) {
  using Key = OrderedKey<scalar_t>;
  const int64_t s = left.size(0);
  const at::ScalarType acc = accumulate_dtype(left.scalar_type());
  const bool widen = left.scalar_type() == at::kHalf || left.scalar_type() == at::kBFloat16;
  const at::TensorOptions opt = left.options().dtype(acc);
  at::Tensor row_max = at::full({s}, -std::numeric_limits<double>::infinity(), opt);
  at::Tensor diag = at::empty({s}, opt);  // every (k, k) lies in exactly one tile
  // Keys stored in a signed tensor of the same width; only the bits matter.
  at::Tensor col_key = at::zeros({both_directions ? s : 1},
                                 left.options().dtype(sizeof(Key) == 4 ? at::kInt : at::kLong));
  Key* ck = reinterpret_cast<Key*>(col_key.data_ptr());

  const int64_t col_tile = std::min(s, kColTile);
  const int64_t row_tile = std::max<int64_t>(
      1, std::min(s, kTileBytes / (col_tile * int64_t(sizeof(scalar_t)))));
  at::Tensor buffer = at::empty({row_tile * col_tile}, opt);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  for (int64_t r0 = 0; r0 < s; r0 += row_tile) {
    const int64_t rows = std::min(row_tile, s - r0);
    const at::Tensor l_blk = left.narrow(0, r0, rows);
    for (int64_t c0 = 0; c0 < s; c0 += col_tile) {
      const int64_t cols = std::min(col_tile, s - c0);
      // Leading rows*cols elements: contiguous also for the last, narrower tile.
      at::Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
      const at::Tensor r_blk = right.narrow(0, c0, cols).t();
      if (widen) {
        at::mm_out(tile, l_blk, r_blk, at::kFloat);  // fp32 accumulate + output
      } else {
        at::mm_out(tile, l_blk, r_blk);
      }
      const scalar_t* t = tile.const_data_ptr<scalar_t>();
      const unsigned row_blocks = unsigned((rows + kThreads / 32 - 1) / (kThreads / 32));
      row_kernel<scalar_t><<<row_blocks, kThreads, 0, stream>>>(
          t, rows, cols, r0, c0, row_max.data_ptr<scalar_t>(), diag.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (both_directions) {
        // rows < 8192 (s < 8192 gives rows <= s, else rows <= 2^27 / 8192 / 4),
        // so grid.y <= 128, far below its 65535 limit.
        const dim3 grid(unsigned((cols + kThreads - 1) / kThreads),
                        unsigned((rows + kRowChunk - 1) / kRowChunk));
        col_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(t, rows, cols, c0, ck);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  }
  keep_kernel<scalar_t><<<unsigned((s + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      diag.const_data_ptr<scalar_t>(), row_max.const_data_ptr<scalar_t>(), ck, s,
      both_directions, keep.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor mic_keep_cuda(const at::Tensor& left, const at::Tensor& right,
                         bool both_directions) {
  check_mic_keep_args(left, right);
  c10::cuda::CUDAGuard guard(left.device());
  at::Tensor keep = at::empty({left.size(0)}, left.options().dtype(at::kBool));
  if (left.size(0) == 0) {
    return keep;
  }
  const at::Tensor l = left.contiguous();
  const at::Tensor r = right.contiguous();
  if (accumulate_dtype(left.scalar_type()) == at::kDouble) {
    mic_cuda_impl<double>(l, r, both_directions, keep);
  } else {
    mic_cuda_impl<float>(l, r, both_directions, keep);
  }
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(psqe, CUDA, m) {
  m.impl("mic_keep", &mic_keep_cuda);
}

}  // namespace psqe
