"""instance-protonet: the canvas split into its characters by colour, each stretched to a square and embedded,
the one nearest the reference chosen; its loss against a per-canvas loop; the method on the command line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from fastadapt.algorithms.instance_protonet import (CHOSEN_LOGIT, CROP, InstancePrototypes, colour_instances,
                                                    stretched_crops)
from fastadapt.algorithms.segmentation import mask_box
from fastadapt.cli import main
from fastadapt.runs.directory import load_run
from fastadapt.runs.inspection import segmentation_examples
from fastadapt.tasks.cluttered_omniglot import SegmentationBatch, mask_iou
from fastadapt.training.builders import build_tasks
from fastadapt.training.checkpoint import load_checkpoint


def _paint(image, colour, rows, cols):
    image[:, rows, cols] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]


def test_colour_instances_are_the_canvas_characters_by_colour_image_by_image():
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    _paint(images[0], (200, 10, 10), slice(0, 4), slice(0, 4))  # a red square
    _paint(images[0], (10, 10, 200), slice(2, 6), slice(2, 6))  # a blue one drawn over it
    _paint(images[2], (200, 10, 10), slice(7, 8), slice(0, 8))  # image 1 is blank; image 2 the red of image 0
    instances = colour_instances(images)
    assert instances.owner.tolist() == [0, 0, 2] and instances.slot.tolist() == [0, 1, 0]
    red = torch.zeros(8, 8, dtype=torch.bool)
    red[0:4, 0:4] = True
    red[2:4, 2:4] = False  # under the blue square
    blue = torch.zeros(8, 8, dtype=torch.bool)
    blue[2:6, 2:6] = True
    line = torch.zeros(8, 8, dtype=torch.bool)
    line[7] = True
    # ordered by colour within an image: blue (10, 10, 200) sorts before red (200, 10, 10)
    assert torch.equal(instances.masks, torch.stack([blue, red, line]))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 3), st.integers(1, 6))
def test_colour_instances_partition_the_ink_each_into_one_colour(seed, tasks, strokes):
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(tasks, 3, 12, 12, dtype=torch.uint8)
    for image in images:
        for _ in range(strokes):
            top, left = torch.randint(0, 12, (2,), generator=generator).tolist()
            colour = torch.randint(0, 256, (3,), generator=generator).tolist()
            _paint(image, colour, slice(top, top + 3), slice(left, left + 5))
    instances = colour_instances(images)
    inked = images.amax(1) > 0
    cover = torch.zeros_like(inked, dtype=torch.int64)
    cover.index_add_(0, instances.owner, instances.masks.to(torch.int64))
    assert torch.equal(cover, inked.to(torch.int64))  # every inked pixel in exactly one instance
    for mask, owner in zip(instances.masks, instances.owner):
        colours = images[owner].permute(1, 2, 0)[mask]
        assert len(colours) and (colours == colours[0]).all()


def test_a_stretched_crop_undoes_the_scale_of_each_axis():
    masks = torch.zeros(3, 40, 40, dtype=torch.bool)
    masks[0, 5:15, 3:23] = True  # a filled 20 x 10 box: the whole crop
    masks[1, 0:8, 0:2] = masks[1, 6:8, 0:8] = True  # an L, its strokes a quarter of the box, 8 x 8 ...
    masks[2, 10:26, 20:26] = masks[2, 22:26, 20:44] = True  # ... and 24 wide, 16 high
    crops = stretched_crops(masks, torch.float64)
    assert crops.shape == (3, 1, CROP, CROP)
    assert torch.allclose(crops[0], torch.ones_like(crops[0]))
    quarter = CROP // 4
    for letter in crops[1:, 0]:  # the same L, whatever the box's size, up to the blend at the strokes' edges
        assert letter[:, :quarter - 2].min() == 1 and letter[-quarter + 2:].min() == 1
        assert letter[:-quarter - 3, quarter + 3:].max() == 0


def _learner(seed=0):
    torch.manual_seed(seed)
    return InstancePrototypes(8).double()


def test_the_reference_s_own_drawing_on_the_canvas_is_the_mask_whatever_the_weights():
    """A canvas character that is the reference's ink exactly (elsewhere, in another colour) embeds at distance
    0: it is chosen by any network, and its pixels are the mask, its box the detection."""
    glyph = torch.zeros(10, 7, dtype=torch.bool)
    glyph[0] = glyph[:, 3] = glyph[9, 2:6] = True  # a T with a foot
    references = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    canvases = torch.zeros(2, 3, 96, 96, dtype=torch.uint8)
    references[:, :, 11:21, 12:19] = glyph * torch.tensor([90, 200, 30], dtype=torch.uint8)[:, None, None]
    _paint(canvases[0], (250, 250, 0), slice(40, 80), slice(5, 15))  # clutter: a bar, a ring
    _paint(canvases[1], (250, 250, 0), slice(0, 30), slice(60, 90))
    _paint(canvases[1], (0, 0, 0), slice(5, 25), slice(65, 85))
    expected = torch.zeros(2, 96, 96, dtype=torch.bool)
    for task, (top, left) in enumerate(((3, 50), (60, 20))):
        expected[task, top:top + 10, left:left + 7] = glyph
        blue = torch.tensor([10, 20, 255], dtype=torch.uint8)[:, None]
        canvases[task, :, top:top + 10, left:left + 7][:, glyph] = blue
    for seed in range(3):
        learner = _learner(seed)
        logits = learner.segment(references, canvases)
        assert torch.equal(logits > 0, expected) and logits.abs().eq(CHOSEN_LOGIT).all()
        found = learner.detect(references, canvases)
        assert torch.equal(found.boxes, mask_box(expected)) and (found.scores > 0.5).all()


def test_the_loss_is_the_cross_entropy_over_each_canvas_characters_as_a_loop_computes_it():
    generator = torch.Generator().manual_seed(1)
    canvases = torch.zeros(3, 3, 96, 96, dtype=torch.uint8)
    masks = torch.zeros(3, 96, 96, dtype=torch.bool)
    for task, count in enumerate((2, 4, 3)):
        for stroke in range(count):
            top, left = torch.randint(0, 80, (2,), generator=generator).tolist()
            height, width = torch.randint(3, 15, (2,), generator=generator).tolist()
            colour = torch.randint(1, 256, (3,), generator=generator).tolist()
            _paint(canvases[task], colour, slice(top, top + height), slice(left, left + width))
        masks[task] = (canvases[task] == canvases[task, :, top, left][:, None, None]).all(0)  # the last one
    masks[2] = False  # an empty target mask: that canvas does not count
    references = (torch.rand(3, 3, 32, 32, generator=generator) > 0.9).to(torch.uint8) * 255
    learner = _learner()
    loss, metrics = learner.meta_loss(SegmentationBatch(canvases, references, masks, mask_box(masks)))
    expected, chosen = [], []
    for task in range(2):
        instances = colour_instances(canvases[task:task + 1])
        reference = learner.adapt(references[task:task + 1])
        distances = (learner.embed(instances.masks) - reference).pow(2).sum(1)
        label = (instances.masks & masks[task]).flatten(1).sum(1).argmax()
        expected.append(F.cross_entropy(-distances[None], label[None]))
        chosen.append(float(distances.argmin() == label))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-12)
    assert metrics["chosen"] == pytest.approx(sum(chosen) / 2)


def test_instance_protonet_trains_resumes_and_is_scored_at_every_level_on_validation(omniglot_dir, tmp_path, capsys):
    common = ["--tasks", "cluttered-omniglot", "--algorithm", "instance-protonet", "--conv-channels", "4",
              "--meta-batch-size", "2", "--val-every", "2", "--val-tasks", "4", "--checkpoint-every", "2",
              "--data-root", str(omniglot_dir), "--threads", "1", "--no-eval", "--no-progress"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *common, "--iterations", "4", "--output-dir", str(straight)]) == 0
    assert main(["train", *common, "--iterations", "2", "--output-dir", str(resumed)]) == 0
    assert main(["train", *common, "--iterations", "4", "--output-dir", str(resumed), "--resume"]) == 0
    weights = [load_checkpoint(run / "last.pt")["learner"] for run in (straight, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    capsys.readouterr()
    assert main(["eval", str(straight), "--split", "val", "--test-tasks", "6", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert all(row["num_tasks"] == 6 for row in rows.values()) and len(rows) == 2
    # fastadapt plot: the first validation canvases with the masks as scored
    assert main(["plot", str(straight), "--split", "val"]) == 0
    cfg, learner = load_run(straight, "best")
    examples = segmentation_examples(cfg, learner, split="val", count=6)
    canvases = build_tasks(cfg, "val").fixed_tasks(6, "val")
    with torch.no_grad():
        scored = mask_iou(torch.sigmoid(learner.segment(canvases.references, canvases.canvases)), canvases.masks)
    assert [example["iou"] for example in examples] == pytest.approx(scored.tolist())
    assert (straight / "canvases.png").stat().st_size > 0 and "canvases.png" in capsys.readouterr().out
    # the levels benchmark: the run's weights at every level, beside template matching, on validation canvases
    template = tmp_path / "template"
    assert main(["train", "--tasks", "cluttered-omniglot", "--algorithm", "template-matching", "--iterations", "0",
                 "--data-root", str(omniglot_dir), "--no-eval", "--output-dir", str(template)]) == 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cluttered_omniglot_levels.py"
    done = subprocess.run([sys.executable, str(script), str(straight), str(template), "--levels", "4", "8",
                           "--canvases", "3", "--output-dir", str(tmp_path / "levels"), "--json",
                           str(tmp_path / "levels.json")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    levels = json.loads((tmp_path / "levels.json").read_text())
    assert [(row["level"], row["method"]) for row in levels] == [
        (4, "instance-protonet"), (4, "template-matching"), (8, "instance-protonet"), (8, "template-matching")]
    assert all(row["split"] == "val" and "test_looks" not in row for row in levels)
    copied = load_checkpoint(tmp_path / "levels" / "straight-8" / "best.pt")["learner"]
    best = load_checkpoint(straight / "best.pt")["learner"]
    assert all(torch.equal(copied[k], best[k]) for k in best)
    assert not list((tmp_path / "levels").glob("*/test_looks.json"))  # validation: no test canvas was seen
