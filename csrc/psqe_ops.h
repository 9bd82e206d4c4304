// psqe compiled core: shapes and semantics of every op, stated once.
//
// All ops live in the `psqe` namespace of the PyTorch dispatcher
// (TORCH_LIBRARY_FRAGMENT in csrc/ops/<op>.cpp, kernels per device in
// csrc/ops/{cpu,cuda}/). Argument checks shared by every device are declared
// here and defined next to each schema, so CPU and CUDA reject the same input
// with the same message.
//
// ---------------------------------------------------------------------------
// topk_similarity(Tensor a, Tensor b, int k, Tensor? exclude=None)
//     -> (Tensor values, Tensor indices)
//   a [n, d], b [m, d]: float16 / bfloat16 / float32 / float64, same dtype and
//   device, finite. For every row i of a: the kk = min(k, m) largest values of
//   the row a[i] @ b^T, sorted descending, ties broken by the smaller column
//   index. values: float32 (float64 when the inputs are float64; half inputs
//   accumulate in float32). indices: int64 column numbers into b.
//   exclude: optional bool [m]; columns where it is true are never returned.
//   When fewer than kk columns remain, the tail of the row is padded with
//   value -inf and index -1 (the output shape never depends on the data).
//   1 <= k <= kMaxTopK. Memory beyond inputs and outputs is one GEMM tile
//   (rows x columns of a fixed budget) plus the running k candidates of the
//   rows in flight (at most the output's size), never n x m. Products that
//   overflow to inf/NaN although the inputs are finite are outside this
//   contract (devices may order them differently). On CPU, float32 inputs
//   may be screened in bfloat16 first (csrc/ops/cpu/topk_screen.h): the
//   result is still the float32 one, rows the screen cannot certify being
//   recomputed in float32.
//
// topk_similarity_both(Tensor a, Tensor b, int k)
//     -> (Tensor row_values, Tensor row_indices, Tensor col_values,
//         Tensor col_indices)
//   Both directions of one similarity S = a @ b^T from a single pass over
//   its tiles: row_* [n, min(k, m)] are topk_similarity(a, b, k); col_*
//   [m, min(k, n)] hold, for every column j of S (row j of b), the min(k, n)
//   largest S[i, j] sorted descending, ties broken by the smaller row i, with
//   their row indices i. Same inputs and checks as topk_similarity (no
//   exclude: pass the free rows of a and b). Extra memory: one tile plus the
//   running k candidates of every column (m x k). CPU kernel only.
//
// greedy_match(Tensor scores, Tensor rows, Tensor cols, int? limit=None,
//              Tensor? used_rows=None, Tensor? used_cols=None) -> Tensor
//   scores [c] floating and finite, rows [c] / cols [c] int64 >= 0.
//   Walk the candidates in the strict order (score desc, row asc, col asc,
//   position asc) and keep a candidate when neither its row nor its column is
//   used yet; stop after `limit` kept candidates (no limit: walk them all).
//   used_rows / used_cols: optional int64 lists of rows / columns that count
//   as used from the start. Returns int64 [S]: positions into the candidate
//   arrays of the kept candidates, in selection order. Every device returns
//   exactly the same tensor.
//
// mic_keep(Tensor left, Tensor right, bool both_directions=False) -> Tensor
//   left [s, d], right [s, d], same dtype/device, finite; pair k is
//   (left[k], right[k]). keep[k] is true when <left[k], right[k]> is the
//   maximum of row k of left @ right^T (a tie with another column keeps the
//   pair: the paper drops a seed only when M_kk != max_l M_kl); with
//   both_directions also the maximum of column k. Modality weights are
//   applied by the caller by scaling the features (see psqe.ops.mic_keep).
//   Tiled like topk_similarity: no s x s matrix.
//
// gat_aggregate(Tensor crow, Tensor col, Tensor alpha, Tensor x, Tensor scale)
//     -> Tensor out
//   One diag-weight graph-attention aggregation (psqe/seeds/stage2_model.py)
//   over a CSR graph: crow int64 [nd + 1], col int64 [E] (sources in
//   [0, ns)), alpha [E, H] per-edge per-head coefficients, x [ns, d],
//   scale [H, d]; float32 or float64, one dtype. For destination i:
//     out[i] = sum_k scale[k] * sum_{e in row i} alpha[e, k] x[col[e]]
//   out [nd, d].
//
// gat_aggregate_backward(crow, col, alpha, x, scale, Tensor out,
//                        Tensor grad_out, bool elu, float flush)
//     -> (Tensor g, Tensor grad_alpha, Tensor grad_scale)
//   With elu, the layer's output is y = ELU(out) (alpha 1), `out` holds y
//   and grad_out is the gradient of y; without, `out` is not read.
//   g = h(grad_out * act') [nd, d], the gradient of the aggregation, where
//   act' = 1 for y > 0 and y + 1 (= e^z) otherwise (as torch's in-place ELU
//   takes it from its output; 1 without elu), and h zeroes entries of
//   magnitude <= flush (hardshrink; NaN stays NaN).
//   grad_alpha[e, k] = <g[i] * scale[k], x[col[e]]> for e in row i;
//   grad_scale[k] = sum_i g[i] * sum_{e in row i} alpha[e, k] x[col[e]].
//   grad_scale is summed over a fixed row partition: the result does not
//   depend on the thread count.
//
// gat_aggregate_backward_input(Tensor src_ptr, Tensor dst, Tensor edge,
//     Tensor alpha, Tensor scale, Tensor g, Tensor? low_grad=None,
//     Tensor? low_weight=None, float flush=0.0) -> Tensor grad_x
//   The same graph by source (CSC): src_ptr [ns + 1]; dst [E] and edge [E]
//   the destination and the CSR position of each edge, sorted by source.
//   grad_x[j] = h(sum_{e: col[e] = j} g[dst(e)] * sum_k alpha[e, k] scale[k]
//                 + low_grad[j] @ low_weight)
//   with h as above; low_grad [ns, r] and low_weight [r, d] add a low-rank
//   term (the attention scores' own gradient). grad_x [ns, d]. CPU kernels
//   only: on CUDA psqe runs these three through torch sparse ops.
// ---------------------------------------------------------------------------
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace psqe {

// Largest k accepted by topk_similarity on every device. The CUDA selection
// keeps a row's k candidates in shared memory; 2048 64-bit keys is 16 KiB.
constexpr int64_t kMaxTopK = 2048;

// Shared argument checks (defined in csrc/ops/<op>.cpp). They throw
// c10::Error through TORCH_CHECK with the offending sizes in the message.
void check_topk_similarity_args(const at::Tensor& a, const at::Tensor& b,
                                int64_t k,
                                const std::optional<at::Tensor>& exclude);

// Returns {max row index, max column index} over candidates and the pre-used
// lists (-1 when there are none), so kernels can size their "used" arrays.
std::pair<int64_t, int64_t> check_greedy_match_args(
    const at::Tensor& scores, const at::Tensor& rows, const at::Tensor& cols,
    std::optional<int64_t> limit, const std::optional<at::Tensor>& used_rows,
    const std::optional<at::Tensor>& used_cols);

void check_mic_keep_args(const at::Tensor& left, const at::Tensor& right);

void check_gat_aggregate_args(const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& alpha, const at::Tensor& x,
                              const at::Tensor& scale, const char* op);
void check_gat_aggregate_backward_input_args(const at::Tensor& src_ptr, const at::Tensor& dst,
                                             const at::Tensor& edge, const at::Tensor& alpha,
                                             const at::Tensor& scale, const at::Tensor& g,
                                             const std::optional<at::Tensor>& low_grad,
                                             const std::optional<at::Tensor>& low_weight);

// Raises when `t` holds NaN or +-inf, naming `what` and the first bad index.
void check_all_finite(const at::Tensor& t, const char* what);

// dtype the similarities are accumulated and returned in.
inline at::ScalarType accumulate_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace psqe
