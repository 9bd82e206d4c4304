// CPU kernel of psqe::greedy_match (semantics in csrc/psqe_ops.h).
//
// Sort once, scan once. The authors' script walks a Python list with O(n)
// membership tests; here the order comes from a stable LSD radix sort on an
// order-preserving integer image of the score (three 11-bit passes for
// float32), ties of equal score are then ordered by (row, col) inside their
// run, and the walk keeps two byte arrays of used rows / columns.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../../psqe_ops.h"

namespace psqe {
namespace {

// Unsigned key whose ascending order is the *descending* order of the score;
// -0.0 and +0.0 map to the same key.
template <typename F, typename U>
inline U descending_key(F value) {
  value = value + F(0);  // -0.0 + 0.0 == +0.0
  U bits;
  std::memcpy(&bits, &value, sizeof(U));
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  const U ascending = (bits & sign) ? ~bits : (bits | sign);
  return ~ascending;
}

// Stable LSD radix sort of packed items (key << 32 | position) by their high
// 32 bits: three 11-bit passes whose histograms are counted in one read; a
// pass whose digit is the same for every item is skipped. Packing the
// position with the key moves one 8-byte word per item and pass.
void radix_sort_high32(std::vector<uint64_t>& items) {
  constexpr int kBits = 11;
  constexpr size_t kBuckets = size_t(1) << kBits;
  constexpr int kPasses = 3;
  const size_t c = items.size();
  std::vector<size_t> count(kPasses * kBuckets, 0);
  for (const uint64_t x : items) {
    for (int p = 0; p < kPasses; ++p) {
      ++count[p * kBuckets + ((x >> (32 + p * kBits)) & (kBuckets - 1))];
    }
  }
  std::vector<uint64_t> tmp(c);
  for (int p = 0; p < kPasses; ++p) {
    size_t* cnt = count.data() + p * kBuckets;
    if (std::find(cnt, cnt + kBuckets, c) != cnt + kBuckets) {
      continue;
    }
    size_t sum = 0;
    for (size_t b = 0; b < kBuckets; ++b) {
      const size_t here = cnt[b];
      cnt[b] = sum;
      sum += here;
    }
    const int shift = 32 + p * kBits;
    for (const uint64_t x : items) {
      tmp[cnt[(x >> shift) & (kBuckets - 1)]++] = x;
    }
    items.swap(tmp);
  }
}

// Orders the positions [lo, hi) of one run of equal scores by (row, col,
// position). std::sort: runs are short and many (10M float32 scores hold
// hundreds of thousands of repeats), and stable_sort would allocate per run.
void order_tie_run(std::vector<int32_t>& order, size_t lo, size_t hi,
                   const int64_t* rows, const int64_t* cols) {
  std::sort(order.begin() + lo, order.begin() + hi, [&](int32_t x, int32_t y) {
    if (rows[x] != rows[y]) {
      return rows[x] < rows[y];
    }
    return cols[x] < cols[y] || (cols[x] == cols[y] && x < y);
  });
}

// Candidate positions in the strict walk order: score desc, row asc, col asc,
// position asc. float32 (and half, widened exactly) take the radix path.
std::vector<int32_t> walk_order(const float* scores, const int64_t* rows,
                                const int64_t* cols, size_t c) {
  std::vector<uint64_t> items(c);
  at::parallel_for(0, c, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      items[i] = (uint64_t(descending_key<float, uint32_t>(scores[i])) << 32) | uint64_t(i);
    }
  });
  radix_sort_high32(items);
  std::vector<int32_t> order(c);
  for (size_t t = 0; t < c; ++t) {
    order[t] = static_cast<int32_t>(items[t] & 0xffffffffu);
  }
  for (size_t lo = 0; lo < c;) {
    size_t hi = lo + 1;
    while (hi < c && (items[hi] >> 32) == (items[lo] >> 32)) {
      ++hi;
    }
    if (hi - lo > 1) {
      order_tie_run(order, lo, hi, rows, cols);
    }
    lo = hi;
  }
  return order;
}

// float64 scores: a comparison sort (rare in practice; correctness first).
std::vector<int32_t> walk_order(const double* scores, const int64_t* rows,
                                const int64_t* cols, size_t c) {
  std::vector<int32_t> order(c);
  for (size_t i = 0; i < c; ++i) {
    order[i] = static_cast<int32_t>(i);
  }
  std::sort(order.begin(), order.end(), [&](int32_t x, int32_t y) {
    const double sx = scores[x] + 0.0, sy = scores[y] + 0.0;
    if (sx != sy) {
      return sx > sy;
    }
    if (rows[x] != rows[y]) {
      return rows[x] < rows[y];
    }
    return cols[x] < cols[y] || (cols[x] == cols[y] && x < y);
  });
  return order;
}

void mark_used(std::vector<uint8_t>& used, const std::optional<at::Tensor>& list) {
  if (!list.has_value()) {
    return;
  }
  const at::Tensor l = list->contiguous();
  const int64_t* p = l.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < l.numel(); ++i) {
    used[p[i]] = 1;
  }
}

at::Tensor greedy_match_cpu(const at::Tensor& scores, const at::Tensor& rows,
                            const at::Tensor& cols, std::optional<int64_t> limit,
                            const std::optional<at::Tensor>& used_rows,
                            const std::optional<at::Tensor>& used_cols) {
  const auto [max_row, max_col] =
      check_greedy_match_args(scores, rows, cols, limit, used_rows, used_cols);
  const size_t c = static_cast<size_t>(scores.size(0));
  const int64_t want = limit.value_or(static_cast<int64_t>(c));
  if (c == 0 || want == 0) {
    return at::empty({0}, rows.options());
  }
  const at::Tensor r = rows.contiguous();
  const at::Tensor k = cols.contiguous();
  const int64_t* rp = r.const_data_ptr<int64_t>();
  const int64_t* kp = k.const_data_ptr<int64_t>();

  std::vector<int32_t> order;
  if (scores.scalar_type() == at::kDouble) {
    const at::Tensor s = scores.contiguous();
    order = walk_order(s.const_data_ptr<double>(), rp, kp, c);
  } else {
    // float16 / bfloat16 widen to float32 exactly.
    const at::Tensor s = scores.to(at::kFloat).contiguous();
    order = walk_order(s.const_data_ptr<float>(), rp, kp, c);
  }

  std::vector<uint8_t> row_used(max_row + 1, 0);
  std::vector<uint8_t> col_used(max_col + 1, 0);
  mark_used(row_used, used_rows);
  mark_used(col_used, used_cols);
  std::vector<int64_t> kept;
  kept.reserve(static_cast<size_t>(std::min<int64_t>(want, 1 << 20)));
  constexpr size_t kAhead = 32;  // prefetch distance: rows/cols are read at random
  for (size_t t = 0; t < c && static_cast<int64_t>(kept.size()) < want; ++t) {
    if (t + kAhead < c) {
      __builtin_prefetch(rp + order[t + kAhead]);
      __builtin_prefetch(kp + order[t + kAhead]);
    }
    const int32_t pos = order[t];
    const int64_t i = rp[pos];
    const int64_t j = kp[pos];
    if (row_used[i] || col_used[j]) {
      continue;
    }
    row_used[i] = 1;
    col_used[j] = 1;
    kept.push_back(pos);
  }
  at::Tensor out = at::empty({static_cast<int64_t>(kept.size())}, rows.options());
  std::copy(kept.begin(), kept.end(), out.data_ptr<int64_t>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(psqe, CPU, m) {
  m.impl("greedy_match", &greedy_match_cpu);
}

}  // namespace psqe
