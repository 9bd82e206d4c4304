// MKL's bfloat16 x bfloat16 -> float32 GEMM (cblas_gemm_bf16bf16f32),
// found in the running libtorch through a weak symbol: the bfloat16 screen of
// topk_screen.h and bfloat16 inputs in tiling.h run their tiles through it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace psqe {
namespace cpu {

// C = A @ B^T for row-major bfloat16 A [rows, d], B [cols, d] into float
// C [rows, cols] (products exact, float32 sums); only after
// bf16_gemm_available() said true.
void gemm_bf16(const at::BFloat16* a, const at::BFloat16* b, float* c,
               int64_t rows, int64_t cols, int64_t d);

// The symbol exists and computes a small product exactly (sizes passed as
// the declared 32-bit ints): checked once.
bool bf16_gemm_available();

// The CPU multiplies bfloat16 natively (AVX512-BF16 or AMX).
bool native_bf16();

// Both: then bfloat16 inputs skip their conversion to float32 (tiling.h).
bool bf16_gemm_fast();

}  // namespace cpu
}  // namespace psqe
