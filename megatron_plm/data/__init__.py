"""Data path: FASTA/JSONL readers, the amino-acid tokenizer, corpus preprocessing."""
