// Host emulator: the cuBLASLt subset that seqrec's gemm_lt (include/seqrec/backend/cuda.cuh)
// uses, run on the CPU.
//
// In the emulator "device" memory is ordinary host memory, so cublasLtMatmul reads and writes the
// operands directly and computes D = alpha · op(A) · op(B) + beta · C (+ bias) with Eigen's fp32
// GEMM; bf16 operands are widened to float first (exact), so products are exact and accumulation
// is fp32, as on the tensor cores. Everything is synchronous: the stream is ignored.
//
// Not emulated: the tensor cores' accumulation order (results match a GPU to fp32 rounding, not
// bit for bit), algorithm selection (the heuristic answers up to three placeholder algorithms that
// need no workspace and compute alike; the algorithm and workspace passed to cublasLtMatmul are
// ignored), batched layouts, orders other than column-major, epilogues other than DEFAULT and
// BIAS, compute types other than fp32 (TF32 and the other "fast" modes would round differently),
// vector pointer modes, and the attributes gemm_lt does not set beyond the basic ones (refused,
// so that a new use shows up as an error instead of silently computing something else).

#include <cublasLt.h>
#include <cuda_bf16.h>

// Eigen's headers trip -Wall -Wextra (unused variables; GCC 12's (maybe-)uninitialized on the
// deliberately undefined values of the AVX-512 intrinsics Eigen includes): silenced for these
// headers only, so that the warnings stay quiet whether Eigen comes in by -I or -isystem.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <Eigen/Dense>
#pragma GCC diagnostic pop

#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

namespace {

using Index = Eigen::Index;
using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;  // column-major
using ConstMapF = Eigen::Map<const MatrixF, 0, Eigen::OuterStride<>>;
using MapF = Eigen::Map<MatrixF, 0, Eigen::OuterStride<>>;

// The opaque handle types of cublasLt.h are pointers to structs we never look into: each of our
// objects is a separate heap object, and its pointer travels reinterpret_cast to the API's type.
struct Handle {
  int unused = 0;
};

struct MatmulDesc {
  cublasComputeType_t compute_type;
  cudaDataType_t scale_type;
  std::int32_t pointer_mode = CUBLASLT_POINTER_MODE_HOST;
  cublasOperation_t trans_a = CUBLAS_OP_N;
  cublasOperation_t trans_b = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  std::int32_t bias_type = -1;  // -1: the type of D, as in cuBLASLt
};

struct Layout {
  cudaDataType_t type;
  std::uint64_t rows, cols;
  std::int64_t ld;
};

// Stored so that the setters accept what cuBLASLt accepts; only the workspace limit is ever
// consulted (the emulated algorithm needs none, so no limit excludes it).
struct Preference {
  std::uint32_t search_mode = CUBLASLT_SEARCH_BEST_FIT;
  std::uint64_t max_workspace_bytes = 0;
  std::uint32_t reduction_scheme_mask = CUBLASLT_REDUCTION_SCHEME_MASK;
  std::uint32_t min_alignment[4] = {256, 256, 256, 256};  // A, B, C, D
  float max_waves_count = 0.0f;
  std::uint64_t impl_mask = ~std::uint64_t{0};
};

template <typename Obj, typename Api>
Obj* get(Api* p) {
  return reinterpret_cast<Obj*>(p);
}

template <typename Api, typename Obj, typename... Args>
cublasStatus_t create(Api** out, Args&&... args) {
  if (out == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  Obj* obj = new (std::nothrow) Obj{args...};
  if (obj == nullptr) return CUBLAS_STATUS_ALLOC_FAILED;
  *out = reinterpret_cast<Api*>(obj);
  return CUBLAS_STATUS_SUCCESS;
}

template <typename Obj, typename Api>
cublasStatus_t destroy(Api* p) {
  delete get<Obj>(p);  // cuBLASLt's destroyers accept null too
  return CUBLAS_STATUS_SUCCESS;
}

// An attribute value from the setters' (buf, sizeInBytes): cuBLASLt refuses a null buffer or a
// size other than the attribute's own.
template <typename T>
bool read_attr(const void* buf, std::size_t size, T& out) {
  if (buf == nullptr || size != sizeof(T)) return false;
  std::memcpy(&out, buf, sizeof(T));
  return true;
}

bool supported_type(std::int64_t t) { return t == CUDA_R_32F || t == CUDA_R_16BF; }

// The checked problem: D (m, n) = op(A) (m, k) · op(B) (k, n).
struct Problem {
  Index m, n, k;
  bool trans_a, trans_b;
};

// The checks shared by cublasLtMatmulAlgoGetHeuristic, cublasLtMatmulAlgoCheck and
// cublasLtMatmul, which look at the descriptors only (no data pointers). Types and modes the
// emulator does not compute are NOT_SUPPORTED; inconsistent shapes are INVALID_VALUE.
cublasStatus_t check_problem(const MatmulDesc& op, const Layout& a, const Layout& b,
                             const Layout& c, const Layout& d, Problem& out) {
  if (op.compute_type != CUBLAS_COMPUTE_32F && op.compute_type != CUBLAS_COMPUTE_32F_PEDANTIC) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (op.scale_type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  // Emulated device memory is host memory, so a device scalar reads like a host one; the vector
  // modes (per-row alpha) are not emulated.
  if (op.pointer_mode != CUBLASLT_POINTER_MODE_HOST &&
      op.pointer_mode != CUBLASLT_POINTER_MODE_DEVICE) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  // cuBLASLt's fp32-compute combinations: A and B alike; C and D alike; fp32 inputs give fp32
  // results only, bf16 inputs give bf16 or fp32.
  if (a.type != b.type || c.type != d.type) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!supported_type(a.type) || !supported_type(d.type)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (a.type == CUDA_R_32F && d.type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (op.epilogue == CUBLASLT_EPILOGUE_BIAS && op.bias_type != -1 &&
      !supported_type(op.bias_type)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  constexpr auto kMaxDim = static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max());
  for (const Layout* l : {&a, &b, &c, &d}) {
    // cuBLASLt takes int32-sized dimensions; this also keeps every product below in Index range.
    if (l->rows > kMaxDim || l->cols > kMaxDim) return CUBLAS_STATUS_NOT_SUPPORTED;
    // Column-major: columns must not overlap. An empty matrix is never addressed.
    if (l->rows > 0 && l->cols > 0 && static_cast<std::uint64_t>(l->ld) < l->rows) {
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  // CUBLAS_OP_C is CUBLAS_OP_T for real types.
  const bool ta = op.trans_a != CUBLAS_OP_N, tb = op.trans_b != CUBLAS_OP_N;
  const std::uint64_t a_rows = ta ? a.cols : a.rows, a_cols = ta ? a.rows : a.cols;
  const std::uint64_t b_rows = tb ? b.cols : b.rows, b_cols = tb ? b.rows : b.cols;
  if (a_rows != d.rows || b_cols != d.cols || a_cols != b_rows || c.rows != d.rows ||
      c.cols != d.cols) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  out = Problem{static_cast<Index>(d.rows), static_cast<Index>(d.cols), static_cast<Index>(a_cols),
                ta, tb};
  return CUBLAS_STATUS_SUCCESS;
}

// The one algorithm the emulator has: the heuristic's and AlgoCheck's answer. The algo's opaque
// bytes are zero, so plans cached from it compare equal run to run.
void fill_result(cublasLtMatmulHeuristicResult_t& r, bool write_algo) {
  if (write_algo) std::memset(&r.algo, 0, sizeof(r.algo));
  r.workspaceSize = 0;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.0f;
  std::memset(r.reserved, 0, sizeof(r.reserved));
}

float load(const float* p) { return *p; }
float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
void store(float* p, float v) { *p = v; }
void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// A (rows, cols) column-major operand as an fp32 Eigen map: fp32 data is mapped in place with its
// leading dimension; bf16 data is widened (exactly) into `scratch`, packed.
ConstMapF operand(const void* data, const Layout& l, std::vector<float>& scratch) {
  const auto rows = static_cast<Index>(l.rows), cols = static_cast<Index>(l.cols);
  if (l.type == CUDA_R_32F) {
    return ConstMapF(static_cast<const float*>(data), rows, cols, Eigen::OuterStride<>(l.ld));
  }
  const auto* src = static_cast<const __nv_bfloat16*>(data);
  scratch.resize(static_cast<std::size_t>(rows * cols));
  for (Index j = 0; j < cols; ++j) {
    const __nv_bfloat16* col = src + j * l.ld;
    float* dst = scratch.data() + j * rows;
    for (Index i = 0; i < rows; ++i) dst[i] = load(col + i);
  }
  return ConstMapF(scratch.data(), rows, cols, Eigen::OuterStride<>(rows));
}

// dst = op(A) · op(B), written by Eigen's GEMM straight into dst (which must not alias A or B;
// in CUDA that is undefined too).
template <typename Dst>
void product(Dst&& dst, const ConstMapF& a, const ConstMapF& b, const Problem& p) {
  if (p.k == 0) {
    dst.setZero();
  } else if (!p.trans_a && !p.trans_b) {
    dst.noalias() = a * b;
  } else if (p.trans_a && !p.trans_b) {
    dst.noalias() = a.transpose() * b;
  } else if (!p.trans_a && p.trans_b) {
    dst.noalias() = a * b.transpose();
  } else {
    dst.noalias() = a.transpose() * b.transpose();
  }
}

// D = alpha · P + beta · C (+ bias[i] on row i), element by element, in cuBLASLt's epilogue
// order, with one rounding to D's type at the end. Each element reads P and C before writing D,
// so P or C may be D itself (same leading dimension). With beta == 0, C is not read at all: it
// may hold NaN garbage, which CUDA's beta = 0 ignores.
template <typename TD, typename TBias>
void finish(const float* P, Index ldp, float alpha, float beta, const TD* C, Index ldc, TD* D,
            Index ldd, const TBias* bias, Index m, Index n) {
  for (Index j = 0; j < n; ++j) {
    const float* pc = P + j * ldp;
    const TD* cc = C == nullptr ? nullptr : C + j * ldc;
    TD* dc = D + j * ldd;
    for (Index i = 0; i < m; ++i) {
      float v = alpha * pc[i];
      if (beta != 0.0f) v += beta * load(cc + i);
      if (bias != nullptr) v += load(bias + i);
      store(dc + i, v);
    }
  }
}

template <typename TD>
void finish_bias(const float* P, Index ldp, float alpha, float beta, const TD* C, Index ldc, TD* D,
                 Index ldd, const void* bias, std::int32_t bias_type, Index m, Index n) {
  if (bias == nullptr) {
    finish<TD, float>(P, ldp, alpha, beta, C, ldc, D, ldd, nullptr, m, n);
  } else if (bias_type == CUDA_R_32F) {
    finish(P, ldp, alpha, beta, C, ldc, D, ldd, static_cast<const float*>(bias), m, n);
  } else {
    finish(P, ldp, alpha, beta, C, ldc, D, ldd, static_cast<const __nv_bfloat16*>(bias), m, n);
  }
}

const char* status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "<unknown cublasStatus_t>";
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* lightHandle) {
  return create<cublasLtContext, Handle>(lightHandle);
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle) {
  if (lightHandle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  return destroy<Handle>(lightHandle);
}

const char* cublasLtGetStatusName(cublasStatus_t status) { return status_name(status); }

// The real library gives a sentence here; the name is what seqrec's error messages want.
const char* cublasLtGetStatusString(cublasStatus_t status) { return status_name(status); }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc,
                                        cublasComputeType_t computeType, cudaDataType_t scaleType) {
  return create<cublasLtMatmulDescOpaque_t, MatmulDesc>(matmulDesc, computeType, scaleType);
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
  return destroy<MatmulDesc>(matmulDesc);
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              std::size_t sizeInBytes) {
  if (matmulDesc == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  MatmulDesc& d = *get<MatmulDesc>(matmulDesc);
  constexpr cublasStatus_t kBad = CUBLAS_STATUS_INVALID_VALUE;
  // Each value is read into a local first, so a refused value leaves the descriptor unchanged.
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: {
      std::int32_t v;
      if (!read_attr(buf, sizeInBytes, v)) return kBad;
      d.compute_type = static_cast<cublasComputeType_t>(v);
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: {
      std::int32_t v;
      if (!read_attr(buf, sizeInBytes, v)) return kBad;
      d.scale_type = static_cast<cudaDataType_t>(v);
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_POINTER_MODE:
      return read_attr(buf, sizeInBytes, d.pointer_mode) ? CUBLAS_STATUS_SUCCESS : kBad;
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB: {
      std::int32_t v;
      if (!read_attr(buf, sizeInBytes, v)) return kBad;
      if (v != CUBLAS_OP_N && v != CUBLAS_OP_T && v != CUBLAS_OP_C) return kBad;
      (attr == CUBLASLT_MATMUL_DESC_TRANSA ? d.trans_a : d.trans_b) =
          static_cast<cublasOperation_t>(v);
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_TRANSC: {
      // cuBLASLt itself supports only CUBLAS_OP_N for C.
      std::int32_t v;
      if (!read_attr(buf, sizeInBytes, v)) return kBad;
      return v == CUBLAS_OP_N ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
    }
    case CUBLASLT_MATMUL_DESC_EPILOGUE: {
      std::uint32_t v;
      if (!read_attr(buf, sizeInBytes, v)) return kBad;
      if (v != CUBLASLT_EPILOGUE_DEFAULT && v != CUBLASLT_EPILOGUE_BIAS) {
        return CUBLAS_STATUS_NOT_SUPPORTED;
      }
      d.epilogue = static_cast<cublasLtEpilogue_t>(v);
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return read_attr(buf, sizeInBytes, d.bias) ? CUBLAS_STATUS_SUCCESS : kBad;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      return read_attr(buf, sizeInBytes, d.bias_type) ? CUBLAS_STATUS_SUCCESS : kBad;
    default:
      return kBad;  // not an attribute the emulator knows
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout, cudaDataType type,
                                          std::uint64_t rows, std::uint64_t cols, std::int64_t ld) {
  if (ld < 0) return CUBLAS_STATUS_INVALID_VALUE;  // cuBLASLt: only non-negative ld
  return create<cublasLtMatrixLayoutOpaque_t, Layout>(matLayout, type, rows, cols, ld);
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
  return destroy<Layout>(matLayout);
}

// Not called by gemm_lt; provided so that a layout can only be changed to what the emulator
// computes (column-major, one matrix).
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout,
                                                cublasLtMatrixLayoutAttribute_t attr,
                                                const void* buf, std::size_t sizeInBytes) {
  if (matLayout == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  Layout& l = *get<Layout>(matLayout);
  constexpr cublasStatus_t kBad = CUBLAS_STATUS_INVALID_VALUE;
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE: {
      std::uint32_t v;
      if (!read_attr(buf, sizeInBytes, v)) return kBad;
      l.type = static_cast<cudaDataType_t>(v);
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATRIX_LAYOUT_ORDER: {
      std::int32_t v;
      if (!read_attr(buf, sizeInBytes, v)) return kBad;
      return v == CUBLASLT_ORDER_COL ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
    }
    case CUBLASLT_MATRIX_LAYOUT_ROWS:
      return read_attr(buf, sizeInBytes, l.rows) ? CUBLAS_STATUS_SUCCESS : kBad;
    case CUBLASLT_MATRIX_LAYOUT_COLS:
      return read_attr(buf, sizeInBytes, l.cols) ? CUBLAS_STATUS_SUCCESS : kBad;
    case CUBLASLT_MATRIX_LAYOUT_LD: {
      std::int64_t v;
      if (!read_attr(buf, sizeInBytes, v) || v < 0) return kBad;
      l.ld = v;
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT: {
      std::int32_t v;
      if (!read_attr(buf, sizeInBytes, v)) return kBad;
      return v == 1 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
    }
    default:
      return kBad;
  }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  return create<cublasLtMatmulPreferenceOpaque_t, Preference>(pref);
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  return destroy<Preference>(pref);
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, std::size_t sizeInBytes) {
  if (pref == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  Preference& p = *get<Preference>(pref);
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE:
      ok = read_attr(buf, sizeInBytes, p.search_mode);
      break;
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      ok = read_attr(buf, sizeInBytes, p.max_workspace_bytes);
      break;
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK:
      ok = read_attr(buf, sizeInBytes, p.reduction_scheme_mask);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      // Any alignment serves the CPU GEMM; stored only.
      ok = read_attr(buf, sizeInBytes,
                     p.min_alignment[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES]);
      break;
    case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT:
      ok = read_attr(buf, sizeInBytes, p.max_waves_count);
      break;
    case CUBLASLT_MATMUL_PREF_IMPL_MASK:
      ok = read_attr(buf, sizeInBytes, p.impl_mask);
      break;
    default:
      break;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc, cublasLtMatrixLayout_t Adesc,
    cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
    cublasLtMatmulPreference_t preference, int requestedAlgoCount,
    cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int* returnAlgoCount) {
  if (lightHandle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (returnAlgoCount != nullptr) *returnAlgoCount = 0;
  if (operationDesc == nullptr || Adesc == nullptr || Bdesc == nullptr || Cdesc == nullptr ||
      Ddesc == nullptr || preference == nullptr || requestedAlgoCount <= 0 ||
      heuristicResultsArray == nullptr || returnAlgoCount == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  Problem p;
  const cublasStatus_t st =
      check_problem(*get<MatmulDesc>(operationDesc), *get<Layout>(Adesc), *get<Layout>(Bdesc),
                    *get<Layout>(Cdesc), *get<Layout>(Ddesc), p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  // Up to kAlgos answers, as a GPU gives several: all compute the same (the algorithm is ignored),
  // and differ only in their first opaque byte, the first answer's bytes being all zero.
  constexpr int kAlgos = 3;
  const int count = requestedAlgoCount < kAlgos ? requestedAlgoCount : kAlgos;
  for (int i = 0; i < count; ++i) {
    fill_result(heuristicResultsArray[i], true);
    std::memcpy(&heuristicResultsArray[i].algo, &i, 1);
  }
  *returnAlgoCount = count;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoCheck(cublasLtHandle_t lightHandle,
                                       cublasLtMatmulDesc_t operationDesc,
                                       cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                       cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                       const cublasLtMatmulAlgo_t* algo,
                                       cublasLtMatmulHeuristicResult_t* result) {
  if (lightHandle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (operationDesc == nullptr || Adesc == nullptr || Bdesc == nullptr || Cdesc == nullptr ||
      Ddesc == nullptr || algo == nullptr || result == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  Problem p;
  const cublasStatus_t st =
      check_problem(*get<MatmulDesc>(operationDesc), *get<Layout>(Adesc), *get<Layout>(Bdesc),
                    *get<Layout>(Cdesc), *get<Layout>(Ddesc), p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  // cuBLASLt never writes result->algo here (algo may point to it).
  fill_result(*result, false);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc,
                              const void* alpha, const void* A, cublasLtMatrixLayout_t Adesc,
                              const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
                              const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo,
                              void* workspace, std::size_t workspaceSizeInBytes,
                              cudaStream_t stream) {
  // The algorithm, workspace and stream change nothing here: one algorithm, none of it needed,
  // and the work is done before returning.
  (void)algo;
  (void)workspace;
  (void)workspaceSizeInBytes;
  (void)stream;
  if (lightHandle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (computeDesc == nullptr || Adesc == nullptr || Bdesc == nullptr || Cdesc == nullptr ||
      Ddesc == nullptr || alpha == nullptr || beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const MatmulDesc& op = *get<MatmulDesc>(computeDesc);
  const Layout &la = *get<Layout>(Adesc), &lb = *get<Layout>(Bdesc);
  const Layout &lc = *get<Layout>(Cdesc), &ld = *get<Layout>(Ddesc);
  Problem p;
  const cublasStatus_t st = check_problem(op, la, lb, lc, ld, p);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  // Scale type fp32, single values (host, or emulated device memory, which is host memory).
  const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
  const bool bias = op.epilogue == CUBLASLT_EPILOGUE_BIAS;
  // In place needs C and D described alike; cuBLASLt refuses otherwise.
  if (C == D && lc.ld != ld.ld) return CUBLAS_STATUS_INVALID_VALUE;
  if (p.m == 0 || p.n == 0) return CUBLAS_STATUS_SUCCESS;
  if (D == nullptr || (p.k > 0 && (A == nullptr || B == nullptr)) || (b != 0.0f && C == nullptr) ||
      (bias && op.bias == nullptr)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const std::int32_t bias_type = op.bias_type == -1 ? ld.type : op.bias_type;

  std::vector<float> scratch_a, scratch_b;
  // Maps are only built when there is something to multiply (a k = 0 operand may have ld 0).
  const ConstMapF am =
      p.k > 0 ? operand(A, la, scratch_a) : ConstMapF(nullptr, 0, 0, Eigen::OuterStride<>(1));
  const ConstMapF bm =
      p.k > 0 ? operand(B, lb, scratch_b) : ConstMapF(nullptr, 0, 0, Eigen::OuterStride<>(1));
  const auto ldd = static_cast<Index>(ld.ld), ldc = static_cast<Index>(lc.ld);

  if (ld.type == CUDA_R_32F) {
    auto* d = static_cast<float*>(D);
    const auto* c = b != 0.0f ? static_cast<const float*>(C) : nullptr;
    if (c != d) {
      // The product can go straight into D: C (when read at all) is elsewhere.
      product(MapF(d, p.m, p.n, Eigen::OuterStride<>(ldd)), am, bm, p);
      // Unit alpha, zero beta and no bias leave the product as it is; skip the pass.
      if (a != 1.0f || c != nullptr || bias) {
        finish_bias(d, ldd, a, b, c, ldc, d, ldd, op.bias, bias_type, p.m, p.n);
      }
      return CUBLAS_STATUS_SUCCESS;
    }
    // In place with beta ≠ 0: D still holds C while the product is formed, so form it aside.
    MatrixF prod(p.m, p.n);
    product(prod, am, bm, p);
    finish_bias(prod.data(), p.m, a, b, c, ldc, d, ldd, op.bias, bias_type, p.m, p.n);
    return CUBLAS_STATUS_SUCCESS;
  }
  // bf16 result: the fp32 product is formed aside and rounded once, in the epilogue.
  MatrixF prod(p.m, p.n);
  product(prod, am, bm, p);
  const auto* c = b != 0.0f ? static_cast<const __nv_bfloat16*>(C) : nullptr;
  finish_bias(prod.data(), p.m, a, b, c, ldc, static_cast<__nv_bfloat16*>(D), ldd, op.bias,
              bias_type, p.m, p.n);
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
