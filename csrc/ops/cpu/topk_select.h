// Running top-k selection over similarity tiles, shared by the CPU kernels
// of topk_similarity / topk_similarity_both (topk_similarity_kernel.cpp) and
// the bfloat16-screened path (topk_screen.cpp).
//
// Design (after faiss runDistance): per row of a tile a bounded heap of the k
// best (value, column) pairs so far. Columns arrive in increasing order, so a
// value equal to the current k-th best can never win its tie (it has the
// larger column): one `v > worst` compare rejects almost every element for
// small k, which keeps the selection far cheaper than the GEMM.
// ColSelector keeps the k best of every column, in a second scan of each tile
// by column blocks, so one GEMM serves both directions.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace psqe {
namespace cpu {

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

// Adds `c` to a bounded heap (worst on top) of `size` <= kk entries, evicting
// the worst when full; the caller has checked that `c` beats it.
template <typename scalar_t>
inline void keep(Candidate<scalar_t>* heap, int64_t& size, int64_t kk, Candidate<scalar_t> c) {
  const auto cmp = [](const Candidate<scalar_t>& x, const Candidate<scalar_t>& y) { return better(x, y); };
  if (size == kk) {
    std::pop_heap(heap, heap + kk, cmp);
    heap[kk - 1] = c;
    std::push_heap(heap, heap + kk, cmp);
  } else {
    heap[size++] = c;
    std::push_heap(heap, heap + size, cmp);
  }
}

// `count` bounded heaps of kk candidates each; with `better` as the heap
// order the top of each heap is its worst candidate.
template <typename scalar_t>
struct HeapSet {
  using Cand = Candidate<scalar_t>;
  int64_t kk;
  std::vector<Cand> heaps;
  std::vector<int64_t> sizes;

  HeapSet(int64_t count, int64_t k)
      : kk(k), heaps(static_cast<size_t>(count * k)), sizes(count, 0) {}

  // Heaps [0, count) sorted best first into rows `first`.. of out_v/out_i
  // ([*, kk]), padded with -inf / -1 where a heap holds fewer than kk (fewer
  // columns survived `exclude`: pad, never guess); the heaps are emptied.
  void emit(int64_t count, int64_t first, scalar_t* out_v, int64_t* out_i) {
    const auto cmp = [](const Cand& x, const Cand& y) { return better(x, y); };
    at::parallel_for(0, count, 64, [&](int64_t begin, int64_t end) {
      for (int64_t h = begin; h < end; ++h) {
        Cand* heap = heaps.data() + h * kk;
        const int64_t size = sizes[h];
        std::sort(heap, heap + size, cmp);
        scalar_t* v = out_v + (first + h) * kk;
        int64_t* ix = out_i + (first + h) * kk;
        for (int64_t j = 0; j < kk; ++j) {
          v[j] = j < size ? heap[j].value : -std::numeric_limits<scalar_t>::infinity();
          ix[j] = j < size ? heap[j].index : -1;
        }
        sizes[h] = 0;
      }
    });
  }
};

// Running k best (value, column) of every row of one row block.
template <typename scalar_t>
struct RowSelector : HeapSet<scalar_t> {
  using Cand = Candidate<scalar_t>;
  using HeapSet<scalar_t>::kk;
  using HeapSet<scalar_t>::heaps;
  using HeapSet<scalar_t>::sizes;

  RowSelector(int64_t rows, int64_t k) : HeapSet<scalar_t>(rows, k) {}

  void on_tile(const at::Tensor& tile, int64_t c0, const bool* excluded) {
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
            keep(heap, size, kk, Cand{v, col});
          }
        }
        sizes[r] = size;
      }
    });
  }

  // Sorted output of rows [0, rows) of the block into out_v/out_i (row r0
  // onwards); resets the heaps for the next block.
  void finish(int64_t r0, int64_t rows, scalar_t* out_v, int64_t* out_i) {
    this->emit(rows, r0, out_v, out_i);
  }
};

// Running k best (value, row) of every column of the whole similarity. Rows
// arrive in increasing order (row blocks are the outer loop of the tiling),
// so, as for rows, an equal value never wins its tie. `worst[j]` mirrors the
// top of column j's heap (-inf until full) so that a block of columns is
// rejected with one vectorisable compare.
template <typename scalar_t>
struct ColSelector : HeapSet<scalar_t> {
  using Cand = Candidate<scalar_t>;
  using HeapSet<scalar_t>::kk;
  using HeapSet<scalar_t>::heaps;
  using HeapSet<scalar_t>::sizes;
  std::vector<scalar_t> worst;

  ColSelector(int64_t cols, int64_t k)
      : HeapSet<scalar_t>(cols, k), worst(cols, -std::numeric_limits<scalar_t>::infinity()) {}

  void on_tile(const at::Tensor& tile, int64_t r0, int64_t c0) {
    const int64_t rows = tile.size(0);
    const int64_t cols = tile.size(1);
    const scalar_t* base = tile.const_data_ptr<scalar_t>();
    // Threads own disjoint column ranges; each walks the tile's rows in order.
    at::parallel_for(0, (cols + kBlock - 1) / kBlock, 4, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t j0 = blk * kBlock;
        const int64_t width = std::min(kBlock, cols - j0);
        scalar_t* w = worst.data() + c0 + j0;
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t* row = base + r * cols + j0;
          bool any = false;
          for (int64_t t = 0; t < width; ++t) {
            any |= row[t] > w[t];
          }
          if (!any) {
            continue;
          }
          for (int64_t t = 0; t < width; ++t) {
            const scalar_t v = row[t];
            if (!(v > w[t])) {
              continue;
            }
            const int64_t col = c0 + j0 + t;
            Cand* heap = heaps.data() + col * kk;
            int64_t& size = sizes[col];
            keep(heap, size, kk, Cand{v, r0 + r});
            if (size == kk) {
              w[t] = heap[0].value;
            }
          }
        }
      }
    });
  }

  // Every row was seen, so every heap is full (no padding).
  void finish(scalar_t* out_v, int64_t* out_i) {
    this->emit(static_cast<int64_t>(sizes.size()), 0, out_v, out_i);
  }
};

}  // namespace cpu
}  // namespace psqe
