// Pieces shared by the CUDA launchers of every op family, torch-free: the element-type code that
// bindings.cpp passes to the launchers, and the dispatch from that code to a kernel's template
// argument. Included by the *_launch.h headers (host compiler and nvcc) and the .cu launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace decodekit {

// Element type of a float buffer (logits, probabilities, q / KV cache).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// A type as a value, so that a generic lambda can receive it: launch(TypeTag<T>{}).
template <typename T>
struct TypeTag {
  using type = T;
};

// Calls launch(TypeTag<T>{}) for the element type named by dtype, then reports the launch status
// (cudaErrorInvalidValue for an unknown code).
template <typename Launch>
cudaError_t dispatch_dtype(DType dtype, Launch&& launch) {
  switch (dtype) {
    case DType::kFloat32:
      launch(TypeTag<float>{});
      break;
    case DType::kFloat16:
      launch(TypeTag<__half>{});
      break;
    case DType::kBFloat16:
      launch(TypeTag<__nv_bfloat16>{});
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace decodekit
