// Library-wide pieces: the `psqe` namespace itself, build information and the
// finiteness check shared by all ops.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "../psqe_ops.h"

#ifndef PSQE_TORCH_VERSION
#define PSQE_TORCH_VERSION "unknown"
#endif

namespace psqe {

void check_all_finite(const at::Tensor& t, const char* what) {
  if (t.numel() == 0 || !at::isFloatingType(t.scalar_type())) {
    return;
  }
  // One reduction (and, on CUDA, one synchronisation) per call: cheap next
  // to the GEMM that follows, and it turns a silent wrong answer into an error.
  const at::Tensor bad = at::logical_not(at::isfinite(t));
  if (!bad.any().item<bool>()) {
    return;
  }
  const at::Tensor flat = bad.reshape({-1}).nonzero();
  const int64_t first = flat[0][0].item<int64_t>();
  const int64_t count = flat.size(0);
  TORCH_CHECK(false, what, " must be finite, but it holds ", count,
              " NaN/inf value(s); the first at flat index ", first,
              " (shape ", t.sizes(), ")");
}

namespace {

std::string build_info() {
  std::string info = "torch=" PSQE_TORCH_VERSION;
#ifdef PSQE_WITH_CUDA
  info += ";cuda=1";
#else
  info += ";cuda=0";
#endif
#ifdef _OPENMP
  info += ";openmp=1";
#else
  info += ";openmp=0";
#endif
  return info;
}

}  // namespace

TORCH_LIBRARY(psqe, m) {
  // "torch=<version the library was built against>;cuda=0|1;openmp=0|1".
  m.def("_build_info() -> str", &build_info);
}

}  // namespace psqe
