// Rotary position embedding (rotate-half layout) over packed `thd` tensors, forward and backward.
//
// Why a kernel: without Transformer Engine, megatron-core applies RoPE with ~10 PyTorch ops per tensor
// (cos, sin, casts, chunk, neg, cat, two muls, add, and per-protein frequency slices for thd), each a
// full pass over q and k; the step profile (benchmarks/step_profile.py) prices that at ~20% of a
// 650M MLM step on an H100. Here each element is read once and written once, positions come from
// the proteins' cu_seqlens by binary search, and the angle is computed in fp32 as megatron does
// (position * inv_freq, then cos/sin), so no frequency table is built or read.
//
// out[i]       = x[i] * cos(a_i) - x[i + h] * sin(a_i)
// out[i + h]   = x[i + h] * cos(a_i) + x[i] * sin(a_i),   h = head_dim / 2, a_i = pos * inv_freq[i]
// The backward pass is the same rotation by -a (sign = -1).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "rotary.h"
#include "float_convert.cuh"

namespace {

using megatron_plm::from_float;
using megatron_plm::to_float;

// Position of `token` within its protein: token - cu_seqlens[segment], segment found by binary search.
__device__ __forceinline__ int position_in_segment(const int32_t* __restrict__ cu_seqlens, int segments, int token) {
  int lo = 0, hi = segments;  // invariant: cu_seqlens[lo] <= token < cu_seqlens[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (__ldg(cu_seqlens + mid) <= token) lo = mid; else hi = mid;
  }
  return token - __ldg(cu_seqlens + lo);
}

// One thread per (token, head, i < half): the pair (i, i + half). Threads of a block walk i fastest,
// so loads and stores of a head row are coalesced.
template <typename T>
__global__ void rotary_thd_kernel(const T* __restrict__ x, T* __restrict__ out, const int32_t* __restrict__ cu_seqlens,
                                  const float* __restrict__ inv_freq, int64_t tokens, int heads, int half,
                                  int64_t x_token_stride, int64_t x_head_stride, int segments, float sign) {
  const int64_t pairs = tokens * heads * half;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < pairs; p += (int64_t)gridDim.x * blockDim.x) {
    const int i = p % half;
    const int64_t row = p / half;
    const int head = row % heads;
    const int64_t token = row / heads;
    const int pos = position_in_segment(cu_seqlens, segments, (int)token);
    float s, c;
    sincosf((float)pos * __ldg(inv_freq + i), &s, &c);
    s *= sign;
    const T* src = x + token * x_token_stride + head * x_head_stride;
    const float a = to_float(src[i]);
    const float b = to_float(src[i + half]);
    T* dst = out + (token * heads + head) * (int64_t)(2 * half);
    dst[i] = from_float<T>(a * c - b * s);
    dst[i + half] = from_float<T>(b * c + a * s);
  }
}

template <typename T>
cudaError_t launch(const RotaryArgs& args, cudaStream_t stream) {
  const int64_t pairs = args.tokens * args.heads * args.half;
  if (pairs == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t wanted = (pairs + threads - 1) / threads;
  const int blocks = (int)(wanted < 65535 * 8 ? wanted : 65535 * 8);
  rotary_thd_kernel<T><<<blocks, threads, 0, stream>>>(
      static_cast<const T*>(args.x), static_cast<T*>(args.out), args.cu_seqlens, args.inv_freq, args.tokens,
      args.heads, args.half, args.x_token_stride, args.x_head_stride, args.segments, args.sign);
  return cudaGetLastError();
}

}  // namespace

extern "C" int rotary_thd_launch(const RotaryArgs* args, int dtype, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t error;
  switch (dtype) {
    case ROTARY_FLOAT32: error = launch<float>(*args, s); break;
    case ROTARY_FLOAT16: error = launch<__half>(*args, s); break;
    case ROTARY_BFLOAT16: error = launch<__nv_bfloat16>(*args, s); break;
    default: return -1;
  }
  return (int)error;
}

extern "C" const char* rotary_error_string(int code) {
  return code < 0 ? "unsupported dtype" : cudaGetErrorString(static_cast<cudaError_t>(code));
}
