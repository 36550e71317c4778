"""Omniglot: both zip packings, stroke polarity, one decode then the cache, corrupt archives, the
download path against a local HTTP server, and the named splits."""
import hashlib
import http.server
import io
import threading
import time
import zipfile
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from fastadapt.datasets import ClassDataset, load_omniglot, omniglot, read_omniglot_zips, split_omniglot
from fastadapt.datasets.download import DownloadError

ALPHABETS = {"Alpha": 2, "Beta": 1}  # characters per alphabet in the synthetic archives


def make_zip(path: Path, top: str = "images_background", drawings: int = 3, directory_entries: bool = True) -> Path:
    """An Omniglot-layout zip of 20x20 1-bit drawings; drawing d of a character has a stroke in row d."""
    with zipfile.ZipFile(path, "w") as archive:
        if directory_entries:
            archive.writestr(f"{top}/", b"")
        for alphabet, characters in ALPHABETS.items():
            if directory_entries:
                archive.writestr(f"{top}/{alphabet}/", b"")
            for c in range(1, characters + 1):
                folder = f"{top}/{alphabet}/character{c:02d}"
                if directory_entries:
                    archive.writestr(folder + "/", b"")
                for d in range(1, drawings + 1):
                    image = Image.new("1", (20, 20), 1)  # white paper
                    ImageDraw.Draw(image).line([(2, d), (2 + 5 * c, d)], fill=0)  # a black stroke
                    png = _png_bytes(image)
                    archive.writestr(f"{folder}/{c:04d}_{d:02d}.png", png)
    return path


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_both_packings_give_the_same_dataset_with_white_strokes(tmp_path, data_cache):
    with_dirs = read_omniglot_zips([make_zip(tmp_path / "a.zip")], image_size=20)
    without = read_omniglot_zips([make_zip(tmp_path / "b.zip", directory_entries=False)], image_size=20)
    assert with_dirs.class_names == without.class_names == [
        "images_background/Alpha/character01",
        "images_background/Alpha/character02",
        "images_background/Beta/character01",
    ]
    assert torch.equal(with_dirs.images, without.images) and torch.equal(with_dirs.labels, without.labels)
    assert with_dirs.images.shape == (9, 1, 20, 20) and with_dirs.images_per_class.tolist() == [3, 3, 3]
    first = with_dirs.images[0, 0]  # Alpha/character01, drawing 1: stroke on row 1 from x=2 to x=7
    assert first[1, 2:8].eq(255).all() and first.sum() == 255 * 6


def test_resize_keeps_values_in_range(tmp_path, data_cache):
    dataset = read_omniglot_zips([make_zip(tmp_path / "a.zip")], image_size=7)
    assert dataset.images.shape == (9, 1, 7, 7) and dataset.images.dtype == torch.uint8
    assert dataset.images.max() > 0 and dataset.images[:, :, 4:].max() == 0  # strokes stay in the top rows


def test_second_load_reads_the_cache_and_a_changed_archive_is_decoded_again(tmp_path, data_cache, monkeypatch):
    path = make_zip(tmp_path / "a.zip")
    first = read_omniglot_zips([path], image_size=12)
    assert len(list((data_cache / "omniglot").glob("decoded-12px-*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(omniglot, "_decode_archives", no_decoding)
    again = read_omniglot_zips([path], image_size=12)
    assert torch.equal(first.images, again.images) and again.class_names == first.class_names
    make_zip(path, drawings=4)  # new content: the cache key changes
    with pytest.raises(AssertionError, match="decoded again"):
        read_omniglot_zips([path], image_size=12)


def test_an_unreadable_cache_file_is_rebuilt(tmp_path, data_cache, capsys):
    path = make_zip(tmp_path / "a.zip")
    first = read_omniglot_zips([path], image_size=8)
    (cache_file,) = (data_cache / "omniglot").glob("decoded-8px-*.npz")
    cache_file.write_bytes(b"garbage")
    again = read_omniglot_zips([path], image_size=8)
    assert torch.equal(first.images, again.images) and "unreadable" in capsys.readouterr().err
    assert torch.equal(read_omniglot_zips([path], image_size=8).images, first.images)  # the rebuilt file reads


def test_a_truncated_zip_is_an_error_naming_it(tmp_path, data_cache):
    good = make_zip(tmp_path / "good.zip").read_bytes()
    bad = tmp_path / "images_background.zip"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="images_background.zip is not a readable zip archive"):
        read_omniglot_zips([bad])
    assert not (data_cache / "omniglot").exists()  # nothing cached


def test_a_corrupt_drawing_is_an_error_naming_it(tmp_path, data_cache):
    path = make_zip(tmp_path / "a.zip")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("images_background/Beta/character01/9999_01.png", b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read images_background/Beta/character01/9999_01.png in"):
        read_omniglot_zips([path])


def test_a_zip_without_omniglot_layout_is_an_error(tmp_path, data_cache):
    path = tmp_path / "flat.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.png", _png_bytes(Image.new("L", (4, 4))))
    with pytest.raises(ValueError, match="holds no images laid out as"):
        read_omniglot_zips([path])


def test_the_official_small_background_zip(omniglot_small_zip, data_cache):
    dataset = read_omniglot_zips([omniglot_small_zip], image_size=28)
    alphabets = {name.split("/")[1] for name in dataset.class_names}
    assert len(alphabets) == 5 and all(name.startswith("images_background_small1/") for name in dataset.class_names)
    assert (dataset.images_per_class == 20).all() and dataset.image_shape == (1, 28, 28)
    # Strokes are the minority of pixels: a bright background would mean the inversion was lost.
    assert dataset.images.float().mean() < 64


def test_archives_are_found_in_root_its_omniglot_subfolder_or_fastadapt_data(tmp_path, data_cache, monkeypatch):
    for name in ("images_background.zip", "images_evaluation.zip"):
        (tmp_path / "data" / "omniglot").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "omniglot" / name).write_bytes(b"")
    expected = [tmp_path / "data" / "omniglot" / n for n in ("images_background.zip", "images_evaluation.zip")]
    assert omniglot.find_omniglot_archives(tmp_path / "data" / "omniglot") == expected
    assert omniglot.find_omniglot_archives(tmp_path / "data") == expected
    monkeypatch.setenv("FASTADAPT_DATA", str(tmp_path / "data"))
    assert omniglot.find_omniglot_archives() == expected
    with pytest.raises(FileNotFoundError, match="neither it nor"):
        omniglot.find_omniglot_archives(tmp_path)
    monkeypatch.delenv("FASTADAPT_DATA")
    with pytest.raises(FileNotFoundError, match="download=False"):
        omniglot.find_omniglot_archives(download=False)


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_verifies_checksums_and_keeps_only_verified_files(http_folder, data_cache, monkeypatch):
    folder, url = http_folder
    sums = {}
    for name in omniglot.OMNIGLOT_MD5:
        make_zip(folder / name, top=name[:-4])
        sums[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", url)
    monkeypatch.setattr(omniglot, "OMNIGLOT_MD5", {**sums, "images_evaluation.zip": "0" * 32})
    target = data_cache / "omniglot"
    with pytest.raises(DownloadError, match="checksum mismatch for .*images_evaluation.zip"):
        omniglot.find_omniglot_archives()
    assert sorted(p.name for p in target.iterdir()) == ["images_background.zip"]  # no partial files either

    monkeypatch.setattr(omniglot, "OMNIGLOT_MD5", sums)
    paths = omniglot.find_omniglot_archives()
    assert [p.read_bytes() for p in paths] == [(folder / n).read_bytes() for n in sums]
    assert len(read_omniglot_zips(paths, image_size=10).class_names) == 6

    monkeypatch.setattr(omniglot, "OMNIGLOT_URL", url + "missing/")
    (target / "images_background.zip").unlink()
    with pytest.raises(DownloadError, match="could not download .*404"):
        omniglot.find_omniglot_archives()


def test_unknown_split_or_subset_names_list_the_choices():
    with pytest.raises(ValueError, match="unknown Omniglot split 'lake'; choose one of maml, vinyals, background"):
        load_omniglot(split="lake")
    with pytest.raises(ValueError, match="unknown Omniglot subset 'dev'; choose one of train, val, test"):
        load_omniglot(subset="dev")
    with pytest.raises(ValueError, match="image_size"):
        read_omniglot_zips([], image_size=0)


def test_splits_need_the_full_dataset(tmp_path, data_cache):
    partial_set = read_omniglot_zips([make_zip(tmp_path / "a.zip")], image_size=4)
    with pytest.raises(ValueError, match="needs the full Omniglot"):
        split_omniglot(partial_set, "maml", "train")


@pytest.fixture(scope="module")
def omniglot_names(omniglot_dir) -> ClassDataset:
    """Every real Omniglot character as a class with one 2x2 image, whose top-left pixel is nonzero."""
    names = sorted(
        name
        for file in ("images_background.zip", "images_evaluation.zip")
        for name in omniglot._list_archive(omniglot_dir / file)
    )
    images = torch.zeros(len(names), 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(len(names)) % 255 + 1
    return ClassDataset(images, torch.arange(len(names)), names)


SPLIT_SIZES = {  # characters in train, val, test; vinyals has 4 rotations of each
    "maml": (1100, 100, 423),
    "vinyals": (1028, 172, 423),
    "background": (792, 172, 659),
}


@pytest.mark.parametrize("split", sorted(SPLIT_SIZES))
def test_split_sizes_are_disjoint_and_cover_everything(omniglot_names, split):
    rotations = 4 if split == "vinyals" else 1
    parts = {s: split_omniglot(omniglot_names, split, s).class_names for s in ("train", "val", "test", "trainval")}
    assert tuple(len(parts[s]) for s in ("train", "val", "test")) == tuple(n * rotations for n in SPLIT_SIZES[split])
    assert sorted(parts["trainval"]) == sorted(parts["train"] + parts["val"])
    chars = {s: {name.split("/rot")[0] for name in parts[s]} for s in parts}
    assert not (chars["train"] & chars["val"]) and not (chars["train"] | chars["val"]) & chars["test"]
    assert len(chars["train"] | chars["val"] | chars["test"]) == 1623
    assert split_omniglot(omniglot_names, split, "test").class_names == parts["test"]  # deterministic


def test_vinyals_split_follows_the_published_lists(omniglot_names):
    test = split_omniglot(omniglot_names, "vinyals", "test").class_names
    val = split_omniglot(omniglot_names, "vinyals", "val").class_names
    assert test[0] == "images_evaluation/Gurmukhi/character42/rot000"  # rotations come in blocks of 423
    assert test[423] == "images_evaluation/Gurmukhi/character42/rot090" and test[-1].endswith("ULOG/character26/rot270")
    assert {name.split("/")[1] for name in test} == {
        "Gurmukhi", "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
        "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
    }  # fmt: skip
    assert {name.split("/")[1] for name in val} == set(omniglot.VAL_ALPHABETS)


def test_vinyals_rotations_are_rotated_copies(omniglot_names):
    train = split_omniglot(omniglot_names, "vinyals", "train")
    first = train.class_names.index("images_background/Alphabet_of_the_Magi/character01/rot000")
    rotated = train.class_names.index("images_background/Alphabet_of_the_Magi/character01/rot090")
    upright, turned = train.images[train.labels == first], train.images[train.labels == rotated]
    assert torch.equal(turned, torch.rot90(upright, 1, (2, 3)))


@pytest.mark.slow
def test_real_omniglot_maml_split_and_cache_speed(omniglot_dir, capsys):
    """Builds (once per machine) and then reads the real 28x28 cache in $FASTADAPT_CACHE or ~/.cache/fastadapt."""
    start = time.perf_counter()
    train = load_omniglot(omniglot_dir, "maml", "train")
    first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    test = load_omniglot(omniglot_dir, "maml", "test")
    cached_seconds = time.perf_counter() - start
    val = load_omniglot(omniglot_dir, "maml", "val")
    trainval = load_omniglot(omniglot_dir, "maml", "trainval")
    assert (train.num_classes, val.num_classes, test.num_classes, trainval.num_classes) == (1100, 100, 423, 1200)
    for dataset in (train, val, test):
        assert (dataset.images_per_class == 20).all() and dataset.image_shape == (1, 28, 28)
    assert not set(trainval.class_names) & set(test.class_names)
    assert 0 < test.images.float().mean() < 64  # white strokes on black
    assert cached_seconds < 5
    with capsys.disabled():
        print(f"\nOmniglot 28x28: first load {first_seconds:.1f} s, cached load {cached_seconds:.2f} s")
