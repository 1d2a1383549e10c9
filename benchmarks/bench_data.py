"""Where the benchmarks and scripts find the data sets, and how they read them.

Every benchmark and every script that reads the data sets takes ``--data DIR``: a folder with one
sub-folder per data set (``bbbc039-nuclei``, ``usiigaci-phc``, ``isbi2012-em``, ``cells3d-nuclei``),
each holding ``images/*.tif`` and ``masks/*.tif`` with matching file names (masks: 0 for background,
1…N for objects). Without ``--data`` they use ``../shared/data`` beside the repository where it
exists, and otherwise stop with a message that asks for ``--data``. The data are not shipped with
the package; docs/benchmarks.md says where each set comes from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import synthetic_em
import synthetic_leaves
import synthetic_nuclei
import synthetic_nuclei_2d
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"

_data_dir: Path | None = None  # set by use_data_dir(); DEFAULT_DATA until then


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help=f"folder of the data sets (one sub-folder each, with images/ and masks/); "
                        f"default: {DEFAULT_DATA} where it exists")


def use_data_dir(path: Path | None, needs: tuple[str, ...] = ()) -> Path:
    """Read the data sets from ``path`` (``--data``; ``None``: the default folder) from now on, and
    return it. Stops the program with a clear message where the folder, or one of the data sets
    in ``needs``, is missing."""
    global _data_dir
    if path is None:
        if not DEFAULT_DATA.is_dir():
            raise SystemExit(f"no data folder: {DEFAULT_DATA} does not exist. Pass --data DIR, a folder with "
                             "one sub-folder per data set (each with images/ and masks/).")
        path = DEFAULT_DATA
    path = Path(path).expanduser()
    if not path.is_dir():
        raise SystemExit(f"--data {path}: not a folder.")
    missing = [ds for ds in needs if ds not in GENERATED and not (path / ds / "images").is_dir()]
    if missing:
        raise SystemExit(f"--data {path}: no {', '.join(missing)} in it (expected {path}/<data set>/images/*.tif).")
    _data_dir = path
    return path


def data_dir() -> Path:
    return _data_dir if _data_dir is not None else DEFAULT_DATA


#: Data sets drawn by code instead of read from --data (benchmarks/synthetic_*.py).
GENERATED = {synthetic_nuclei.NAME: synthetic_nuclei, synthetic_leaves.NAME: synthetic_leaves,
             synthetic_nuclei_2d.NAME: synthetic_nuclei_2d, synthetic_em.NAME: synthetic_em}
GENERATED.update({name: synthetic_nuclei.Variant(name) for name in synthetic_nuclei.VARIANTS})
GENERATED.update({name: synthetic_nuclei_2d.Variant(name) for name in synthetic_nuclei_2d.VARIANTS})
GENERATED.update({name: synthetic_leaves.Variant(name) for name in synthetic_leaves.VARIANTS})
GENERATED.update({name: synthetic_em.Variant(name) for name in synthetic_em.VARIANTS})


def stems(ds: str) -> list[str]:
    """File stems of a data set's images, sorted."""
    if ds in GENERATED:
        return GENERATED[ds].stems()
    return sorted(p.stem for p in (data_dir() / ds / "images").glob("*.tif"))


def read(ds: str, stem: str, kind: str) -> np.ndarray:
    """One image (``kind="images"``) or mask (``kind="masks"``) of a data set."""
    if ds in GENERATED:
        return GENERATED[ds].read(stem, kind)
    return tifffile.imread(data_dir() / ds / kind / f"{stem}.tif")
