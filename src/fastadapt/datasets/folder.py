"""Any folder of class sub-folders of images as a ClassDataset: bring your own few-shot data.

    root/<class name>/<image files>

Every call decodes every image (there is no cache), which is meant for the
small datasets people bring; pixel values are kept as they are (no inversion).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastadapt.datasets.base import ClassDataset

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


#: How many unreadable files an error names before it counts the rest.
NAMED_UNREADABLE = 3


def load_image_folder(
    path: str | os.PathLike, image_size: int | tuple[int, int] | None = None, channels: int | None = None,
    skip_unreadable: bool = False,
) -> ClassDataset:
    """One class per sub-folder of ``path`` (sorted by name), one image per file with a known suffix.

    ``image_size``: an int (square) or (height, width) to resize every image to
    (Lanczos filter); None keeps the files' size, which must then be the same
    for all. ``channels``: 1 (grayscale) or 3 (RGB) to convert to; None gives 1
    if every image is grayscale, else 3. Files with other suffixes and hidden
    entries are ignored. Files that cannot be decoded are all found before one error names the first few and
    counts the rest; with ``skip_unreadable`` they are left out instead, and listed on stderr the same way.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 (grayscale), 3 (RGB) or None (keep), got {channels!r}")
    size = None if image_size is None else _height_width(image_size)
    classes = list_class_folders(root)
    files, labels = [], []
    for label, (_, found) in enumerate(classes):
        files += found
        labels += [label] * len(found)
    files, labels, images = _read_all(root, classes, files, labels, skip_unreadable)
    if channels is None:
        channels = 1 if all(image.mode in _GRAY_MODES for image in images) else 3
    if size is None:
        first = images[0].size
        for file, image in zip(files, images):
            if image.size != first:
                raise ValueError(
                    f"images differ in size: {files[0]} is {first[0]}x{first[1]} (width x height) but {file} is "
                    f"{image.size[0]}x{image.size[1]}; pass image_size to resize them all to one size"
                )
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for image in images:
        image = image.convert(mode)
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.LANCZOS)
        arrays.append(np.asarray(image).reshape(image.size[1], image.size[0], channels))
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ClassDataset(stacked, torch.tensor(labels, dtype=torch.int64), [name for name, _ in classes])


def _read_all(root: Path, classes: list, files: list[Path], labels: list[int], skip_unreadable: bool
              ) -> tuple[list[Path], list[int], list[Image.Image]]:
    """The images of ``files`` and their labels; files that cannot be decoded are all found, then named (the
    first few) and counted in one error, or with ``skip_unreadable`` left out with a warning on stderr."""
    images, unreadable = {}, {}
    for index, file in enumerate(files):
        try:
            images[index] = read_image(file)
        except ValueError as error:
            unreadable[index] = f"{file} ({error.__cause__ or error})"
    if unreadable:
        named = list(unreadable.values())
        listed = "; ".join(named[:NAMED_UNREADABLE]) + (
            f"; and {len(named) - NAMED_UNREADABLE} more" if len(named) > NAMED_UNREADABLE else "")
        counts = f"{len(named)} of the {len(files)} image files in {root}"
        if not skip_unreadable:
            raise ValueError(f"cannot read image{'s' * (len(named) > 1)} {listed} ({counts}). Fix or remove them, or "
                             "leave them out with --skip-unreadable")
        print(f"fastadapt: warning: left out {counts}, which cannot be read: {listed}", file=sys.stderr)
        empty = [name for label, (name, _) in enumerate(classes) if label not in {labels[i] for i in images}]
        if empty:
            raise ValueError(f"no readable images left in class folder{'s' * (len(empty) > 1)} {', '.join(empty)} "
                             f"of {root}")
    return [files[i] for i in images], [labels[i] for i in images], list(images.values())


def _height_width(image_size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"image_size must be a positive int or a (height, width) pair of them, got {image_size!r}")
    return pair


def list_class_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """(class name, sorted image files) for every sub-folder of ``root``, sorted by name; hidden entries and
    files with other suffixes are skipped, and an empty class folder is an error."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root} has no class sub-folders; expected {root}/<class name>/<image files>")
    classes = []
    for folder in class_dirs:
        found = sorted(f for f in folder.iterdir()
                       if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"class folder {folder} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
        classes.append((folder.name, found))
    return classes


def read_image(file: Path) -> Image.Image:
    """The decoded image in ``file``; an unreadable file is a ValueError naming it."""
    try:
        with Image.open(file) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {file}: {error}") from error
