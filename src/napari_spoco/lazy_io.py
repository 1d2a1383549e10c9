"""Images too large to read whole: OME-Zarr, zarr arrays and big TIFFs opened lazily, and zarr
label stores written block by block.

Only regions are ever read (:meth:`LazyImage.read`), so a volume of any size costs the memory
of one block. Readers hold paths, not open files: they pickle to worker processes and to a dask
cluster, where each process opens the file once. Label output is zarr (format 2, chunked like
the segmentation blocks, so that each block writes whole chunks of its own); for OME-Zarr input
it is an OME-Zarr label image (NGFF 0.4 ``multiscales`` + ``image-label``) with the input's
axes and scale.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SpocoError

ZARR_SUFFIX = ".zarr"
SPATIAL = "zyx"


def _zarr():
    """The zarr package, or advice where it is missing (zarr 3 needs Python 3.11)."""
    try:
        import zarr
    except ImportError:
        raise SpocoError("Large images and zarr stores need the zarr package (zarr 3, Python >= 3.11): "
                         "pip install 'zarr>=3'.") from None
    return zarr


def is_zarr(path: str | os.PathLike) -> bool:
    """A zarr store (``.zarr`` folder, or any folder holding zarr metadata)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() == ZARR_SUFFIX or any((p / m).exists() for m in (".zarray", ".zgroup", "zarr.json"))


class _PathArray:
    """Regions of an array in a file, opened on first use in each process: pickles as its path."""

    def __init__(self) -> None:
        self._array = None
        a = self.array
        self.shape, self.dtype = tuple(a.shape), np.dtype(a.dtype)
        self.chunks = tuple(getattr(a, "chunks", self.shape))

    def _open(self):
        raise NotImplementedError

    @property
    def array(self):
        if self._array is None:
            self._array = self._open()
        return self._array

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.array[key])

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_array"} | {"_array": None}


class ZarrSource(_PathArray):
    """Regions of a zarr array on disk."""

    def __init__(self, path: str, array_path: str = ""):
        self.path, self.array_path = str(path), array_path
        super().__init__()

    def _open(self):
        return _zarr().open_array(store=self.path, path=self.array_path or None, mode="r")


class _ContiguousTiff:
    """An uncompressed TIFF series stored in one run of bytes, read region by region from a
    memory map opened for each read (and closed after it, so that the pages read do not stay in
    the process's memory). tifffile's zarr store sees such a series as one chunk per strip, and
    ImageJ and ``tifffile.memmap`` write big images as one strip per plane: through the store every
    region of a 2D image would read the whole file."""

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape = path, offset, tuple(shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")  # what reads return (the file's order is kept apart)
        self._stored = np.dtype(dtype)
        self.chunks = self.shape

    def __getitem__(self, key) -> np.ndarray:
        import mmap

        start = self.offset - self.offset % mmap.ALLOCATIONGRANULARITY  # a map starts on a page
        count = math.prod(self.shape)  # Python ints: numpy's default integer is 32 bits on some platforms
        length = self.offset - start + count * self._stored.itemsize
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size < start + length:  # replaced or cut since it was opened
                raise SpocoError(f"{Path(self.path).name} changed while it was being read (it is shorter than "
                                 "when it was opened); let whatever writes it finish, then run again.")
            mapped = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=start)
        with mapped:
            whole = np.frombuffer(mapped, self._stored, count, self.offset - start).reshape(self.shape)
            try:
                return np.array(whole[key], dtype=self.dtype)
            finally:
                del whole  # the map closes only once no array looks into it (also when the copy failed)


def contiguous_tiff(path: str) -> _ContiguousTiff | None:
    """The first series of the TIFF at ``path`` as a :class:`_ContiguousTiff` where it is stored
    uncompressed in one run of bytes of this file (at full resolution) and the file system maps
    files, else None (tifffile's zarr store reads it then)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        level = series.levels[0] if getattr(series, "levels", None) else series
        offset = level.dataoffset
        if (offset is None or math.prod(level.shape) == 0 or level.is_multifile
                or getattr(level.keyframe, "parent", tif) is not tif):  # OME series in other files: theirs
            return None
        dtype = np.dtype(tif.byteorder + level.dtype.char)
        need, have = int(offset) + math.prod(level.shape) * dtype.itemsize, os.path.getsize(path)
    if have < need:
        raise SpocoError(f"{Path(path).name} is cut short: its pixels need {need:,} bytes, the file holds {have:,} "
                         "(a copy or a save that did not finish?); copy or save it again.")
    source = _ContiguousTiff(path, int(offset), tuple(level.shape), dtype)
    try:
        source[tuple(slice(0, 1) for _ in source.shape)]  # some network and FUSE file systems refuse maps
    except OSError:
        return None
    return source


class TiffSource(_PathArray):
    """Regions of a TIFF's first series (full resolution): from a memory map where the series is
    stored uncompressed in one run of bytes, else through tifffile's zarr store, where tiles and
    strips are decoded only where a region needs them."""

    def __init__(self, path: str):
        self.path = str(path)
        super().__init__()

    def _open(self):
        import tifffile

        contiguous = contiguous_tiff(self.path)
        if contiguous is not None:
            return contiguous
        store = tifffile.imread(self.path, aszarr=True, series=0, level=0)
        z = _zarr().open(store, mode="r")
        return z if hasattr(z, "shape") else z["0"]


@dataclass
class LazyImage:
    """An image on disk, opened without reading it.

    ``axes`` names the source array's axes (``t``, ``c``, ``z``, ``y``, ``x``, and ``s`` for
    colour samples); a time axis of length 1 is dropped when reading, longer ones are refused.
    """

    source: object  # ZarrSource, TiffSource, or any array with shape/dtype/__getitem__
    axes: str
    path: Path | None = None
    kind: str = "array"  # "ome-zarr", "zarr", "tiff" or "array"
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        if len(self.axes) != len(self.source.shape):
            raise SpocoError(f"{self.name}: axes {self.axes!r} do not fit its shape {tuple(self.source.shape)}.")
        if "t" in self.axes and self.source.shape[self.axes.index("t")] > 1:
            raise SpocoError(f"{self.name} holds {self.source.shape[self.axes.index('t')]} time points; segment "
                             "them one by one (save each as its own image), or give the array of one time point.")
        if 0 in tuple(self.source.shape):
            raise SpocoError(f"{self.name} holds no pixels (shape {tuple(self.source.shape)}).")
        spatial = [a for a in self.axes if a in SPATIAL]
        if len(spatial) not in (2, 3):
            raise SpocoError(f"{self.name}: expected 2 or 3 spatial axes, got axes {self.axes!r} "
                             f"(shape {tuple(self.source.shape)}).")

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "image"

    @property
    def _kept(self) -> str:
        return self.axes.replace("t", "")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(n for a, n in zip(self.axes, self.source.shape) if a in SPATIAL)

    @property
    def ndim(self) -> int:
        return len(self.spatial_shape)

    @property
    def channel_axis(self) -> int | None:
        """Axis of :meth:`read`'s arrays that holds channels (``c``; colour ``s`` counts when it
        is not last, where it reads as colour), None without one."""
        kept = self._kept
        if "c" in kept:
            return kept.index("c")
        if "s" in kept and kept.index("s") != len(kept) - 1:
            return kept.index("s")
        return None

    @property
    def voxels(self) -> int:
        return int(np.prod(self.spatial_shape))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.source.shape)) * np.dtype(self.source.dtype).itemsize

    def read(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """The pixels inside ``region`` (spatial slices; None: all), channels kept where they are."""
        region = tuple(region) if region is not None else tuple(slice(None) for _ in self.spatial_shape)
        it = iter(region)
        key = tuple(0 if a == "t" else next(it) if a in SPATIAL else slice(None) for a in self.axes)
        return np.asarray(self.source[key])


def open_lazy(path: str | os.PathLike) -> LazyImage:
    """Open an OME-Zarr image, a zarr array or a TIFF without reading its pixels.

    OME-Zarr (NGFF 0.4 or 0.5): the full-resolution level, its axes and scale. A plain zarr
    array: axes taken as ``(c,) (z,) y x`` by its dimensionality (``zyx`` for 3D). TIFF: the
    first series at full resolution, axes from tifffile.
    """
    p = Path(path)
    if not p.exists():
        raise SpocoError(f"{p} does not exist.")
    try:
        if p.is_dir():
            return _open_zarr(p)
        if p.suffix.lower() in (".tif", ".tiff"):
            return _open_tiff(p)
    except SpocoError:
        raise
    except Exception as exc:
        raise SpocoError(f"Could not open {p} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                         "an OME-Zarr image, a zarr array or a TIFF is expected: check that the file or store was "
                         "written completely, or give the array inside a zarr group.") from exc
    raise SpocoError(f"{p} is neither a zarr store nor a TIFF; large images are read from OME-Zarr, zarr or TIFF.")


def _open_zarr(p: Path) -> LazyImage:
    zarr = _zarr()
    node = zarr.open(store=str(p), mode="r")
    if hasattr(node, "shape"):  # a bare array
        axes = {2: "yx", 3: "zyx", 4: "czyx"}.get(len(node.shape))
        if axes is None:
            raise SpocoError(f"{p}: a zarr array of shape {node.shape}; expected (Y, X), (Z, Y, X) or (C, Z, Y, X).")
        return LazyImage(ZarrSource(str(p)), axes, p, "zarr")
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests its metadata under "ome"
    multiscales = ome.get("multiscales")
    if not multiscales:
        arrays = sorted(k for k, _ in node.arrays())
        hint = (f": it holds the arrays {', '.join(arrays[:5])}; give one, e.g. {p / arrays[0]}" if arrays else
                ", and it holds no array: give the store or array that holds the image (an OME-Zarr image, or "
                "a zarr array)")
        raise SpocoError(f"{p} is a zarr group without OME-Zarr metadata{hint}.")
    ms = multiscales[0]
    axes_meta = ms.get("axes") or [{"name": a} for a in "tczyx"[-len(node[ms['datasets'][0]['path']].shape):]]
    names = "".join(str(a["name"] if isinstance(a, dict) else a).lower()[:1] for a in axes_meta)
    dataset = ms["datasets"][0]
    scale = None
    for t in dataset.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
    voxel = tuple(s for a, s in zip(names, scale) if a in SPATIAL) if scale else None
    units = {a.get("unit") for a in axes_meta if isinstance(a, dict) and a.get("type") == "space"} - {None}
    image = LazyImage(ZarrSource(str(p), dataset["path"]), names, p, "ome-zarr",
                      voxel if voxel and any(v != 1.0 for v in voxel) else None,
                      units.pop() if len(units) == 1 else None)
    return image


def _open_tiff(p: Path) -> LazyImage:
    import tifffile

    from .io import check_imagej_whole

    with tifffile.TiffFile(p) as tif:
        check_imagej_whole(tif, p)
        axes = tif.series[0].axes.lower()
    source = TiffSource(str(p))
    if len(axes) != source.ndim:
        axes = {2: "yx", 3: "zyx"}.get(source.ndim, axes)
    axes = axes.replace("q", "z").replace("i", "z")  # tifffile's unnamed stack axes: image planes
    from .io import read_voxel_size

    kept = [a for a in axes if a in SPATIAL]
    return LazyImage(source, axes, p, "tiff", read_voxel_size(p, len(kept)) if len(kept) in (2, 3) else None)


def create_label_store(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    like: LazyImage | None = None,
    dtype=np.uint32,
    unfinished: bool = False,
):
    """A new zarr label array at ``path`` (which must not exist), chunked as ``chunks``.

    When ``like`` is OME-Zarr, ``path`` becomes an OME-Zarr label image (NGFF 0.4: group with
    ``multiscales`` of one level ``0`` and ``image-label`` metadata) with ``like``'s spatial
    axes, units and scale; otherwise a plain zarr array. Returns the writable array.
    ``unfinished``: the store is marked as being written, by this machine and process, until
    :func:`mark_complete` (so that a store a kill cut short can be told from a whole one).
    """
    array = _create_label_store(path, shape, chunks, like, dtype)
    if unfinished:
        _zarr().open(store=str(path), mode="r+").attrs.update(
            {COMPLETE_ATTR: False, WRITER_ATTR: f"{HOST}-{os.getpid()}"})
    return array


def _create_label_store(path, shape, chunks, like, dtype):
    zarr = _zarr()
    path = Path(path)
    if path.exists():
        raise SpocoError(f"{path} exists already.")
    common = dict(shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=0, zarr_format=2,
                  chunk_key_encoding={"name": "v2", "separator": "/"})
    if like is None or like.kind != "ome-zarr":
        return zarr.create_array(store=str(path), **common)
    group = zarr.open_group(store=str(path), mode="w", zarr_format=2)
    axes = [a for a in like.axes if a in SPATIAL]
    scale = list(like.voxel_size) if like.voxel_size else [1.0] * len(axes)
    group.attrs.update({
        "multiscales": [{
            "version": "0.4",
            "name": path.stem,
            "axes": [{"name": a, "type": "space", **({"unit": like.unit} if like.unit else {})} for a in axes],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }],
        "image-label": {"version": "0.4", "source": {"image": str(like.path) if like.path else ""}},
    })
    return group.create_array("0", **{k: v for k, v in common.items() if k != "zarr_format"})


def open_label_store(path: str | os.PathLike, writable: bool = False):
    """The label array of a store written by :func:`create_label_store`."""
    path = Path(path)
    node = _zarr().open(store=str(path), mode="r+" if writable else "r")
    return node if hasattr(node, "shape") else node["0"]


#: On a label store's root: False (with :data:`WRITER_ATTR`) while ``segment_blockwise`` writes
#: it, True once the whole result is in. A store left False was cut short (a kill, a power cut) or
#: has parts that failed, so ``predict --skip-existing`` does it again; a store without it was
#: written by an earlier version or another tool, and is taken as whole.
COMPLETE_ATTR = "napari_spoco_complete"
WRITER_ATTR = "napari_spoco_writer"  # "<host>-<process id>" of the run writing it
#: This machine, as it names itself in marks and hidden file names (process ids are per machine).
HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def mark_complete(path: str | os.PathLike) -> None:
    """Record in a label store that it holds a whole result (:data:`COMPLETE_ATTR`)."""
    node = _zarr().open(store=str(path), mode="r+")
    node.attrs.update({COMPLETE_ATTR: True, WRITER_ATTR: None})


def store_marks(path: str | os.PathLike) -> tuple[bool | None, str | None] | None:
    """A label store's :data:`COMPLETE_ATTR` and :data:`WRITER_ATTR` (None where absent), or None
    when it cannot be opened as a zarr store at all."""
    try:
        attrs = _zarr().open(store=str(path), mode="r").attrs
        return attrs.get(COMPLETE_ATTR), attrs.get(WRITER_ATTR)
    except Exception:  # noqa: BLE001 - any reader error: not a store we can judge
        return None


def remove_store(path: str | os.PathLike) -> None:
    """Delete a zarr store (a folder) or a file, if there."""
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


#: A stored piece (chunk, strip, tile) larger than this is worth a word: every block that touches
#: it decodes all of it, which costs time and as much memory in each worker.
LARGE_PIECE = 256 * 2**20


def large_pieces_note(image: LazyImage) -> str:
    """A sentence for the user where ``image`` is stored compressed in pieces so large that
    block-wise reading decodes far more than each block (a TIFF written as one compressed strip
    per plane, a zarr array with huge chunks), with what to do; "" otherwise."""
    source = image.source
    if not isinstance(source, _PathArray) or isinstance(source.array, _ContiguousTiff):
        return ""
    piece = math.prod(source.chunks) * source.dtype.itemsize
    if piece <= LARGE_PIECE:
        return ""
    fix = ("save it tiled (e.g. tifffile.imwrite(path, data, tile=(512, 512), compression='zlib')) or as "
           "OME-Zarr" if image.kind == "tiff" else "rechunk it (e.g. 1024² in 2D, 128³ in 3D)")
    return (f"{image.name} is stored in pieces of {piece / 2**20:,.0f} MB, each read whole for every block "
            f"that touches it: slow, and that much memory per worker; {fix} to read it region by region.")


def describe(image: LazyImage) -> str:
    """One line for logs: kind, axes, shape and spacing."""
    spacing = "" if not image.voxel_size else " at " + " x ".join(f"{v:g}" for v in image.voxel_size) + (
        f" {image.unit}" if image.unit else "")
    return f"{image.kind} {image.axes} {tuple(image.source.shape)}{spacing}"
