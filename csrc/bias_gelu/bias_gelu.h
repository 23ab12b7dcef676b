// C interface between the CUDA bias + GELU kernels (bias_gelu.cu, built by nvcc) and their Python
// binding (bias_gelu_binding.cpp, built against torch): plain pointers and sizes, so neither side needs
// the other's headers.
#pragma once

#include <cstdint>

enum BiasGeluDtype { BIAS_GELU_FLOAT32 = 0, BIAS_GELU_FLOAT16 = 1, BIAS_GELU_BFLOAT16 = 2 };

struct BiasGeluArgs {
  const void* x;         // [rows, cols], contiguous: the MLP's first projection without its bias
  const void* bias;      // [cols], contiguous
  const void* grad_out;  // [rows, cols], contiguous; backward only
  void* out;             // [rows, cols]: GELU(x + bias) forward, d loss / d x backward
  float* bias_partial;   // [row_chunks, cols] fp32 partial sums of d loss / d x; backward only
  int64_t rows;
  int cols;
  int row_chunks;        // backward only: from bias_gelu_row_chunks
};

// How many row chunks the backward splits rows into (each writes one row of bias_partial): enough
// blocks to fill a device of `multiprocessors` SMs, few enough that the partial sums stay small next to
// x. A pure function: the caller knows the device (Python caches its SM count), so a backward pass
// makes no device query.
extern "C" int bias_gelu_row_chunks(int64_t rows, int cols, int multiprocessors);
extern "C" int bias_gelu_forward_launch(const BiasGeluArgs* args, int dtype, void* stream);
extern "C" int bias_gelu_backward_launch(const BiasGeluArgs* args, int dtype, void* stream);
extern "C" const char* bias_gelu_error_string(int code);
