#!/usr/bin/env python
"""Data pipeline throughput: our MLM and CLM samples against the transformers MLM recipe.

The same proteins (the first ``--samples`` documents our MLM dataset visits in the shipped
UniRef90 sample, or a corpus given with ``--corpus``) go through, in one run:

  (a) ``transformers``: ``EsmTokenizer`` (truncation to the context) +
      ``DataCollatorForLanguageModeling(mlm_probability=0.15)``, batches padded to the longest;
  (b) ours, MLM: ``ProteinDataset.samples`` per microbatch + ``batch_from_arrays`` (one protein per
      sample, ESM-2 crop; and the packed mode);
  (c) ours, CLM packing.

Columns: samples/s, real (non-pad) tokens/s, ratio to (a) in samples/s, and the fraction of
non-pad tokens per batch. Usage:

    python benchmarks/data_pipeline.py [--samples 2048] [--seq-length 1024] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "uniref90_esm2_pretraining_sample_10k.fasta.gz"


def corpus_prefix(given: str | None, scratch: Path) -> str:
    if given:
        return given
    from megatron_plm.data.preprocess.pipeline import PreprocessConfig, preprocess

    prefix = scratch / "sample"
    preprocess(PreprocessConfig(inputs=[str(SAMPLE)], output_prefix=str(prefix), progress=False))
    return str(prefix)


def our_dataset(prefix: str, objective: str, packed: bool, seq_length: int, samples: int):
    from megatron_plm.data.corpus import Corpus
    from megatron_plm.data.samples.datasets import ProteinDataset, SampleConfig
    from megatron_plm.data.samples.splits import Split

    corpus = Corpus.open(prefix)
    return ProteinDataset(
        corpus,
        np.arange(len(corpus)),
        num_samples=samples,
        seed=1,
        split=Split.TRAIN,
        name=objective,
        config=SampleConfig(objective=objective, packed=packed, seq_length=seq_length),
    )


def time_ours(dataset, batch_size: int, causal: bool) -> tuple[float, int, int, int]:
    from megatron_plm.data.samples.batch import batch_from_arrays
    from megatron_plm.data.samples.loader import fetch_samples

    started = time.perf_counter()
    real = total = 0
    for start in range(0, len(dataset) - batch_size + 1, batch_size):
        batch = batch_from_arrays(fetch_samples(dataset, np.arange(start, start + batch_size)), causal=causal)
        real += int((batch.segment_ids >= 0).sum())
        total += batch.tokens.numel()
    count = (len(dataset) // batch_size) * batch_size
    return time.perf_counter() - started, count, real, total


def time_transformers(sequences: list[str], batch_size: int, seq_length: int, scratch: Path):
    from transformers import DataCollatorForLanguageModeling, EsmTokenizer

    from megatron_plm.data.tokenizers.protein import ESM2_VOCAB

    vocab = scratch / "vocab.txt"
    vocab.write_text("".join(f"{t}\n" for t in ESM2_VOCAB))
    tokenizer = EsmTokenizer(str(vocab), model_max_length=seq_length)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    started = time.perf_counter()
    real = total = 0
    for start in range(0, len(sequences) - batch_size + 1, batch_size):
        features = [tokenizer(s, truncation=True, max_length=seq_length) for s in sequences[start : start + batch_size]]
        batch = collator(features)
        real += int((batch["input_ids"] != tokenizer.pad_token_id).sum())
        total += batch["input_ids"].numel()
    count = (len(sequences) // batch_size) * batch_size
    return time.perf_counter() - started, count, real, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--corpus", help="a preprocessed corpus prefix (default: the shipped sample)")
    args = parser.parse_args(argv)

    from megatron_plm.data.tokenizers.protein import ProteinTokenizer

    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        prefix = corpus_prefix(args.corpus, scratch)
        tokenizer = ProteinTokenizer()
        mlm = our_dataset(prefix, "mlm", False, args.seq_length, args.samples)
        sequences = [tokenizer.decode(mlm.indexed[int(d)]) for d in mlm.doc_order[: args.samples]]
        rows = [
            (
                "(a) transformers EsmTokenizer + DataCollatorForLanguageModeling",
                *time_transformers(sequences, args.batch_size, args.seq_length, scratch),
            )
        ]
        rows.append(("(b) ours, MLM one protein per sample (ESM-2)", *time_ours(mlm, args.batch_size, False)))
        packed = our_dataset(prefix, "mlm", True, args.seq_length, args.samples)
        rows.append(("(b) ours, MLM packed", *time_ours(packed, args.batch_size, False)))
        clm = our_dataset(prefix, "clm", True, args.seq_length, args.samples)
        rows.append(("(c) ours, CLM packed", *time_ours(clm, args.batch_size, True)))

    base = rows[0][2] / rows[0][1]
    print(f"{args.samples} samples, context {args.seq_length}, batch {args.batch_size}, one process\n")
    print(f"{'pipeline':<66} {'samples/s':>10} {'real tok/s':>11} {'vs (a)':>7} {'non-pad':>8}")
    for name, seconds, count, real, total in rows:
        print(
            f"{name:<66} {count / seconds:>10,.0f} {real / seconds:>11,.0f} "
            f"{count / seconds / base:>6.1f}x {real / total:>8.1%}"
        )
    print("\n(a) pads each batch to its longest protein; ours pad single-protein MLM samples to the context.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
