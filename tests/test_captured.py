"""The captured (CUDA-graph) meta-step: its static path gives the eager step's numbers bit for bit on the CPU,
its warm-up leaves no trace, the trainer reads its metrics back only when it logs, and it is used only where
it applies. The capture itself needs a GPU (benchmarks/gpu_rows.py measures it there)."""
import copy
import json

import pytest
import torch

from fastadapt.algorithms import MAML, MetaSGD
from fastadapt.config.schema import Config, ConfigError
from fastadapt.datasets import ClassDataset
from fastadapt.models import Conv4
from fastadapt.runs.directory import build_learner
from fastadapt.tasks import EpisodeTasks
from fastadapt.training.builders import build_tasks
from fastadapt.training.captured import CapturedStep, captured_step
from fastadapt.training.trainer import NonFiniteLossError, Trainer


def _tasks(queries: int = 1) -> EpisodeTasks:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (30 * 16, 1, 28, 28), dtype=torch.uint8, generator=generator)
    dataset = ClassDataset(images, torch.arange(30).repeat_interleave(16), [f"c{i}" for i in range(30)])
    return EpisodeTasks(dataset, n_way=5, k_shot=1, num_query=queries)


def _pair(method=MAML, **options):
    torch.manual_seed(0)
    learner = method(Conv4(1, 8, 5, "transductive", pooling="stride"), "cross_entropy", inner_lr=0.4, **options)
    twin = copy.deepcopy(learner)
    return tuple((model, torch.optim.Adam(model.parameters(), lr=1e-3)) for model in (learner, twin))


def _eager_step(learner, optimizer, batch):
    optimizer.zero_grad(set_to_none=True)
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    optimizer.step()
    return metrics


@pytest.mark.parametrize("method, queries", [(MAML, 1), (MAML, 15), (MetaSGD, 1)])
def test_static_path_gives_the_eager_steps_gradients_and_weights_bit_for_bit(method, queries, one_thread):
    """15 queries a task take MAML's per-task query pass on the CPU, 1 its vmapped one."""
    tasks = _tasks(queries)
    (eager, eager_opt), (static, static_opt) = _pair(method)
    step = CapturedStep(static, static_opt, tasks, 4, "fp32", "cpu", capture=False)
    first, second = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    losses = []
    for _ in range(3):
        metrics = _eager_step(eager, eager_opt, tasks.sample(4, first))
        losses.append(metrics["loss"])
        step.step(tasks.sample_indices(4, second))
        for (name, p), q in zip(eager.named_parameters(), static.parameters()):
            assert torch.equal(p.grad, q.grad), name
            assert torch.equal(p, q), name
    sums, diverged = step.take_sums()
    assert not diverged
    assert sums["loss"] == pytest.approx(sum(losses), rel=1e-6)
    assert step.take_sums()[0] == {"loss": 0.0, "accuracy": 0.0}  # taken sums start again from zero


def test_the_warm_up_before_capture_leaves_no_trace(one_thread):
    """The capture's warm-up steps train; after them the state is put back, so the run equals the eager one."""
    tasks = _tasks()
    (eager, eager_opt), (static, static_opt) = _pair()
    step = CapturedStep(static, static_opt, tasks, 4, "fp32", "cpu", capture=False)
    first, second = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for fresh in (True, False):  # before the optimizer has state (a new run), and after (a resumed one)
        step._load(tasks.sample_indices(4, torch.Generator().manual_seed(9)))
        saved = step._snapshot()
        for _ in range(2):
            static_opt.zero_grad(set_to_none=True)
            step._body()
        assert not torch.equal(next(static.parameters()), next(eager.parameters()))
        step._restore(saved)
        _eager_step(eager, eager_opt, tasks.sample(4, first))
        step.step(tasks.sample_indices(4, second))
        for p, q in zip(eager.parameters(), static.parameters()):
            assert torch.equal(p, q)
        assert static_opt.state_dict()["state"][0]["step"] == eager_opt.state_dict()["state"][0]["step"]


def _omniglot_cfg(tmp_path, **overrides) -> Config:
    values = dict(algorithm="maml", tasks="omniglot", dataset_split="maml", n_way=5, k_shot=1, num_query=1,
                  conv_channels=8, pooling="stride", inner_lr=0.4, meta_batch_size=4, iterations=6, log_every=2,
                  val_every=3, checkpoint_every=3, val_tasks=4, test_tasks=4, device="cpu", output_dir=str(tmp_path))
    values.update(overrides)
    return Config(**values)


def _fit(cfg: Config, static: bool) -> tuple[Trainer, list[dict]]:
    tasks = build_tasks(cfg, "train")
    learner = build_learner(cfg, tasks)
    val_tasks = build_tasks(cfg, "val")
    trainer = Trainer(cfg, learner, tasks, lambda: [val_tasks.fixed_tasks(4, "val")], device="cpu", progress=False)
    if static:  # the captured step's path, run eagerly as on a CPU
        trainer.captured = CapturedStep(learner, trainer.optimizer, tasks, 4, "fp32", "cpu", capture=False)
    trainer.fit()
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    return trainer, [json.loads(line) for line in lines]


def test_a_trainer_with_the_static_step_trains_and_logs_as_the_eager_one(tmp_path, fake_omniglot, one_thread):
    eager, eager_log = _fit(_omniglot_cfg(tmp_path / "eager"), static=False)
    static, static_log = _fit(_omniglot_cfg(tmp_path / "static"), static=True)
    for (name, p), q in zip(eager.learner.state_dict().items(), static.learner.state_dict().values()):
        assert torch.equal(p, q), name
    assert [r["iteration"] for r in static_log] == [r["iteration"] for r in eager_log] == [2, 3, 4, 6]
    for ours, theirs in zip(static_log, eager_log):
        for key in ("loss", "accuracy", "val_accuracy"):
            assert (key in ours) == (key in theirs)
            if key in ours:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key


def test_a_diverged_captured_run_stops_at_its_next_log_line_without_saving(tmp_path, fake_omniglot, one_thread):
    cfg = _omniglot_cfg(tmp_path, inner_lr=1e30, checkpoint_every=1000, val_every=1000)
    with pytest.raises(NonFiniteLossError, match="non-finite before iteration 2"):
        _fit(cfg, static=True)
    assert not (tmp_path / "last.pt").exists()


def test_the_captured_step_is_used_only_where_it_applies(tmp_path, fake_omniglot, capsys):
    cfg = _omniglot_cfg(tmp_path)
    tasks = build_tasks(cfg, "train")
    learner = build_learner(cfg, tasks)
    optimizer = torch.optim.Adam(learner.parameters())
    said = []
    assert captured_step("auto", learner, tasks, optimizer, 4, "fp32", torch.device("cpu"), None, said.append) is None
    assert said == []  # auto on a CPU: silently the eager step
    assert captured_step("on", learner, tasks, optimizer, 4, "fp32", torch.device("cpu"), None, said.append) is None
    assert said == ["CUDA graph: not used (the device is cpu, not a CUDA GPU); training with the eager step"]
    assert Trainer(cfg, learner, tasks, progress=False).captured is None
    for bad in ("yes", "On"):
        with pytest.raises(ConfigError, match="cuda_graph"):
            _omniglot_cfg(tmp_path, cuda_graph=bad)
