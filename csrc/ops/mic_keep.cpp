// Schema and argument checks of psqe::mic_keep (semantics in
// csrc/psqe_ops.h). Kernels: cpu/mic_keep_kernel.cpp and
// cuda/mic_keep_kernel.cu.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../psqe_ops.h"

namespace psqe {

void check_mic_keep_args(const at::Tensor& left, const at::Tensor& right) {
  TORCH_CHECK(left.dim() == 2, "mic_keep: left must be 2-D [s, d], got ",
              left.dim(), "-D tensor of shape ", left.sizes());
  TORCH_CHECK(right.dim() == 2, "mic_keep: right must be 2-D [s, d], got ",
              right.dim(), "-D tensor of shape ", right.sizes());
  TORCH_CHECK(left.sizes() == right.sizes(),
              "mic_keep: left and right must have the same shape (one row "
              "per seed pair), got ", left.sizes(), " and ", right.sizes());
  TORCH_CHECK(at::isFloatingType(left.scalar_type()),
              "mic_keep: left must be float16, bfloat16, float32 or float64, "
              "got ", left.scalar_type());
  TORCH_CHECK(left.scalar_type() == right.scalar_type(),
              "mic_keep: left and right must have the same dtype, got ",
              left.scalar_type(), " and ", right.scalar_type());
  TORCH_CHECK(left.device() == right.device(),
              "mic_keep: left and right must be on the same device, got ",
              left.device(), " and ", right.device());
  check_all_finite(left, "mic_keep: left");
  check_all_finite(right, "mic_keep: right");
}

TORCH_LIBRARY_FRAGMENT(psqe, m) {
  m.def("mic_keep(Tensor left, Tensor right, bool both_directions=False) -> "
        "Tensor");
}

}  // namespace psqe
