"""Where the data comes from: class-indexed image datasets, pre-decoded into one uint8 tensor."""
from fastadapt.datasets.base import ClassDataset
from fastadapt.datasets.folder import load_image_folder
from fastadapt.datasets.omniglot import load_omniglot, read_omniglot_zips, split_omniglot

__all__ = ["ClassDataset", "load_image_folder", "load_omniglot", "read_omniglot_zips", "split_omniglot"]
