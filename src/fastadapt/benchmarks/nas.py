"""Does a searched architecture beat a hand-designed one of the same size? The issue-14 experiment.

    python benchmarks/nas.py --output-dir runs/nas                # search, retrain 4 networks, test once
    python benchmarks/nas.py --search runs/omniglot-metanas-cpu   # retrain the architecture of a finished search
    python benchmarks/nas.py --ways 20 --networks searched &      # two retrainings side by side...
    python benchmarks/nas.py --ways 5 20 --networks conv4; python benchmarks/nas.py --ways 5 --networks searched
    python benchmarks/nas.py                                      # ...then the table

1. **Search**: ``fastadapt train omniglot-metanas-cpu`` into OUT/search (its wall and CPU time are
   recorded), or ``--search RUN_DIR``, a finished search; the meta-architecture of its best
   *validation* checkpoint is RUN_DIR/architecture.json.
2. **Retrain from scratch** with the same method and budget (first-order MAML, ``RETRAIN`` below) at
   5-way and 20-way 1-shot: the discrete network of that architecture, and a Conv-4 whose width makes
   its parameter count closest to it. Each run keeps its best validation checkpoint.
3. **Test once**: each best checkpoint on the 600 fixed test episodes (15 queries per class); the
   results are written to RUN_DIR/benchmark.json with the run's settings and the code version
   (``preset_runs.results_key``), so rerunning the script prints the same table without looking at the test
   set again, unless the settings or the code have changed since: then it tests again, says so, and the look is
   counted (RUN_DIR/test_looks.json).

Every stage is an ordinary run directory, so a stopped benchmark resumes where it stopped. Times are
the runs' own clocks on whatever machine runs this, with whatever else runs beside it.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import yaml

from fastadapt.benchmarks.preset_runs import results_key
from fastadapt.config.presets import load_preset
from fastadapt.config.schema import Config
from fastadapt.models import Conv4
from fastadapt.models.darts import count_flops, count_parameters
from fastadapt.runs.directory import build_learner
from fastadapt.runs.directory import EVALUATION_CHANGES, load_run, look_at_test_set, looks_at_test_set, train
from fastadapt.training.builders import build_tasks
from fastadapt.training.trainer import LAST

SEARCH_PRESET = "omniglot-metanas-cpu"
#: Retraining, identical for the searched network and the Conv-4 (first-order MAML, transductive batch
#: statistics, Adam 1e-3, one query per class in training as in the MAML paper's code): 5-way as the
#: MAML paper (one inner step of 0.4, three at test, here meta-batch 16); 20-way with three inner steps
#: of 0.1 (the paper: five) and meta-batch 4 (the paper: 16); 2,000 meta-iterations, so that the four
#: runs fit in about 1.5 hours of one core.
RETRAIN = {
    5: dict(n_way=5, inner_lr=0.4, inner_steps=1, eval_inner_steps=3, meta_batch_size=16, iterations=2000),
    20: dict(n_way=20, inner_lr=0.1, inner_steps=3, eval_inner_steps=3, meta_batch_size=4, iterations=2000),
}
COMMON = dict(algorithm="fomaml", tasks="omniglot", dataset_split="maml", k_shot=1, num_query=1, meta_lr=1e-3,
              log_every=50, val_every=250, val_tasks=100, checkpoint_every=50, test_tasks=600, eval_steps=[],
              eval_ways=[], eval_shots=[1])
CONV4_WIDTHS = range(4, 129)
#: Each run directory's benchmark record: its training time, size and test accuracy.
RECORD = "benchmark.json"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_train(cfg: Config) -> dict:
    """Train (or resume, or skip a finished run); the wall and CPU seconds this call spent."""
    run_dir = Path(cfg.training.output_dir)
    wall, cpu = time.perf_counter(), cpu_seconds()
    result, _ = train(cfg, resume=(run_dir / LAST).exists(), progress=False)
    return {"iterations": result.iterations, "wall_seconds": round(time.perf_counter() - wall, 1),
            "cpu_seconds": round(cpu_seconds() - cpu, 1)}


def matched_conv4_width(parameters: int, n_way: int, image_shape: tuple[int, ...]) -> int:
    """The Conv-4 width whose parameter count is closest to ``parameters`` (the count grows with the width)."""
    def size(width: int) -> int:
        return count_parameters(Conv4(image_shape[0], width, n_way, image_size=image_shape[1:]))

    low, high = CONV4_WIDTHS.start, CONV4_WIDTHS.stop - 1
    while low < high:  # the narrowest width with at least ``parameters``
        middle = (low + high) // 2
        low, high = (middle + 1, high) if size(middle) < parameters else (low, middle)
    return min({max(low - 1, CONV4_WIDTHS.start), low}, key=lambda width: abs(size(width) - parameters))


def network_size(cfg: Config) -> tuple[int, int]:
    """Parameters and FLOPs per image of the network a config trains."""
    tasks = build_tasks(cfg, "train")
    model = build_learner(cfg, tasks).model
    return count_parameters(model), count_flops(model, tasks.input_shape)


def main(argv: list[str] | None = None, prog: str = "benchmarks/nas.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="runs/nas")
    parser.add_argument("--data-root", help="the Omniglot zips' folder (default: as fastadapt finds it)")
    parser.add_argument("--iterations", type=int, help="retraining meta-iterations (default: RETRAIN's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="retraining settings for both networks, values read as YAML")
    parser.add_argument("--search-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings of the search run on top of its preset")
    parser.add_argument("--search", metavar="RUN_DIR", help="a finished search run to take the architecture from "
                                                           "(default: train OUT/search)")
    parser.add_argument("--ways", type=int, nargs="*", default=[5, 20], choices=sorted(RETRAIN))
    parser.add_argument("--networks", nargs="*", default=["searched", "conv4"], choices=["searched", "conv4"],
                        help="which retrainings this call runs (two calls may run side by side)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    data = {"data_root": args.data_root} if args.data_root else {}
    read = lambda pairs: {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in pairs)}  # noqa: E731

    search_dir = Path(args.search) if args.search else out / "search"
    if args.search:
        search = Config.load(search_dir / "config.yaml")
        print(f"search: {search_dir}")
    else:
        search = load_preset(SEARCH_PRESET).replace(output_dir=str(search_dir), **data, **read(args.search_set))
        print(f"search: {stage(search, 'search')['training']}")
    space = {k: getattr(search.model, k) for k in ("cells", "nodes", "cell_channels", "stem_multiplier",
                                                   "operations", "reduction_cells")}
    for way in args.ways:
        settings = {**COMMON, **RETRAIN[way], **data, **read(args.set)}
        if args.iterations:
            settings["iterations"] = args.iterations
        darts = Config(**settings, model="darts", architecture=str(search_dir), **space,
                       output_dir=str(out / f"darts-{way}way"))
        parameters, _ = network_size(darts)
        width = matched_conv4_width(parameters, way, build_tasks(darts, "train").input_shape)
        conv4 = Config(**settings, model="conv4", conv_channels=width, output_dir=str(out / f"conv4-{way}way"))
        for network, name, cfg in (("searched", "searched", darts), ("conv4", f"Conv-4-{width}", conv4)):
            if network in args.networks:
                stage(cfg, name, test=True)
    print(table([json.loads(path.read_text()) for path in sorted(out.glob(f"*/{RECORD}"))]))
    return 0


def stage(cfg: Config, name: str, test: bool = False) -> dict:
    """Train a run (resume it, or skip it when finished); with ``test``, its size and, once, its best
    checkpoint's accuracy on the test episodes. Kept in RUN_DIR/benchmark.json."""
    run_dir = Path(cfg.training.output_dir)
    path = run_dir / RECORD
    entry = json.loads(path.read_text()) if path.exists() else {"name": name, "way": cfg.task.n_way}
    if entry.get("training", {}).get("iterations") != cfg.training.iterations:
        entry["training"] = timed_train(cfg)
        path.write_text(json.dumps(entry, indent=2) + "\n")
    key = results_key(cfg)
    if test and "test" in entry and entry.get("key") != key:
        print(f"{path}: its test result was measured with other settings or code than now: testing again "
              f"(look {looks_at_test_set(run_dir, cfg.evaluation.test_set) + 1} at test set "
              f"{cfg.evaluation.test_set})")
        del entry["test"]
    if test and "test" not in entry:  # the test episodes are looked at once, after training
        entry["parameters"], entry["flops"] = network_size(cfg)
        run_cfg, learner = load_run(run_dir, "best")
        run_cfg = run_cfg.replace(**{name: cfg.flat()[name] for name in EVALUATION_CHANGES})  # tested as cfg says
        entry["test"] = next(iter(look_at_test_set(run_dir, run_cfg, learner).values())).to_dict()
        entry["key"] = key
        entry["best_val_accuracy"] = max(json.loads(line).get("val_accuracy", 0.0)
                                         for line in (run_dir / "metrics.jsonl").read_text().splitlines())
        path.write_text(json.dumps(entry, indent=2) + "\n")
    return entry


def table(entries: list[dict]) -> str:
    """Markdown: one row per network, its parameters per way (the heads differ), FLOPs per image (smallest way),
    test accuracy ± 95% CI per way, in percent."""
    networks: dict[str, dict[int, dict]] = {}
    for entry in entries:
        if "test" in entry:
            networks.setdefault(entry["name"], {})[entry["way"]] = entry
    ways = sorted({w for by_way in networks.values() for w in by_way})
    lines = ["| network | parameters | MFLOPs per image | " + " | ".join(f"{w}-way 1-shot" for w in ways) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in ways) + " |"]
    for name, by_way in networks.items():
        params = " / ".join(f"{by_way[w]['parameters']:,}" for w in ways if w in by_way)
        cells = [f"{by_way[w]['test']['mean'] * 100:.2f} ± {by_way[w]['test']['ci95'] * 100:.2f}" if w in by_way
                 else "-" for w in ways]
        lines.append(f"| {name} | {params} | {by_way[min(by_way)]['flops'] / 1e6:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
