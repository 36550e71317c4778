"""One-shot segmentation in clutter as methods: template matching (its NCC against scikit-image's), the ink floor,
the Siamese U-Net with its CenterNet head, and the cluttered-omniglot family on the command line (train, resume,
eval on the validation canvases, segment), never on the test canvases."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt.algorithms.metrics import LOCALISATION, MASK_IOU
from fastadapt.algorithms.segmentation import check_segmentation_inputs, mask_box
from fastadapt.algorithms.segmentation_baselines import (InkFloor, TemplateMatching, bank_ncc, ncc, template_bank,
                                                         template_grid, transformed_templates, window_sums)
from fastadapt.algorithms.siamese_unet import (CELL, SiameseUNet, decode_boxes, detection_loss, matching_loss,
                                              similarities, soft_dice_loss)
from fastadapt.algorithms.siamese_unet_anil import SiameseUNetANIL, support_canvases
from fastadapt.cli import main
from fastadapt.config.schema import Config
from fastadapt.runs.directory import build_learner, load_run
from fastadapt.tasks.cluttered_omniglot import (ClutteredOmniglotTasks, SegmentationBatch, localisation_hits,
                                                mask_iou)
from fastadapt.training.builders import build_tasks
from fastadapt.training.checkpoint import load_checkpoint
from fastadapt.training.trainer import Trainer


@pytest.mark.parametrize("binary", [False, True])
def test_ncc_is_scikit_images_match_template_at_every_valid_position(binary):
    match_template = pytest.importorskip("skimage.feature").match_template
    generator = torch.Generator().manual_seed(int(binary))
    images = torch.rand(2, 40, 50, generator=generator, dtype=torch.float64)
    boxes = torch.tensor([[[0, 0, 7, 9], [5, 8, 12, 5], [0, 0, 1, 1]],
                          [[3, 2, 20, 30], [30, 40, 3, 3], [0, 0, 40, 50]]])
    templates = torch.zeros(2, 3, 40, 50, dtype=torch.float64)
    for task, frame, (top, left, h, w) in ((t, k, boxes[t, k].tolist()) for t in range(2) for k in range(3)):
        templates[task, frame, top:top + h, left:left + w] = torch.rand(h, w, generator=generator, dtype=torch.float64)
    if binary:
        images, templates = images.round(), templates.round()
    scores = ncc(images, templates, boxes)
    for task, frame, (top, left, h, w) in ((t, k, boxes[t, k].tolist()) for t in range(2) for k in range(3)):
        expected = match_template(images[task].numpy(), templates[task, frame, top:top + h, left:left + w].numpy())
        # Score (y, x) is the window whose top left is (y + top, x + left), cyclically.
        ours = scores[task, frame].roll((top, left), (0, 1))
        assert np.abs(ours[:40 - h + 1, :50 - w + 1].numpy() - expected).max() < 1e-9
        assert torch.isinf(ours).sum() == 40 * 50 - expected.size  # exactly the windows that leave the image


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_window_sums_are_each_windows_sum_cut_at_the_bottom_and_right_edges(dtype):
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 11, 13, generator=generator, dtype=torch.float64)
    images[0] = images[0].round()  # 0/1: exact in float32 too
    images = images.to(dtype)
    boxes = torch.tensor([[[0, 0, 3, 4], [5, 9, 11, 13], [2, 12, 1, 1], [0, 0, 0, 0], [2, 12, 5, 1]],
                          [[10, 3, 4, 2], [4, 4, 7, 9], [0, 0, 11, 13], [1, 2, 0, 5], [10, 3, 4, 2]]])
    sums = window_sums(images, boxes)
    assert sums.shape == (2, 5, 11, 13) and sums.dtype == dtype
    for task, frame, (top, left, h, w) in ((t, k, boxes[t, k].tolist()) for t in range(2) for k in range(5)):
        for y, x in ((y, x) for y in range(11) for x in range(13)):
            row, col = (y + top) % 11, (x + left) % 13
            expected = images[task, row:row + h, col:col + w].double().sum()
            if task == 0:
                assert sums[task, frame, y, x] == expected
            else:
                assert float(sums[task, frame, y, x]) == pytest.approx(float(expected), abs=1e-5)
    # one image against several references' boxes broadcasts
    assert torch.equal(window_sums(images[:1], boxes), torch.stack([sums[0], window_sums(images[0], boxes[1])]))


def test_templates_sampled_only_where_the_ink_reaches_are_the_whole_frames():
    generator = torch.Generator().manual_seed(5)
    references = torch.zeros(5, 32, 32, dtype=torch.bool)
    references[0, 0, 0] = references[1, 31, 31] = True  # ink in the corners: the frame's reach is widest
    references[2, 10:20, 12:15] = True
    references[3] = torch.rand(32, 32, generator=generator) > 0.7
    # reference 4 has no ink
    for chosen in ([0], [1], [2, 4], [3], [4], [0, 1, 2, 3, 4]):
        templates = transformed_templates(references[chosen], 96)
        padded = torch.nn.functional.pad(references[chosen].float()[:, None], (32, 32, 32, 32))
        grid = template_grid(96, "cpu")
        whole = torch.nn.functional.grid_sample(padded, grid.view(1, -1, 96, 2).expand(len(chosen), -1, -1, -1),
                                                mode="bilinear", align_corners=False).view(len(chosen), -1, 96, 96)
        assert torch.equal(templates.ink, (whole > 0.5).float())


def test_the_ncc_of_ink_maps_is_the_general_formulas_in_float64_to_float32_rounding():
    generator = torch.Generator().manual_seed(7)
    references = torch.rand(2, 32, 32, generator=generator) > 0.8
    templates = transformed_templates(references, 96)
    bank = template_bank(templates.ink, templates.box)
    assert bank.binary
    images = (torch.rand(2, 96, 96, generator=generator) > 0.85).float()
    images[1, :40, :40] = 1  # windows all ink: the NCC is 0 there, as on empty windows
    general = bank_ncc(template_bank(templates.ink.double(), templates.box)._replace(binary=False), images.double())
    exact = bank_ncc(bank, images)
    finite = torch.isfinite(general)
    assert torch.equal(exact == -math.inf, ~finite) and finite.float().mean() > 0.3
    assert (exact[finite] - general[finite]).abs().max() < 1e-5
    # windows with no ink or all ink (0 / 0 in the formula) score exactly 0
    sums = window_sums(images, templates.box)
    flat = finite & ((sums == 0) | (sums == bank.area))
    assert flat[1].any() and (exact[flat] == 0).all()


def _pasted(reference_ink, canvas_size=96, at=(40, 30), colour=(200, 50, 10)):
    canvas = torch.zeros(3, canvas_size, canvas_size, dtype=torch.uint8)
    h, w = reference_ink.shape
    canvas[:, at[1]:at[1] + h, at[0]:at[0] + w] = reference_ink * torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    return canvas


def test_template_matching_finds_an_untransformed_reference_among_distractors_exactly():
    generator = torch.Generator().manual_seed(0)
    ink = torch.zeros(32, 32, dtype=torch.uint8)
    ink[8:24, 10:13] = 1  # an L, off centre in its reference
    ink[21:24, 10:22] = 1
    reference = ink * torch.tensor([10, 250, 90], dtype=torch.uint8)[:, None, None]
    canvas = _pasted(ink[8:24, 10:22])  # the target at (40, 30), its ink box 12 x 16
    canvas[:, 2:20, 70:90] = (torch.rand(18, 20, generator=generator) > 0.5).to(torch.uint8) * 90  # clutter
    truth = canvas.amax(0) == 200
    learner = TemplateMatching()
    masks, found = learner.match(reference[None], canvas[None])
    assert found.box.tolist() == [[40, 30, 12, 16]] and found.score.item() == pytest.approx(1.0)
    assert torch.equal(masks[0], truth)
    scores = learner.score_tasks(SegmentationBatch(canvas[None], reference[None], truth[None], found.box), [None])
    assert scores[None].tolist() == [1.0] and scores["localisation"].tolist() == [1.0]
    assert learner.detect(reference[None], canvas[None]).boxes.tolist() == [[40, 30, 12, 16]]


def test_the_ink_floor_predicts_every_inked_pixel_and_a_mask_box_bounds_it():
    canvas = torch.zeros(2, 3, 96, 96, dtype=torch.uint8)
    canvas[0, 1, 5:9, 60:70] = 3
    logits = InkFloor().segment(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), canvas)
    assert torch.equal(logits > 0, canvas.amax(1) > 0)
    assert mask_box(logits > 0).tolist() == [[60, 5, 10, 4], [0, 0, 0, 0]]


@pytest.mark.parametrize("references, canvases, message", [
    ((2, 3, 28, 28), (2, 3, 96, 96), "a reference must be 32x32"),
    ((2, 1, 32, 32), (2, 3, 96, 96), "a reference must be 32x32 pixels with 3 channels"),
    ((2, 3, 32, 32), (2, 3, 64, 96), "a canvas must be 96x96"),
    ((3, 3, 32, 32), (2, 3, 96, 96), "3 references for 2 canvases"),
])
def test_inputs_of_the_wrong_shape_are_refused_saying_which(references, canvases, message):
    with pytest.raises(ValueError, match=message):
        check_segmentation_inputs(torch.zeros(references), torch.zeros(canvases))


def _batch(tasks, seed=0):
    generator = torch.Generator().manual_seed(seed)
    canvases = (torch.rand(tasks, 3, 96, 96, generator=generator) * 255).to(torch.uint8)
    references = (torch.rand(tasks, 3, 32, 32, generator=generator) * 255).to(torch.uint8)
    boxes = torch.tensor([[10, 20, 15, 30], [0, 0, 8, 5], [80, 85, 16, 11]])[:tasks]
    masks = torch.zeros(tasks, 96, 96, dtype=torch.bool)
    for mask, (left, top, width, height) in zip(masks, boxes.tolist()):
        mask[top:top + height, left:left + width] = True
    return SegmentationBatch(canvases, references, masks, boxes)


def test_the_siamese_unet_gives_masks_boxes_and_a_gradient_to_every_weight(one_thread):
    torch.manual_seed(0)
    learner = SiameseUNet(8)
    batch = _batch(3)
    loss, metrics = learner.meta_loss(batch)
    loss.backward()
    assert set(metrics) == {"loss", "mask_iou", "mask_loss", "box_loss"}
    assert metrics["loss"] == pytest.approx(metrics["mask_loss"] + 0.1 * metrics["box_loss"], rel=1e-5)
    for name, parameter in learner.named_parameters():
        gradient = parameter.grad
        assert gradient is not None and torch.isfinite(gradient).all() and gradient.abs().sum() > 0, name
    assert learner.segment(batch.references, batch.canvases).shape == (3, 96, 96)
    found = learner.detect(batch.references, batch.canvases)
    assert found.boxes.shape == (3, 4) and ((found.scores > 0) & (found.scores < 1)).all()
    scores = learner.score_tasks(batch, [None])
    assert set(scores) == {None, LOCALISATION.name} and scores[None].shape == (3,)
    assert MASK_IOU.companions == (LOCALISATION,)


def test_the_soft_dice_loss_is_nought_for_the_right_mask_and_nearly_one_for_its_complement():
    masks = _batch(3).masks
    assert soft_dice_loss(torch.where(masks, 30.0, -30.0), masks).abs().max() < 1e-4
    assert (soft_dice_loss(torch.where(masks, -30.0, 30.0), masks) > 0.999).all()
    assert soft_dice_loss(torch.full((1, 96, 96), -30.0), torch.zeros(1, 96, 96, dtype=torch.bool)).item() < 1e-4


def test_the_similarity_maps_find_the_reference_prototype_and_its_best_cell():
    generator = torch.Generator().manual_seed(0)
    unit = lambda x: torch.nn.functional.normalize(x, dim=1)
    cells = unit(torch.randn(2, 8, 16, generator=generator, dtype=torch.float64))
    cells[:, :, 5:] = 0  # uninked cells
    cells[1] = 0  # a blank reference
    canvas = unit(torch.randn(2, 8, 6, 6, generator=generator, dtype=torch.float64))
    canvas[0, :, 2, 3] = unit(cells[0].sum(1, keepdim=True).T)[0]  # the prototype
    canvas[0, :, 4, 1] = cells[0, :, 3]  # one of its cells
    canvas[0, :, 0, 0] = unit(torch.randn(1, 8, generator=generator, dtype=torch.float64))[0]
    maps = similarities(canvas, cells)
    assert maps.shape == (2, 2, 6, 6) and maps[1].abs().max() == 0 and maps[0].abs().max() <= 1 + 1e-12
    prototype, best = maps[0]
    assert prototype[2, 3] == pytest.approx(1) and prototype.flatten().argmax() == 2 * 6 + 3
    assert best[4, 1] == pytest.approx(1) and best.flatten().argmax() == 4 * 6 + 1
    # The best match is the highest cosine over the inked cells only.
    assert best[0, 0] == pytest.approx(float((canvas[0, :, 0, 0] @ cells[0, :, :5]).max()))


def test_the_matching_loss_is_lowest_on_the_target_cells_and_nought_for_an_empty_mask():
    masks = _batch(3).masks
    on_target = torch.where(torch.nn.functional.avg_pool2d(masks[:, None].double(), 4)[:, 0] > 0, 8.0, -8.0)
    assert (matching_loss(on_target, masks) < matching_loss(on_target.roll(6, dims=2), masks)).all()
    assert (matching_loss(on_target, masks) < matching_loss(torch.zeros_like(on_target), masks)).all()
    assert matching_loss(on_target[:1], torch.zeros(1, 96, 96, dtype=torch.bool)).item() == 0


def test_centernet_maps_that_mark_a_box_decode_to_it_and_cost_less_than_others():
    boxes = _batch(3).boxes.double()
    maps = torch.full((3, 5, 24, 24), -12.0, dtype=torch.float64)
    centre = (boxes[:, :2] + boxes[:, 2:] / 2) / CELL
    cell = centre.floor().long()
    for task in range(3):
        x, y = cell[task].tolist()
        maps[task, 0, y, x] = 12.0
        maps[task, 1:3, y, x] = boxes[task, 2:] / CELL
        maps[task, 3:, y, x] = centre[task] - cell[task]
    found = decode_boxes(maps)
    assert torch.allclose(found.boxes, boxes) and (found.scores > 0.99).all()
    moved = maps.roll(1, dims=3)
    assert (detection_loss(maps, boxes) < detection_loss(moved, boxes)).all()


# --- the family on the command line, on the official validation canvases ---

@pytest.fixture(scope="module")
def tiny_run(omniglot_dir, tmp_path_factory):
    """A 4-iteration siamese-unet run (width 4, 2 canvases a step), and the same run stopped at 2 and resumed."""
    root = tmp_path_factory.mktemp("segmentation")
    common = ["--tasks", "cluttered-omniglot", "--algorithm", "siamese-unet", "--conv-channels", "4",
              "--meta-batch-size", "2", "--val-every", "2", "--val-tasks", "4", "--checkpoint-every", "2",
              "--data-root", str(omniglot_dir), "--threads", "1", "--no-eval", "--no-progress"]
    straight, resumed = root / "straight", root / "resumed"
    assert main(["train", *common, "--iterations", "4", "--output-dir", str(straight)]) == 0
    assert main(["train", *common, "--iterations", "2", "--output-dir", str(resumed)]) == 0
    assert main(["train", *common, "--iterations", "4", "--output-dir", str(resumed), "--resume"]) == 0
    return straight, resumed


def test_a_resumed_segmentation_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_run):
    straight, resumed = (load_checkpoint(run / "last.pt") for run in tiny_run)
    assert straight["iteration"] == resumed["iteration"] == 4
    assert all(torch.equal(straight["learner"][k], resumed["learner"][k]) for k in straight["learner"])
    logged = [json.loads(line) for line in (tiny_run[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logged if "val_mask_iou" in r] == [2, 4]


def test_eval_prints_mask_iou_and_localisation_on_the_validation_canvases(tiny_run, capsys):
    assert main(["eval", str(tiny_run[0]), "--split", "val", "--test-tasks", "6", "--json", "-"]) == 0
    payload = json.loads(capsys.readouterr().out)
    rows = payload["results"]
    assert set(rows) == {MASK_IOU.adapted_row, LOCALISATION.adapted_row}
    # The same 6 validation canvases scored here by hand, from the best checkpoint as eval loads it.
    cfg, learner = load_run(tiny_run[0], "best")
    canvases = build_tasks(cfg, "val").fixed_tasks(6, "val")
    with torch.no_grad():
        probabilities = torch.sigmoid(learner.segment(canvases.references, canvases.canvases).float())
    expected = {MASK_IOU.adapted_row: mask_iou(probabilities, canvases.masks),
                LOCALISATION.adapted_row: localisation_hits(probabilities, canvases.masks)}
    for name, scores in expected.items():
        assert rows[name]["num_tasks"] == 6
        assert rows[name]["mean"] == pytest.approx(scores.mean().item(), abs=1e-6)
        t_quantile = 2.570582  # Student's t, 5 degrees of freedom, 97.5%
        assert rows[name]["ci95"] == pytest.approx(t_quantile * scores.std().item() / math.sqrt(6), abs=1e-5)


def _write(path, size, seed=0):
    pixels = (np.random.default_rng(seed).random((size, size, 3)) > 0.8).astype(np.uint8) * 180
    Image.fromarray(pixels).save(path)
    return path


def test_segment_answers_a_box_score_and_mask_per_canvas(tiny_run, tmp_path, capsys):
    reference, canvas = _write(tmp_path / "reference.png", 32), _write(tmp_path / "canvas.png", 96, seed=1)
    assert main(["segment", str(tiny_run[0]), "--reference", str(reference), "--canvas", str(canvas), str(canvas),
                 "--output", str(tmp_path / "masks")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["canvas", "box"] and len(lines) == 4
    mask = np.asarray(Image.open(tmp_path / "masks" / "canvas_mask.png"))
    assert mask.shape == (96, 96) and set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize("problem, message", [
    ("wrong size", "is 40x40 pixels; a cluttered-Omniglot run reads 32x32 references"),
    ("corrupt", "cannot read the reference"),
    ("missing", "cannot read the reference"),
])
def test_a_corrupt_or_wrong_size_reference_is_one_line_and_exit_2(tiny_run, tmp_path, capsys, problem, message):
    canvas = _write(tmp_path / "canvas.png", 96)
    reference = tmp_path / "reference.png"
    if problem == "wrong size":
        _write(reference, 40)
    elif problem == "corrupt":
        reference.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["segment", str(tiny_run[0]), "--reference", str(reference), "--canvas", str(canvas)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastadapt: error: ") and message in err


def test_a_classification_method_on_cluttered_omniglot_and_the_reverse_are_refused(omniglot_dir, capsys):
    for algorithm, tasks, message in (("maml", "cluttered-omniglot", "use --algorithm"),
                                      ("siamese-unet", "omniglot", "use --tasks cluttered-omniglot")):
        assert main(["train", "--tasks", tasks, "--algorithm", algorithm, "--iterations", "0", "--no-eval",
                     "--data-root", str(omniglot_dir), "--output-dir", "/nonexistent/never"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_mask_logits_are_scored_at_a_probability_of_0_3():
    truth = torch.zeros(2, 20, 20, dtype=torch.bool)
    truth[0, :2] = True
    logits = torch.full((2, 20, 20), math.log(0.29 / 0.71))
    logits[0, :2] = math.log(0.31 / 0.69)
    assert MASK_IOU.per_task(logits, truth).tolist() == [1.0, 1.0]  # the second: empty against empty
    # Flipped, the first mask's centre moves from row 0 to row 18: a miss; the empty one stays a hit.
    assert LOCALISATION.per_task(logits.flip(1), truth).tolist() == [0.0, 1.0]


# --- the meta-learned variant: FiLM conditioning adapted to each reference (ANIL) ---

def _anil(first_order=False, steps=2):
    torch.manual_seed(0)
    learner = SiameseUNetANIL(4, inner_lr=0.1, inner_steps=steps, first_order=first_order).double()
    for film in learner.network.film:  # away from the identity it starts at, so that every term is generic
        torch.nn.init.normal_(film.weight, std=0.1)
        torch.nn.init.normal_(film.bias, std=0.1)
    return learner


def _references(tasks=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return ((torch.rand(tasks, 3, 32, 32, generator=generator) > 0.8) * 200).to(torch.uint8)


def test_the_anil_meta_gradient_of_a_batch_is_the_mean_of_its_tasks_in_float64(one_thread):
    batch = _batch(3)
    batch.references = _references()
    learner = _anil()
    learner.meta_loss(batch)[0].backward()
    together = {name: p.grad.clone() for name, p in learner.named_parameters()}
    learner.zero_grad()
    for task in range(3):
        (learner.meta_loss(batch[task:task + 1])[0] / 3).backward()
    for name, p in learner.named_parameters():
        assert torch.allclose(together[name], p.grad, rtol=1e-9, atol=1e-12), name
    first_order = _anil(first_order=True)
    first_order.meta_loss(batch)[0].backward()  # the second-order terms are there, and not negligible
    assert max((together[n] - p.grad).abs().max() for n, p in first_order.named_parameters()) > 1e-5


def test_the_support_is_the_reference_pasted_last_into_its_own_rotations_and_adapting_fits_it(one_thread):
    references = _references(seed=1)
    canvases, masks = support_canvases(references)
    again, _ = support_canvases(references[1:])
    assert torch.equal(again, canvases[1:])  # a task's support depends on its reference alone
    for canvas, mask, reference in zip(canvases, masks, references):
        ys, xs = mask.nonzero().unbind(1)
        left, top = int(xs.min()), int(ys.min())
        drawn = reference.amax(0) > 0
        rows, cols = drawn.nonzero().unbind(1)
        assert mask.sum() == drawn.sum()  # never occluded
        assert torch.equal(canvas[:, ys, xs], reference[:, rows, cols])
        assert (canvas.amax(0) > 0).sum() > mask.sum()  # and there is clutter
    learner = _anil(steps=0)
    learner.eval()
    before = learner.task_losses(learner.segment(references, canvases), masks)
    learner.eval_inner_steps = 5
    after = learner.task_losses(learner.segment(references, canvases), masks)
    assert (after < before).all()


@pytest.mark.parametrize("algorithm", ["siamese-unet", "siamese-unet-anil"])
def test_the_segmenters_train_in_bf16_with_fp32_master_weights(algorithm, tmp_path, one_thread):
    generator = torch.Generator().manual_seed(0)
    glyphs = torch.rand(6, 4, 105, 105, generator=generator) > 0.97  # random ink: canvases like the benchmark's
    tasks = ClutteredOmniglotTasks(glyphs, characters=3, drawers=(0, 4))
    cfg = Config(algorithm=algorithm, tasks="cluttered-omniglot", conv_channels=4, meta_batch_size=2,
                 precision="bf16", output_dir=str(tmp_path / "run"))
    learner = build_learner(cfg, tasks)
    trainer = Trainer(cfg, learner, tasks, progress=False)
    before = {name: p.detach().clone() for name, p in learner.named_parameters()}
    metrics = trainer.step(trainer.sample())
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in learner.parameters())
    assert any(not torch.equal(before[name], p) for name, p in learner.named_parameters())
