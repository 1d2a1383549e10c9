"""The compute core must import without Qt or napari (the GUI is a thin layer on top)."""

import json
import subprocess
import sys

CORE = [
    "napari_spoco", "napari_spoco.model", "napari_spoco.losses", "napari_spoco.training",
    "napari_spoco.inference", "napari_spoco.clustering", "napari_spoco.metrics", "napari_spoco.io",
    "napari_spoco.data", "napari_spoco.augment", "napari_spoco.segmentation", "napari_spoco.cli",
    "napari_spoco.sample", "napari_spoco.overlay", "napari_spoco.pretrained", "napari_spoco.bioimageio_export",
    "napari_spoco.scaling", "napari_spoco.distances", "napari_spoco.label_dtypes",
    "napari_spoco.suggestions", "napari_spoco.shapes", "napari_spoco.boundaries", "napari_spoco.edges",
    "napari_spoco.precision",
    "napari_spoco.lazy_io", "napari_spoco.blockwise", "napari_spoco.batch", "napari_spoco.out_of_core",
]


def test_core_modules_import_without_qt_or_napari():
    code = (
        "import importlib, json, sys\n"
        f"for m in {CORE!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'magicgui', 'vispy'))\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
