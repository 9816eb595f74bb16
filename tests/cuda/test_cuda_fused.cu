// The fused and bf16-activation forms of the kernels against their plain forms, and the backend's
// GEMM plan cache and profiler.
//
// In bf16 mode the model keeps the tensors only GEMMs read (norm outputs, attention context, MLP
// activations) in bf16, written so by the kernels that make them. Each such kernel must write
// exactly cast_to_bf16 of what its fp32 form writes — the same fp32 value, rounded to nearest
// even — at a padded leading dimension where the width is not a multiple of 8, leaving the padding
// untouched. So every check here is BIT FOR BIT (no tolerance): a differing element is a bug.
//   rmsnorm / layernorm forward   y in bf16 == round(y fp32); stats identical
//   activation forward (ReLU, SiLU), swiglu forward, attention forward (context), gather_rows
//   attention with bf16 qkv, d(out), d(qkv) == the fp32 kernels on the widened inputs, outputs
//                                   rounded (with and without fused RoPE)
//   gemm_rm with a bf16 operand  == gemm_rm with the fp32 operand it rounds (bf16 mode), both
//                                   operand positions, transposed or not, padded leading dimension
//   gemm plan cache              a repeated GEMM (plan from the cache) == the first; problems that
//                                   differ in one key field (C alignment, ldc, exact rows within a
//                                   size class, bias epilogue), interleaved on one backend, give
//                                   the bits a fresh backend gives each
// Fusions that must keep the bits of the unfused ops they replace:
//   rmsnorm / layernorm backward with accumulate == overwrite into scratch, then add_into (dx),
//                                   and the same parameter gradients; with a bf16 dy == the fp32
//                                   call on the widened dy
//   column_sum_add_cast          sums == column_sum_add's; copy == cast_to_bf16's, padding
//   untouched
//   activation_backward_sum_cast == activation_backward then column_sum_add_cast (ReLU, SiLU);
//                                   its bf16-input form, and activation_forward's, == the fp32
//                                   forms on the widened inputs
//   gemm_rm_bf16_out             == cast_to_bf16(gemm_rm's fp32 C) bit for bit where the bias is
//                                   not fused (fallback); within one bf16 unit where cuBLASLt's
//                                   epilogue rounds (another algorithm may sum in another order)
//   dropout_backward_sum_cast    == dropout_backward (row map) then column_sum_add_cast
//   dropout_add_rmsnorm / _layernorm == dropout_add then the norm's forward (out, y, stats); with
//                                   a bf16 branch == the fp32 ops on the widened branch
//   gemm autotuning              within fp32 rounding of the default plan (bit for bit on the
//                                   emulator); its cached plan repeats; it ran
//   loss softmax over a bf16 Z   == the fp32 kernel over the widened Z (log-probabilities, and
//                                   G in place vs into its own bf16 buffer, pad columns zero)
//   fork (dW overlap)            work on the side stream gives the same bits, with its own
//                                   workspace; no block freed while forked is reused before the
//                                   join; a nested fork is refused; a throw still joins
//   profiler                     ranges are timed (> 0 ms, one total per name, in order),
//   a nested
//                                range is refused, and profiling off records nothing
// Shapes: odd widths (37, 172: bf16 rows padded to 40 and 176) and the study's (D 1024, F 4096).
// Prints PASS/FAIL lines and a summary; exits 0 iff all pass, 77 (ctest: skipped) without a GPU.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_check.cuh"
#include "seqrec/backend/cuda.cuh"
#include "seqrec/backend/gemm_cuda.cuh"
#include "seqrec/core/error.hpp"
#include "seqrec/core/random.hpp"
#include "seqrec/ops/activation/swiglu_cuda.cuh"
#include "seqrec/ops/attention/attention_cpu.hpp"
#include "seqrec/ops/attention/attention_cuda.cuh"
#include "seqrec/ops/cross_entropy/cross_entropy_cuda.cuh"
#include "seqrec/ops/dropout/dropout_cuda.cuh"
#include "seqrec/ops/dropout/residual_norm_cuda.cuh"
#include "seqrec/ops/elementwise/elementwise_cuda.cuh"
#include "seqrec/ops/elementwise/rows_cuda.cuh"
#include "seqrec/ops/layernorm/layernorm_cuda.cuh"
#include "seqrec/ops/rmsnorm/rmsnorm_cuda.cuh"

namespace {

using namespace seqrec::cuda_check;
using seqrec::cuda::bf16_ld;
using bf16 = __nv_bfloat16;

/// Sentinel bits for the padding columns of a bf16 buffer: a kernel must not write them.
constexpr std::uint16_t kPadBits = 0x7fc1;  // a NaN no rounding produces

/// A (rows, ld) bf16 device buffer whose every element holds the sentinel.
DeviceBuffer<bf16> sentinel_buffer(Backend& be, std::int64_t rows, std::int64_t ld) {
  std::vector<std::uint16_t> h(static_cast<std::size_t>(rows * ld), kPadBits);
  auto d = be.buffer<bf16>(h.size());
  SEQREC_CUDA_CHECK(
      cudaMemcpyAsync(d.data(), h.data(), d.bytes(), cudaMemcpyHostToDevice, be.stream()));
  be.synchronize();
  return d;
}

/// The (rows, cols) fp32 values, contiguous, of the bf16 bits of a (rows, ld) buffer (exact).
std::vector<float> widen(const std::vector<std::uint16_t>& b, std::int64_t rows, std::int64_t cols,
                         std::int64_t ld) {
  std::vector<float> out(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::uint32_t w = static_cast<std::uint32_t>(b[static_cast<std::size_t>(r * ld + c)])
                              << 16;
      std::memcpy(&out[static_cast<std::size_t>(r * cols + c)], &w, sizeof(float));
    }
  return out;
}

/// The bits of a (rows, ld) bf16 device buffer.
std::vector<std::uint16_t> bits(Backend& be, const bf16* p, std::int64_t rows, std::int64_t ld) {
  std::vector<std::uint16_t> h(static_cast<std::size_t>(rows * ld));
  SEQREC_CUDA_CHECK(
      cudaMemcpyAsync(h.data(), p, h.size() * 2, cudaMemcpyDeviceToHost, be.stream()));
  be.synchronize();
  return h;
}

/// Checks that `got` (rows, ld) holds exactly cast_to_bf16 of the fp32 device matrix `ref`
/// (rows, cols, contiguous) in its first cols columns and the sentinel in the padding.
void check_rounding(Backend& be, const std::string& op, const std::string& shape, const float* ref,
                    const bf16* got, std::int64_t rows, std::int64_t cols, std::int64_t ld) {
  auto want = sentinel_buffer(be, rows, ld);
  seqrec::cuda::cast_to_bf16(be, ref, rows, cols, cols, want.data(), ld);
  const auto a = bits(be, got, rows, ld), b = bits(be, want.data(), rows, ld);
  std::size_t diff = 0, pad_touched = 0;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < ld; ++c) {
      const std::size_t i = static_cast<std::size_t>(r * ld + c);
      if (c < cols)
        diff += a[i] != b[i];
      else
        pad_touched += a[i] != kPadBits;
    }
  record(diff == 0 && pad_touched == 0, op, shape,
         std::to_string(diff) + " of " + std::to_string(rows * cols) +
             " elements differ from cast_to_bf16(fp32 output) (must be 0); " +
             std::to_string(pad_touched) + " padding elements written (must be 0)");
}

void test_norms(Backend& be, Rng& rng, std::int64_t n, std::int64_t d) {
  const std::string shape = shape_str({{"N", n}, {"D", d}});
  const std::int64_t ld = bf16_ld(d);
  auto x = upload(be, normal(rng, n * d, 2.0, 0.5)), g = upload(be, normal(rng, d, 0.1, 1.0)),
       b = upload(be, normal(rng, d, 0.1));
  auto y = be.buffer<float>(n * d), s32 = be.buffer<float>(2 * n), s16 = be.buffer<float>(2 * n);
  auto y16 = sentinel_buffer(be, n, ld);
  seqrec::cuda::rmsnorm_forward(be, x.data(), g.data(), y.data(), s32.data(), n, d, 1e-6f);
  seqrec::cuda::rmsnorm_forward(be, x.data(), g.data(), y16.data(), s16.data(), n, d, 1e-6f, ld);
  check_rounding(be, "rmsnorm_forward.bf16", shape, y.data(), y16.data(), n, d, ld);
  // rstd is (N): the buffers hold 2N (LayerNorm's stats below), compare only what was written.
  check_identical("rmsnorm_forward.bf16.rstd", shape, download_ptr(be, s16.data(), n),
                  download_ptr(be, s32.data(), n), "rstd does not depend on the output type");
  y16 = sentinel_buffer(be, n, ld);
  seqrec::cuda::layernorm_forward(be, x.data(), g.data(), b.data(), y.data(), s32.data(), n, d,
                                  1e-5f);
  seqrec::cuda::layernorm_forward(be, x.data(), g.data(), b.data(), y16.data(), s16.data(), n, d,
                                  1e-5f, ld);
  check_rounding(be, "layernorm_forward.bf16", shape, y.data(), y16.data(), n, d, ld);
  check_identical("layernorm_forward.bf16.stats", shape, download(be, s16), download(be, s32),
                  "mean and rstd do not depend on the output type");
}

void test_activations(Backend& be, Rng& rng, std::int64_t rows, std::int64_t f) {
  const std::string shape = shape_str({{"N", rows}, {"F", f}});
  const std::int64_t ld = bf16_ld(f);
  auto x = upload(be, normal(rng, rows * f, 3.0)), u = upload(be, normal(rng, rows * f, 1.5));
  auto y = be.buffer<float>(rows * f);
  auto y16 = sentinel_buffer(be, rows, ld);
  using seqrec::cuda::Activation;
  seqrec::cuda::activation_forward<Activation::Relu>(be, x.data(), y.data(), rows * f);
  seqrec::cuda::activation_forward<Activation::Relu>(be, x.data(), y16.data(), rows, f, ld);
  check_rounding(be, "activation_forward.relu.bf16", shape, y.data(), y16.data(), rows, f, ld);
  y16 = sentinel_buffer(be, rows, ld);
  seqrec::cuda::activation_forward<Activation::Silu>(be, x.data(), y.data(), rows * f);
  seqrec::cuda::activation_forward<Activation::Silu>(be, x.data(), y16.data(), rows, f, ld);
  check_rounding(be, "activation_forward.silu.bf16", shape, y.data(), y16.data(), rows, f, ld);
  y16 = sentinel_buffer(be, rows, ld);
  seqrec::cuda::swiglu_forward(be, x.data(), u.data(), y.data(), rows * f);
  seqrec::cuda::swiglu_forward(be, x.data(), u.data(), y16.data(), rows, f, ld);
  check_rounding(be, "swiglu_forward.bf16", shape, y.data(), y16.data(), rows, f, ld);

  // The MLP's bf16 backward through the activation: activation_backward then column_sum_add_cast
  // (d·f'(x) stored in fp32, summed and rounded) against the fused pass that never stores it.
  const auto sums0 = normal(rng, f);
  auto fused = [&]<Activation A>(const char* name) {
    auto d = upload(be, download(be, u));
    auto s_ref = upload(be, sums0), s_got = upload(be, sums0);
    auto g16_ref = sentinel_buffer(be, rows, ld), g16_got = sentinel_buffer(be, rows, ld);
    seqrec::cuda::activation_backward<A>(be, x.data(), d.data(), rows * f);
    seqrec::cuda::column_sum_add_cast(be, d.data(), s_ref.data(), rows, f, g16_ref.data(), ld);
    seqrec::cuda::activation_backward_sum_cast<A>(be, x.data(), u.data(), s_got.data(), rows, f,
                                                  g16_got.data(), ld);
    const std::string op = std::string("activation_backward_sum_cast.") + name;
    check_identical(op + ".sums", shape, download(be, s_got), download(be, s_ref),
                    "the same products summed in the same order");
    check_identical(op + ".bf16", shape, download(be, g16_got), download(be, g16_ref),
                    "the same products rounded, padding untouched");
  };
  fused.template operator()<Activation::Relu>("relu");
  fused.template operator()<Activation::Silu>("silu");
}

/// The residual add fused into the norm that reads it (dropout_add_rmsnorm / _layernorm) against
/// dropout_add then the norm's forward: out, y (fp32, and bf16 with padded rows) and the stats
/// bit for bit; with a row map and p 0.1 (the training step), and without one at p 0; with an
/// fp32 branch, and with a bf16 one (padded rows, as a bf16-output GEMM writes it) against the
/// fp32 ops on its widened values.
void test_residual_norm(Backend& be, Rng& rng, std::int64_t n, std::int64_t d) {
  const std::string shape = shape_str({{"N", n}, {"D", d}});
  auto res = upload(be, normal(rng, n * d, 1.5, 0.2)), branch = upload(be, normal(rng, n * d));
  auto g = upload(be, normal(rng, d, 0.1, 1.0)), b = upload(be, normal(rng, d, 0.1));
  std::vector<std::int32_t> row_map(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    row_map[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(2 * i + (i % 3 == 0 ? 1 : 0));
  auto drows = upload(be, row_map);
  const std::int64_t ld = bf16_ld(d);
  // The bf16 branch (padding columns hold the sentinel, a NaN) and the fp32 values it widens to.
  auto branch16 = sentinel_buffer(be, n, ld);
  seqrec::cuda::cast_to_bf16(be, branch.data(), n, d, d, branch16.data(), ld);
  auto widened = upload(be, widen(bits(be, branch16.data(), n, ld), n, d, ld));
  const std::uint64_t key = 0x243f6a8885a308d3ULL;
  for (const bool layer : {false, true})
    for (const bool mapped : {true, false})
      for (const bool b16 : {false, true})
        for (const bool br16 : {false, true}) {
          const double p = mapped ? 0.1 : 0.0;
          const std::int32_t* rows = mapped ? drows.data() : nullptr;
          const std::string op =
              std::string(layer ? "dropout_add_layernorm" : "dropout_add_rmsnorm") +
              (mapped ? ".rows.p0.1" : ".p0") + (b16 ? ".bf16" : "") + (br16 ? ".bf16_branch" : "");
          auto out_ref = be.buffer<float>(n * d), out_got = be.buffer<float>(n * d);
          auto st_ref = be.buffer<float>(2 * n), st_got = be.buffer<float>(2 * n);
          SEQREC_CUDA_CHECK(cudaMemsetAsync(st_ref.data(), 0, st_ref.bytes(), be.stream()));
          SEQREC_CUDA_CHECK(cudaMemsetAsync(st_got.data(), 0, st_got.bytes(), be.stream()));
          seqrec::cuda::dropout_add(be, out_ref.data(), res.data(),
                                    br16 ? widened.data() : branch.data(), n * d, p, key, rows, d);
          auto fused = [&](const auto* br, std::int64_t ldb, auto* y_got, std::int64_t ldy) {
            if (layer)
              seqrec::cuda::dropout_add_layernorm(be, out_got.data(), res.data(), br, p, key, rows,
                                                  g.data(), b.data(), y_got, st_got.data(), n, d,
                                                  1e-5f, ldy, ldb);
            else
              seqrec::cuda::dropout_add_rmsnorm(be, out_got.data(), res.data(), br, p, key, rows,
                                                g.data(), y_got, st_got.data(), n, d, 1e-6f, ldy,
                                                ldb);
          };
          auto run = [&](auto* y_ref, auto* y_got, std::int64_t ldy) {
            if (layer)
              seqrec::cuda::layernorm_forward(be, out_ref.data(), g.data(), b.data(), y_ref,
                                              st_ref.data(), n, d, 1e-5f, ldy);
            else
              seqrec::cuda::rmsnorm_forward(be, out_ref.data(), g.data(), y_ref, st_ref.data(), n,
                                            d, 1e-6f, ldy);
            if (br16)
              fused(branch16.data(), ld, y_got, ldy);
            else
              fused(branch.data(), 0, y_got, ldy);
          };
          if (b16) {
            auto y_ref = sentinel_buffer(be, n, ld), y_got = sentinel_buffer(be, n, ld);
            run(y_ref.data(), y_got.data(), ld);
            check_identical(op + ".y", shape, bits(be, y_got.data(), n, ld),
                            bits(be, y_ref.data(), n, ld), "the same norm of the same sums");
          } else {
            auto y_ref = be.buffer<float>(n * d), y_got = be.buffer<float>(n * d);
            run(y_ref.data(), y_got.data(), 0);
            check_identical(op + ".y", shape, download(be, y_got), download(be, y_ref),
                            "the same norm of the same sums");
          }
          check_identical(op + ".out", shape, download(be, out_got), download(be, out_ref),
                          "dropout_add's sums and masks");
          check_identical(op + ".stats", shape, download(be, st_got), download(be, st_ref),
                          "the same row statistics");
        }
}

/// The bf16 MLP with its pre-activation and d(act) in bf16 (fc1 and fc2's input gradient written
/// by gemm_rm_bf16_out): the forward and the fused backward on bf16 inputs against the fp32 forms
/// on the same values widened.
void test_activations_bf16_in(Backend& be, Rng& rng, std::int64_t rows, std::int64_t f) {
  const std::string shape = shape_str({{"N", rows}, {"F", f}});
  const std::int64_t ld = bf16_ld(f);
  using seqrec::cuda::Activation;
  auto x = upload(be, normal(rng, rows * f, 3.0)), u = upload(be, normal(rng, rows * f, 1.5));
  auto y = be.buffer<float>(rows * f);
  const auto sums0 = normal(rng, f);
  auto x16 = be.buffer<bf16>(rows * ld), d16 = be.buffer<bf16>(rows * ld);
  seqrec::cuda::cast_to_bf16(be, x.data(), rows, f, f, x16.data(), ld);
  seqrec::cuda::cast_to_bf16(be, u.data(), rows, f, f, d16.data(), ld);
  auto xw = upload(be, widen(bits(be, x16.data(), rows, ld), rows, f, ld)),
       dw = upload(be, widen(bits(be, d16.data(), rows, ld), rows, f, ld));
  auto from16 = [&]<Activation A>(const char* name) {
    const std::string op = std::string("activation.bf16_in.") + name;
    auto y16 = sentinel_buffer(be, rows, ld);
    seqrec::cuda::activation_forward<A>(be, xw.data(), y.data(), rows * f);
    seqrec::cuda::activation_forward<A>(be, x16.data(), ld, y16.data(), rows, f, ld);
    check_rounding(be, op + ".forward", shape, y.data(), y16.data(), rows, f, ld);
    auto d = upload(be, download(be, dw));
    auto s_ref = upload(be, sums0), s_got = upload(be, sums0);
    auto g16_ref = sentinel_buffer(be, rows, ld), g16_got = sentinel_buffer(be, rows, ld);
    seqrec::cuda::activation_backward<A>(be, xw.data(), d.data(), rows * f);
    seqrec::cuda::column_sum_add_cast(be, d.data(), s_ref.data(), rows, f, g16_ref.data(), ld);
    seqrec::cuda::activation_backward_sum_cast<A>(be, x16.data(), d16.data(), ld, s_got.data(),
                                                  rows, f, g16_got.data(), ld);
    check_identical(op + ".backward_sum_cast.sums", shape, download(be, s_got), download(be, s_ref),
                    "the same products of widened values summed in the same order");
    check_identical(op + ".backward_sum_cast.bf16", shape, download(be, g16_got),
                    download(be, g16_ref), "the same products rounded, padding untouched");
  };
  from16.template operator()<Activation::Relu>("relu");
  from16.template operator()<Activation::Silu>("silu");
}

/// The loss's softmax kernel over a bf16 Z (the logits GEMM's bf16 output), G written over Z in
/// place, against the fp32 kernel over the widened Z writing G into its own bf16 buffer: the same
/// log-probabilities and G bit for bit, G's pad columns [I, ldz) zero in both; with the row kept
/// on chip and read from Z, and forward only (Z left alone). Logits ~ N(0, 3²); Z's pad columns
/// hold 5, not the GEMM's zeros, so that the in-place G must clear them itself.
void test_softmax_bf16_z(Backend& be, Rng& rng, std::int64_t c, std::int64_t items, int per_row) {
  const std::string shape = shape_str({{"rows", c}, {"I", items}, {"J", per_row}});
  const std::int64_t ldz = (items + 7) / 8 * 8;
  auto zf = normal(rng, c * ldz, 3.0);
  for (std::int64_t r = 0; r < c; ++r)
    for (std::int64_t i = items; i < ldz; ++i) zf[static_cast<std::size_t>(r * ldz + i)] = 5.f;
  auto z32 = upload(be, zf);
  auto z16 = be.buffer<bf16>(c * ldz);
  seqrec::cuda::cast_to_bf16(be, z32.data(), c, ldz, ldz, z16.data(), ldz);
  const auto z16_bits = bits(be, z16.data(), c, ldz);
  const auto zw = widen(z16_bits, c, ldz, ldz);
  std::vector<std::int32_t> cols(static_cast<std::size_t>(c * per_row));
  for (auto& v : cols) v = static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(items)));
  std::vector<float> weights(static_cast<std::size_t>(c * (per_row + 1)));
  for (std::int64_t r = 0; r < c; ++r) {
    float total = 0.f;
    for (int j = 0; j < per_row; ++j) {
      const float w = static_cast<float>(rng.uniform() - 0.5);
      weights[static_cast<std::size_t>(r * (per_row + 1) + 1 + j)] = w;
      total += w;
    }
    weights[static_cast<std::size_t>(r * (per_row + 1))] = total;
  }
  auto d_cols = upload(be, cols);
  auto d_w = upload(be, weights);
  for (const int cache : {0, 1}) {
    for (const int with_grad : {1, 0}) {
      const std::string op = std::string("softmax_head.bf16_z") + (cache ? ".cached" : ".from_z") +
                             (with_grad ? "" : ".forward_only");
      const std::size_t smem = sizeof(std::int32_t) * static_cast<std::size_t>(per_row) +
                               (cache ? sizeof(float) * static_cast<std::size_t>(items) : 0);
      for (const void* k :
           {reinterpret_cast<const void*>(&seqrec::cuda::softmax_head_kernel<bf16>),
            reinterpret_cast<const void*>(&seqrec::cuda::softmax_head_kernel<float>)})
        SEQREC_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem)));
      auto zin16 = be.buffer<bf16>(c * ldz);
      SEQREC_CUDA_CHECK(cudaMemcpyAsync(zin16.data(), z16_bits.data(), zin16.bytes(),
                                        cudaMemcpyHostToDevice, be.stream()));
      auto zin32 = upload(be, zw);
      auto g_ref = sentinel_buffer(be, c, ldz);
      auto out16 = be.buffer<float>(c * per_row), out32 = be.buffer<float>(c * per_row);
      seqrec::cuda::softmax_head_kernel<bf16><<<static_cast<unsigned>(c), 256, smem, be.stream()>>>(
          zin16.data(), items, ldz, d_cols.data(), per_row, out16.data(), d_w.data(), 0.f,
          with_grad, nullptr, cache);
      SEQREC_CUDA_CHECK(cudaGetLastError());
      seqrec::cuda::softmax_head_kernel<float>
          <<<static_cast<unsigned>(c), 256, smem, be.stream()>>>(
              zin32.data(), items, ldz, d_cols.data(), per_row, out32.data(), d_w.data(), 0.f,
              with_grad, with_grad ? g_ref.data() : nullptr, cache);
      SEQREC_CUDA_CHECK(cudaGetLastError());
      check_identical(op + ".logp", shape, download(be, out16), download(be, out32),
                      "the same widened logits, the same fp32 operations");
      if (with_grad)
        check_identical(op + ".g", shape, bits(be, zin16.data(), c, ldz),
                        bits(be, g_ref.data(), c, ldz),
                        "G in place over Z vs into its own buffer, pad columns zero");
      else
        check_identical(op + ".z_untouched", shape, bits(be, zin16.data(), c, ldz), z16_bits,
                        "forward only leaves Z alone");
    }
  }
}

/// Norm backward accumulating into dx against overwrite-then-add_into; the bias-gradient column
/// sum with its fused bf16 copy against column_sum_add and cast_to_bf16.
void test_fused_backward(Backend& be, Rng& rng, std::int64_t n, std::int64_t d) {
  const std::string shape = shape_str({{"N", n}, {"D", d}});
  auto x = upload(be, normal(rng, n * d, 2.0, 0.5)), g = upload(be, normal(rng, d, 0.1, 1.0)),
       b = upload(be, normal(rng, d, 0.1)), dy = upload(be, normal(rng, n * d));
  const auto dx0 = normal(rng, n * d), p0 = normal(rng, d);
  auto y = be.buffer<float>(n * d), stats = be.buffer<float>(2 * n),
       scratch = be.buffer<float>(n * d);
  for (const bool layer : {false, true}) {
    const std::string op = layer ? "layernorm_backward" : "rmsnorm_backward";
    auto dx_ref = upload(be, dx0), dx_got = upload(be, dx0);
    auto dg_ref = upload(be, p0), dg_got = upload(be, p0), db_ref = upload(be, p0),
         db_got = upload(be, p0);
    if (layer) {
      seqrec::cuda::layernorm_forward(be, x.data(), g.data(), b.data(), y.data(), stats.data(), n,
                                      d, 1e-5f);
      seqrec::cuda::layernorm_backward(be, x.data(), g.data(), stats.data(), dy.data(),
                                       scratch.data(), dg_ref.data(), db_ref.data(), n, d);
      seqrec::cuda::add_into(be, dx_ref.data(), scratch.data(), n * d);
      seqrec::cuda::layernorm_backward(be, x.data(), g.data(), stats.data(), dy.data(),
                                       dx_got.data(), dg_got.data(), db_got.data(), n, d, true);
      check_identical(op + ".accumulate.db", shape, download(be, db_got), download(be, db_ref),
                      "the same parameter gradient");
    } else {
      seqrec::cuda::rmsnorm_forward(be, x.data(), g.data(), y.data(), stats.data(), n, d, 1e-6f);
      seqrec::cuda::rmsnorm_backward(be, x.data(), g.data(), stats.data(), dy.data(),
                                     scratch.data(), dg_ref.data(), n, d);
      seqrec::cuda::add_into(be, dx_ref.data(), scratch.data(), n * d);
      seqrec::cuda::rmsnorm_backward(be, x.data(), g.data(), stats.data(), dy.data(), dx_got.data(),
                                     dg_got.data(), n, d, true);
    }
    check_identical(op + ".accumulate.dx", shape, download(be, dx_got), download(be, dx_ref),
                    "accumulate vs overwrite then add_into");
    check_identical(op + ".accumulate.dg", shape, download(be, dg_got), download(be, dg_ref),
                    "the same parameter gradient");

    // dy in bf16 (a GEMM's bf16 output, padded rows) against the fp32 call on the widened dy.
    const std::int64_t ldy = bf16_ld(d);
    auto dy16 = be.buffer<bf16>(n * ldy);
    seqrec::cuda::cast_to_bf16(be, dy.data(), n, d, d, dy16.data(), ldy);
    auto dyw = upload(be, widen(bits(be, dy16.data(), n, ldy), n, d, ldy));
    auto dx_w = upload(be, dx0), dx_16 = upload(be, dx0);
    auto dg_w = upload(be, p0), dg_16 = upload(be, p0), db_w = upload(be, p0),
         db_16 = upload(be, p0);
    if (layer) {
      seqrec::cuda::layernorm_backward(be, x.data(), g.data(), stats.data(), dyw.data(),
                                       dx_w.data(), dg_w.data(), db_w.data(), n, d, true);
      seqrec::cuda::layernorm_backward(be, x.data(), g.data(), stats.data(), dy16.data(),
                                       dx_16.data(), dg_16.data(), db_16.data(), n, d, true, ldy);
      check_identical(op + ".bf16_dy.db", shape, download(be, db_16), download(be, db_w),
                      "the same sums of the widened dy");
    } else {
      seqrec::cuda::rmsnorm_backward(be, x.data(), g.data(), stats.data(), dyw.data(), dx_w.data(),
                                     dg_w.data(), n, d, true);
      seqrec::cuda::rmsnorm_backward(be, x.data(), g.data(), stats.data(), dy16.data(),
                                     dx_16.data(), dg_16.data(), n, d, true, ldy);
    }
    check_identical(op + ".bf16_dy.dx", shape, download(be, dx_16), download(be, dx_w),
                    "bf16 dy vs the fp32 call on the widened dy");
    check_identical(op + ".bf16_dy.dg", shape, download(be, dg_16), download(be, dg_w),
                    "the same sums of the widened dy");
  }
  // The bias gradient's column sum with the bf16 copy in the same pass.
  const std::int64_t ld = bf16_ld(d);
  auto s_ref = upload(be, p0), s_got = upload(be, p0);
  auto y16 = sentinel_buffer(be, n, ld);
  seqrec::cuda::column_sum_add(be, dy.data(), s_ref.data(), n, d);
  seqrec::cuda::column_sum_add_cast(be, dy.data(), s_got.data(), n, d, y16.data(), ld);
  check_identical("column_sum_add_cast.sums", shape, download(be, s_got), download(be, s_ref),
                  "the same chunks in the same order");
  check_rounding(be, "column_sum_add_cast.bf16", shape, dy.data(), y16.data(), n, d, ld);

  // A linear before a dropped-out residual add, bf16 mode: dropout_backward (packed rows of a
  // twice longer full layout, so the mask hashes mapped indices) then column_sum_add_cast,
  // against the fused pass that never stores the dropped-out gradient; p 0 is the identity.
  std::vector<std::int32_t> row_map(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i)
    row_map[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(2 * i + (i % 3 == 0 ? 1 : 0));
  auto drows = upload(be, row_map);
  for (const double p : {0.1, 0.0}) {
    const std::string op = std::string("dropout_backward_sum_cast.p") + (p > 0 ? "0.1" : "0");
    const std::uint64_t key = 0x9e3779b97f4a7c15ULL;
    auto r_ref = upload(be, p0), r_got = upload(be, p0);
    auto g16_ref = sentinel_buffer(be, n, ld), g16_got = sentinel_buffer(be, n, ld);
    auto dropped = be.buffer<float>(n * d);
    seqrec::cuda::dropout_backward(be, dy.data(), dropped.data(), n * d, p, key, drows.data(), d);
    seqrec::cuda::column_sum_add_cast(be, dropped.data(), r_ref.data(), n, d, g16_ref.data(), ld);
    seqrec::cuda::dropout_backward_sum_cast(be, dy.data(), r_got.data(), n, d, p, key, drows.data(),
                                            g16_got.data(), ld);
    check_identical(op + ".sums", shape, download(be, r_got), download(be, r_ref),
                    "the same masked products summed in the same order");
    check_identical(op + ".bf16", shape, download(be, g16_got), download(be, g16_ref),
                    "the same masked products rounded, padding untouched");
  }
}

void test_attention_and_gather(Backend& be, Rng& rng, std::int64_t B, std::int64_t L,
                               std::int64_t D, std::int64_t H) {
  const std::string shape = shape_str({{"B", B}, {"L", L}, {"D", D}, {"H", H}});
  const std::int64_t N = B * L, ld = bf16_ld(D);
  std::vector<std::int32_t> tok(static_cast<std::size_t>(N));
  for (std::int64_t b = 0; b < B; ++b) {  // left padding: row b keeps its last 1 + b % L tokens
    const std::int64_t keep = 1 + b % L;
    for (std::int64_t i = 0; i < L; ++i) tok[b * L + i] = i >= L - keep ? 4 + int(i) : 0;
  }
  auto qkv = upload(be, normal(rng, N * 3 * D));
  auto dtok = upload(be, tok);
  auto out = be.buffer<float>(N * D), probs = be.buffer<float>(B * H * L * L);
  auto out16 = sentinel_buffer(be, N, ld);
  const seqrec::ops::AttentionShape s{B, L, D, H};
  seqrec::cuda::attention_forward(be, s, qkv.data(), dtok.data(), 0, out.data(), probs.data());
  seqrec::cuda::attention_forward(be, s, qkv.data(), dtok.data(), 0, out16.data(), probs.data(),
                                  ld);
  check_rounding(be, "attention_forward.bf16", shape, out.data(), out16.data(), N, D, ld);

  // gather_rows into bf16: the packed rows of `out`, every third row.
  std::vector<std::int32_t> rows;
  for (std::int64_t r = 0; r < N; r += 3) rows.push_back(static_cast<std::int32_t>(r));
  const auto m = static_cast<std::int64_t>(rows.size());
  auto drows = upload(be, rows);
  auto packed = be.buffer<float>(m * D);
  auto packed16 = sentinel_buffer(be, m, ld);
  seqrec::cuda::gather_rows(be, out.data(), drows.data(), packed.data(), m, D);
  seqrec::cuda::gather_rows(be, out.data(), drows.data(), packed16.data(), m, D, ld);
  check_rounding(be, "gather_rows.bf16", shape_str({{"rows", m}, {"W", D}}), packed.data(),
                 packed16.data(), m, D, ld);
}

/// The bf16 model's attention (bf16 GEMM outputs): qkv, d(out) and d(qkv) in bf16 with 16-byte
/// rows. Against the fp32 kernels on the widened qkv and d(out): the forward's output (rounded)
/// and probabilities bit for bit, and the backward's d(qkv) the rounding of the fp32 one, without
/// RoPE and (even head widths) with it fused.
void test_attention_bf16_io(Backend& be, Rng& rng, std::int64_t B, std::int64_t L, std::int64_t D,
                            std::int64_t H) {
  const std::string shape = shape_str({{"B", B}, {"L", L}, {"D", D}, {"H", H}});
  const std::int64_t N = B * L, ld = bf16_ld(D), ldq = bf16_ld(3 * D);
  std::vector<std::int32_t> tok(static_cast<std::size_t>(N));
  for (std::int64_t b = 0; b < B; ++b) {  // left padding: row b keeps its last 1 + b % L tokens
    const std::int64_t keep = 1 + b % L;
    for (std::int64_t i = 0; i < L; ++i) tok[b * L + i] = i >= L - keep ? 4 + int(i) : 0;
  }
  auto dtok = upload(be, tok);
  auto qkv = upload(be, normal(rng, N * 3 * D)), dout = upload(be, normal(rng, N * D));
  auto qkv16 = be.buffer<bf16>(N * ldq), dout16 = be.buffer<bf16>(N * ld);
  seqrec::cuda::cast_to_bf16(be, qkv.data(), N, 3 * D, 3 * D, qkv16.data(), ldq);
  seqrec::cuda::cast_to_bf16(be, dout.data(), N, D, D, dout16.data(), ld);
  auto qkvw = upload(be, widen(bits(be, qkv16.data(), N, ldq), N, 3 * D, ldq));
  auto doutw = upload(be, widen(bits(be, dout16.data(), N, ld), N, D, ld));
  const seqrec::ops::AttentionShape s{B, L, D, H};
  seqrec::cuda::RopeTable table;
  const bool even = (D / H) % 2 == 0;
  if (even) table.ensure(be, L, D / H, 10000.0);
  for (const bool fused_rope : {false, true}) {
    if (fused_rope && !even) continue;
    const seqrec::cuda::RopeTable* rope = fused_rope ? &table : nullptr;
    const std::string op = std::string("attention.bf16_io") + (fused_rope ? ".rope" : "");
    auto o32 = be.buffer<float>(N * D), p32 = be.buffer<float>(B * H * L * L),
         p16 = be.buffer<float>(B * H * L * L);
    auto o16 = sentinel_buffer(be, N, ld);
    seqrec::cuda::attention_forward(be, s, qkvw.data(), dtok.data(), 0, o32.data(), p32.data(), 0,
                                    nullptr, rope);
    seqrec::cuda::attention_forward(be, s, qkv16.data(), dtok.data(), 0, o16.data(), p16.data(), ld,
                                    nullptr, rope, nullptr, ldq);
    check_rounding(be, op + ".forward", shape, o32.data(), o16.data(), N, D, ld);
    check_identical(op + ".probs", shape, download(be, p16), download(be, p32),
                    "the same scores of the widened qkv");
    auto dq32 = be.buffer<float>(N * 3 * D);
    auto dq16 = sentinel_buffer(be, N, ldq);
    seqrec::cuda::attention_backward(be, s, qkvw.data(), p32.data(), doutw.data(), dq32.data(),
                                     nullptr, rope);
    seqrec::cuda::attention_backward(be, s, qkv16.data(), p16.data(), dout16.data(), dq16.data(),
                                     nullptr, rope, nullptr, ldq, ld, ldq);
    check_rounding(be, op + ".backward", shape, dq32.data(), dq16.data(), N, 3 * D, ldq);
  }
}

/// gemm_rm in bf16 mode with one operand pre-rounded to bf16 against the same call with the fp32
/// operand (which gemm_rm rounds itself): identical bits. Also a repeat of the fp32-operand call
/// (its cuBLASLt plan now comes from the backend's cache) must repeat the first bit for bit.
void test_gemm_operands(Backend& be, Rng& rng, std::int64_t M, std::int64_t N, std::int64_t K) {
  const std::string shape = shape_str({{"M", M}, {"N", N}, {"K", K}});
  be.set_bf16(true);
  try {
    for (const bool trans_a : {false, true})
      for (const bool first_operand : {true, false}) {
        // A is (M, K), or (K, M) when transposed; B is (N, K) (trans_b), as the model's linears.
        const std::int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
        auto a = upload(be, normal(rng, a_rows * a_cols)), b = upload(be, normal(rng, N * K));
        auto c_ref = be.buffer<float>(M * N), c_got = be.buffer<float>(M * N),
             c_rep = be.buffer<float>(M * N);
        const seqrec::cuda::Operand fa(a.data(), a_cols), fb(b.data(), K);
        seqrec::cuda::gemm_rm(be, trans_a, true, M, N, K, 1.f, fa, fb, 0.f, c_ref.data(), N);
        seqrec::cuda::gemm_rm(be, trans_a, true, M, N, K, 1.f, fa, fb, 0.f, c_rep.data(), N);
        DeviceBuffer<bf16> keep;
        const seqrec::cuda::Operand rounded =
            first_operand ? seqrec::cuda::gemm_operand(be, a.data(), a_rows, a_cols, keep)
                          : seqrec::cuda::gemm_operand(be, b.data(), N, K, keep);
        seqrec::cuda::gemm_rm(be, trans_a, true, M, N, K, 1.f, first_operand ? rounded : fa,
                              first_operand ? fb : rounded, 0.f, c_got.data(), N);
        const std::string which =
            std::string(first_operand ? "A" : "B") + (trans_a ? " (A transposed)" : "");
        check_identical("gemm_rm.bf16_operand " + which, shape, download(be, c_got),
                        download(be, c_ref), "a bf16 operand vs gemm_rm's own rounding of it");
        if (first_operand)
          check_identical(
              "gemm_rm.plan_cache.repeat" + std::string(trans_a ? " (A transposed)" : ""), shape,
              download(be, c_rep), download(be, c_ref),
              "the second call's cached plan vs the first's");
      }
  } catch (...) {
    be.set_bf16(false);
    throw;
  }
  be.set_bf16(false);
}

/// gemm_rm_bf16_out against cast_to_bf16 of gemm_rm's fp32 C, at the model's two uses: a forward
/// linear with its bias (trans_b, weight B) and a backward input gradient (no transposes, weight
/// B). cuBLASLt may pick another algorithm for a bf16 C, whose fp32 sums can differ in the last
/// bits, so where the bias is fused each element may be one bf16 unit from the rounded fp32 C, no
/// more (the emulator: 0 differ). A bias that is not 16-byte aligned cannot be fused; the fallback
/// (gemm_rm into fp32, then cast_to_bf16) must then give exactly the rounded fp32 C. Padding
/// columns stay untouched.
void test_gemm_bf16_out(Backend& be, Rng& rng, std::int64_t M, std::int64_t N, std::int64_t K) {
  const std::string shape = shape_str({{"M", M}, {"N", N}, {"K", K}});
  const std::int64_t ld = bf16_ld(N);
  be.set_bf16(true);
  try {
    auto bias_store = upload(be, normal(rng, N + 4, 0.5));
    for (const bool forward : {true, false})
      for (const bool aligned : {true, false}) {
        if (!forward && !aligned) continue;  // no bias in the backward GEMM
        // forward: A (M, K) · W (N, K)ᵀ + b; backward: G (M, K) · W (K, N).
        auto a = upload(be, normal(rng, M * K)), w = upload(be, normal(rng, N * K, 0.05));
        be.weights_changed();  // w may reuse a freed weight's address: no stale bf16 copy
        const seqrec::cuda::Operand fa(a.data(), K), fw(w.data(), forward ? K : N);
        const float* bias = forward ? bias_store.data() + (aligned ? 0 : 1) : nullptr;
        auto c = be.buffer<float>(M * N);
        seqrec::cuda::gemm_rm(be, false, forward, M, N, K, 1.f, fa, fw, 0.f, c.data(), N,
                              seqrec::cuda::WeightOperand::B, bias);
        auto got = sentinel_buffer(be, M, ld);
        const std::size_t passes0 = be.bias_passes();
        seqrec::cuda::gemm_rm_bf16_out(be, false, forward, M, N, K, 1.f, fa, fw, got.data(), ld,
                                       seqrec::cuda::WeightOperand::B, bias);
        if (forward && !aligned)
          record(be.bias_passes() > passes0, "gemm_rm_bf16_out.bias_pass_counted", shape,
                 "the unfusable bias shows in Backend::bias_passes (" +
                     std::to_string(be.bias_passes() - passes0) + " more)");
        const std::string op =
            std::string("gemm_rm_bf16_out.") +
            (forward ? (aligned ? "forward_bias" : "forward_unaligned_bias") : "backward");
        if (forward && !aligned) {
          check_rounding(be, op, shape, c.data(), got.data(), M, N, ld);
          continue;
        }
        auto want = sentinel_buffer(be, M, ld);
        seqrec::cuda::cast_to_bf16(be, c.data(), M, N, N, want.data(), ld);
        const auto g = bits(be, got.data(), M, ld), r = bits(be, want.data(), M, ld);
        std::size_t differ = 0, far = 0, pad = 0;
        for (std::int64_t i = 0; i < M; ++i)
          for (std::int64_t j = 0; j < ld; ++j) {
            const std::size_t k = static_cast<std::size_t>(i * ld + j);
            if (j >= N) {
              pad += g[k] != kPadBits;
              continue;
            }
            if (g[k] == r[k]) continue;
            ++differ;
            // Adjacent bf16 values of one sign differ by 1 in their bits (±0 aside).
            const int dist = std::abs(static_cast<int>(g[k]) - static_cast<int>(r[k]));
            far += ((g[k] ^ r[k]) & 0x8000) != 0 || dist > 1;
          }
        record(far == 0 && pad == 0, op, shape,
               std::to_string(differ) + " of " + std::to_string(M * N) +
                   " elements differ from bf16(fp32 C) by one bf16 unit, " + std::to_string(far) +
                   " by more (must be 0); " + std::to_string(pad) +
                   " padding elements written (must be 0)");
      }
  } catch (...) {
    be.set_bf16(false);
    throw;
  }
  be.set_bf16(false);
}

/// The plan cache's key: problems that differ in one key field only (C's alignment, ldc, the
/// exact row count within one size class, the bias epilogue), run interleaved on one backend, must
/// each give the bits a fresh backend (empty cache) gives them — a field missing from the key would
/// hand one problem another's plan. In both precisions.
void test_plan_cache(Rng& rng, bool bf16) {
  const std::int64_t N = 768, K = 1024;
  struct Problem {
    std::int64_t M, ldc, c_offset;
    bool bias;
  };
  const std::vector<Problem> problems = {{4096, N, 0, false},     {4096, N, 1, false},
                                         {4096, N + 8, 0, false}, {3999, N, 0, false},
                                         {4096, N, 0, true},      {4000, N, 0, true}};
  const std::string shape = shape_str({{"N", N}, {"K", K}}) + (bf16 ? " bf16" : " fp32");
  const std::int64_t max_m = 4096, max_ldc = N + 8;
  const auto a = normal(rng, max_m * K), b = normal(rng, N * K), bias = normal(rng, N);
  auto run = [&](Backend& be, const Problem& p) {
    auto da = upload(be, a), db = upload(be, b), dbias = upload(be, bias);
    auto dc = be.buffer<float>(static_cast<std::size_t>(max_m * max_ldc + 1));
    SEQREC_CUDA_CHECK(cudaMemsetAsync(dc.data(), 0, dc.bytes(), be.stream()));
    seqrec::cuda::gemm_rm(be, false, true, p.M, N, K, 1.f, da.data(), K, db.data(), K, 0.f,
                          dc.data() + p.c_offset, p.ldc, seqrec::cuda::WeightOperand::None,
                          p.bias ? dbias.data() : nullptr);
    return download(be, dc);
  };
  Backend shared(0);
  shared.set_bf16(bf16);
  std::vector<std::vector<float>> got;
  for (int round = 0; round < 2; ++round)
    for (const Problem& p : problems) got.push_back(run(shared, p));
  for (std::size_t i = 0; i < problems.size(); ++i) {
    Backend fresh(0);
    fresh.set_bf16(bf16);
    const auto want = run(fresh, problems[i]);
    const Problem& p = problems[i];
    const std::string what = "gemm_rm.plan_cache M=" + std::to_string(p.M) +
                             " ldc=" + std::to_string(p.ldc) +
                             " c_offset=" + std::to_string(p.c_offset) + (p.bias ? " bias" : "");
    check_identical(what, shape, got[i], want, "interleaved with the others vs a fresh backend");
    check_identical(what + " (2nd round)", shape, got[problems.size() + i], want,
                    "from the cache vs a fresh backend");
  }
}

/// GEMM autotuning: a backend that times the heuristic's candidates (the emulator answers three
/// placeholders that compute alike) against a default one, fp32 and bf16, with and without the
/// bias epilogue. The tuned plan may be another algorithm, summing in another order, so the
/// results agree to fp32 rounding of the sums: within 1e-5 of the row's Σ|a·b| (bit for bit on
/// the emulator, where every algorithm is one). A repeat on the tuned backend (its plan now
/// cached) must repeat its first result bit for bit, and tuning must have run.
void test_gemm_autotune(Rng& rng, bool bf16) {
  const std::int64_t M = 1000, N = 384, K = 512;
  const std::string shape = shape_str({{"M", M}, {"N", N}, {"K", K}}) + (bf16 ? " bf16" : " fp32");
  const auto a = normal(rng, M * K), b = normal(rng, N * K), bias = normal(rng, N);
  // Σ_k |a_ik b_jk| bounds the rounding error of every algorithm's sum for element (i, j); its
  // largest value over the matrix scales the tolerance.
  double scale = 0;
  for (std::int64_t i = 0; i < M; i += 97)
    for (std::int64_t j = 0; j < N; j += 31) {
      double s = 0;
      for (std::int64_t k = 0; k < K; ++k) s += std::fabs(double(a[i * K + k]) * b[j * K + k]);
      scale = std::max(scale, s);
    }
  auto run = [&](Backend& be, bool with_bias) {
    auto da = upload(be, a), db = upload(be, b), dbias = upload(be, bias);
    auto dc = be.buffer<float>(static_cast<std::size_t>(M * N));
    seqrec::cuda::gemm_rm(be, false, true, M, N, K, 1.f, da.data(), K, db.data(), K, 0.f, dc.data(),
                          N, seqrec::cuda::WeightOperand::None, with_bias ? dbias.data() : nullptr);
    return download(be, dc);
  };
  Backend tuned(0), plain(0);
  tuned.set_bf16(bf16);
  plain.set_bf16(bf16);
  tuned.set_gemm_autotune(true);
  for (const bool with_bias : {false, true}) {
    const std::string what = std::string("gemm_rm.autotune") + (with_bias ? " bias" : "");
    const auto got = run(tuned, with_bias), again = run(tuned, with_bias),
               want = run(plain, with_bias);
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::fabs(double(got[i]) - double(want[i])));
    record(worst <= 1e-5 * scale, what, shape,
           "max |tuned - default| = " + std::to_string(worst) + " (tol 1e-5 * " +
               std::to_string(scale) + ")");
    check_identical(what + " (repeat)", shape, again, got, "the tuned plan from the cache");
  }
  record(tuned.gemm_classes_tuned() >= 2 && plain.gemm_classes_tuned() == 0, "gemm_rm.autotune.ran",
         shape,
         std::to_string(tuned.gemm_classes_tuned()) + " classes tuned (" +
             std::to_string(tuned.gemm_classes_retuned()) +
             " to another algorithm than the heuristic's first) on the tuned backend, " +
             std::to_string(plain.gemm_classes_tuned()) + " on the default one");
}

/// cuda::Fork, the two-stream scope of the dW overlap: on_side's work is queued on the side stream
/// with its own cuBLASLt workspace, and the stream comes back after it (after a throw too); a
/// GEMM run there gives the bits it gives on the main stream; between fork and join the
/// allocator hands out no block freed meanwhile, and the join returns them all to the cache; a
/// second fork inside one is refused.
void test_fork(Backend& be, Rng& rng) {
  // fp32 mode: its GEMMs allocate no operand copies, so the blocks freed while forked are
  // exactly the three below.
  struct Mode {
    Backend& be;
    bool was;
    ~Mode() { be.set_bf16(was); }
  } mode{be, be.bf16()};
  be.set_bf16(false);
  const std::int64_t M = 61, N = 40, K = 72;
  auto a = upload(be, normal(rng, M * K)), b = upload(be, normal(rng, K * N));
  auto c_main = be.buffer<float>(M * N), c_side = be.buffer<float>(M * N);
  seqrec::cuda::gemm_rm(be, false, false, M, N, K, 1.f, a.data(), K, b.data(), N, 0.f,
                        c_main.data(), N);
  const cudaStream_t main_stream = be.stream();
  void* const main_ws = be.workspace();
  cudaStream_t side_stream = nullptr;
  void* side_ws = nullptr;
  { const seqrec::cuda::Fork warm(be); }  // the side stream and its workspace exist from here
  const std::size_t runs0 = be.side_runs();
  const std::size_t cached0 = be.allocator().cached_bytes();
  void* first = nullptr;
  std::size_t reused = 0, refused = 0;
  {
    seqrec::cuda::Fork fork(be);
    {
      auto tmp = be.buffer<float>(1000);  // freed while forked: held back
      first = tmp.data();
    }
    auto again = be.buffer<float>(1000);
    reused += again.data() == first;
    try {
      seqrec::cuda::Fork nested(be);
    } catch (const seqrec::Error&) {
      ++refused;
    }
    fork.on_side([&] {
      side_stream = be.stream();
      side_ws = be.workspace();
      seqrec::cuda::gemm_rm(be, false, false, M, N, K, 1.f, a.data(), K, b.data(), N, 0.f,
                            c_side.data(), N);
      auto scratch = be.buffer<float>(1000);
      reused += scratch.data() == first;
    });
  }
  const bool back = be.stream() == main_stream && be.workspace() == main_ws;
  record(side_stream != nullptr && side_stream != main_stream && side_ws != main_ws && back &&
             be.side_runs() == runs0 + 1,
         "fork.streams", "-",
         std::string("on_side ran on another stream with its own workspace: ") +
             (side_stream != main_stream && side_ws != main_ws ? "yes" : "NO") +
             "; main stream and workspace back after it: " + (back ? "yes" : "NO"));
  check_identical("fork.gemm_on_side", shape_str({{"M", M}, {"N", N}, {"K", K}}),
                  download(be, c_side), download(be, c_main), "the same GEMM on either stream");
  // Three 4000-byte blocks were freed while forked (tmp, scratch, again): all cached now.
  const std::size_t block = seqrec::cuda::CachingAllocator::bucket(4000);
  record(reused == 0 && !be.allocator().holding() &&
             be.allocator().cached_bytes() == cached0 + 3 * block,
         "fork.allocator", "-",
         std::to_string(reused) + " blocks freed while forked handed out again (must be 0); " +
             "cached bytes +" + std::to_string(be.allocator().cached_bytes() - cached0) +
             " after the join (want " + std::to_string(3 * block) + ")");
  record(refused == 1, "fork.nested", "-", "a second Fork while forked is refused");
  bool threw = false;
  try {
    seqrec::cuda::Fork fork(be);
    fork.on_side([] { throw seqrec::Error("from the side"); });
  } catch (const seqrec::Error&) {
    threw = true;
  }
  bool after = false;
  {
    seqrec::cuda::Fork fork(be);  // the throw joined and unheld: forking works again
    after = be.allocator().holding();
  }
  record(threw && after && be.stream() == main_stream && !be.allocator().holding(), "fork.throw",
         "-",
         "a throw inside on_side leaves the main stream current and the "
         "allocator unheld, and a new fork works");
}

void test_profiler(Backend& be, Rng& rng) {
  const std::int64_t n = 4096, d = 1024;
  auto x = upload(be, normal(rng, n * d)), g = upload(be, normal(rng, d, 0.1, 1.0));
  auto y = be.buffer<float>(n * d), s = be.buffer<float>(n);
  be.enable_profiling(false);
  { const seqrec::cuda::ProfileScope off(be, "never"); }
  record(be.profiler() == nullptr, "profiler.off", "-",
         "no profiler while profiling is off (a scope costs one pointer test)");
  be.enable_profiling(true);
  seqrec::cuda::Profiler* p = be.profiler();
  for (int rep = 0; rep < 3; ++rep) {
    {
      const seqrec::cuda::ProfileScope a(be, "norm");
      seqrec::cuda::rmsnorm_forward(be, x.data(), g.data(), y.data(), s.data(), n, d, 1e-6f);
    }
    {
      const seqrec::cuda::ProfileScope b(be, "activation");
      seqrec::cuda::activation_forward<seqrec::cuda::Activation::Silu>(be, y.data(), x.data(),
                                                                       n * d);
    }
  }
  p->collect();
  const auto& t = p->totals();
  const bool ok = t.size() == 2 && t[0].first == "norm" && t[1].first == "activation" &&
                  t[0].second > 0 && t[1].second > 0;
  char buf[200];
  std::snprintf(buf, sizeof buf, "%zu totals; norm %.4f ms, activation %.4f ms over 3 repeats",
                t.size(), t.empty() ? -1.0 : t[0].second, t.size() < 2 ? -1.0 : t[1].second);
  record(ok, "profiler.totals", "-", buf);
  bool refused = false;
  {
    const seqrec::cuda::ProfileScope outer(be, "outer");
    try {
      const seqrec::cuda::ProfileScope inner(be, "inner");
    } catch (const seqrec::Error&) {
      refused = true;
    }
  }
  p->collect();
  record(refused, "profiler.nesting", "-",
         refused ? "a range opened inside another is refused" : "nested range accepted");

  // GEMMs are timed on their own, inside a range or outside every range, per (phase, class).
  p->reset_totals();
  const std::int64_t gm = 300, gn = 64, gk = 96;
  auto ga = upload(be, normal(rng, gm * gk)), gb = upload(be, normal(rng, gn * gk));
  auto gc = be.buffer<float>(gm * gn);
  {
    const seqrec::cuda::ProfileScope in(be, "linear");
    for (int rep = 0; rep < 2; ++rep)
      seqrec::cuda::gemm_rm(be, false, true, gm, gn, gk, 1.f, ga.data(), gk, gb.data(), gk, 0.f,
                            gc.data(), gn);
  }
  seqrec::cuda::gemm_rm(be, false, true, gm - 1, gn, gk, 1.f, ga.data(), gk, gb.data(), gk, 0.f,
                        gc.data(), gn);
  p->collect();
  const auto& gt = p->gemm_totals();
  const double flops = 2.0 * gm * gn * gk;
  const bool gemm_ok = gt.size() == 2 && gt[0].phase == "linear" && gt[0].calls == 2 &&
                       gt[0].flops == 2 * flops && gt[0].m == 2.0 * gm && gt[0].n == 2.0 * gn &&
                       gt[0].k == 2.0 * gk && gt[0].ms > 0 && gt[1].phase.empty() &&
                       gt[1].calls == 1 && gt[1].m == double(gm - 1) &&
                       gt[1].label.find(" A*B^T -> fp32 [class 299x64x96]") != std::string::npos &&
                       p->totals().size() == 1 && p->totals()[0].first == "linear";
  std::snprintf(buf, sizeof buf, "%zu GEMM totals; first '%s' / '%s' %lld calls %.4f ms", gt.size(),
                gt.empty() ? "" : gt[0].phase.c_str(), gt.empty() ? "" : gt[0].label.c_str(),
                gt.empty() ? -1LL : static_cast<long long>(gt[0].calls),
                gt.empty() ? -1.0 : gt[0].ms);
  record(gemm_ok, "profiler.gemms", "-", buf);
  be.enable_profiling(false);
}

}  // namespace

int main() {
  return run_checks(20261127, [](Backend& be, Rng& rng) {
    for (auto [n, d] : {std::pair<std::int64_t, std::int64_t>{301, 37}, {8192, 1024}})
      guarded("norms.bf16", shape_str({{"N", n}, {"D", d}}), [&] { test_norms(be, rng, n, d); });
    for (auto [n, f] : {std::pair<std::int64_t, std::int64_t>{129, 172}, {8192, 4096}})
      guarded("activations.bf16", shape_str({{"N", n}, {"F", f}}),
              [&] { test_activations(be, rng, n, f); });
    // Study width, fewer rows: the emulator's time goes with the element count.
    for (auto [n, f] : {std::pair<std::int64_t, std::int64_t>{129, 172}, {512, 4096}})
      guarded("activations.bf16_in", shape_str({{"N", n}, {"F", f}}),
              [&] { test_activations_bf16_in(be, rng, n, f); });
    for (auto [b, l, d, h] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>{5, 13, 74, 2},
          {512, 20, 1024, 8}})
      guarded("attention.bf16", shape_str({{"B", b}, {"L", l}, {"D", d}, {"H", h}}),
              [&] { test_attention_and_gather(be, rng, b, l, d, h); });
    for (auto [b, l, d, h] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>{5, 13, 74, 2},
          {16, 20, 256, 2}})
      guarded("attention.bf16_io", shape_str({{"B", b}, {"L", l}, {"D", d}, {"H", h}}),
              [&] { test_attention_bf16_io(be, rng, b, l, d, h); });
    for (auto [m, n, k] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t>{37, 29, 172}, {4096, 3072, 1024}})
      guarded("gemm_rm.bf16_operand", shape_str({{"M", m}, {"N", n}, {"K", k}}),
              [&] { test_gemm_operands(be, rng, m, n, k); });
    for (auto [m, n, k] :
         {std::tuple<std::int64_t, std::int64_t, std::int64_t>{37, 172, 29}, {2048, 4096, 1024}})
      guarded("gemm_rm_bf16_out", shape_str({{"M", m}, {"N", n}, {"K", k}}),
              [&] { test_gemm_bf16_out(be, rng, m, n, k); });
    for (auto [n, d] : {std::pair<std::int64_t, std::int64_t>{301, 37}, {2048, 1024}})
      guarded("residual_norm", shape_str({{"N", n}, {"D", d}}),
              [&] { test_residual_norm(be, rng, n, d); });
    for (auto [n, d] : {std::pair<std::int64_t, std::int64_t>{301, 37}, {8192, 1024}})
      guarded("fused_backward", shape_str({{"N", n}, {"D", d}}),
              [&] { test_fused_backward(be, rng, n, d); });
    for (const bool bf16 : {false, true})
      guarded("gemm_rm.plan_cache", bf16 ? "bf16" : "fp32", [&] { test_plan_cache(rng, bf16); });
    for (const bool bf16 : {false, true})
      guarded("gemm_rm.autotune", bf16 ? "bf16" : "fp32", [&] { test_gemm_autotune(rng, bf16); });
    for (auto [c, i, j] :
         {std::tuple<std::int64_t, std::int64_t, int>{37, 1001, 3}, {64, 16859, 1}})
      guarded("softmax_head.bf16_z", shape_str({{"rows", c}, {"I", i}, {"J", j}}),
              [&] { test_softmax_bf16_z(be, rng, c, i, j); });
    guarded("profiler", "-", [&] { test_profiler(be, rng); });
    guarded("fork", "-", [&] { test_fork(be, rng); });
  });
}
