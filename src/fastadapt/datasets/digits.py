"""The UCI handwritten digits (Alpaydin and Kaynak, 1998) that scikit-learn ships inside its wheel.

1,797 images of the digits 0-9 (about 180 each), 8x8 pixels with 17 grey levels (0..16, ink high): a
second domain of handwriting that needs no download, for cross-domain evaluation of a model trained
on Omniglot. The images are scaled to 0..255 and resized to the size asked for with a Lanczos filter;
they come as light strokes on a dark background, as fastadapt stores Omniglot.

scikit-learn is an optional dependency (``pip install "fastadapt[digits]"``).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fastadapt.datasets.base import ClassDataset

#: The dataset's own grey levels: 0 (paper) to 16 (ink).
DIGITS_MAX_LEVEL = 16


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The raw (1797, 8, 8) float images in 0..16 and their (1797,) labels, from scikit-learn."""
    try:
        from sklearn.datasets import load_digits  # optional dependency: only this domain needs it
    except ImportError:
        raise ImportError('the digits domain reads sklearn.datasets.load_digits: pip install "fastadapt[digits]" '
                          "(or scikit-learn)") from None
    digits = load_digits()
    return digits.images, digits.target


def load_digits_dataset(image_size: int | tuple[int, int] = 28, channels: int = 1) -> ClassDataset:
    """The 10 digit classes ("0".."9") as uint8 images (N, channels, H, W), light strokes on a dark background."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    images, labels = digits_images()
    scaled = np.rint(images * (255 / DIGITS_MAX_LEVEL)).astype(np.uint8)
    resized = np.stack([np.asarray(Image.fromarray(image).resize((width, height), Image.LANCZOS))
                        for image in scaled])
    tensor = torch.from_numpy(resized).unsqueeze(1).expand(-1, channels, -1, -1).contiguous()
    return ClassDataset(tensor, torch.from_numpy(labels.astype(np.int64)), [str(d) for d in range(10)])
