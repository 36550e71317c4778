"""How an image a person has (a file, a PIL image, an array) becomes what a trained network reads.

A network only works on images prepared the way its training images were: the same size, the same
channels, the same polarity (Omniglot's drawings are black ink on white paper, but fastadapt stores
and trains on them inverted, white strokes on a black background) and the same scaling ([0, 1]).
``ImagePreparation`` records those choices at training time (in the run directory) and applies them
to new images, step for step as the dataset loaders do: convert to grey or RGB, resize with a
Lanczos filter, invert if the training files were inverted, divide by 255. Its ``polarity`` is what
the network saw (after any inversion), so an input whose strokes come out the other way round can be
refused with a message instead of being silently misclassified.

Everything here is a pure function of its inputs, safe to call from several threads at once.
"""
from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image

from fastadapt.datasets.folder import read_image

POLARITIES = ("light-on-dark", "dark-on-light")
#: What ``prepare`` accepts for one image.
ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray, torch.Tensor]
#: An image's polarity is only called when its brightest and darkest pixels (1st / 99th percentile)
#: are at least this far apart (of 255): a blank or washed-out image has none.
MIN_CONTRAST = 64
#: A dataset's polarity is recorded when at least this share of its decided images agree.
DATASET_AGREEMENT = 0.9


def image_polarity(images: torch.Tensor) -> list[str | None]:
    """The polarity of each uint8 image (N, C, H, W): "light-on-dark" when its border is as dark as its
    darkest pixels (strokes brighter than the background), "dark-on-light" the other way round, None when
    it has too little contrast or a border in between (a photograph, a pattern)."""
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"image_polarity needs uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    gray = images.float().mean(1).flatten(1)  # (N, H*W)
    low, high = torch.quantile(gray, torch.tensor([0.01, 0.99]), dim=1)
    side = images.float().mean(1)
    border = torch.cat([side[:, 0], side[:, -1], side[:, 1:-1, 0], side[:, 1:-1, -1]], dim=1).median(1).values
    contrast = high - low
    result: list[str | None] = []
    for lo, c, b in zip(low.tolist(), contrast.tolist(), border.tolist()):
        if c < MIN_CONTRAST:
            result.append(None)
        elif b <= lo + 0.25 * c:
            result.append("light-on-dark")
        elif b >= lo + 0.75 * c:
            result.append("dark-on-light")
        else:
            result.append(None)
    return result


def dataset_polarity(images: torch.Tensor, sample: int = 2000) -> str | None:
    """The polarity shared by a dataset's uint8 images (N, C, H, W), judged on up to ``sample`` evenly spaced
    ones: the one that at least 90% of the images with a clear polarity have, else None."""
    step = max(1, images.shape[0] // sample)
    votes = [p for p in image_polarity(images[::step][:sample]) if p is not None]
    for polarity in POLARITIES:
        if votes and votes.count(polarity) >= DATASET_AGREEMENT * len(votes):
            return polarity
    return None


def opposite(polarity: str) -> str:
    return POLARITIES[1 - POLARITIES.index(polarity)]


def describe_polarity(polarity: str) -> str:
    """ "light-on-dark" -> "light strokes on a dark background"."""
    front, back = polarity.split("-on-")
    return f"{front} strokes on a {back} background"


@dataclass(frozen=True)
class ImagePreparation:
    """Image files -> network input: ``size`` (height, width), ``channels`` 1 (grey) or 3 (RGB), ``invert``
    (255 - value, as Omniglot's loader does to its black-on-white files), then value / 255. ``polarity`` is
    that of the prepared training images ("light-on-dark", "dark-on-light" or None when they have none)."""

    size: tuple[int, int]
    channels: int
    invert: bool = False
    polarity: str | None = None

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"image preparation: size must be (height, width), got {self.size!r}")
        object.__setattr__(self, "size", size)
        if self.channels not in (1, 3):
            raise ValueError(f"image preparation: channels must be 1 or 3, got {self.channels!r}")
        if self.polarity not in (None, *POLARITIES):
            raise ValueError(f"image preparation: polarity must be one of {POLARITIES} or None, got {self.polarity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size": list(self.size), "scale": "value / 255"}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ImagePreparation":
        return cls(tuple(values["size"]), values["channels"], values["invert"], values["polarity"])

    def describe(self) -> str:
        polarity = f", {describe_polarity(self.polarity)}" if self.polarity else ""
        return (f"{self.size[0]}x{self.size[1]} {'grey' if self.channels == 1 else 'RGB'}"
                f"{', inverted' if self.invert else ''}{polarity}, values / 255")

    # --- images -> tensor ---
    def to_uint8(self, image: ImageLike, name: str = "image") -> torch.Tensor:
        """One image as (C, H, W) uint8 at this size and channel count, before any inversion."""
        pil = to_pil(image, name)
        pil = pil.convert("L" if self.channels == 1 else "RGB")
        height, width = self.size
        if pil.size != (width, height):
            pil = pil.resize((width, height), Image.LANCZOS)
        array = np.asarray(pil).reshape(height, width, self.channels)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def prepare(self, images: Sequence[ImageLike], invert: bool | str | None = None,
                names: Sequence[str] | None = None) -> torch.Tensor:
        """Float images (N, C, H, W) in [0, 1], prepared as the training images were.

        ``invert``: None inverts as the training files were (``self.invert``) and refuses an image whose
        polarity then clearly differs from the training images'; True / False invert / keep every image,
        unchecked; "auto" flips each image whose polarity is opposite to the training images'.
        ``names`` (file names, say) appear in error messages instead of "image 3".
        """
        if invert not in (None, True, False, "auto"):
            raise ValueError(f"invert must be None (as in training), True, False or 'auto', got {invert!r}")
        if isinstance(images, (str, os.PathLike, bytes, Image.Image, np.ndarray, torch.Tensor)):
            raise TypeError("prepare takes a sequence of images (a list), not a single image")
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        if not len(images):
            raise ValueError("no images given")
        raw = torch.stack([self.to_uint8(image, name) for image, name in zip(images, names)])
        if invert is True or invert is False:
            flip = torch.full((len(raw),), invert)
        else:
            flip = torch.full((len(raw),), self.invert)
            if self.polarity is not None:
                seen = image_polarity(torch.where(flip[:, None, None, None], 255 - raw, raw))
                wrong = [i for i, p in enumerate(seen) if p == opposite(self.polarity)]
                if invert == "auto":
                    flip[wrong] = ~flip[wrong]
                elif wrong:
                    raise ValueError(self._polarity_message(names, wrong))
        prepared = torch.where(flip[:, None, None, None], 255 - raw, raw)
        return prepared.float().div_(255)

    def _polarity_message(self, names: list[str], wrong: list[int]) -> str:
        shown = ", ".join(names[i] for i in wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        undo = "invert=False (--invert no) to use them as they are" if self.invert else \
            "invert=True (--invert yes) to invert them"
        steps = "after inversion (the training files were inverted) " if self.invert else ""
        return (f"{shown}: {steps}{'these show' if len(wrong) > 1 else 'this shows'} "
                f"{describe_polarity(opposite(self.polarity))}, but the model was trained on "
                f"{describe_polarity(self.polarity)}; pass {undo}, or invert='auto' (--invert auto) "
                "to flip each image that needs it")


def to_pil(image: ImageLike, name: str = "image") -> Image.Image:
    """A PIL image from a path, encoded bytes, a PIL image, a numpy array (H, W) / (H, W, C) or a tensor
    (H, W) / (C, H, W); arrays are uint8 (0..255), other integers within 0..255, or floats / bools in [0, 1]
    (rounded to 8 bits, as image files hold them)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        return read_image(path)
    if isinstance(image, bytes):
        try:
            with Image.open(io.BytesIO(image)) as decoded:
                decoded.load()
                return decoded
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"{name}: cannot decode the image bytes ({error})") from None
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 3:
            if tensor.shape[0] not in (1, 3, 4):
                raise ValueError(f"{name}: a tensor image must be (H, W) or (C, H, W) with C = 1, 3 or 4, "
                                 f"got shape {tuple(tensor.shape)}")
            tensor = tensor.permute(1, 2, 0)
        return _array_to_pil(tensor.numpy(), name, "tensor", "(H, W) or (C, H, W)")
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, name, "array", "(H, W) or (H, W, C)")
    raise TypeError(f"{name}: expected a file path, image bytes, a PIL image, a numpy array or a tensor, "
                    f"got {type(image).__name__}")


def _array_to_pil(array: np.ndarray, name: str, kind: str, layout: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))) or 0 in array.shape:
        raise ValueError(f"{name}: a {kind} image must be {layout} with C = 1, 3 or 4, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{name}: a float {kind} image must hold values in [0, 1] (pass uint8 for 0..255), "
                             f"got values in [{array.min()}, {array.max()}]")
        array = np.rint(array * 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"{name}: an integer {kind} image must hold values in 0..255, "
                             f"got values in [{array.min()}, {array.max()}]")
        array = array.astype(np.uint8)
    else:
        raise ValueError(f"{name}: cannot read a {kind} of dtype {array.dtype} as an image")
    return Image.fromarray(np.ascontiguousarray(array))
