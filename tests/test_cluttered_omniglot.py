"""The cluttered-Omniglot generator: one official job regenerated bit for bit (the published MD5), the rules
that keep it in step with the original's random stream, and the batched torch sampler's distribution."""
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp

from fastadapt.datasets import cluttered_omniglot as co
from fastadapt.tasks.cluttered_omniglot import ClutteredOmniglotTasks, localisation_hits, mask_centre, mask_iou


@pytest.fixture(scope="module")
def val_one_shot_glyphs(omniglot_dir):
    return co.load_glyphs("val-one-shot", omniglot_dir)


@pytest.fixture(scope="module")
def official_job(val_one_shot_glyphs):
    """The last job of val-one-shot at 4 characters: 2,000 canvases, about a second."""
    return co.generate_job(val_one_shot_glyphs, 4, "val-one-shot", len(co.job_seeds("val-one-shot")) - 1)


def test_the_last_val_one_shot_job_at_4_characters_matches_the_published_md5(official_job):
    assert co.canvas_md5(official_job.canvases[-1]) == co.PUBLISHED_MD5[4]["val-one-shot"]
    assert co.canvas_md5(official_job.canvases[-2]) != co.PUBLISHED_MD5[4]["val-one-shot"]


def test_the_one_shot_splits_use_ten_evaluation_alphabets_each(val_one_shot_glyphs, omniglot_dir):
    test_glyphs = co.load_glyphs("test-one-shot", omniglot_dir)
    assert len(val_one_shot_glyphs) + len(test_glyphs) == 659  # the whole evaluation set, no character twice
    assert all(len(drawings) == 20 and drawings[0].size == (105, 105) and drawings[0].mode == "1"
               for drawings in val_one_shot_glyphs + test_glyphs)


def test_the_mask_is_the_target_which_is_drawn_last_in_one_colour_inside_its_box(official_job):
    canvases, masks, references, boxes = official_job
    visible = masks.any(axis=(1, 2))
    # The crop stops before the last inked row and column, so a thin target can crop to ink-free pixels: 1 in 2,000.
    assert visible.sum() == len(masks) - 1
    for canvas, mask, reference, (left, top, width, height) in zip(*(a[visible] for a in official_job)):
        ys, xs = np.nonzero(mask)
        assert left <= xs.min() <= xs.max() < left + width and top <= ys.min() <= ys.max() < top + height
        assert len(np.unique(canvas[mask.astype(bool)], axis=0)) == 1  # never occluded
        assert reference.any()
    assert set(np.unique(masks)) == {0, 1}


def test_job_seeds_are_sorted_distinct_and_one_per_job():
    for split, spec in co.SPLITS.items():
        seeds = co.job_seeds(split)
        assert len(seeds) == spec.size // co.JOB_LENGTH
        assert np.all(np.diff(seeds) > 0) and seeds.max() < 2**32


def _consumed(rng, reference_seed):
    """How many doubles ``rng`` is ahead of a fresh RandomState(reference_seed)."""
    fresh = np.random.RandomState(reference_seed)
    state = rng.get_state()[1:3]
    for n in range(64):
        if np.array_equal(fresh.get_state()[1], state[0]) and fresh.get_state()[2] == state[1]:
            return n
        fresh.random_sample()
    raise AssertionError("no match within 64 draws")


def _ink(*inked):
    """A 9x7 transformed drawing inked at the given (row slice, column slice) blocks."""
    ink = np.zeros((9, 7), bool)
    for block in inked:
        ink[block] = True
    return ink


@pytest.mark.parametrize("ink, drawn, colour_draws", [
    (_ink(), None, 0),  # no ink: fails before the colour
    (_ink(np.s_[4, 1:6]), None, 3),  # one inked row: crops to nothing, after the colour
    (_ink(np.s_[1:7, 3]), None, 3),  # one inked column, likewise
    (_ink(np.s_[2:5, 2:4], np.s_[6, 5]), (4, 3), 3),  # the crop drops the last inked row and column
])
def test_a_draw_fails_after_its_colour_only_when_the_crop_is_empty(monkeypatch, ink, drawn, colour_draws):
    monkeypatch.setattr(co, "_transform", lambda rng, glyph, scale: ink)
    rng = np.random.RandomState(7)
    result = co._draw(rng, Image.new("1", (105, 105)))
    assert _consumed(rng, 7) == colour_draws
    if drawn is None:
        assert result is None
    else:
        assert result[0].shape == drawn and result[0][:3, :2].all() and not result[0][3].any()
        assert np.array_equal(result[1], (255 * np.random.RandomState(7).random_sample(3)).astype(np.uint8))


def test_an_unknown_split_or_job_is_a_value_error(val_one_shot_glyphs):
    with pytest.raises(ValueError, match="unknown cluttered Omniglot split"):
        co.job_seeds("val")
    with pytest.raises(ValueError, match="jobs 0 to 4"):
        co.generate_job(val_one_shot_glyphs, 4, "val-one-shot", 5)


# The batched torch sampler: the official distribution, checked against the exact generator.

@pytest.fixture(scope="module")
def exact_canvases(val_one_shot_glyphs):
    return co.generate_canvases(val_one_shot_glyphs, 4, (10, 20), seed=1, length=2000)


def _statistics(canvases, masks, references, boxes):
    """Per-canvas figures to compare: (N, 96, 96, 3) canvases, (N, 96, 96) masks, (N, 32, 32, 3) references,
    (N, 4) boxes, all numpy."""
    masks = masks.astype(bool)
    colour = np.array([c[m][0] if m.any() else (0, 0, 0) for c, m in zip(canvases, masks)])
    return {"left": boxes[:, 0], "top": boxes[:, 1], "width": boxes[:, 2], "height": boxes[:, 3],
            "mask area": masks.sum((1, 2)), "red": colour[:, 0], "green": colour[:, 1], "blue": colour[:, 2],
            "inked canvas": (canvases.max(3) > 0).sum((1, 2)), "inked reference": (references.max(3) > 0).sum((1, 2))}


@pytest.fixture(scope="module")
def val_one_shot_tensor(val_one_shot_glyphs):
    return co.glyph_tensor(val_one_shot_glyphs)


def _sampled(glyphs, characters, count, seed):
    batch = ClutteredOmniglotTasks(glyphs, characters, (10, 20)).sample(
        count, torch.Generator().manual_seed(seed))
    return batch, _statistics(batch.canvases.permute(0, 2, 3, 1).numpy(), batch.masks.numpy(),
                              batch.references.permute(0, 2, 3, 1).numpy(), batch.boxes.numpy())


def test_the_torch_sampler_draws_from_the_official_distribution(val_one_shot_tensor, exact_canvases, one_thread):
    exact = _statistics(*exact_canvases[:2], exact_canvases.references, exact_canvases.boxes)
    _, sampled = _sampled(val_one_shot_tensor, 4, 2000, seed=1)
    for name in exact:  # 2,000 canvases each, fixed seeds: a two-sample Kolmogorov-Smirnov test per figure
        assert ks_2samp(exact[name], sampled[name]).pvalue > 1e-3, name
    # ... and the test has the power to see a different distribution: 5 characters instead of 4.
    _, denser = _sampled(val_one_shot_tensor, 5, 2000, seed=1)
    assert ks_2samp(exact["inked canvas"], denser["inked canvas"]).pvalue < 1e-6


def test_sampled_targets_are_drawn_last_inside_their_boxes_and_seeds_repeat(val_one_shot_tensor, one_thread):
    batch, _ = _sampled(val_one_shot_tensor, 16, 200, seed=3)
    again, _ = _sampled(val_one_shot_tensor, 16, 200, seed=3)
    other, _ = _sampled(val_one_shot_tensor, 16, 200, seed=4)
    assert all(torch.equal(getattr(batch, f), getattr(again, f)) for f in ("canvases", "references", "masks", "boxes"))
    assert not torch.equal(batch.canvases, other.canvases)
    assert batch.canvases.shape == (200, 3, 96, 96) and batch.references.shape == (200, 3, 32, 32)
    for canvas, mask, (left, top, width, height) in zip(batch.canvases, batch.masks, batch.boxes):
        if mask.any():
            ys, xs = mask.nonzero().unbind(1)
            assert left <= xs.min() <= xs.max() < left + width and top <= ys.min() <= ys.max() < top + height
            assert len(canvas[:, mask].T.unique(dim=0)) == 1  # one colour: never occluded
        assert 0 <= left <= 96 - width and 0 <= top <= 96 - height
    assert batch.references.amax((1, 2, 3)).gt(0).float().mean() > 0.99


def test_the_sampler_refuses_glyphs_of_the_wrong_kind():
    with pytest.raises(ValueError, match="bool tensor"):
        ClutteredOmniglotTasks(torch.zeros(3, 20, 28, 28, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="drawers"):
        ClutteredOmniglotTasks(torch.ones(3, 20, 105, 105, dtype=torch.bool), 4, drawers=(10, 21))
    with pytest.raises(ValueError, match="ink"):
        ClutteredOmniglotTasks(torch.zeros(3, 20, 105, 105, dtype=torch.bool), 4)


# The paper's metrics on hand-made cases.

def _masks(*boxes, size=12):
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for mask, box in zip(masks, boxes):
        if box is not None:
            mask[box] = True
    return masks


def test_mask_iou_counts_pixels_thresholds_probabilities_and_scores_empty_against_empty_as_one():
    truth = _masks(np.s_[0:2, 0:2], np.s_[0:2, 0:2], None, None, np.s_[5:7, 5:7])
    guess = _masks(np.s_[0:2, 0:4], np.s_[0:2, 0:2], None, np.s_[0, 0], None)
    assert mask_iou(guess, truth).tolist() == [0.5, 1.0, 1.0, 0.0, 0.0]
    probabilities = torch.full((1, 12, 12), 0.29)
    probabilities[0, 0:2, 0:2] = 0.31
    assert mask_iou(probabilities, truth[:1]).tolist() == [1.0]
    assert mask_iou(probabilities, truth[:1], threshold=0.5).tolist() == [0.0]


def test_localisation_scores_centres_of_mass_rounded_down_within_five_pixels():
    truth = _masks(np.s_[0:2, 0:2], np.s_[0:2, 0:2], np.s_[0:2, 0:2], None, None, np.s_[0:1, 0:2], size=20)
    guess = _masks(np.s_[3:5, 3:5],  # centre (3, 3) against (0, 0): 4.24 pixels, a hit
                   np.s_[4:6, 0:2],  # (0, 4): 4 pixels, a hit
                   np.s_[5:7, 0:2],  # (0, 5): 5 pixels, not less than 5, a miss
                   None,  # empty against empty: (-1, -1) both, a hit
                   np.s_[0:2, 0:2],  # a guess where there is no target: (0, 0) against (-1, -1), 1.41: a hit
                   np.s_[6:7, 4:6],  # (4.5 -> 4, 6) against (0.5 -> 0, 0): 7.2 pixels, a miss
                   size=20)
    assert localisation_hits(guess, truth).tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert mask_centre(_masks(np.s_[1:3, 2:5], size=8)).tolist() == [[3.0, 1.0]]  # (3, 1.5) rounded down
