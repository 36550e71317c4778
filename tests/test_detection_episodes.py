"""K-shot detection episodes (tasks/detection.py): who is drawn where, boxes and masks, fixed sets."""
import pytest
import torch

from fastadapt.tasks.boxes import average_precision
from fastadapt.tasks.detection import MAX_TARGETS, DetectionEpisodes, found_boxes, ground_truth

DRAWERS = 10


@pytest.fixture(scope="module")
def glyphs():
    """30 characters x 20 drawings, each a random solid rectangle of ink (solid: every crop keeps some)."""
    corners = torch.randint(10, 95, (30, 20, 2, 2), generator=torch.Generator().manual_seed(0)).sort(2).values
    index = torch.arange(105)
    rows = (index >= corners[:, :, 0, 0, None]) & (index <= corners[:, :, 1, 0, None] + 3)
    cols = (index >= corners[:, :, 0, 1, None]) & (index <= corners[:, :, 1, 1, None] + 3)
    return rows[..., :, None] & cols[..., None, :]


def recorded(episodes):
    """The episodes' sampler, recording the glyphs it draws on canvases and as references."""
    seen = {}
    canvases, references = episodes.drawings.canvases, episodes.drawings.references

    def on_canvases(glyph, generator, renew):
        seen["canvases"] = glyph.clone()
        return canvases(glyph, generator, renew)

    def as_references(glyph, generator):
        seen["references"] = glyph.clone()
        return references(glyph, generator)

    episodes.drawings.canvases, episodes.drawings.references = on_canvases, as_references
    return seen


@pytest.mark.parametrize("n_way, k_shot", [(3, 1), (2, 5)])
def test_instances_are_the_classes_drawn_by_other_drawers_and_distractors_are_not(glyphs, n_way, k_shot):
    episodes = DetectionEpisodes(glyphs, n_way, k_shot, canvases=4, characters=6, drawers=(10, 20))
    seen = recorded(episodes)
    batch = episodes.sample(40, torch.Generator().manual_seed(1))
    references = seen["references"].view(40, n_way, k_shot)
    canvases = seen["canvases"].view(40, 4, 6)
    character, drawer = references // DRAWERS, references % DRAWERS
    assert (character == character[:, :, :1]).all()  # K drawings of one character per class...
    assert all(len(set(row.tolist())) == k_shot for row in drawer.flatten(0, 1))  # ...by K drawers
    classes = character[:, :, 0]
    assert all(len(set(row.tolist())) == n_way for row in classes) and torch.equal(batch.characters, classes)
    for e in range(40):
        for q in range(4):
            for slot in range(6):
                label = batch.classes[e, q, slot - (6 - MAX_TARGETS)] if slot >= 6 - MAX_TARGETS else -1
                who, what = canvases[e, q, slot] % DRAWERS, canvases[e, q, slot] // DRAWERS
                if label >= 0:
                    assert what == classes[e, label] and who not in drawer[e, label].tolist()
                else:
                    assert what not in classes[e].tolist()
    counts = (batch.classes >= 0).sum(2).flatten()
    assert set(counts.tolist()) == set(range(MAX_TARGETS + 1))
    assert (batch.classes[..., :-1] >= 0).le(batch.classes[..., 1:] >= 0).all()  # instances take the last slots


def test_boxes_hold_their_instances_visible_pixels(glyphs):
    batch = DetectionEpisodes(glyphs, 3, 2, canvases=5, characters=8).sample(30, torch.Generator().manual_seed(2))
    shape = batch.canvases.shape
    assert batch.references.shape == (30, 3, 2, 3, 32, 32) and shape == (30, 5, 3, 96, 96)
    ys, xs = torch.arange(96)[:, None], torch.arange(96)[None, :]
    ink = batch.canvases.amax(2) > 0
    visible = []
    for e in range(30):
        for q in range(5):
            inside = torch.zeros(3, 96, 96, dtype=torch.bool)
            for (x, y, w, h), label in zip(batch.boxes[e, q].tolist(), batch.classes[e, q].tolist()):
                if label < 0:
                    assert (x, y, w, h) == (0, 0, 0, 0)
                    continue
                assert w > 0 and h > 0 and x + w <= 96 and y + h <= 96
                inside[label] |= (xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)
            masks = batch.masks[e, q]
            assert not (masks & ~inside).any() and not (masks & ~ink[e, q]).any()
            assert (masks.sum(0) <= 1).all()
            # the last instance is drawn over everything: its pixels are one drawing's, in one colour (where it is
            # its class's only instance on the canvas)
            last = batch.classes[e, q, -1]
            if last >= 0 and (batch.classes[e, q] == last).sum() == 1:
                visible.append(masks[last].any())
                colours = batch.canvases[e, q][:, masks[last]].T.unique(dim=0)
                assert len(colours) == int(bool(masks[last].any()))
    # a drawing whose crop holds no ink (a thin diagonal stroke) has an empty mask, as in the official data: rare
    assert sum(visible) >= 0.9 * len(visible) and len(visible) > 50


def test_fixed_episodes_repeat_extend_and_differ_by_split(glyphs):
    episodes = DetectionEpisodes(glyphs, 3, 1, canvases=2, characters=4)
    first = episodes.fixed_tasks(70, "val")
    again = episodes.fixed_tasks(5, "val")
    assert torch.equal(first.canvases[:5], again.canvases) and torch.equal(first.boxes[:5], again.boxes)
    assert torch.equal(first.references, episodes.fixed_tasks(70, "val").references)
    assert not torch.equal(first.canvases[:5], episodes.fixed_tasks(5, "test").canvases)
    assert not torch.equal(first.canvases[:5], first.canvases[64:69])  # blocks from seeds of their own
    # the truth scores AP 1, detections padded out score nothing
    targets = first.targets[:3]
    perfect = torch.cat([targets[..., :4], torch.ones_like(targets[..., :1]), targets[..., 4:]], -1)
    for found, truth in zip(found_boxes(perfect), ground_truth(targets)):
        if any(len(t.classes) for t in truth):
            assert average_precision(found, truth) == pytest.approx(1)


@pytest.mark.parametrize("settings, message", [
    (dict(n_way=3, k_shot=10), "--k-shot 10"),
    (dict(n_way=30, k_shot=1), "--n-way 30"),
    (dict(n_way=3, k_shot=1, characters=2), "--characters 2"),
    (dict(n_way=3, k_shot=1, canvases=0), "canvases per episode"),
])
def test_sizes_the_split_cannot_serve_are_refused(glyphs, settings, message):
    with pytest.raises(ValueError, match=message):
        DetectionEpisodes(glyphs, **{"canvases": 2, "characters": 4, **settings})
