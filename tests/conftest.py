import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores on CI: keep torch from oversubscribing when pytest runs alongside other work.
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny_pair():
    """A 64×64 synthetic image of bright disks, its dense truth and sparse labels (3 disks)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    truth = np.zeros((64, 64), np.uint16)
    centers = [(12, 12), (12, 40), (30, 24), (48, 12), (50, 48), (30, 54)]
    for i, (cy, cx) in enumerate(centers, start=1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = i
    image = (truth > 0) * 200.0 + rng.normal(20, 5, truth.shape)
    sparse = np.where(np.isin(truth, [1, 3, 5]), truth, 0).astype(np.uint16)
    return image.astype(np.float32), sparse, truth


@pytest.fixture
def folders(tmp_path, tiny_pair):
    """images/, labels/ and gt/ folders holding ``tiny_pair`` as cells.tif, for the CLI tests."""
    import tifffile

    image, sparse, truth = tiny_pair
    for sub in ("images", "labels", "gt"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "images" / "cells.tif", image)
    tifffile.imwrite(tmp_path / "labels" / "cells.tif", sparse)
    tifffile.imwrite(tmp_path / "gt" / "cells.tif", truth)
    return tmp_path
