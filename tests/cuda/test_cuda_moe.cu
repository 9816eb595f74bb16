// The CUDA MoE layer (ops/moe/moe_cuda.cuh, cuda::MoeLayer<4, 2>) against the CPU layer it
// mirrors, policy::ffn::MoE<4, 2, Mlp<Silu>>::Layer<float>, on the same parameters (registered
// by the CPU layer in a host ParameterStore, uploaded as one flat array) and the same random x,
// dy and valid mask. Prints one line per check,
//   PASS|FAIL <what> <case> max_abs_err=… max_rel_err=… (rtol … atol …)
// and a summary; exits 0 iff every check passes, 77 (ctest: skipped) when no GPU answers.
//
// Checked per case, in the order that pinpoints a bug: per-expert row counts (exact), routing
// (choices exact; probabilities, lse, renormalised weights), each expert's outputs before
// weighting, y, the aux loss, the expert shares (exact), dx, every parameter gradient (which
// start from random values: the layer must accumulate), and a bit-identical rerun.
//
// Cases: small odd shapes (N 300, D 40, F 56) with padding rows; no valid mask; an expert that
// never wins (its GEMMs are skipped: its gradients must stay exactly as they were); dy = 0, where
// only the balance and z losses drive the router (their gradients are otherwise ~1e-5 of the
// total and could hide under the tolerance); all rows padding (aux 0, shares 0); the study's
// widths D 1024, F 4096 at N 4096 (the single-threaded CPU reference needs ~0.4 TFLOP there; at
// N 20480 it would take minutes), and N 20480 (batch 1024 × length 20) on the GPU alone, checked
// on 256 sampled rows of y (a token's output depends only on its own row) plus a rerun.
//
// Inputs avoid near-ties in the routing: a row whose K-th and (K+1)-th largest logits (in double)
// are closer than 1e-3 is redrawn. The two backends' float logits differ by ~1e-6 at most, so a
// closer pair could legitimately be ordered differently, and one flipped choice changes that
// row's y by O(1).
//
// Tolerances (|gpu − cpu| ≤ atol + rtol·|cpu|, atol = atol_frac · max|cpu|). Calibrated by
// running the CPU layer in float against the same layer in double (normalised max error
// max|f − d| / max|d|): 1e-7…6e-7 at N 300, D 40, F 56; ≤ 1.2e-6 at N 1024, D 256, F 1024;
// ≤ 1.4e-6 at N 4096, D 1024, F 4096, for y, dx and every gradient; the worst element used at
// most 0.08 of the tolerance below (0.02 at the small shape). cuBLASLt's fp32 GEMMs (no TF32)
// have errors of the same size as Eigen's, so gpu − cpu is at most about twice the CPU's error:
//   y, expert outputs, dx, parameter gradients: rtol 1e-4, atol 1e-5·max (≥ 6× margin);
//   probabilities, weights: rtol 1e-5, atol 1e-6·max (they come from D-term logits, ~1e-7);
//   lse: rtol 1e-5, atol 1e-6·max; aux loss: rtol 1e-5 (float vs double agree to ~1e-9: f_e is
//   exact, the sums are in double).
// The summation orders the GPU changes: GEMMs and column sums (cuBLASLt, 64 fixed chunks, against
// Eigen), the double sums of the aux stats (256 thread partials, against a serial loop), dw
// (lane partials + butterfly, in double). y and dx are combined in the CPU's order (ascending
// expert id), so those add no difference of their own.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "cuda_check.cuh"
#include "seqrec/backend/cuda.cuh"
#include "seqrec/core/random.hpp"
#include "seqrec/model/parameter_store.hpp"
#include "seqrec/model/shape.hpp"
#include "seqrec/ops/moe/moe_cuda.cuh"
#include "seqrec/policy/feed_forward.hpp"

namespace {

using namespace seqrec::cuda_check;

using seqrec::ParameterStore;
using seqrec::Rng;
using seqrec::cuda::Backend;
using seqrec::cuda::DeviceBuffer;

constexpr int kE = 4, kK = 2;
using CpuMoe = seqrec::policy::ffn::MoE<kE, kK, seqrec::policy::ffn::Mlp<seqrec::ops::Silu>>;
using CpuLayer = CpuMoe::Layer<float>;
using GpuLayer = seqrec::cuda::MoeLayer<kE, kK>;
const std::string kPrefix = "blocks.0.ffn";

void check_exact_doubles(const std::string& what, const std::string& name,
                         const std::vector<double>& got, const std::vector<double>& ref) {
  std::string s = "gpu [";
  for (double v : got) s += std::to_string(v) + " ";
  s += "] cpu [";
  for (double v : ref) s += std::to_string(v) + " ";
  s += "] (must be equal exactly)";
  record(got == ref, what, name, s);
}

template <typename A>
std::vector<float> slice(const std::vector<float, A>& flat, const ParameterStore<float>& s,
                         const std::string& name) {
  const auto& e = s.entry(s.find(name));
  return std::vector<float>(flat.begin() + static_cast<std::ptrdiff_t>(e.offset),
                            flat.begin() + static_cast<std::ptrdiff_t>(e.offset + e.numel));
}

struct Case {
  std::string name;
  std::int64_t n, d, f;
  double pad_frac = 0.25;    // share of padding rows (valid = 0)
  bool mask = true;          // false: valid = nullptr (every row real)
  bool dead_expert = false;  // expert 3 never wins
  bool zero_dy = false;      // dy = 0: only the aux losses drive the gradients
  bool rerun = true;         // determinism check
  bool cpu_full = true;      // false: GPU alone, y checked on sampled rows
  double alpha = 0.01, beta = 0.001;
};

std::string case_name(const Case& c) {
  return c.name + "(N=" + std::to_string(c.n) + ",D=" + std::to_string(c.d) +
         ",F=" + std::to_string(c.f) + ")";
}

/// Random parameters: router N(0, 1/√D) (logits ~ N(0, 1): decisive, varied routing), weights
/// N(0, 1/√fan_in) (outputs O(1)), biases N(0, 0.1). For a dead expert, column 0 of the router
/// is 0 for experts 0-2 and −4 for expert 3, and x[:, 0] = 3: its logit sits ~12 below the others.
void init_values(ParameterStore<float>& s, Rng& rng, const Case& c) {
  for (const auto& e : s.entries()) {
    float* v = s.values().data() + e.offset;
    const bool router = e.name.find(".router.") != std::string::npos;
    const bool bias = e.name.find(".bias") != std::string::npos;
    const double sd = router ? 1.0 / std::sqrt(double(c.d))
                      : bias ? 0.1
                             : 1.0 / std::sqrt(double(e.shape[1]));
    for (std::size_t i = 0; i < e.numel; ++i) v[i] = float(sd * rng.normal());
    if (router && c.dead_expert)
      for (int x = 0; x < kE; ++x) v[x * c.d] = x == kE - 1 ? -4.f : 0.f;
  }
}

/// x (N, D) ~ N(0, 1), rows redrawn until each of the K+1 largest logits (double) is at least
/// 1e-3 above the next (see the file comment).
std::vector<float> make_input(Rng& rng, const ParameterStore<float>& s, const Case& c,
                              std::int64_t* redrawn) {
  const float* wr = s.value(s.find(kPrefix + ".router.weight"));
  std::vector<float> x(static_cast<std::size_t>(c.n * c.d));
  *redrawn = 0;
  for (std::int64_t r = 0; r < c.n; ++r) {
    float* xr = x.data() + r * c.d;
    for (int attempt = 0;; ++attempt) {
      for (std::int64_t j = 0; j < c.d; ++j) xr[j] = float(rng.normal());
      if (c.dead_expert) xr[0] = 3.f;
      double z[kE];
      for (int e = 0; e < kE; ++e) {
        double acc = 0;
        for (std::int64_t j = 0; j < c.d; ++j) acc += double(wr[e * c.d + j]) * double(xr[j]);
        z[e] = acc;
      }
      std::sort(z, z + kE, [](double a, double b) { return a > b; });
      // Every adjacent pair among the top K+1 must be separated: a near-tie between the K-th and
      // (K+1)-th flips the choice, one inside the top K only swaps slots (same y, but the choice
      // and weight checks compare slots).
      bool separated = true;
      for (int k = 0; k < kK && k + 1 < kE; ++k) separated = separated && z[k] - z[k + 1] >= 1e-3;
      if (separated) break;
      ++*redrawn;
    }
  }
  return x;
}

void test_case(Backend& be, Rng& rng, const Case& c) {
  const std::string name = case_name(c);
  const std::int64_t n = c.n, D = c.d;
  seqrec::ModelShape shape;
  shape.vocab_size = 100;
  shape.dim = static_cast<std::int32_t>(c.d);
  shape.ffn_dim = static_cast<std::int32_t>(c.f);
  shape.moe_balance_coef = c.alpha;
  shape.moe_z_coef = c.beta;
  ParameterStore<float> store;
  CpuLayer cpu(store, kPrefix, shape, shape.init_std);
  init_values(store, rng, c);
  // Gradients start random (N(0, 1), the order of the increments): the layer must add into them.
  for (auto& g : store.grads()) g = float(rng.normal());
  if (c.zero_dy) {
    // Only the aux losses move the router here, by ~1e-4 to 1e-3 per element: from a random start
    // the check's tolerance (relative to max|g| ≈ 4) would hide a wrong aux gradient. The router
    // starts at zero so its check sees the aux gradient alone; the experts keep their random start
    // (they must stay bit-identical).
    const auto& e = store.entry(store.find(kPrefix + ".router.weight"));
    std::fill_n(store.grads().begin() + e.offset, e.numel, 0.f);
  }
  const auto g0 = store.grads();

  std::int64_t redrawn = 0;
  const auto x = make_input(rng, store, c, &redrawn);
  std::vector<float> dy(static_cast<std::size_t>(n * D), 0.f);
  if (!c.zero_dy)
    for (auto& v : dy) v = float(rng.normal());
  std::vector<std::uint8_t> valid(static_cast<std::size_t>(n), 1);
  if (c.mask)
    for (auto& v : valid) v = rng.uniform() < c.pad_frac ? 0 : 1;
  std::int64_t n_valid = 0;
  for (auto v : valid) n_valid += v;
  std::printf("case %s: %lld of %lld rows valid%s, %lld rows redrawn to avoid routing near-ties\n",
              name.c_str(), static_cast<long long>(n_valid), static_cast<long long>(n),
              c.mask ? "" : " (no mask)", static_cast<long long>(redrawn));
  std::fflush(stdout);

  // ---- GPU -----------------------------------------------------------------------------------
  GpuLayer gpu(store, kPrefix, shape);
  auto d_params = upload(be, store.values());
  auto d_grads = upload(be, g0);
  auto d_x = upload(be, x);
  auto d_dy = upload(be, dy);
  auto d_valid = upload(be, valid);
  auto d_y = be.buffer<float>(x.size());
  auto d_dx = be.buffer<float>(x.size());
  const std::uint8_t* vptr = c.mask ? d_valid.data() : nullptr;
  gpu.forward(be, d_params.data(), d_x.data(), d_y.data(), n, vptr);
  const double aux_gpu = gpu.aux_loss();
  const auto rows_gpu = gpu.expert_rows();
  const auto routing = gpu.routing(be);
  std::vector<std::vector<float>> yout_gpu;
  for (int e = 0; e < kE; ++e) yout_gpu.push_back(gpu.expert_output(be, e));
  gpu.backward(be, d_params.data(), d_grads.data(), d_x.data(), d_dy.data(), d_dx.data(), n);
  const auto y_gpu = download(be, d_y);
  const auto dx_gpu = download(be, d_dx);
  const auto g_gpu = download(be, d_grads);
  const auto shares_gpu = gpu.take_expert_shares();

  if (!c.cpu_full) {
    // y on 256 sampled rows: the CPU layer on those rows alone (routing and y are per row).
    const std::int64_t m = std::min<std::int64_t>(256, n);
    std::vector<std::int64_t> rows(static_cast<std::size_t>(m));
    for (auto& r : rows) r = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(n)));
    std::sort(rows.begin(), rows.end());
    std::vector<float> xs(static_cast<std::size_t>(m * D)), ys(xs.size()), yg(xs.size());
    std::vector<std::int32_t> ch_gpu(static_cast<std::size_t>(m * kK));
    for (std::int64_t i = 0; i < m; ++i) {
      std::copy_n(x.data() + rows[i] * D, D, xs.data() + i * D);
      std::copy_n(y_gpu.data() + rows[i] * D, D, yg.data() + i * D);
      std::copy_n(routing.choice.data() + rows[i] * kK, kK, ch_gpu.data() + i * kK);
    }
    CpuLayer::Cache cache;
    cpu.forward(store, xs.data(), ys.data(), cache, m, nullptr);
    check_identical("moe.choice(sampled)", name, ch_gpu, cache.choice, "routing must agree");
    check("moe.y(sampled rows)", name, yg, ys, 1e-4, 1e-5);
    std::int64_t total = 0;
    for (auto r : rows_gpu) total += r;
    record(total == n * kK, "moe.rows.total", name,
           std::to_string(total) + " routed pairs (must be N·K = " + std::to_string(n * kK) + ")");
    record(std::isfinite(aux_gpu) && aux_gpu > 0, "moe.aux.finite", name,
           "aux = " + std::to_string(aux_gpu));
  } else {
    // ---- CPU reference ------------------------------------------------------------------------
    std::vector<float> y_cpu(x.size()), dx_cpu(x.size());
    CpuLayer::Cache cache;
    const auto t0 = std::chrono::steady_clock::now();
    cpu.forward(store, x.data(), y_cpu.data(), cache, n, c.mask ? valid.data() : nullptr);
    const double aux_cpu = cpu.aux_loss(cache);
    cpu.backward(store, x.data(), cache, dy.data(), dx_cpu.data(), n);
    const auto shares_cpu = cpu.take_expert_shares();
    std::printf("  (CPU reference forward + backward: %.1f s)\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

    // Counts and routing first: a bug there explains everything after it.
    std::string counts = "gpu [";
    bool counts_ok = true;
    for (int e = 0; e < kE; ++e) {
      counts += std::to_string(rows_gpu[e]) + " ";
      counts_ok = counts_ok && rows_gpu[e] == static_cast<std::int64_t>(cache.rows[e].size());
    }
    counts += "] cpu [";
    for (int e = 0; e < kE; ++e) counts += std::to_string(cache.rows[e].size()) + " ";
    record(counts_ok, "moe.expert_rows", name, counts + "] (exact)");
    if (c.dead_expert)
      record(cache.rows[kE - 1].empty(), "moe.dead_expert_precondition", name,
             "CPU routes " + std::to_string(cache.rows[kE - 1].size()) +
                 " rows to expert 3 (the case needs 0)");
    check_identical("moe.choice", name, routing.choice, cache.choice, "routing must agree");
    check("moe.probs", name, routing.probs, cache.probs, 1e-5, 1e-6);
    check("moe.lse", name, routing.lse, cache.lse, 1e-5, 1e-6);
    check("moe.weight", name, routing.weight, cache.weight, 1e-5, 1e-6);
    for (int e = 0; e < kE; ++e)
      if (!cache.yout[e].empty() || !yout_gpu[e].empty())
        check("moe.expert" + std::to_string(e) + ".yout", name, yout_gpu[e], cache.yout[e], 1e-4,
              1e-5);

    check("moe.y", name, y_gpu, y_cpu, 1e-4, 1e-5);
    check_scalar("moe.aux", name, aux_gpu, aux_cpu, 1e-5);
    check_exact_doubles("moe.expert_shares", name, shares_gpu, shares_cpu);
    check("moe.dx", name, dx_gpu, dx_cpu, 1e-4, 1e-5);
    for (const auto& e : store.entries()) {
      const auto got = slice(g_gpu, store, e.name), ref = slice(store.grads(), store, e.name);
      check("grad " + e.name, name, got, ref, 1e-4, 1e-5);
    }
    // Expert gradients that must not move: all of them when dy = 0 (the expert path then
    // carries exact zeros), the dead expert's always.
    for (int ex = 0; ex < kE; ++ex) {
      if (!(c.zero_dy || (c.dead_expert && ex == kE - 1))) continue;
      for (const char* t : {".fc1.weight", ".fc1.bias", ".fc2.weight", ".fc2.bias"}) {
        const std::string pn = kPrefix + ".experts." + std::to_string(ex) + t;
        check_identical("grad-unchanged " + pn, name, slice(g_gpu, store, pn), slice(g0, store, pn),
                        "this gradient receives nothing");
      }
    }
  }

  if (c.rerun) {
    // Same inputs, gradients reset: every output bit for bit.
    upload_into(be, d_grads, g0);
    SEQREC_CUDA_CHECK(cudaMemsetAsync(d_y.data(), 0xff, d_y.bytes(), be.stream()));
    SEQREC_CUDA_CHECK(cudaMemsetAsync(d_dx.data(), 0xff, d_dx.bytes(), be.stream()));
    gpu.forward(be, d_params.data(), d_x.data(), d_y.data(), n, vptr);
    const double aux2 = gpu.aux_loss();
    gpu.backward(be, d_params.data(), d_grads.data(), d_x.data(), d_dy.data(), d_dx.data(), n);
    check_identical("moe.y.deterministic", name, download(be, d_y), y_gpu, "must be 0");
    check_identical("moe.dx.deterministic", name, download(be, d_dx), dx_gpu, "must be 0");
    check_identical("moe.grads.deterministic", name, download(be, d_grads), g_gpu, "must be 0");
    check_identical("moe.aux.deterministic", name, std::vector<double>{aux2},
                    std::vector<double>{aux_gpu}, "must be 0");
    check_exact_doubles("moe.expert_shares.deterministic", name, gpu.take_expert_shares(),
                        shares_gpu);
  }

  if (c.d >= 1024 && kEmulated) skip("moe timing " + name, "host emulator");
  if (c.d >= 1024 && !kEmulated) {
    // Timing at the study's widths (informational), after a warm-up.
    cudaEvent_t a, b, cc;
    SEQREC_CUDA_CHECK(cudaEventCreate(&a));
    SEQREC_CUDA_CHECK(cudaEventCreate(&b));
    SEQREC_CUDA_CHECK(cudaEventCreate(&cc));
    float fwd = 0, bwd = 0;
    const int reps = 3;
    for (int i = 0; i < reps; ++i) {
      SEQREC_CUDA_CHECK(cudaEventRecord(a, be.stream()));
      gpu.forward(be, d_params.data(), d_x.data(), d_y.data(), n, vptr);
      SEQREC_CUDA_CHECK(cudaEventRecord(b, be.stream()));
      gpu.backward(be, d_params.data(), d_grads.data(), d_x.data(), d_dy.data(), d_dx.data(), n);
      SEQREC_CUDA_CHECK(cudaEventRecord(cc, be.stream()));
      SEQREC_CUDA_CHECK(cudaEventSynchronize(cc));
      float t1 = 0, t2 = 0;
      SEQREC_CUDA_CHECK(cudaEventElapsedTime(&t1, a, b));
      SEQREC_CUDA_CHECK(cudaEventElapsedTime(&t2, b, cc));
      fwd += t1;
      bwd += t2;
    }
    const double gflop = 2.0 * n * kK * D * c.f * 2 * 3 / 1e9;  // fwd 2 GEMMs + bwd 4
    std::printf(
        "INFO moe timing %s: forward %.3f ms, backward %.3f ms (%.0f GFLOP/s over the "
        "expert GEMMs)\n",
        name.c_str(), fwd / reps, bwd / reps, gflop / ((fwd + bwd) / reps * 1e-3));
    (void)gpu.take_expert_shares();
    SEQREC_CUDA_CHECK(cudaEventDestroy(a));
    SEQREC_CUDA_CHECK(cudaEventDestroy(b));
    SEQREC_CUDA_CHECK(cudaEventDestroy(cc));
  }
}

}  // namespace

int main() {
  return run_checks(20240917, [](Backend& be, Rng& rng) {
    std::vector<Case> cases;
    cases.push_back({"small", 300, 40, 56});
    {
      Case c{"no-mask", 37, 40, 56};
      c.mask = false;
      cases.push_back(c);
    }
    {
      Case c{"dead-expert", 300, 40, 56};
      c.dead_expert = true;
      cases.push_back(c);
    }
    {
      Case c{"aux-only(dy=0)", 300, 40, 56};
      c.zero_dy = true;
      c.alpha = 0.1;
      c.beta = 0.01;
      cases.push_back(c);
    }
    {
      Case c{"all-padding", 64, 40, 56};
      c.pad_frac = 1.0;
      c.rerun = false;
      cases.push_back(c);
    }
    cases.push_back({"medium", 1000, 256, 1024});
    cases.push_back({"study-width", 4096, 1024, 4096});
    if (kEmulated) {
      skip("moe study(gpu-only)", "host emulator (a GPU-only size: no CPU reference)");
    } else {
      Case c{"study(gpu-only)", 20480, 1024, 4096};
      c.cpu_full = false;
      cases.push_back(c);
    }
    for (const auto& c : cases) guarded("moe", case_name(c), [&] { test_case(be, rng, c); });
  });
}
