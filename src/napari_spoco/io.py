"""Files: model files (weights + config, written atomically, loaded without unpickling code),
images and label TIFFs.

A model file is a ``torch.save`` dictionary of tensors and a JSON string; it is read with
``torch.load(weights_only=True)``, which refuses arbitrary Python objects.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from .edges import MAX_EXPAND
from .errors import SpocoError
from .label_dtypes import as_label_image
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


def weights_checksum(student: dict, teacher: dict) -> str:
    """SHA-256 of every weight tensor (names, dtypes, shapes and bytes, in name order).

    Stored in the model file and checked on load, so a file damaged on disk or in transfer is
    refused instead of segmenting with garbage (torch's zip container does not check this).
    """
    digest = hashlib.sha256()
    for part, state in (("student", student), ("teacher", teacher)):
        for name in sorted(state):
            t = state[name].detach().cpu().contiguous()
            digest.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def nonfinite_weights(*states: dict) -> list[str]:
    """Names of floating-point tensors holding NaN or infinite values."""
    bad = []
    for state in states:
        for name, t in state.items():
            if torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad


def check_finite(model: SpocoModel) -> None:
    """Refuse a model whose weights are not all finite (a diverged or damaged network)."""
    bad = nonfinite_weights(model.student.state_dict(), model.teacher.state_dict())
    if bad:
        raise SpocoError(
            f"The model's weights hold NaN or infinite values ({bad[0]}{' and others' if len(bad) > 1 else ''}): "
            "it cannot segment. Train it again or load another model file."
        )


def _short(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` cut to one short line (torch's errors can run to kilobytes)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def save_model(model: SpocoModel, path: str | os.PathLike) -> Path:
    """Write student, teacher, config and training record to one file, atomically, with a
    checksum of the weights; a model with non-finite weights is refused."""
    check_finite(model)
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
    payload["checksum"] = weights_checksum(payload["student"], payload["teacher"])
    path = Path(path)
    _atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def _bioimageio_package(path: Path) -> bool:
    """A zip holding a bioimage.io description (``rdf.yaml`` or ``bioimageio.yaml``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(Path(n).name in ("rdf.yaml", "bioimageio.yaml") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _cut_short_model(head: bytes, tail: bytes) -> bool:
    """A model file whose end is missing: torch's zip starts with its pickle (``…/data.pkl``)
    holding our format name, and ends with an end-of-central-directory record that is not there."""
    if not head.startswith(b"PK\x03\x04") or len(head) < 30:
        return False
    n = int.from_bytes(head[26:28], "little")
    first = head[30:30 + n]
    return first.endswith(b"data.pkl") and FORMAT.encode() in head and b"PK\x05\x06" not in tail


def load_model(path: str | os.PathLike) -> SpocoModel:
    """Read a model file written by :func:`save_model`; anything else gets a clear error."""
    path = Path(path)
    if path.is_dir():
        raise SpocoError(f"Model file {path} is a folder; give the model file itself (e.g. model.spoco.pt).")
    if not path.is_file():
        raise SpocoError(f"Model file {path} does not exist.")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            f.seek(max(0, path.stat().st_size - (1 << 16) - 22))
            tail = f.read()
    except OSError as exc:
        raise SpocoError(f"Model file {path} cannot be read ({exc.strerror or type(exc).__name__}); check its "
                         "permissions, or copy it somewhere you can read.") from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, truncated files
        if _cut_short_model(head, tail):
            # our header is there (the first entry of torch's zip), the zip's end is not: a copy
            # or download cut short
            raise SpocoError(
                f"{path} is damaged or incomplete: it starts as a napari-spoco model but cannot be read "
                f"to the end ({type(exc).__name__}; e.g. a copy or download that did not finish). "
                "Use a backup or train the model again."
            ) from exc
        if _bioimageio_package(path):
            raise SpocoError(
                f"{path} is a bioimage.io model package (`napari-spoco export` writes these for other tools), "
                "not a napari-spoco model file: give the .pt model file it was exported from."
            ) from exc
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
    damaged = f"{path} is damaged or incomplete"
    try:
        student_state, teacher_state = payload["student"], payload["teacher"]
        checksum = payload.get("checksum")  # files written before checksums were added have none
        if checksum is not None and checksum != weights_checksum(student_state, teacher_state):
            raise SpocoError(
                f"{damaged}: its weights do not match the checksum stored with them (the file was "
                "changed or corrupted after it was saved). Use a backup or train the model again."
            )
        bad = nonfinite_weights(student_state, teacher_state)
        if bad:
            raise SpocoError(
                f"{path}: the model's weights hold NaN or infinite values ({bad[0]}): it cannot "
                "segment. Use another model file or train again."
            )
        meta = json.loads(payload["meta"])
        config = ModelConfig.from_dict(meta["config"])
        student = UNet(config)
        student.load_state_dict(student_state)
        teacher = make_teacher(student)
        teacher.load_state_dict(teacher_state)
    except SpocoError:
        raise
    except Exception as exc:
        raise SpocoError(f"{damaged} ({_short(exc)}). Use a backup or train the model again.") from exc
    student.eval()
    teacher.eval()
    history = dict(meta.get("history", {}))
    history["losses"] = list(meta.get("last_losses", []))
    _check_history(history, damaged)
    return SpocoModel(config, student, teacher, history)


def _check_history(history: dict, damaged: str) -> None:
    """The training record fields that change how images are segmented must be usable."""
    from .scaling import check_scale, check_voxel_size

    try:
        check_scale(history.get("pixel_scale", 1.0))
    except SpocoError as exc:
        raise SpocoError(f"{damaged}: its pixel_scale is unusable ({exc})") from None
    try:
        check_voxel_size(history.get("voxel_size"))
    except SpocoError as exc:
        raise SpocoError(f"{damaged}: its voxel_size is unusable ({exc})") from None
    median = history.get("object_size_median")
    if median is not None and (
        isinstance(median, bool) or not isinstance(median, (int, float)) or not (0 < median < float("inf"))
    ):
        raise SpocoError(f"{damaged}: its object_size_median {median!r} is not a positive number.")
    for key in ("object_solidity", "object_solidity_median"):
        solid = history.get(key)
        if solid is not None and (
            isinstance(solid, bool) or not isinstance(solid, (int, float)) or not (0 < solid <= 1)
        ):
            raise SpocoError(f"{damaged}: its {key} {solid!r} is not a number in (0, 1].")
    grow = history.get("edge_expand")
    if grow is not None and (isinstance(grow, bool) or not isinstance(grow, int) or not 0 <= grow <= MAX_EXPAND):
        raise SpocoError(f"{damaged}: its edge_expand {grow!r} is not a whole number from 0 to {MAX_EXPAND}.")
    for key in ("edge_growth", "single_peaked"):  # segment() reads only False, resp. True
        flag = history.get(key)
        if flag is not None and not isinstance(flag, bool):
            raise SpocoError(f"{damaged}: its {key} {flag!r} is not true, false or empty.")


def read_image(path: str | os.PathLike, keep_channels: bool = False, refuse_time: bool = False) -> np.ndarray:
    """Read a TIFF or PNG into an array; unreadable files get a clear error.

    Colour comes back channels-last ``(Y, X, 3|4)`` whichever way the file stores it (planar
    RGB TIFFs hold ``(3, Y, X)``, which would otherwise pass for a 3-slice volume); grey+alpha
    PNGs come back grey. Files whose axes metadata names a channel axis are refused with advice
    unless ``keep_channels`` (the caller says which axis holds them: ``--channel-axis``), since
    a 2- or 3-channel stack cannot be told from a short volume by its shape. ``refuse_time``: a
    TIFF whose axes name a time axis of several frames is refused with advice (the command line,
    which would read it as a volume; the library's ``segment_series`` takes such a stack).
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff(path, keep_channels, refuse_time)
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("LA", "La"):
                im = im.getchannel(0)  # grey + alpha: the alpha channel is no image content
            elif im.mode == "PA":
                im = im.convert("RGBA")
            return np.asarray(im)
    except SpocoError:
        raise
    except FileNotFoundError:
        raise SpocoError(f"{path} does not exist.") from None
    except Exception as exc:
        raise SpocoError(f"Could not read {path} as an image ({_short(exc)}).") from exc


def read_voxel_size(path: str | os.PathLike, ndim: int) -> tuple[float, ...] | None:
    """The pixel spacing a TIFF records, one value per spatial axis (``(Z, Y, X)`` for
    ``ndim=3``, ``(Y, X)`` for 2), in the file's unit: OME ``PhysicalSizeZ/Y/X``, else ImageJ's
    ``spacing`` (Z) with the X/YResolution tags. None when the file records none, or records
    the default 1 pixel per unit everywhere (which says nothing)."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            sizes = _ome_spacing(tif.ome_metadata) if tif.is_ome else {}
            if not sizes:
                sizes = _imagej_spacing(tif)
    except Exception:
        return None
    axes = ("Z", "Y", "X")[-ndim:]
    if not all(a in sizes for a in axes[-2:]):
        return None
    values = tuple(float(sizes.get(a, 1.0)) for a in axes)  # a 3D file without a z spacing: 1
    if not all(np.isfinite(v) and v > 0 for v in values) or all(v == 1.0 for v in values):
        return None
    return values


def _ome_spacing(xml: str | None) -> dict[str, float]:
    import re

    if not xml:
        return {}
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if not pixels:
        return {}
    out = {}
    for axis in "ZYX":
        found = re.search(rf'PhysicalSize{axis}="([^"]+)"', pixels.group(0))
        if found:
            out[axis] = float(found.group(1))
    return out


def _imagej_spacing(tif) -> dict[str, float]:
    page = tif.pages[0]
    out = {}
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        value = page.tags.get(tag)
        if value is not None:
            num, den = value.value
            if num > 0:
                out[axis] = den / num  # the tag holds pixels per unit
    meta = tif.imagej_metadata or {}
    if "spacing" in meta:
        out["Z"] = float(meta["spacing"])
    return out


def check_imagej_whole(tif, path: str | os.PathLike) -> None:
    """Refuse an ImageJ stack cut short: tifffile then falls back to the planes that are there and
    reads e.g. one plane of a 60-plane volume without a word (a copy or save that did not finish)."""
    if not tif.is_imagej or tif.series[0].kind == "imagej":
        return
    counted = (tif.imagej_metadata or {}).get("images")
    series = tif.series[0]
    planes = math.prod(series.shape) // max(1, math.prod(series.keyframe.shape))
    if isinstance(counted, int) and counted > planes:
        raise SpocoError(f"{Path(path).name} is cut short: its ImageJ header counts {counted} planes, the file "
                         f"holds {planes} (a copy or a save that did not finish?); copy or save it again.")


def _read_tiff(path: Path, keep_channels: bool = False, refuse_time: bool = False) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        check_imagej_whole(tif, path)
        series = tif.series[0]
        data = np.asarray(series.asarray())
        axes = series.axes
    if data.ndim == len(axes):
        if ("S" in axes and data.shape[axes.index("S")] in (3, 4) and axes.index("S") != data.ndim - 1
                and not keep_channels):  # with --channel-axis the file's own axis order is kept
            data = np.moveaxis(data, axes.index("S"), -1)  # planar colour → (…, Y, X, 3|4)
            axes = axes.replace("S", "") + "S"
        if refuse_time and "T" in axes and data.shape[axes.index("T")] > 1:
            frames = data.shape[axes.index("T")]
            raise SpocoError(
                f"{path} is a time series of {frames} frames (axes {axes}, shape {data.shape}); the command "
                "line reads a stack as one volume, and would train or segment the frames as 3D. Save each "
                "frame as its own image (e.g. in Fiji: Image > Stacks > Stack to Images), or segment it frame "
                "by frame in napari (the SPOCO panel's '3D stack is 2D+t') or with the library's "
                "segment_series. If the frames are really the slices of a volume, mark them so (Fiji: "
                "Image > Properties, Slices = the frame count, Frames = 1) and save it again."
            )
        if "C" in axes and data.shape[axes.index("C")] > 1 and not keep_channels:
            raise SpocoError(
                f"{path} holds {data.shape[axes.index('C')]} channels (axes {axes}, shape {data.shape}); "
                f"give --channel-axis {axes.index('C')} to train on (or segment with) all of them, or save "
                "the channel to segment as its own image (e.g. in Fiji: Image > Color > Split Channels)."
            )
    return data


def write_labels(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = True) -> Path:
    """Write a label image as a compressed TIFF (uint16/uint32 by id range: label_dtypes.py),
    atomically."""
    import tifffile

    path = Path(path)
    if path.exists() and not overwrite:
        raise SpocoError(f"{path} exists; choose another name or allow overwriting.")
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise SpocoError("Label images cannot hold negative ids.")
    data = as_label_image(labels)
    _atomic_write(path, lambda tmp: tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack"))
    return path


def list_images(folder: str | os.PathLike, zarr: bool = False) -> dict[str, Path]:
    """Image files in ``folder`` by stem (TIFF/PNG, and ``.zarr`` stores when ``zarr``), sorted;
    a missing or empty folder is an error.

    Hidden files are skipped: macOS ``._name.tif`` resource forks and our own unfinished
    ``.name.tmp`` writes are not images. Two files with one stem (``a.tif`` and ``a.png``) are
    refused, since outputs and label pairs are matched by stem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SpocoError(f"{folder} is not a folder.")
    files: dict[str, Path] = {}
    clashes: dict[str, list[str]] = {}
    for p in sorted(folder.iterdir()):
        store = zarr and p.is_dir() and p.suffix.lower() == ".zarr"
        if p.name.startswith(".") or not (store or (p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())):
            continue
        if p.stem in files:
            clashes.setdefault(p.stem, [files[p.stem].name]).append(p.name)
            continue
        files[p.stem] = p
    if clashes:
        stem, names = next(iter(clashes.items()))
        raise SpocoError(
            f"{folder}: {' and '.join(names)} share the name {stem!r} (files are matched and "
            f"outputs named by the name without extension); rename or move one"
            f"{f' ({len(clashes)} such names)' if len(clashes) > 1 else ''}."
        )
    if not files:
        raise SpocoError(f"No .tif/.tiff/.png images{' or .zarr stores' if zarr else ''} in {folder}.")
    return files


#: Words that labs append to a file's name to say what it holds (``plant001_rgb.png`` /
#: ``plant001_label.png``, Cellpose's ``_masks``, ``_gt``): an image and its labels whose names
#: differ only by such a tag are a pair.
NAME_TAGS = ("labels", "label", "masks", "mask", "seg", "segmentation", "instances", "gt", "groundtruth",
             "ground_truth", "truth", "annotation", "annotations", "rgb", "img", "image", "raw", "pred",
             "prediction", "predictions")
#: The tags of :data:`NAME_TAGS` that mark a label (or prediction) file, and those of a prediction.
LABEL_TAGS = frozenset(NAME_TAGS) - {"rgb", "img", "image", "raw"}
PREDICTION_TAGS = frozenset({"pred", "prediction", "predictions"})
_TAG = re.compile(r"^(?P<base>.+?)[_\-.](?:cp_)?(?P<tag>" + "|".join(NAME_TAGS) + r")$", re.IGNORECASE)


def name_without_tag(stem: str) -> str:
    """``stem`` without one trailing tag of :data:`NAME_TAGS` (``plant001_rgb`` -> ``plant001``)."""
    found = _TAG.match(stem)
    return found.group("base") if found else stem


def _by_untagged_name(stems) -> dict[str, list[str]]:
    """``stems`` grouped by their names without a tag (:func:`name_without_tag`)."""
    groups: dict[str, list[str]] = {}
    for stem in stems:
        groups.setdefault(name_without_tag(stem), []).append(stem)
    return groups


def split_by_label_tags(files: dict[str, Path], tags=LABEL_TAGS) -> tuple[dict[str, Path], dict[str, Path]]:
    """(images, labels) of one folder that holds both, as CVPPP (``plant001_rgb.png``,
    ``plant001_label.png``) and Cellpose (``x.tif``, ``x_masks.tif``) keep them: files whose
    name ends in one of ``tags`` (:data:`LABEL_TAGS`) are labels, the others images."""
    def is_label(stem: str) -> bool:
        found = _TAG.match(stem)
        return bool(found) and found.group("tag").lower() in tags

    return ({s: p for s, p in files.items() if not is_label(s)}, {s: p for s, p in files.items() if is_label(s)})


def pair_by_tags(images: dict[str, Path], labels: dict[str, Path]) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """``labels`` with the files that no image shares a name with re-keyed to the image whose name
    is the same without a tag (``plant001_rgb`` and ``plant001_label``), or which is the label's
    name without its tag (``plant001_rgb`` and ``plant001_rgb_label``, either way round), and those
    (image, label) name pairs. An exact match always wins, then a whole name and a tag; among
    the files they leave, names that are ambiguous (two images, or two label files, alike without
    their tags) are left as they are."""
    exact = set(images) & set(labels)

    def unique(stems) -> dict[str, str]:
        return {k: v[0] for k, v in _by_untagged_name(stems).items() if len(v) == 1}

    # a label named after an image's whole name and a tag, or (evaluate passes the ground truth as
    # the images) an image named after a label's whole name and a tag
    groups = _by_untagged_name(s for s in labels if s not in exact)
    whole_name = [(i, groups[i][0]) for i in images if i not in exact and len(groups.get(i, ())) == 1]
    used = {lab for _, lab in whole_name}
    groups = _by_untagged_name(s for s in images if s not in exact and s not in {i for i, _ in whole_name})
    whole_name += [(groups[lab][0], lab) for lab in labels
                   if lab not in exact and lab not in used and len(groups.get(lab, ())) == 1]
    taken = exact | {i for i, _ in whole_name} | {lab for _, lab in whole_name}
    image_keys = unique(s for s in images if s not in taken)
    label_keys = unique(s for s in labels if s not in taken)
    moved = sorted(whole_name + [(image_keys[k], label_keys[k]) for k in set(image_keys) & set(label_keys)])
    if not moved:
        return labels, []
    renamed = {label for _, label in moved}
    out = {s: p for s, p in labels.items() if s not in renamed}
    out.update({image: labels[label] for image, label in moved})
    return out, moved


def without_files_of(files: dict[str, Path], others: dict[str, Path]) -> dict[str, Path]:
    """``files`` without those that are one of ``others`` (a folder given on one side and one of
    its files on the other: the folder's copy of that file is not its partner)."""
    taken = {p.resolve() for p in others.values()}
    return {s: p for s, p in files.items() if p.resolve() not in taken}


def _clash(files: dict[str, Path]) -> str:
    """Words naming two of ``files`` that are alike without their tags (which keeps them unpaired), or ""."""
    alike = next((v for v in _by_untagged_name(files).values() if len(v) > 1), None)
    return f"; {' and '.join(alike[:2])} are alike but for their tags, so neither is paired: rename one" if alike else ""


def match_pairs(images: dict[str, Path], labels: dict[str, Path], what: str = "labels") -> list[tuple[str, Path, Path]]:
    """Pair files by stem; refuse when nothing matches, report unmatched images."""
    common = sorted(set(images) & set(labels))
    if not common:
        raise SpocoError(
            f"No image has {what} with the same file name stem, nor (one to one) a name that differs only by a "
            f"tag such as _label or _masks (images: {', '.join(list(images)[:3])}…; {what}: "
            f"{', '.join(list(labels)[:3])}…){_clash(images) or _clash(labels)}."
        )
    return [(s, images[s], labels[s]) for s in common]


#: Room a model file needs (the CPU default is about 1 MB; the reference network about 30 MB).
MODEL_FILE_ROOM = 64 * 2**20


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_file(
    path: str | os.PathLike, overwrite: bool, inputs: tuple = (), room: int = MODEL_FILE_ROOM
) -> Path:
    """Refuse an output file before any work starts: one that exists (without ``overwrite``),
    is a folder, is one of ``inputs``, or lies in a folder that cannot be written or is full.

    The parent folder is created if needed; writing is proven by creating and removing a
    hidden probe file there (permission bits say little when running as root or on network
    file systems).
    """
    out = Path(path)
    for source in inputs:
        if source is not None and _same_file(out, Path(source)):
            raise SpocoError(f"{out} is also an input of this command; write the output to another file.")
    if out.is_dir():
        raise SpocoError(f"{out} is a folder; give a file name (e.g. {out / 'model.spoco.pt'}).")
    if out.exists() and not overwrite:
        raise SpocoError(f"{out} exists; pass --overwrite to replace it or choose another --out.")
    check_output_folder(out.parent if str(out.parent) else Path("."), room=room, what=f"{out}")
    return out


def _file_in_the_way(folder: Path) -> Path:
    """The nearest of ``folder`` and its parents that exists and is not a folder (what stops
    ``mkdir``): for ``a.tif/sub/out`` it is ``a.tif``, which the user must be told about."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate if not candidate.is_dir() else folder
    return folder


def check_output_folder(folder: str | os.PathLike, room: int = MODEL_FILE_ROOM, what: str | None = None) -> Path:
    """Create ``folder`` if needed and prove that a file can be written there with ``room``
    bytes free; otherwise a :class:`SpocoError` that says why, before any work is done."""
    folder = Path(folder)
    what = what or str(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = _file_in_the_way(folder)
        raise SpocoError(f"Cannot write {what}: {blocker} is a file, not a folder; "
                         "choose another location or move that file away.") from None
    except OSError as exc:
        raise SpocoError(f"Cannot write {what}: could not create the folder {folder} ({exc.strerror or exc}).") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".napari-spoco-probe-", dir=folder)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise SpocoError(
            f"Cannot write {what}: the folder {folder} is not writable ({exc.strerror or exc}); "
            "choose another location."
        ) from None
    try:
        import shutil

        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < room:
        raise SpocoError(
            f"Cannot write {what}: only {free / 2**20:.0f} MB are free in {folder}; free some space "
            "or choose another location."
        )
    return folder


def rescue_path(out: Path) -> Path:
    """Where a trained model goes when its own destination fails at the end (disk full,
    folder removed): the working folder, else the temporary folder; never an existing file."""
    import time

    name = f"{out.name.split('.')[0] or 'model'}-rescued-{time.strftime('%Y%m%d-%H%M%S')}.spoco.pt"
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            check_output_folder(folder, what="the rescued model")
        except SpocoError:
            continue
        candidate, i = folder / name, 1
        while candidate.exists():
            candidate, i = folder / name.replace(".spoco.pt", f"-{i}.spoco.pt"), i + 1
        return candidate
    raise SpocoError("No writable folder was found to rescue the model into.")
