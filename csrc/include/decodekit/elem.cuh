// Element types of the float buffers the kernels read (fp32 / fp16 / bf16), torch-free: scalar
// loads as float, and the float value of lane j of a 16-byte vector load. Shared by the kernels
// that stream logits or scores with uint4 loads (denoise, discrete_diffusion).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#if defined(__CUDACC__)

namespace decodekit {

template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static constexpr int kBits = 32;
  static __device__ __forceinline__ float from_bits(uint32_t b) { return __uint_as_float(b); }
  static __device__ __forceinline__ float load(const float* p) { return *p; }
};

template <>
struct Elem<__half> {
  static constexpr int kBits = 16;
  static __device__ __forceinline__ float from_bits(uint32_t b) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
  }
  static __device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
};

template <>
struct Elem<__nv_bfloat16> {
  static constexpr int kBits = 16;
  static __device__ __forceinline__ float from_bits(uint32_t b) { return __uint_as_float(b << 16); }
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
};

template <typename T>
__device__ __forceinline__ float lane_value(const uint4& packed, int j) {
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
  if constexpr (Elem<T>::kBits == 32) {
    return Elem<T>::from_bits(words[j]);
  } else {
    return Elem<T>::from_bits((words[j >> 1] >> ((j & 1) * 16)) & 0xffffu);  // element 2i: low half
  }
}

}  // namespace decodekit

#endif  // __CUDACC__
