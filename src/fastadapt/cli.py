"""The ``fastadapt`` command line: demo, train, eval, plot, presets."""
from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path

from fastadapt.training.config import SECTIONS, Config, base_type, load_preset, preset_names, settings

COMMANDS_HELP = """examples:
  fastadapt demo                                   # MAML on sinusoid, table + figure, ~3 min on CPU
  fastadapt train sinusoid-maml --iterations 5000  # a shipped preset, with an override
  fastadapt train --algorithm metasgd --k-shot 5 --output-dir runs/msgd
  fastadapt train sinusoid-maml --nproc 2          # meta-batch split over 2 processes, same result
  fastadapt eval runs/msgd --json results.json
  fastadapt presets
  fastadapt bench speed                            # ours vs a per-task loop vs plain training
"""


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per setting, grouped by the config's sections, so every setting is settable here."""
    groups = {name: parser.add_argument_group(f"{name} settings ({SECTIONS[name].__doc__.rstrip('.')})")
              for name in SECTIONS}
    for s in settings():
        flag, group = "--" + s.flat.replace("_", "-"), groups[s.section]
        help_text = f"{s.help} (default: {s.default})".replace("%", "%%")
        base = base_type(s.hint)
        if base is bool:
            group.add_argument(flag, dest=s.flat, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(base) is list:
            group.add_argument(flag, dest=s.flat, type=typing.get_args(base)[0], nargs="*", default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=s.flat, type=base, default=None, metavar=s.flat.upper(), help=help_text)


def _config_from_args(args: argparse.Namespace) -> Config:
    cfg = load_preset(args.preset) if args.preset else Config()
    overrides = {s.flat: getattr(args, s.flat) for s in settings() if getattr(args, s.flat) is not None}
    return cfg.replace(**overrides)


def cmd_demo(args: argparse.Namespace) -> None:
    from fastadapt.training.demo import run_demo

    summary = run_demo(args.output_dir, iterations=args.iterations, seed=args.seed, progress=not args.no_progress)
    print(summary["table"])
    print(f"figures: {', '.join(summary['figures'])}")
    print(f"total time: {summary['seconds']} s")


def cmd_train(args: argparse.Namespace) -> None:
    from fastadapt.plots import plot_learning_curves
    from fastadapt.training.evaluation import format_table
    from fastadapt.training.distributed import is_main_process
    from fastadapt.training.runs import evaluate_learner, load_metrics, load_run, train

    cfg = _config_from_args(args)
    result, _ = train(cfg, resume=args.resume, progress=not args.no_progress, nproc=args.nproc)
    if not is_main_process():  # under torchrun, rank 0 alone reports
        return
    if result.iterations:
        figure = plot_learning_curves(load_metrics(result.run_dir), result.run_dir / "learning_curves.png",
                                      title=f"{cfg.method.name} on {cfg.task.family}")
        print(f"trained {result.iterations} iterations; run saved in {result.run_dir} (learning curves: {figure})")
    else:
        print(f"nothing trained (0 iterations); run saved in {result.run_dir}")
    if not args.no_eval:
        cfg, learner = load_run(result.run_dir, "best")
        print(format_table({cfg.method.name: evaluate_learner(cfg, learner)}, _eval_title(cfg)))


def _eval_title(cfg: Config) -> str:
    if cfg.task.family == "sinusoid":
        return (f"{cfg.task.family}, K={cfg.task.k_shot}: MSE on {cfg.evaluation.test_tasks} fixed test tasks "
                "(mean ± 95% CI)")
    from fastadapt.training.builders import resolve_norm

    task = cfg.task
    data = f"omniglot, {task.dataset_split} split" if task.family == "omniglot" else f"folder {task.data_root}"
    if cfg.method.encoder_from:
        network = f"encoder from {cfg.method.encoder_from}"
    elif cfg.model.name == "pixels":
        network = "raw pixels"
    else:
        network = f"norm: {resolve_norm(cfg)}"
    return (f"{data}: accuracy on {cfg.evaluation.test_tasks} fixed test episodes, "
            f"{cfg.evaluation.eval_query} queries per class "
            f"(mean ± 95% CI); trained {cfg.task.n_way}-way {cfg.task.k_shot}-shot, {network}")


def cmd_eval(args: argparse.Namespace) -> None:
    from fastadapt.training.evaluation import format_table
    from fastadapt.training.runs import evaluate_learner, load_run

    cfg, learner = load_run(args.run_dir, args.checkpoint)
    if args.tasks:
        cfg = cfg.replace(test_tasks=args.tasks)
    results = evaluate_learner(cfg, learner, steps=args.steps)
    payload = {"run_dir": str(args.run_dir), "checkpoint": args.checkpoint, "config": cfg.to_dict(),
               "results": {row: e.to_dict() for row, e in results.items()}}
    if args.json == "-":
        print(json.dumps(payload, indent=2))
        return
    print(format_table({cfg.method.name: results}, _eval_title(cfg)))
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")


def cmd_plot(args: argparse.Namespace) -> None:
    from fastadapt.plots import plot_learning_curves
    from fastadapt.training.runs import load_metrics

    run_dir = Path(args.run_dir)
    path = plot_learning_curves(load_metrics(run_dir), Path(args.output or run_dir / "learning_curves.png"),
                                title=str(run_dir))
    print(f"wrote {path}")


def cmd_presets(args: argparse.Namespace) -> None:
    for name in preset_names():
        cfg = load_preset(name)
        task = cfg.task
        shots = f"K={task.k_shot}" if task.family == "sinusoid" else f"{task.n_way}-way {task.k_shot}-shot"
        print(f"{name:28s} {cfg.method.name:10s} {task.family:10s} {shots:14s} {cfg.training.iterations} iterations")


def cmd_bench(args: argparse.Namespace) -> None:
    from fastadapt.benchmarks import speed

    speed.main(args.args, prog=f"fastadapt bench {args.benchmark}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastadapt", description="Meta-learning for PyTorch.",
                                     epilog=COMMANDS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="MAML vs pretrained on sinusoid regression (no download)")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--iterations", type=int, default=20_000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    train = commands.add_parser("train", help="meta-train from a preset and/or flags")
    train.add_argument("preset", nargs="?", help=f"a shipped preset ({', '.join(preset_names())}) or a YAML path")
    train.add_argument("--resume", action="store_true", help="continue the run in --output-dir from last.pt")
    train.add_argument("--no-eval", action="store_true", help="skip the test evaluation after training")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="split each meta-batch over N local processes (torch.distributed; gloo on CPU, "
                            "NCCL with one GPU each); or launch with `torchrun --nproc-per-node N -m fastadapt train`")
    _config_flags(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint on the fixed test tasks")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--checkpoint", choices=("best", "last"), default="best")
    evaluate.add_argument("--tasks", type=int, help="number of test tasks (default: the run's test_tasks)")
    evaluate.add_argument("--steps", type=int, nargs="*", help="adaptation steps to report")
    evaluate.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    evaluate.set_defaults(func=cmd_eval)

    plot = commands.add_parser("plot", help="plot a run's learning curves as PNG")
    plot.add_argument("run_dir")
    plot.add_argument("--output")
    plot.set_defaults(func=cmd_plot)

    presets = commands.add_parser("presets", help="list the shipped presets")
    presets.set_defaults(func=cmd_presets)

    bench = commands.add_parser("bench", help="benchmarks: `fastadapt bench speed --help`")
    bench.add_argument("benchmark", choices=["speed"], help="speed: steps per second against a per-task loop")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fastadapt.training.allocator import reuse_freed_memory

    args = build_parser().parse_args(argv)
    reuse_freed_memory()
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as error:
        print(f"fastadapt {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
