"""Sizing: parameter counts, memory per GPU, throughput and time to a token budget."""
