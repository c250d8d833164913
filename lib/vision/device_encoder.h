// A vision encoder on a GPU behind EncodeImage (vision.h). It implements
// EncodeCpu's contract (encoder.h: normalized patches in sequence order in,
// [n_tokens, D] embeddings on the host out) for its device; EncodeCpu with
// reference = true is the oracle it is tested against
// (tests/gpu/test_cuda_vision.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "status.h"
#include "vision/encoder.h"
#include "vision/mmproj.h"

namespace qwen35 {
struct Model;
}

namespace qwen35::vision {

class DeviceEncoder {
 public:
  virtual ~DeviceEncoder() = default;
  // patches: [gh*gw, 3*P*P] host floats in sequence order; out: host
  // [(gh/2)*(gw/2), D]. `mp` is the projector the encoder was created from
  // (its host-side tables: the position grid). Calls from several threads
  // are serialized. opt.reference is not looked at (EncodeImage sends
  // reference requests to the CPU oracle); opt.hook receives "pos_added",
  // each "block" and "output" (copied to the host).
  virtual Status encode(const Mmproj& mp, const float* patches, int32_t gw, int32_t gh, const EncoderOptions& opt,
                        float* out) = 0;
  virtual std::string describe() const = 0;
  virtual uint64_t device_bytes() const = 0;
};

// Upload the projector's weights once to a CUDA device (the model's when
// `model` lives on one, else device 0) and return an encoder for it.
// UNSUPPORTED when the build has no CUDA backend or there is no usable
// device. Defined in cuda/vision_encoder.cpp (lib/cuda_stub.cpp otherwise).
Status CreateCudaVisionEncoder(const Mmproj& mp, const Model* model, std::shared_ptr<DeviceEncoder>* out);

}  // namespace qwen35::vision
