"""K-shot detection methods (algorithms/detection*.py): peaks to boxes, template matching on pasted references,
the family on the command line."""
import json
import math

import pytest
import torch

from fastadapt.algorithms.detection import PEAKS_PER_CLASS, check_detection_inputs, peak_detections
from fastadapt.algorithms.detection_baselines import TemplateDetector
from fastadapt.algorithms.metrics import AP50, COCO_AP
from fastadapt.algorithms.prototype_detector import PrototypeDetector
from fastadapt.algorithms.prototype_detector_anil import PrototypeDetectorANIL
from fastadapt.algorithms.segmentation import mask_box
from fastadapt.algorithms.siamese_unet import CELL, Reference, cell_boxes, detection_loss
from fastadapt.algorithms.siamese_unet_anil import support_canvases
from fastadapt.algorithms.transfer_detector import PRIOR, TransferDetector
from fastadapt.cli import main
from fastadapt.runs.directory import load_run
from fastadapt.tasks.detection import DetectionBatch, DetectionEpisodes
from fastadapt.training.builders import build_tasks


def ink_box(image, left, top):
    """The box (left, top, width, height) of an RGB image's ink pasted with its top left at (left, top)."""
    ys, xs = (image.amax(0) > 0).nonzero().T
    return [left + xs.min().item(), top + ys.min().item(), xs.max().item() - xs.min().item() + 1,
            ys.max().item() - ys.min().item() + 1]


def glyph_reference(seed):
    """A 32x32 reference holding a random stroke-like drawing: a few random solid bars."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    for _ in range(3):
        x, y = torch.randint(4, 20, (2,), generator=generator).tolist()
        w, h = (torch.randint(2, 10, (2,), generator=generator)).tolist()
        image[:, y:y + h, x:x + w] = torch.randint(60, 255, (3, 1, 1), generator=generator, dtype=torch.uint8)
    return image


def test_peaks_become_boxes_with_their_class_and_nms_removes_overlapping_ones():
    scores = torch.full((1, 2, 10, 10), -math.inf)
    scores[0, 0, 2, 3], scores[0, 0, 2, 4] = 0.9, 0.8  # a plateau's neighbour is no peak
    scores[0, 0, 7, 7] = 0.7
    scores[0, 1, 5, 5] = 0.95
    boxes = torch.zeros(1, 2, 10, 10, 4)
    boxes[0, 0, 2, 3] = torch.tensor([10.0, 10, 8, 8])
    boxes[0, 0, 7, 7] = torch.tensor([11.0, 10, 8, 8])  # overlaps the first box of its class: removed
    boxes[0, 1, 5, 5] = torch.tensor([10.0, 10, 8, 8])  # same place, another class: kept
    found = peak_detections(scores, boxes, count=3)
    assert found.shape == (1, 6, 6)
    assert found[0, :2].tolist() == [[10, 10, 8, 8, pytest.approx(0.95), 1], [10, 10, 8, 8, pytest.approx(0.9), 0]]
    assert (found[0, 2:, 5] == -1).all()
    assert len(peak_detections(scores, boxes, count=3, iou=0.9)[0].nonzero()) > len(found[0].nonzero())


def test_template_matching_finds_pasted_references_exactly_and_scores_ap_one():
    references = torch.stack([glyph_reference(seed) for seed in range(3)])[:, None]  # 3 classes, 1 shot
    canvases = torch.zeros(2, 3, 96, 96, dtype=torch.uint8)
    canvases[0, :, 10:42, 50:82] = references[1, 0]
    canvases[0, :, 60:92, 5:37] = references[2, 0]
    canvases[1, :, 30:62, 30:62] = references[1, 0]
    targets_boxes = torch.tensor([[ink_box(references[1, 0], 50, 10), ink_box(references[2, 0], 5, 60), [0] * 4],
                                  [ink_box(references[1, 0], 30, 30), [0] * 4, [0] * 4]])
    classes = torch.tensor([[1, 2, -1], [1, -1, -1]])
    batch = DetectionBatch(references[None], canvases[None], targets_boxes[None], classes[None],
                           torch.zeros(1, 2, 3, 96, 96, dtype=torch.bool), torch.arange(3)[None])
    found = TemplateDetector().find(batch.references, batch.canvases)
    best = found[0, :, 0]
    assert best[0].tolist()[:4] in targets_boxes[0, :2].tolist() and best[0, 4] == pytest.approx(1, abs=1e-5)
    assert best[1].tolist() == [*targets_boxes[1, 0].tolist(), pytest.approx(1, abs=1e-5), 1]
    scores = TemplateDetector().score_tasks(batch, [None])
    assert scores[None].tolist() == [pytest.approx(1)] and scores[COCO_AP.name].tolist() == [pytest.approx(1)]
    assert AP50.per_task(found, batch.targets) == scores[None]


@pytest.mark.parametrize("references, canvases, message", [
    ((1, 3, 1, 3, 28, 28), (1, 2, 3, 96, 96), "a reference must be 32x32"),
    ((1, 3, 3, 32, 32), (1, 2, 3, 96, 96), r"\(episodes, classes, shots, 3, 32, 32\)"),
    ((1, 3, 1, 3, 32, 32), (2, 3, 96, 96), "a canvas must be 96x96"),
    ((2, 3, 1, 3, 32, 32), (1, 2, 3, 96, 96), "references of 2 episodes for canvases of 1"),
])
def test_inputs_of_the_wrong_shape_are_refused(references, canvases, message):
    with pytest.raises(ValueError, match=message):
        check_detection_inputs(torch.zeros(references, dtype=torch.uint8), torch.zeros(canvases, dtype=torch.uint8))


# --- the family on the command line ---

def test_template_matching_run_is_evaluated_on_the_validation_episodes(omniglot_dir, tmp_path, capsys):
    run = tmp_path / "template"
    assert main(["train", "--tasks", "cluttered-omniglot-detection", "--algorithm", "template-detector",
                 "--n-way", "2", "--k-shot", "1", "--num-query", "2", "--characters", "5", "--iterations", "0",
                 "--no-eval", "--no-progress", "--val-tasks", "3", "--threads", "1",
                 "--data-root", str(omniglot_dir), "--output-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--test-tasks", "3", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert set(rows) == {AP50.adapted_row, COCO_AP.adapted_row}
    cfg, learner = load_run(run, "best")
    episodes = build_tasks(cfg, "val").fixed_tasks(3, "val")
    assert episodes.references.shape[1:3] == (2, 1) and episodes.canvases.shape[1] == 2
    found = learner.find(episodes.references, episodes.canvases)
    for metric in (AP50, COCO_AP):
        assert rows[metric.adapted_row]["mean"] == pytest.approx(metric.per_task(found, episodes.targets).mean().item())


@pytest.mark.parametrize("algorithm, tasks, extra, message", [
    ("protonet", "cluttered-omniglot-detection", [], "use --algorithm"),
    ("template-detector", "omniglot", [], "use --tasks cluttered-omniglot-detection"),
    ("template-detector", "cluttered-omniglot-detection", ["--k-shot", "10"], "--k-shot 10"),
    ("template-detector", "cluttered-omniglot-detection", ["--k-shot", "1", "--characters", "2"], "--characters 2"),
])
def test_wrong_methods_and_sizes_are_one_line_and_exit_2(omniglot_dir, capsys, algorithm, tasks, extra, message):
    assert main(["train", "--tasks", tasks, "--algorithm", algorithm, "--iterations", "0", "--no-eval", *extra,
                 "--data-root", str(omniglot_dir), "--output-dir", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastadapt: error: ") and message in err


# --- the meta-learned detector ---

def test_the_centernet_loss_of_one_box_is_the_one_box_case_of_several(one_thread):
    torch.manual_seed(0)
    maps = torch.randn(4, 5, 24, 24, dtype=torch.float64)
    boxes = torch.tensor([[10.0, 12, 20, 30], [0, 0, 8, 8], [60, 70, 30, 20], [40, 40, 12, 16]], dtype=torch.float64)
    several = detection_loss(maps, boxes[:, None], torch.ones(4, 1, dtype=torch.bool))
    assert torch.allclose(detection_loss(maps, boxes), several)
    # an absent box is no object: the task with only absent boxes is all background, whatever they are
    padded = torch.stack([boxes, boxes.flip(0)], 1)
    present = torch.tensor([[True, False]] * 4)
    assert torch.allclose(detection_loss(maps, padded, present), detection_loss(maps, boxes))
    nothing = detection_loss(maps, padded, torch.zeros(4, 2, dtype=torch.bool))
    assert torch.allclose(nothing, detection_loss(maps, padded.roll(1, 0), torch.zeros(4, 2, dtype=torch.bool)))


def test_maps_marking_every_instance_decode_to_all_of_them_and_cost_less_than_maps_marking_one():
    boxes = torch.tensor([[[10.0, 12, 20, 30], [60, 50, 16, 24]]])
    maps = torch.full((1, 5, 24, 24), -12.0)
    centre = (boxes[0, :, :2] + boxes[0, :, 2:] / 2) / CELL
    for (x, y), c, b in zip(centre.floor().long().tolist(), centre, boxes[0]):
        maps[0, 0, y, x] = 12.0
        maps[0, 1:3, y, x] = b[2:] / CELL
        maps[0, 3:, y, x] = c - c.floor()
    found = peak_detections(torch.sigmoid(maps[:, None, 0]), cell_boxes(maps)[:, None])
    assert torch.allclose(found[0, :2, :4], boxes[0]) or torch.allclose(found[0, :2, :4], boxes[0].flip(0))
    one = maps.clone()
    one[0, 0, int(centre[1, 1]), int(centre[1, 0])] = -12.0  # the second instance unmarked
    present = torch.ones(1, 2, dtype=torch.bool)
    assert detection_loss(maps, boxes, present) < detection_loss(one, boxes, present)


def test_the_prototype_of_k_copies_of_a_reference_is_that_reference_and_the_order_of_shots_does_not_matter():
    torch.manual_seed(0)
    learner = PrototypeDetector(4).eval()
    references = torch.stack([glyph_reference(seed) for seed in range(6)]).view(1, 2, 3, 3, 32, 32)
    canvases = torch.randint(0, 2, (1, 2, 3, 96, 96), dtype=torch.uint8) * 200
    with torch.no_grad():
        copies = learner.adapt(references[:, :, :1].expand(-1, -1, 3, -1, -1, -1))
        one = learner.adapt(references[:, :, :1])
        assert all(torch.allclose(a, b, atol=1e-6)
                   for a, b in zip([*copies.pooled, copies.cells], [*one.pooled, one.cells]))
        found = learner.find(references, canvases)
        shuffled = learner.find(references[:, :, [2, 0, 1]], canvases)
    assert torch.allclose(found, shuffled, atol=1e-5)
    assert found.shape == (1, 2, 2 * PEAKS_PER_CLASS, 6)


def test_a_few_steps_on_one_batch_lower_the_detectors_loss(one_thread):
    batch = DetectionEpisodes(bar_glyphs(), 2, 2, canvases=2, characters=4).sample(2, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    for mask_loss in (False, True):
        losses, logged = train_steps(PrototypeDetector(4, mask_loss), batch)
        assert losses[-1] < 0.8 * losses[0] and ("mask_loss" in logged) == mask_loss


def bar_glyphs():
    """12 characters, each a bar of its own length (all 20 drawings alike)."""
    glyphs = torch.zeros(12, 20, 105, 105, dtype=torch.bool)
    for c in range(12):
        glyphs[c, :, 20:30 + 5 * c, 40:50] = True
    return glyphs


def train_steps(learner, batch, steps=8):
    """``steps`` Adam steps (3e-3) of ``learner`` on one batch: the losses, and the last step's logged figures."""
    optimiser = torch.optim.Adam(learner.parameters(), 3e-3)
    losses = []
    for _ in range(steps):
        loss, logged = learner.meta_loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses, logged


def test_a_prototype_detector_run_trains_validates_and_evaluates(omniglot_dir, tmp_path, capsys):
    run = tmp_path / "prototype"
    assert main(["train", "--tasks", "cluttered-omniglot-detection", "--algorithm", "prototype-detector",
                 "--n-way", "2", "--k-shot", "2", "--num-query", "2", "--characters", "4", "--iterations", "2",
                 "--meta-batch-size", "2", "--conv-channels", "4", "--val-every", "1", "--val-tasks", "2",
                 "--no-eval", "--no-progress", "--threads", "1", "--data-root", str(omniglot_dir),
                 "--output-dir", str(run)]) == 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logged if "val_ap50" in r] == [1, 2]
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--test-tasks", "2", "--json", "-"]) == 0
    assert set(json.loads(capsys.readouterr().out)["results"]) == {AP50.adapted_row, COCO_AP.adapted_row}


# --- the transfer baseline (TFA) ---

def test_base_training_lowers_the_transfer_detectors_loss_on_one_batch(one_thread):
    batch = DetectionEpisodes(bar_glyphs(), 2, 1, canvases=2, characters=4).sample(2, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    learner = TransferDetector(4, 12, finetune_steps=5, finetune_lr=0.01)
    losses, logged = train_steps(learner, batch)
    assert losses[-1] < 0.8 * losses[0] and {"box_loss", "class_loss"} <= set(logged)
    # only the episode's classes' rows of the base layer learn
    untouched = torch.ones(12, dtype=torch.bool)
    untouched[batch.characters.flatten()] = False
    assert (learner.class_bias[untouched] == PRIOR).all() and (learner.class_bias[~untouched] != PRIOR).all()


def test_the_fitted_last_layer_marks_each_reference_on_its_support_canvas_with_its_own_class(one_thread):
    torch.manual_seed(0)
    learner = TransferDetector(4, 12, finetune_steps=60, finetune_lr=0.05).eval()
    references = torch.stack([glyph_reference(seed) for seed in (3, 4)])[None, :, None]  # 2 classes, 1 shot
    with torch.no_grad():
        layer = learner.adapt(references)
        canvases, masks = support_canvases(references.flatten(0, 2))
        hidden, _ = learner.features(canvases)
    heat = torch.einsum("nc,schw->snhw", layer.weight[0], hidden) + layer.bias[0][None, :, None, None]
    for support in range(2):
        (x, y, w, h), = mask_box(masks[support:support + 1]).tolist()
        cell = (int((y + h / 2) // CELL), int((x + w / 2) // CELL))
        assert heat[support, support][cell] > heat[support, 1 - support][cell]
    untrained = TransferDetector(4, 12, finetune_steps=1, finetune_lr=1e-9).adapt(references)
    assert torch.allclose(untrained.bias, torch.full_like(untrained.bias, PRIOR), atol=1e-6)


def test_a_transfer_detector_run_trains_validates_and_evaluates(omniglot_dir, tmp_path, capsys):
    run = tmp_path / "transfer"
    assert main(["train", "--tasks", "cluttered-omniglot-detection", "--algorithm", "transfer-detector",
                 "--n-way", "2", "--k-shot", "1", "--num-query", "2", "--characters", "4", "--iterations", "2",
                 "--meta-batch-size", "2", "--conv-channels", "4", "--finetune-steps", "3", "--val-every", "1",
                 "--val-tasks", "2", "--no-eval", "--no-progress", "--threads", "1", "--data-root", str(omniglot_dir),
                 "--output-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--test-tasks", "2", "--json", "-"]) == 0
    assert set(json.loads(capsys.readouterr().out)["results"]) == {AP50.adapted_row, COCO_AP.adapted_row}
    _, learner = load_run(run, "best")
    assert learner.class_weight.shape[0] == 964  # a heatmap per background character


# --- the ANIL variant: the head's last layer adapted to each class ---

def _anil_detector(first_order=False, steps=2, inner_lr=0.05):
    torch.manual_seed(0)
    return PrototypeDetectorANIL(4, inner_lr=inner_lr, inner_steps=steps, first_order=first_order).double()


def test_the_anil_detectors_meta_gradient_is_the_mean_of_its_episodes_and_each_class_adapts_alone_in_float64(
        one_thread):
    batch = DetectionEpisodes(bar_glyphs(), 2, 2, canvases=2, characters=4).sample(3, torch.Generator().manual_seed(1))
    learner = _anil_detector()
    learner.meta_loss(batch)[0].backward()
    # (the mask decoder's finest levels are not used: no mask loss)
    together = {name: p.grad.clone() for name, p in learner.named_parameters() if p.grad is not None}
    assert "network.head.1.weight" in together and "network.encoder.levels.0.0.0.weight" in together
    learner.zero_grad()
    for episode in range(3):
        (learner.meta_loss(batch[episode:episode + 1])[0] / 3).backward()
    for name, p in learner.named_parameters():
        assert (p.grad is None) == (name not in together), name
        assert p.grad is None or torch.allclose(together[name], p.grad, rtol=1e-9, atol=1e-12), name
    first_order = _anil_detector(first_order=True)
    first_order.meta_loss(batch)[0].backward()  # the second-order terms are there, and not negligible
    assert max((together[n] - p.grad).abs().max() for n, p in first_order.named_parameters() if n in together) > 1e-6
    # the batched inner loop adapts each (episode, class) as if it were alone
    learner.eval()
    with torch.no_grad():
        weight, bias = learner.adapt(batch.references).head
        for episode in range(3):
            for cls in range(2):
                alone_weight, alone_bias = learner.adapt(batch.references[episode:episode + 1, cls:cls + 1]).head
                assert torch.allclose(weight[episode, cls], alone_weight[0, 0], rtol=1e-9, atol=1e-12)
                assert torch.allclose(bias[episode, cls], alone_bias[0, 0], rtol=1e-9, atol=1e-12)
    adapted = weight[0, 0] - learner.network.head[1].weight.flatten(1)
    assert adapted.abs().max() > 1e-6 and not torch.allclose(weight[0, 0], weight[0, 1])


def support_loss(learner, references, head):
    """The inner loss of one episode's classes (references (1, N, K, 3, 32, 32)) with the last layer ``head``."""
    shots = references.shape[2]
    support, masks = support_canvases(references.flatten(0, 2))
    prototypes = learner.adapt(references, steps=0)
    pairs = Reference([p.flatten(0, 1).repeat_interleave(shots, 0) for p in prototypes.pooled],
                      prototypes.cells.flatten(0, 1).repeat_interleave(shots, 0))
    x, _, similarity = learner.network.decode(pairs, support)
    maps = learner.network.head_maps(learner.network.head[0](x), similarity,
                                     tuple(t.flatten(0, 1).repeat_interleave(shots, 0) for t in head))
    return detection_loss(maps, mask_box(masks)).view(-1, shots).mean(1)


def test_adapting_the_anil_detector_fits_the_references_pasted_into_clutter(one_thread):
    learner = _anil_detector(inner_lr=0.01).float().eval()
    references = torch.stack([glyph_reference(seed) for seed in range(4)]).view(1, 2, 2, 3, 32, 32)
    with torch.no_grad():
        unadapted = learner.adapt(references, steps=0)
        adapted = learner.adapt(references, steps=5)
        assert (support_loss(learner, references, adapted.head) < support_loss(learner, references, unadapted.head)).all()
        # with no steps it is the prototype detector: the network's own last layer
        canvases = torch.randint(0, 2, (1, 2, 3, 96, 96), dtype=torch.uint8) * 200
        _, plain = learner.maps(PrototypeDetector.adapt(learner, references), canvases)
        assert torch.allclose(learner.maps(unadapted, canvases)[1], plain, atol=1e-6)
        assert not torch.allclose(learner.maps(adapted, canvases)[1], plain, atol=1e-3)


def test_an_anil_detector_run_trains_validates_and_evaluates(omniglot_dir, tmp_path, capsys):
    run = tmp_path / "anil"
    assert main(["train", "--tasks", "cluttered-omniglot-detection", "--algorithm", "prototype-detector-anil",
                 "--n-way", "2", "--k-shot", "2", "--num-query", "2", "--characters", "4", "--iterations", "2",
                 "--meta-batch-size", "2", "--conv-channels", "4", "--inner-steps", "1", "--eval-inner-steps", "2",
                 "--val-every", "1", "--val-tasks", "2", "--no-eval", "--no-progress", "--threads", "1",
                 "--data-root", str(omniglot_dir), "--output-dir", str(run)]) == 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logged if "val_ap50" in r] == [1, 2]
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "val", "--test-tasks", "2", "--json", "-"]) == 0
    assert set(json.loads(capsys.readouterr().out)["results"]) == {AP50.adapted_row, COCO_AP.adapted_row}
    _, learner = load_run(run, "best")
    assert isinstance(learner, PrototypeDetectorANIL) and learner.eval_inner_steps == 2


# --- Meta-Baseline: the prototype detector started from a transfer-detector run's network ---

def _detection_run(omniglot_dir, run, algorithm, *extra):
    """A 2-iteration detection run of ``algorithm`` (width 4 unless ``extra`` says otherwise); the exit code."""
    return main(["train", "--tasks", "cluttered-omniglot-detection", "--algorithm", algorithm, "--n-way", "2",
                 "--k-shot", "1", "--num-query", "2", "--characters", "4", "--iterations", "2", "--meta-batch-size",
                 "2", "--conv-channels", "4", "--finetune-steps", "2", "--inner-steps", "1", "--val-every", "1",
                 "--val-tasks", "2", "--no-eval", "--no-progress", "--threads", "1", *extra,
                 "--data-root", str(omniglot_dir), "--output-dir", str(run)])


@pytest.fixture(scope="module")
def transfer_run(omniglot_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "transfer"
    assert _detection_run(omniglot_dir, run, "transfer-detector") == 0
    return run


@pytest.mark.parametrize("algorithm", ["prototype-detector", "prototype-detector-anil"])
def test_a_detector_built_with_base_from_starts_from_that_runs_network_and_then_trains(
        omniglot_dir, transfer_run, tmp_path, capsys, algorithm):
    from fastadapt.config.schema import Config
    from fastadapt.runs.directory import build_learner

    _, transfer = load_run(transfer_run, "best")
    settings = dict(tasks="cluttered-omniglot-detection", algorithm=algorithm, n_way=2, k_shot=1, num_query=2,
                    characters=4, conv_channels=4, data_root=str(omniglot_dir))
    cfg = Config(**settings, base_from=str(transfer_run))
    tasks = build_tasks(cfg.resolved(), "train")
    started = build_learner(cfg, tasks).network.state_dict()
    fresh = build_learner(Config(**settings), tasks).network.state_dict()
    assert started.keys() == transfer.network.state_dict().keys()
    assert all(torch.equal(started[k], v) for k, v in transfer.network.state_dict().items())
    assert not all(torch.equal(fresh[k], v) for k, v in transfer.network.state_dict().items())
    # the command line: trained from there, saved and loaded again (the source run read once more to build it)
    run = tmp_path / "meta-baseline"
    assert _detection_run(omniglot_dir, run, algorithm, "--base-from", str(transfer_run)) == 0
    saved, learner = load_run(run, "best")
    assert saved.method.base_from == str(transfer_run) and type(learner).__name__.startswith("PrototypeDetector")
    trained = learner.network.state_dict()
    assert not all(torch.equal(trained[k], v) for k, v in transfer.network.state_dict().items())


def test_a_wrong_base_from_run_is_one_line_and_exit_2(omniglot_dir, transfer_run, tmp_path, capsys):
    template = tmp_path / "template"
    assert main(["train", "--tasks", "cluttered-omniglot-detection", "--algorithm", "template-detector",
                 "--n-way", "2", "--k-shot", "1", "--num-query", "2", "--characters", "4", "--iterations", "0",
                 "--no-eval", "--data-root", str(omniglot_dir), "--output-dir", str(template)]) == 0
    capsys.readouterr()
    for source, extra, message in [(tmp_path / "missing", [], "does not exist"),
                                   (template, [], "(TemplateDetector) is not a detector with"),
                                   (transfer_run, ["--conv-channels", "8"], "4 channels wide, this run's 8")]:
        assert _detection_run(omniglot_dir, tmp_path / "never", "prototype-detector", "--base-from", str(source),
                              *extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("fastadapt: error: ") and message in err, err
        assert not (tmp_path / "never" / "last.pt").exists()


def test_provenance_follows_base_from_as_it_follows_init_from(tmp_path):
    from fastadapt.config.provenance import evaluation_alphabets_seen
    from fastadapt.config.schema import Config

    Config(tasks="omniglot", dataset_split="vinyals").save(tmp_path / "config.yaml")
    child = Config(tasks="omniglot", dataset_split="background", base_from=str(tmp_path))
    assert "(base_from), and there this run's training classes (--dataset-split vinyals)" in \
        evaluation_alphabets_seen(child)
    assert evaluation_alphabets_seen(child.replace(base_from=None)) is None
    assert "(base_from), whose config.yaml is not there" in \
        evaluation_alphabets_seen(child.replace(base_from=str(tmp_path / "none")))
