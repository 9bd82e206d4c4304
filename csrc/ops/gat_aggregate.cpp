// Schemas and argument checks of psqe::gat_aggregate and its two backward
// ops (semantics in csrc/psqe_ops.h). Kernels: cpu/gat_aggregate_kernel.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../psqe_ops.h"

namespace psqe {
namespace {

void check_index(const at::Tensor& t, const char* op, const char* name, int64_t numel) {
  TORCH_CHECK(t.dim() == 1 && t.scalar_type() == at::kLong, op, ": ", name,
              " must be a 1-D int64 tensor, got ", t.dim(), "-D ", t.scalar_type());
  TORCH_CHECK(numel < 0 || t.numel() == numel, op, ": ", name, " must have ", numel,
              " entries, got ", t.numel());
}

void check_float(const at::Tensor& t, const char* op, const char* name, int64_t dim,
                 const at::Tensor& like) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " must be ",
              like.scalar_type(), " like x, got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(),
              ", got ", t.device());
}

// What both walks share: the dense rows `dense` [rows, d], a CSR pointer
// `ptr` over `index`, and per-edge per-head `alpha` [E, H] and `scale` [H, d].
void check_walk(const char* op, const at::Tensor& dense, const char* dense_name,
                const at::Tensor& ptr, const char* ptr_name, const at::Tensor& index,
                const char* index_name, const at::Tensor& alpha, const at::Tensor& scale) {
  TORCH_CHECK(dense.dim() == 2, op, ": ", dense_name, " must be 2-D [rows, d], got shape ",
              dense.sizes());
  TORCH_CHECK(dense.scalar_type() == at::kFloat || dense.scalar_type() == at::kDouble, op, ": ",
              dense_name, " must be float32 or float64, got ", dense.scalar_type());
  check_index(ptr, op, ptr_name, -1);
  TORCH_CHECK(ptr.numel() >= 1, op, ": ", ptr_name, " must hold rows + 1 >= 1 entries");
  check_index(index, op, index_name, -1);
  check_float(alpha, op, "alpha", 2, dense);
  check_float(scale, op, "scale", 2, dense);
  TORCH_CHECK(alpha.size(0) == index.numel(), op, ": alpha must have one row per edge (",
              index.numel(), "), got shape ", alpha.sizes());
  TORCH_CHECK(scale.size(0) == alpha.size(1) && scale.size(1) == dense.size(1), op,
              ": scale must be [heads, d] = [", alpha.size(1), ", ", dense.size(1), "], got ",
              scale.sizes());
  TORCH_CHECK(ptr.device() == dense.device() && index.device() == dense.device(), op, ": ",
              ptr_name, " and ", index_name, " must be on ", dense_name, "'s device ",
              dense.device());
}

}  // namespace

void check_gat_aggregate_args(const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& alpha, const at::Tensor& x,
                              const at::Tensor& scale, const char* op) {
  check_walk(op, x, "x", crow, "crow", col, "col", alpha, scale);
}

void check_gat_aggregate_backward_input_args(const at::Tensor& src_ptr, const at::Tensor& dst,
                                             const at::Tensor& edge, const at::Tensor& alpha,
                                             const at::Tensor& scale, const at::Tensor& g,
                                             const std::optional<at::Tensor>& low_grad,
                                             const std::optional<at::Tensor>& low_weight) {
  const char* op = "gat_aggregate_backward_input";
  check_walk(op, g, "g", src_ptr, "src_ptr", dst, "dst", alpha, scale);
  check_index(edge, op, "edge", dst.numel());
  TORCH_CHECK(low_grad.has_value() == low_weight.has_value(), op,
              ": give both low_grad and low_weight or neither");
  if (low_grad.has_value()) {
    check_float(*low_grad, op, "low_grad", 2, g);
    check_float(*low_weight, op, "low_weight", 2, g);
    TORCH_CHECK(low_grad->size(0) == src_ptr.numel() - 1 &&
                    low_weight->size(0) == low_grad->size(1) && low_weight->size(1) == g.size(1),
                op, ": low_grad must be [num_src, r] and low_weight [r, d], got ",
                low_grad->sizes(), " and ", low_weight->sizes());
  }
}

TORCH_LIBRARY_FRAGMENT(psqe, m) {
  m.def("gat_aggregate(Tensor crow, Tensor col, Tensor alpha, Tensor x, Tensor scale"
        ") -> Tensor");
  m.def("gat_aggregate_backward(Tensor crow, Tensor col, Tensor alpha, Tensor x, "
        "Tensor scale, Tensor out, Tensor grad_out, bool elu, float flush) "
        "-> (Tensor g, Tensor grad_alpha, Tensor grad_scale)");
  m.def("gat_aggregate_backward_input(Tensor src_ptr, Tensor dst, Tensor edge, "
        "Tensor alpha, Tensor scale, Tensor g, Tensor? low_grad=None, "
        "Tensor? low_weight=None, float flush=0.0) -> Tensor");
}

}  // namespace psqe
