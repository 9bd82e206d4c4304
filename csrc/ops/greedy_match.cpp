// Schema and argument checks of psqe::greedy_match (semantics in
// csrc/psqe_ops.h). Kernels: cpu/greedy_match_kernel.cpp and
// cuda/greedy_match_kernel.cu.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "../psqe_ops.h"

namespace psqe {
namespace {

// Max of an int64 index list, after checking it holds no negative entry.
int64_t checked_max_index(const at::Tensor& t, const char* what) {
  if (t.numel() == 0) {
    return -1;
  }
  const int64_t lo = t.min().item<int64_t>();
  if (lo < 0) {
    const int64_t first = (t < 0).nonzero()[0][0].item<int64_t>();
    TORCH_CHECK(false, "greedy_match: ", what,
                " must hold indices >= 0, but entry ", first, " is ",
                t[first].item<int64_t>());
  }
  return t.max().item<int64_t>();
}

void check_index_list(const at::Tensor& t, const char* what,
                      const at::Device& device) {
  TORCH_CHECK(t.dim() == 1, "greedy_match: ", what, " must be 1-D, got shape ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kLong, "greedy_match: ", what,
              " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, "greedy_match: ", what, " must be on ",
              device, ", got ", t.device());
}

}  // namespace

std::pair<int64_t, int64_t> check_greedy_match_args(
    const at::Tensor& scores, const at::Tensor& rows, const at::Tensor& cols,
    std::optional<int64_t> limit, const std::optional<at::Tensor>& used_rows,
    const std::optional<at::Tensor>& used_cols) {
  TORCH_CHECK(scores.dim() == 1, "greedy_match: scores must be 1-D [c], got "
              "shape ", scores.sizes());
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()),
              "greedy_match: scores must be a floating tensor, got ",
              scores.scalar_type());
  const at::Device device = scores.device();
  check_index_list(rows, "rows", device);
  check_index_list(cols, "cols", device);
  TORCH_CHECK(rows.size(0) == scores.size(0) && cols.size(0) == scores.size(0),
              "greedy_match: scores, rows and cols must have the same length, "
              "got ", scores.size(0), ", ", rows.size(0), " and ",
              cols.size(0));
  TORCH_CHECK(scores.size(0) < std::numeric_limits<int32_t>::max(),
              "greedy_match: at most 2^31 - 1 candidates are supported, got ",
              scores.size(0));
  if (limit.has_value()) {
    TORCH_CHECK(*limit >= 0, "greedy_match: limit must be >= 0, got ", *limit);
  }
  check_all_finite(scores, "greedy_match: scores");
  int64_t max_row = checked_max_index(rows, "rows");
  int64_t max_col = checked_max_index(cols, "cols");
  if (used_rows.has_value()) {
    check_index_list(*used_rows, "used_rows", device);
    max_row = std::max(max_row, checked_max_index(*used_rows, "used_rows"));
  }
  if (used_cols.has_value()) {
    check_index_list(*used_cols, "used_cols", device);
    max_col = std::max(max_col, checked_max_index(*used_cols, "used_cols"));
  }
  return {max_row, max_col};
}

TORCH_LIBRARY_FRAGMENT(psqe, m) {
  m.def(
      "greedy_match(Tensor scores, Tensor rows, Tensor cols, int? limit=None, "
      "Tensor? used_rows=None, Tensor? used_cols=None) -> Tensor");
}

}  // namespace psqe
