"""Shared fixtures: the Omniglot archives ($FASTADAPT_DATA, else ../shared beside the checkout), a private
data cache, and a synthetic stand-in for the full Omniglot for tests that only need its layout."""
import os
from pathlib import Path

import pytest
import torch

from fastadapt.datasets import ClassDataset
from fastadapt.datasets.omniglot import split_omniglot
from fastadapt.training.threads import using_threads
from episode_helpers import write_glyph_folder  # the tests directory is on sys.path under pytest

SHARED_OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
ARCHIVES = ("images_background.zip", "images_evaluation.zip")


def _omniglot_folder() -> Path:
    """$FASTADAPT_DATA (or its omniglot/ sub-folder) when it holds the archives, else ../shared's copy."""
    data = os.environ.get("FASTADAPT_DATA")
    if data:
        for folder in (Path(data).expanduser(), Path(data).expanduser() / "omniglot"):
            if all((folder / name).is_file() for name in ARCHIVES):
                return folder
    return SHARED_OMNIGLOT


OMNIGLOT_DIR = _omniglot_folder()


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The folder holding the full Omniglot archives; skips the test, saying why, where there is none."""
    if not all((OMNIGLOT_DIR / name).is_file() for name in ARCHIVES):
        pytest.skip(f"the Omniglot archives are not in {OMNIGLOT_DIR}; set FASTADAPT_DATA to a folder holding "
                    f"{' and '.join(ARCHIVES)} to run this test")
    return OMNIGLOT_DIR


@pytest.fixture(scope="session")
def omniglot_small_zip() -> Path:
    """The official 5-alphabet images_background_small1.zip; skips the test where it is absent."""
    path = OMNIGLOT_DIR / "images_background_small1.zip"
    if not path.is_file():
        pytest.skip(f"{path} is absent (set FASTADAPT_DATA to a folder holding it to run this test)")
    return path


@pytest.fixture
def data_cache(tmp_path, monkeypatch) -> Path:
    """A fresh FASTADAPT_CACHE for one test, with FASTADAPT_DATA unset, so nothing outside tmp_path is used."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTADAPT_CACHE", str(cache))
    monkeypatch.delenv("FASTADAPT_DATA", raising=False)
    return cache


@pytest.fixture(scope="session")
def synthetic_omniglot() -> ClassDataset:
    """1,623 random 28x28 'characters' named as Omniglot's (964 background, 659 evaluation; 20 drawings each),
    so every Omniglot split can be built without the archives; the validation alphabets have 22 characters
    each, enough for within-alphabet 20-way trials."""
    val_alphabets = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
    names = [f"images_background/{alphabet}/character{c:02d}" for alphabet in val_alphabets for c in range(1, 23)]
    names += [f"images_background/Alphabet{a:02d}/character{c:02d}" for a in range(25) for c in range(1, 36)][:854]
    names += [f"images_evaluation/Alphabet{a:02d}/character{c:02d}" for a in range(20) for c in range(1, 34)][:659]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(names) * 20, 1, 28, 28), dtype=torch.uint8, generator=generator)
    return ClassDataset(images, torch.arange(len(names)).repeat_interleave(20), names)


@pytest.fixture
def fake_omniglot(monkeypatch, synthetic_omniglot):
    """Runs with tasks 'omniglot' read the synthetic stand-in instead of the archives (and cluttered-omniglot
    runs the archives of OMNIGLOT_DIR whatever their data_root)."""
    from dataclasses import replace

    from fastadapt.config.families import FAMILIES

    def load(cfg, split):
        return split_omniglot(synthetic_omniglot, cfg.task.dataset_split, split)

    monkeypatch.setitem(FAMILIES, "omniglot", replace(FAMILIES["omniglot"], build=load))
    # Cluttered Omniglot draws its canvases from the real drawings (a stand-in would not be its benchmark): they are
    # read from the archives here, and a test that builds it is skipped without them.
    cluttered = FAMILIES["cluttered-omniglot"]

    def load_cluttered(cfg, split):
        if not all((OMNIGLOT_DIR / name).is_file() for name in ARCHIVES):
            pytest.skip(f"cluttered-omniglot needs the Omniglot archives, which are not in {OMNIGLOT_DIR}")
        return cluttered.build(cfg.replace(data_root=str(OMNIGLOT_DIR)), split)

    monkeypatch.setitem(FAMILIES, "cluttered-omniglot", replace(cluttered, build=load_cluttered))


@pytest.fixture(scope="session")
def glyph_folder(tmp_path_factory) -> Path:
    """root/<class>/<png>: 15 classes, each a random 28x28 glyph, its 10 images noisy copies of it."""
    return write_glyph_folder(tmp_path_factory.mktemp("glyphs"), classes=15, images=10)


@pytest.fixture(scope="session")
def quick_protonet_run(omniglot_dir, tmp_path_factory) -> Path:
    """The quick ProtoNet `fastadapt serve` trains when it has no run, cut to 150 10-way episodes of a
    32-channel Conv-4 (seconds on idle cores): enough to tell drawn characters apart."""
    from fastadapt.serve.model import quick_protonet_config, train_quick_protonet

    cfg = quick_protonet_config(str(omniglot_dir), tmp_path_factory.mktemp("serve") / "protonet", iterations=150,
                                n_way=10, conv_channels=32, val_tasks=20, threads=1)
    return train_quick_protonet(cfg, evaluate=False, progress=False)


@pytest.fixture
def one_thread():
    """Run the test on one intra-op thread (for many tiny tensor operations, where more threads only contend)."""
    with using_threads(1):
        yield
