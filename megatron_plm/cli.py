"""``megatron-plm`` command line: a thin layer over library functions.

Each subcommand parses its flags into the typed configs of the package and calls
one function; no logic lives here.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from pathlib import Path

from megatron_plm.config import add_arguments, from_args


def _cmd_env(args) -> int:
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


def _cmd_tokenizer(args) -> int:
    from megatron_plm.data.preprocess.tokenizer_training import train_subword_tokenizer

    meta = train_subword_tokenizer(args)
    fed = meta["trained_on"]
    print(
        f"wrote {args.output}: {meta['model_type']} vocabulary of {meta['vocab_size']:,} tokens "
        f"({len(meta['fixed_tokens'])} fixed + {meta['vocab_size'] - len(meta['fixed_tokens']):,} pieces) from "
        f"{fed['sequences']:,} sequences ({fed['residues']:,} residues; a sample of at most "
        f"{fed['sample_sequences']:,} kept) in {fed['seconds']:.1f} s"
    )
    return 0


def _cmd_train(args) -> int:
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


def _cmd_plot(args) -> int:
    from megatron_plm.training.curves import plot_runs

    print(f"wrote {plot_runs(args.run_dirs, args.output)}")
    return 0


def _cmd_export_hf(args) -> int:
    from megatron_plm.checkpoint.export import export_hf
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig

    with initialize(ParallelConfig()) as runtime:
        out = export_hf(args.checkpoint, args.output, runtime, dtype=args.dtype, show_progress=True)
    print(f"wrote {out}: load it with transformers.AutoModelFor{{MaskedLM,CausalLM}}.from_pretrained({str(out)!r})")
    return 0


def _cmd_import_hf(args) -> int:
    from megatron_plm.checkpoint.export import import_hf
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig

    with initialize(ParallelConfig()) as runtime:
        out = import_hf(args.source, args.output, runtime)
    print(f"wrote {out}: train from it with checkpoint.init_from={out}")
    return 0


def _check_evaluate_numbers(args) -> None:
    """Before the model loads: counts that would be misread (--chains -5 used every chain, --limit -1
    failed in itertools, --mask-ratio 2 masked nothing sensible)."""
    minimum = {"limit": 0, "chains": 1, "batch_size": 1, "max_length": 1, "num_sequences": 1, "window": 0, "top_k": 0}
    flag = {"num_sequences": "num"}
    for name, low in minimum.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise ValueError(f"--{flag.get(name, name).replace('_', '-')} must be >= {low}, got {value}")
    for name in ("mask_ratio", "test_fraction"):
        value = getattr(args, name, None)
        if value is not None and not 0 < value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")


def _cmd_evaluate(args) -> int:
    from megatron_plm.evaluation.dms import DmsTask
    from megatron_plm.evaluation.embed import EmbedTask
    from megatron_plm.evaluation.generate import GenerateTask
    from megatron_plm.evaluation.model import load_scoring_model
    from megatron_plm.evaluation.perplexity import PerplexityTask
    from megatron_plm.evaluation.probe import ProbeTask
    from megatron_plm.outputs import prepare_output, prepare_output_dir
    from megatron_plm.runtime.distributed import initialize
    from megatron_plm.runtime.parallel import ParallelConfig

    if hasattr(args, "validate"):
        args.validate()
    if getattr(args, "format", None) == "fair-esm":  # embed into a directory of .pt files
        prepare_output_dir(args.output, what="--output")
    elif getattr(args, "output", None) is not None:  # before minutes of work, not after (probe writes no file)
        prepare_output(args.output, what="--output")
    _check_evaluate_numbers(args)
    _check_inputs(args)  # before loading a model, naming the flag (defaults included)
    if isinstance(args, GenerateTask):  # a bad --prompt is refused before the model loads
        prompts = read_prompts(args.prompt)
    if not args.progress:
        from megatron_plm.progress import silence_library_progress

        silence_library_progress()
    with initialize(ParallelConfig()) as runtime:
        model = load_scoring_model(args.model, runtime)
        if isinstance(args, PerplexityTask):
            _evaluate_perplexity(model, args)
        elif isinstance(args, DmsTask):
            _evaluate_dms(model, args)
        elif isinstance(args, EmbedTask):
            _evaluate_embed(model, args)
        elif isinstance(args, ProbeTask):
            _evaluate_probe(model, args)
        else:
            _evaluate_generate(model, args, prompts)
    return 0


def _check_inputs(args) -> None:
    """Every input file or folder of the task exists; the error names the flag (defaults included)."""
    from megatron_plm.shipped_data import require_input

    if getattr(args, "fasta", None) is not None:  # perplexity, embed (perplexity may score --corpus instead)
        require_input(args.fasta, "--fasta")
    if getattr(args, "train_corpus", None) is not None:  # asked for: a missing corpus or mmseqs fails now
        from megatron_plm.data.preprocess.mmseqs import find_mmseqs

        if hasattr(args, "corpus") and args.fasta is None:
            raise ValueError("--train-corpus reports leakage of --fasta sequences; it does not apply to --corpus")
        require_input(Path(f"{args.train_corpus}.idx"), "--train-corpus (its .idx)")
        find_mmseqs(args.mmseqs)
    elif hasattr(args, "assays"):
        if Path(args.assays).is_file():  # one assay CSV; its wild type from --wildtype (or mutated_sequence)
            require_input(args.assays, "--assays")
        else:
            require_input(args.assays, "--assays", directory=True)
            require_input(Path(args.assays) / "wildtype.fasta", "--assays (its wildtype.fasta)")
        require_input(args.unigram_fasta, "--unigram-fasta")
        if args.msa is not None:
            require_input(args.msa, "--msa")
    elif hasattr(args, "chains"):  # probe
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
        show_progress=args.progress,
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

    from megatron_plm.data.samples.config import DataConfig
    from megatron_plm.data.samples.splits import Split, split_documents

    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    saved = model.saved_run.data if model.saved_run is not None else {}
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
        load_assay_file,
        load_assays,
        residue_frequencies,
        write_scores,
    )

    if Path(args.assays).is_file():
        assays = [load_assay_file(args.assays, args.wildtype)]
    else:
        assays = load_assays(args.assays, args.assay)
    frequencies = residue_frequencies(r.sequence.decode() for r in read_fasta(args.unigram_fasta))
    profiles = _assay_profiles(args.msa, args.msa_format, assays) if args.msa else None
    results = evaluate_assays(
        model,
        assays,
        frequencies,
        profile=profiles,
        show_progress=args.progress,
        region=args.region,
        min_coverage=args.min_coverage,
        profile_prior=args.profile_prior,
    )
    if args.output:
        write_scores(args.output, results)
    leakage = _leakage(model, args, [(a.dms_id, a.wild_type) for a in assays])
    print(format_table(results, model.name, leakage))


def _leakage(model, args, targets: list[tuple[str, str]]) -> dict | None:
    """The leakage report against ``--train-corpus``, else the model's recorded corpus if it is here
    and MMseqs2 is installed (a note otherwise); None with ``--no-leakage``."""
    from megatron_plm.data.preprocess.mmseqs import MMseqsError, find_mmseqs
    from megatron_plm.evaluation.leakage import leakage_report, recorded_train_corpus

    if not args.leakage:
        return None
    corpus = args.train_corpus
    if corpus is None:
        corpus = recorded_train_corpus(model.saved_run)
        if corpus is None:
            print("leakage report: no --train-corpus and the model's training corpus is not here; skipped")
            return None
        try:
            find_mmseqs(args.mmseqs)
        except MMseqsError as error:
            print(f"leakage report against {corpus} skipped: {error}")
            return None
    print(f"leakage report: searching {len(targets)} assay proteins against {corpus} (MMseqs2)")
    return leakage_report(targets, corpus, mmseqs=args.mmseqs, log=sys.stderr if args.progress else None)


def _assay_profiles(msa: Path, msa_format: str | None, assays: list) -> dict:
    """Each assay's profile of the alignment, its wild type put in (first record, a record, or HMMER)."""
    from megatron_plm.data.preprocess.homologs import homolog_weights
    from megatron_plm.data.preprocess.msa import MSA_FORMATS, detect_format, read_msa
    from megatron_plm.evaluation.profile import build_profile

    fmt = detect_format(msa, msa_format or "auto", flag="--msa-format")
    if fmt not in MSA_FORMATS:
        raise ValueError(f"--msa {msa}: not an alignment ({fmt}); name its kind with --msa-format")
    alignment = read_msa(msa, fmt)
    weights = homolog_weights(alignment).weights  # once: seconds of matrix products
    profiles = {a.dms_id: build_profile(alignment, target=a.wild_type, weights=weights) for a in assays}
    if all(p is None for p in profiles.values()):
        raise ValueError(f"--msa {msa}: no assay's wild type is in it, nor a homolog by HMMER (hmmsearch E <= 1e-5)")
    return {k: p for k, p in profiles.items() if p is not None}


def _evaluate_embed(model, args) -> None:
    import itertools

    from megatron_plm.data.preprocess.fasta import read_fasta
    from megatron_plm.data.tokenizers.protein import ProteinTokenizer
    from megatron_plm.evaluation.embed import INCLUDE, embed_all, save_fair_esm, save_npz

    tok = ProteinTokenizer()
    records = [
        (r.record_id, tok.encode(r.sequence).astype("int64"))
        for r in itertools.islice(read_fasta(args.fasta), args.limit or None)
    ]
    pools = tuple(INCLUDE[name] for name in args.include) if args.include else (args.pool,)
    result = embed_all(
        model,
        records,
        layers=args.layers,
        pools=pools,
        batch_size=args.batch_size,
        toks_per_batch=args.toks_per_batch,
        show_progress=args.progress,
    )
    if args.format == "fair-esm":
        written = save_fair_esm(result, args.output)
        layers = sorted(next(iter(result.values())).layers)
        print(f"wrote {written:,} files {args.output}/<label>.pt (fair-esm's extract.py layout), layers {layers}")
        return
    save_npz(result, args.output)
    shapes = ", ".join(f"{pool} layer_{k} {list(v.shape)}" for pool, e in result.items() for k, v in e.layers.items())
    print(f"wrote {args.output}: {len(records):,} sequences, {shapes}")


def _evaluate_probe(model, args) -> None:
    from megatron_plm.evaluation.probe import format_probe, run_probe

    print(format_probe(run_probe(model, args, show_progress=args.progress), model.name))


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


def _evaluate_generate(model, args, prompts: list[tuple[str, str]]) -> None:
    from megatron_plm.evaluation.generate import generate, generation_perplexities, write_fasta

    sequences, names = [], []
    for name, prompt in prompts:
        sequences += generate(model, args.sampling, prompt, show_progress=args.progress)
        names += [f"{name}_{i}" for i in range(1, args.num_sequences + 1)]
    perplexities = generation_perplexities(model, sequences)
    write_fasta(args.output, sequences, perplexities, names=names)
    print(
        f"wrote {len(sequences)} sequences to {args.output} (mean length "
        f"{sum(map(len, sequences)) / len(sequences):.0f}, mean perplexity {sum(perplexities) / len(perplexities):.2f})"
    )


def _cmd_plan(args) -> int:
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
    from megatron_plm.training.planner import fit_layout, format_plan, make_plan, write_fitted_config

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
    from megatron_plm.training.planner import format_changes, format_plan

    print(format_plan(fit.plan))
    print(f"layout: {format_changes(fit) if fit.changes else 'as configured (it fits)'}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {written}")


def _cmd_scaling_fit(args) -> int:
    from megatron_plm.scaling import fit

    runs = fit.Runs.read_csv(args.runs, args.objective)
    result = fit.fit_all(runs, bootstrap_samples=args.bootstrap, seed=args.seed)
    if args.output:
        from megatron_plm.outputs import write_text_atomic

        write_text_atomic(args.output, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result) if args.json else fit.format_fit(result))
    if args.plot:
        from megatron_plm.scaling.laws import PAPER
        from megatron_plm.scaling.plots import plot_isoflop

        paper = PAPER[args.objective]["allocation"].a if args.objective else None
        print(f"wrote {plot_isoflop(runs, result, args.plot, paper_a=paper)}")
    return 0


def _cmd_scaling_sweep(args) -> int:
    from megatron_plm.config import parse_yaml
    from megatron_plm.scaling import sweep

    shapes = [sweep.parse_shape(s) for s in args.sizes]
    overrides = {k: parse_yaml(v) for k, v in (o.split("=", 1) for o in args.set or [])}
    runs = sweep.make_sweep(args.base, args.budgets, shapes, args.out, overrides)
    print(sweep.format_sweep(runs))
    if args.slurm:
        print(f"wrote {sweep.slurm_array(runs, args.out)}")
    if args.run:
        sweep.run_locally(runs)
        print(f"wrote {sweep.collect(args.out, args.objective)}")
    return 0


def _cmd_scaling_collect(args) -> int:
    from megatron_plm.scaling import sweep

    print(f"wrote {sweep.collect(args.out, args.objective)}")
    return 0


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


COMMANDS = (
    # (command path, its config dataclass, handler, one-line help)
    (
        ("env",),
        "megatron_plm.runtime.environment:EnvConfig",
        _cmd_env,
        "report torch, megatron-core, GPU and accelerator availability",
    ),
    (
        ("preprocess",),
        "megatron_plm.data.preprocess.pipeline:PreprocessConfig",
        "megatron_plm.data.preprocess.pipeline:run_preprocess",
        "FASTA/JSONL -> megatron .bin/.idx corpus with per-sequence metadata",
    ),
    (
        ("merge-corpora",),
        "megatron_plm.data.preprocess.merge:MergeConfig",
        "megatron_plm.data.preprocess.merge:run_merge",
        "join the shards of preprocess --shard I/N into one corpus (no re-encoding)",
    ),
    (
        ("cluster",),
        "megatron_plm.data.preprocess.cluster:ClusterConfig",
        "megatron_plm.data.preprocess.cluster:run_cluster",
        "MMseqs2 identity clusters of any corpus -> representative<TAB>member TSV for preprocess --clusters",
    ),
    (
        ("decontaminate",),
        "megatron_plm.data.preprocess.decontaminate:DecontaminateConfig",
        "megatron_plm.data.preprocess.decontaminate:run_decontaminate",
        "list corpus records homologous to benchmark proteins (MMseqs2) for preprocess --exclude",
    ),
    (
        ("msa-weights",),
        "megatron_plm.data.preprocess.homologs:MsaWeightsConfig",
        "megatron_plm.data.preprocess.homologs:run_msa_weights",
        "homolog weights 1/(neighbours at >= 80%% identity) of an alignment, and identity clusters that carry them into cluster-aware sampling",
    ),
    (
        ("tokenizer", "train"),
        "megatron_plm.data.preprocess.tokenizer_training:SubwordTrainConfig",
        _cmd_tokenizer,
        "learn a subword vocabulary from FASTA files",
    ),
    (("train",), "megatron_plm.training.config:TrainCommand", _cmd_train, "train a CLM or MLM from a YAML config"),
    (
        ("plot",),
        "megatron_plm.training.curves:PlotConfig",
        _cmd_plot,
        "loss, perplexity, LR and tokens/s of one or more runs -> PNG",
    ),
    (
        ("export-hf",),
        "megatron_plm.checkpoint.export:ExportConfig",
        _cmd_export_hf,
        "checkpoint (any TP/PP layout) -> transformers model directory",
    ),
    (
        ("import-hf",),
        "megatron_plm.checkpoint.export:ImportConfig",
        _cmd_import_hf,
        "transformers ESM-2 / GPT-NeoX directory -> our checkpoint",
    ),
    (
        ("plan",),
        "megatron_plm.training.planner:PlanConfig",
        _cmd_plan,
        "size a config (memory, fit, days), or a compute budget (N_opt, D_opt)",
    ),
    (
        ("scaling", "fit"),
        "megatron_plm.scaling.fit:FitConfig",
        _cmd_scaling_fit,
        "fit L(N, D) and IsoFLOP profiles to a runs table (CSV: N, D, loss)",
    ),
    (
        ("scaling", "sweep"),
        "megatron_plm.scaling.sweep:SweepConfig",
        _cmd_scaling_sweep,
        "IsoFLOP grid of configs (tokens = C / 6N); --run or --slurm",
    ),
    (
        ("scaling", "collect"),
        "megatron_plm.scaling.sweep:CollectConfig",
        _cmd_scaling_collect,
        "gather the sweep's final validation losses into runs.csv",
    ),
    (
        ("evaluate", "perplexity"),
        "megatron_plm.evaluation.perplexity:PerplexityTask",
        _cmd_evaluate,
        "CLM perplexity or MLM masked / pseudo-perplexity of a FASTA file",
    ),
    (
        ("evaluate", "dms"),
        "megatron_plm.evaluation.dms:DmsTask",
        _cmd_evaluate,
        "zero-shot variant-effect scoring (ProteinGym protocol)",
    ),
    (
        ("evaluate", "embed"),
        "megatron_plm.evaluation.embed:EmbedTask",
        _cmd_evaluate,
        "per-sequence or per-residue embeddings of a FASTA file (.npz)",
    ),
    (
        ("evaluate", "probe"),
        "megatron_plm.evaluation.probe:ProbeTask",
        _cmd_evaluate,
        "linear secondary-structure probe (Q3/Q8) on frozen per-residue embeddings, beside a residue-identity window baseline",
    ),
    (
        ("evaluate", "generate"),
        "megatron_plm.evaluation.generate:GenerateTask",
        _cmd_evaluate,
        "sample proteins from a CLM",
    ),
)
"""Every subcommand. Its flags come from its config dataclass (:func:`megatron_plm.config.add_arguments`):
a flag's help is the field's docstring, its default the field's."""

GROUPS = {
    "tokenizer": "train subword (SentencePiece BPE / unigram) protein tokenizers",
    "scaling": "IsoFLOP sweeps (sweep, collect) and scaling-law fits (fit)",
    "evaluate": "perplexity, dms (zero-shot variant effects), embed, probe (secondary structure), generate",
}
EPILOGS = {
    "train": "config sections: objective, name, model, data, training, optimizer, parallel, checkpoint, logging, "
    "fp8; 'megatron-plm train --print-config' lists every key with its type, default and doc",
    "preprocess": "Flags follow Megatron-LM's tools/preprocess_data.py where they apply.",
}


def _load(spec):
    """``"module:name"`` -> the object (imported only for the command that runs); anything else as it is."""
    if not isinstance(spec, str):
        return spec
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``argv``, only the command it names gets its flags, so its modules
    alone are imported (``preprocess`` starts without torch)."""
    from megatron_plm import __version__

    parser = Parser(prog="megatron-plm", description="Protein language model pretraining.")
    parser.add_argument("--version", action="version", version=f"megatron-plm {__version__}")
    words = None if argv is None else [a for a in argv if not a.startswith("-")]
    groups = {(): parser.add_subparsers(dest="command", required=True)}
    for path, config, handler, about in COMMANDS:
        for depth in range(1, len(path)):  # tokenizer, scaling, evaluate: a group of subcommands
            if path[:depth] not in groups:
                group = groups[path[: depth - 1]].add_parser(path[depth - 1], help=GROUPS[path[depth - 1]])
                groups[path[:depth]] = group.add_subparsers(
                    dest="task" if path[0] == "evaluate" else "step", required=True
                )
        sub = groups[path[:-1]].add_parser(path[-1], help=about, epilog=EPILOGS.get(path[-1]))
        if words is None or tuple(words[: len(path)]) == path:
            config_class = _load(config)
            add_arguments(sub, config_class)
            sub.set_defaults(func=_load(handler), config_class=config_class)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
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
        "merge-corpora",
    ):  # (imports torch, which preprocessing never needs)
        from megatron_plm.runtime.accelerators import silence_fallback_warnings

        silence_fallback_warnings()
    from megatron_plm.data.preprocess.mmseqs import MMseqsError
    from megatron_plm.safe_io import terminate_as_interrupt

    try:
        config = from_args(args.config_class, args)
        if args.command == "train":  # its own handlers: finish the step, save, exit 75
            return args.func(config)
        with terminate_as_interrupt():  # SIGTERM unwinds: staged outputs are removed, replaced ones kept
            return args.func(config)
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
            + (kept if args.command in ("preprocess", "merge-corpora") else ""),
            file=sys.stderr,
        )
        return 128 + number
