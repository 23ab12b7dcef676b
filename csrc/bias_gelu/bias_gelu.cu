// Bias add + exact (erf) GELU, the MLP activation of ESM-2 and of our CLM recipes, forward and backward.
//
// Why a kernel: without Transformer Engine, megatron-core's MLP runs `x + bias` and `gelu` as two
// PyTorch kernels forward, and `gelu_backward` plus a column sum for the bias gradient backward: eight
// passes over the [tokens, ffn] activation, the largest non-GEMM item of a step once RoPE is fused
// (benchmarks/step_profile.py: ~10-12%). megatron-core's own fused bias-GELU is the tanh approximation,
// which would change ESM-2's numerics. Here the forward reads x once and writes once; the backward
// reads x and the incoming gradient once, writes the gradient of x, and sums the bias gradient on the
// way (fp32 partial sums per row chunk, reduced by the caller): five passes in all. x + bias is kept
// in fp32, never rounded to the storage type, so the kernel's error is below PyTorch's own.
//
// gelu(v)  = v * Phi(v),                 Phi(v) = (1 + erf(v / sqrt 2)) / 2
// gelu'(v) = Phi(v) + v * phi(v),        phi(v) = exp(-v^2 / 2) / sqrt(2 pi)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "bias_gelu.h"
#include "float_convert.cuh"

namespace {

constexpr float kSqrtHalf = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr int kForwardThreads = 256;
constexpr int kBackwardThreads = 128;

using megatron_plm::from_float;
using megatron_plm::to_float;

__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.0f + erff(v * kSqrtHalf)); }

__device__ __forceinline__ float gelu_grad(float v) {
  const float cdf = 0.5f * (1.0f + erff(v * kSqrtHalf));
  return cdf + v * kInvSqrt2Pi * expf(-0.5f * v * v);
}

// VEC consecutive elements moved as one aligned load/store (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// One thread per VEC consecutive elements of a row (cols % VEC == 0, so a pack never crosses a row).
template <typename T, int VEC>
__global__ void __launch_bounds__(kForwardThreads)
bias_gelu_forward_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out, int64_t rows,
                         int cols) {
  using P = Pack<T, VEC>;
  const int packs_per_row = cols / VEC;
  const int64_t packs = rows * packs_per_row;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < packs; p += (int64_t)gridDim.x * blockDim.x) {
    const int col = (int)(p % packs_per_row) * VEC;
    const P xs = reinterpret_cast<const P*>(x)[p];
    const P bs = *reinterpret_cast<const P*>(bias + col);
    P ys;
#pragma unroll
    for (int j = 0; j < VEC; ++j) ys.v[j] = from_float<T>(gelu(to_float(xs.v[j]) + to_float(bs.v[j])));
    reinterpret_cast<P*>(out)[p] = ys;
  }
}

// Block (i, chunk): threads own VEC consecutive columns each (a warp reads 32 * VEC contiguous elements
// of a row) and walk the rows of one chunk, writing the gradient of x and summing it per column in fp32.
template <typename T, int VEC>
__global__ void __launch_bounds__(kBackwardThreads)
bias_gelu_backward_kernel(const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ grad_out,
                          T* __restrict__ grad_x, float* __restrict__ bias_partial, int64_t rows, int cols,
                          int64_t rows_per_chunk) {
  using P = Pack<T, VEC>;
  const int col = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  if (col >= cols) return;
  const int64_t first = blockIdx.y * rows_per_chunk;
  const int64_t last = first + rows_per_chunk < rows ? first + rows_per_chunk : rows;
  const P bs = *reinterpret_cast<const P*>(bias + col);
  float b[VEC], sum[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    b[j] = to_float(bs.v[j]);
    sum[j] = 0.0f;
  }
#pragma unroll 4
  for (int64_t row = first; row < last; ++row) {
    const int64_t offset = row * cols + col;
    const P xs = *reinterpret_cast<const P*>(x + offset);
    const P gs = *reinterpret_cast<const P*>(grad_out + offset);
    P dx;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float g = to_float(gs.v[j]) * gelu_grad(to_float(xs.v[j]) + b[j]);
      dx.v[j] = from_float<T>(g);
      sum[j] += g;
    }
    *reinterpret_cast<P*>(grad_x + offset) = dx;
  }
  float* partial = bias_partial + blockIdx.y * (int64_t)cols + col;
#pragma unroll
  for (int j = 0; j < VEC; ++j) partial[j] = sum[j];
}

// 16-byte packs when every row starts 16-byte aligned, else one element at a time.
template <typename T>
int pack_width(const BiasGeluArgs& a) {
  constexpr int wide = 16 / sizeof(T);
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return a.cols % wide == 0 && aligned(a.x) && aligned(a.bias) && aligned(a.out) && aligned(a.grad_out) ? wide : 1;
}

template <typename T, int VEC>
cudaError_t forward(const BiasGeluArgs& a, cudaStream_t stream) {
  const int64_t packs = a.rows * (a.cols / VEC);
  if (packs == 0) return cudaSuccess;
  const int64_t wanted = (packs + kForwardThreads - 1) / kForwardThreads;
  const int blocks = (int)(wanted < 65535 * 8 ? wanted : 65535 * 8);
  bias_gelu_forward_kernel<T, VEC><<<blocks, kForwardThreads, 0, stream>>>(
      static_cast<const T*>(a.x), static_cast<const T*>(a.bias), static_cast<T*>(a.out), a.rows, a.cols);
  return cudaGetLastError();
}

template <typename T, int VEC>
cudaError_t backward(const BiasGeluArgs& a, cudaStream_t stream) {
  if (a.cols == 0) return cudaSuccess;
  const int columns_per_block = kBackwardThreads * VEC;
  const dim3 grid((a.cols + columns_per_block - 1) / columns_per_block, a.row_chunks);
  const int64_t rows_per_chunk = (a.rows + a.row_chunks - 1) / a.row_chunks;
  bias_gelu_backward_kernel<T, VEC><<<grid, kBackwardThreads, 0, stream>>>(
      static_cast<const T*>(a.x), static_cast<const T*>(a.bias), static_cast<const T*>(a.grad_out),
      static_cast<T*>(a.out), a.bias_partial, a.rows, a.cols, rows_per_chunk);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch(const BiasGeluArgs& a, bool is_backward, cudaStream_t stream) {
  constexpr int wide = 16 / sizeof(T);
  if (pack_width<T>(a) == wide) return is_backward ? backward<T, wide>(a, stream) : forward<T, wide>(a, stream);
  return is_backward ? backward<T, 1>(a, stream) : forward<T, 1>(a, stream);
}

int launch(const BiasGeluArgs* args, int dtype, bool is_backward, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t error;
  switch (dtype) {
    case BIAS_GELU_FLOAT32: error = dispatch<float>(*args, is_backward, s); break;
    case BIAS_GELU_FLOAT16: error = dispatch<__half>(*args, is_backward, s); break;
    case BIAS_GELU_BFLOAT16: error = dispatch<__nv_bfloat16>(*args, is_backward, s); break;
    default: return -1;
  }
  return (int)error;
}

}  // namespace

extern "C" int bias_gelu_row_chunks(int64_t rows, int cols, int multiprocessors) {
  const int sms = multiprocessors > 0 ? multiprocessors : 132;
  const int64_t column_blocks = cols / (kBackwardThreads * 8) > 0 ? cols / (kBackwardThreads * 8) : 1;
  int64_t chunks = (8 * (int64_t)sms + column_blocks - 1) / column_blocks;  // ~8 blocks per SM
  const int64_t at_most = (rows + 15) / 16;                                  // >= 16 rows per chunk
  if (chunks > at_most) chunks = at_most;
  if (chunks > 65535) chunks = 65535;
  return chunks < 1 ? 1 : (int)chunks;
}

extern "C" int bias_gelu_forward_launch(const BiasGeluArgs* args, int dtype, void* stream) {
  return launch(args, dtype, false, stream);
}

extern "C" int bias_gelu_backward_launch(const BiasGeluArgs* args, int dtype, void* stream) {
  return launch(args, dtype, true, stream);
}

extern "C" const char* bias_gelu_error_string(int code) {
  return code < 0 ? "unsupported dtype" : cudaGetErrorString(static_cast<cudaError_t>(code));
}
