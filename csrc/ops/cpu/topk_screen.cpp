// The bfloat16-screened top-k of float32 inputs (what and why: topk_screen.h).
#include "topk_screen.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "bf16_gemm.h"
#include "tiling.h"
#include "topk_select.h"

namespace psqe {
namespace cpu {
namespace {

std::atomic<int64_t> g_screened{0};
std::atomic<int64_t> g_recomputed{0};
std::atomic<int64_t> g_abandoned{0};

enum class Mode { kAuto, kOn, kOff };

Mode mode() {
  const char* env = std::getenv("PSQE_TOPK_SCREEN");
  const std::string v = env == nullptr ? "" : env;
  if (v.empty() || v == "auto") {
    return Mode::kAuto;
  }
  if (v == "on" || v == "1") {
    return Mode::kOn;
  }
  if (v == "off" || v == "0") {
    return Mode::kOff;
  }
  TORCH_CHECK(false, "environment variable PSQE_TOPK_SCREEN must be auto, on or off (or 1 / 0), got '", v, "'");
}

// Screened candidates kept per row: kk + max(kk, 32). On unit rows drawn at
// random (the hardest case: no structure, values packed near the top) at
// 15k x 15k x 1024, k = 10, 13 of 15000 rows then fail the certificate; with
// kk + 16, 3423.
int64_t screen_width(int64_t kk, int64_t m) {
  return std::min(m, kk + std::max<int64_t>(kk, 32));
}

// Per row of a contiguous float [rows, d], summed in double: the norm of the
// row x, of its bfloat16 rounding x' and of the rounding error x - x' (exact
// in float32).
struct RowNorms {
  std::vector<double> full, rounded, error;
  double max_full = 0.0, max_rounded = 0.0, max_error = 0.0;
};

RowNorms row_norms(const at::Tensor& x) {
  const int64_t rows = x.size(0), d = x.size(1);
  const float* p = x.const_data_ptr<float>();
  RowNorms out;
  out.full.resize(rows);
  out.rounded.resize(rows);
  out.error.resize(rows);
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double s = 0.0, s_r = 0.0, s_e = 0.0;
      for (int64_t t = 0; t < d; ++t) {
        const float v = p[i * d + t];
        const float r = static_cast<float>(at::BFloat16(v));
        const float e = v - r;
        s += static_cast<double>(v) * v;
        s_r += static_cast<double>(r) * r;
        s_e += static_cast<double>(e) * e;
      }
      out.full[i] = std::sqrt(s);
      out.rounded[i] = std::sqrt(s_r);
      out.error[i] = std::sqrt(s_e);
    }
  });
  for (int64_t i = 0; i < rows; ++i) {
    out.max_full = std::max(out.max_full, out.full[i]);
    out.max_rounded = std::max(out.max_rounded, out.rounded[i]);
    out.max_error = std::max(out.max_error, out.error[i]);
  }
  return out;
}

// float32 dot product, 16 partial sums (vectorisable without -ffast-math).
float dot(const float* x, const float* y, int64_t d) {
  float acc[16] = {0.0f};
  int64_t t = 0;
  for (; t + 16 <= d; t += 16) {
    for (int u = 0; u < 16; ++u) {
      acc[u] += x[t + u] * y[t + u];
    }
  }
  for (; t < d; ++t) {
    acc[0] += x[t] * y[t];
  }
  float s = 0.0f;
  for (float v : acc) {
    s += v;
  }
  return s;
}

}  // namespace

bool screen_applies(const at::Tensor& a, const at::Tensor& b, int64_t kk, int64_t kc) {
  if (a.scalar_type() != at::kFloat || b.scalar_type() != at::kFloat) {
    return false;
  }
  const Mode m = mode();
  const int64_t d = a.size(1);
  if (m == Mode::kOff || d == 0 || std::max({a.size(0), b.size(0), d}) > INT_MAX || !bf16_gemm_available()) {
    return false;
  }
  const bool narrow = screen_width(kk, b.size(0)) * 8 <= b.size(0) &&
                      (kc == 0 || screen_width(kc, a.size(0)) * 8 <= a.size(0));
  return m == Mode::kOn || (d >= 128 && narrow && native_bf16());
}

namespace {

using Cand = Candidate<float>;

// What the screen of one call shares: contiguous float32 inputs, their norms,
// the bfloat16 copy of b and the error bound.
struct Screen {
  at::Tensor a, b, b16;
  RowNorms an, bn;
  int64_t n, m, d;
  double gamma = 0.0;
  bool bounded = false;

  Screen(const at::Tensor& a_in, const at::Tensor& b_in)
      : a(a_in.contiguous()), b(b_in.contiguous()), an(row_norms(a)), bn(row_norms(b)),
        n(a.size(0)), m(b.size(0)), d(a.size(1)) {
    const double g = static_cast<double>(d) * std::ldexp(1.0, -24);
    // Without a useful bound (huge norms, d near 2^23) or with entries that
    // could round up to bfloat16's inf, every row goes the float32 way.
    bounded = g < 0.5 && an.max_full * bn.max_full < 1e36 && an.max_full < 1e37 && bn.max_full < 1e37;
    gamma = g / (1.0 - g);
    if (bounded) {
      b16 = b.to(at::kBFloat16);
    }
  }

  // Error bound of row i of x against any row of y (topk_screen.h):
  // x.y - x'.y' = x'.dy + dx.y' + dx.dy (Cauchy-Schwarz on each), plus float32
  // summation of the screened products and of the rescored dot; 1% over for
  // the norms' own rounding.
  // The last term covers the GEMM's bfloat16 instructions flushing subnormal
  // operands and products (below 2^-126) to zero.
  double bound(const RowNorms& x, int64_t i, const RowNorms& y) const {
    const double rounding = x.rounded[i] * y.max_error + x.error[i] * y.max_rounded + x.error[i] * y.max_error;
    const double summation = gamma * (x.rounded[i] * y.max_rounded + x.full[i] * y.max_full);
    const double flushed = static_cast<double>(d) * std::ldexp(1.0, -126) * (x.full[i] + y.max_full + 1.0);
    return 1.01 * (rounding + summation + flushed);
  }

  // Set by a caller's `done` once too many rows fail: the remaining tiles
  // are skipped (no GEMM, no selection); `done` still runs for every block.
  bool abandoned = false;

  // The tile loop over bfloat16 products: a's row block converted once.
  template <typename TileFn, typename DoneFn>
  void tiles(TileFn&& fn, DoneFn&& done) {
    at::Tensor a16;
    int64_t a_row0 = -1;
    const at::BFloat16* bp = b16.const_data_ptr<at::BFloat16>();
    for_each_tile(
        n, m, a.options(),
        [&](at::Tensor& tile, int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
          if (abandoned) {
            return;
          }
          if (r0 != a_row0) {
            a16 = a.narrow(0, r0, rows).to(at::kBFloat16);
            a_row0 = r0;
          }
          gemm_bf16(a16.const_data_ptr<at::BFloat16>(), bp + c0 * d, tile.data_ptr<float>(), rows, cols, d);
        },
        [&](const at::Tensor& tile, int64_t r0, int64_t c0) {
          if (!abandoned) {
            fn(tile, r0, c0);
          }
        },
        done);
  }
};

// More than a quarter of the rows screened so far failed their certificate:
// the values are packed closer than bfloat16 can separate (e.g. embeddings
// that a graph layer has averaged together), and the float32 path is faster.
bool crowded(int64_t screened, int64_t failed) {
  return failed * 4 > screened;
}

// Certify and rescore one screened heap of `size` <= kc candidates (indices
// into the rows `ys` [*, d]) of the item `x` [d]; writes the kk best rescored
// (value desc, index asc, padded) to out_v / out_i. `complete`: every
// candidate the item has is in the heap. False (nothing written) when the
// certificate fails. Reorders the heap.
bool resolve(Cand* heap, int64_t size, int64_t kk, bool complete, double eps, const float* x,
             const float* ys, int64_t d, std::vector<Cand>& pool, float* out_v, int64_t* out_i) {
  // Every unkept candidate scored <= the worst kept one (the heap's top).
  const double worst = size > 0 ? heap[0].value : -std::numeric_limits<double>::infinity();
  double floor = -std::numeric_limits<double>::infinity();
  if (size >= kk) {
    std::nth_element(heap, heap + kk - 1, heap + size, [](const Cand& p, const Cand& q) { return p.value > q.value; });
    const double kth = heap[kk - 1].value;
    if (!complete && !(worst + eps < kth - eps)) {
      return false;
    }
    floor = kth - 2.0 * eps;  // below it, beaten by the kk screened best
  }
  pool.clear();
  for (int64_t t = 0; t < size; ++t) {
    if (heap[t].value >= floor) {
      pool.push_back(Cand{dot(x, ys + heap[t].index * d, d), heap[t].index});
    }
  }
  const int64_t keep = std::min<int64_t>(kk, pool.size());
  std::partial_sort(pool.begin(), pool.begin() + keep, pool.end(), [](const Cand& p, const Cand& q) { return better(p, q); });
  for (int64_t j = 0; j < kk; ++j) {
    out_v[j] = j < keep ? pool[j].value : -std::numeric_limits<float>::infinity();
    out_i[j] = j < keep ? pool[j].index : -1;
  }
  return true;
}

std::vector<int64_t> all_rows(int64_t n) {
  std::vector<int64_t> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = i;
  return out;
}

// Resolves rows [0, rows) of `sel` (item r is row r0 + r of x against ys) into
// out_v / out_i ([*, kk]) and appends the uncertified items to `failed`; resets the heaps.
void resolve_block(HeapSet<float>& sel, int64_t r0, int64_t rows, int64_t kk, int64_t total,
                   const Screen& sc, const RowNorms& xn, const RowNorms& yn, const float* xs, const float* ys,
                   float* out_v, int64_t* out_i, std::vector<int64_t>& failed) {
  std::vector<char> bad(rows, 0);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<Cand> pool;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r0 + r, size = sel.sizes[r];
      sel.sizes[r] = 0;
      const bool complete = size < sel.kk || sel.kk == total;
      bad[r] = !resolve(sel.heaps.data() + r * sel.kk, size, kk, complete, sc.bound(xn, i, yn), xs + i * sc.d, ys,
                        sc.d, pool, out_v + i * kk, out_i + i * kk);
    }
  });
  for (int64_t r = 0; r < rows; ++r) {
    if (bad[r]) failed.push_back(r0 + r);
  }
}

}  // namespace

std::vector<int64_t> topk_screened(const at::Tensor& a_in, const at::Tensor& b_in, int64_t kk,
                                   const bool* excluded, at::Tensor& values, at::Tensor& indices) {
  Screen sc(a_in, b_in);
  if (!sc.bounded) {
    g_abandoned += 1;
    return all_rows(sc.n);
  }
  RowSelector<float> sel(std::min(sc.n, kRowTile), screen_width(kk, sc.m));
  std::vector<int64_t> failed;
  int64_t screened = 0, recomputed = 0;
  float* out_v = values.data_ptr<float>();
  int64_t* out_i = indices.data_ptr<int64_t>();
  sc.tiles([&](const at::Tensor& tile, int64_t /*r0*/, int64_t c0) { sel.on_tile(tile, c0, excluded); },
           [&](int64_t r0, int64_t rows) {
             if (sc.abandoned) {  // the rest of the rows the float32 way
               for (int64_t r = 0; r < rows; ++r) failed.push_back(r0 + r);
               return;
             }
             resolve_block(sel, r0, rows, kk, sc.m, sc, sc.an, sc.bn, sc.a.const_data_ptr<float>(),
                           sc.b.const_data_ptr<float>(), out_v, out_i, failed);
             screened += rows;
             recomputed = static_cast<int64_t>(failed.size());
             sc.abandoned = crowded(screened, recomputed);
           });
  g_screened += screened;
  g_recomputed += recomputed;
  g_abandoned += sc.abandoned;
  return failed;
}

ScreenFailures topk_screened_both(const at::Tensor& a_in, const at::Tensor& b_in, int64_t kr, int64_t kc,
                                  at::Tensor& row_values, at::Tensor& row_indices, at::Tensor& col_values,
                                  at::Tensor& col_indices) {
  Screen sc(a_in, b_in);
  ScreenFailures failed;
  if (!sc.bounded) {
    g_abandoned += 1;
    failed.abandoned = true;
    return failed;
  }
  RowSelector<float> rows(std::min(sc.n, kRowTile), screen_width(kr, sc.m));
  ColSelector<float> cols(sc.m, screen_width(kc, sc.n));
  const float* a32 = sc.a.const_data_ptr<float>();
  const float* b32 = sc.b.const_data_ptr<float>();
  int64_t screened = 0;
  sc.tiles(
      [&](const at::Tensor& tile, int64_t r0, int64_t c0) {
        rows.on_tile(tile, c0, nullptr);
        cols.on_tile(tile, r0, c0);
      },
      [&](int64_t r0, int64_t count) {
        if (sc.abandoned) {
          return;
        }
        resolve_block(rows, r0, count, kr, sc.m, sc, sc.an, sc.bn, a32, b32, row_values.data_ptr<float>(),
                      row_indices.data_ptr<int64_t>(), failed.rows);
        screened += count;
        sc.abandoned = crowded(screened, static_cast<int64_t>(failed.rows.size()));
      });
  if (sc.abandoned) {  // the caller reruns both directions the float32 way
    g_screened += screened;
    g_recomputed += screened;
    g_abandoned += 1;
    failed.abandoned = true;
    return failed;
  }
  resolve_block(cols, 0, sc.m, kc, sc.n, sc, sc.bn, sc.an, b32, a32, col_values.data_ptr<float>(),
                col_indices.data_ptr<int64_t>(), failed.cols);
  g_screened += sc.n + sc.m;
  g_recomputed += static_cast<int64_t>(failed.rows.size() + failed.cols.size());
  return failed;
}

std::array<int64_t, 3> screen_stats() {
  return {g_screened.load(), g_recomputed.load(), g_abandoned.load()};
}

namespace {

std::vector<int64_t> screen_stats_op() {
  const auto s = screen_stats();
  return {s[0], s[1], s[2]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(psqe, m) {
  // [rows (and columns) screened in bfloat16, those of them recomputed in float32,
  //  calls that gave up screening] since load (tests, benchmarks).
  m.def("_topk_screen_stats() -> int[]", &screen_stats_op);
}

}  // namespace cpu
}  // namespace psqe
