// The tiled layouts (Q8_0, Q4_K, Q6_K, F16) by type (see ktiles.h).
#include "ktiles.h"

namespace qwen35::cuda {

namespace {
uint64_t align256(uint64_t b) { return (b + 255) / 256 * 256; }
}  // namespace

bool ktiles_supported(uint32_t type, int64_t cols) {
  if (type == GGML_Q8_0 || type == GGML_F16) return cols > 0 && cols % kFp4GroupCols == 0;
  if (type == GGML_Q4_K || type == GGML_Q6_K) return cols > 0 && cols % 256 == 0;
  return false;
}

KTiles ktiles_plan(uint32_t type, int64_t rows, int64_t cols, float scale, bool paired) {
  KTiles t;
  if (!ktiles_supported(type, cols) || (paired && rows % 16 != 0)) return t;
  t.type = type;
  TileShape& s = t.shape();
  s.rows = rows;
  s.cols = cols;
  s.scale = scale;
  s.paired = paired;
  return t;
}

uint64_t ktiles_bytes(const KTiles& t) {
  if (t.type == GGML_Q8_0) return align256(t.q8.code_bytes()) + align256(t.q8.scale_bytes());
  if (t.type == GGML_Q4_K)
    return align256(t.q4k.code_bytes()) + align256(t.q4k.sm_bytes()) + align256(t.q4k.dm_bytes());
  if (t.type == GGML_Q6_K)
    return align256(t.q6k.lo_bytes()) + align256(t.q6k.hi_bytes()) + align256(t.q6k.sc_bytes()) +
           align256(t.q6k.d_bytes());
  if (t.type == GGML_F16) return align256(t.f16.code_bytes());
  return 0;
}

void ktiles_place(KTiles* t, uint8_t* base) {
  if (t->type == GGML_Q8_0) {
    t->q8.codes = base;
    t->q8.scales = reinterpret_cast<const uint16_t*>(base + align256(t->q8.code_bytes()));
  } else if (t->type == GGML_Q4_K) {
    t->q4k.codes = base;
    t->q4k.sm = base + align256(t->q4k.code_bytes());
    t->q4k.dm = reinterpret_cast<const uint16_t*>(base + align256(t->q4k.code_bytes()) + align256(t->q4k.sm_bytes()));
  } else if (t->type == GGML_Q6_K) {
    Q6kTiled& q = t->q6k;
    q.lo = base;
    q.hi = base + align256(q.lo_bytes());
    q.sc = reinterpret_cast<const int8_t*>(q.hi + align256(q.hi_bytes()));
    q.d = reinterpret_cast<const uint16_t*>(reinterpret_cast<const uint8_t*>(q.sc) + align256(q.sc_bytes()));
  } else if (t->type == GGML_F16) {
    t->f16.codes = base;
  }
}

cudaError_t ktiles_repack(const KTiles& t, const uint8_t* src, uint64_t row_bytes, int64_t r0, int64_t nr,
                          cudaStream_t stream) {
  if (t.type == GGML_Q8_0) return q8t_repack(src, row_bytes, r0, nr, t.q8, stream);
  if (t.type == GGML_Q4_K) return q4kt_repack(src, row_bytes, r0, nr, t.q4k, stream);
  if (t.type == GGML_Q6_K) return q6kt_repack(src, row_bytes, r0, nr, t.q6k, stream);
  if (t.type == GGML_F16) return f16t_repack(src, row_bytes, r0, nr, t.f16, stream);
  return cudaErrorInvalidValue;
}

int ktiles_slices(const KTiles& t, int sms) {
  switch (t.type) {
    case GGML_Q8_0: return q8t_slices(t.q8, sms);
    case GGML_Q4_K: return q4kt_slices(t.q4k, sms);
    case GGML_Q6_K: return q6kt_slices(t.q6k, sms);
    case GGML_F16: return f16t_slices(t.f16, sms);
    default: return 0;
  }
}

bool ktiles_matvec_fits(const KTiles& t, int n) {
  if (t.type == GGML_Q8_0) return q8t_matvec_fits(t.q8, n);
  if (t.type == GGML_Q4_K) return q4kt_matvec_fits(t.q4k, n);
  if (t.type == GGML_Q6_K) return q6kt_sliced_fits(t.q6k, n);
  if (t.type == GGML_F16) return f16t_matvec_fits(t.f16, n);
  return false;
}

bool ktiles_gated_fits(const KTiles& t, int dv) { return t.present() && tiles_gated_fits(t.cols(), dv); }

cudaError_t ktiles_matvec(const KTiles& t, const float* x, int64_t ldx, int n, float* y, int64_t ldy, Accum acc,
                          int sms, cudaStream_t stream, const TilesFusion& f) {
  if (t.type == GGML_Q8_0) return q8t_matvec(t.q8, x, ldx, n, y, ldy, acc, sms, stream, f);
  if (t.type == GGML_Q4_K) return q4kt_matvec(t.q4k, x, ldx, n, y, ldy, acc, sms, stream, f);
  if (t.type == GGML_Q6_K) return q6kt_matvec_sliced(t.q6k, x, ldx, n, y, ldy, acc, sms, stream, f);
  if (t.type == GGML_F16) return f16t_matvec(t.f16, x, ldx, n, y, ldy, acc, sms, stream, f);
  return cudaErrorInvalidValue;
}

cudaError_t ktiles_dequant_rows_f32(const KTiles& t, int64_t r0, int64_t nr, float* dst, cudaStream_t stream) {
  if (t.type == GGML_Q8_0) return q8t_dequant_rows_f32(t.q8, r0, nr, dst, stream);
  if (t.type == GGML_Q4_K) return q4kt_dequant_rows_f32(t.q4k, r0, nr, dst, stream);
  if (t.type == GGML_Q6_K) return q6kt_dequant_rows_f32(t.q6k, r0, nr, dst, stream);
  if (t.type == GGML_F16) return f16t_dequant_rows_f32(t.f16, r0, nr, dst, stream);
  return cudaErrorInvalidValue;
}

cudaError_t ktiles_dequant_rows_bf16(const KTiles& t, int64_t r0, int64_t nr, uint16_t* dst, cudaStream_t stream) {
  if (t.type == GGML_Q8_0) return q8t_dequant_rows_bf16(t.q8, r0, nr, dst, stream);
  if (t.type == GGML_Q4_K) return q4kt_dequant_rows_bf16(t.q4k, r0, nr, dst, stream);
  if (t.type == GGML_Q6_K) return q6kt_dequant_rows_bf16(t.q6k, r0, nr, dst, stream);
  if (t.type == GGML_F16) return f16t_dequant_rows_bf16(t.f16, r0, nr, dst, stream);
  return cudaErrorInvalidValue;
}

cudaError_t ktiles_embedding_rows(const KTiles& t, const int32_t* tokens, int64_t n, float* out, int64_t ldo,
                                  cudaStream_t stream) {
  if (t.type == GGML_Q8_0) return q8t_embedding_rows(t.q8, tokens, n, out, ldo, stream);
  if (t.type == GGML_Q4_K) return q4kt_embedding_rows(t.q4k, tokens, n, out, ldo, stream);
  if (t.type == GGML_Q6_K) return q6kt_embedding_rows(t.q6k, tokens, n, out, ldo, stream);
  if (t.type == GGML_F16) return f16t_embedding_rows(t.f16, tokens, n, out, ldo, stream);
  return cudaErrorInvalidValue;
}

}  // namespace qwen35::cuda
