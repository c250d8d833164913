// The gated delta rule of the delta-net layers (spec §4.5.1, 4.5.3, 4.5.4):
// gates from the raw projections, L2-normalized q/k, the recurrent state
// update and the per-head outputs. CPU twins: l2norm() and delta_rule_step()
// in lib/cpu/ops.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace qwen35::cuda {

struct DeltaNetArgs {
  int64_t n = 0;         // rows, in order
  int64_t Hk = 0;        // key heads; value head j uses key head j % Hk
  int64_t Hv = 0;        // value heads
  int64_t dk = 0;        // key head dim: 32, 64, 128 or 256
  int64_t dv = 0;        // value head dim, a multiple of 32
  float eps = 1e-6f;
  // Post-conv activations, row t: q at uc[t*ldu + h*dk], k at
  // uc[t*ldu + Hk*dk + h*dk], v at uc[t*ldu + 2*Hk*dk + j*dv].
  const float* uc = nullptr;
  int64_t ldu = 0;
  // Raw gate projections: b (-> beta = sigmoid(b)) and a
  // (-> g = ssm_a * softplus(a + dt_bias)), [n, ld] with head j at +j.
  const float* b = nullptr;
  int64_t ldb = 0;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* ssm_a = nullptr;    // [Hv]
  const float* dt_bias = nullptr;  // [Hv]
  float* state = nullptr;          // [Hv, dv, dk] F32, M = S^T per head; updated
  float* out = nullptr;            // [n, Hv*dv]
  int64_t snapshot_row = -1;       // >= 0: copy the state after that row to snapshot
  float* snapshot = nullptr;       // [Hv, dv, dk]
  // State elements per thread: 8, 16 or 32 (at least dk/32); fewer means
  // more threads and shorter dependency chains per row (tuning.h).
  int elems_per_thread = 16;
};

bool delta_net_shape_supported(int64_t dk, int64_t dv);

cudaError_t delta_net(const DeltaNetArgs& a, cudaStream_t stream);

}  // namespace qwen35::cuda
