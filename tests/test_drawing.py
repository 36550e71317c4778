"""A drawing from the web page becomes what an Omniglot model was trained on: thinning, redrawing, and the
statistics and accuracy of drawn copies of real test characters against the real images."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastadapt.datasets import drawing
from fastadapt.datasets.drawing import (INK_CENTRE, INK_SPAN, STROKE_WIDTH, as_omniglot_drawing, ink_mask,
                                        omniglot_statistics, render_strokes, stroke_width, thin, trace_strokes)
from fastadapt.datasets.preparation import image_polarity
from fastadapt.training.threads import using_threads
from fastadapt.serve.page import CANVAS, PAGE_PEN, HeldOutCharacters, canvas_drawing


def _guo_hall_by_the_book(mask: np.ndarray) -> np.ndarray:
    """Guo & Hall (1989), pixel by pixel as the paper states it: the reference for ``thin``."""
    image = np.pad(mask.astype(np.uint8), 1)
    changed = True
    while changed:
        changed = False
        for step in range(2):
            removed = []
            for y in range(1, image.shape[0] - 1):
                for x in range(1, image.shape[1] - 1):
                    if not image[y, x]:
                        continue
                    p2, p3, p4, p5 = image[y - 1, x], image[y - 1, x + 1], image[y, x + 1], image[y + 1, x + 1]
                    p6, p7, p8, p9 = image[y + 1, x], image[y + 1, x - 1], image[y, x - 1], image[y - 1, x - 1]
                    c = ((not p2 and (p3 or p4)) + (not p4 and (p5 or p6)) + (not p6 and (p7 or p8))
                         + (not p8 and (p9 or p2)))
                    n = min((p9 | p2) + (p3 | p4) + (p5 | p6) + (p7 | p8),
                            (p2 | p3) + (p4 | p5) + (p6 | p7) + (p8 | p9))
                    m = ((p6 | p7 | (1 - p9)) & p8) if step == 0 else ((p2 | p3 | (1 - p5)) & p4)
                    if c == 1 and 2 <= n <= 3 and m == 0:
                        removed.append((y, x))
            for y, x in removed:
                image[y, x] = 0
            changed |= bool(removed)
    return image[1:-1, 1:-1].astype(bool)


def test_thinning_matches_guo_hall_pixel_by_pixel():
    rng = np.random.default_rng(0)
    shapes = [np.zeros((30, 40), dtype=bool) for _ in range(3)]
    shapes[0][5:25, 8:14] = True  # a thick bar
    shapes[1][3:27, 3:37] = rng.random((24, 34)) > 0.4  # noise blobs
    yy, xx = np.mgrid[:30, :40]
    shapes[2] = np.abs(np.hypot(yy - 15, xx - 20) - 10) < 2.5  # a thick ring
    for shape in shapes:
        np.testing.assert_array_equal(thin(shape), _guo_hall_by_the_book(shape))
    assert thin(shapes[2]).sum() < shapes[2].sum() / 3  # it did thin


def test_both_diagonals_of_a_cross_survive_thinning():
    """Zhang & Suen's thinning deletes a line two pixels thick along one diagonal: a drawn X lost a stroke."""
    cross = render_strokes([np.array([[50.0, 50], [160, 160]]), np.array([[160.0, 50], [50, 160]])], 210, 9)
    for size in (80, 105, 210):
        skeleton = thin(ink_mask(cross.resize((size, size), Image.BILINEAR)))
        rows, cols = np.nonzero(skeleton)
        on_diagonal = np.abs(rows - cols) <= 2
        on_antidiagonal = np.abs(rows + cols - (size - 1)) <= 2
        assert on_diagonal.sum() > 0.3 * size and on_antidiagonal.sum() > 0.3 * size, size


def test_dilation_covers_exactly_the_pixels_within_the_radius():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 50)) > 0.98
    yy, xx = np.mgrid[:40, :50]
    for radius in (0.5, 2.5, 5.0, 5.35):
        expected = np.zeros_like(mask)
        for y, x in zip(*np.nonzero(mask)):
            expected |= (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2
        np.testing.assert_array_equal(drawing._dilate(mask, radius), expected)


def test_traced_strokes_follow_the_whole_skeleton():
    yy, xx = np.mgrid[:60, :60]
    shape = (np.abs(np.hypot(yy - 30, xx - 30) - 18) < 3) | ((np.abs(yy - 30) < 3) & (xx > 5) & (xx < 55))
    skeleton = thin(shape)
    strokes = trace_strokes(shape)
    points = np.concatenate(strokes).astype(int)
    assert skeleton[points[:, 1], points[:, 0]].all()  # every point on the skeleton
    assert {tuple(p) for p in np.argwhere(skeleton)[:, ::-1]} == {tuple(p) for p in points}  # and all of it
    for stroke in strokes:  # pen moves of at most one pixel (8-neighbours)
        assert np.abs(np.diff(stroke, axis=0)).max(initial=0) <= 1
    assert len(strokes) <= 8


def test_any_pen_width_size_and_place_gives_nearly_the_same_network_input():
    from fastadapt.serve.model import OMNIGLOT_PREPARATION

    strokes = [np.array([[40.0, 40], [160, 40], [100, 170]]), np.array([[70.0, 110], [130, 110]])]
    reference = as_omniglot_drawing(render_strokes(strokes, 210, 9))
    assert set(np.unique(np.asarray(reference))) == {0, 255}
    variants = [as_omniglot_drawing(render_strokes([s * scale + shift for s in strokes], size, pen))
                for pen, scale, shift, size in ((3, 1.0, 0, 210), (25, 1.0, 0, 210), (9, 0.4, 0, 210),
                                                (9, 0.5, 90, 210), (15, 2.0, -60, 420))]
    inputs = OMNIGLOT_PREPARATION.prepare([reference, *variants])
    differences = (inputs[1:] - inputs[0]).abs().mean((1, 2, 3))
    assert differences.max() < 0.03, differences  # of 1; the strokes cover about 0.1 of the 28x28 input


def test_an_empty_drawing_is_refused():
    with pytest.raises(ValueError, match="empty"):
        as_omniglot_drawing(Image.new("L", (50, 50), 255))


def test_the_constants_are_omniglot_background_medians(omniglot_dir):
    """STROKE_WIDTH, INK_SPAN and INK_CENTRE, measured again on every 40th background drawing."""
    import io
    import zipfile

    with zipfile.ZipFile(omniglot_dir / "images_background.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))[::40]
        images = [Image.open(io.BytesIO(archive.read(n))).convert("L") for n in names]
    measured = omniglot_statistics(images)
    assert measured["stroke_width"] == pytest.approx(STROKE_WIDTH, abs=0.15)
    assert measured["ink_span"] == pytest.approx(INK_SPAN, abs=2)
    assert measured["centre_row"] == pytest.approx(INK_CENTRE[0], abs=1.5)
    assert measured["centre_col"] == pytest.approx(INK_CENTRE[1], abs=1.5)


def _box(image: np.ndarray) -> tuple[float, float, float]:
    """Longer side of the box of the pixels over 0.5 in a 28x28 input, and its centre (row, column)."""
    rows, cols = np.nonzero(image > 0.5)
    return (max(rows.max() - rows.min(), cols.max() - cols.min()) + 1, (rows.max() + rows.min()) / 2,
            (cols.max() + cols.min()) / 2)


def test_drawn_test_characters_look_like_the_training_images_to_the_network(omniglot_dir):
    """Real test characters drawn on the page (skeleton traced, page pen), through the server's preparation:
    their 28x28 inputs have the polarity and ink of the real test images, and the size and place of the
    training (background) images."""
    import io
    import zipfile

    from fastadapt.serve.model import serve_pixels

    characters = HeldOutCharacters(omniglot_dir)
    served = serve_pixels()  # Omniglot's preparation; the model plays no part here
    names = characters.names[::20]
    real_images = [characters.image(name, 0) for name in names]
    real = served.prepare(real_images, [False] * len(names))[:, 0].numpy()
    drawn = served.prepare([canvas_drawing(image) for image in real_images], [True] * len(names))[:, 0].numpy()
    assert image_polarity(torch_uint8(drawn)) == image_polarity(torch_uint8(real)) == ["light-on-dark"] * len(names)
    ink_real, ink_drawn = real.sum((1, 2)), drawn.sum((1, 2))  # stroke mass the network sees
    assert np.median(ink_drawn / ink_real) == pytest.approx(1.0, abs=0.15)
    with zipfile.ZipFile(omniglot_dir / "images_background.zip") as archive:
        files = sorted(n for n in archive.namelist() if n.endswith(".png"))[::200]
        training = served.prepare([Image.open(io.BytesIO(archive.read(f))) for f in files], [False] * len(files))
    boxes_training = np.median([_box(image) for image in training[:, 0].numpy()], 0)
    boxes_drawn = np.median([_box(image) for image in drawn], 0)
    assert np.abs(boxes_drawn - boxes_training).max() <= 1.5, (boxes_drawn, boxes_training)
    widths_real = [stroke_width(ink_mask(image)) for image in real_images]
    widths_drawn = [stroke_width(ink_mask(as_omniglot_drawing(canvas_drawing(image)))) for image in real_images]
    assert np.median(widths_drawn) == pytest.approx(np.median(widths_real), rel=0.1)
    # drawn with a thin or a fat pen, the network's input changes far less than between two drawings of a character
    second = served.prepare([characters.image(name, 1) for name in names[:8]], [False] * 8)[:, 0].numpy()
    between_drawings = np.abs(second - real[:8]).mean()
    for pen in (PAGE_PEN / 3, PAGE_PEN * 2.5):
        other = served.prepare([canvas_drawing(image, pen) for image in real_images[:8]], [True] * 8)[:, 0].numpy()
        assert np.abs(other - drawn[:8]).mean() < between_drawings / 3, pen
    assert CANVAS > 105  # the page's canvas is finer than Omniglot's drawings


def torch_uint8(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.rint(images * 255).astype(np.uint8))[:, None]


def test_a_trained_model_classifies_drawn_copies_as_well_as_the_real_images(omniglot_dir, quick_protonet_run):
    """5-way 1-shot episodes of test characters: drawn copies (supports and queries drawn on the page)
    against the original images, through the same served model."""
    from fastadapt.serve.model import serve_run

    characters = HeldOutCharacters(omniglot_dir)
    served = serve_run(quick_protonet_run)
    rng = np.random.default_rng(0)
    correct = {"real": 0, "drawn": 0}
    episodes, labels = 30, list("abcde")
    with using_threads(1):  # as the server runs: one thread per request (more spin on a busy machine)
        for _ in range(episodes):
            episode = characters.episode(rng, 5)
            support = [characters.image(name, s) for name, s, _ in episode]
            queries = [characters.image(name, q) for name, _, q in episode]
            for kind, drawn in (("real", False), ("drawn", True)):
                if drawn:
                    support, queries = [canvas_drawing(i) for i in support], [canvas_drawing(i) for i in queries]
                result, _ = served.classify(support, labels, queries, [drawn] * 5, [drawn] * 5)
                correct[kind] += sum(p == t for p, t in zip(result.predictions, labels))
    accuracy = {kind: hits / (5 * episodes) for kind, hits in correct.items()}
    print(f"5-way 1-shot accuracy on {5 * episodes} queries: {accuracy}")
    assert accuracy["real"] >= 0.7, accuracy  # the quick model learned something
    assert accuracy["drawn"] >= accuracy["real"] - 0.08, accuracy
