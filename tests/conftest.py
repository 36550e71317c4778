"""Shared fixtures: the Omniglot archives beside the checkout (../shared), and a private data cache."""
from pathlib import Path

import pytest

OMNIGLOT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The folder holding the full Omniglot archives; skips the test where it is absent."""
    if not all((OMNIGLOT_DIR / name).is_file() for name in ("images_background.zip", "images_evaluation.zip")):
        pytest.skip(f"the Omniglot archives are not in {OMNIGLOT_DIR}")
    return OMNIGLOT_DIR


@pytest.fixture(scope="session")
def omniglot_small_zip() -> Path:
    """The official 5-alphabet images_background_small1.zip; skips the test where it is absent."""
    path = OMNIGLOT_DIR / "images_background_small1.zip"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture
def data_cache(tmp_path, monkeypatch) -> Path:
    """A fresh FASTADAPT_CACHE for one test, with FASTADAPT_DATA unset, so nothing outside tmp_path is used."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTADAPT_CACHE", str(cache))
    monkeypatch.delenv("FASTADAPT_DATA", raising=False)
    return cache
