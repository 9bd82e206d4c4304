// CUDA kernel of psqe::topk_similarity (semantics in csrc/psqe_ops.h).
//
// Design (after faiss runDistance): the similarity is computed one tile at a
// time by cuBLAS (at::mm_out into one reused buffer), and after each tile a
// selection kernel merges every tile row into that row's running k best.
//
// Selection works on unique unsigned keys: high bits = order-preserving image
// of the value (-0.0 folded onto +0.0), low 32 bits = ~column, so among equal
// values the smaller column has the larger key and "k largest keys" is
// exactly the required order (value desc, column asc). Key 0 is never produced
// by a finite value and marks an empty slot (decoded as -inf / -1).
//
// Per row (one block): threshold = smallest key kept so far; an element can
// only enter when its key is above it, which after the first tile rejects
// almost everything with a single compare. Survivors are compacted into shared
// memory; when there are any, an MSB radix select (8-bit digits, shared
// histograms) over {kept keys} U {survivors} finds the new k largest. When the
// survivors overflow shared memory (first tile of a row block) the select
// re-reads the tile row from global memory on every pass instead.
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

// 128 MiB of GEMM output per tile: 4096 x 8192 fp32 is ~34 GFLOP at d = 512,
// large enough for cuBLAS to run at full speed, and it bounds the extra memory.
constexpr int64_t kTileBytes = int64_t(128) << 20;
constexpr int64_t kColTile = 8192;
constexpr int kThreads = 256;
// Dynamic shared memory of the select kernel stays below the 48 KiB that
// needs no opt-in: kept keys (<= 2048) + survivor buffer.
constexpr int64_t kSmemBudget = 40 * 1024;
constexpr int64_t kSurvivorCap = 2048;
// Review guard: the survivor capacity is kSmemBudget / sizeof(Key) - kk, so a
// larger kMaxTopK would make it <= 0 for fp64 (16-byte keys) and the select
// would index shared memory out of bounds; the finalize sort (next power of
// two >= kk keys) must also stay within the 48 KiB that needs no opt-in.
static_assert(kSmemBudget / 16 - kMaxTopK >= 512, "survivor buffer too small for kMaxTopK (fp64 keys)");
static_assert(kMaxTopK <= 2048, "finalize_kernel smem (p2 * 16 bytes) would exceed 48 KiB");

template <typename T>
struct KeyTraits;

template <>
struct KeyTraits<float> {  // 32-bit value image + 32-bit ~column
  using Key = unsigned long long;
  static constexpr int kBits = 64;
  __device__ static Key make(float v, uint32_t col) {
    uint32_t u = __float_as_uint(v);
    u = (u << 1) == 0 ? 0u : u;  // -0.0 == +0.0
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (Key(u) << 32) | Key(~col);
  }
  __device__ static float value(Key k) {
    uint32_t u = uint32_t(k >> 32);
    u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
    return __uint_as_float(u);
  }
};

template <>
struct KeyTraits<double> {  // 64-bit value image + 32-bit ~column in 128 bits
  using Key = unsigned __int128;
  static constexpr int kBits = 96;
  __device__ static Key make(double v, uint32_t col) {
    uint64_t u = static_cast<uint64_t>(__double_as_longlong(v));
    u = (u << 1) == 0 ? 0ull : u;
    u = (u >> 63) ? ~u : (u | (1ull << 63));
    return (Key(u) << 32) | Key(~col);
  }
  __device__ static double value(Key k) {
    uint64_t u = uint64_t(k >> 32);
    u = (u >> 63) ? (u & ~(1ull << 63)) : ~u;
    return __longlong_as_double(static_cast<long long>(u));
  }
};

__device__ inline unsigned long long shfl_down(unsigned long long v, int d) {
  return __shfl_down_sync(0xffffffffu, v, d);
}
__device__ inline unsigned __int128 shfl_down(unsigned __int128 v, int d) {
  const unsigned long long lo = __shfl_down_sync(0xffffffffu, (unsigned long long)v, d);
  const unsigned long long hi = __shfl_down_sync(0xffffffffu, (unsigned long long)(v >> 64), d);
  return (unsigned __int128)hi << 64 | lo;
}

// Warp-aggregated shared-memory atomics. On the first tile of a row block
// every element survives and values of similar magnitude share their top
// digits, so without aggregation up to 32 lanes hit one address. The lanes
// active together form one group per distinct label; its lowest lane adds the
// group size. (Only lanes that reach this call take part; any others aggregate
// on their own, so every element is counted exactly once.)
__device__ inline void hist_add(int* hist, unsigned digit) {
  const unsigned peers = __match_any_sync(__activemask(), digit);
  if (int(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
}
__device__ inline int reserve_slot(int* counter) {
  const unsigned active = __activemask();
  const int lane = threadIdx.x & 31, leader = __ffs(active) - 1;
  int base = 0;
  if (lane == leader) base = atomicAdd(counter, __popc(active));
  return __shfl_sync(active, base, leader) + __popc(active & ((1u << lane) - 1));
}

template <typename Key>
__device__ Key block_min(Key v, Key* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) { const Key w = shfl_down(v, o); v = w < v ? w : v; }
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < int(blockDim.x >> 5) ? scratch[lane] : ~Key(0);
    for (int o = 16; o > 0; o >>= 1) { const Key w = shfl_down(v, o); v = w < v ? w : v; }
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

struct SelectShared {
  int hist[256];
  int n_surv, n_out, bucket, need, done;
};

// Writes the kk largest keys of the multiset produced by `visit` (each thread
// visits its share) to out[0..kk), unordered. Keys are unique except the
// empty-slot key 0, which only fills the tail of rows with < kk real keys.
template <typename Key, int kBits, typename Visit>
__device__ void radix_select(Visit visit, int kk, Key* out, SelectShared& sh) {
  Key prefix = 0, mask = 0;
  int need = kk;
  bool done = false;
  for (int shift = kBits - 8; shift >= 0 && !done; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) sh.hist[i] = 0;
    __syncthreads();
    visit([&](Key key) {
      if ((key & mask) == prefix) hist_add(sh.hist, unsigned(key >> shift) & 255u);
    });
    __syncthreads();
    if (threadIdx.x < 32) {  // warp 0 finds the digit holding the need-th key
      const int lane = threadIdx.x;
      int local[8], sum = 0;
      for (int q = 0; q < 8; ++q) { local[q] = sh.hist[255 - (lane * 8 + q)]; sum += local[q]; }
      int incl = sum;
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
      }
      int above = incl - sum;
      if (above < need && need <= incl) {  // exactly one lane
        for (int q = 0; q < 8; ++q) {
          if (above + local[q] >= need) {
            sh.bucket = 255 - (lane * 8 + q);
            sh.need = need - above;
            sh.done = local[q] == need - above;  // whole bucket selected
            break;
          }
          above += local[q];
        }
      }
    }
    __syncthreads();
    prefix |= Key(unsigned(sh.bucket)) << shift;
    mask |= Key(255u) << shift;
    need = sh.need;
    done = sh.done != 0;
    __syncthreads();  // sh.* is rewritten by the next pass
  }
  if (threadIdx.x == 0) sh.n_out = 0;
  __syncthreads();
  visit([&](Key key) {
    const Key mk = key & mask;
    if (mk > prefix || (done && mk == prefix)) {
      const int slot = reserve_slot(&sh.n_out);
      if (slot < kk) out[slot] = key;
    }
  });
  __syncthreads();
  // Not done: all digits resolved and the kk-th key is duplicated, i.e. it is
  // the empty key 0 (== prefix); pad with it.
  if (!done) {
    for (int i = sh.n_out + threadIdx.x; i < kk; i += blockDim.x) out[i] = prefix;
  }
}

// One block per tile row: merge tile[row, 0..cols) into state[row, 0..kk).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
select_tile_kernel(const scalar_t* __restrict__ tile, int64_t cols, int64_t c0,
                   const bool* __restrict__ excluded,
                   typename KeyTraits<scalar_t>::Key* state, int kk, int cap) {
  using Tr = KeyTraits<scalar_t>;
  using Key = typename Tr::Key;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Key* cand = reinterpret_cast<Key*>(smem_raw);
  Key* surv = cand + kk;
  __shared__ Key scratch[32];
  __shared__ SelectShared sh;

  const scalar_t* vals = tile + int64_t(blockIdx.x) * cols;
  Key* out = state + int64_t(blockIdx.x) * kk;
  Key local = ~Key(0);
  for (int i = threadIdx.x; i < kk; i += blockDim.x) {
    cand[i] = out[i];
    local = cand[i] < local ? cand[i] : local;
  }
  if (threadIdx.x == 0) sh.n_surv = 0;
  const Key thr = block_min(local, scratch);  // syncs: cand and n_surv ready

  const auto key_at = [&](int64_t j) { return Tr::make(vals[j], uint32_t(c0 + j)); };
  // Excluded columns are filtered after the cheap threshold test.
  const auto enters = [&](Key key, int64_t j) {
    return key > thr && (excluded == nullptr || !excluded[c0 + j]);
  };
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
    const Key key = key_at(j);
    if (enters(key, j)) {
      const int slot = reserve_slot(&sh.n_surv);
      if (slot < cap) surv[slot] = key;
    }
  }
  __syncthreads();
  const int s = sh.n_surv;
  if (s == 0) return;  // uniform: nothing beats the current k-th key
  if (s <= cap) {
    radix_select<Key, Tr::kBits>([&](auto&& f) {
      for (int i = threadIdx.x; i < kk; i += blockDim.x) f(cand[i]);
      for (int i = threadIdx.x; i < s; i += blockDim.x) f(surv[i]);
    }, kk, out, sh);
  } else {
    radix_select<Key, Tr::kBits>([&](auto&& f) {
      for (int i = threadIdx.x; i < kk; i += blockDim.x) f(cand[i]);
      for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) {
        const Key key = key_at(j);
        if (enters(key, j)) f(key);
      }
    }, kk, out, sh);
  }
}

// One block per row: bitonic sort (descending) of the row's keys padded to a
// power of two with the empty key, then decode value / column.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
finalize_kernel(const typename KeyTraits<scalar_t>::Key* state, int kk, int p2,
                scalar_t* out_v, int64_t* out_i) {
  using Tr = KeyTraits<scalar_t>;
  using Key = typename Tr::Key;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Key* s = reinterpret_cast<Key*>(smem_raw);
  const int64_t row = blockIdx.x;
  for (int i = threadIdx.x; i < p2; i += blockDim.x) s[i] = i < kk ? state[row * kk + i] : Key(0);
  __syncthreads();
  for (int size = 2; size <= p2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < p2; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const Key x = s[i], y = s[j];
          if (((i & size) == 0) ? (x < y) : (x > y)) { s[i] = y; s[j] = x; }
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < kk; i += blockDim.x) {
    const Key key = s[i];
    out_v[row * kk + i] = key == 0 ? -std::numeric_limits<scalar_t>::infinity() : Tr::value(key);
    out_i[row * kk + i] = key == 0 ? int64_t(-1) : int64_t(uint32_t(~uint32_t(key)));
  }
}

template <typename scalar_t>
void topk_cuda_impl(const at::Tensor& a, const at::Tensor& b, int64_t kk,
                    const bool* excluded, at::Tensor& values, at::Tensor& indices) {
  using Key = typename KeyTraits<scalar_t>::Key;
  const int64_t n = a.size(0), m = b.size(0);
  const bool widen = a.scalar_type() == at::kHalf || a.scalar_type() == at::kBFloat16;
  const int64_t col_tile = std::min(m, kColTile);
  // Narrow b (small m) gets taller row blocks; the kept-key state
  // (rows x kk keys) is held to the same byte budget.
  const int64_t row_tile = std::max<int64_t>(1, std::min({n, kTileBytes / (col_tile * int64_t(sizeof(scalar_t))),
                                                          kTileBytes / (kk * int64_t(sizeof(Key)))}));
  at::Tensor buffer = at::empty({row_tile * col_tile}, values.options());
  at::Tensor state = at::empty({row_tile * kk * int64_t(sizeof(Key))}, a.options().dtype(at::kByte));
  Key* st = reinterpret_cast<Key*>(state.data_ptr<uint8_t>());
  const int64_t cap = std::min(kSurvivorCap, kSmemBudget / int64_t(sizeof(Key)) - kk);  // >= 512
  const size_t select_smem = size_t(kk + cap) * sizeof(Key);
  int p2 = 1;
  while (p2 < kk) p2 <<= 1;
  const size_t final_smem = size_t(p2) * sizeof(Key);  // <= 2048 * 16 = 32 KiB
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  for (int64_t r0 = 0; r0 < n; r0 += row_tile) {
    const int64_t rows = std::min(row_tile, n - r0);
    C10_CUDA_CHECK(cudaMemsetAsync(st, 0, size_t(rows * kk) * sizeof(Key), stream));  // all empty
    const at::Tensor a_blk = a.narrow(0, r0, rows);
    for (int64_t c0 = 0; c0 < m; c0 += col_tile) {
      const int64_t cols = std::min(col_tile, m - c0);
      // Leading rows*cols elements of the buffer: contiguous even for the
      // narrower last column tile, so cuBLAS writes straight into it.
      at::Tensor tile = buffer.narrow(0, 0, rows * cols).view({rows, cols});
      const at::Tensor b_blk = b.narrow(0, c0, cols).t();
      if (widen) {
        at::mm_out(tile, a_blk, b_blk, at::kFloat);  // fp32 accumulate + output
      } else {
        at::mm_out(tile, a_blk, b_blk);
      }
      select_tile_kernel<scalar_t><<<unsigned(rows), kThreads, select_smem, stream>>>(
          tile.const_data_ptr<scalar_t>(), cols, c0, excluded, st, int(kk), int(cap));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    finalize_kernel<scalar_t><<<unsigned(rows), kThreads, final_smem, stream>>>(
        st, int(kk), p2, values.data_ptr<scalar_t>() + r0 * kk, indices.data_ptr<int64_t>() + r0 * kk);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor> topk_similarity_cuda(
    const at::Tensor& a, const at::Tensor& b, int64_t k,
    const std::optional<at::Tensor>& exclude) {
  check_topk_similarity_args(a, b, k, exclude);
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t n = a.size(0), m = b.size(0);
  // Columns travel as 32 bits inside the selection keys.
  TORCH_CHECK(m <= int64_t(std::numeric_limits<uint32_t>::max()),
              "topk_similarity: b has ", m, " rows; the CUDA kernel supports at most 2^32 - 1");
  const int64_t kk = std::min(k, m);
  const at::ScalarType acc = accumulate_dtype(a.scalar_type());
  at::Tensor values = at::empty({n, kk}, a.options().dtype(acc));
  at::Tensor indices = at::empty({n, kk}, a.options().dtype(at::kLong));
  if (n == 0 || kk == 0) {
    return {values, indices};
  }
  const at::Tensor ac = a.contiguous();
  const at::Tensor bc = b.contiguous();
  at::Tensor ex;
  if (exclude.has_value()) {
    ex = exclude->contiguous();
  }
  const bool* ex_ptr = ex.defined() ? ex.const_data_ptr<bool>() : nullptr;
  if (acc == at::kDouble) {
    topk_cuda_impl<double>(ac, bc, kk, ex_ptr, values, indices);
  } else {
    topk_cuda_impl<float>(ac, bc, kk, ex_ptr, values, indices);
  }
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(psqe, CUDA, m) {
  m.impl("topk_similarity", &topk_similarity_cuda);
}

}  // namespace psqe
