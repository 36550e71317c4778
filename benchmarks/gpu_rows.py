"""The pending paper rows of docs/results.md on one lent GPU, in a fixed priority order, in the minutes given.

    python benchmarks/gpu_rows.py --minutes 8 --out OUT --data-root data/omniglot
    python benchmarks/gpu_rows.py --minutes 8 --out OUT --data-root data/omniglot --resume-from OUT1/unfinished-*.tar.gz

What it does, in order:

1. ``probe``: MAML's meta-iteration time on the GPU, eager against the captured step (training.captured: the
   whole step in one CUDA graph), at meta-batch 32 with the preset's 1 query per class and with the speed
   benchmark's 15, and fp32 against bf16 at meta-batch 128 (15 queries, captured). Tens of seconds, alone on the
   GPU, before anything else; its figures go into the results file.
2. The rows, each one ``fastadapt train PRESET --device cuda --no-eval`` process, at most ``--parallel`` at
   once, side by side on the GPU, each with ``--threads`` = the host's cores shared among them. A row starts
   when a process slot is free and at least ``--min-row-minutes`` of training time remain. Every process is
   stopped (SIGTERM: the trainer saves ``last.pt`` after its current step) when the training time is over,
   leaving time for the tests and the archive. Checkpoints are the trainer's own, every 1,000 iterations
   (the presets' ``checkpoint_every``), plus the one at the stop.
3. Each finished run is tested once, from its best validation checkpoint, with ``fastadapt eval RUN_DIR``
   (the same code and test episodes as any other row); with ``--test-cut-short`` so is each run stopped by
   the time limit, labelled cut short. ``fastadapt eval`` counts every test in the run directory's
   ``test_looks.json`` (when it starts), so a run tested cut short and again after resuming shows two looks.
4. ``OUT/gpu_rows.json`` and ``OUT/gpu_rows.md``: every row's exact commands, iterations done of the
   preset's, training minutes (the run's own clock), best validation and its iteration, test figures, the
   test set (split, episodes, queries, version) and the number of looks, the GPU, PyTorch; and one
   ``OUT/unfinished-ROW.tar.gz`` per unfinished run (its directory), so that a second call with
   ``--resume-from`` those archives continues them (``fastadapt train ... --resume``).

Priority, and why:
(a) the probe first: a minute, and it is the issue's own target (<= 8 ms a MAML meta-iteration at meta-batch
    32; the bf16 question at 128); it also tells the next session how many MAML iterations a slot holds.
(b) ``omniglot-anil`` (10,000 iterations, the budget of the MAML GPU row it is compared with): a short row
    that completes in one slot, and the figure the ANIL issue asks for.
(c) ``omniglot-maml``, the paper's 60,000 meta-iterations: the most cited pending row (paper 98.7), and the
    longest; started at once so that it gets the most time, and resumable if it does not finish.
(d) ``omniglot-matching``: its preset reached 18,008 of 20,000 in a shared 6.7 minutes before, so it can
    finish; no full-budget test figure yet.
(e) ``omniglot-metanet``, then ``omniglot-snail``: their cut-short rows exist (12,953 and 11,967 of 20,000),
    so they come last. Meta Networks first because an unfinished run of it can resume in a later slot: its
    archive is about 3 MB, while SNAIL's 3.2M weights make two checkpoints of about 38 MB each, over the 16 MiB
    a file that comes back from the GPU machine, so a SNAIL run that does not finish can only be tested cut
    short.
Runs share the GPU by time-slicing, so each extra process slows the others (four presets side by side each
ran at about a third of its speed alone): ``--parallel 3`` by default keeps MAML's share high.

The GPU machine (2026-12): its own Python 3.12 and torch 2.11.0+cu130, no network, no gymnasium (fastadapt
imports it for its RL environments: carry its wheel). The coordinator's command (<= 2,000 characters; the
Omniglot zips in data/omniglot and the gymnasium and farama-notifications wheels in data/wheels, both carried):

    set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src; python3 -c 'import gymnasium' 2>/dev/null \
    || { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site data/wheels/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site; }; timeout -k 15 530 python3 benchmarks/gpu_rows.py \
    --minutes 8.5 --out $OUT --data-root data/omniglot --work runs/gpu-rows --test-cut-short 2>&1 \
    | tee $OUT/gpu_rows.log

(``--minutes`` counts from the script's start; the script ends itself by then; ``timeout`` is the backstop.)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from fastadapt.runs.directory import TEST_LOOKS, looks_at_test_set

#: (row, preset, extra train arguments), in priority order; rows whose preset is not shipped are left out.
ROWS = (
    ("anil", "omniglot-anil", ("--iterations", "10000")),
    ("maml", "omniglot-maml", ()),
    ("matching", "omniglot-matching", ()),
    ("metanet", "omniglot-metanet", ()),
    ("snail", "omniglot-snail", ()),
)
#: Files of a run directory that a resume and its test need (the archive of an unfinished run holds these).
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "inputs.json", TEST_LOOKS)
TEST = "gpu_rows_test.json"
#: Largest file that comes back from the GPU machine (16 MiB), less a margin.
MAX_ARCHIVE_BYTES = 15.5 * 2**20
#: Seconds a stopped training process gets to save its checkpoint before it is killed.
STOP_GRACE = 25.0


def log(message: str) -> None:
    print(f"[gpu_rows {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fastadapt(*args: str) -> list[str]:
    """A fastadapt command run by this Python (no console script needed: the GPU machine may have no install)."""
    return [sys.executable, "-m", "fastadapt", *args]


def shown(command: list[str]) -> str:
    return shlex.join(["fastadapt", *command[3:]])


@dataclass
class Row:
    name: str
    preset: str
    run_dir: Path
    train: list[str]
    process: subprocess.Popen | None = None
    notes: list[str] = field(default_factory=list)
    returncode: int | None = None


def checkpoint_state(run_dir: Path) -> dict | None:
    """Iteration, target, clock and best validation of a run directory's last.pt, or None without one."""
    from fastadapt.training.checkpoint import load_checkpoint

    last = run_dir / "last.pt"
    if not last.exists():
        return None
    payload = load_checkpoint(last)
    return {"iteration": payload["iteration"], "iterations": payload["config"]["training"]["iterations"],
            "seconds": payload.get("seconds"), "best_score": payload.get("best_score"),
            "best_iteration": payload.get("best_iteration")}


def test_set(run_dir: Path) -> dict:
    """What the run's test episodes are: the same description gives the same episodes (the training seed does
    not pick them: the version, ``evaluation.test_set``, does)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    task, evaluation = cfg["task"], cfg["evaluation"]
    return {"family": task["family"], "dataset_split": task.get("dataset_split"),
            "episodes": evaluation["test_tasks"], "queries_per_class": evaluation["eval_query"],
            "version": evaluation.get("test_set", 1), "ways": evaluation.get("eval_ways") or [task["n_way"]],
            "shots": evaluation.get("eval_shots") or [task["k_shot"]]}


#: (meta-batch, queries per class, precision, cuda_graph) of the probe's settings.
PROBE_SETTINGS = ((32, 1, "fp32", "off"), (32, 1, "fp32", "on"), (32, 15, "fp32", "off"), (32, 15, "fp32", "on"),
                  (128, 15, "fp32", "on"), (128, 15, "bf16", "on"))


def speed_probe(data_root: str | None, device: str, steps: int, settings=PROBE_SETTINGS,
                check_steps: int = 20) -> list[dict]:
    """Milliseconds a meta-iteration of the omniglot-maml preset, eager and captured, on ``device``; then how far
    the captured step's weights are from the eager step's after ``check_steps`` meta-iterations."""
    from fastadapt.config.presets import load_preset
    from fastadapt.runs.directory import build_learner
    from fastadapt.training.builders import build_tasks
    from fastadapt.training.trainer import Trainer

    base = load_preset("omniglot-maml").replace(device=device, output_dir="runs/gpu-rows-probe",
                                                **({"data_root": data_root} if data_root else {}))
    tasks_by_query: dict = {}
    results = []
    for batch, query, precision, graph in settings:
        cfg = base.replace(meta_batch_size=batch, num_query=query, precision=precision, cuda_graph=graph)
        label = f"meta-batch {batch}, {query} quer{'y' if query == 1 else 'ies'}, {precision}, " \
                f"{'captured' if graph == 'on' else 'eager'}"
        try:
            if query not in tasks_by_query:
                tasks_by_query[query] = build_tasks(cfg, "train")
            tasks = tasks_by_query[query]
            trainer = Trainer(cfg, build_learner(cfg, tasks), tasks, device=device, progress=False)
            one = ((lambda: trainer.captured.step(tasks.sample_indices(batch, trainer.generator)))
                   if trainer.captured is not None else (lambda: trainer.step(trainer.sample())))
            for _ in range(3):  # warm-up (and the capture)
                one()
            synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
            synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                one()
            synchronize()
            ms = (time.perf_counter() - start) / steps * 1000
            captured = trainer.captured is not None and trainer.captured.captured
            results.append({"setting": label, "ms_per_iteration": round(ms, 2), "captured": captured,
                            "steps_timed": steps})
            log(f"probe: {label}: {ms:.2f} ms an iteration{'' if captured or graph == 'off' else ' (not captured)'}")
        except Exception as error:  # a probe that fails must not cost the rows their time
            results.append({"setting": label, "error": f"{type(error).__name__}: {error}"[:300]})
            log(f"probe: {label}: failed: {type(error).__name__}: {error}"[:300])
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    results.append(same_run_check(base, device, check_steps))
    return results


def same_run_check(cfg, device: str, steps: int) -> dict:
    """Largest weight difference between the eager and the captured step after ``steps`` meta-iterations from
    the same seed on the same tasks (the CPU tests check the captured step's path bit for bit, not the graph)."""
    from fastadapt.runs.directory import build_learner
    from fastadapt.training.builders import build_tasks
    from fastadapt.training.trainer import Trainer

    label = f"captured against eager: largest weight difference after {steps} meta-iterations of meta-batch 32"
    try:
        tasks = build_tasks(cfg, "train")
        trainers = [Trainer(cfg.replace(cuda_graph=graph), build_learner(cfg, tasks), tasks, device=device,
                            progress=False) for graph in ("off", "on")]
        eager, captured = trainers
        for _ in range(steps):
            eager.step(eager.sample())
            if captured.captured is not None:
                captured.captured.step(tasks.sample_indices(cfg.training.meta_batch_size, captured.generator))
            else:
                captured.step(captured.sample())
        difference = max((p - q).abs().max().item() for p, q in zip(eager.learner.parameters(),
                                                                    captured.learner.parameters()))
        scale = max(p.abs().max().item() for p in eager.learner.parameters())
        log(f"probe: {label}: {difference:.2e} (largest weight {scale:.2e})")
        return {"setting": label, "max_abs_difference": difference, "max_abs_weight": scale,
                "captured": captured.captured is not None and captured.captured.captured}
    except Exception as error:
        log(f"probe: {label}: failed: {type(error).__name__}: {error}"[:300])
        return {"setting": label, "error": f"{type(error).__name__}: {error}"[:300]}


def plan(args: argparse.Namespace, work: Path) -> list[Row]:
    """The rows to run, in priority order, with their train commands (resuming where a run directory exists)."""
    from fastadapt.config.presets import preset_names

    shipped = set(preset_names())
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    rows = []
    for name, preset, extra in ROWS:
        if name not in args.rows:
            continue
        if preset not in shipped:
            log(f"row {name}: preset {preset} is not shipped; left out")
            continue
        run_dir = work / name
        state = checkpoint_state(run_dir)
        if state is not None and state["iteration"] >= state["iterations"]:
            command: list[str] = []  # finished: nothing to train, maybe to test
        else:
            command = fastadapt("train", preset, *extra, "--device", args.device, "--threads", str(threads),
                                "--output-dir", str(run_dir), "--no-eval", "--no-progress",
                                *(["--data-root", args.data_root] if args.data_root else []), *args.train_args,
                                *(["--resume"] if state is not None else []))
        rows.append(Row(name, preset, run_dir, command))
    return rows


def stop(row: Row) -> None:
    if row.process is not None and row.process.poll() is None:
        row.process.send_signal(signal.SIGTERM)


def train_rows(rows: list[Row], args: argparse.Namespace, until: float) -> None:
    """Run the rows' train commands, ``args.parallel`` at a time, until each ends or ``until`` comes."""
    waiting = [row for row in rows if row.train]
    running: list[Row] = []
    while waiting or running:
        for row in [r for r in running if r.process.poll() is not None]:
            row.returncode = row.process.returncode
            running.remove(row)
            if row.returncode != 0:
                row.notes.append(f"training failed (exit status {row.returncode}; see {row.name}.log)")
            log(f"row {row.name}: training ended (exit status {row.returncode})")
        left = until - time.time()
        while waiting and len(running) < args.parallel and left >= args.min_row_minutes * 60:
            row = waiting.pop(0)
            row.run_dir.parent.mkdir(parents=True, exist_ok=True)
            with open(row.run_dir.parent / f"{row.name}.log", "a") as out:
                row.process = subprocess.Popen(row.train, stdout=out, stderr=subprocess.STDOUT)
            running.append(row)
            log(f"row {row.name}: started {shown(row.train)}")
        if waiting and left < args.min_row_minutes * 60:
            for row in waiting:
                row.notes.append("not started: too little time left")
                log(f"row {row.name}: not started, {left:.0f} s of training time left")
            waiting = []
        if left <= 0 and running:
            log(f"training time is over: stopping {', '.join(r.name for r in running)}")
            for row in running:
                stop(row)
            deadline = time.time() + STOP_GRACE
            for row in running:
                try:
                    row.process.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    row.process.kill()
                    row.process.wait()
                    row.notes.append("killed: it did not stop within the grace time")
                row.returncode = row.process.returncode
            running = []
        time.sleep(0.5)


def test_rows(rows: list[Row], args: argparse.Namespace, until: float) -> None:
    """Test each run that should be tested (finished; cut short with --test-cut-short), side by side."""
    started = []
    for row in rows:
        state = checkpoint_state(row.run_dir)
        if state is None or (row.run_dir / TEST).exists() and state["iteration"] == json.loads(
                (row.run_dir / TEST).read_text()).get("iteration"):
            continue  # no run, or already tested at this iteration
        finished = state["iteration"] >= state["iterations"]
        if not finished and not args.test_cut_short:
            continue
        if not (row.run_dir / "best.pt").exists():
            row.notes.append("not tested: stopped before its first validation")
            continue
        command = fastadapt("eval", str(row.run_dir), "--json", str(row.run_dir / f".{TEST}.new"))
        with open(row.run_dir.parent / f"{row.name}.log", "a") as out:
            started.append((row, state, command, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)))
        log(f"row {row.name}: testing at iteration {state['iteration']}: {shown(command)}")
    for row, state, command, process in started:
        try:
            process.wait(max(1.0, until - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            row.notes.append("its test did not finish in the time left")
            continue
        new = row.run_dir / f".{TEST}.new"
        if process.returncode == 0 and new.exists():
            payload = json.loads(new.read_text())
            payload.update(iteration=state["iteration"], command=shown(command[:5]))  # less --json
            (row.run_dir / TEST).write_text(json.dumps(payload, indent=2) + "\n")
            new.unlink()
        else:
            row.notes.append(f"its test failed (exit status {process.returncode})")


def row_record(row: Row) -> dict:
    state = checkpoint_state(row.run_dir)
    record = {"row": row.name, "preset": row.preset, "run_dir": str(row.run_dir), "notes": row.notes}
    if row.train:
        record["train_command"] = shown(row.train)
        record["train_exit_status"] = row.returncode
    if state is None:
        return record
    record.update(state, finished=state["iteration"] >= state["iterations"], test_set=test_set(row.run_dir),
                  test_looks=looks_at_test_set(row.run_dir, test_set(row.run_dir)["version"]))
    if (row.run_dir / TEST).exists():
        test = json.loads((row.run_dir / TEST).read_text())
        record["test"] = {"iteration": test["iteration"], "command": test["command"], "checkpoint": test["checkpoint"],
                          "results": test["results"]}
    return record


def markdown(payload: dict) -> str:
    lines = [f"GPU rows, {payload['machine']}, {payload['date']} ({payload['minutes']} minutes asked)", ""]
    if payload["probe"]:
        lines += ["| MAML probe (omniglot-maml, 5-way 1-shot, 2nd order) | ms / iteration |", "| --- | --- |"]
        lines += [f"| {p['setting']} | {p.get('ms_per_iteration', p.get('max_abs_difference', p.get('error')))} |"
                  for p in payload["probe"]]
        lines.append("")
    lines += ["| row (command) | iterations | training | best validation | test (mean ± 95% CI) | looks |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in payload["rows"]:
        if "iteration" not in r:
            lines.append(f"| {r['row']}: {'; '.join(r['notes']) or 'no run'} | - | - | - | - | - |")
            continue
        status = ("" if r["finished"] else " (cut short)") + "".join(f"; {note}" for note in r["notes"])
        test = r.get("test")
        figures = "; ".join(f"{k} {100 * v['mean']:.2f} ± {100 * v['ci95']:.2f}" for k, v in test["results"].items()) \
            if test else "not tested"
        best = "-" if r["best_score"] is None else f"{100 * r['best_score']:.2f} at {r['best_iteration']:,}"
        command = r.get("train_command") or r["row"]
        lines.append(f"| {r['row']} (`{command}`) | {r['iteration']:,} of {r['iterations']:,}{status} | "
                     f"{(r['seconds'] or 0) / 60:.1f} min | {best} | {figures} | {r['test_looks']} |")
    return "\n".join(lines) + "\n"


def archive(rows: list[Row], out: Path) -> list[str]:
    """One tar.gz per unfinished run, holding the files its resume and test need."""
    written = []
    for row in rows:
        state = checkpoint_state(row.run_dir)
        if state is None or state["iteration"] >= state["iterations"]:
            continue
        path = out / f"unfinished-{row.name}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name in RUN_FILES:
                if (row.run_dir / name).exists():
                    tar.add(row.run_dir / name, arcname=f"{row.name}/{name}")
        size = path.stat().st_size / 2**20
        if path.stat().st_size > MAX_ARCHIVE_BYTES:  # SNAIL's 3.2M weights: two checkpoints of about 38 MB
            path.unlink()
            row.notes.append(f"its archive ({size:.0f} MiB) is too large to come back from the GPU machine")
            log(f"row {row.name}: archive of {size:.0f} MiB left out (over 16 MiB); it cannot be resumed")
            continue
        written.append(str(path))
        log(f"row {row.name}: {path} ({size:.1f} MiB) resumes it")
    return written


def restore(sources: list[str], work: Path) -> None:
    """Unpack unfinished runs' archives (or copy run directories' files) into the work directory."""
    work.mkdir(parents=True, exist_ok=True)
    for source in map(Path, sources):
        if source.is_dir():
            target = work / source.name
            target.mkdir(exist_ok=True)
            for name in RUN_FILES:
                if (source / name).exists():
                    (target / name).write_bytes((source / name).read_bytes())
            continue
        with tarfile.open(source) as tar:
            tar.extractall(work, filter="data")
        log(f"restored {source} into {work}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="wall minutes this call may take in all")
    parser.add_argument("--out", required=True, help="folder for gpu_rows.json, gpu_rows.md and the archives")
    parser.add_argument("--work", default="runs/gpu-rows", help="folder of the run directories")
    parser.add_argument("--data-root", help="folder of the Omniglot zips")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", nargs="+", default=["probe", *(name for name, _, _ in ROWS)],
                        choices=["probe", *(name for name, _, _ in ROWS)], help="rows to run (in priority order)")
    parser.add_argument("--parallel", type=int, default=3, help="training processes at once")
    parser.add_argument("--min-row-minutes", type=float, default=1.0,
                        help="start a row only with this much training time left")
    parser.add_argument("--probe-steps", type=int, default=60, help="meta-iterations timed per probe setting")
    parser.add_argument("--test-cut-short", action="store_true", help="also test runs the time limit stopped")
    parser.add_argument("--test-seconds", type=float, default=75.0, help="seconds kept for the tests at the end")
    parser.add_argument("--archive-seconds", type=float, default=15.0, help="seconds kept for the archives")
    parser.add_argument("--resume-from", nargs="*", default=[], help="unfinished-ROW.tar.gz archives or run dirs")
    parser.add_argument("--train-args", default="", help="more train flags for every row, e.g. for a tiny test")
    args = parser.parse_args(argv)
    args.train_args = shlex.split(args.train_args)
    start = time.time()
    deadline = start + args.minutes * 60
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    restore(args.resume_from, work)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else "no GPU"
    machine = f"{gpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    log(f"{machine}; {args.minutes} minutes; rows {' '.join(args.rows)}")
    probe = speed_probe(args.data_root, args.device, args.probe_steps) if "probe" in args.rows else []
    rows = plan(args, work)
    for row in rows:
        log(f"row {row.name}: {'finished already' if not row.train else shown(row.train)}")
    train_rows(rows, args, deadline - args.test_seconds - args.archive_seconds)
    test_rows(rows, args, deadline - args.archive_seconds)
    for row in rows:
        row_log = work / f"{row.name}.log"
        if row_log.exists():
            print(f"--- the end of {row_log}:\n" + "\n".join(row_log.read_text().splitlines()[-6:]), flush=True)
    payload = {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M"), "minutes": args.minutes,
               "command": shlex.join([Path(sys.argv[0]).name if argv is None else "gpu_rows.py", *(
                   sys.argv[1:] if argv is None else argv)]),
               "probe": probe, "rows": [row_record(row) for row in rows]}
    payload["archives"] = archive(rows, out)
    (out / "gpu_rows.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "gpu_rows.md").write_text(markdown(payload))
    print(markdown(payload), flush=True)
    log(f"done in {(time.time() - start) / 60:.1f} minutes; wrote {out / 'gpu_rows.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
