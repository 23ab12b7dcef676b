// C interface between the CUDA rotary kernel (rotary.cu, built by nvcc) and its Python binding
// (rotary_binding.cpp, built against torch): plain pointers and sizes, so neither side needs the
// other's headers.
#pragma once

#include <cstdint>

enum RotaryDtype { ROTARY_FLOAT32 = 0, ROTARY_FLOAT16 = 1, ROTARY_BFLOAT16 = 2 };

struct RotaryArgs {
  const void* x;              // [tokens, heads, 2 * half], last dim contiguous
  void* out;                  // [tokens, heads, 2 * half], contiguous
  const int32_t* cu_seqlens;  // [segments + 1], device
  const float* inv_freq;      // [half], device, fp32
  int64_t tokens;
  int heads;
  int half;
  int64_t x_token_stride;     // elements
  int64_t x_head_stride;      // elements
  int segments;
  float sign;                 // +1 forward, -1 backward (the inverse rotation)
};

extern "C" int rotary_thd_launch(const RotaryArgs* args, int dtype, void* stream);
extern "C" const char* rotary_error_string(int code);
