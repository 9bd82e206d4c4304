// Schemas and argument checks of psqe::topk_similarity and
// psqe::topk_similarity_both (semantics in csrc/psqe_ops.h). Kernels:
// cpu/topk_similarity_kernel.cpp and cuda/topk_similarity_kernel.cu (CPU
// only for the _both variant; on CUDA psqe.ops runs the one-pass PyTorch
// version in psqe/_reference.py, so that a pair has one score in both lists).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../psqe_ops.h"

namespace psqe {

void check_topk_similarity_args(const at::Tensor& a, const at::Tensor& b,
                                int64_t k,
                                const std::optional<at::Tensor>& exclude) {
  TORCH_CHECK(a.dim() == 2, "topk_similarity: a must be 2-D [n, d], got ",
              a.dim(), "-D tensor of shape ", a.sizes());
  TORCH_CHECK(b.dim() == 2, "topk_similarity: b must be 2-D [m, d], got ",
              b.dim(), "-D tensor of shape ", b.sizes());
  TORCH_CHECK(a.size(1) == b.size(1),
              "topk_similarity: a and b must have the same feature size d, "
              "got a ", a.sizes(), " and b ", b.sizes());
  TORCH_CHECK(at::isFloatingType(a.scalar_type()),
              "topk_similarity: a must be float16, bfloat16, float32 or "
              "float64, got ", a.scalar_type());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(),
              "topk_similarity: a and b must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(),
              "topk_similarity: a and b must be on the same device, got ",
              a.device(), " and ", b.device());
  TORCH_CHECK(k >= 1, "topk_similarity: k must be >= 1, got ", k);
  TORCH_CHECK(k <= kMaxTopK, "topk_similarity: k = ", k,
              " exceeds the largest supported k (", kMaxTopK,
              "); select in several calls with `exclude`, or use a dense "
              "similarity for such wide lists");
  if (exclude.has_value()) {
    const at::Tensor& ex = *exclude;
    TORCH_CHECK(ex.scalar_type() == at::kBool,
                "topk_similarity: exclude must be a bool mask, got ",
                ex.scalar_type());
    TORCH_CHECK(ex.dim() == 1 && ex.size(0) == b.size(0),
                "topk_similarity: exclude must have shape [m] = [", b.size(0),
                "], got ", ex.sizes());
    TORCH_CHECK(ex.device() == b.device(),
                "topk_similarity: exclude must be on ", b.device(), ", got ",
                ex.device());
  }
  check_all_finite(a, "topk_similarity: a");
  check_all_finite(b, "topk_similarity: b");
}

TORCH_LIBRARY_FRAGMENT(psqe, m) {
  m.def(
      "topk_similarity(Tensor a, Tensor b, int k, Tensor? exclude=None) -> "
      "(Tensor values, Tensor indices)");
  m.def(
      "topk_similarity_both(Tensor a, Tensor b, int k) -> (Tensor row_values, "
      "Tensor row_indices, Tensor col_values, Tensor col_indices)");
}

}  // namespace psqe
