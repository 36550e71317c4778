"""The ``fastadapt`` command line: demo, train, eval, predict, segment, detect, serve, plot, presets, bench."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import typing
import warnings
from pathlib import Path

from fastadapt.config.presets import load_preset, preset_names
from fastadapt.config.schema import EPISODES, SECTIONS, Config, base_type, settings

COMMANDS_HELP = """examples:
  fastadapt demo                                   # MAML on sinusoid, table + figure, a few minutes on CPU
  fastadapt train sinusoid-maml --iterations 5000  # a shipped preset, with an override
  fastadapt train --algorithm metasgd --k-shot 5 --output-dir runs/msgd
  fastadapt train sinusoid-maml --nproc 2          # meta-batch split over 2 processes (same meta-gradients
                                                   # up to float rounding)
  fastadapt eval runs/msgd --json results.json
  fastadapt eval runs/protonet --tasks digits      # cross-domain: another family's test episodes
  fastadapt predict runs/protonet --support my-classes/ --query a.png b.png
  fastadapt serve                                  # a web page: draw a few symbols, draw another, see it classified
  fastadapt presets
  fastadapt bench speed                            # ours vs a per-task loop vs plain training
  fastadapt train rl-nav2d-maml                    # MAML-RL on 2D navigation (Finn et al.)
  fastadapt plot runs/rl-nav2d-maml                # learning curves and trajectories before/after adaptation
  fastadapt train rl-halfcheetah-fwd-bwd-maml-cpu  # MAML-RL on HalfCheetah forward/backward (needs fastadapt[mujoco])
  fastadapt bench rollout-speed                    # MuJoCo steps per second with 1 and 2 rollout workers
  fastadapt train cluttered-omniglot-4-cpu --no-eval  # one-shot segmentation in clutter (Michaelis et al.)
  fastadapt eval runs/cluttered-omniglot-4-cpu --split val  # mask IoU and localisation, validation canvases
  fastadapt segment runs/cluttered-omniglot-4-cpu --reference ref.png --canvas canvas.png  # box, score, mask
  fastadapt detect runs/cluttered-omniglot-4-cpu --support examples/ --image scene.png --draw found.png
"""


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per setting, grouped by the config's sections, so every setting is settable here; a method's
    own options are grouped by the methods that read them (their specifications' ``options``)."""
    from fastadapt.algorithms.registry import methods

    readers: dict[str, list[str]] = {}
    for spec in methods().values():
        for option in spec.option_names:
            readers.setdefault(option, []).append(spec.name)
    groups: dict[object, argparse._ArgumentGroup] = {}

    def group_of(s) -> argparse._ArgumentGroup:
        key = (s.section, tuple(sorted(readers.get(s.name, []))) if s.section == "method" else ())
        if key not in groups:
            users = f"method settings of {', '.join(key[1])}" if key[1] else None
            groups[key] = parser.add_argument_group(users or f"{s.section} settings "
                                                             f"({SECTIONS[s.section].__doc__.rstrip('.')})")
        return groups[key]

    for s in settings():
        flag, group = "--" + s.flat.replace("_", "-"), group_of(s)
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
    if getattr(args, "quick", False):
        cfg = quick_config(cfg, args.preset)
    return cfg.replace(**overrides)


#: What ``--quick`` aims at: about this many seconds of training, then a test on at most QUICK_TEST_TASKS tasks.
QUICK_TRAINING_SECONDS = 30
QUICK_TEST_TASKS = 50


def quick_config(cfg: Config, preset: str | None) -> Config:
    """``cfg`` cut to a try-out of about a minute: as many iterations as the preset's measured time per iteration
    allows in QUICK_TRAINING_SECONDS (20 where it was not measured), validated once at the end on at most 20
    tasks, tested on at most QUICK_TEST_TASKS, in ``<output_dir>-quick``. Flags given with it still win."""
    per_iteration = preset_timings().get("seconds_per_iteration", {}).get(Path(preset or "").stem)
    iterations = min(cfg.training.iterations, max(1, round(QUICK_TRAINING_SECONDS / per_iteration))
                     if per_iteration else 20)
    return cfg.replace(iterations=iterations, val_every=iterations, checkpoint_every=iterations,
                       log_every=max(1, iterations // 10), val_tasks=min(cfg.training.val_tasks, 20),
                       test_tasks=min(cfg.evaluation.test_tasks, QUICK_TEST_TASKS),
                       output_dir=cfg.training.output_dir.rstrip("/") + "-quick")


def quick_label(cfg: Config, preset: str | None) -> str:
    """How a --quick run's outputs say what it is."""
    full = load_preset(preset) if preset else Config()
    return (f"QUICK RUN ({cfg.training.iterations:,} of {full.training.iterations:,} iterations, "
            f"{cfg.evaluation.test_tasks} test tasks): a try-out, not the preset's result")


def cmd_demo(args: argparse.Namespace) -> None:
    from fastadapt.runs.demo import run_demo

    summary = run_demo(args.output_dir, iterations=args.iterations, seed=args.seed, progress=not args.no_progress,
                       overwrite=args.overwrite)
    print(summary["table"])
    print(f"figure: {summary['figure']}")
    print(f"total time: {summary['seconds']} s")


def cmd_train(args: argparse.Namespace) -> None:
    from fastadapt.plots import plot_learning_curves
    from fastadapt.runs.directory import (TEST_RESULTS, curves_subtitle, load_metrics, load_run, look_at_test_set,
                                          recorded_results, record_test_results, results_payload, train)
    from fastadapt.training.distributed import is_main_process
    from fastadapt.training.evaluation import format_table
    from fastadapt.training.trainer import add_image_to_tensorboard

    cfg = _config_from_args(args)
    label = quick_label(cfg, args.preset) if args.quick else None
    if label:
        print(f"fastadapt: {label}", file=sys.stderr)
    result, _ = train(cfg, resume=args.resume, progress=not args.no_progress, nproc=args.nproc)
    if not is_main_process():  # under torchrun, rank 0 alone reports
        return
    if result.iterations:
        figure = plot_learning_curves(load_metrics(result.run_dir), result.run_dir / "learning_curves.png",
                                      title=f"{cfg.method.name} on {cfg.task.family}",
                                      subtitle=curves_subtitle(cfg.resolved()))
        if cfg.training.tensorboard:
            add_image_to_tensorboard(result.run_dir, "learning_curves", figure, result.iterations)
        print(f"trained {result.iterations} iterations; run saved in {result.run_dir} (learning curves: {figure})")
    else:
        print(f"nothing trained (0 iterations); run saved in {result.run_dir}")
    _print_architecture(cfg, result.run_dir)
    if not args.no_eval:
        cfg, learner = load_run(result.run_dir, "best")
        title = (f"{label}\n" if label else "") + _eval_title(cfg)
        recorded, why = recorded_results(result.run_dir, cfg) if args.resume else (None, "")
        if recorded is not None:
            print(format_table({cfg.method.name: recorded}, title))
            print(f"(recorded in {result.run_dir / TEST_RESULTS}: the best checkpoint and the evaluation settings are "
                  f"the same; `fastadapt eval {result.run_dir}` tests it again)")
            return
        if args.resume:
            print(f"fastadapt: testing the best checkpoint ({why})", file=sys.stderr)
        results = look_at_test_set(result.run_dir, cfg, learner, progress=not args.no_progress)
        print(format_table({cfg.method.name: results}, title))
        payload = results_payload(result.run_dir, "best", cfg, cfg.task.family, results)
        record_test_results(result.run_dir, {**payload, "quick": label} if label else payload)


def _print_architecture(cfg: Config, run_dir: Path) -> None:
    """For a search: the meta-architecture it found; for model darts: the architecture trained. With the size of
    the discrete network."""
    from fastadapt.algorithms.registry import method_of
    from fastadapt.runs.inspection import architecture_size
    from fastadapt.training.networks import ARCHITECTURE_FILE, load_architecture

    if method_of(cfg).searches_architecture:
        source = run_dir / ARCHITECTURE_FILE
        what = f"meta-architecture of the best checkpoint ({source})"
    elif cfg.model.name == "darts":
        source, what = cfg.model.architecture, f"architecture {cfg.model.architecture}"
    else:
        return
    genotype = load_architecture(str(source))
    parameters, flops = architecture_size(cfg, genotype)
    print(f"{what}: {parameters:,} parameters, {flops / 1e6:.2f} MFLOPs per image as a discrete network")
    for cell_type in ("normal", "reduce"):
        if genotype.cells(cell_type):
            nodes = "; ".join(", ".join(f"{op}({source})" for op, source in node) for node in genotype.cells(cell_type))
            print(f"  {cell_type}: {nodes}")


def _eval_title(cfg: Config, split: str = "test") -> str:
    from fastadapt.config.families import family_of
    from fastadapt.config.schema import WITHIN_ALPHABET
    from fastadapt.training.networks import resolve_norm

    family = family_of(cfg)
    if family.kind != "images":
        return family.title(cfg) + ("" if split == "test" else " [validation tasks]")
    if cfg.method.encoder_from:
        network = f"encoder from {cfg.method.encoder_from}"
    elif cfg.model.name == "pixels":
        network = "raw pixels"
    else:
        network = f"norm: {resolve_norm(cfg)}"
    lake = (f"; {WITHIN_ALPHABET}: 1 query per class, all classes of an episode from one alphabet, support and "
            f"query by different drawers" if cfg.evaluation.episodes == WITHIN_ALPHABET else "")
    return (f"{family.title(cfg)}: accuracy on {cfg.evaluation.test_tasks} fixed "
            f"{'test' if split == 'test' else 'validation'} episodes, {cfg.evaluation.eval_query} queries per class"
            f"{lake} (mean ± 95% CI); trained {cfg.task.n_way}-way {cfg.task.k_shot}-shot, {network}")


def cmd_eval(args: argparse.Namespace) -> None:
    from fastadapt.runs.directory import (evaluate_learner, load_run, look_at_test_set, read_test_results,
                                          results_payload)
    from fastadapt.training.evaluation import format_table

    if args.split == "val" and args.test_set:
        raise ValueError("--test-set chooses a draw of the test episodes; --split val scores validation episodes")
    cfg, learner = load_run(args.run_dir, args.checkpoint)
    evaluation = {"test_tasks": args.test_tasks, "eval_ways": args.eval_ways, "eval_shots": args.eval_shots,
                  "test_set": args.test_set, "episodes": args.episodes}
    cfg = cfg.replace(**{name: value for name, value in evaluation.items() if value})
    if args.tasks:
        from fastadapt.runs.crossdomain import evaluate_cross_domain

        if args.split != "test" or args.episodes:
            raise ValueError("--split and --episodes are for the run's own task family, not with --tasks")
        results, title = evaluate_cross_domain(args.run_dir, cfg, learner, args.tasks, args.data_root, args.steps,
                                               ways_asked=bool(args.eval_ways), progress=True)
    elif args.data_root:
        raise ValueError("--data-root says where another domain's images are: give it with --tasks folder or omniglot")
    elif args.split == "val":  # for choices; no look at the test set
        results = evaluate_learner(cfg, learner, steps=args.steps, split="val", progress=True)
        title = _eval_title(cfg, "val")
    else:
        results, title = look_at_test_set(args.run_dir, cfg, learner, steps=args.steps, progress=True), _eval_title(cfg)
    payload = {**results_payload(args.run_dir, args.checkpoint, cfg, args.tasks or cfg.task.family, results),
               "split": args.split}
    quick = (read_test_results(args.run_dir) or {}).get("quick")  # a --quick run's label, recorded by train
    if quick:
        title, payload["quick"] = f"{quick}\n{title}", quick
    if args.json == "-":
        print(json.dumps(payload, indent=2))
        return
    print(format_table({cfg.method.name: results}, title))
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")


def cmd_predict(args: argparse.Namespace) -> None:
    from fastadapt.classifier import FewShotClassifier, query_files, read_support_folder

    support, labels = read_support_folder(args.support)
    queries = query_files(args.query)
    invert = {"yes": True, "no": False, "auto": "auto", None: None}[args.invert]
    classifier = FewShotClassifier.from_run(args.run_dir, args.checkpoint, invert=invert)
    names = [str(f) for f in queries]
    result = classifier.classify(support, labels, queries, [str(f) for f in support], names)
    classes, probabilities, predicted = result.classes, result.probabilities, result.predictions
    if args.json:
        print(json.dumps({"run_dir": str(args.run_dir), "classes": classes, "predictions": [
            {"query": name, "class": label, "probabilities": dict(zip(classes, map(float, row)))}
            for name, label, row in zip(names, predicted, probabilities)]}, indent=2))
        return
    rows = [["query", "prediction", *classes]]
    rows += [[name, label, *(f"{p:.3f}" for p in row)] for name, label, row in zip(names, predicted, probabilities)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows))


def cmd_segment(args: argparse.Namespace) -> None:
    import torch
    from PIL import Image

    from fastadapt.algorithms.metrics import MASK_LOGIT_THRESHOLD
    from fastadapt.algorithms.registry import method_names, method_of
    from fastadapt.datasets.cluttered_omniglot import CANVAS_SIZE, REFERENCE_SIZE, read_rgb
    from fastadapt.runs.directory import load_run

    reference = read_rgb(args.reference, REFERENCE_SIZE, "reference")
    canvases = torch.stack([read_rgb(path, CANVAS_SIZE, "canvas") for path in args.canvas])
    cfg, learner = load_run(args.run_dir, args.checkpoint)
    if not method_of(cfg).segmentation:
        raise ValueError(f"{args.run_dir} is a {cfg.method.name} run, which segments nothing; fastadapt segment needs "
                         f"a run of {' / '.join(method_names(segmentation=True))}")
    references = reference.expand(len(canvases), -1, -1, -1)
    with torch.no_grad():
        masks = learner.segment(references, canvases) > MASK_LOGIT_THRESHOLD
        found = learner.detect(references, canvases)
    rows = [["canvas", "box (left, top, width, height)", "score", "mask pixels"]]
    for path, mask, box, score in zip(args.canvas, masks, found.boxes.tolist(), found.scores.tolist()):
        rows.append([str(path), ", ".join(f"{v:.0f}" for v in box), f"{score:.3f}", str(int(mask.sum()))])
        if args.output:
            Path(args.output).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.numpy().astype("uint8") * 255).save(Path(args.output) / f"{Path(path).stem}_mask.png")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows))
    if args.output:
        print(f"masks (foreground probability above 0.3) written to {args.output}")


def cmd_detect(args: argparse.Namespace) -> None:
    from fastadapt.classifier import query_files, read_support_folder
    from fastadapt.detector import FewShotDetector, draw, parse_boxes

    images = query_files(args.image)
    options = {"min_score": args.min_score, "scale": args.scale}
    detector = (FewShotDetector.from_run(args.run_dir, args.checkpoint, **options) if args.run_dir
                else FewShotDetector.template_matching(**options))
    if args.boxes:
        if len(images) != 1:
            raise ValueError(f"--boxes marks examples on one image; got {len(images)} images")
        try:
            text = Path(args.boxes).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read the boxes file {args.boxes}: {error}") from None
        boxes, labels = parse_boxes(text, args.boxes)
        detector.fit_boxes(images[0], boxes, labels, str(images[0]))
    else:
        support, labels = read_support_folder(args.support, min_classes=1)
        detector.fit(support, labels, [str(f) for f in support])
    names = [str(f) for f in images]
    results = detector.detect(images, names)
    if args.draw:
        out = Path(args.draw)
        for i, (image, name, found) in enumerate(zip(images, names, results)):
            target = out if len(images) == 1 else out.with_name(f"{out.stem}-{i + 1}-{Path(name).stem}{out.suffix}")
            try:
                draw(image, found, name).save(target)
            except (OSError, ValueError) as error:  # a missing folder, an unknown suffix
                raise ValueError(f"cannot write {target}: {error}") from None
            print(f"wrote {target}", file=sys.stderr)
    if args.json:
        run_dir = None if args.run_dir is None else str(args.run_dir)
        print(json.dumps({"run_dir": run_dir, "method": detector.config.method.name,
                          "min_score": detector.threshold, "images": [
                              {"image": name, "scale": found.scale, "mask_pixels": int(found.mask.sum()),
                               "detections": [{"class": label, "score": float(score), "box": [float(v) for v in box]}
                                              for box, score, label in zip(found.boxes, found.scores, found.classes)]}
                              for name, found in zip(names, results)]}, indent=2))
        return
    rows = [["image", "class", "score", "left", "top", "width", "height"]]
    for name, found in zip(names, results):
        rows += [[name, str(label), f"{score:.3f}", *(f"{v:.1f}" for v in box)]
                 for box, score, label in zip(found.boxes, found.scores, found.classes)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows))
    for name, found in zip(names, results):
        print(f"{name}: {len(found)} found (score >= {detector.threshold:g}), searched at {found.scale:.3g}x")


def cmd_serve(args: argparse.Namespace) -> None:
    import socket

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ValueError(f"fastadapt serve needs FastAPI and uvicorn ({error.name or error} is not installed): "
                         "pip install 'fastadapt[serve]'") from None
    from fastadapt.detector import FewShotDetector
    from fastadapt.serve.app import LOCAL_HOSTS, serve
    from fastadapt.serve.find import SceneFinder, template_matching_detector
    from fastadapt.serve.model import choose_model, omniglot_here

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1 to 65535, got {args.port}")
    try:  # a busy port is a one-line error before any model is loaded or trained
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as error:
        raise ValueError(f"cannot listen on {args.host}:{args.port} ({error.strerror}); choose another --port "
                         "or --host") from None
    if args.host not in LOCAL_HOSTS:
        print(f"fastadapt: warning: serving on {args.host}, not only this machine: anyone who can reach port "
              f"{args.port} can use the page and the API (there is no login)", file=sys.stderr)
    detector = FewShotDetector.from_run(args.detector) if args.detector else template_matching_detector()
    finder = SceneFinder(detector, omniglot_here(args.data_root))
    served = choose_model(args.run_dir, data_root=args.data_root, allow_training=not args.no_train)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fastadapt: serving {served.summary}; finding symbols with {detector.config.method.name}\n"
          f"  open http://{shown}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        serve(served, args.host, args.port, finder)
    except KeyboardInterrupt:  # uvicorn stops on Ctrl-C, then raises it again: the way to stop, not an error
        pass
    # also when uvicorn returns without raising it again (seen twice under load in CI: exit 0, no message)
    print("fastadapt: stopped serving", file=sys.stderr)


def cmd_plot(args: argparse.Namespace) -> None:
    from fastadapt.algorithms.registry import method_of
    from fastadapt.config.families import family_of
    from fastadapt.plots import (plot_cells, plot_frame_strip, plot_learning_curves, plot_navigation_trajectories,
                                 plot_segmentations, plot_task_architectures)
    from fastadapt.runs.directory import curves_subtitle, load_metrics, load_run, write_architecture
    from fastadapt.runs.inspection import (SPLIT_NAMES, locomotion_frames, navigation_paths, segmentation_examples,
                                           task_architectures)
    from fastadapt.training.networks import load_architecture

    run_dir = Path(args.run_dir)
    records = load_metrics(run_dir)
    cfg = Config.load(run_dir / "config.yaml")
    path = plot_learning_curves(records, Path(args.output or run_dir / "learning_curves.png"), title=str(run_dir),
                                subtitle=curves_subtitle(cfg))
    print(f"wrote {path}")
    folder = path.parent
    method, plots = method_of(cfg), family_of(cfg).plots
    if "trajectories" in plots and method.policy == "feedforward":
        cfg, learner = load_run(run_dir, "best")
        steps = tuple(s for s in (0, 1, 3) if s <= max(cfg.evaluation.eval_steps))  # the oracle: 0 steps only
        who = f"{cfg.method.name}{' (goal observed: oracle)' if cfg.task.observe_goal else ''}"
        figure = plot_navigation_trajectories(
            navigation_paths(cfg, learner, steps=steps, split=args.split), run_dir / "trajectories.png",
            title=f"{who}: one sampled trajectory per {SPLIT_NAMES[args.split]} goal"
                  + (" before and after adaptation" if len(steps) > 1 else ""))
        print(f"wrote {figure}")
    if "frames" in plots and method.policy == "feedforward":
        cfg, learner = load_run(run_dir, "best")
        try:
            rows = locomotion_frames(cfg, learner, split=args.split)
        except Exception as error:  # no OpenGL for headless rendering here: the curves are still written
            print(f"no frames: MuJoCo could not render headless ({type(error).__name__}: {error}); set MUJOCO_GL to "
                  "egl or osmesa where one of them is installed")
            return
        figure = plot_frame_strip(rows, run_dir / "frames.png", title=f"{cfg.method.name} on {cfg.task.family}, "
                                  f"{SPLIT_NAMES[args.split]} tasks: the first sampled trajectory before and after "
                                  "one policy-gradient step")
        print(f"wrote {figure}")
    if "canvases" in plots:
        cfg, learner = load_run(run_dir, "best")
        figure = plot_segmentations(segmentation_examples(cfg, learner, split=args.split), run_dir / "canvases.png",
                                    title=f"{cfg.method.name}, {cfg.task.characters} characters, the first "
                                          f"{SPLIT_NAMES[args.split]} canvases: predicted mask white, true mask "
                                          "red, box yellow")
        print(f"wrote {figure}")
    if method.searches_architecture:
        cfg, learner = write_architecture(run_dir)
        meta = learner.architecture()
        print(f"wrote {run_dir / 'architecture.json'}")
        print(f"wrote {plot_cells(meta, folder / 'cells.png', title=f'{run_dir}: meta-architecture')}")
        per_task = task_architectures(cfg, learner, args.tasks)
        title = f"{run_dir}: architectures of {len(per_task)} validation tasks after {learner.eval_inner_steps} steps"
        figure = plot_task_architectures(meta, per_task, list(cfg.model.operations),
                                         folder / "task_architectures.png", title)
        print(f"wrote {figure}")
    elif cfg.model.name == "darts":
        genotype = load_architecture(cfg.model.architecture)
        print(f"wrote {plot_cells(genotype, folder / 'cells.png', title=f'{run_dir}: {cfg.model.architecture}')}")


def cmd_presets(args: argparse.Namespace) -> None:
    from fastadapt.config.families import FAMILIES

    timings = preset_timings()
    rows = [["preset", "method", "tasks", "episodes", "iterations",
             f"training time on {timings.get('machine', 'a 2-core CPU')}"]]
    for name in preset_names():
        cfg = load_preset(name).resolved()
        task = cfg.task
        shots = FAMILIES[task.family].episodes(cfg)
        per_iteration = timings.get("seconds_per_iteration", {}).get(name)
        full_run = timings.get("full_runs", {}).get(name)
        estimate = ("no training" if cfg.training.iterations == 0 else f"full run: {full_run['minutes']:g} min"
                    if full_run else "not measured" if per_iteration is None
                    else _duration(per_iteration * cfg.training.iterations))
        rows.append([name, cfg.method.name, task.family, shots, f"{cfg.training.iterations:,}", estimate])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.rjust(w) if i == 4 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells + [row[-1]]))


def preset_timings() -> dict:
    """Seconds per training iteration of each preset, measured once by ``benchmarks/preset_timings.py`` (a few
    steps: rough), and the training time of the presets' recorded full runs (``full_runs``, from
    docs/results.md), which ``fastadapt presets`` shows instead where there is one."""
    from importlib import resources

    path = resources.files("fastadapt.config.presets").joinpath("timings.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"~{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def cmd_bench(args: argparse.Namespace) -> None:
    from fastadapt.benchmarks import rl_speed, rollout_speed, speed

    benchmark = {"speed": speed, "rl-speed": rl_speed, "rollout-speed": rollout_speed}[args.benchmark]
    benchmark.main(args.args, prog=f"fastadapt bench {args.benchmark}")


class ArgumentParser(argparse.ArgumentParser):
    """Usage errors in one line (``fastadapt train: error: ...``) instead of the whole usage first."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="fastadapt", description="Meta-learning for PyTorch.",
                            epilog=COMMANDS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo, _add_train, _add_eval, _add_predict, _add_segment, _add_detect, _add_serve, _add_plot,
                _add_presets, _add_bench):
        add(commands)
    return parser


def _add_checkpoint_option(command: argparse.ArgumentParser) -> None:
    """``--checkpoint best|last``: which of a run's checkpoints a command reads."""
    command.add_argument("--checkpoint", choices=("best", "last"), default="best",
                         help="best: the best validation score; last: the last saved (default: best)")


def _add_demo(commands: argparse._SubParsersAction) -> None:
    """``fastadapt demo`` and its options."""
    demo = commands.add_parser("demo", help="MAML vs pretrained on sinusoid regression (no download)")
    demo.add_argument("--output-dir", default="runs/demo", help="where the two runs and the figure go "
                                                                "(default: runs/demo)")
    demo.add_argument("--iterations", type=int, default=20_000, help="MAML's meta-iterations; the pretrained "
                                                                      "baseline trains a quarter (default: 20000)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the runs (default: 0)")
    demo.add_argument("--overwrite", action="store_true",
                      help="retrain even if --output-dir holds a demo with other settings (default: off: "
                           "a finished demo with the same settings is reused, one with other settings refused)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars (default: off)")
    demo.set_defaults(func=cmd_demo)


def _add_train(commands: argparse._SubParsersAction) -> None:
    """``fastadapt train`` and its options."""
    train = commands.add_parser("train", help="meta-train from a preset and/or flags")
    train.add_argument("preset", nargs="?", help=f"a shipped preset ({', '.join(preset_names())}) or a YAML path "
                                                 "(default: none, the settings' defaults)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last.pt "
                                                             "(default: off)")
    train.add_argument("--no-eval", action="store_true", help="skip the test evaluation after training "
                                                              "(default: off)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (default: off)")
    train.add_argument("--quick", action="store_true",
                       help="try the preset in about a minute: about 30 s of training (by its measured time per "
                            "iteration), one validation, at most 50 test tasks, in <output-dir>-quick; labelled "
                            "QUICK RUN in its outputs; flags given still win (default: off)")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="split each meta-batch over N local processes (torch.distributed; gloo on CPU, "
                            "NCCL with one GPU each); or launch with `torchrun --nproc-per-node N -m fastadapt "
                            "train` (default: 1)")
    _config_flags(train)
    train.set_defaults(func=cmd_train)


def _add_eval(commands: argparse._SubParsersAction) -> None:
    """``fastadapt eval`` and its options."""
    evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint on the fixed test tasks")
    evaluate.add_argument("run_dir", help="a run directory (holding config.yaml and best.pt)")
    _add_checkpoint_option(evaluate)
    evaluate.add_argument("--tasks", metavar="FAMILY",
                          help="evaluate on another task family's test classes (cross-domain): digits (scikit-learn's "
                               "handwritten digits), folder (with --data-root) or omniglot (default: the run's own)")
    evaluate.add_argument("--data-root", metavar="DIR",
                          help="where that family's data is; for folder, DIR/<class>/<images> (default: the run's)")
    evaluate.add_argument("--test-tasks", type=int, metavar="N",
                          help="number of fixed test tasks (default: the run's test_tasks)")
    evaluate.add_argument("--test-set", type=int, metavar="N",
                          help="which draw of the test tasks: 1 is the draw of the figures before test sets were "
                               "versioned, N >= 2 a fresh one (default: the run's test_set); every look at a test set "
                               "is counted in RUN_DIR/test_looks.json")
    evaluate.add_argument("--eval-ways", type=int, nargs="+", metavar="N",
                          help="ways to evaluate at (default: the run's eval_ways)")
    evaluate.add_argument("--eval-shots", type=int, nargs="+", metavar="K",
                          help="shots to evaluate at (default: the run's eval_shots)")
    evaluate.add_argument("--episodes", choices=EPISODES,
                          help="within-alphabet: Omniglot runs trained on the background split only, also Lake et "
                               "al.'s within-alphabet 20-way 1-shot trials (one alphabet per episode, support and "
                               "query by different drawers), as a row of the table (default: the run's episodes)")
    evaluate.add_argument("--split", choices=("test", "val"), default="test",
                          help="val: the fixed validation episodes instead, for choosing a method or its settings "
                               "(the test episodes are looked at once, for the chosen one) (default: test)")
    evaluate.add_argument("--steps", type=int, nargs="*", metavar="K",
                          help="adaptation steps to report (default: the run's eval_steps)")
    evaluate.add_argument("--json", metavar="FILE", help="also write the results as JSON; '-' prints only the "
                                                         "JSON (default: none)")
    evaluate.set_defaults(func=cmd_eval)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    """``fastadapt predict`` and its options."""
    predict = commands.add_parser("predict", help="classify your own images with a trained run, from a few "
                                                  "labelled examples of each class")
    predict.add_argument("run_dir", help="a trained run directory (holding best.pt); its training data is not needed")
    predict.add_argument("--support", required=True, metavar="DIR",
                         help="DIR/<class name>/<images>: one sub-folder per class, at least one image each "
                              "(required)")
    predict.add_argument("--query", required=True, nargs="+", metavar="PATH",
                         help="images to classify: files, or folders of images (required)")
    predict.add_argument("--invert", choices=("yes", "no", "auto"),
                         help="invert every image (yes), none (no), or each one whose strokes are the other way "
                              "round from the training images' (auto); default: as the training files were, and "
                              "refuse images that then look inverted")
    _add_checkpoint_option(predict)
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table (default: a table)")
    predict.set_defaults(func=cmd_predict)


def _add_segment(commands: argparse._SubParsersAction) -> None:
    """``fastadapt segment`` and its options."""
    segment = commands.add_parser("segment", help="find a reference's character on your own canvases with a "
                                                  "trained cluttered-omniglot run: its box, score and mask")
    segment.add_argument("run_dir", help="a trained segmentation run directory (holding best.pt)")
    segment.add_argument("--reference", required=True, metavar="PNG",
                         help="the reference: a 32x32 RGB image of the character on black (required)")
    segment.add_argument("--canvas", required=True, nargs="+", metavar="PNG",
                         help="96x96 RGB canvases to find it on (required)")
    segment.add_argument("--output", metavar="DIR", help="write each canvas's mask as DIR/<canvas>_mask.png "
                                                         "(default: none)")
    _add_checkpoint_option(segment)
    segment.set_defaults(func=cmd_segment)


def _add_detect(commands: argparse._SubParsersAction) -> None:
    """``fastadapt detect`` and its options."""
    detect = commands.add_parser("detect", help="find every object like a few examples on your own images with a "
                                                "trained cluttered-omniglot run: boxes, classes, scores")
    detect.add_argument("run_dir", nargs="?", default=None,
                        help="a trained segmentation or K-shot detection run directory (holding best.pt) (default: "
                             "none: template matching, nothing trained, the method that carries over to photographs)")
    examples = detect.add_mutually_exclusive_group(required=True)
    examples.add_argument("--support", metavar="DIR", help="example crops, one sub-folder per class "
                                                           "(DIR/<class>/<images>); one class is enough (default: "
                                                           "none; give this or --boxes)")
    examples.add_argument("--boxes", metavar="FILE", help="examples as boxes on the image itself: one a line, "
                                                          "LEFT TOP WIDTH HEIGHT [CLASS] in pixels, # comments "
                                                          "(default: none; give this or --support)")
    detect.add_argument("--image", required=True, nargs="+", metavar="PATH",
                        help="images (or folders of images) to search, of any size (required)")
    detect.add_argument("--draw", metavar="OUT.png", help="write the image with its boxes and mask (several "
                                                          "images: OUT-<n>-<image>.png) (default: none)")
    detect.add_argument("--json", action="store_true", help="print JSON instead of a table (default: a table)")
    detect.add_argument("--min-score", type=float, metavar="S",
                        help="the score a box needs (default: the method's, 0.55 for template matching's NCC)")
    detect.add_argument("--scale", type=float, metavar="F", help="rescale the images by F before searching "
                                                                 "(default: from the examples' size)")
    _add_checkpoint_option(detect)
    detect.set_defaults(func=cmd_detect)


def _add_serve(commands: argparse._SubParsersAction) -> None:
    """``fastadapt serve`` and its options."""
    web = commands.add_parser("serve", help="a web page to try few-shot learning by hand: draw a few symbols, "
                                            "draw another, see it classified (needs fastadapt[serve])")
    web.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                     help="a trained image run to serve (default: the newest one under ./runs; without one, a "
                          "quick ProtoNet trained on Omniglot if its archives are here, else k-NN on raw pixels)")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but this machine's own "
                                                        "lets others use the page (default: 127.0.0.1)")
    web.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    web.add_argument("--data-root", metavar="DIR", help="where Omniglot's archives are, for the quick ProtoNet "
                                                        "(default: $FASTADAPT_DATA, else the data cache)")
    web.add_argument("--no-train", action="store_true", help="without a run, serve k-NN on raw pixels rather than "
                                                             "train a quick ProtoNet (default: off)")
    web.add_argument("--detector", metavar="RUN", help="the segmentation run that finds symbols in the page's \"find "
                                                       "it\" mode (default: template matching, which needs no run)")
    web.set_defaults(func=cmd_serve)


def _add_plot(commands: argparse._SubParsersAction) -> None:
    """``fastadapt plot`` and its options."""
    plot = commands.add_parser("plot", help="plot a run's learning curves as PNG; for 2D navigation also "
                                            "trajectories before and after adaptation, for MuJoCo frames of the "
                                            "robot, for a DARTS model or search its cells and how the architecture "
                                            "changes per task")
    plot.add_argument("run_dir", help="a run directory (holding metrics.jsonl)")
    plot.add_argument("--output", metavar="PNG", help="the learning curves' PNG (default: RUN_DIR/learning_curves.png;"
                                                      " other figures go beside it)")
    plot.add_argument("--tasks", type=int, default=100,
                      help="metanas / tnas: validation tasks whose adapted architectures are drawn (default: 100)")
    plot.add_argument("--split", choices=("test", "val"), default="test",
                      help="RL and segmentation: the fixed tasks whose trajectories, frames or canvases are drawn: "
                           "test (default) or val, for a run still being judged on validation")
    plot.set_defaults(func=cmd_plot)


def _add_presets(commands: argparse._SubParsersAction) -> None:
    """``fastadapt presets`` and its options."""
    presets = commands.add_parser("presets", help="list the shipped presets, with their training time")
    presets.set_defaults(func=cmd_presets)


def _add_bench(commands: argparse._SubParsersAction) -> None:
    """``fastadapt bench`` and its options."""
    bench = commands.add_parser("bench", help="benchmarks: `fastadapt bench speed --help`")
    bench.add_argument("benchmark", choices=["speed", "rl-speed", "rollout-speed"],
                       help="speed: steps per second against a per-task loop; rl-speed: the batched RL simulator "
                            "against gymnasium, and a MAML-RL meta-iteration against a per-task loop; "
                            "rollout-speed: MuJoCo environment steps per second with 1 and 2 rollout workers "
                            "(no default: name one)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (default: none)")
    bench.set_defaults(func=cmd_bench)


#: What a user's mistake or the environment raises; anything else is a bug and shows its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
               FloatingPointError)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """fastadapt's own warnings as one line on the command line, like its errors; others as Python shows them."""
    if "fastadapt" in Path(filename).parts:
        return f"fastadapt: warning: {message}\n"
    return ORIGINAL_FORMATWARNING(message, category, filename, lineno, line)


ORIGINAL_FORMATWARNING = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    from fastadapt.datasets.download import DownloadError
    from fastadapt.environments.extras import MissingExtraError
    from fastadapt.environments.parallel import RolloutWorkerError
    from fastadapt.allocator import reuse_freed_memory
    from fastadapt.training.distributed import WorkerError
    from fastadapt.training.trainer import TrainingInterrupted

    from fastadapt.threads import quietly

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    quietly()
    warnings.formatwarning = _one_line_warning
    reuse_freed_memory()
    try:
        args.func(args)
    except TrainingInterrupted as stopped:
        where = (f"last.pt holds iteration {stopped.saved_iteration}" if stopped.saved_iteration is not None
                 else "nothing new was saved")
        again = shlex.join(["fastadapt", *argv, *([] if "--resume" in argv else ["--resume"])])
        print(f"fastadapt: stopped at iteration {stopped.iteration}; {where} in {stopped.run_dir}. "
              f"Continue with: {again}", file=sys.stderr)
        return 130
    except RolloutWorkerError as error:
        again = shlex.join(["fastadapt", *argv, *([] if "--resume" in argv else ["--resume"])])
        print(f"fastadapt: error: {error}" + (f": {again}" if args.command == "train" else ""), file=sys.stderr)
        return 2
    except (*USER_ERRORS, DownloadError, WorkerError, MissingExtraError) as error:
        print(f"fastadapt: error: {error}", file=sys.stderr)
        return 2
    return 0
