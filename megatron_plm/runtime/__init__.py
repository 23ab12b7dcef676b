"""Process start-up: torch.distributed, megatron-core parallel state, the CPU shim."""
