"""A drawing made by hand on a screen, redrawn as Omniglot's drawings look.

A model trained on Omniglot has only seen its drawings: 105x105 black-on-white images whose strokes are
about 5.7 pixels wide and whose ink spans about 68 pixels, roughly centred. A symbol drawn on a web page
has any pen width, any size, anywhere on its canvas. ``as_omniglot_drawing`` keeps only its shape: it
thins the ink to a one-pixel skeleton, scales and centres the skeleton to Omniglot's typical span and
centre, and draws it again with Omniglot's stroke width, at 105x105 in black and white. The result is an
image like Omniglot's files, which the run's own preparation (resize, inversion) then turns into network
input exactly as it turned the training files.

``trace_strokes`` follows a drawing's skeleton as pen strokes (polylines) and ``render_strokes`` draws
strokes as a web page's canvas does: with them real Omniglot characters are drawn again as a person
would draw them on the page (tests, the latency benchmark, the README's screenshot).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

#: Omniglot's drawings are this many pixels square.
OMNIGLOT_SIZE = 105
#: Medians over Omniglot's background drawings (every 10th of the 19,280; ``omniglot_statistics`` measures
#: them): stroke width (ink area / skeleton length, in pixels at 105x105), the longer side of the ink's box,
#: and the box's centre (row, column).
STROKE_WIDTH = 5.71
INK_SPAN = 68.0
INK_CENTRE = (50.5, 51.0)
#: The pen that redraws a skeleton. Redrawn from canvas drawings of every 100th background drawing, they
#: measure a median stroke width of 5.88 pixels and 7.77% ink (the originals: 5.70 and 8.09%); a 4.8 pen
#: gives 5.55 and 7.39%, a 5.1 pen 6.47 and 8.55% (whole pixels: the redrawn strokes are thresholded).
PEN_WIDTH = 5.0
#: Pixels darker than this (of 255) are ink in a dark-on-light drawing.
INK_THRESHOLD = 128
#: Drawings are thinned with the longer side of their ink's box at this many pixels, more than the span they
#: are drawn at, so that neighbouring skeleton pixels land less than a pixel apart (strokes without gaps).
THIN_SIZE = 64
#: Strokes are drawn this many times larger and averaged down: smooth edges, and a stroke width true to
#: half a pixel once thresholded.
SUPERSAMPLE = 2

# the 8 neighbours P2..P9 of a pixel (row, column offsets), clockwise from the one above, as Guo & Hall number them
_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def _removable(first: bool) -> np.ndarray:
    """For each of the 256 neighbourhoods (bit i set when neighbour P(i+2) is ink), whether Guo & Hall's first
    (or second) sub-iteration removes the centre pixel."""
    table = np.zeros(256, dtype=bool)
    for code in range(256):
        p2, p3, p4, p5, p6, p7, p8, p9 = (bool(code >> i & 1) for i in range(8))
        crossings = ((not p2 and (p3 or p4)) + (not p4 and (p5 or p6)) + (not p6 and (p7 or p8))
                     + (not p8 and (p9 or p2)))
        n1 = (p9 or p2) + (p3 or p4) + (p5 or p6) + (p7 or p8)
        n2 = (p2 or p3) + (p4 or p5) + (p6 or p7) + (p8 or p9)
        side = ((p6 or p7 or not p9) and p8) if first else ((p2 or p3 or not p5) and p4)
        table[code] = crossings == 1 and 2 <= min(n1, n2) <= 3 and not side
    return table


_REMOVABLE = (_removable(True), _removable(False))


def thin(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide skeleton of a boolean image (Guo & Hall 1989, the whole image at a time; unlike
    Zhang & Suen's it keeps lines two pixels thick along a diagonal instead of deleting them)."""
    skeleton = np.pad(np.asarray(mask, dtype=bool), 1)
    height, width = skeleton.shape
    centre = skeleton[1:-1, 1:-1]  # a view: removing pixels from it thins ``skeleton``
    bits = skeleton.view(np.uint8)  # the same memory as 0 / 1
    neighbours = [bits[1 + dy:height - 1 + dy, 1 + dx:width - 1 + dx] for dy, dx in _NEIGHBOURS]
    changed = True
    while changed:
        changed = False
        for removable in _REMOVABLE:
            code = neighbours[0].copy()
            for bit in range(1, 8):
                code |= neighbours[bit] << bit
            remove = centre & np.take(removable, code)  # take: twice as fast as removable[code]
            if remove.any():
                centre &= ~remove
                changed = True
    return centre.copy()


def on_white(image: Image.Image) -> Image.Image:
    """An image with transparency composited on white (a drawing on a transparent canvas is ink on paper)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image).convert("RGB")
    return image


def ink_mask(image: Image.Image) -> np.ndarray:
    """Boolean ink of a dark-on-light image (on white where it is transparent)."""
    return np.asarray(on_white(image).convert("L")) < INK_THRESHOLD


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a boolean drawing: ink area over skeleton length (0 for an empty one)."""
    length = thin(mask).sum()
    return float(mask.sum() / length) if length else 0.0


def as_omniglot_drawing(image: Image.Image) -> Image.Image:
    """A dark-on-light drawing (any size, pen width and placement) redrawn as Omniglot's drawings are: its
    skeleton scaled to ``INK_SPAN``, centred at ``INK_CENTRE`` and stroked ``PEN_WIDTH`` wide, as a
    105x105 black-on-white greyscale image holding only 0 and 255 (like Omniglot's 1-bit files)."""
    mask = ink_mask(image)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        raise ValueError("the drawing is empty (no pixel darker than mid-grey)")
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = THIN_SIZE / max(mask.shape)
    shape = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
    resized = np.asarray(Image.fromarray(mask.view(np.uint8) * 255).resize(shape, Image.BILINEAR))
    mask = resized >= 128 if (resized >= 128).any() else resized > 0  # hairlines: every touched pixel
    points = np.argwhere(thin(mask)) + 0.5  # (row, column) centres: pixel i spans [i, i + 1)
    low, high = points.min(0), points.max(0)
    scale = (INK_SPAN - PEN_WIDTH) / max(float((high - low).max()), 1.0)
    placed = ((points - (low + high) / 2) * scale + np.array(INK_CENTRE) + 0.5) * SUPERSAMPLE
    size = OMNIGLOT_SIZE * SUPERSAMPLE
    skeleton = np.zeros((size, size), dtype=bool)
    inside = np.clip(placed.astype(np.int64), 0, size - 1)
    skeleton[inside[:, 0], inside[:, 1]] = True
    ink = _dilate(skeleton, PEN_WIDTH * SUPERSAMPLE / 2).view(np.uint8)
    # a pixel is ink where at least half of its SUPERSAMPLE x SUPERSAMPLE sub-pixels are
    coverage = sum(ink[i::SUPERSAMPLE, j::SUPERSAMPLE] for i in range(SUPERSAMPLE) for j in range(SUPERSAMPLE))
    return Image.fromarray(np.where(2 * coverage >= SUPERSAMPLE ** 2, 0, 255).astype(np.uint8))


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Every pixel whose centre lies within ``radius`` of an ink pixel's centre: the disc is a stack of
    horizontal runs, so the mask widened by each run's half-length, shifted by each run's row, covers it."""
    reach = int(np.floor(radius))
    widened = [np.pad(mask, reach)]  # widened[h]: the padded mask widened by h pixels left and right
    for h in range(1, reach + 1):
        previous = widened[-1]
        wider = previous.copy()
        wider[:, 1:] |= previous[:, :-1]
        wider[:, :-1] |= previous[:, 1:]
        widened.append(wider)
    height, width = mask.shape
    result = np.zeros_like(mask)
    for dy in range(-reach, reach + 1):
        half = int(np.floor(np.sqrt(radius * radius - dy * dy)))
        result |= widened[half][reach + dy:reach + dy + height, reach:reach + width]
    return result


def _adjacent_pairs(points: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs (i, j) of neighbouring pixels among integer points (x, y), each pair once: side by side,
    or diagonal where no pixel beside both makes the corner (so a staircase is one path, not triangles)."""
    index = {(x, y): i for i, (x, y) in enumerate(points.tolist())}
    pairs = []
    for (x, y), i in index.items():
        pairs += [(i, index[q]) for q in ((x + 1, y), (x, y + 1)) if q in index]
        pairs += [(i, index[(x + dx, y + 1)]) for dx in (1, -1)
                  if (x + dx, y + 1) in index and (x + dx, y) not in index and (x, y + 1) not in index]
    return pairs


def trace_strokes(mask: np.ndarray, tolerance: float = 0.0) -> list[np.ndarray]:
    """Pen strokes along the skeleton of a boolean drawing: polylines of (x, y) pixel coordinates that
    together pass along every skeleton edge, from its ends first; ``tolerance`` > 0 drops points within
    that many pixels of the straight line between their neighbours (Ramer-Douglas-Peucker)."""
    points = np.argwhere(thin(mask))[:, ::-1]
    pairs = _adjacent_pairs(points)
    links: dict[int, list[int]] = {i: [] for i in range(len(points))}
    for i, j in pairs:
        links[i].append(j)
        links[j].append(i)
    unused = {frozenset(pair) for pair in pairs}
    # ends first, then junctions, then the rest (closed loops): strokes start where a pen would
    starts = sorted(links, key=lambda i: (len(links[i]) != 1, len(links[i]) < 3))
    strokes = [[i] for i in starts if not links[i]]  # isolated pixels: dots
    for start in starts:
        while any(frozenset((start, j)) in unused for j in links[start]):
            path = [start]
            while True:
                here = path[-1]
                nexts = [j for j in links[here] if frozenset((here, j)) in unused]
                if not nexts:
                    break
                if len(path) > 1:  # keep going the same way where the skeleton branches
                    heading = points[here] - points[path[-2]]
                    nexts.sort(key=lambda j: -float(np.dot(points[j] - points[here], heading)))
                unused.discard(frozenset((here, nexts[0])))
                path.append(nexts[0])
            strokes.append(path)
    return [_simplify(points[path].astype(np.float64), tolerance) for path in strokes]


def _simplify(line: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance <= 0 or len(line) < 3:
        return line
    start, end = line[0], line[-1]
    direction = end - start
    length = np.hypot(*direction)
    offsets = line[1:-1] - start
    if length == 0:
        distances = np.hypot(offsets[:, 0], offsets[:, 1])
    else:
        distances = np.abs(direction[0] * offsets[:, 1] - direction[1] * offsets[:, 0]) / length
    farthest = int(np.argmax(distances)) + 1
    if distances[farthest - 1] <= tolerance:
        return np.stack([start, end])
    return np.concatenate([_simplify(line[:farthest + 1], tolerance)[:-1], _simplify(line[farthest:], tolerance)])


def render_strokes(strokes: Sequence[np.ndarray], size: int, width: float) -> Image.Image:
    """Strokes (polylines of (x, y) canvas coordinates, pixel i spanning [i, i + 1)) drawn black on a white
    ``size`` x ``size`` canvas with a round pen ``width`` pixels wide, as a web page's canvas draws them
    (anti-aliased: drawn ``SUPERSAMPLE`` times larger and averaged down)."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 255)
    draw = ImageDraw.Draw(big)
    radius = width * SUPERSAMPLE / 2
    for stroke in strokes:
        scaled = [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in np.asarray(stroke, dtype=np.float64).tolist()]
        for x, y in (scaled[0], scaled[-1]):  # round caps; joints are rounded by the line itself
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=0)
        if len(scaled) > 1:
            draw.line(scaled, fill=0, width=max(1, round(2 * radius)), joint="curve")
    return big.resize((size, size), Image.BOX)


def omniglot_statistics(drawings: Sequence[Image.Image]) -> dict[str, float]:
    """Medians over Omniglot drawings of their stroke width, their ink's longer span and the centre (row,
    column) of its box: where ``STROKE_WIDTH``, ``INK_SPAN`` and ``INK_CENTRE`` come from."""
    widths, spans, centres = [], [], []
    for drawing in drawings:
        mask = ink_mask(drawing)
        rows, cols = np.nonzero(mask)
        widths.append(stroke_width(mask))
        spans.append(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
        centres.append(((rows.max() + rows.min()) / 2, (cols.max() + cols.min()) / 2))
    row, col = np.median(np.array(centres), axis=0)
    return {"stroke_width": float(np.median(widths)), "ink_span": float(np.median(spans)),
            "centre_row": float(row), "centre_col": float(col)}
