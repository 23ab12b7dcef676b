"""Checkpoints: megatron-core distributed checkpoints that load at any TP/PP layout."""
