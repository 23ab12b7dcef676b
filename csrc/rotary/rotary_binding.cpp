// Python binding of the rotary kernel: checks every input, then calls the CUDA launcher through the
// C interface of rotary.h. Built against torch's CPU libraries only (the stream comes from Python),
// so the same extension builds on CPU machines with nvcc and on GPU machines.

#include <torch/extension.h>

#include "rotary.h"

namespace {

int dtype_code(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return ROTARY_FLOAT32;
    case at::kHalf: return ROTARY_FLOAT16;
    case at::kBFloat16: return ROTARY_BFLOAT16;
    default: TORCH_CHECK(false, "rotary_thd: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
  return -1;
}

// x: [tokens, heads, head_dim] (last dim contiguous); cu_seqlens: int32 [segments + 1] from 0 to tokens;
// inv_freq: float32 [head_dim / 2]. Returns the rotated tensor (contiguous). sign -1 applies the inverse.
at::Tensor rotary_thd(const at::Tensor& x, const at::Tensor& cu_seqlens, const at::Tensor& inv_freq, double sign,
                      int64_t stream) {
  TORCH_CHECK(x.is_cuda(), "rotary_thd: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 3, "rotary_thd: x must be [tokens, heads, head_dim], got ", x.sizes());
  TORCH_CHECK(x.stride(2) == 1, "rotary_thd: x's last dimension must be contiguous");
  TORCH_CHECK(x.size(2) % 2 == 0, "rotary_thd: head_dim must be even, got ", x.size(2));
  TORCH_CHECK(x.size(0) < (int64_t{1} << 31), "rotary_thd: at most 2^31 - 1 tokens");
  TORCH_CHECK(cu_seqlens.is_cuda() && cu_seqlens.get_device() == x.get_device(),
              "rotary_thd: cu_seqlens must be on x's device");
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt && cu_seqlens.dim() == 1 && cu_seqlens.is_contiguous() &&
                  cu_seqlens.numel() >= 2,
              "rotary_thd: cu_seqlens must be a contiguous int32 vector of at least 2 offsets");
  TORCH_CHECK(inv_freq.is_cuda() && inv_freq.get_device() == x.get_device(),
              "rotary_thd: inv_freq must be on x's device");
  TORCH_CHECK(inv_freq.scalar_type() == at::kFloat && inv_freq.is_contiguous() && inv_freq.dim() == 1 &&
                  inv_freq.numel() * 2 == x.size(2),
              "rotary_thd: inv_freq must be a contiguous float32 vector of head_dim / 2 = ", x.size(2) / 2,
              " entries, got ", inv_freq.sizes());
  TORCH_CHECK(sign == 1.0 || sign == -1.0, "rotary_thd: sign must be +1 or -1");
  auto out = at::empty({x.size(0), x.size(1), x.size(2)}, x.options().memory_format(at::MemoryFormat::Contiguous));
  RotaryArgs args{x.data_ptr(), out.data_ptr(), cu_seqlens.data_ptr<int32_t>(), inv_freq.data_ptr<float>(),
                  x.size(0), static_cast<int>(x.size(1)), static_cast<int>(x.size(2) / 2), x.stride(0), x.stride(1),
                  static_cast<int>(cu_seqlens.numel() - 1), static_cast<float>(sign)};
  const int code = rotary_thd_launch(&args, dtype_code(x), reinterpret_cast<void*>(stream));
  TORCH_CHECK(code == 0, "rotary_thd: kernel launch failed: ", rotary_error_string(code));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused rotary position embedding over packed (thd) sequences";
  m.def("rotary_thd", &rotary_thd, "Rotate x [tokens, heads, head_dim] by per-protein positions",
        py::arg("x"), py::arg("cu_seqlens"), py::arg("inv_freq"), py::arg("sign"), py::arg("stream"));
}
