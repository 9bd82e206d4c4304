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

}  // namespace

void check_gat_aggregate_args(const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& alpha, const at::Tensor& x,
                              const at::Tensor& scale, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [num_src, d], got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  check_index(crow, op, "crow", -1);
  TORCH_CHECK(crow.numel() >= 1, op, ": crow must hold num_dst + 1 >= 1 entries");
  check_index(col, op, "col", -1);
  check_float(alpha, op, "alpha", 2, x);
  check_float(scale, op, "scale", 2, x);
  TORCH_CHECK(alpha.size(0) == col.numel(), op, ": alpha must have one row per edge (",
              col.numel(), "), got shape ", alpha.sizes());
  TORCH_CHECK(scale.size(0) == alpha.size(1) && scale.size(1) == x.size(1), op,
              ": scale must be [heads, d] = [", alpha.size(1), ", ", x.size(1), "], got ",
              scale.sizes());
  TORCH_CHECK(crow.device() == x.device() && col.device() == x.device(), op,
              ": crow and col must be on x's device ", x.device());
}

void check_gat_aggregate_backward_input_args(const at::Tensor& src_ptr, const at::Tensor& dst,
                                             const at::Tensor& edge, const at::Tensor& alpha,
                                             const at::Tensor& scale, const at::Tensor& g,
                                             const std::optional<at::Tensor>& low_grad,
                                             const std::optional<at::Tensor>& low_weight) {
  const char* op = "gat_aggregate_backward_input";
  TORCH_CHECK(g.dim() == 2, op, ": g must be 2-D [num_dst, d], got shape ", g.sizes());
  TORCH_CHECK(g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble, op,
              ": g must be float32 or float64, got ", g.scalar_type());
  check_index(src_ptr, op, "src_ptr", -1);
  TORCH_CHECK(src_ptr.numel() >= 1, op, ": src_ptr must hold num_src + 1 >= 1 entries");
  check_index(dst, op, "dst", -1);
  check_index(edge, op, "edge", dst.numel());
  check_float(alpha, op, "alpha", 2, g);
  check_float(scale, op, "scale", 2, g);
  TORCH_CHECK(alpha.size(0) == dst.numel(), op, ": alpha must have one row per edge (",
              dst.numel(), "), got shape ", alpha.sizes());
  TORCH_CHECK(scale.size(0) == alpha.size(1) && scale.size(1) == g.size(1), op,
              ": scale must be [heads, d] = [", alpha.size(1), ", ", g.size(1), "], got ",
              scale.sizes());
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
