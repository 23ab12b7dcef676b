// Python binding of the bias + GELU kernels: checks every input, then calls the CUDA launchers through
// the C interface of bias_gelu.h. Built against torch's CPU libraries only (the stream comes from
// Python), so the same extension builds on CPU machines with nvcc and on GPU machines.

#include <torch/extension.h>

#include <tuple>

#include "bias_gelu.h"

namespace {

int dtype_code(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return BIAS_GELU_FLOAT32;
    case at::kHalf: return BIAS_GELU_FLOAT16;
    case at::kBFloat16: return BIAS_GELU_BFLOAT16;
    default: TORCH_CHECK(false, "bias_gelu: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
  return -1;
}

// x: [..., cols] contiguous CUDA tensor; bias: [cols] of x's dtype and device.
void check_inputs(const char* name, const at::Tensor& x, const at::Tensor& bias) {
  TORCH_CHECK(x.is_cuda(), name, ": x must be a CUDA tensor");
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous(), name, ": x must be a contiguous tensor [..., features], got sizes ",
              x.sizes(), " strides ", x.strides());
  TORCH_CHECK(x.size(-1) < (int64_t{1} << 31), name, ": at most 2^31 - 1 features");
  TORCH_CHECK(bias.is_cuda() && bias.get_device() == x.get_device(), name, ": bias must be on x's device");
  TORCH_CHECK(bias.scalar_type() == x.scalar_type(), name, ": bias must have x's dtype (", x.scalar_type(),
              "), got ", bias.scalar_type());
  TORCH_CHECK(bias.dim() == 1 && bias.is_contiguous() && bias.size(0) == x.size(-1), name,
              ": bias must be a contiguous vector of x's last dimension (", x.size(-1), "), got ", bias.sizes());
}

BiasGeluArgs make_args(const at::Tensor& x, const at::Tensor& bias) {
  BiasGeluArgs args{};
  args.x = x.data_ptr();
  args.bias = bias.data_ptr();
  args.cols = static_cast<int>(x.size(-1));
  args.rows = args.cols == 0 ? 0 : x.numel() / args.cols;
  return args;
}

// GELU(x + bias), a new tensor shaped like x.
at::Tensor bias_gelu_forward(const at::Tensor& x, const at::Tensor& bias, int64_t stream) {
  check_inputs("bias_gelu_forward", x, bias);
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  BiasGeluArgs args = make_args(x, bias);
  args.out = out.data_ptr();
  const int code = bias_gelu_forward_launch(&args, dtype_code(x), reinterpret_cast<void*>(stream));
  TORCH_CHECK(code == 0, "bias_gelu_forward: kernel launch failed: ", bias_gelu_error_string(code));
  return out;
}

// The gradient of x (shaped like x) and fp32 partial sums of it over row chunks [chunks, cols], whose
// column sums are the gradient of bias.
std::tuple<at::Tensor, at::Tensor> bias_gelu_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                      const at::Tensor& bias, int64_t multiprocessors,
                                                      int64_t stream) {
  check_inputs("bias_gelu_backward", x, bias);
  TORCH_CHECK(grad_out.is_cuda() && grad_out.get_device() == x.get_device(),
              "bias_gelu_backward: grad_out must be on x's device");
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && grad_out.sizes() == x.sizes() && grad_out.is_contiguous(),
              "bias_gelu_backward: grad_out must be contiguous with x's dtype and sizes ", x.sizes(), ", got ",
              grad_out.scalar_type(), " ", grad_out.sizes());
  BiasGeluArgs args = make_args(x, bias);
  args.row_chunks = bias_gelu_row_chunks(args.rows, args.cols, static_cast<int>(multiprocessors));
  auto grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto partial = at::empty({args.row_chunks, x.size(-1)}, x.options().dtype(at::kFloat));
  args.grad_out = grad_out.data_ptr();
  args.out = grad_x.data_ptr();
  args.bias_partial = partial.data_ptr<float>();
  const int code = bias_gelu_backward_launch(&args, dtype_code(x), reinterpret_cast<void*>(stream));
  TORCH_CHECK(code == 0, "bias_gelu_backward: kernel launch failed: ", bias_gelu_error_string(code));
  return {grad_x, partial};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused bias add + exact (erf) GELU, forward and backward";
  m.def("bias_gelu_forward", &bias_gelu_forward, "GELU(x + bias)", py::arg("x"), py::arg("bias"), py::arg("stream"));
  m.def("bias_gelu_backward", &bias_gelu_backward, "Gradient of x and per-chunk partial sums for the bias gradient",
        py::arg("grad_out"), py::arg("x"), py::arg("bias"), py::arg("multiprocessors"), py::arg("stream"));
  m.def("row_chunks", &bias_gelu_row_chunks, "Row chunks of the backward's bias gradient on a device of that many SMs",
        py::arg("rows"), py::arg("cols"), py::arg("multiprocessors"));
}
