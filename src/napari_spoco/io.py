"""Files: model files (weights + config, written atomically, loaded without unpickling code),
images and label TIFFs.

A model file is a ``torch.save`` dictionary of tensors and a JSON string; it is read with
``torch.load(weights_only=True)``, which refuses arbitrary Python objects.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .errors import SpocoError
from .model import ModelConfig, SpocoModel, UNet, make_teacher

FORMAT = "napari-spoco-model"
FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask() has to set
    it to read it, which races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(model: SpocoModel, path: str | os.PathLike) -> Path:
    """Write student, teacher, config and training record to one file, atomically."""
    meta = {
        "config": model.config.to_dict(),
        "history": {k: v for k, v in model.history.items() if k != "losses"},
        "last_losses": model.history.get("losses", [])[-1:],
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": json.dumps(meta),
        "student": {k: v.detach().cpu() for k, v in model.student.state_dict().items()},
        "teacher": {k: v.detach().cpu() for k, v in model.teacher.state_dict().items()},
    }
    path = Path(path)
    _atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def load_model(path: str | os.PathLike) -> SpocoModel:
    """Read a model file written by :func:`save_model`; anything else gets a clear error."""
    path = Path(path)
    if not path.is_file():
        raise SpocoError(f"Model file {path} does not exist.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, truncated files
        raise SpocoError(
            f"{path} is not a napari-spoco model file (could not read it safely: "
            f"{type(exc).__name__}). Train one with `napari-spoco train` or pick another file."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SpocoError(
            f"{path} is not a napari-spoco model file (it holds no napari-spoco header). "
            "Models from other tools cannot be loaded; train one with `napari-spoco train`."
        )
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise SpocoError(f"{path} was written by a newer napari-spoco; upgrade napari-spoco to read it.")
    try:
        meta = json.loads(payload["meta"])
        config = ModelConfig.from_dict(meta["config"])
        student = UNet(config)
        student.load_state_dict(payload["student"])
        teacher = make_teacher(student)
        teacher.load_state_dict(payload["teacher"])
    except Exception as exc:
        raise SpocoError(f"{path} is damaged or incomplete ({type(exc).__name__}: {exc}).") from exc
    student.eval()
    teacher.eval()
    history = dict(meta.get("history", {}))
    history["losses"] = list(meta.get("last_losses", []))
    return SpocoModel(config, student, teacher, history)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF or PNG into an array; unreadable files get a clear error."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im)
    except FileNotFoundError:
        raise SpocoError(f"{path} does not exist.") from None
    except Exception as exc:
        raise SpocoError(f"Could not read {path} as an image ({type(exc).__name__}: {exc}).") from exc


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint16 while ids fit, uint32 beyond 65535."""
    return np.dtype(np.uint16) if int(np.max(labels, initial=0)) < 2**16 else np.dtype(np.uint32)


def write_labels(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = True) -> Path:
    """Write a label image as a compressed TIFF (uint16/uint32 by id range), atomically."""
    import tifffile

    path = Path(path)
    if path.exists() and not overwrite:
        raise SpocoError(f"{path} exists; choose another name or allow overwriting.")
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise SpocoError("Label images cannot hold negative ids.")
    data = labels.astype(label_dtype(labels))
    _atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack"))
    return path


def list_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Image files in ``folder`` by stem (TIFF/PNG), sorted; a missing or empty folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpocoError(f"{folder} is not a folder.")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    if not files:
        raise SpocoError(f"No .tif/.tiff/.png images in {folder}.")
    return files


def match_pairs(images: dict[str, Path], labels: dict[str, Path], what: str = "labels") -> list[tuple[str, Path, Path]]:
    """Pair files by stem; refuse when nothing matches, report unmatched images."""
    common = sorted(set(images) & set(labels))
    if not common:
        raise SpocoError(
            f"No image has {what} with the same file name stem (images: {', '.join(list(images)[:3])}…; "
            f"{what}: {', '.join(list(labels)[:3])}…)."
        )
    return [(s, images[s], labels[s]) for s in common]
