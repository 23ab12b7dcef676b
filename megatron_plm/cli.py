"""``megatron-plm`` command line: a thin layer over library functions.

Each subcommand parses its flags into the typed configs of the package and calls
one function; no logic lives here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import yaml


def _cmd_env(args: argparse.Namespace) -> int:
    from megatron_plm.runtime.environment import describe_environment

    print(describe_environment())
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from megatron_plm.data.preprocess import run_from_args

    return run_from_args(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from megatron_plm.config import load_config
    from megatron_plm.runtime import initialize
    from megatron_plm.training.preemption import EXIT_PREEMPTED
    from megatron_plm.training.trainer import TrainingStopped, train

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
    from megatron_plm.runtime import ParallelConfig, initialize

    with initialize(ParallelConfig()) as runtime:
        out = export_hf(args.checkpoint, args.output, runtime, dtype=args.dtype)
    print(f"wrote {out}: load it with transformers.AutoModelFor{{MaskedLM,CausalLM}}.from_pretrained({str(out)!r})")
    return 0


def _cmd_import_hf(args: argparse.Namespace) -> int:
    from megatron_plm.checkpoint.export import import_hf
    from megatron_plm.runtime import ParallelConfig, initialize

    with initialize(ParallelConfig()) as runtime:
        out = import_hf(args.source, args.output, runtime)
    print(f"wrote {out}: train from it with checkpoint.init_from={out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from megatron_plm.evaluation.model import load_scoring_model
    from megatron_plm.runtime import ParallelConfig, initialize

    with initialize(ParallelConfig()) as runtime:
        model = load_scoring_model(args.model, runtime)
        if args.task == "perplexity":
            _evaluate_perplexity(model, args)
        elif args.task == "dms":
            _evaluate_dms(model, args)
        else:
            _evaluate_generate(model, args)
    return 0


def _evaluate_perplexity(model, args) -> None:
    import itertools

    from megatron_plm.data.fasta import read_fasta
    from megatron_plm.data.tokenizer import ProteinTokenizer
    from megatron_plm.evaluation.perplexity import corpus_perplexity, perplexity

    tok = ProteinTokenizer()
    records = [(r.record_id, tok.encode(r.sequence).astype("int64"))
               for r in itertools.islice(read_fasta(args.fasta), args.limit or None)]  # fmt: skip
    scores = perplexity(model, records, mask_ratio=args.mask_ratio, seed=args.seed, pseudo=args.pseudo)
    kind = {"clm": "perplexity", "mlm": "pseudo-perplexity" if args.pseudo else f"masked perplexity ({args.mask_ratio:.0%})"}
    if args.output:
        with open(args.output, "w") as handle:
            handle.write("record_id,length,scored_tokens,perplexity\n")
            for s in scores:
                handle.write(f"{s.record_id},{s.length},{s.tokens},{s.perplexity:.6g}\n")
    print(f"{model.name}: {kind[model.objective]} over {len(scores):,} sequences "
          f"({sum(s.tokens for s in scores):,} scored tokens): {corpus_perplexity(scores):.3f}")  # fmt: skip


def _evaluate_dms(model, args) -> None:
    from megatron_plm.data.fasta import read_fasta
    from megatron_plm.evaluation.dms import evaluate_assays, format_table, load_assays, residue_frequencies, write_scores

    assays = load_assays(args.assays, args.assay)
    frequencies = residue_frequencies(r.sequence.decode() for r in read_fasta(args.unigram_fasta))
    results = evaluate_assays(model, assays, frequencies)
    if args.output:
        write_scores(args.output, results)
    print(format_table(results, model.name))


def _evaluate_generate(model, args) -> None:
    from megatron_plm.evaluation.generate import SamplingConfig, generate, generation_perplexities, write_fasta

    config = SamplingConfig(num_sequences=args.num, max_length=args.max_length, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, reverse=args.reverse, seed=args.seed)  # fmt: skip
    sequences = generate(model, config)
    perplexities = generation_perplexities(model, sequences)
    write_fasta(args.output, sequences, perplexities)
    print(f"wrote {len(sequences)} sequences to {args.output} (mean length "
          f"{sum(map(len, sequences)) / len(sequences):.0f}, mean perplexity {sum(perplexities) / len(perplexities):.2f})")


def _cmd_plan(args: argparse.Namespace) -> int:
    if args.budget_flops is not None:
        from megatron_plm.scaling.laws import load_law
        from megatron_plm.scaling.planning import format_budget_plan, plan_budget, write_config

        if args.config is not None:
            raise ValueError("give either a CONFIG or --budget-flops, not both")
        law = load_law(args.law, args.objective)
        plan = plan_budget(args.budget_flops, args.objective, law)
        interval = None
        if args.law != "paper":
            fitted = json.loads(Path(args.law).read_text())
            a_ci, kn = fitted.get("intervals", {}).get("a"), fitted.get("kN")
            if a_ci and kn:  # N_opt at the interval's exponents, through the fit's centre
                centre = math.exp(float(np.mean(np.log(fitted["isoflop_budgets"]))))
                anchor = kn * centre ** fitted["a"]
                interval = tuple(sorted(anchor * (args.budget_flops / centre) ** e for e in a_ci))
        print(format_budget_plan(plan, args.law, interval))
        if args.write_config:
            template = Path(args.template or f"examples/configs/tiny_{args.objective}.yaml")
            print(f"wrote {write_config(plan, args.write_config, template)}")
        return 0
    from megatron_plm.config import load_config
    from megatron_plm.planning.planner import format_plan, make_plan

    if args.config is None:
        raise ValueError("give a CONFIG to size, or --budget-flops C --objective clm|mlm")
    config = load_config(args.config, args.overrides)
    print(format_plan(make_plan(config, gpus=args.gpus, accelerator=args.gpu, mfu=args.mfu)))
    return 0


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
        overrides = {k: yaml.safe_load(v) for k, v in overrides.items()}
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-plm", description="Protein language model pretraining.")
    commands = parser.add_subparsers(dest="command", required=True)

    env = commands.add_parser("env", help="report torch, megatron-core, GPU and accelerator availability")
    env.set_defaults(func=_cmd_env)

    from megatron_plm.data.preprocess import add_arguments as add_preprocess_arguments

    preprocess = commands.add_parser(
        "preprocess", help="FASTA/JSONL -> megatron .bin/.idx corpus with per-sequence metadata"
    )
    add_preprocess_arguments(preprocess)
    preprocess.set_defaults(func=_cmd_preprocess)

    train = commands.add_parser("train", help="train a CLM or MLM from a YAML config")
    train.add_argument("--config", type=Path, required=True, help="YAML run config (see examples/configs/)")
    train.add_argument("overrides", nargs="*", metavar="dotted.key=VALUE", help="e.g. training.train_iters=100")
    train.set_defaults(func=_cmd_train)

    plot = commands.add_parser("plot", help="loss, perplexity, LR and tokens/s of one or more runs -> PNG")
    plot.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run directories (or metrics.jsonl files)")
    plot.add_argument("--output", type=Path, help="PNG to write (default: RUN_DIR/curves.png of the first run)")
    plot.set_defaults(func=_cmd_plot)

    export = commands.add_parser("export-hf", help="checkpoint (any TP/PP layout) -> transformers model directory")
    export.add_argument("checkpoint", type=Path, help="a checkpoint directory (or a run's save directory)")
    export.add_argument("output", type=Path)
    export.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    export.set_defaults(func=_cmd_export_hf)

    imported = commands.add_parser("import-hf", help="transformers ESM-2 / GPT-NeoX directory -> our checkpoint")
    imported.add_argument("source", help="a transformers model directory")
    imported.add_argument("output", type=Path)
    imported.set_defaults(func=_cmd_import_hf)
    plan = commands.add_parser("plan", help="size a config (memory, fit, days), or a compute budget (N_opt, D_opt)")
    plan.add_argument("config", type=Path, nargs="?")
    plan.add_argument("--budget-flops", type=float, help="plan a model for this compute budget instead")
    plan.add_argument("--objective", choices=["clm", "mlm"], default="clm")
    plan.add_argument("--law", default="paper", help="'paper' (the study's fits) or a JSON from 'scaling fit --output'")
    plan.add_argument("--write-config", type=Path, help="write a ready run config for the planned model")
    plan.add_argument("--template", type=Path, help="base config for --write-config")
    plan.add_argument("overrides", nargs="*", metavar="dotted.key=VALUE")
    plan.add_argument("--gpus", type=int, default=8)
    plan.add_argument("--gpu", default="h100-80gb", help="h100-80gb, h200-141gb, a100-80gb or cpu")
    plan.add_argument("--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation")
    plan.set_defaults(func=_cmd_plan)

    scaling = commands.add_parser("scaling", help="fit scaling laws, run IsoFLOP sweeps")
    steps = scaling.add_subparsers(dest="step", required=True)
    fit_cmd = steps.add_parser("fit", help="fit L(N, D) and IsoFLOP profiles to a runs table (CSV: N, D, loss)")
    fit_cmd.add_argument("runs", type=Path)
    fit_cmd.add_argument("--json", action="store_true")
    fit_cmd.add_argument("--output", type=Path, help="write the fit as JSON (usable as plan --law)")
    fit_cmd.add_argument("--plot", type=Path, help="write IsoFLOP curves and the frontier as PNG")
    fit_cmd.add_argument("--bootstrap", type=int, default=100)
    sweep_cmd = steps.add_parser("sweep", help="IsoFLOP grid of configs (tokens = C / 6N); --run or --slurm")
    sweep_cmd.add_argument("--base", type=Path, required=True, help="base run config (data, optimizer, batch)")
    sweep_cmd.add_argument("--budgets", type=float, nargs="+", required=True)
    sweep_cmd.add_argument("--sizes", nargs="+", required=True, help="LAYERSxHIDDEN[xHEADS] ...")
    sweep_cmd.add_argument("--out", type=Path, required=True)
    sweep_cmd.add_argument("--set", nargs="*", help="dotted.key=value overrides of the base config")
    sweep_cmd.add_argument("--run", action="store_true", help="train every run here, one after another")
    sweep_cmd.add_argument("--slurm", action="store_true", help="write a SLURM array script")
    collect_cmd = steps.add_parser("collect", help="gather the sweep's final validation losses into runs.csv")
    collect_cmd.add_argument("--out", type=Path, required=True)
    for command in (fit_cmd, sweep_cmd, collect_cmd):
        command.add_argument("--objective", choices=["clm", "mlm"], default="clm" if command is not fit_cmd else None)
        command.add_argument("--seed", type=int, default=0)
    scaling.set_defaults(func=_cmd_scaling)

    evaluate = commands.add_parser("evaluate", help="perplexity, zero-shot DMS scoring, generation")
    tasks = evaluate.add_subparsers(dest="task", required=True)
    sample_fasta = "data/uniref90_esm2_pretraining_sample_10k.fasta.gz"
    ppl = tasks.add_parser("perplexity", help="CLM perplexity or MLM masked / pseudo-perplexity of a FASTA file")
    ppl.add_argument("--fasta", type=Path, required=True)
    ppl.add_argument("--limit", type=int, default=0, help="first N sequences only")
    ppl.add_argument("--mask-ratio", type=float, default=0.15)
    ppl.add_argument("--pseudo", action="store_true", help="MLM: exact pseudo-perplexity (every position in turn)")
    ppl.add_argument("--output", type=Path, help="per-sequence CSV")
    dms = tasks.add_parser("dms", help="zero-shot variant-effect scoring (ProteinGym protocol)")
    dms.add_argument("--assays", type=Path, required=True, help="directory of <DMS_id>.csv + wildtype.fasta")
    dms.add_argument("--assay", action="append", help="only this DMS_id (repeatable)")
    dms.add_argument("--output", type=Path, help="per-mutant CSV: DMS_id,mutant,score")
    dms.add_argument("--unigram-fasta", type=Path, default=Path(sample_fasta),
                     help="residue frequencies for the unigram floor (default: the shipped sample)")  # fmt: skip
    gen = tasks.add_parser("generate", help="sample proteins from a CLM")
    gen.add_argument("--output", type=Path, required=True)
    gen.add_argument("--num", type=int, default=8)
    gen.add_argument("--max-length", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--reverse", action="store_true", help="sample C->N (framed 2...1), written N->C")
    for task in (ppl, dms, gen):
        task.add_argument("--model", type=Path, required=True, help="our checkpoint or a transformers directory")
        task.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from megatron_plm.runtime.accelerators import silence_fallback_warnings

    silence_fallback_warnings()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"megatron-plm {args.command}: error: {error}", file=sys.stderr)
        return 2
