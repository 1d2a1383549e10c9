"""Cut the shipped sample data (src/napari_spoco/_sample/) from the BBBC039 data set (CC0).

    .venv/bin/python scripts/make_sample_data.py [--data DIR]

Run once by a developer; users, the tests and the demo only read the files it writes.
Two 256×256 crops of U2OS nuclei: one for training, with a few nuclei kept as sparse labels
(objects touching the crop border are not painted, as a user would not paint them), and one
held out; both with their dense truth. BBBC039 is read from ``--data DIR`` (default:
../shared/data beside the repository; see benchmarks/bench_data.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_data import add_data_argument, read, use_data_dir  # noqa: E402

DATASET = "bbbc039-nuclei"
DST = ROOT / "src" / "napari_spoco" / "_sample"

# (file stem, y0, x0) of the crops, chosen for touching nuclei and a range of sizes.
TRAIN = ("IXMtest_B23_s1_w152C21D3B-75A9-4FF9-839A-23E6CE19AEEC", 132, 440)
TEST = ("IXMtest_D02_s8_w1AC6783DF-ED35-4818-8091-E6D02AF4BFBD", 0, 330)
SIZE = 256
N_PAINTED = 8


def crop(stem: str, y0: int, x0: int) -> tuple[np.ndarray, np.ndarray]:
    img = read(DATASET, stem, "images")[y0 : y0 + SIZE, x0 : x0 + SIZE]
    gt = read(DATASET, stem, "masks")[y0 : y0 + SIZE, x0 : x0 + SIZE]
    from skimage.segmentation import relabel_sequential

    return img, relabel_sequential(gt)[0].astype(np.uint16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(ap)
    use_data_dir(ap.parse_args().data, needs=(DATASET,))
    DST.mkdir(parents=True, exist_ok=True)
    img, gt = crop(*TRAIN)
    border = set(np.unique(np.concatenate([gt[0], gt[-1], gt[:, 0], gt[:, -1]]))) - {0}
    sizes = np.bincount(gt.ravel())
    # A user paints whole, clearly visible nuclei: not the border ones, not specks of debris.
    candidates = [i for i in np.unique(gt) if i and i not in border and sizes[i] >= 150]
    rng = np.random.default_rng(0)
    painted = rng.choice(candidates, size=min(N_PAINTED, len(candidates)), replace=False)
    sparse = np.where(np.isin(gt, painted), gt, 0).astype(np.uint16)
    timg, tgt = crop(*TEST)
    opts = dict(compression="zlib")
    tifffile.imwrite(DST / "nuclei_train.tif", img, **opts)
    tifffile.imwrite(DST / "nuclei_train_sparse.tif", sparse, **opts)
    tifffile.imwrite(DST / "nuclei_train_truth.tif", gt, **opts)
    tifffile.imwrite(DST / "nuclei_test.tif", timg, **opts)
    tifffile.imwrite(DST / "nuclei_test_truth.tif", tgt, **opts)
    print(f"train crop: {len(np.unique(gt)) - 1} nuclei, {len(painted)} painted; "
          f"test crop: {len(np.unique(tgt)) - 1} nuclei")
    return 0


if __name__ == "__main__":
    sys.exit(main())
