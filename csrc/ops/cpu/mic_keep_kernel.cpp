// CPU kernel of psqe::mic_keep (semantics in csrc/psqe_ops.h).
//
// Row maxima, column maxima and the diagonal all come from the same tiled
// GEMM values (tiling.h), so a pair is never dropped by a rounding difference
// between how its own similarity and its rivals' were computed.
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
void mic_cpu_impl(const at::Tensor& left, const at::Tensor& right,
                  bool both_directions, bool* keep) {
  const int64_t s = left.size(0);
  const scalar_t lowest = -std::numeric_limits<scalar_t>::infinity();
  std::vector<scalar_t> row_max(s, lowest);
  std::vector<scalar_t> col_max(both_directions ? s : 0, lowest);
  std::vector<scalar_t> diag(s, lowest);

  const auto on_tile = [&](const at::Tensor& tile, int64_t r0, int64_t c0) {
    const int64_t rows = tile.size(0);
    const int64_t cols = tile.size(1);
    const scalar_t* base = tile.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = base + r * cols;
        const scalar_t best = *std::max_element(row, row + cols);
        row_max[r0 + r] = std::max(row_max[r0 + r], best);
        const int64_t own = r0 + r - c0;  // column of this row's own partner
        if (own >= 0 && own < cols) {
          diag[r0 + r] = row[own];
        }
      }
    });
    if (both_directions) {
      // Threads own disjoint column ranges and sweep the rows: contiguous
      // reads and no two threads touch the same col_max entry.
      at::parallel_for(0, cols, 256, [&](int64_t begin, int64_t end) {
        scalar_t* cm = col_max.data() + c0;
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t* row = base + r * cols;
          for (int64_t j = begin; j < end; ++j) {
            cm[j] = std::max(cm[j], row[j]);
          }
        }
      });
    }
  };

  cpu::for_each_similarity_tile(left, right, accumulate_dtype(left.scalar_type()),
                                on_tile, [](int64_t, int64_t) {});
  for (int64_t k = 0; k < s; ++k) {
    keep[k] = diag[k] >= row_max[k] && (!both_directions || diag[k] >= col_max[k]);
  }
}

at::Tensor mic_keep_cpu(const at::Tensor& left, const at::Tensor& right,
                        bool both_directions) {
  check_mic_keep_args(left, right);
  at::Tensor keep = at::empty({left.size(0)}, left.options().dtype(at::kBool));
  if (left.size(0) == 0) {
    return keep;
  }
  AT_DISPATCH_FLOATING_TYPES(accumulate_dtype(left.scalar_type()), "mic_keep_cpu", [&] {
    mic_cpu_impl<scalar_t>(left, right, both_directions, keep.data_ptr<bool>());
  });
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(psqe, CPU, m) {
  m.impl("mic_keep", &mic_keep_cpu);
}

}  // namespace psqe
