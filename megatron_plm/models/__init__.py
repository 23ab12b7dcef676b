"""Model definitions: a typed config and the builder over megatron-core."""
