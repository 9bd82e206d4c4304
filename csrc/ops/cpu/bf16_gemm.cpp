// MKL's bfloat16 x bfloat16 -> float32 GEMM, reached through the running
// libtorch (declarations and use: bf16_gemm.h).
#include "bf16_gemm.h"

#include <cstdint>

// MKL's mixed-precision GEMM (LP64: 32-bit sizes; the ILP64 one is named
// *_64). Declared weak: a libtorch built without MKL leaves it null and the
// float32 path runs.
extern "C" void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k,
                                       float alpha, const uint16_t* a, int lda, const uint16_t* b,
                                       int ldb, float beta, float* c, int ldc)
    __attribute__((weak));

namespace psqe {
namespace cpu {
namespace {

constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;

}  // namespace

void gemm_bf16(const at::BFloat16* a, const at::BFloat16* b, float* c, int64_t rows, int64_t cols, int64_t d) {
  cblas_gemm_bf16bf16f32(kRowMajor, kNoTrans, kTrans, static_cast<int>(rows), static_cast<int>(cols),
                         static_cast<int>(d), 1.0f, reinterpret_cast<const uint16_t*>(a), static_cast<int>(d),
                         reinterpret_cast<const uint16_t*>(b), static_cast<int>(d), 0.0f, c,
                         static_cast<int>(cols));
}

bool bf16_gemm_available() {
  static const bool ok = [] {
    if (cblas_gemm_bf16bf16f32 == nullptr) {
      return false;
    }
    constexpr int64_t r = 3, c = 2, d = 5;
    at::BFloat16 a[r * d], b[c * d];
    for (int64_t t = 0; t < r * d; ++t) a[t] = static_cast<float>(t % 7) - 3.0f;
    for (int64_t t = 0; t < c * d; ++t) b[t] = 0.5f * static_cast<float>(t % 5) - 1.0f;
    float out[r * c];
    gemm_bf16(a, b, out, r, c, d);
    for (int64_t i = 0; i < r; ++i) {
      for (int64_t j = 0; j < c; ++j) {
        float want = 0.0f;
        for (int64_t t = 0; t < d; ++t) want += static_cast<float>(a[i * d + t]) * static_cast<float>(b[j * d + t]);
        if (out[i * c + j] != want) {
          return false;
        }
      }
    }
    return true;
  }();
  return ok;
}

bool native_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool v = __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  return v;
#else
  return false;
#endif
}

bool bf16_gemm_fast() {
  return bf16_gemm_available() && native_bf16();
}

}  // namespace cpu
}  // namespace psqe
