// GPU timings of every CUDA op, forward + backward, at the realistic shapes the tests use and at
// the study's configuration (N = 1024·20 tokens, D = 1024, I = 16859). Plain CUDA, no Google
// Benchmark: each case runs 3 warm-up iterations, then 20 timed ones (a cudaEvent pair around
// each), and reports the median. Prints one markdown table: op, shape, ms, achieved GB/s or
// TFLOP/s, and the fraction of an H100 SXM's peak. Peaks used: 3.35 TB/s HBM3 for memory-bound
// ops, 67 TFLOP/s fp32 (non-tensor) for GEMM-bound ones — our GEMMs run with fp32 compute (no
// TF32), so the fp32 peak is the honest bar; the tf32 dense peak (495 TFLOP/s) is not used.
// Byte counts are the compulsory traffic (each tensor read or written once); flop counts are the
// useful ones (causal attention counts half the L×L products). The bf16 rows (the training
// step's precision in --bf16: bf16 operands, fp32 accumulation and output) are shares of the
// dense bf16 tensor peak, 989 TFLOP/s: the study step's FFN GEMM, the three GEMMs of one
// cross-entropy chunk on their own, and the whole bf16 cross-entropy, whose time beyond its
// GEMMs is the gather, softmax and scatter kernels. Exits 77 when no GPU answers.
//
// --tiny runs every case at a small shape, once timed: the code of every row on the host
// emulator (ctest label cuda-emu), so a GPU session does not find it broken; its timings mean
// nothing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "seqrec/backend/cuda.cuh"
#include "seqrec/backend/gemm_cuda.cuh"
#include "seqrec/core/random.hpp"
#include "seqrec/ops/attention/attention_cuda.cuh"
#include "seqrec/ops/cross_entropy/cross_entropy_cuda.cuh"
#include "seqrec/ops/embedding/embedding_cuda.cuh"
#include "seqrec/ops/rmsnorm/rmsnorm_cuda.cuh"
#include "seqrec/train/adamw_cuda.cuh"

namespace {

using seqrec::Rng;
using seqrec::cuda::Backend;
using seqrec::cuda::DeviceBuffer;

constexpr double kPeakBytes = 3.35e12;  // H100 SXM HBM3, bytes/s
constexpr double kPeakFp32 = 67e12;     // H100 SXM fp32 non-tensor, flop/s
constexpr double kPeakBf16 = 989e12;    // H100 SXM dense bf16 tensor, flop/s
int kWarmup = 3, kReps = 20;            // --tiny: 1 and 2

struct CeShape {
  std::int64_t rows, dim, num_items;
  std::int32_t first_item;
  std::int64_t chunk_rows;
};
struct AttnShape {
  std::int64_t batch, length, dim, heads;
};
struct AdamOpts {
  double beta1 = 0.9, beta2 = 0.98, eps = 1e-8, weight_decay = 0.1;
};

/// Median milliseconds of f() over kReps runs after kWarmup, timed with events on be's stream.
double time_ms(Backend& be, const std::function<void()>& f) {
  for (int i = 0; i < kWarmup; ++i) f();
  be.synchronize();
  cudaEvent_t a, b;
  SEQREC_CUDA_CHECK(cudaEventCreate(&a));
  SEQREC_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms(kReps);
  for (int i = 0; i < kReps; ++i) {
    SEQREC_CUDA_CHECK(cudaEventRecord(a, be.stream()));
    f();
    SEQREC_CUDA_CHECK(cudaEventRecord(b, be.stream()));
    SEQREC_CUDA_CHECK(cudaEventSynchronize(b));
    SEQREC_CUDA_CHECK(cudaEventElapsedTime(&ms[i], a, b));
  }
  SEQREC_CUDA_CHECK(cudaEventDestroy(a));
  SEQREC_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return 0.5 * (ms[kReps / 2 - 1] + ms[kReps / 2]);
}

template <typename T>
DeviceBuffer<T> upload(Backend& be, const std::vector<T>& h) {
  auto d = be.buffer<T>(h.size());
  SEQREC_CUDA_CHECK(
      cudaMemcpyAsync(d.data(), h.data(), d.bytes(), cudaMemcpyHostToDevice, be.stream()));
  be.synchronize();
  return d;
}

/// Uniform in [−a, a): cheap, and the values do not change the timings.
DeviceBuffer<float> random(Backend& be, Rng& rng, std::int64_t n, double a = 1.0) {
  std::vector<float> h(static_cast<std::size_t>(n));
  for (auto& x : h) x = float(a * (2 * rng.uniform() - 1));
  return upload(be, h);
}

void row(const std::string& op, const std::string& shape, double ms, double amount, bool flops,
         double flop_peak = kPeakFp32) {
  const double rate = amount / (ms * 1e-3);
  const double pct = 100.0 * rate / (flops ? flop_peak : kPeakBytes);
  char buf[128];
  if (flops)
    std::snprintf(buf, sizeof buf, "%.2f TFLOP/s", rate * 1e-12);
  else
    std::snprintf(buf, sizeof buf, "%.0f GB/s", rate * 1e-9);
  std::printf("| %s | %s | %.3f | %s | %.1f%% |\n", op.c_str(), shape.c_str(), ms, buf, pct);
  std::fflush(stdout);
}

void bench_rmsnorm(Backend& be, Rng& rng, std::int64_t n, std::int64_t d) {
  auto x = random(be, rng, n * d), g = random(be, rng, d), dy = random(be, rng, n * d);
  auto y = be.buffer<float>(n * d), rstd = be.buffer<float>(n), dx = be.buffer<float>(n * d),
       dg = be.buffer<float>(d);
  SEQREC_CUDA_CHECK(cudaMemsetAsync(dg.data(), 0, dg.bytes(), be.stream()));
  const double ms = time_ms(be, [&] {
    seqrec::cuda::rmsnorm_forward(be, x.data(), g.data(), y.data(), rstd.data(), n, d, 1e-6f);
    seqrec::cuda::rmsnorm_backward(be, x.data(), g.data(), rstd.data(), dy.data(), dx.data(),
                                   dg.data(), n, d);
  });
  // fwd reads x, writes y; bwd reads x, dy, writes dx.
  row("rmsnorm fwd+bwd", "N=" + std::to_string(n) + " D=" + std::to_string(d), ms,
      5.0 * n * d * sizeof(float), false);
}

void bench_embedding(Backend& be, Rng& rng, std::int64_t n, std::int64_t d, std::int64_t vocab) {
  std::vector<std::int32_t> tok(static_cast<std::size_t>(n));
  for (auto& t : tok) t = rng.uniform() < 0.25 ? 0 : std::int32_t(rng.below(vocab));
  auto dtok = upload(be, tok);
  auto table = random(be, rng, vocab * d), ddx = random(be, rng, n * d);
  auto x = be.buffer<float>(n * d), dtable = be.buffer<float>(vocab * d);
  SEQREC_CUDA_CHECK(cudaMemsetAsync(dtable.data(), 0, dtable.bytes(), be.stream()));
  const float scale = std::sqrt(float(d));
  const double ms = time_ms(be, [&] {
    seqrec::cuda::embedding_forward(be, dtok.data(), table.data(), x.data(), n, d, scale);
    seqrec::cuda::embedding_backward(be, dtok.data(), ddx.data(), dtable.data(), n, d, vocab,
                                     scale);
  });
  // fwd gathers and writes N·D; bwd reads dx (N·D); table rows and the sort are not counted.
  row("embedding fwd+bwd",
      "N=" + std::to_string(n) + " D=" + std::to_string(d) + " V=" + std::to_string(vocab) +
          " (25% pad)",
      ms, 3.0 * n * d * sizeof(float), false);
}

/// A (rows, cols) bf16 matrix with leading dimension bf16_ld(cols), uniform in [−a, a).
DeviceBuffer<__nv_bfloat16> random_bf16(Backend& be, Rng& rng, std::int64_t rows, std::int64_t cols,
                                        double a = 1.0) {
  auto f = random(be, rng, rows * cols, a);
  auto b = be.buffer<__nv_bfloat16>(static_cast<std::size_t>(rows * seqrec::cuda::bf16_ld(cols)));
  seqrec::cuda::cast_to_bf16(be, f.data(), rows, cols, cols, b.data(), seqrec::cuda::bf16_ld(cols));
  be.synchronize();
  return b;
}

/// One bf16 gemm_lt, C (M, N) fp32 = op(A) · op(B) + beta · C, row-major, as the model calls it;
/// bf16_c: C in bf16 (leading dimension bf16_ld(N)) as gemm_rm_bf16_out writes it, beta 0.
void bench_gemm_bf16(Backend& be, Rng& rng, const std::string& what, bool ta, bool tb,
                     std::int64_t M, std::int64_t N, std::int64_t K, float beta,
                     bool bf16_c = false) {
  using seqrec::cuda::bf16_ld;
  const std::int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
  auto a = random_bf16(be, rng, ar, ac), b = random_bf16(be, rng, br, bc);
  const std::size_t c_bytes = static_cast<std::size_t>(M * (bf16_c ? 2 * bf16_ld(N) : 4 * N));
  auto c = be.buffer<std::byte>(c_bytes);
  SEQREC_CUDA_CHECK(cudaMemsetAsync(c.data(), 0, c.bytes(), be.stream()));
  const double ms = time_ms(be, [&] {
    seqrec::cuda::gemm_lt(be, CUDA_R_16BF, ta, tb, M, N, K, 1.f, a.data(), bf16_ld(ac), b.data(),
                          bf16_ld(bc), bf16_c ? 0.f : beta, c.data(), bf16_c ? bf16_ld(N) : N,
                          nullptr, bf16_c ? CUDA_R_16BF : CUDA_R_32F);
  });
  row("gemm bf16: " + what,
      "M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
          (ta ? " Aᵀ" : "") + (tb ? " Bᵀ" : "") + (beta != 0.f && !bf16_c ? " beta=1" : "") +
          (bf16_c ? " C bf16" : ""),
      ms, 2.0 * M * N * K, true, kPeakBf16);
}

/// The fused cross-entropy, forward + backward; with bf16, in the backend's bf16 mode (the
/// training step's in --bf16), as a share of the bf16 peak: with bf16 logits (the default since
/// the tenth session), or fp32 ones with fp32_logits (bf16 GEMM outputs off).
void bench_cross_entropy(Backend& be, Rng& rng, std::int64_t n, std::int64_t d, std::int64_t items,
                         std::int64_t chunk, bool bf16 = false, bool fp32_logits = false) {
  std::vector<std::int32_t> tgt(static_cast<std::size_t>(n));
  for (auto& t : tgt) t = std::int32_t(4 + rng.below(items));
  auto h = random(be, rng, n * d), w = random(be, rng, items * d, 1.0 / std::sqrt(double(d)));
  auto dh = be.buffer<float>(n * d), dw = be.buffer<float>(items * d);
  SEQREC_CUDA_CHECK(cudaMemsetAsync(dw.data(), 0, dw.bytes(), be.stream()));
  CeShape s{n, d, items, 4, chunk};
  std::int64_t count = 0;
  struct Fp32Again {  // the other benchmarks run in fp32 mode (defaults), also after a throw
    Backend& be;
    ~Fp32Again() {
      be.set_bf16(false);
      be.set_bf16_gemm_outputs(true);
    }
  } fp32_again{be};
  be.set_bf16(bf16);
  be.set_bf16_gemm_outputs(!fp32_logits);
  const double ms = time_ms(be, [&] {
    (void)seqrec::cuda::cross_entropy_forward_backward(be, s, h.data(), tgt.data(), w.data(),
                                                       dh.data(), dw.data(), 1.f / n, &count);
  });
  // Three GEMMs of N·I·D multiply-adds (logits, dh, dW).
  row(!bf16         ? "cross_entropy fwd+bwd"
      : fp32_logits ? "cross_entropy fwd+bwd bf16, fp32 logits"
                    : "cross_entropy fwd+bwd bf16",
      "N=" + std::to_string(n) + " D=" + std::to_string(d) + " I=" + std::to_string(items) +
          " chunk=" + std::to_string(chunk),
      ms, 6.0 * n * items * d, true, bf16 ? kPeakBf16 : kPeakFp32);
}

void bench_attention(Backend& be, Rng& rng, std::int64_t B, std::int64_t L, std::int64_t D,
                     std::int64_t H) {
  std::vector<std::int32_t> tok(static_cast<std::size_t>(B * L));
  for (std::int64_t b = 0; b < B; ++b) {
    const std::int64_t k = std::int64_t(rng.below(std::uint64_t(L)));
    for (std::int64_t i = 0; i < L; ++i) tok[b * L + i] = i < k ? 0 : 1 + std::int32_t(i);
  }
  auto dtok = upload(be, tok);
  auto qkv = random(be, rng, B * L * 3 * D), dout = random(be, rng, B * L * D);
  auto out = be.buffer<float>(B * L * D), probs = be.buffer<float>(B * H * L * L),
       dqkv = be.buffer<float>(B * L * 3 * D);
  AttnShape s{B, L, D, H};
  const double ms = time_ms(be, [&] {
    seqrec::cuda::attention_forward(be, s, qkv.data(), dtok.data(), 0, out.data(), probs.data());
    seqrec::cuda::attention_backward(be, s, qkv.data(), probs.data(), dout.data(), dqkv.data());
  });
  // Causal: fwd QKᵀ, PV and bwd dP, dV, dQ, dK each ≈ B·H·(L²/2)·dh multiply-adds.
  row("attention fwd+bwd",
      "B=" + std::to_string(B) + " L=" + std::to_string(L) + " D=" + std::to_string(D) +
          " H=" + std::to_string(H),
      ms, 6.0 * B * H * L * L * (D / H), true);
}

/// The study's training step's attention: packed rows (each sequence's non-padding positions,
/// left padding uniform in [0, L)), RoPE fused. Reported as bandwidth over the compulsory traffic
/// (qkv read and context written forward; qkv and dO read, dqkv written backward), since the
/// kernel is bound by memory, not by its few multiply-adds.
/// Attention as the model's training step runs it: packed rows, RoPE fused; bf16: qkv, d(out)
/// and d(qkv) in bf16 (16-byte rows), as with the backend's bf16 GEMM outputs.
void bench_attention_packed(Backend& be, Rng& rng, std::int64_t B, std::int64_t L, std::int64_t D,
                            std::int64_t H, bool bf16 = false) {
  std::vector<std::int32_t> seg(static_cast<std::size_t>(B + 1)), rows, ptok;
  for (std::int64_t b = 0; b < B; ++b) {
    seg[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(rows.size());
    const std::int64_t k = std::int64_t(rng.below(std::uint64_t(L)));
    for (std::int64_t i = k; i < L; ++i) {
      rows.push_back(static_cast<std::int32_t>(b * L + i));
      ptok.push_back(1 + static_cast<std::int32_t>(i));
    }
  }
  seg[static_cast<std::size_t>(B)] = static_cast<std::int32_t>(rows.size());
  const auto M = static_cast<std::int64_t>(rows.size());
  auto dseg = upload(be, seg), drows = upload(be, rows), dtok = upload(be, ptok);
  auto probs = be.buffer<float>(B * H * L * L);
  seqrec::cuda::RopeTable rope;
  rope.ensure(be, L, D / H, 10000.0);
  AttnShape s{B, L, D, H};
  double ms = 0, bytes = 0;
  if (bf16) {
    using seqrec::cuda::bf16_ld;
    const std::int64_t ldq = bf16_ld(3 * D), ldd = bf16_ld(D);
    auto qkv = random_bf16(be, rng, M, 3 * D), dout = random_bf16(be, rng, M, D);
    auto out = be.buffer<__nv_bfloat16>(M * ldd), dqkv = be.buffer<__nv_bfloat16>(M * ldq);
    ms = time_ms(be, [&] {
      seqrec::cuda::attention_forward(be, s, qkv.data(), dtok.data(), 0, out.data(), probs.data(),
                                      ldd, dseg.data(), &rope, drows.data(), ldq);
      seqrec::cuda::attention_backward(be, s, qkv.data(), probs.data(), dout.data(), dqkv.data(),
                                       dseg.data(), &rope, drows.data(), ldq, ldd, ldq);
    });
    bytes = 2.0 * M * (4 * D + 7 * D);
  } else {
    auto qkv = random(be, rng, M * 3 * D), dout = random(be, rng, M * D);
    auto out = be.buffer<float>(M * D), dqkv = be.buffer<float>(M * 3 * D);
    ms = time_ms(be, [&] {
      seqrec::cuda::attention_forward(be, s, qkv.data(), dtok.data(), 0, out.data(), probs.data(),
                                      0, dseg.data(), &rope, drows.data());
      seqrec::cuda::attention_backward(be, s, qkv.data(), probs.data(), dout.data(), dqkv.data(),
                                       dseg.data(), &rope, drows.data());
    });
    bytes = 4.0 * M * (4 * D + 7 * D);
  }
  // Compulsory traffic: qkv read twice, out and dout once, dqkv written (probs left out).
  row(bf16 ? "attention fwd+bwd, packed, RoPE fused, bf16 qkv/grads"
           : "attention fwd+bwd, packed, RoPE fused",
      "B=" + std::to_string(B) + " L=" + std::to_string(L) + " D=" + std::to_string(D) +
          " H=" + std::to_string(H) + " rows=" + std::to_string(M),
      ms, bytes, false);
}

void bench_adamw(Backend& be, Rng& rng, std::int64_t n) {
  auto p = random(be, rng, n), g = random(be, rng, n, 1e-2), m = random(be, rng, n, 1e-3);
  auto v = be.buffer<float>(n);  // second moment starts at 0, as in training
  SEQREC_CUDA_CHECK(cudaMemsetAsync(v.data(), 0, v.bytes(), be.stream()));
  std::vector<seqrec::cuda::AdamWSegment> segs = {{0, n / 2, true, false},
                                                  {n / 2, n - n / 2, false, false}};
  seqrec::cuda::AdamWPlan plan(be, segs);
  AdamOpts o;
  std::int64_t step = 1;
  const double ms = time_ms(be, [&] {
    // As the model's optimiser step: the norm, then AdamW applying the clip factor on read.
    const double norm = seqrec::cuda::grad_norm(be, plan, g.data());
    seqrec::cuda::adamw_step(be, plan, p.data(), g.data(), m.data(), v.data(), o, 1e-3, step++,
                             seqrec::cuda::clip_factor(norm, 1.0));
  });
  // norm reads g; step reads p, g, m, v and writes p, m, v.
  row("grad_norm + adamw step", "params=" + std::to_string(n), ms, 8.0 * n * sizeof(float), false);
}

template <typename F>
void guarded(const std::string& what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    std::printf("| %s | FAILED: %s | | | |\n", what.c_str(), e.what());
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool tiny = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tiny") {
      tiny = true;
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: gpu_bench [--tiny]\n  --tiny  small shapes, one timed run each (a "
          "smoke test of the benchmark's code; timings meaningless)\n");
      return 0;
    } else {
      std::fprintf(stderr, "gpu_bench: unknown argument '%s' (try --help)\n", a.c_str());
      return 2;
    }
  }
  if (tiny) {
    kWarmup = 1;
    kReps = 2;
  }
  std::string why;
  if (seqrec::cuda::cuda_device_available(&why) == 0) {
    std::printf("no CUDA device (cudaGetDeviceCount: %s), skipping\n", why.c_str());
    return 77;
  }
  try {
    Backend be(0);
    cudaDeviceProp prop{};
    SEQREC_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf(
        "device: %s; median of %d runs after %d warm-up; %% of H100 SXM peak: %.2f TB/s "
        "HBM or %.0f TFLOP/s fp32 non-tensor (GEMMs use fp32 compute, no TF32); bf16 rows: "
        "989 TFLOP/s dense bf16\n\n",
        prop.name, kReps, kWarmup, kPeakBytes * 1e-12, kPeakFp32 * 1e-12);
    std::printf("| op | shape | ms | achieved | %% of peak |\n|---|---|---|---|---|\n");
    Rng rng(7);
    if (tiny) {
      guarded("rmsnorm", [&] { bench_rmsnorm(be, rng, 67, 48); });
      guarded("embedding", [&] { bench_embedding(be, rng, 67, 48, 101); });
      guarded("cross_entropy", [&] { bench_cross_entropy(be, rng, 67, 32, 1001, 16); });
      guarded("attention", [&] { bench_attention(be, rng, 3, 20, 64, 2); });
      guarded("attention", [&] { bench_attention_packed(be, rng, 5, 20, 64, 2); });
      guarded("attention", [&] { bench_attention_packed(be, rng, 5, 20, 64, 2, true); });
      guarded("adamw", [&] { bench_adamw(be, rng, 5001); });
      guarded("gemm bf16",
              [&] { bench_gemm_bf16(be, rng, "FFN up", false, true, 67, 128, 64, 0.f); });
      guarded("gemm bf16 C", [&] {
        bench_gemm_bf16(be, rng, "FFN up, C bf16", false, true, 67, 128, 64, 0.f, true);
      });
      guarded("gemm bf16",
              [&] { bench_gemm_bf16(be, rng, "CE dW", true, false, 1001, 64, 40, 1.f); });
      guarded("cross_entropy bf16", [&] { bench_cross_entropy(be, rng, 67, 32, 1001, 16, true); });
      guarded("cross_entropy bf16, fp32 logits",
              [&] { bench_cross_entropy(be, rng, 67, 32, 1001, 16, true, true); });
      return 0;
    }
    guarded("rmsnorm", [&] { bench_rmsnorm(be, rng, 25600, 64); });
    guarded("rmsnorm", [&] { bench_rmsnorm(be, rng, 25600, 1024); });
    guarded("rmsnorm", [&] { bench_rmsnorm(be, rng, 20480, 1024); });
    guarded("embedding", [&] { bench_embedding(be, rng, 25600, 64, 3710); });
    guarded("embedding", [&] { bench_embedding(be, rng, 20480, 1024, 16863); });
    guarded("cross_entropy", [&] { bench_cross_entropy(be, rng, 4096, 64, 3706, 1024); });
    guarded("cross_entropy", [&] { bench_cross_entropy(be, rng, 4096, 64, 16859, 1024); });
    guarded("cross_entropy", [&] { bench_cross_entropy(be, rng, 20480, 1024, 16859, 1024); });
    guarded("attention", [&] { bench_attention(be, rng, 64, 200, 64, 1); });
    guarded("attention", [&] { bench_attention(be, rng, 256, 20, 256, 8); });
    guarded("attention", [&] { bench_attention(be, rng, 1024, 20, 1024, 8); });
    guarded("attention", [&] { bench_attention_packed(be, rng, 1024, 20, 1024, 8); });
    guarded("attention", [&] { bench_attention_packed(be, rng, 1024, 20, 1024, 8, true); });
    // Study-sized store: the item table (16863 × 1024) plus two blocks of 12·D² weights.
    guarded("adamw", [&] { bench_adamw(be, rng, 16863LL * 1024 + 2 * 12LL * 1024 * 1024); });
    // bf16 at the study step's sizes: ~9188 scored rows (synthetic batches of gpu_train_bench),
    // loss chunks of 2^26 / 16859 = 3980 rows.
    guarded("gemm bf16",
            [&] { bench_gemm_bf16(be, rng, "FFN up", false, true, 9188, 4096, 1024, 0.f); });
    // The bf16 outputs of the ninth session: fc1 (FFN up), d(act) (FFN down's dX) and qkv.
    guarded("gemm bf16 C", [&] {
      bench_gemm_bf16(be, rng, "FFN up, C bf16", false, true, 9188, 4096, 1024, 0.f, true);
    });
    guarded("gemm bf16",
            [&] { bench_gemm_bf16(be, rng, "FFN d(act)", false, false, 9188, 4096, 1024, 0.f); });
    guarded("gemm bf16 C", [&] {
      bench_gemm_bf16(be, rng, "FFN d(act), C bf16", false, false, 9188, 4096, 1024, 0.f, true);
    });
    guarded("gemm bf16",
            [&] { bench_gemm_bf16(be, rng, "qkv", false, true, 9188, 3072, 1024, 0.f); });
    guarded("gemm bf16 C", [&] {
      bench_gemm_bf16(be, rng, "qkv, C bf16", false, true, 9188, 3072, 1024, 0.f, true);
    });
    guarded("gemm bf16", [&] {
      bench_gemm_bf16(be, rng, "FFN up, M=9216", false, true, 9216, 4096, 1024, 0.f);
    });
    guarded("gemm bf16",
            [&] { bench_gemm_bf16(be, rng, "CE logits", false, true, 3980, 16859, 1024, 0.f); });
    guarded("gemm bf16",
            [&] { bench_gemm_bf16(be, rng, "CE dH", false, false, 3980, 1024, 16859, 0.f); });
    guarded("gemm bf16",
            [&] { bench_gemm_bf16(be, rng, "CE dW", true, false, 16859, 1024, 3980, 1.f); });
    guarded("cross_entropy bf16",
            [&] { bench_cross_entropy(be, rng, 9188, 1024, 16859, 3980, true); });
    // The chunks the CUDA model takes: since the eleventh session one of all 9188 rows with bf16
    // logits (Backend::loss_chunk_elems 2^27 fp32 logits' worth of memory: 15922 bf16 rows), in
    // the ninth and tenth two (7961 rows, balanced to two of 4594, as with fp32 logits still);
    // and the ones the trainers took before those (ModelShape's CPU budget 2^22: 248 rows).
    guarded("cross_entropy bf16",
            [&] { bench_cross_entropy(be, rng, 9188, 1024, 16859, 15922, true); });
    guarded("cross_entropy bf16",
            [&] { bench_cross_entropy(be, rng, 9188, 1024, 16859, 7961, true); });
    guarded("cross_entropy bf16",
            [&] { bench_cross_entropy(be, rng, 9188, 1024, 16859, 248, true); });
    // The tenth session's bf16 logits against the fp32 logits before them, at the model's chunk.
    guarded("cross_entropy bf16, fp32 logits",
            [&] { bench_cross_entropy(be, rng, 9188, 1024, 16859, 7961, true, true); });
  } catch (const std::exception& e) {
    std::printf("bench setup failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
