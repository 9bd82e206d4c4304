// CPU kernels of psqe::gat_aggregate, gat_aggregate_backward and
// gat_aggregate_backward_input (semantics in csrc/psqe_ops.h).
//
// Every pass walks whole rows of one CSR structure, so a thread owns the
// output rows it writes: no atomics, no zero-fill, and each output row is
// written once. Per-head partial sums live in a thread-local [heads, d]
// buffer. grad_scale is summed over a fixed number of row chunks (not one
// per thread), then over the chunks in order: the result does not depend on
// the thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <vector>

#include "../../psqe_ops.h"

namespace psqe {

namespace {

// Rows per parallel task: a row costs about degree * heads * d operations.
constexpr int64_t kGrain = 32;
// grad_scale partial sums: this many row chunks, whatever the thread count.
constexpr int64_t kChunks = 64;

// Raises unless ptr is a valid CSR pointer over `entries` entries and every
// index lies in [0, bound).
void check_structure(const at::Tensor& ptr, const at::Tensor& index, int64_t bound,
                     const char* op, const char* ptr_name, const char* index_name) {
  const int64_t* p = ptr.const_data_ptr<int64_t>();
  const int64_t rows = ptr.numel() - 1;
  TORCH_CHECK(p[0] == 0 && p[rows] == index.numel(), op, ": ", ptr_name,
              " must start at 0 and end at the number of edges (", index.numel(), "), got ",
              p[0], " and ", p[rows]);
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(p[r] <= p[r + 1], op, ": ", ptr_name, " must be non-decreasing, but entry ",
                r + 1, " is below entry ", r);
  }
  const int64_t* idx = index.const_data_ptr<int64_t>();
  const int64_t n = index.numel();
  std::atomic<bool> bad{false};
  at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      if (idx[e] < 0 || idx[e] >= bound) {
        bad.store(true, std::memory_order_relaxed);
        return;
      }
    }
  });
  TORCH_CHECK(!bad, op, ": every entry of ", index_name, " must lie in [0, ", bound, ")");
}

// The row loops are compiled for AVX-512, AVX2 + FMA and the baseline ISA,
// chosen at run time (the extension is built without -march flags).
#if defined(__GNUC__) && defined(__x86_64__) && defined(__ELF__)
#define PSQE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PSQE_CLONES
#endif
#define PSQE_INLINE __attribute__((always_inline)) inline

template <typename T>
PSQE_INLINE T flushed(T v, T flush) {
  // hardshrink: NaN stays NaN (both comparisons are false).
  return (v >= -flush && v <= flush) ? T(0) : v;
}

template <typename T>
PSQE_INLINE void axpy(int64_t n, T a, const T* __restrict__ x, T* __restrict__ y) {
  for (int64_t q = 0; q < n; ++q) y[q] += a * x[q];
}

template <typename T>
PSQE_INLINE T dot(int64_t n, const T* __restrict__ x, const T* __restrict__ y) {
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t q = 0; q < n; ++q) sum += x[q] * y[q];
  return sum;
}

// row = sum_k acc[k] * scale[k] over h heads of d entries.
template <typename T>
PSQE_INLINE void combine(int64_t h, int64_t d, const T* __restrict__ acc, const T* __restrict__ scale,
                         T* __restrict__ row) {
  for (int64_t q = 0; q < d; ++q) row[q] = acc[q] * scale[q];
  for (int64_t k = 1; k < h; ++k) {
    const T* ak = acc + k * d;
    const T* sk = scale + k * d;
    for (int64_t q = 0; q < d; ++q) row[q] += ak[q] * sk[q];
  }
}

// A CSR (or CSC) walk: rows of `ptr`, entry t reads row `index[t]` of `in`
// with per-head weights weight[edge(t) * h + k] (edge(t) = t without `edge`).
template <typename T>
struct Walk {
  const int64_t* ptr;
  const int64_t* index;
  const int64_t* edge;
  const T* weight;
  const T* in;
  const T* scale;
  int64_t h, d;
};

// out[i] = sum_k scale[k] * sum_t weight[t, k] in[index[t]]; then plus
// low[i] @ low_weight ([r] x [r, d]) and the flush when asked.
template <typename T>
PSQE_INLINE void aggregate_rows(const Walk<T>& w, int64_t begin, int64_t end, T* acc, T* out,
                                const T* low, const T* low_weight, int64_t r, T flush) {
  const int64_t h = w.h, d = w.d;
  for (int64_t i = begin; i < end; ++i) {
    std::fill(acc, acc + h * d, T(0));
    for (int64_t t = w.ptr[i]; t < w.ptr[i + 1]; ++t) {
      const T* xr = w.in + w.index[t] * d;
      const T* a = w.weight + (w.edge ? w.edge[t] : t) * h;
      for (int64_t k = 0; k < h; ++k) axpy(d, a[k], xr, acc + k * d);
    }
    T* row = out + i * d;
    combine(h, d, acc, w.scale, row);
    for (int64_t m = 0; m < r; ++m) {
      const T v = low[i * r + m];
      if (v != T(0)) axpy(d, v, low_weight + m * d, row);
    }
    if (flush > T(0)) {
      for (int64_t q = 0; q < d; ++q) row[q] = flushed(row[q], flush);
    }
  }
}

// Backward over the destination rows [begin, end): g, grad_alpha, and the
// rows' grad_scale contribution added to `partial` ([h, d]).
template <typename T>
PSQE_INLINE void backward_rows(const Walk<T>& w, int64_t begin, int64_t end, const T* y,
                               const T* grad_out, bool elu, T flush, T* g, T* grad_alpha,
                               T* partial, T* qv, T* part) {
  const int64_t h = w.h, d = w.d;
  for (int64_t i = begin; i < end; ++i) {
    const T* gor = grad_out + i * d;
    T* gr = g + i * d;
    if (elu) {  // ELU'(z) from its output y: 1 for y > 0, y + 1 (= e^z) otherwise
      const T* yr = y + i * d;
      for (int64_t q = 0; q < d; ++q) gr[q] = flushed(yr[q] > T(0) ? gor[q] : gor[q] * (yr[q] + T(1)), flush);
    } else {
      for (int64_t q = 0; q < d; ++q) gr[q] = flushed(gor[q], flush);
    }
    for (int64_t k = 0; k < h; ++k) {
      const T* sk = w.scale + k * d;
      for (int64_t q = 0; q < d; ++q) qv[k * d + q] = gr[q] * sk[q];
    }
    std::fill(part, part + h * d, T(0));
    for (int64_t e = w.ptr[i]; e < w.ptr[i + 1]; ++e) {
      const T* xr = w.in + w.index[e] * d;
      for (int64_t k = 0; k < h; ++k) {
        grad_alpha[e * h + k] = dot(d, qv + k * d, xr);
        axpy(d, w.weight[e * h + k], xr, part + k * d);
      }
    }
    for (int64_t k = 0; k < h; ++k) {
      const T* pk = part + k * d;
      T* sk = partial + k * d;
      for (int64_t q = 0; q < d; ++q) sk[q] += gr[q] * pk[q];
    }
  }
}

#define PSQE_CLONED(T)                                                                             \
  PSQE_CLONES void cloned_aggregate_rows(const Walk<T>& w, int64_t b, int64_t e, T* acc, T* out,   \
                                           const T* low, const T* lw, int64_t r, T flush) {        \
    aggregate_rows<T>(w, b, e, acc, out, low, lw, r, flush);                                       \
  }                                                                                                \
  PSQE_CLONES void cloned_backward_rows(const Walk<T>& w, int64_t b, int64_t e, const T* y,        \
                                          const T* go, bool elu, T flush, T* g, T* ga, T* partial, \
                                          T* qv, T* part) {                                        \
    backward_rows<T>(w, b, e, y, go, elu, flush, g, ga, partial, qv, part);                        \
  }
// One overload per dtype, each cloned per ISA.
PSQE_CLONED(float)
PSQE_CLONED(double)
#undef PSQE_CLONED

template <typename T>
void forward_impl(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& alpha,
                  const at::Tensor& x, const at::Tensor& scale, at::Tensor& out) {
  const Walk<T> w{crow.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), nullptr,
                  alpha.const_data_ptr<T>(), x.const_data_ptr<T>(), scale.const_data_ptr<T>(),
                  alpha.size(1), x.size(1)};
  T* o = out.data_ptr<T>();
  at::parallel_for(0, crow.numel() - 1, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(w.h * w.d);
    cloned_aggregate_rows(w, begin, end, acc.data(), o, nullptr, nullptr, 0, T(0));
  });
}

template <typename T>
void backward_impl(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& alpha,
                   const at::Tensor& x, const at::Tensor& scale, const at::Tensor& out,
                   const at::Tensor& grad_out, bool elu, T flush, at::Tensor& g,
                   at::Tensor& grad_alpha, at::Tensor& grad_scale) {
  const Walk<T> w{crow.const_data_ptr<int64_t>(), col.const_data_ptr<int64_t>(), nullptr,
                  alpha.const_data_ptr<T>(), x.const_data_ptr<T>(), scale.const_data_ptr<T>(),
                  alpha.size(1), x.size(1)};
  const int64_t nd = crow.numel() - 1, hd = w.h * w.d;
  const T* y = out.const_data_ptr<T>();
  const T* go = grad_out.const_data_ptr<T>();
  T* gs = g.data_ptr<T>();
  T* ga = grad_alpha.data_ptr<T>();
  const int64_t chunks = std::min(kChunks, std::max<int64_t>(nd, 1));
  const int64_t per_chunk = (nd + chunks - 1) / chunks;
  std::vector<T> partial(chunks * hd, T(0));
  at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
    std::vector<T> qv(hd), part(hd);
    for (int64_t ch = cbegin; ch < cend; ++ch) {
      const int64_t rbegin = std::min(nd, ch * per_chunk), rend = std::min(nd, (ch + 1) * per_chunk);
      cloned_backward_rows(w, rbegin, rend, y, go, elu, flush, gs, ga, partial.data() + ch * hd,
                        qv.data(), part.data());
    }
  });
  T* out_scale = grad_scale.data_ptr<T>();
  std::fill(out_scale, out_scale + hd, T(0));
  for (int64_t ch = 0; ch < chunks; ++ch) {
    for (int64_t q = 0; q < hd; ++q) out_scale[q] += partial[ch * hd + q];
  }
}

template <typename T>
void backward_input_impl(const at::Tensor& src_ptr, const at::Tensor& dst, const at::Tensor& edge,
                         const at::Tensor& alpha, const at::Tensor& scale, const at::Tensor& g,
                         const at::Tensor* low_grad, const at::Tensor* low_weight, T flush,
                         at::Tensor& grad_x) {
  const Walk<T> w{src_ptr.const_data_ptr<int64_t>(), dst.const_data_ptr<int64_t>(),
                  edge.const_data_ptr<int64_t>(), alpha.const_data_ptr<T>(), g.const_data_ptr<T>(),
                  scale.const_data_ptr<T>(), alpha.size(1), g.size(1)};
  const int64_t r = low_grad ? low_grad->size(1) : 0;
  const T* lg = low_grad ? low_grad->const_data_ptr<T>() : nullptr;
  const T* lw = low_weight ? low_weight->const_data_ptr<T>() : nullptr;
  T* gx = grad_x.data_ptr<T>();
  at::parallel_for(0, src_ptr.numel() - 1, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(w.h * w.d);
    cloned_aggregate_rows(w, begin, end, acc.data(), gx, lg, lw, r, flush);
  });
}

at::Tensor gat_aggregate_cpu(const at::Tensor& crow, const at::Tensor& col,
                             const at::Tensor& alpha, const at::Tensor& x,
                             const at::Tensor& scale) {
  check_gat_aggregate_args(crow, col, alpha, x, scale, "gat_aggregate");
  const at::Tensor cr = crow.contiguous(), co = col.contiguous();
  check_structure(cr, co, x.size(0), "gat_aggregate", "crow", "col");
  at::Tensor out = at::empty({cr.numel() - 1, x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gat_aggregate_cpu", [&] {
    forward_impl<scalar_t>(cr, co, alpha.contiguous(), x.contiguous(), scale.contiguous(), out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gat_aggregate_backward_cpu(
    const at::Tensor& crow, const at::Tensor& col, const at::Tensor& alpha,
    const at::Tensor& x, const at::Tensor& scale, const at::Tensor& out,
    const at::Tensor& grad_out, bool elu, double flush) {
  const char* op = "gat_aggregate_backward";
  check_gat_aggregate_args(crow, col, alpha, x, scale, op);
  const int64_t nd = crow.numel() - 1;
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{out, "out"},
                                {grad_out, "grad_out"}}) {
    if (!elu && &t == &out) {
      continue;  // only read with elu
    }
    TORCH_CHECK(t.dim() == 2 && t.size(0) == nd && t.size(1) == x.size(1), op, ": ", name,
                " must be [num_dst, d] = [", nd, ", ", x.size(1), "], got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), op, ": ", name,
                " must be ", x.scalar_type(), " on ", x.device());
  }
  TORCH_CHECK(flush >= 0, op, ": flush must be >= 0, got ", flush);
  const at::Tensor cr = crow.contiguous(), co = col.contiguous();
  check_structure(cr, co, x.size(0), op, "crow", "col");
  at::Tensor g = at::empty({nd, x.size(1)}, x.options());
  at::Tensor grad_alpha = at::empty_like(alpha, at::MemoryFormat::Contiguous);
  at::Tensor grad_scale = at::empty_like(scale, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gat_aggregate_backward_cpu", [&] {
    backward_impl<scalar_t>(cr, co, alpha.contiguous(), x.contiguous(), scale.contiguous(),
                            out.contiguous(), grad_out.contiguous(), elu,
                            static_cast<scalar_t>(flush), g, grad_alpha, grad_scale);
  });
  return {g, grad_alpha, grad_scale};
}

at::Tensor gat_aggregate_backward_input_cpu(const at::Tensor& src_ptr, const at::Tensor& dst,
                                            const at::Tensor& edge, const at::Tensor& alpha,
                                            const at::Tensor& scale, const at::Tensor& g,
                                            const std::optional<at::Tensor>& low_grad,
                                            const std::optional<at::Tensor>& low_weight,
                                            double flush) {
  const char* op = "gat_aggregate_backward_input";
  check_gat_aggregate_backward_input_args(src_ptr, dst, edge, alpha, scale, g, low_grad, low_weight);
  TORCH_CHECK(flush >= 0, op, ": flush must be >= 0, got ", flush);
  const at::Tensor sp = src_ptr.contiguous(), ds = dst.contiguous(), ed = edge.contiguous();
  check_structure(sp, ds, g.size(0), op, "src_ptr", "dst");
  check_structure(sp, ed, alpha.size(0), op, "src_ptr", "edge");
  at::Tensor grad_x = at::empty({sp.numel() - 1, g.size(1)}, g.options());
  const at::Tensor lg = low_grad ? low_grad->contiguous() : at::Tensor();
  const at::Tensor lw = low_weight ? low_weight->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "gat_aggregate_backward_input_cpu", [&] {
    backward_input_impl<scalar_t>(sp, ds, ed, alpha.contiguous(), scale.contiguous(),
                                  g.contiguous(), low_grad ? &lg : nullptr,
                                  low_weight ? &lw : nullptr, static_cast<scalar_t>(flush),
                                  grad_x);
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(psqe, CPU, m) {
  m.impl("gat_aggregate", &gat_aggregate_cpu);
  m.impl("gat_aggregate_backward", &gat_aggregate_backward_cpu);
  m.impl("gat_aggregate_backward_input", &gat_aggregate_backward_input_cpu);
}

}  // namespace psqe
