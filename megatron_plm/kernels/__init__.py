"""Fused GPU kernels of ``csrc/`` with their PyTorch references; each runs the reference where its
kernel cannot (CPU tensors, no extension built)."""
