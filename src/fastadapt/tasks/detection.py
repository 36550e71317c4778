"""K-shot detection in clutter as a task: find every instance of N characters, given K drawings of each.

Our extension of cluttered Omniglot (Michaelis et al. 2018 segment one target given one reference; their figures
are not comparable with these). An episode has N classes (characters of the split), each shown by K references
(32x32, drawn, re-rotated and re-sheared, coloured and centred as cluttered Omniglot's reference is) by K
drawers, and ``canvases`` query canvases (96x96, cluttered-Omniglot style) on which the instances are drawings
of the same characters by *other* drawers of the split. A canvas holds ``characters`` drawings: first the
distractors, characters outside the episode's classes, then 0 to ``MAX_TARGETS`` instances (uniformly many, so
that about a quarter of the canvases hold none; an episode without any instance gets some on its first canvas),
each of a class drawn uniformly, so a class may appear zero, one or
several times. Instances are drawn last (distractors never cover them; a later instance may cover part of an
earlier one) and their boxes are their whole drawings' boxes. The answer is the boxes with their classes
(``tasks.boxes``: scored by AP50 per episode, COCO's AP beside it) and, per class, its instances' visible pixels.

Training episodes come from the training split (background alphabets, drawers 1-10) drawn on the fly; the fixed
validation and test episodes from val-one-shot's and test-one-shot's characters (drawers 11-20), drawn by this
sampler from fixed seeds, in blocks of ``FIXED_BLOCK`` episodes so that more episodes extend fewer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastadapt.tasks.base import SPLIT_SEED_OFFSETS, TensorBatch
from fastadapt.tasks.boxes import Detections, GroundTruth
from fastadapt.tasks.cluttered_omniglot import CANVAS_SHAPE, ClutteredOmniglotTasks

#: The per-task loss name of detection tasks (``algorithms.metrics``): scored by AP50.
DETECTION_LOSS = "detection"
#: Instances per canvas are drawn uniformly from 0..MAX_TARGETS.
MAX_TARGETS = 3
#: Fixed episodes are drawn this many at a time, each block from a seed of its own.
FIXED_BLOCK = 64
#: Block b of a fixed set is drawn from the set's seed + b x this: 2**20 apart, so that no block of validation
#: (offset 1,000,003) meets one of test set 1 (offset 2,000,003).
BLOCK_SEED_STRIDE = 2**20


@dataclass
class DetectionBatch(TensorBatch):
    """Episodes: references (E, N, K, 3, 32, 32) uint8; canvases (E, Q, 3, 96, 96) uint8; boxes (E, Q, M, 4)
    int64 as (left, top, width, height) and classes (E, Q, M) int64 in 0..N-1 of each canvas's instances, padded
    with class -1 (M = MAX_TARGETS); masks (E, Q, N, 96, 96) bool, the visible pixels of each class's instances;
    characters (E, N) int64, which character of the split each class is (what a base-class detector learns)."""

    references: torch.Tensor
    canvases: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor
    masks: torch.Tensor
    characters: torch.Tensor

    # each episode is a task (its first dimension E)

    @property
    def targets(self) -> torch.Tensor:
        """The instances as one tensor (E, Q, M, 5): box and class (-1: padding), what the AP metrics read."""
        return torch.cat([self.boxes.double(), self.classes.double()[..., None]], -1)


def ground_truth(targets: torch.Tensor) -> list[list[GroundTruth]]:
    """``DetectionBatch.targets`` (E, Q, M, 5) as each episode's list of its canvases' ``GroundTruth``."""
    return [[GroundTruth(canvas[canvas[:, 4] >= 0, :4], canvas[canvas[:, 4] >= 0, 4].long()) for canvas in episode]
            for episode in targets]


def found_boxes(outputs: torch.Tensor) -> list[list[Detections]]:
    """Padded detections (E, Q, D, 6) as box, score, class (-1: padding) as each episode's list of its canvases'
    ``Detections``."""
    return [[Detections(canvas[real, :4], canvas[real, 4], canvas[real, 5].long())
             for canvas in episode for real in [canvas[:, 5] >= 0]] for episode in outputs]


class DetectionEpisodes:
    """N-way K-shot detection episodes (see the module's docstring) from ``glyphs`` (characters, drawings, 105,
    105) bool, drawings ``drawers[0]`` to ``drawers[1] - 1`` of each character."""

    loss = DETECTION_LOSS
    input_shape = CANVAS_SHAPE

    def __init__(self, glyphs: torch.Tensor, n_way: int, k_shot: int, canvases: int, characters: int,
                 drawers: tuple[int, int] = (0, 10)) -> None:
        self.drawings = ClutteredOmniglotTasks(glyphs, characters, drawers)
        if not 1 <= k_shot < self.drawings.num_drawers:
            raise ValueError(f"--k-shot {k_shot}: the references and the instances need drawers of their own, and "
                             f"each character has {self.drawings.num_drawers}; choose 1 to "
                             f"{self.drawings.num_drawers - 1}")
        if not 1 <= n_way < self.drawings.num_characters:
            raise ValueError(f"--n-way {n_way}: the distractors need characters of their own, and the split has "
                             f"{self.drawings.num_characters}; choose 1 to {self.drawings.num_characters - 1}")
        if characters < MAX_TARGETS:
            raise ValueError(f"--characters {characters}: a detection canvas holds up to {MAX_TARGETS} instances, "
                             f"so at least {MAX_TARGETS} drawings")
        if canvases < 1:
            raise ValueError(f"canvases per episode must be at least 1, got {canvases}")
        self.n_way, self.k_shot, self.num_canvases, self.characters = n_way, k_shot, canvases, characters
        self.output_size = self.drawings.num_characters  # the classes a detector trained on the split could name

    def sample(self, episodes: int, generator: torch.Generator) -> DetectionBatch:
        """``episodes`` episodes from ``generator`` alone."""
        n, k, q, slots = self.n_way, self.k_shot, self.num_canvases, self.characters
        characters, drawers = self.drawings.num_characters, self.drawings.num_drawers
        classes = torch.rand(episodes, characters, generator=generator).argsort(1)[:, :n]  # (E, N)
        people = torch.rand(episodes, n, drawers, generator=generator).argsort(2)  # first k: the references'
        count = torch.randint(MAX_TARGETS + 1, (episodes, q), generator=generator)
        # an episode drawn without any instance gets some on its first canvas: its AP is then defined
        some = torch.randint(1, MAX_TARGETS + 1, (episodes,), generator=generator)
        count[:, 0] = torch.where(count.sum(1) == 0, some, count[:, 0])
        label = torch.randint(n, (episodes, q, MAX_TARGETS), generator=generator)
        person = people[:, :, k:].gather(2, torch.randint(drawers - k, (episodes, n, q * MAX_TARGETS),
                                                          generator=generator))
        # Instance j of a canvas takes slot slots - MAX_TARGETS + j; the first MAX_TARGETS - count are distractors.
        instance = (torch.arange(MAX_TARGETS) >= MAX_TARGETS - count[..., None])  # (E, Q, M)
        chosen_person = person.view(episodes, n, q, MAX_TARGETS).permute(0, 2, 3, 1).gather(3, label[..., None])[..., 0]
        instance_glyph = classes[:, None, None, :].expand(-1, q, MAX_TARGETS, -1).gather(
            3, label[..., None])[..., 0] * drawers + chosen_person
        others = torch.ones(episodes, characters).scatter_(1, classes, 0)
        distractor = (torch.multinomial(others, q * slots, replacement=True, generator=generator) * drawers
                      + torch.randint(drawers, (episodes, q * slots), generator=generator)).view(episodes, q, slots)
        glyph = distractor.clone()
        instance_slots = slice(slots - MAX_TARGETS, None)
        glyph[:, :, instance_slots] = torch.where(instance, instance_glyph, distractor[:, :, instance_slots])
        canvases, winner, boxes, _ = self.drawings.canvases(glyph.view(episodes * q, slots), generator,
                                                            torch.zeros(episodes * q, slots, dtype=torch.bool))
        reference_glyph = classes[:, :, None] * drawers + people[:, :, :k]
        references = self.drawings.references(reference_glyph.flatten(), generator)
        tail = boxes.view(episodes, q, slots, 4)[:, :, slots - MAX_TARGETS:]
        box = torch.where(instance[..., None], tail, 0)
        label = torch.where(instance, label, -1)
        shown = winner.view(episodes, q, 1, *winner.shape[1:]) - (slots - MAX_TARGETS)  # instance slot or < 0
        slot_class = torch.cat([label, torch.full((episodes, q, 1), -1)], 2)  # index M: not an instance
        pixel_class = slot_class.gather(2, torch.where(shown >= 0, shown, MAX_TARGETS).flatten(2)).view_as(shown)
        masks = pixel_class == torch.arange(n).view(1, 1, n, 1, 1)
        return DetectionBatch(references.view(episodes, n, k, *references.shape[1:]),
                              canvases.view(episodes, q, *canvases.shape[1:]), box, label, masks, classes)

    def fixed_tasks(self, num_tasks: int, split: str = "test", seed: int = 0) -> DetectionBatch:
        """The same ``num_tasks`` episodes every call for a (split, seed); more episodes extend fewer."""
        if num_tasks < 1:
            raise ValueError(f"asked for {num_tasks} episodes; at least 1")
        blocks = []
        for block in range(-(-num_tasks // FIXED_BLOCK)):
            generator = torch.Generator().manual_seed(SPLIT_SEED_OFFSETS[split] + seed + block * BLOCK_SEED_STRIDE)
            blocks.append(self.sample(FIXED_BLOCK, generator))
        return DetectionBatch.cat(blocks)[:num_tasks]
