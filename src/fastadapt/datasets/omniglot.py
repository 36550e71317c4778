"""Omniglot (Lake et al., 2015): 1,623 handwritten characters from 50 alphabets, 20 drawings each.

The two official zips hold 32,460 105x105 1-bit PNGs. Decoding them takes
seconds, so it happens once per image size: the result goes to a uint8 cache
file keyed by the archives' contents, and later loads just read that file.
Strokes are stored as 255 on a 0 background (the PNGs are black on white), so
an empty pixel is zero, as convolutional nets like it.

Which characters are meta-train, meta-validation and meta-test classes is a
named split, see ``split_omniglot``.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import time
import zipfile
import zlib
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from fastadapt.datasets.base import ClassDataset
from fastadapt.datasets.download import BY_HAND, DownloadError, atomic_file, default_cache_dir
from fastadapt.datasets.download import download as download_file

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
# MD5 of the official archives (the values torchvision checks as well).
OMNIGLOT_MD5 = {
    "images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811",
}
SPLITS = ("maml", "vinyals", "background")
SUBSETS = ("train", "val", "test", "trainval")
# The validation alphabets of the "vinyals" split (172 characters, all from the background set),
# as in the split lists published with Prototypical Networks; "background" holds them out too.
VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
#: People who drew every character, each once: file ``<character id>_<NN>.png`` is drawer NN's (01 to 20).
DRAWERS = 20
_CACHE_FORMAT = 1


def load_omniglot(
    root: str | os.PathLike | None = None,
    split: str = "maml",
    subset: str = "train",
    image_size: int = 28,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> ClassDataset:
    """The ``subset`` classes of Omniglot under ``split``, as image_size x image_size uint8 images.

    The archives are looked for in ``root``, else in $FASTADAPT_DATA (either
    folder may hold them directly or in an ``omniglot/`` subfolder); if neither
    is given, in ``<cache>/omniglot``, where they are downloaded (and their
    checksums verified) when missing and ``download`` is true. A folder you
    name is never written to. ``<cache>`` is ``cache_dir``, else
    $FASTADAPT_CACHE, else ~/.cache/fastadapt; the decoded images are cached
    there too.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("subset", subset, SUBSETS)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    archives = find_omniglot_archives(root, cache, download)
    return split_omniglot(read_omniglot_zips(archives, image_size, cache), split, subset)


def find_omniglot_archives(
    root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, download: bool = True
) -> list[Path]:
    """Paths of images_background.zip and images_evaluation.zip; see ``load_omniglot`` for where they are looked for."""
    source = "root" if root is not None else "$FASTADAPT_DATA"
    root = root if root is not None else os.environ.get("FASTADAPT_DATA") or None
    if root is not None:
        root = Path(root).expanduser()
        for folder in (root, root / "omniglot"):
            if all((folder / name).is_file() for name in OMNIGLOT_MD5):
                return [folder / name for name in OMNIGLOT_MD5]
        raise FileNotFoundError(
            f"{source} is {root}, but neither it nor {root / 'omniglot'} holds both "
            f"{' and '.join(OMNIGLOT_MD5)}; put them there, or give no root (and unset FASTADAPT_DATA) "
            "to download them into the cache"
        )
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / "omniglot"
    missing = [name for name in OMNIGLOT_MD5 if not (folder / name).is_file()]
    if missing and not download:
        raise FileNotFoundError(f"Omniglot archives {missing} are not in {folder} and download=False")
    for name in missing:
        try:
            download_file(OMNIGLOT_URL + name, folder / name, md5=OMNIGLOT_MD5[name])
        except DownloadError as error:
            raise DownloadError(str(error).replace(BY_HAND, (
                f"without internet: copy {' and '.join(OMNIGLOT_MD5)} (from {OMNIGLOT_URL}) into one folder and "
                f"give it with --data-root DIR or FASTADAPT_DATA=DIR, or put them in {folder}"))) from error
    return [folder / name for name in OMNIGLOT_MD5]


def read_omniglot_zips(
    zip_paths: Sequence[str | os.PathLike], image_size: int = 28, cache_dir: str | os.PathLike | None = None
) -> ClassDataset:
    """Every character in the given Omniglot-layout zips, one class each, named ``<set>/<alphabet>/<character>``.

    Any zip laid out as ``<set>/<alphabet>/<character>/<drawing>.png`` works,
    with or without directory entries. Classes are in sorted name order and
    drawings sorted by file name. Decoded once, then read from the cache in
    ``cache_dir`` (default as in ``load_omniglot``).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    paths = [Path(p).expanduser() for p in zip_paths]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Omniglot archive {path} does not exist")
    key = hashlib.sha256(f"format {_CACHE_FORMAT}, {image_size}px".encode())
    for path in paths:
        key.update(_file_sha256(path))
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_file = cache / "omniglot" / f"decoded-{image_size}px-{key.hexdigest()[:16]}.npz"
    if cache_file.is_file():
        try:
            return _read_cache(cache_file)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            print(f"fastadapt: cache {cache_file} is unreadable ({error}); rebuilding it", file=sys.stderr)
    dataset = _decode_archives(paths, image_size)
    with atomic_file(cache_file) as out:
        np.savez(
            out,
            images=dataset.images[:, 0].numpy(),
            labels=dataset.labels.numpy(),
            class_names=np.array(dataset.class_names),
        )
    return dataset


def split_omniglot(dataset: ClassDataset, split: str = "maml", subset: str = "train") -> ClassDataset:
    """The ``subset`` ("train", "val", "test" or "trainval" = both) classes of full Omniglot under ``split``.

    Characters are counted in sorted name order (alphabet, then characterNN).

    * "maml": as in the MAML code (Finn et al., 2017): all 1,623 characters
      shuffled with a fixed seed, the first 1,100 train, the next 100 val,
      the last 423 test (trainval: the paper's 1,200). The shuffle here is
      numpy's RandomState(1).permutation, so the sizes match the paper but the
      membership cannot match the original, which depended on directory
      listing order.
    * "vinyals": 1,028 train / 172 val / 423 test characters, each also
      rotated by 90, 180 and 270 degrees into three more classes (x4 classes),
      as in Vinyals et al. (2016) with the validation set of Snell et al.
      (2017). Test is the last 423 evaluation-set characters (Gurmukhi
      character42-45 and the 12 alphabets after it), val is VAL_ALPHABETS,
      train is everything else. This rule reproduces those published lists.
    * "background": Lake et al.'s own split: train is the background set
      (30 alphabets) less VAL_ALPHABETS (792 characters), val those 172,
      test the whole evaluation set (20 alphabets, 659); trainval is the full
      background set (964).
    """
    _check_choice("split", split, SPLITS)
    _check_choice("subset", subset, SUBSETS)
    names = dataset.class_names
    ranked = sorted(range(len(names)), key=names.__getitem__)
    sets = {name.split("/")[0] for name in names}
    background = [i for i in ranked if names[i].startswith("images_background/")]
    evaluation = [i for i in ranked if names[i].startswith("images_evaluation/")]
    if (len(background), len(evaluation), len(names)) != (964, 659, 1623):
        raise ValueError(
            f"split {split!r} needs the full Omniglot: 964 images_background and 659 images_evaluation "
            f"characters; this dataset has {len(background)} and {len(evaluation)} of {len(names)} "
            f"(sets: {sorted(sets)})"
        )
    if split == "maml":
        order = [ranked[i] for i in np.random.RandomState(1).permutation(len(ranked))]
        parts = {"train": order[:1100], "val": order[1100:1200], "test": order[1200:]}
    else:
        val = [i for i in background if names[i].split("/")[1] in VAL_ALPHABETS]
        test = evaluation[-423:] if split == "vinyals" else evaluation
        held_out = set(val) | set(test)
        parts = {"train": [i for i in ranked if i not in held_out], "val": val, "test": test}
    parts["trainval"] = parts["train"] + parts["val"]
    chosen = dataset.subset(sorted(parts[subset], key=names.__getitem__))
    return chosen.with_rotations() if split == "vinyals" else chosen


def alphabet_of(class_name: str) -> str:
    """The alphabet of a class named ``<set>/<alphabet>/<character>``; of a rotated one,
    ``<set>/<alphabet>/<character>/rotDDD``, the alphabet rotated, ``<alphabet>/rotDDD`` (another alphabet, as
    a rotated character is another character)."""
    parts = class_name.split("/")
    return "/".join([parts[1], *parts[3:]])


def drawers_of(dataset: ClassDataset) -> torch.Tensor:
    """Who drew each image of an Omniglot ``ClassDataset``: (N,) int64 drawer numbers, 1 to DRAWERS.

    No drawer is stored: it is in the file name, ``<character id>_<NN>.png``, and every character of both
    official zips has one drawing by each of the 20 drawers, which ``read_omniglot_zips`` keeps sorted by
    file name, so a class's j-th image (in dataset order) is drawer j + 1. A class without exactly DRAWERS
    images cannot be a whole Omniglot character, and is refused.
    """
    counts = dataset.images_per_class
    if (counts != DRAWERS).any():
        odd = int((counts != DRAWERS).nonzero()[0, 0])
        raise ValueError(f"drawers are known for whole Omniglot characters ({DRAWERS} drawings each), but class "
                         f"{dataset.class_names[odd]!r} has {int(counts[odd])} images")
    table, _ = dataset.class_index_table()
    drawers = torch.empty(len(dataset), dtype=torch.int64)
    drawers[table] = torch.arange(1, DRAWERS + 1).expand_as(table)
    return drawers


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown Omniglot {what} {value!r}; choose one of {', '.join(choices)}")


def _file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def _read_cache(path: Path) -> ClassDataset:
    with np.load(path, allow_pickle=False) as data:
        images = torch.from_numpy(data["images"]).unsqueeze(1)
        return ClassDataset(images, torch.from_numpy(data["labels"]), data["class_names"].tolist())


def _list_archive(path: Path) -> dict[str, list[str]]:
    """Class name -> sorted member names of its drawings; directory entries and stray files are skipped."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(
            f"{path} is not a readable zip archive ({error}); it is probably truncated or corrupt: "
            "replace it (or delete it, if it was downloaded into the cache, to fetch it again)"
        ) from error
    classes = defaultdict(list)
    for member in members:
        parts = member.split("/")
        if len(parts) == 4 and parts[3].lower().endswith(".png") and not parts[3].startswith("."):
            if not parts[0].startswith("__MACOSX"):
                classes["/".join(parts[:3])].append(member)
    if not classes:
        raise ValueError(f"{path} holds no images laid out as <set>/<alphabet>/<character>/<drawing>.png")
    return {name: sorted(files) for name, files in classes.items()}


def _decode_archives(paths: Sequence[Path], image_size: int) -> ClassDataset:
    source: dict[str, tuple[Path, list[str]]] = {}
    for path in paths:
        for name, files in _list_archive(path).items():
            if name in source:
                raise ValueError(f"character {name} is in both {source[name][0]} and {path}")
            source[name] = (path, files)
    class_names = sorted(source)
    total = sum(len(files) for _, files in source.values())
    print(
        f"fastadapt: decoding {total:,} Omniglot images from {', '.join(str(p) for p in paths)} "
        f"to {image_size}x{image_size} (once; cached afterwards)",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    images = np.empty((total, image_size, image_size), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    with ExitStack() as stack:
        archives = {path: stack.enter_context(zipfile.ZipFile(path)) for path in paths}
        i = 0
        for label, name in enumerate(class_names):
            path, files = source[name]
            for member in files:
                images[i] = _decode_png(archives[path], path, member, image_size)
                labels[i] = label
                i += 1
    print(f"fastadapt: decoded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return ClassDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels), class_names)


def _decode_png(archive: zipfile.ZipFile, path: Path, member: str, image_size: int) -> np.ndarray:
    """One drawing as (image_size, image_size) uint8 with strokes = 255, resized with a Lanczos filter."""
    try:
        with Image.open(io.BytesIO(archive.read(member))) as image:
            gray = image.convert("L")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read {member} in {path} ({error}); the archive is corrupt: replace it") from error
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), Image.LANCZOS)
    return 255 - np.asarray(gray)
