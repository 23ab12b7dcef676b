"""Tokenizers: the amino-acid vocabulary, learned subword vocabularies, and their ``transformers`` files."""
