"""Offline preprocessing: input files -> a tokenized corpus (``megatron-plm preprocess``)."""
