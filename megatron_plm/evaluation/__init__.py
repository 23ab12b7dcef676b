"""Evaluation: perplexity, zero-shot variant-effect scoring (ProteinGym), generation."""
