// CPU kernel of psqe::topk_similarity (semantics in csrc/psqe_ops.h).
//
// GEMM one tile at a time (tiling.h), then the running selection of
// topk_select.h. float32 inputs on a CPU with native bfloat16 products take
// the screened path of topk_screen.h when it applies (same result).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../../psqe_ops.h"
#include "tiling.h"
#include "topk_screen.h"
#include "topk_select.h"

namespace psqe {
namespace {

using cpu::ColSelector;
using cpu::RowSelector;

template <typename scalar_t>
void topk_cpu_impl(const at::Tensor& a, const at::Tensor& b, int64_t kk,
                   const bool* excluded, at::Tensor& values,
                   at::Tensor& indices) {
  RowSelector<scalar_t> rows(std::min(a.size(0), cpu::kRowTile), kk);
  scalar_t* out_v = values.data_ptr<scalar_t>();
  int64_t* out_i = indices.data_ptr<int64_t>();
  cpu::for_each_similarity_tile(
      a, b, values.scalar_type(),
      [&](const at::Tensor& tile, int64_t /*r0*/, int64_t c0) { rows.on_tile(tile, c0, excluded); },
      [&](int64_t r0, int64_t n) { rows.finish(r0, n, out_v, out_i); });
}

// The rows of `a` the bfloat16 screen could not certify, the float32 way,
// into their rows of values / indices.
void recompute_rows(const std::vector<int64_t>& failed, const at::Tensor& a, const at::Tensor& b, int64_t kk,
                    const bool* excluded, at::Tensor& values, at::Tensor& indices) {
  if (failed.empty()) {
    return;
  }
  const at::Tensor rows = at::tensor(failed, indices.options());
  at::Tensor sub_v = at::empty({rows.size(0), kk}, values.options());
  at::Tensor sub_i = at::empty({rows.size(0), kk}, indices.options());
  topk_cpu_impl<float>(a.index_select(0, rows), b, kk, excluded, sub_v, sub_i);
  values.index_copy_(0, rows, sub_v);
  indices.index_copy_(0, rows, sub_i);
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
  if (cpu::screen_applies(a, b, kk)) {
    recompute_rows(cpu::topk_screened(a, b, kk, ex_ptr, values, indices), a, b, kk, ex_ptr, values, indices);
    return {values, indices};
  }
  AT_DISPATCH_FLOATING_TYPES(acc, "topk_similarity_cpu", [&] {
    topk_cpu_impl<scalar_t>(a, b, kk, ex_ptr, values, indices);
  });
  return {values, indices};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_similarity_both_cpu(
    const at::Tensor& a, const at::Tensor& b, int64_t k) {
  check_topk_similarity_args(a, b, k, std::nullopt);
  const int64_t n = a.size(0);
  const int64_t m = b.size(0);
  const int64_t kr = std::min(k, m);
  const int64_t kc = std::min(k, n);
  const at::ScalarType acc = accumulate_dtype(a.scalar_type());
  at::Tensor row_values = at::empty({n, kr}, a.options().dtype(acc));
  at::Tensor row_indices = at::empty({n, kr}, a.options().dtype(at::kLong));
  at::Tensor col_values = at::empty({m, kc}, a.options().dtype(acc));
  at::Tensor col_indices = at::empty({m, kc}, a.options().dtype(at::kLong));
  if (n == 0 || m == 0) {
    return {row_values, row_indices, col_values, col_indices};
  }
  if (cpu::screen_applies(a, b, kr, kc)) {
    const cpu::ScreenFailures failed =
        cpu::topk_screened_both(a, b, kr, kc, row_values, row_indices, col_values, col_indices);
    if (!failed.abandoned) {
      // A column of the similarity is a row of b @ a^T.
      recompute_rows(failed.rows, a, b, kr, nullptr, row_values, row_indices);
      recompute_rows(failed.cols, b, a, kc, nullptr, col_values, col_indices);
      return {row_values, row_indices, col_values, col_indices};
    }
  }
  AT_DISPATCH_FLOATING_TYPES(acc, "topk_similarity_both_cpu", [&] {
    RowSelector<scalar_t> rows(std::min(n, cpu::kRowTile), kr);
    ColSelector<scalar_t> cols(m, kc);
    scalar_t* rv = row_values.data_ptr<scalar_t>();
    int64_t* ri = row_indices.data_ptr<int64_t>();
    cpu::for_each_similarity_tile(
        a, b, acc,
        [&](const at::Tensor& tile, int64_t r0, int64_t c0) {
          rows.on_tile(tile, c0, nullptr);
          cols.on_tile(tile, r0, c0);
        },
        [&](int64_t r0, int64_t count) { rows.finish(r0, count, rv, ri); });
    cols.finish(col_values.data_ptr<scalar_t>(), col_indices.data_ptr<int64_t>());
  });
  return {row_values, row_indices, col_values, col_indices};
}

}  // namespace

TORCH_LIBRARY_IMPL(psqe, CPU, m) {
  m.impl("topk_similarity", &topk_similarity_cpu);
  m.impl("topk_similarity_both", &topk_similarity_both_cpu);
}

}  // namespace psqe
