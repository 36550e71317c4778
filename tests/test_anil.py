"""ANIL: its batched meta-gradient equals a plain per-task loop that adapts only the head, the body is
meta-learned through the inner loop, it learns, and it trains, evaluates and is refused through the CLI as
any method is; its preset is omniglot-maml's with only the method changed."""
import json

import pytest
import torch
import torch.nn.functional as F

from fastadapt.algorithms.anil import ANIL
from fastadapt.cli import main
from fastadapt.config.presets import load_preset
from fastadapt.models import Conv4
from test_maml_images import held_out_accuracy_before_and_after_meta_training  # tests/ is on sys.path
from test_metric_methods import synthetic_tasks


def _anil(norm="transductive", pooling="max", steps=1, first_order=False, dtype=torch.float64):
    torch.manual_seed(0)
    body = Conv4(hidden=8, norm=norm, pooling=pooling)
    width = body.feature_size((28, 28))
    return ANIL(body, width, 5, "cross_entropy", inner_lr=0.4, inner_steps=steps, first_order=first_order).to(dtype)


def reference_anil_loss(learner: ANIL, batch, inner_lr: float, steps: int, first_order: bool) -> torch.Tensor:
    """ANIL as a Python loop over tasks: the body's features of each task's support and query sets, the head's
    weight and bias adapted by torch.autograd.grad(create_graph=True), the mean query loss."""
    weight, bias = learner.model.weight, learner.model.bias
    total = 0.0
    for t in range(batch.num_tasks):
        support, query = learner.body(batch.support_x[t]), learner.body(batch.query_x[t])
        w, b = weight, bias
        for _ in range(steps):
            loss = F.cross_entropy(support @ w.T + b, batch.support_y[t])
            gw, gb = torch.autograd.grad(loss, (w, b), create_graph=not first_order)
            w, b = w - inner_lr * gw, b - inner_lr * gb
        total = total + F.cross_entropy(query @ w.T + b, batch.query_y[t])
    return total / batch.num_tasks


@pytest.mark.parametrize("pooling", ["max", "stride"])
@pytest.mark.parametrize("norm", ["transductive", "layer"])
@pytest.mark.parametrize("steps,first_order", [(1, False), (2, False), (1, True)])
def test_meta_gradient_matches_a_per_task_loop(norm, pooling, steps, first_order):
    learner = _anil(norm, pooling, steps, first_order)
    batch = synthetic_tasks(3, side=28, queries=3, dtype=torch.float64)
    loss, _ = learner.meta_loss(batch)
    parameters = list(learner.parameters())
    ours = torch.cat([g.flatten() for g in torch.autograd.grad(loss, parameters)])
    ref_loss = reference_anil_loss(learner, batch, 0.4, steps, first_order)
    ref = torch.cat([g.flatten() for g in torch.autograd.grad(ref_loss, parameters)])
    assert torch.allclose(loss, ref_loss, rtol=1e-10)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_only_the_head_adapts_and_the_second_order_term_reaches_the_body():
    learner = _anil()
    batch = synthetic_tasks(2, side=28, dtype=torch.float64)
    adapted = learner.adapt(batch.support_x, batch.support_y)
    assert set(adapted) == {"weight", "bias"} and adapted["weight"].shape == (2, *learner.model.weight.shape)
    assert not torch.allclose(adapted["weight"][0], adapted["weight"][1])  # each task its own head
    body = list(learner.body.parameters())
    grads = []
    for fo in (False, True):
        learner.first_order = fo
        grads.append(torch.autograd.grad(learner.meta_loss(batch)[0], body))
    assert any(not torch.allclose(a, b) for a, b in zip(*grads))


def test_anil_learns_a_few_shot_problem():
    torch.manual_seed(0)
    body = Conv4(hidden=8, image_size=16)
    before, after = held_out_accuracy_before_and_after_meta_training(
        ANIL(body, body.feature_size((16, 16)), 5, "cross_entropy", inner_lr=0.4))
    assert after > before + 0.25


TINY = ["--tasks", "folder", "--n-way", "3", "--k-shot", "1", "--num-query", "2", "--eval-query", "3",
        "--conv-channels", "4", "--iterations", "4", "--meta-batch-size", "2", "--log-every", "2", "--val-every", "2",
        "--checkpoint-every", "2", "--val-tasks", "4", "--test-tasks", "6", "--inner-lr", "0.4", "--eval-steps", "0",
        "1", "--threads", "1", "--no-progress"]


def test_cli_trains_and_evaluates_anil(glyph_folder, tmp_path, capsys):
    run = tmp_path / "anil"
    assert main(["train", "--algorithm", "anil", "--data-root", str(glyph_folder), "--output-dir", str(run),
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert "3-way 1-shot, 0 steps" in out and "3-way 1-shot, 1 step" in out
    assert main(["eval", str(run), "--json", "-"]) == 0
    evaluated = json.loads(capsys.readouterr().out)["results"]
    recorded = json.loads((run / "test_results.json").read_text())["results"]
    assert evaluated == recorded and set(evaluated) == {"3-way 1-shot, 0 steps", "3-way 1-shot, 1 step"}


@pytest.mark.parametrize("args,message", [
    (["--tasks", "sinusoid"], "classifies images"),
    (["--norm", "batch", "--tasks", "folder"], "--norm batch does not work with anil"),
    (["--inner-lr", "0"], "inner_lr must be a positive learning rate"),
])
def test_bad_anil_settings_are_one_line_errors(glyph_folder, tmp_path, capsys, args, message):
    assert main(["train", "--algorithm", "anil", "--data-root", str(glyph_folder), "--iterations", "1",
                 "--output-dir", str(tmp_path / "r"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_anil_preset_is_the_maml_preset_with_only_the_method_changed():
    anil, maml = load_preset("omniglot-anil").flat(), load_preset("omniglot-maml").flat()
    changed = {name for name in anil if anil[name] != maml[name]}
    assert changed == {"algorithm", "output_dir"} and anil["algorithm"] == "anil"
