#!/usr/bin/env python
"""Residue vs subword tokenizers at equal model size and training tokens: loss per residue and speed.

Trains one tiny CLM (``examples/configs/tiny_clm.yaml``'s shape, reversal off for all) per corpus for
the same steps, global batch and tokens per sample, so each run processes the same tokens and the same
transformer FLOPs per token (the planner's count, embeddings and LM head excluded); the LM head's
6 x hidden x padded-vocabulary FLOPs per token grow with the vocabulary and are printed beside it.
The residue run is the baseline. Every model is then scored on the same held-out proteins (valid-split
documents of the residue corpus, read back as sequences), so per-residue figures compare directly.

    python benchmarks/tokenizer_comparison.py --corpus residue=PREFIX --corpus bpe-1k=PREFIX:TOKENIZER_DIR \\
        --corpus unigram-1k=PREFIX:TOKENIZER_DIR [--steps 150] [--held-out 200]

The first ``--corpus`` must be the residue one (no tokenizer). Each corpus comes from
``megatron-plm preprocess`` (with ``--tokenizer`` for the subword ones) of the same FASTA.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", action="append", required=True, help="NAME=PREFIX[:TOKENIZER_DIR]")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--held-out", type=int, default=200, help="valid-split proteins scored by every model")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    args = parser.parse_args(argv)

    from megatron_plm.training.config import load_config
    from megatron_plm.data.corpus import Corpus
    from megatron_plm.data.samples.splits import Split, assign_splits
    from megatron_plm.evaluation.model import load_scoring_model
    from megatron_plm.evaluation.perplexity import corpus_perplexity, perplexity
    from megatron_plm.training.planner import flops_per_token
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig
    from megatron_plm.training.trainer import train

    runs = []
    for spec in args.corpus:
        name, _, rest = spec.partition("=")
        prefix, _, tokenizer = rest.partition(":")
        runs.append((name, prefix, tokenizer or None))
    if runs[0][2] is not None:
        parser.error("the first --corpus is the baseline and must be the residue one (no tokenizer)")
    scratch = Path(tempfile.mkdtemp(prefix="tokenizer_comparison_", dir=args.workdir))

    # Held-out proteins: the first valid-split documents of the residue corpus (clusters keep them apart
    # from training in every corpus: splits hash the cluster, and the corpora hold the same records).
    residue_corpus = Corpus.open(runs[0][1])
    split = assign_splits(residue_corpus, (0.9, 0.05, 0.05), by_cluster=True)
    indexed = residue_corpus.indexed_dataset()
    held_out = [
        (str(i), np.asarray(indexed[int(i)], dtype=np.int64))
        for i in np.flatnonzero(split == Split.VALID)[: args.held_out]
    ]
    held_out_residues = sum(len(r) for _, r in held_out)

    rows = []
    with initialize(ParallelConfig(), seed=1234) as runtime:
        for name, prefix, tokenizer in runs:
            overrides = [
                f"name={name}",
                f"data.sources=[{{prefix: {prefix}}}]",
                "data.reverse_prob=0",
                f"training.train_iters={args.steps}",
                "training.eval_interval=0",
                "optimizer.warmup_iters=10",
                f"checkpoint.save={scratch / name}",
                "checkpoint.save_interval=0",
                f"logging.log_interval={args.steps}",
            ]
            if tokenizer:
                overrides.append(f"data.tokenizer={tokenizer}")
            config = load_config(REPO / "examples/configs/tiny_clm.yaml", overrides).resolve()
            result = train(config, runtime)
            timed = result.history[
                min(5, len(result.history) - 1) :
            ]  # steady state: skip the first steps (warm-up, allocation)
            tokens_per_step = config.training.global_batch_size * config.data.seq_length
            tokens_per_s = tokens_per_step * len(timed) / sum(h["seconds"] for h in timed)
            meta = Corpus.open(prefix).meta
            residues_per_token = meta["summary"]["residues_written"] / meta["num_tokens"]
            model = load_scoring_model(scratch / name, runtime)
            scores = perplexity(model, held_out)
            nll = sum(s.nll for s in scores)
            rows.append(
                {
                    "tokenizer": name,
                    "vocab": config.model.vocab_size,
                    "residues_per_token": residues_per_token,
                    "flops_per_token": flops_per_token(config),
                    "steps": args.steps,
                    "head_flops_per_token": 6 * config.model.hidden_size * config.model.padded_vocab_size(),
                    "train_tokens": tokens_per_step * args.steps,
                    "tokens_per_s": tokens_per_s,
                    "residues_per_s": tokens_per_s * residues_per_token,
                    "held_out_loss_per_token": nll / sum(s.tokens for s in scores),
                    "held_out_loss_per_residue": nll / sum(s.residues for s in scores),
                    "held_out_ppl_per_residue": corpus_perplexity(scores, per_residue=True),
                    "held_out_tokens": sum(s.tokens for s in scores),
                    "held_out_residues": sum(s.residues for s in scores),
                }
            )
            print(json.dumps(rows[-1]), flush=True)

    base = rows[0]
    print(
        f"\n{len(held_out)} held-out proteins ({held_out_residues:,} residues); {args.steps} steps x "
        f"{rows[0]['train_tokens'] // args.steps:,} tokens for every run; baseline = {base['tokenizer']}"
    )
    header = (
        f"{'tokenizer':<12} {'vocab':>6} {'res/token':>9} {'FLOPs/token':>11} {'+LM head':>9} {'loss/token':>10} "
        f"{'loss/residue':>12} {'ppl/residue':>11} {'tokens/s':>9} {'residues/s':>10} {'vs base':>8}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['tokenizer']:<12} {row['vocab']:>6} {row['residues_per_token']:>9.2f} {row['flops_per_token']:>11.3g} "
            f"{row['head_flops_per_token']:>9.3g} "
            f"{row['held_out_loss_per_token']:>10.4f} {row['held_out_loss_per_residue']:>12.4f} "
            f"{row['held_out_ppl_per_residue']:>11.2f} {row['tokens_per_s']:>9,.0f} {row['residues_per_s']:>10,.0f} "
            f"{row['residues_per_s'] / base['residues_per_s']:>7.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
