"""FewShotDetector and `fastadapt detect`: several boxes per image from a segmentation run, on images of any
size, from example crops or from boxes on the image; `--boxes` parsing (fuzzed); the bad inputs, one line each."""
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from fastadapt import FewShotDetector
from fastadapt.algorithms.segmentation import peaks
from fastadapt.algorithms.segmentation_baselines import TemplateMatching
from fastadapt.algorithms.siamese_unet import SiameseUNet
from fastadapt.cli import main
from fastadapt.datasets.cluttered_omniglot import generate_job, load_glyphs
from fastadapt.detector import REFERENCE_INK, cut_tiles, foreground, parse_boxes
from fastadapt.tasks.boxes import box_iou


@pytest.fixture(scope="module")
def tm_run(omniglot_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("detector") / "tm"
    assert main(["train", "--tasks", "cluttered-omniglot", "--algorithm", "template-matching", "--iterations", "0",
                 "--data-root", str(omniglot_dir), "--output-dir", str(run), "--no-eval", "--no-progress",
                 "--threads", "1"]) == 0
    return run


@pytest.fixture(scope="module")
def job(omniglot_dir):
    """The first 8 official val-one-shot canvases at 4 characters, with their references and targets."""
    return generate_job(load_glyphs("val-one-shot", omniglot_dir), 4, "val-one-shot", 0, length=8)


def _glyph(job, i):
    """Reference i's character alone, cut to its ink (h, w, 3) on black."""
    reference = job.references[i]
    rows, cols = np.flatnonzero(reference.any((1, 2))), np.flatnonzero(reference.any((0, 2)))
    return reference[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _scene(job, placements, size=(150, 220)):
    """A black image with glyphs pasted at (glyph index, left, top); returns it and the true boxes."""
    scene = np.zeros((*size, 3), np.uint8)
    boxes = []
    for i, left, top in placements:
        glyph = _glyph(job, i)
        scene[top:top + glyph.shape[0], left:left + glyph.shape[1]] |= glyph
        boxes.append((left, top, glyph.shape[1], glyph.shape[0]))
    return scene, torch.tensor(boxes, dtype=torch.float64)


def _matches(found, truth, cls=None):
    """For each true box, the best IoU of a found box (of class ``cls`` when given)."""
    keep = [i for i, c in enumerate(found.classes) if cls is None or c == cls]
    if not keep:
        return torch.zeros(len(truth))
    return box_iou(truth, torch.from_numpy(found.boxes[keep])).amax(1)


def test_peaks_are_the_highest_local_maxima_highest_first():
    maps = torch.zeros(1, 6, 6)
    maps[0, 1, 1], maps[0, 1, 2], maps[0, 4, 4], maps[0, 0, 5] = 3.0, 2.0, 5.0, 1.0  # (1, 2) is no maximum
    values, index = peaks(maps, 5)
    assert values[0, :3].tolist() == [5.0, 3.0, 1.0] and index[0, :3].tolist() == [28, 7, 5]
    assert values[0, 3:].tolist() == [0.0, 0.0]  # the flat zeros are their own maxima
    assert peaks(torch.zeros(1, 2, 2), 6)[0][0, 4:].tolist() == [-math.inf, -math.inf]


def test_template_matchings_best_peak_is_its_single_best_match(job):
    learner = TemplateMatching()
    references, canvases = torch.from_numpy(job.references).permute(0, 3, 1, 2), torch.from_numpy(
        job.canvases).permute(0, 3, 1, 2)
    single = learner.detect(references, canvases)
    found = learner.find(learner.prepare(references), canvases, 4, 0.5)
    assert found.boxes.shape == (8, 8, 4, 4) and found.masks.shape == (8, 8, 96, 96)
    diagonal = torch.arange(8)
    # the scores carry best_match's bonus for the template's size (at most 1e-4)
    assert torch.allclose(found.scores[diagonal, diagonal, 0], single.scores.to(found.scores.dtype), atol=1e-4)
    # equal scores at two shifts (a plateau) may be taken in another order: the same box up to a pixel
    best = found.boxes[diagonal, diagonal, 0]
    assert (best - single.boxes).abs().max() <= 1 and (best == single.boxes).all(1).sum() >= 6
    assert (found.scores[..., :-1] >= found.scores[..., 1:]).all()


def test_the_siamese_unets_peaks_decode_as_its_single_box(job, one_thread):
    torch.manual_seed(0)
    learner = SiameseUNet(4).eval()
    references, canvases = torch.from_numpy(job.references).permute(0, 3, 1, 2), torch.from_numpy(
        job.canvases).permute(0, 3, 1, 2)
    with torch.no_grad():
        single = learner.detect(references[:3], canvases[:3])
        found = learner.find(learner.prepare(references[:3]), canvases[:3], 5, 0.0)
    diagonal = torch.arange(3)
    assert torch.allclose(found.boxes[diagonal, diagonal, 0], single.boxes, atol=1e-5)
    assert torch.allclose(found.scores[diagonal, diagonal, 0], single.scores, atol=1e-6)


def test_two_copies_of_an_example_are_found_across_tiles_and_a_distractor_is_not(tm_run, job):
    scene, truth = _scene(job, [(0, 10, 10), (0, 170, 100), (1, 100, 40)])
    detector = FewShotDetector.from_run(tm_run).fit([job.references[0]], ["a"])
    found = detector.detect([scene])[0]
    assert found.scale == 1.0 and found.mask.shape == scene.shape[:2]
    assert (_matches(found, truth[:2]) > 0.9).all()
    assert found.scores[:2].min() > 0.99  # the untransformed copies match exactly
    assert _matches(found, truth[2:]) < 0.5 or found.scores[found.boxes[:, 0].round() == 100].max() < 0.99
    inside = np.zeros_like(found.mask)
    for left, top, w, h in found.boxes.round().astype(int):
        inside[top:top + h, left:left + w] = True
    assert found.mask.any() and not (found.mask & ~inside).any()


def test_two_classes_each_found_where_it_is(tm_run, job):
    scene, truth = _scene(job, [(0, 10, 10), (1, 120, 80)])
    detector = FewShotDetector.from_run(tm_run).fit([job.references[0], job.references[1]], ["first", "second"])
    found = detector.detect([scene])[0]
    assert detector.classes_ == ["first", "second"]
    assert _matches(found, truth[:1], "first") > 0.9 and _matches(found, truth[1:], "second") > 0.9


def test_a_k_shot_detection_run_finds_each_class_too_with_unequal_examples(omniglot_dir, tmp_path, job):
    run = tmp_path / "template-detector"
    assert main(["train", "--tasks", "cluttered-omniglot-detection", "--algorithm", "template-detector",
                 "--k-shot", "1", "--iterations", "0", "--data-root", str(omniglot_dir), "--output-dir", str(run),
                 "--no-eval", "--no-progress", "--threads", "1"]) == 0
    scene, truth = _scene(job, [(0, 10, 10), (1, 120, 80), (0, 160, 20)])
    detector = FewShotDetector.from_run(run).fit([job.references[0], job.references[0], job.references[1]],
                                                 ["first", "first", "second"])  # 2 examples and 1: repeated
    found = detector.detect([scene])[0]
    assert (_matches(found, truth[[0, 2]], "first") > 0.9).all() and _matches(found, truth[1:2], "second") > 0.9
    assert found.mask.shape == scene.shape[:2] and not found.mask.any()  # a detection run segments nothing


def test_boxes_on_a_photograph_like_image_find_the_other_copies_at_its_own_scale(tm_run, job):
    """Dark strokes on light paper, 4x the benchmark's size: the example box sets the scale."""
    scene, truth = _scene(job, [(0, 10, 10), (0, 150, 90), (2, 80, 30)])
    paper = 250 - np.kron(scene.max(-1) > 0, np.ones((4, 4))).astype(np.uint8)[..., None].repeat(3, -1) * 200
    truth = truth * 4
    detector = FewShotDetector.from_run(tm_run).fit_boxes(paper, [truth[0].tolist()])
    found = detector.detect([paper])[0]
    assert found.scale == pytest.approx(REFERENCE_INK / truth[0, 2:].max().item())
    assert (_matches(found, truth[:2]) > 0.7).all() and set(found.classes) == {"object"}


def test_foreground_draws_paper_on_black_and_leaves_black_images_alone():
    black = np.zeros((20, 20, 3), np.uint8)
    black[5:9, 5:9] = (10, 0, 3)
    assert foreground(black) is black
    paper = np.full((20, 20, 3), 240, np.uint8)
    paper[5:9, 5:9] = 30
    drawn = foreground(paper)
    assert (drawn[5:9, 5:9] == 210).all() and drawn.sum() == 16 * 3 * 210


def test_tiles_cover_the_image_and_overlap_enough_for_a_whole_object():
    image = np.random.default_rng(0).integers(0, 255, (150, 300, 3), dtype=np.uint8)
    tiles, origins = cut_tiles(image)
    covered = np.zeros(image.shape[:2], int)
    for tile, (y, x) in zip(tiles, origins.tolist()):
        assert (tile.permute(1, 2, 0).numpy() == image[y:y + 96, x:x + 96]).all()
        covered[y:y + 96, x:x + 96] += 1
    assert covered.min() >= 1
    small, origin = cut_tiles(image[:50, :60])
    assert small.shape == (1, 3, 96, 96) and origin.tolist() == [[0, 0]] and small[:, :, 50:].sum() == 0


@pytest.mark.parametrize("call, message", [
    (lambda d, j: d.fit([np.zeros((32, 32, 3), np.uint8)]), "shows no object"),
    (lambda d, j: d.fit([]), "no example images"),
    (lambda d, j: d.fit_boxes(j.canvases[0], [(10, 10, 0.2, 5)]), "degenerate"),
    (lambda d, j: d.fit_boxes(j.canvases[0], [(90, 10, 10, 5)]), "lies outside the image"),
    (lambda d, j: d.fit_boxes(j.canvases[0], [(-1, 10, 10, 5)]), "lies outside the image"),
    (lambda d, j: d.fit([j.references[0]]).detect([np.zeros((5, 40, 3), np.uint8)]), "at least 8"),
    (lambda d, j: d.fit([j.references[0]]).detect([b"\x89PNG\r\n\x1a\n not really"]), "cannot decode"),
    (lambda d, j: d.detect([j.canvases[0]]), "call fit"),
])
def test_bad_inputs_are_value_errors_saying_what(tm_run, job, call, message):
    with pytest.raises(ValueError, match=message):
        call(FewShotDetector.from_run(tm_run), job)


# --- --boxes files ---
_number = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda v: round(v, 3))
_label = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="_-."), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(st.tuples(_number, _number, _number, _number), min_size=1, max_size=6),
       labels=st.none() | st.lists(_label, min_size=6, max_size=6),
       separators=st.lists(st.sampled_from([" ", "\t", ",", ", ", " ,  "]), min_size=4, max_size=4),
       comment=st.booleans())
def test_a_boxes_file_reads_back_what_was_written(boxes, labels, separators, comment):
    lines = ["# boxes, one a line"] if comment else []
    for i, box in enumerate(boxes):
        fields = [repr(v) for v in box] + ([labels[i]] if labels else [])
        line = "".join(f + s for f, s in zip(fields, separators + [""]))
        lines += [line + ("  # note" if comment else ""), ""]
    parsed, parsed_labels = parse_boxes("\n".join(lines))
    assert parsed == [tuple(float(v) for v in box) for box in boxes]
    assert parsed_labels == (labels[:len(boxes)] if labels else None)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_either_parses_to_boxes_or_is_a_value_error(text):
    try:
        boxes, labels = parse_boxes(text)
    except ValueError as error:
        assert "\n" not in str(error)
        return
    assert boxes and all(len(b) == 4 and all(math.isfinite(v) for v in b) for b in boxes)
    assert labels is None or len(labels) == len(boxes)


@pytest.mark.parametrize("text, message", [
    ("1 2 3", "line 1: expected LEFT TOP WIDTH HEIGHT"),
    ("\n1 2 3 x", "line 2: LEFT TOP WIDTH HEIGHT must be numbers"),
    ("1 2 3 inf", "must be finite"),
    ("1 2 3 4 a\n1 2 3 4", "box 2 names no class"),
    ("# nothing\n", "holds no boxes"),
])
def test_malformed_boxes_files_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_boxes(text)


# --- the command line ---
def test_detect_prints_boxes_classes_and_scores_draws_and_writes_json(tm_run, job, tmp_path, capsys):
    scene, truth = _scene(job, [(0, 10, 10), (0, 150, 90), (3, 80, 30)])
    Image.fromarray(scene).save(tmp_path / "scene.png")
    (tmp_path / "support" / "zero").mkdir(parents=True)
    Image.fromarray(job.references[0]).save(tmp_path / "support" / "zero" / "a.png")
    assert main(["detect", str(tm_run), "--support", str(tmp_path / "support"), "--image", str(tmp_path / "scene.png"),
                 "--draw", str(tmp_path / "found.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["image", "class", "score", "left", "top", "width", "height"]
    rows = [line.split() for line in out[1:-1]]
    assert [r[1] for r in rows[:2]] == ["zero", "zero"] and min(float(r[2]) for r in rows[:2]) > 0.99
    found = torch.tensor([[float(v) for v in r[3:]] for r in rows[:2]], dtype=torch.float64)
    assert (box_iou(truth[:2], found).amax(1) > 0.9).all()
    assert out[-1].startswith(f"{tmp_path / 'scene.png'}: {len(rows)} found")
    assert Image.open(tmp_path / "found.png").size == (220, 150)

    (tmp_path / "boxes.txt").write_text("# left top width height class\n" + " ".join(map(str, truth[0].tolist()))
                                        + " zero\n")
    assert main(["detect", str(tm_run), "--boxes", str(tmp_path / "boxes.txt"), "--image", str(tmp_path / "scene.png"),
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    detections = payload["images"][0]["detections"]
    assert payload["method"] == "template-matching" and {d["class"] for d in detections} == {"zero"}
    found = torch.tensor([d["box"] for d in detections], dtype=torch.float64)
    assert (box_iou(truth[:2], found).amax(1) > 0.8).all()
    # without a run: template matching, nothing trained, the same boxes
    assert main(["detect", "--boxes", str(tmp_path / "boxes.txt"), "--image", str(tmp_path / "scene.png"),
                 "--json"]) == 0
    no_run = json.loads(capsys.readouterr().out)
    assert no_run["run_dir"] is None and no_run["method"] == "template-matching"
    assert no_run["images"] == payload["images"]


@pytest.mark.parametrize("problem, message", [
    ("empty class", "holds no images"),
    ("blank example", "shows no object"),
    ("box outside", "lies outside the image"),
    ("degenerate box", "is degenerate"),
    ("boxes on two images", "--boxes marks examples on one image"),
    ("tiny image", "needs at least 8 on each side"),
    ("corrupt image", "cannot read image"),
    ("missing image", "does not exist"),
    ("not a detector", "finds no objects"),
])
def test_bad_input_is_one_line_and_exit_2(tm_run, job, tmp_path, capsys, problem, message):
    scene = tmp_path / "scene.png"
    Image.fromarray(job.canvases[0]).save(scene)
    support = tmp_path / "support" / "a"
    support.mkdir(parents=True)
    if problem != "empty class":
        Image.fromarray(job.references[0] * (problem != "blank example")).save(support / "a.png")
    boxes = tmp_path / "boxes.txt"
    boxes.write_text({"box outside": "90 10 10 10", "degenerate box": "10 10 0 10"}.get(problem, "10 10 20 20"))
    examples = ["--boxes", str(boxes)] if "box" in problem else ["--support", str(support.parent)]
    images = [str(scene)] * (2 if problem == "boxes on two images" else 1)
    if problem == "tiny image":
        Image.fromarray(job.canvases[0][:6]).save(scene)
    elif problem == "corrupt image":
        scene.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif problem == "missing image":
        images = [str(tmp_path / "nowhere.png")]
    run = tm_run
    if problem == "not a detector":
        run = tmp_path / "sinusoid"
        assert main(["train", "--tasks", "sinusoid", "--algorithm", "maml", "--iterations", "0", "--no-eval",
                     "--no-progress", "--output-dir", str(run)]) == 0
        capsys.readouterr()
    assert main(["detect", str(run), *examples, "--image", *images]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastadapt: error: ") and message in err, err


def test_detect_on_a_tiny_siamese_unet_run_prints_what_the_python_api_finds(omniglot_dir, job, tmp_path, capsys):
    run = tmp_path / "unet"
    assert main(["train", "--tasks", "cluttered-omniglot", "--algorithm", "siamese-unet", "--conv-channels", "4",
                 "--meta-batch-size", "2", "--iterations", "2", "--val-every", "2", "--val-tasks", "2",
                 "--data-root", str(omniglot_dir), "--output-dir", str(run), "--no-eval", "--no-progress",
                 "--threads", "1"]) == 0
    scene, _ = _scene(job, [(0, 10, 10), (2, 150, 60)], size=(140, 260))
    Image.fromarray(scene).save(tmp_path / "scene.png")
    (tmp_path / "support" / "x").mkdir(parents=True)
    Image.fromarray(job.references[0]).save(tmp_path / "support" / "x" / "ref.png")
    capsys.readouterr()
    assert main(["detect", str(run), "--support", str(tmp_path / "support"), "--image", str(tmp_path / "scene.png"),
                 "--json", "--min-score", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)["images"][0]
    with torch.no_grad():
        found = FewShotDetector.from_run(run, min_score=0.0).fit([job.references[0]], ["x"]).detect([scene])[0]
    assert len(printed["detections"]) == len(found) > 0 and printed["mask_pixels"] == int(found.mask.sum())
    assert np.allclose([d["box"] for d in printed["detections"]], found.boxes, atol=1e-4)
    assert [d["score"] for d in printed["detections"]] == pytest.approx(found.scores.tolist(), abs=1e-6)
