// CPU kernel of psqe::topk_similarity (semantics in csrc/psqe_ops.h).
//
// Design (after faiss runDistance): GEMM one tile at a time
// (tiling.h), then per row of the tile a bounded heap of the k best
// (value, column) pairs so far. Columns arrive in increasing order, so a value
// equal to the current k-th best can never win its tie (it has the larger
// column): one `v > worst` compare rejects almost every element for small k,
// which keeps the selection far cheaper than the GEMM.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../../psqe_ops.h"
#include "tiling.h"

namespace psqe {
namespace {

template <typename scalar_t>
struct Candidate {
  scalar_t value;
  int64_t index;
};

// Strict order of the output: larger value first, then smaller column.
template <typename scalar_t>
inline bool better(const Candidate<scalar_t>& x, const Candidate<scalar_t>& y) {
  return x.value > y.value || (x.value == y.value && x.index < y.index);
}

// Once a row's heap is full almost every block of a tile is rejected whole:
// a fixed-width max the compiler turns into SIMD, then one compare.
constexpr int64_t kBlock = 16;

template <typename scalar_t>
inline scalar_t block_max(const scalar_t* x) {
  scalar_t m = x[0];
  for (int64_t t = 1; t < kBlock; ++t) {
    m = x[t] > m ? x[t] : m;
  }
  return m;
}

template <typename scalar_t>
void topk_cpu_impl(const at::Tensor& a, const at::Tensor& b, int64_t kk,
                   const bool* excluded, at::Tensor& values,
                   at::Tensor& indices) {
  using Cand = Candidate<scalar_t>;
  const auto cmp = [](const Cand& x, const Cand& y) { return better(x, y); };
  // Heaps of the current row block; with `better` as the heap order the top
  // of each heap is its worst candidate.
  std::vector<Cand> heaps(static_cast<size_t>(std::min(a.size(0), cpu::kRowTile) * kk));
  std::vector<int64_t> sizes(std::min(a.size(0), cpu::kRowTile), 0);
  scalar_t* out_v = values.data_ptr<scalar_t>();
  int64_t* out_i = indices.data_ptr<int64_t>();

  const auto on_tile = [&](const at::Tensor& tile, int64_t /*r0*/, int64_t c0) {
    const int64_t cols = tile.size(1);
    const scalar_t* base = tile.const_data_ptr<scalar_t>();
    at::parallel_for(0, tile.size(0), 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = base + r * cols;
        Cand* heap = heaps.data() + r * kk;
        int64_t size = sizes[r];
        for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
          const int64_t j1 = std::min(j0 + kBlock, cols);
          if (size == kk && j1 - j0 == kBlock &&
              !(block_max<scalar_t>(row + j0) > heap[0].value)) {
            continue;  // nothing in this block beats the worst kept
          }
          for (int64_t j = j0; j < j1; ++j) {
            const scalar_t v = row[j];
            if (size == kk && !(v > heap[0].value)) {
              continue;  // not better than the worst kept (ties lose: later column)
            }
            const int64_t col = c0 + j;
            if (excluded != nullptr && excluded[col]) {
              continue;
            }
            if (size == kk) {
              std::pop_heap(heap, heap + kk, cmp);
              heap[kk - 1] = Cand{v, col};
              std::push_heap(heap, heap + kk, cmp);
            } else {
              heap[size++] = Cand{v, col};
              std::push_heap(heap, heap + size, cmp);
            }
          }
        }
        sizes[r] = size;
      }
    });
  };

  const auto on_rows_done = [&](int64_t r0, int64_t rows) {
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        Cand* heap = heaps.data() + r * kk;
        const int64_t size = sizes[r];
        std::sort(heap, heap + size, cmp);
        scalar_t* v = out_v + (r0 + r) * kk;
        int64_t* ix = out_i + (r0 + r) * kk;
        for (int64_t j = 0; j < kk; ++j) {
          // Fewer than kk columns survive `exclude`: pad, never guess.
          v[j] = j < size ? heap[j].value : -std::numeric_limits<scalar_t>::infinity();
          ix[j] = j < size ? heap[j].index : -1;
        }
        sizes[r] = 0;
      }
    });
  };

  cpu::for_each_similarity_tile(a, b, values.scalar_type(), on_tile, on_rows_done);
}

std::tuple<at::Tensor, at::Tensor> topk_similarity_cpu(
    const at::Tensor& a, const at::Tensor& b, int64_t k,
    const std::optional<at::Tensor>& exclude) {
  check_topk_similarity_args(a, b, k, exclude);
  const int64_t n = a.size(0);
  const int64_t kk = std::min(k, b.size(0));
  const at::ScalarType acc = accumulate_dtype(a.scalar_type());
  at::Tensor values = at::empty({n, kk}, a.options().dtype(acc));
  at::Tensor indices = at::empty({n, kk}, a.options().dtype(at::kLong));
  if (n == 0 || kk == 0) {
    return {values, indices};
  }
  at::Tensor ex;
  if (exclude.has_value()) {
    ex = exclude->contiguous();
  }
  const bool* ex_ptr = ex.defined() ? ex.const_data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(acc, "topk_similarity_cpu", [&] {
    topk_cpu_impl<scalar_t>(a, b, kk, ex_ptr, values, indices);
  });
  return {values, indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(psqe, CPU, m) {
  m.impl("topk_similarity", &topk_similarity_cpu);
}

}  // namespace psqe
