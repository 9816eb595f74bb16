// Self-test of the host emulator's cuBLASLt subset (cublaslt_emu.cpp): cublasLtMatmul against a
// naive double-precision triple loop, plus the status codes gemm_lt relies on. No framework:
// prints each failure and exits non-zero if there was one. Build (one line; no libcublasLt, the
// emulator provides the symbols):
//
//   g++ -std=c++20 -O2 -march=native -fopenmp -I/usr/local/cuda/include -I/usr/include/eigen3
//       -DEIGEN_NO_CUDA tests/emu/cublaslt_emu.cpp tests/emu/cublaslt_emu_selftest.cpp
//       -o /tmp/cublaslt_selftest && /tmp/cublaslt_selftest

#include <cublasLt.h>
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

int g_failures = 0;
int g_checks = 0;

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

void expect_status(cublasStatus_t got, cublasStatus_t want, const std::string& what) {
  expect(got == want, what + ": got " + cublasLtGetStatusString(got) + ", want " +
                          cublasLtGetStatusString(want));
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// Written into the ld padding of D, which must survive; exact in bf16 too.
constexpr float kPadding = 12288.0f;
constexpr double kUnit = 0x1p-24;  // fp32 unit roundoff

// A column-major (rows, cols) matrix with leading dimension ld, stored as fp32 or bf16.
struct Mat {
  cudaDataType_t type;
  std::int64_t rows, cols, ld;
  std::vector<float> f;
  std::vector<__nv_bfloat16> h;

  Mat(cudaDataType_t t, std::int64_t r, std::int64_t c, std::int64_t l, float fill)
      : type(t), rows(r), cols(c), ld(l) {
    const auto size = static_cast<std::size_t>(l * c);
    if (t == CUDA_R_32F) {
      f.assign(size, fill);
    } else {
      h.assign(size, __float2bfloat16_rn(fill));
    }
  }
  void* data() { return type == CUDA_R_32F ? static_cast<void*>(f.data()) : h.data(); }
  float at_raw(std::int64_t idx) const {
    return type == CUDA_R_32F ? f[idx] : __bfloat162float(h[idx]);
  }
  float at(std::int64_t i, std::int64_t j) const { return at_raw(i + j * ld); }
  void set(std::int64_t i, std::int64_t j, float v) {
    if (type == CUDA_R_32F) {
      f[i + j * ld] = v;
    } else {
      h[i + j * ld] = __float2bfloat16_rn(v);
    }
  }
  void randomize(std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (std::int64_t j = 0; j < cols; ++j) {
      for (std::int64_t i = 0; i < rows; ++i) set(i, j, u(rng));
    }
  }
};

// Descriptors released on every path.
struct Descs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Descs() {
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(d);
    cublasLtMatrixLayoutDestroy(c);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatmulDescDestroy(op);
  }
};

// The spacing of bf16 values (8 significant bits) around x > 0.
double bf16_ulp(double x) {
  int e = 0;
  std::frexp(x, &e);  // x = f · 2^e, f in [0.5, 1)
  return std::ldexp(1.0, e - 8);
}

const char* type_name(std::int32_t t) {
  return t == CUDA_R_32F ? "fp32" : t == CUDA_R_16BF ? "bf16" : "default";
}

struct Case {
  cudaDataType_t ab, cd;
  bool ta, tb;
  std::int64_t m, n, k;
  std::int64_t pad;  // ld = rows + pad for every operand (D gets pad + 1)
  float alpha, beta;
  bool in_place;           // C and D are the same buffer
  bool bias;               // CUBLASLT_EPILOGUE_BIAS
  std::int32_t bias_type;  // -1: leave CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE unset (D's type)

  std::string name() const {
    char buf[256];
    std::snprintf(
        buf, sizeof buf, "%s->%s %c%c m=%lld n=%lld k=%lld pad=%lld alpha=%g beta=%g%s%s%s",
        type_name(ab), type_name(cd), ta ? 'T' : 'N', tb ? 'T' : 'N', static_cast<long long>(m),
        static_cast<long long>(n), static_cast<long long>(k), static_cast<long long>(pad), alpha,
        beta, in_place ? " in-place" : "", bias ? " bias:" : "", bias ? type_name(bias_type) : "");
    return buf;
  }
};

// Runs one case the way gemm_lt does (heuristic, then cublasLtMatmul with its algorithm) and
// compares every element of D, and D's ld padding, against the naive reference.
void run_case(cublasLtHandle_t lt, const Case& t, std::mt19937& rng) {
  const std::string name = t.name();
  const std::int64_t a_rows = t.ta ? t.k : t.m, a_cols = t.ta ? t.m : t.k;
  const std::int64_t b_rows = t.tb ? t.n : t.k, b_cols = t.tb ? t.k : t.n;
  Mat A(t.ab, a_rows, a_cols, a_rows + t.pad, kNaN);  // NaN padding: must never be read
  Mat B(t.ab, b_rows, b_cols, b_rows + t.pad, kNaN);
  A.randomize(rng);
  B.randomize(rng);
  Mat C(t.cd, t.m, t.n, t.m + t.pad, kPadding);
  if (t.beta == 0.0f) {
    // beta = 0 must ignore C entirely, NaN included.
    for (std::int64_t j = 0; j < t.n; ++j) {
      for (std::int64_t i = 0; i < t.m; ++i) C.set(i, j, kNaN);
    }
  } else {
    C.randomize(rng);
  }
  const Mat C0 = C;  // C as it was, for the reference (D may overwrite it)
  Mat Dsep(t.cd, t.m, t.n, t.m + t.pad + 1, kPadding);
  Mat& D = t.in_place ? C : Dsep;

  const cudaDataType_t bias_elem =
      t.bias_type == -1 ? t.cd : static_cast<cudaDataType_t>(t.bias_type);
  Mat bias(bias_elem, t.m, 1, t.m, 0.0f);
  bias.randomize(rng);
  const void* bias_ptr = bias.data();

  Descs ds;
  expect_status(cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                CUBLAS_STATUS_SUCCESS, name + " desc");
  const cublasOperation_t opa = t.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = t.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  expect_status(
      cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)),
      CUBLAS_STATUS_SUCCESS, name + " TRANSA");
  expect_status(
      cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)),
      CUBLAS_STATUS_SUCCESS, name + " TRANSB");
  if (t.bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    expect_status(
        cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)),
        CUBLAS_STATUS_SUCCESS, name + " EPILOGUE");
    expect_status(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                 &bias_ptr, sizeof(bias_ptr)),
                  CUBLAS_STATUS_SUCCESS, name + " BIAS_POINTER");
    if (t.bias_type != -1) {
      const cudaDataType_t bt = bias_elem;
      expect_status(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt,
                                                   sizeof(bt)),
                    CUBLAS_STATUS_SUCCESS, name + " BIAS_DATA_TYPE");
    }
  }
  expect_status(cublasLtMatrixLayoutCreate(&ds.a, t.ab, A.rows, A.cols, A.ld),
                CUBLAS_STATUS_SUCCESS, name + " layout A");
  expect_status(cublasLtMatrixLayoutCreate(&ds.b, t.ab, B.rows, B.cols, B.ld),
                CUBLAS_STATUS_SUCCESS, name + " layout B");
  expect_status(cublasLtMatrixLayoutCreate(&ds.c, t.cd, C.rows, C.cols, C.ld),
                CUBLAS_STATUS_SUCCESS, name + " layout C");
  expect_status(cublasLtMatrixLayoutCreate(&ds.d, t.cd, D.rows, D.cols, D.ld),
                CUBLAS_STATUS_SUCCESS, name + " layout D");
  expect_status(cublasLtMatmulPreferenceCreate(&ds.pref), CUBLAS_STATUS_SUCCESS, name + " pref");
  const std::size_t ws = std::size_t{32} << 20;
  expect_status(cublasLtMatmulPreferenceSetAttribute(
                    ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
                CUBLAS_STATUS_SUCCESS, name + " pref workspace");

  cublasLtMatmulHeuristicResult_t heur{};
  int found = -1;
  expect_status(
      cublasLtMatmulAlgoGetHeuristic(lt, ds.op, ds.a, ds.b, ds.c, ds.d, ds.pref, 1, &heur, &found),
      CUBLAS_STATUS_SUCCESS, name + " heuristic");
  expect(found == 1 && heur.state == CUBLAS_STATUS_SUCCESS && heur.workspaceSize == 0,
         name + " heuristic result");
  cublasLtMatmulHeuristicResult_t check{};
  expect_status(cublasLtMatmulAlgoCheck(lt, ds.op, ds.a, ds.b, ds.c, ds.d, &heur.algo, &check),
                CUBLAS_STATUS_SUCCESS, name + " algo check");
  expect(check.state == CUBLAS_STATUS_SUCCESS && check.workspaceSize == 0,
         name + " algo check result");

  std::vector<std::byte> workspace(64);
  expect_status(
      cublasLtMatmul(lt, ds.op, &t.alpha, A.data(), ds.a, B.data(), ds.b, &t.beta, C.data(), ds.c,
                     D.data(), ds.d, &heur.algo, workspace.data(), workspace.size(), nullptr),
      CUBLAS_STATUS_SUCCESS, name + " matmul");

  // Reference in double; the tolerance is the worst-case fp32 error of a k-term dot product plus
  // the epilogue's few operations (γ_{k+4} · Σ|terms|); a bf16 D adds half a bf16 ulp of the fp32
  // value (at most |ref| + tol), so a truncating rounding would fail.
  int bad = 0;
  for (std::int64_t j = 0; j < t.n; ++j) {
    for (std::int64_t i = 0; i < t.m; ++i) {
      double sum = 0.0, mag = 0.0;
      for (std::int64_t l = 0; l < t.k; ++l) {
        const double x = t.ta ? A.at(l, i) : A.at(i, l);
        const double y = t.tb ? B.at(j, l) : B.at(l, j);
        sum += x * y;
        mag += std::fabs(x * y);
      }
      double ref = double{t.alpha} * sum;
      mag *= std::fabs(double{t.alpha});
      if (t.beta != 0.0f) {
        ref += double{t.beta} * C0.at(i, j);
        mag += std::fabs(double{t.beta} * C0.at(i, j));
      }
      if (t.bias) {
        ref += bias.at(i, 0);
        mag += std::fabs(bias.at(i, 0));
      }
      double tol = 2.0 * kUnit * static_cast<double>(t.k + 4) * mag + 1e-30;
      if (t.cd == CUDA_R_16BF) tol += 0.5 * bf16_ulp(std::fabs(ref) + tol);
      const double got = D.at(i, j);
      if (!(std::fabs(got - ref) <= tol)) {
        if (bad++ < 3) {
          std::fprintf(stderr, "  D(%lld,%lld) = %.9g, want %.9g (tol %.3g)\n",
                       static_cast<long long>(i), static_cast<long long>(j), got, ref, tol);
        }
      }
    }
    for (std::int64_t i = t.m; i < D.ld; ++i) {
      if (D.at(i, j) != kPadding) ++bad;
    }
  }
  expect(bad == 0, name + ": " + std::to_string(bad) + " wrong elements");
}

// Shape, type and attribute errors: the status codes gemm_lt's fallbacks and messages rely on.
void run_errors(cublasLtHandle_t lt) {
  const std::int64_t m = 6, n = 5, k = 4;
  Mat A(CUDA_R_32F, m, k, m, 1.0f), B(CUDA_R_32F, k, n, k, 1.0f), C(CUDA_R_32F, m, n, m, 0.0f);
  const float alpha = 1.0f, beta = 0.0f;
  Descs ds;
  cublasLtMatrixLayout_t bad_b = nullptr, bad_c = nullptr, short_ld = nullptr, bf16_b = nullptr;
  cublasLtMatmulDescCreate(&ds.op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  cublasLtMatrixLayoutCreate(&ds.a, CUDA_R_32F, m, k, m);
  cublasLtMatrixLayoutCreate(&ds.b, CUDA_R_32F, k, n, k);
  cublasLtMatrixLayoutCreate(&ds.c, CUDA_R_32F, m, n, m);
  cublasLtMatmulPreferenceCreate(&ds.pref);
  cublasLtMatrixLayoutCreate(&bad_b, CUDA_R_32F, k + 1, n, k + 1);  // inner dimension ≠ k
  cublasLtMatrixLayoutCreate(&bad_c, CUDA_R_32F, m, n + 1, m);      // C not (m, n)
  cublasLtMatrixLayoutCreate(&short_ld, CUDA_R_32F, k, n, k - 1);   // ld < rows
  cublasLtMatrixLayoutCreate(&bf16_b, CUDA_R_16BF, k, n, k);        // A fp32, B bf16

  auto matmul = [&](cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c) {
    return cublasLtMatmul(lt, ds.op, &alpha, A.data(), ds.a, B.data(), b, &beta, C.data(), c,
                          C.data(), c, nullptr, nullptr, 0, nullptr);
  };
  auto heuristic = [&](cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, int* found) {
    cublasLtMatmulHeuristicResult_t r{};
    return cublasLtMatmulAlgoGetHeuristic(lt, ds.op, ds.a, b, c, c, ds.pref, 1, &r, found);
  };
  int found = -1;
  expect_status(matmul(ds.b, ds.c), CUBLAS_STATUS_SUCCESS, "valid problem");
  expect_status(matmul(bad_b, ds.c), CUBLAS_STATUS_INVALID_VALUE, "inner dimension mismatch");
  expect_status(heuristic(bad_b, ds.c, &found), CUBLAS_STATUS_INVALID_VALUE,
                "heuristic, inner dimension mismatch");
  expect(found == 0, "heuristic, mismatch: no algorithm");
  expect_status(matmul(ds.b, bad_c), CUBLAS_STATUS_INVALID_VALUE, "C/D shape mismatch");
  expect_status(matmul(short_ld, ds.c), CUBLAS_STATUS_INVALID_VALUE, "ld < rows");
  expect_status(matmul(bf16_b, ds.c), CUBLAS_STATUS_NOT_SUPPORTED, "mixed A/B types");
  cublasLtMatmulHeuristicResult_t r{};
  expect_status(
      cublasLtMatmulAlgoGetHeuristic(lt, ds.op, ds.a, ds.b, ds.c, ds.c, ds.pref, 0, &r, &found),
      CUBLAS_STATUS_INVALID_VALUE, "heuristic, requestedAlgoCount 0");
  expect_status(cublasLtMatmulAlgoCheck(lt, ds.op, ds.a, bad_b, ds.c, ds.c, &r.algo, &r),
                CUBLAS_STATUS_INVALID_VALUE, "algo check, inner dimension mismatch");

  // Attributes: an unsupported epilogue, an unknown attribute, a wrong size, a null buffer.
  const cublasLtEpilogue_t relu = CUBLASLT_EPILOGUE_RELU_BIAS;
  expect_status(
      cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &relu, sizeof(relu)),
      CUBLAS_STATUS_NOT_SUPPORTED, "RELU_BIAS epilogue");
  const std::int64_t zero64 = 0;
  expect_status(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &zero64,
                                               sizeof(zero64)),
                CUBLAS_STATUS_INVALID_VALUE, "unemulated desc attribute");
  const cublasOperation_t opt = CUBLAS_OP_T;
  expect_status(
      cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, &opt, sizeof(opt) + 1),
      CUBLAS_STATUS_INVALID_VALUE, "TRANSA, wrong size");
  expect_status(cublasLtMatmulDescSetAttribute(ds.op, CUBLASLT_MATMUL_DESC_TRANSA, nullptr, 4),
                CUBLAS_STATUS_INVALID_VALUE, "TRANSA, null buffer");
  const std::uint32_t align = 4;
  expect_status(cublasLtMatmulPreferenceSetAttribute(
                    ds.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align, sizeof(align)),
                CUBLAS_STATUS_SUCCESS, "alignment preference");
  expect_status(cublasLtMatmulPreferenceSetAttribute(
                    ds.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &align, sizeof(align)),
                CUBLAS_STATUS_INVALID_VALUE, "workspace preference, wrong size");
  const std::int32_t row_major = CUBLASLT_ORDER_ROW;
  expect_status(cublasLtMatrixLayoutSetAttribute(ds.a, CUBLASLT_MATRIX_LAYOUT_ORDER, &row_major,
                                                 sizeof(row_major)),
                CUBLAS_STATUS_NOT_SUPPORTED, "row-major order");
  // The descriptor is unchanged by the refusals: the problem still runs.
  expect_status(matmul(ds.b, ds.c), CUBLAS_STATUS_SUCCESS, "valid problem after refusals");

  expect(std::strcmp(cublasLtGetStatusString(CUBLAS_STATUS_INVALID_VALUE),
                     "CUBLAS_STATUS_INVALID_VALUE") == 0,
         "status string");
  cublasLtMatrixLayoutDestroy(bf16_b);
  cublasLtMatrixLayoutDestroy(short_ld);
  cublasLtMatrixLayoutDestroy(bad_c);
  cublasLtMatrixLayoutDestroy(bad_b);
}

}  // namespace

int main() {
  cublasLtHandle_t lt = nullptr;
  expect_status(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS, "create");
  std::mt19937 rng(20240611);

  const cudaDataType_t F = CUDA_R_32F, H = CUDA_R_16BF;
  std::vector<Case> cases;
  for (cudaDataType_t ab : {F, H}) {
    for (int tr = 0; tr < 4; ++tr) {
      const bool ta = (tr & 1) != 0, tb = (tr & 2) != 0;
      // Non-square, ld > rows, beta 0 over a NaN C (separate D).
      cases.push_back({ab, F, ta, tb, 37, 29, 53, 3, 0.75f, 0.0f, false, false, -1});
      // beta 0, in place over NaN.
      cases.push_back({ab, F, ta, tb, 19, 41, 7, 1, 1.0f, 0.0f, true, false, -1});
      // beta 1 in place (C == D): gradient accumulation.
      cases.push_back({ab, F, ta, tb, 33, 17, 65, 2, 1.0f, 1.0f, true, false, -1});
      // Bias epilogue with a separate C and a general beta.
      cases.push_back({ab, F, ta, tb, 23, 31, 45, 5, -1.5f, 0.5f, false, true, -1});
    }
    // Bias epilogue in place, and with an explicit bias type.
    cases.push_back({ab, F, false, true, 40, 24, 64, 0, 1.0f, 1.0f, true, true, CUDA_R_32F});
    cases.push_back({ab, F, true, false, 40, 24, 64, 4, 1.0f, 0.0f, false, true, CUDA_R_16BF});
    // Large enough for Eigen's blocked, multi-threaded GEMM (k beyond one cache panel).
    cases.push_back({ab, F, false, true, 300, 257, 1500, 7, 1.0f, 0.0f, false, true, -1});
    cases.push_back({ab, F, true, false, 129, 300, 1100, 0, 0.5f, 1.0f, true, false, -1});
    // k = 0: D = beta · C (+ bias).
    cases.push_back({ab, F, false, false, 8, 9, 0, 1, 1.0f, 0.5f, false, true, -1});
  }
  // bf16 results (bf16 inputs only, as in cuBLASLt), rounded to nearest even once.
  for (int tr = 0; tr < 4; ++tr) {
    const bool ta = (tr & 1) != 0, tb = (tr & 2) != 0;
    cases.push_back({H, H, ta, tb, 21, 35, 70, 3, 1.0f, 0.0f, false, false, -1});
    cases.push_back({H, H, ta, tb, 21, 35, 70, 3, 1.0f, 1.0f, true, true, -1});
    cases.push_back({H, H, ta, tb, 21, 35, 70, 3, 2.0f, -1.0f, false, true, CUDA_R_32F});
  }
  for (const Case& c : cases) run_case(lt, c, rng);
  run_errors(lt);

  expect_status(cublasLtDestroy(lt), CUBLAS_STATUS_SUCCESS, "destroy");
  std::printf("cublaslt_emu_selftest: %d cases, %d checks, %d failures\n",
              static_cast<int>(cases.size()), g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
