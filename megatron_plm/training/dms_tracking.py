"""Zero-shot DMS Spearman while training (``training.eval_dms``): the family model's curve on its assay.

Built once (assays read, the subset of mutants drawn, the alignment's covered region found), then
called at validation with the live model: the model is put in eval mode, scores the assays' mutants
as ``evaluate dms`` does (CLM likelihood ratios, MLM masked marginals), and returns per assay the
Spearman, the mutants scored and the seconds it took -- the cost, stated in every entry. Every rank
scores the same mutants on its own replica (data parallelism) and gets the same figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from megatron_plm.training.config import EvalDmsConfig, TrainConfig


def load_tracked_assays(cfg: EvalDmsConfig) -> list:
    """The assays of ``cfg`` (files and folders), each cut to its covered region and its mutant subset."""
    from megatron_plm.evaluation.dms import load_assay_file, load_assays, restrict_to_region, subsample

    assays = []
    for path in map(Path, cfg.assays):
        assays += load_assays(path) if path.is_dir() else [load_assay_file(path, cfg.wildtype)]
    if cfg.msa:
        from megatron_plm.data.preprocess.homologs import homolog_weights
        from megatron_plm.data.preprocess.msa import detect_format, read_msa
        from megatron_plm.evaluation.profile import build_profile

        alignment = read_msa(cfg.msa, detect_format(cfg.msa, flag="training.eval_dms.msa (its suffix)"))
        weights = homolog_weights(alignment).weights
        for i, assay in enumerate(assays):
            profile = build_profile(alignment, target=assay.wild_type, weights=weights)
            if profile is None:
                raise ValueError(f"training.eval_dms.msa {cfg.msa}: {assay.dms_id}'s wild type is not of this family")
            span = profile.region(assay.wild_type, cfg.min_coverage)
            if span is not None and cfg.region == "covered":
                assays[i] = restrict_to_region(assay, *span)
    return [subsample(assay, cfg.max_mutants, cfg.seed) for assay in assays]


@dataclass
class DmsTracker:
    config: EvalDmsConfig
    assays: list
    context: int
    objective: str
    reverse: bool
    tokenizer: object
    vocab_size: int

    @classmethod
    def build(cls, config: TrainConfig, tokenizer=None) -> DmsTracker | None:
        """None when ``training.eval_dms.assays`` is empty. ``tokenizer``: the run's (loaded when None)."""
        cfg = config.training.eval_dms
        if not cfg.assays:
            return None
        from megatron_plm.data.tokenizers.protein import ESM2_VOCAB, VOCAB
        from megatron_plm.data.tokenizers.subword import SubwordTokenizer, load_tokenizer

        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.data.tokenizer)
        if isinstance(tokenizer, SubwordTokenizer):
            vocab = tokenizer.vocab_size
        else:
            vocab = len(ESM2_VOCAB) if config.objective == "mlm" else len(VOCAB)
        return cls(
            cfg,
            load_tracked_assays(cfg),
            config.data.seq_length,
            config.objective,
            (config.data.reverse_prob or 0) > 0,
            tokenizer,
            vocab,
        )

    def due(self, step: int, final: bool) -> bool:
        return final or not self.config.interval or step % self.config.interval == 0

    def __call__(self, chunk, packed: bool, device) -> dict:
        """``{DMS_id: {spearman, mutants, seconds}}`` of the model ``chunk`` (left in the mode it was in)."""
        from megatron_plm.evaluation.dms import score_assay, spearman
        from megatron_plm.evaluation.model import ScoringModel, chunk_forward

        model = ScoringModel(
            name="training",
            objective=self.objective,
            context=self.context,
            reverse=self.reverse,
            vocab_size=self.vocab_size,
            forward_logits=chunk_forward(chunk, self.objective, packed),
            device=device,
            tokenizer=self.tokenizer,
        )
        was_training = chunk.training
        chunk.eval()
        try:
            out = {}
            for assay in self.assays:
                started = time.perf_counter()
                scores = score_assay(model, assay)
                out[assay.dms_id] = {
                    "spearman": spearman(scores, assay.scores),
                    "mutants": len(assay.mutants),
                    "seconds": round(time.perf_counter() - started, 2),
                }
            return out
        finally:
            chunk.train(was_training)
