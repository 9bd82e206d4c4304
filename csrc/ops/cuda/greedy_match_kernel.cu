// CUDA kernel of psqe::greedy_match (semantics in csrc/psqe_ops.h).
//
// The greedy walk is sequential, but its result is the unique "locally
// dominant" matching: a candidate that is the best live candidate on both its
// row and its column is kept by the greedy walk, whatever order such
// candidates are taken in. So:
//   1. Put the candidates in walk order with three stable sorts (by column,
//      then row, then score key); sorted position t is the candidate's rank.
//   2. Rounds: every live candidate atomicMin's its rank into its row and its
//      column; one holding both minima is kept (row and column become used);
//      candidates on a used row / column die. Repeat until none proposes.
//   3. The kept set is the full greedy matching; in rank order it is the
//      selection order, and its first `limit` entries are exactly what the
//      walk stopped at `limit` returns.
// Worst case: a chain (each candidate's fate depends on the previous one's)
// keeps one candidate per round, i.e. O(c) rounds. Every round keeps at least
// the best live candidate, so the loop always ends; to bound its cost we stop
// after kMaxRounds rounds and finish the remaining live candidates with the
// plain sequential walk on the host (same result: the rounds only ever keep
// candidates the walk keeps).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "../../psqe_ops.h"

namespace psqe {
namespace {

constexpr int kThreads = 256;
// Real score matrices settle in a handful of rounds; 64 rounds of two small
// kernels plus one flag read cost ~1-2 ms before the host fallback kicks in.
constexpr int kMaxRounds = 64;

// int64 whose ascending order is the descending score order; -0.0 and +0.0
// get the same key (float16/bfloat16 arrive widened to float32, exactly).
template <typename scalar_t>
__global__ void walk_key_kernel(const scalar_t* __restrict__ s, int64_t c, int64_t* key) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= c) return;
  unsigned long long u;
  if constexpr (sizeof(scalar_t) == 4) {
    unsigned int b = __float_as_uint(s[i]);
    b = (b << 1) == 0 ? 0u : b;
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    u = ~b;  // descending, zero-extended to 64 bits
  } else {
    unsigned long long b = static_cast<unsigned long long>(__double_as_longlong(s[i]));
    b = (b << 1) == 0 ? 0ull : b;
    b = (b >> 63) ? ~b : (b | (1ull << 63));
    u = ~b;
  }
  key[i] = static_cast<int64_t>(u ^ (1ull << 63));  // unsigned order -> signed order
}

// Proposal tag: the round lives in the high word, counting down, so any tag
// of the current round is below every stale tag of an earlier round and the
// min-arrays never need resetting between rounds.
__device__ inline unsigned long long tag(int round, int64_t t) {
  return (static_cast<unsigned long long>(0xffffffffu - unsigned(round)) << 32) |
         static_cast<unsigned long long>(t);
}

__global__ void propose_kernel(const int64_t* __restrict__ rows, const int64_t* __restrict__ cols,
                               int64_t c, int round, const bool* row_used, const bool* col_used,
                               bool* alive, unsigned long long* best_row,
                               unsigned long long* best_col, int* any) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= c || !alive[t]) return;
  const int64_t r = rows[t], k = cols[t];
  if (row_used[r] || col_used[k]) {
    alive[t] = false;
    return;
  }
  atomicMin(&best_row[r], tag(round, t));
  atomicMin(&best_col[k], tag(round, t));
  *any = 1;  // benign race: every writer stores 1
}

__global__ void accept_kernel(const int64_t* __restrict__ rows, const int64_t* __restrict__ cols,
                              int64_t c, int round, bool* row_used, bool* col_used, bool* alive,
                              const unsigned long long* best_row,
                              const unsigned long long* best_col, bool* kept) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= c || !alive[t]) return;
  const int64_t r = rows[t], k = cols[t];
  // Only one candidate per row / column can hold its minimum, so the writes
  // below never collide; losers are killed by the next propose pass.
  if (best_row[r] == tag(round, t) && best_col[k] == tag(round, t)) {
    kept[t] = true;
    alive[t] = false;
    row_used[r] = true;
    col_used[k] = true;
  }
}

// Sequential walk over the candidates still alive (ascending rank).
void finish_on_host(const at::Tensor& rows_s, const at::Tensor& cols_s, const at::Tensor& alive,
                    const at::Tensor& row_used, const at::Tensor& col_used, at::Tensor& kept) {
  const at::Tensor idx = at::nonzero(alive).view({-1});  // ascending
  if (idx.numel() == 0) {
    return;
  }
  const at::Tensor t_h = idx.cpu();
  const at::Tensor r_h = rows_s.index_select(0, idx).cpu();
  const at::Tensor k_h = cols_s.index_select(0, idx).cpu();
  at::Tensor ru = row_used.cpu(), cu = col_used.cpu();
  const int64_t* tp = t_h.const_data_ptr<int64_t>();
  const int64_t* rp = r_h.const_data_ptr<int64_t>();
  const int64_t* kp = k_h.const_data_ptr<int64_t>();
  bool* rup = ru.data_ptr<bool>();
  bool* cup = cu.data_ptr<bool>();
  std::vector<int64_t> newly;
  for (int64_t i = 0; i < t_h.numel(); ++i) {
    if (!rup[rp[i]] && !cup[kp[i]]) {
      rup[rp[i]] = cup[kp[i]] = true;
      newly.push_back(tp[i]);
    }
  }
  if (!newly.empty()) {
    const at::Tensor nk = at::from_blob(newly.data(), {int64_t(newly.size())}, at::kLong)
                              .to(kept.device());  // synchronous copy: `newly` may die after
    kept.index_fill_(0, nk, true);
  }
}

at::Tensor greedy_match_cuda(const at::Tensor& scores, const at::Tensor& rows,
                             const at::Tensor& cols, std::optional<int64_t> limit,
                             const std::optional<at::Tensor>& used_rows,
                             const std::optional<at::Tensor>& used_cols) {
  const auto [max_row, max_col] =
      check_greedy_match_args(scores, rows, cols, limit, used_rows, used_cols);
  c10::cuda::CUDAGuard guard(scores.device());
  const int64_t c = scores.size(0);
  const int64_t want = limit.value_or(c);
  if (c == 0 || want == 0) {
    return at::empty({0}, rows.options());
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = unsigned((c + kThreads - 1) / kThreads);
  const at::TensorOptions lopt = rows.options();

  // 1. Walk order by stable sorts, least significant key first (the initial
  // order is the position, the last key). std::optional<bool> picks the
  // `stable` overload of at::sort.
  at::Tensor key = at::empty({c}, lopt);
  if (scores.scalar_type() == at::kDouble) {
    const at::Tensor s = scores.contiguous();
    walk_key_kernel<double><<<blocks, kThreads, 0, stream>>>(s.const_data_ptr<double>(), c,
                                                             key.data_ptr<int64_t>());
  } else {
    const at::Tensor s = scores.to(at::kFloat).contiguous();
    walk_key_kernel<float><<<blocks, kThreads, 0, stream>>>(s.const_data_ptr<float>(), c,
                                                            key.data_ptr<int64_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const std::optional<bool> stable = true;
  at::Tensor order = std::get<1>(at::sort(cols, stable, 0, false));
  order = order.index_select(0, std::get<1>(at::sort(rows.index_select(0, order), stable, 0, false)));
  order = order.index_select(0, std::get<1>(at::sort(key.index_select(0, order), stable, 0, false)));
  const at::Tensor rows_s = rows.index_select(0, order);  // contiguous
  const at::Tensor cols_s = cols.index_select(0, order);

  // 2. State, sized by the largest index seen by the shared check.
  const at::TensorOptions bopt = lopt.dtype(at::kBool);
  at::Tensor row_used = at::zeros({max_row + 1}, bopt);
  at::Tensor col_used = at::zeros({max_col + 1}, bopt);
  if (used_rows.has_value() && used_rows->numel() > 0) row_used.index_fill_(0, *used_rows, true);
  if (used_cols.has_value() && used_cols->numel() > 0) col_used.index_fill_(0, *used_cols, true);
  // All-ones bits = UINT64_MAX, above every tag.
  at::Tensor best_row = at::full({max_row + 1}, -1, lopt);
  at::Tensor best_col = at::full({max_col + 1}, -1, lopt);
  auto* br = reinterpret_cast<unsigned long long*>(best_row.data_ptr<int64_t>());
  auto* bc = reinterpret_cast<unsigned long long*>(best_col.data_ptr<int64_t>());
  at::Tensor alive = at::ones({c}, bopt);
  at::Tensor kept = at::zeros({c}, bopt);
  at::Tensor any = at::zeros({1}, lopt.dtype(at::kInt));

  bool settled = false;
  for (int round = 0; round < kMaxRounds && !settled; ++round) {
    any.zero_();
    propose_kernel<<<blocks, kThreads, 0, stream>>>(
        rows_s.const_data_ptr<int64_t>(), cols_s.const_data_ptr<int64_t>(), c, round,
        row_used.const_data_ptr<bool>(), col_used.const_data_ptr<bool>(), alive.data_ptr<bool>(),
        br, bc, any.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    accept_kernel<<<blocks, kThreads, 0, stream>>>(
        rows_s.const_data_ptr<int64_t>(), cols_s.const_data_ptr<int64_t>(), c, round,
        row_used.data_ptr<bool>(), col_used.data_ptr<bool>(), alive.data_ptr<bool>(), br, bc,
        kept.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    settled = any.item<int>() == 0;  // no proposer: nothing alive is left
  }
  if (!settled) {
    finish_on_host(rows_s, cols_s, alive, row_used, col_used, kept);
  }

  // 3. Kept ranks ascending = selection order; map back to positions.
  at::Tensor sel = at::nonzero(kept).view({-1});
  if (sel.size(0) > want) {
    sel = sel.narrow(0, 0, want);
  }
  return order.index_select(0, sel);
}

}  // namespace

TORCH_LIBRARY_IMPL(psqe, CUDA, m) {
  m.impl("greedy_match", &greedy_match_cuda);
}

}  // namespace psqe
