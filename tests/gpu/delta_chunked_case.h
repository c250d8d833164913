// One case of the chunked delta rule (delta_net_chunked) against the
// sequential reference (delta_reference, kernel_refs.h), for the GPU op test
// and the emulated kernels. Arr is a device-array template (DevArray on the
// GPU, a host vector in the emulation) with a vector constructor, get() and
// download(); rand(n, seed, lo, hi) gives n uniform floats.
#pragma once

#include <cstdint>
#include <vector>

#include "delta_chunked.h"
#include "kernel_refs.h"

namespace qwen35::test {

struct DeltaChunkedResult {
  bool ok = false;
  std::vector<float> out, state;          // the kernel's
  std::vector<float> ref_out, ref_state;  // the sequential reference's
};

// wipe: one row's gate is so negative that its decay rounds to 0 (the
// state before it is forgotten).
template <template <typename> class Arr, typename Rand>
DeltaChunkedResult run_delta_chunked_case(const DeltaShape& s, int64_t n, bool wipe, Rand rand) {
  using namespace qwen35::cuda;
  const int64_t Cqk = s.Hk * s.dk, Cv = s.Hv * s.dv, C = 2 * Cqk + Cv, ldu = C + 4, ldb = s.Hv + 3;
  std::vector<float> uc = rand(size_t(n * ldu), 1, -1.0f, 1.0f), b = rand(size_t(n * ldb), 2, -3.0f, 3.0f),
                     al = rand(size_t(n * ldb), 3, -3.0f, 3.0f), a_log = rand(size_t(s.Hv), 4, -2.0f, -0.1f),
                     dtb = rand(size_t(s.Hv), 5, -1.0f, 1.0f), st = rand(size_t(Cv * s.dk), 6, -0.5f, 0.5f);
  if (wipe && n > 3)
    for (int64_t j = 0; j < s.Hv; ++j) al[size_t((n / 2) * ldb + j)] = 400.0f;
  Arr<float> duc(uc), db(b), dal(al), dalog(a_log), ddtb(dtb), dst(st), dout(std::vector<float>(size_t(n * Cv), NAN));
  Arr<float> scratch(std::vector<float>(delta_chunked_scratch_floats(n, s.Hv, s.dk, s.dv), NAN));
  const DeltaNetArgs p =
      delta_args(s, n, duc.get(), ldu, db.get(), dal.get(), ldb, dalog.get(), ddtb.get(), dst.get(), dout.get());
  DeltaChunkedResult r;
  r.ok = delta_net_chunked(p, scratch.get(), nullptr) == cudaSuccess;
  r.out = dout.download();
  r.state = dst.download();
  r.ref_state = st;
  std::vector<float> snap;
  delta_reference(s, n, uc, ldu, b, al, ldb, a_log, dtb, 1e-6f, r.ref_state, r.ref_out, -1, snap);
  return r;
}

}  // namespace qwen35::test
