// cuBLASLt wrapper (see gemm.h).
#include "gemm.h"

#include <cublasLt.h>

#include "cuda_util.h"

namespace qwen35::cuda {

namespace {

Status lt_status(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  return Error(QWEN35_ERR_BACKEND, "cuBLASLt error in {}: {} ({})", what, cublasLtGetStatusString(s),
               cublasLtGetStatusName(s));
}

#define LT_TRY(expr, what) QWEN35_TRY(lt_status((expr), (what)))

// Largest power of two (<= 256) dividing the address.
int alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && a % uintptr_t(al) != 0) al /= 2;
  return al;
}

}  // namespace

struct Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

Gemm::Gemm() = default;

Gemm::~Gemm() {
  plans_.clear();
  if (ws_) cudaFree(ws_);
  if (handle_) cublasLtDestroy(handle_);
}

Status Gemm::init(size_t workspace_bytes) {
  LT_TRY(cublasLtCreate(&handle_), "cublasLtCreate");
  if (workspace_bytes) {
    const cudaError_t e = cudaMalloc(&ws_, workspace_bytes);
    if (e != cudaSuccess) {
      ws_ = nullptr;
      return cuda_status(e, "allocating the cuBLASLt workspace");
    }
    ws_bytes_ = workspace_bytes;
  }
  return Status::Ok();
}

Status Gemm::plan(const Key& key, Plan** out) {
  auto it = plans_.find(key);
  if (it != plans_.end()) {
    *out = it->second.get();
    return Status::Ok();
  }
  const auto [type, N, K, n, ldx, ldy, add, al_a, al_x, al_y] = key;
  auto p = std::make_unique<Plan>();
  const cudaDataType_t in_t = GemmType(type) == GemmType::BF16  ? CUDA_R_16BF
                              : GemmType(type) == GemmType::F16 ? CUDA_R_16F
                                                                : CUDA_R_32F;
  LT_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
  LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
  LT_TRY(cublasLtMatrixLayoutCreate(&p->a, in_t, uint64_t(K), uint64_t(N), K), "layout A");
  LT_TRY(cublasLtMatrixLayoutCreate(&p->b, in_t, uint64_t(K), uint64_t(n), ldx), "layout X");
  LT_TRY(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, uint64_t(N), uint64_t(n), ldy), "layout Y");

  cublasLtMatmulPreference_t pref = nullptr;
  LT_TRY(cublasLtMatmulPreferenceCreate(&pref), "preference");
  const uint64_t ws = ws_bytes_;
  const uint32_t aa = uint32_t(al_a), ax = uint32_t(al_x), ay = uint32_t(al_y);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof aa);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax, sizeof ax);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ay, sizeof ay);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ay, sizeof ay);
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t hs =
      cublasLtMatmulAlgoGetHeuristic(handle_, p->desc, p->a, p->b, p->c, p->c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  LT_TRY(hs, "cublasLtMatmulAlgoGetHeuristic");
  if (found == 0)
    return Error(QWEN35_ERR_BACKEND, "cuBLASLt has no algorithm for a {} GEMM of {}x{}x{}",
                 in_t == CUDA_R_16BF ? "BF16" : in_t == CUDA_R_16F ? "F16" : "F32", N, n, K);
  p->algo = res.algo;
  *out = p.get();
  plans_.emplace(key, std::move(p));
  return Status::Ok();
}

Status Gemm::run(GemmType type, const void* A, int64_t N, int64_t K, const void* X, int64_t ldx, int64_t n, float* y,
                 int64_t ldy, float alpha, bool add, cudaStream_t stream) {
  if (n <= 0 || N <= 0) return Status::Ok();
  Plan* p = nullptr;
  QWEN35_TRY(plan(Key{int(type), N, K, n, ldx, ldy, add, alignment_of(A), alignment_of(X), alignment_of(y)}, &p));
  const float beta = add ? 1.0f : 0.0f;
  LT_TRY(cublasLtMatmul(handle_, p->desc, &alpha, A, p->a, X, p->b, &beta, y, p->c, y, p->c, &p->algo, ws_, ws_bytes_,
                        stream),
         "cublasLtMatmul");
  return Status::Ok();
}

Status Gemm::run_fp4(const uint8_t* A, const uint8_t* a_scales, int64_t N, int64_t K, const uint8_t* X,
                     const uint8_t* x_scales, int64_t n, float* y, int64_t ldy, const float* alpha, const float* beta,
                     cudaStream_t stream) {
  if (n <= 0 || N <= 0) return Status::Ok();
  const Key key{0, N, K, n, 0, ldy, false, alignment_of(A), alignment_of(X), alignment_of(y)};
  auto it = fp4_plans_.find(key);
  Plan* p = nullptr;
  if (it != fp4_plans_.end()) {
    p = it->second.get();
  } else {
    auto np = std::make_unique<Plan>();
    LT_TRY(cublasLtMatmulDescCreate(&np->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cublasLtMatmulMatrixScale_t vec16 = CUBLASLT_MATMUL_MATRIX_SCALE_VEC16_UE4M3;
    const cublasLtPointerMode_t dev_ptr = CUBLASLT_POINTER_MODE_DEVICE;
    LT_TRY(cublasLtMatmulDescSetAttribute(np->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
    LT_TRY(cublasLtMatmulDescSetAttribute(np->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
    LT_TRY(cublasLtMatmulDescSetAttribute(np->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &vec16, sizeof vec16),
           "set A_SCALE_MODE");
    LT_TRY(cublasLtMatmulDescSetAttribute(np->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &vec16, sizeof vec16),
           "set B_SCALE_MODE");
    LT_TRY(cublasLtMatmulDescSetAttribute(np->desc, CUBLASLT_MATMUL_DESC_POINTER_MODE, &dev_ptr, sizeof dev_ptr),
           "set POINTER_MODE");
    LT_TRY(cublasLtMatmulDescSetAttribute(np->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scales, sizeof a_scales),
           "set A_SCALE_POINTER");
    LT_TRY(cublasLtMatmulDescSetAttribute(np->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scales, sizeof x_scales),
           "set B_SCALE_POINTER");
    LT_TRY(cublasLtMatrixLayoutCreate(&np->a, CUDA_R_4F_E2M1, uint64_t(K), uint64_t(N), K), "layout A");
    LT_TRY(cublasLtMatrixLayoutCreate(&np->b, CUDA_R_4F_E2M1, uint64_t(K), uint64_t(n), K), "layout X");
    LT_TRY(cublasLtMatrixLayoutCreate(&np->c, CUDA_R_32F, uint64_t(N), uint64_t(n), ldy), "layout Y");
    cublasLtMatmulPreference_t pref = nullptr;
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref), "preference");
    const uint64_t ws = ws_bytes_;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t hs =
        cublasLtMatmulAlgoGetHeuristic(handle_, np->desc, np->a, np->b, np->c, np->c, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (hs != CUBLAS_STATUS_SUCCESS || found == 0)
      return Error(QWEN35_ERR_UNSUPPORTED, "cuBLASLt has no block-scaled FP4 algorithm for {}x{}x{} here", N, n, K);
    np->algo = res.algo;
    p = np.get();
    fp4_plans_.emplace(key, std::move(np));
  }
  // The scale pointers change between weights (and are cheap to set).
  LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scales, sizeof a_scales),
         "set A_SCALE_POINTER");
  LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &x_scales, sizeof x_scales),
         "set B_SCALE_POINTER");
  LT_TRY(cublasLtMatmul(handle_, p->desc, alpha, A, p->a, X, p->b, beta, y, p->c, y, p->c, &p->algo, ws_, ws_bytes_,
                        stream),
         "cublasLtMatmul (FP4)");
  return Status::Ok();
}

}  // namespace qwen35::cuda
