"""The sample data shipped in the package: two 256×256 crops of U2OS nuclei from BBBC039
(Caicedo et al. 2019; Ljosa et al. 2012; CC0), one with a few nuclei painted as sparse labels.
Used by the demo, the tests and (later) napari's File ▸ Open Sample."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import numpy as np

from .data import count_objects


@dataclass
class SampleData:
    train_image: np.ndarray
    train_sparse: np.ndarray
    train_truth: np.ndarray
    test_image: np.ndarray
    test_truth: np.ndarray

    @property
    def n_painted(self) -> int:
        return count_objects(self.train_sparse)

    @property
    def n_train_objects(self) -> int:
        return count_objects(self.train_truth)


def _read(name: str) -> np.ndarray:
    import tifffile

    with files("napari_spoco._sample").joinpath(name).open("rb") as fh:
        return np.asarray(tifffile.imread(fh))


def load_sample() -> SampleData:
    """Load the shipped crops (no download)."""
    return SampleData(
        train_image=_read("nuclei_train.tif"),
        train_sparse=_read("nuclei_train_sparse.tif"),
        train_truth=_read("nuclei_train_truth.tif"),
        test_image=_read("nuclei_test.tif"),
        test_truth=_read("nuclei_test_truth.tif"),
    )
