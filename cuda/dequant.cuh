// Dequantization of GGUF rows on the device, 32 elements ("a chunk") at a
// time. Every supported type has blocks of 32, 64 or 256 elements, so a row of
// K elements is K/32 chunks and chunk c holds elements 32c .. 32c+31 in order.
// These are the device twins of lib/quants.cpp (dequantize_row); the kernels
// built on them are tested against it.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "ggml_types.h"

namespace qwen35::cuda {

template <uint32_t T>
struct Chunk;

template <>
struct Chunk<GGML_F32> {
  __device__ static void load(const uint8_t* row, int c, float* out) {
    const float4* p = reinterpret_cast<const float4*>(row + size_t(c) * 128);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float4 v = p[i];
      out[4 * i] = v.x;
      out[4 * i + 1] = v.y;
      out[4 * i + 2] = v.z;
      out[4 * i + 3] = v.w;
    }
  }
};

template <>
struct Chunk<GGML_F16> {
  __device__ static void load(const uint8_t* row, int c, float* out) {
    const uint4* p = reinterpret_cast<const uint4*>(row + size_t(c) * 64);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint4 v = p[i];
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        out[8 * i + 2 * j] = f16_bits_to_f32(uint16_t(w[j] & 0xFFFFu));
        out[8 * i + 2 * j + 1] = f16_bits_to_f32(uint16_t(w[j] >> 16));
      }
    }
  }
};

template <>
struct Chunk<GGML_BF16> {
  __device__ static void load(const uint8_t* row, int c, float* out) {
    const uint4* p = reinterpret_cast<const uint4*>(row + size_t(c) * 64);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint4 v = p[i];
      const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        out[8 * i + 2 * j] = __uint_as_float(w[j] << 16);
        out[8 * i + 2 * j + 1] = __uint_as_float(w[j] & 0xFFFF0000u);
      }
    }
  }
};

// Q8_0: one 34-byte block {F16 d, int8 qs[32]} per chunk (2-byte aligned).
template <>
struct Chunk<GGML_Q8_0> {
  __device__ static void load(const uint8_t* row, int c, float* out) {
    const uint8_t* b = row + size_t(c) * 34;
    const uint16_t* h = reinterpret_cast<const uint16_t*>(b);
    const float d = f16_bits_to_f32(h[0]);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t v = h[1 + i];
      out[2 * i] = d * float(int8_t(v & 0xFFu));
      out[2 * i + 1] = d * float(int8_t(v >> 8));
    }
  }
};

// Q4_K: chunk c is sub-block j = c % 8 of block c / 8 (144-byte blocks).
template <>
struct Chunk<GGML_Q4_K> {
  __device__ static void load(const uint8_t* row, int c, float* out) {
    const uint8_t* b = row + size_t(c / 8) * 144;
    const int j = c % 8;
    const uint16_t* h = reinterpret_cast<const uint16_t*>(b);
    const float d = f16_bits_to_f32(h[0]), dmin = f16_bits_to_f32(h[1]);
    const uint8_t* sc = b + 4;
    uint32_t s, m;
    if (j < 4) {
      s = sc[j] & 63u;
      m = sc[j + 4] & 63u;
    } else {
      s = (sc[j + 4] & 0x0Fu) | ((sc[j - 4] >> 6) << 4);
      m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
    const float ds = d * float(s), dm = dmin * float(m);
    const uint32_t* q = reinterpret_cast<const uint32_t*>(b + 16 + 32 * (j / 2));
    const int shift = (j & 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t v = q[i] >> shift;
#pragma unroll
      for (int k = 0; k < 4; ++k) out[4 * i + k] = ds * float((v >> (8 * k)) & 0x0Fu) - dm;
    }
  }
};

// Q6_K: chunk c is elements 32c' .. 32c'+31 (c' = c % 8) of block c / 8
// (210-byte blocks, only 2-byte aligned).
template <>
struct Chunk<GGML_Q6_K> {
  __device__ static void load(const uint8_t* row, int c, float* out) {
    const uint8_t* b = row + size_t(c / 8) * 210;
    const int cc = c % 8, h = cc / 4, q = cc % 4;
    const uint8_t* ql = b + 64 * h + 32 * (q & 1);
    const uint8_t* qh = b + 128 + 32 * h;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = f16_bits_to_f32(*reinterpret_cast<const uint16_t*>(b + 208));
    const float d0 = d * float(sc[8 * h + 2 * q]), d1 = d * float(sc[8 * h + 2 * q + 1]);
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      const uint32_t lo = q < 2 ? (ql[l] & 0x0Fu) : (ql[l] >> 4);
      const uint32_t hi = (qh[l] >> (2 * q)) & 3u;
      out[l] = (l < 16 ? d0 : d1) * float(int(lo | (hi << 4)) - 32);
    }
  }
};

// NVFP4 in the GGUF layout: chunk c is half c % 2 (sub-blocks 2(c%2) and
// 2(c%2)+1) of the 36-byte block c / 2.
template <>
struct Chunk<GGML_NVFP4> {
  __device__ static void load(const uint8_t* row, int c, float* out) {
    const uint8_t* b = row + size_t(c / 2) * 36;
#pragma unroll
    for (int s2 = 0; s2 < 2; ++s2) {
      const int s = 2 * (c % 2) + s2;
      const float sc = ue4m3_to_f32(b[s]);
      const uint8_t* q = b + 4 + 8 * s;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        out[16 * s2 + j] = e2m1_to_f32(q[j] & 0x0Fu) * sc;
        out[16 * s2 + j + 8] = e2m1_to_f32(q[j] >> 4) * sc;
      }
    }
  }
};

// MXFP4: one 17-byte block {E8M0 e, qs[16]} per chunk.
template <>
struct Chunk<GGML_MXFP4> {
  __device__ static void load(const uint8_t* row, int c, float* out) {
    const uint8_t* b = row + size_t(c) * 17;
    const float sc = e8m0_to_f32(b[0]);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      out[j] = e2m1_to_f32(b[1 + j] & 0x0Fu) * sc;
      out[j + 16] = e2m1_to_f32(b[1 + j] >> 4) * sc;
    }
  }
};

// Calls f(std::integral_constant<uint32_t, T>{}) for the runtime type t, so
// that f can instantiate a kernel for T; returns false for types without a
// device implementation.
template <typename F>
bool dispatch_type(uint32_t t, F&& f) {
  switch (t) {
    case GGML_F32: f(std::integral_constant<uint32_t, GGML_F32>{}); return true;
    case GGML_F16: f(std::integral_constant<uint32_t, GGML_F16>{}); return true;
    case GGML_BF16: f(std::integral_constant<uint32_t, GGML_BF16>{}); return true;
    case GGML_Q8_0: f(std::integral_constant<uint32_t, GGML_Q8_0>{}); return true;
    case GGML_Q4_K: f(std::integral_constant<uint32_t, GGML_Q4_K>{}); return true;
    case GGML_Q6_K: f(std::integral_constant<uint32_t, GGML_Q6_K>{}); return true;
    case GGML_NVFP4: f(std::integral_constant<uint32_t, GGML_NVFP4>{}); return true;
    case GGML_MXFP4: f(std::integral_constant<uint32_t, GGML_MXFP4>{}); return true;
    default: return false;
  }
}

}  // namespace qwen35::cuda
