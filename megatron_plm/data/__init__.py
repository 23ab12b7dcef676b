"""Data path, in the order data flows.

- ``preprocess/`` (offline, once per corpus): FASTA/JSONL/alignment readers, the encode hot loop,
  cluster joins and homolog weights -> a tokenized corpus on disk.
- ``corpus.py``: that on-disk corpus (megatron ``.bin/.idx`` plus per-sequence metadata), the
  contract between the two halves.
- ``tokenizers/``: the amino-acid and subword tokenizers, and their ``transformers`` files.
- ``samples/`` (at training time): splits, sampling order, CLM/MLM samples, the cached indices,
  microbatches and the batch loader that resumes at a consumed-sample count.
"""
