"""Large images on disk: OME-Zarr, zarr arrays and TIFFs opened without reading them, label
stores written as (OME-)zarr, and ``predict`` on them (block by block, workers, output formats)."""

import json
import os
import sys

import numpy as np
import pytest
import tifffile

zarr = pytest.importorskip("zarr")

from napari_spoco.cli import main  # noqa: E402
from napari_spoco.errors import SpocoError  # noqa: E402
from napari_spoco.io import save_model  # noqa: E402
from napari_spoco.lazy_io import create_label_store, is_zarr, open_label_store, open_lazy  # noqa: E402
from napari_spoco.pretrained import load_default_model  # noqa: E402
from napari_spoco.sample import load_sample  # noqa: E402


def write_ome_zarr(path, data, axes="yx", scale=None, unit="micrometer", version="0.4"):
    """A minimal OME-Zarr image (one resolution level)."""
    fmt = 2 if version == "0.4" else 3
    group = zarr.open_group(store=str(path), mode="w", zarr_format=fmt)
    ms = {"version": version, "axes": [{"name": a, "type": "channel" if a == "c" else "time" if a == "t" else "space",
                                         **({"unit": unit} if a in "zyx" else {})} for a in axes],
          "datasets": [{"path": "0", "coordinateTransformations": [
              {"type": "scale", "scale": list(scale or [1.0] * len(axes))}]}]}
    if version == "0.4":
        group.attrs["multiscales"] = [ms]
    else:
        group.attrs["ome"] = {"version": version, "multiscales": [{k: v for k, v in ms.items() if k != "version"}]}
    group.create_array("0", data=data, chunks=tuple(min(n, 64) for n in data.shape))
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_is_opened_lazily_with_its_axes_and_scale(tmp_path, version):
    data = np.arange(2 * 30 * 40, dtype=np.uint16).reshape(1, 2, 30, 40)
    path = write_ome_zarr(tmp_path / "img.zarr", data, axes="tcyx", scale=[1, 1, 0.5, 0.25], version=version)
    image = open_lazy(path)
    assert is_zarr(path) and image.kind == "ome-zarr"
    assert image.spatial_shape == (30, 40) and image.channel_axis == 0 and image.voxel_size == (0.5, 0.25)
    assert image.unit == "micrometer"
    assert np.array_equal(image.read((slice(3, 7), slice(10, 12))), data[0, :, 3:7, 10:12])


def test_a_time_series_and_a_group_without_metadata_are_refused_with_advice(tmp_path):
    path = write_ome_zarr(tmp_path / "movie.zarr", np.zeros((3, 20, 20), np.uint8), axes="tyx")
    with pytest.raises(SpocoError, match="3 time points"):
        open_lazy(path)
    group = zarr.open_group(store=str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("raw", data=np.zeros((8, 8), np.uint8))
    with pytest.raises(SpocoError, match="raw"):
        open_lazy(tmp_path / "plain.zarr")
    assert open_lazy(tmp_path / "plain.zarr" / "raw").spatial_shape == (8, 8)
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(SpocoError, match="Could not open"):
        open_lazy(tmp_path / "junk.tif")


def test_tiff_regions_are_read_through_tifffiles_zarr_store(tmp_path):
    data = np.random.default_rng(0).integers(0, 4000, (12, 70, 90), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", data, tile=(32, 32), imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.5, "axes": "ZYX"})
    image = open_lazy(tmp_path / "v.tif")
    assert image.kind == "tiff" and image.spatial_shape == (12, 70, 90)
    assert image.voxel_size == pytest.approx((1.5, 0.5, 0.5))
    assert np.array_equal(image.read((slice(2, 5), slice(30, 40), slice(0, 90))), data[2:5, 30:40])
    import pickle

    again = pickle.loads(pickle.dumps(image))  # as worker processes receive it: by path
    assert np.array_equal(again.read((slice(0, 1), slice(0, 5), slice(0, 5))), data[:1, :5, :5])


@pytest.mark.parametrize("layout", ["2d", "3d-imagej", "rgb", "planar-rgb", "big-endian", "far-offset"])
def test_uncompressed_tiffs_are_read_region_by_region_not_whole(tmp_path, monkeypatch, layout):
    """An uncompressed TIFF in one run of bytes (ImageJ's and tifffile.memmap's big files) is one
    chunk per plane to tifffile's zarr store, so every region read the whole image: 1.4 s per
    block of a 40 000² image, and a 10 GB one minutes before the first block. Such files are read
    from a memory map now, without the store; the pixels must be the same."""
    import tifffile as tf

    from napari_spoco import lazy_io

    rng = np.random.default_rng(1)
    shape = {"3d-imagej": (7, 50, 60), "rgb": (40, 50, 3), "planar-rgb": (3, 40, 50), "big-endian": (64, 48)}.get(
        layout, (90, 130))
    data = rng.integers(0, 60000, shape).astype(np.uint8 if "rgb" in layout else np.uint16)
    kwargs = {"3d-imagej": {"imagej": True, "metadata": {"axes": "ZYX"}}, "rgb": {"photometric": "rgb"},
              "planar-rgb": {"photometric": "rgb", "planarconfig": "separate"}, "big-endian": {"byteorder": ">"},
              "far-offset": {"description": "x" * 200_000}}.get(layout, {})  # pixels past the first map page
    tf.imwrite(tmp_path / "v.tif", data, **kwargs)

    def no_store(*args, **kw):
        raise AssertionError("read through the zarr store")

    monkeypatch.setattr(tf, "imread", no_store)
    image = open_lazy(tmp_path / "v.tif")
    if layout == "far-offset":
        assert lazy_io.contiguous_tiff(str(tmp_path / "v.tif")).offset > 200_000
    region = tuple(slice(1, n - 2) for n in image.spatial_shape)
    got = image.read(region)
    want = data[(slice(None),) + region] if layout == "planar-rgb" else data[region]
    assert got.dtype == data.dtype.newbyteorder("=") and np.array_equal(got, want)
    import pickle

    again = pickle.loads(pickle.dumps(image))  # by path, to worker processes
    assert np.array_equal(again.read(region), want)
    # compressed TIFFs still go through the store, which decodes only the strips a region needs
    tf.imwrite(tmp_path / "c.tif", data, compression="zlib", **kwargs)
    assert lazy_io.contiguous_tiff(str(tmp_path / "c.tif")) is None


def test_a_tiff_compressed_in_huge_strips_is_named_with_what_to_do(tmp_path, monkeypatch, capsys):
    from napari_spoco import lazy_io

    data = np.random.default_rng(2).integers(0, 4000, (256, 256), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "strip.tif", data, compression="zlib", rowsperstrip=256)  # one strip
    tifffile.imwrite(tmp_path / "tiled.tif", data, compression="zlib", tile=(64, 64))
    tifffile.imwrite(tmp_path / "plain.tif", data)  # uncompressed: memory-mapped, no note
    monkeypatch.setattr(lazy_io, "LARGE_PIECE", 64 * 64 * 2)
    note = lazy_io.large_pieces_note(open_lazy(tmp_path / "strip.tif"))
    assert "strip.tif is stored in pieces" in note and "tile=(512, 512)" in note
    assert lazy_io.large_pieces_note(open_lazy(tmp_path / "tiled.tif")) == ""
    assert lazy_io.large_pieces_note(open_lazy(tmp_path / "plain.tif")) == ""
    (tmp_path / "in").mkdir()
    (tmp_path / "strip.tif").rename(tmp_path / "in" / "strip.tif")
    code = main(["predict", "--model", str(_model_file(tmp_path)), "--images", str(tmp_path / "in"),
                 "--out", str(tmp_path / "out"), "--block-shape", "128", "128"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: strip.tif is stored in pieces" in err, err


def test_a_cut_short_imagej_stack_is_named_not_read_as_fewer_planes(tmp_path):
    """tifffile falls back to the planes that are there when an ImageJ stack is cut short: one
    plane of five came back as a 2D image, block by block and whole."""
    from napari_spoco.io import read_image

    tifffile.imwrite(tmp_path / "s.tif", np.ones((5, 64, 64), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    whole = (tmp_path / "s.tif").read_bytes()
    (tmp_path / "s.tif").write_bytes(whole[: len(whole) // 2])
    for read in (open_lazy, read_image):
        with pytest.raises(SpocoError, match="ImageJ header counts 5 planes, the file holds"):
            read(tmp_path / "s.tif")


def test_an_image_without_pixels_is_named(tmp_path):
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((0, 10), np.uint8))
    with pytest.raises(SpocoError, match="zero.tif holds no pixels"):  # was a ZeroDivisionError per image
        open_lazy(tmp_path / "zero.tif")


def test_a_tiff_cut_while_it_is_read_is_named(tmp_path):
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    tifffile.imwrite(tmp_path / "grow.tif", data)
    image = open_lazy(tmp_path / "grow.tif")
    assert np.array_equal(image.read((slice(0, 8), slice(0, 8))), data[:8, :8])
    whole = (tmp_path / "grow.tif").read_bytes()
    (tmp_path / "grow.tif").write_bytes(whole[:1000])  # another program rewrites it meanwhile
    with pytest.raises(SpocoError, match="grow.tif changed while it was being read"):
        image.read((slice(0, 64), slice(0, 64)))


def test_a_cut_short_uncompressed_tiff_is_named_as_such(tmp_path):
    tifffile.imwrite(tmp_path / "cut.tif", np.ones((64, 64), np.uint16))
    whole = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) - 100])
    with pytest.raises(SpocoError, match="cut.tif is cut short"):
        open_lazy(tmp_path / "cut.tif")


def test_label_stores_follow_an_ome_zarr_inputs_axes_and_scale(tmp_path):
    src = open_lazy(write_ome_zarr(tmp_path / "img.zarr", np.zeros((20, 30, 40), np.uint8), axes="zyx",
                                   scale=[2.0, 0.5, 0.5]))
    store = create_label_store(tmp_path / "labels.zarr", (20, 30, 40), (10, 16, 16), like=src)
    store[0:10, 0:16, 0:16] = 7
    attrs = json.loads((tmp_path / "labels.zarr" / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"] and ms["axes"][0]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]
    assert "image-label" in attrs
    back = open_lazy(tmp_path / "labels.zarr")
    assert back.voxel_size == (2.0, 0.5, 0.5) and open_label_store(tmp_path / "labels.zarr")[0, 0, 0] == 7
    with pytest.raises(SpocoError, match="exists"):
        create_label_store(tmp_path / "labels.zarr", (20, 30, 40), (10, 16, 16))


def _model_file(tmp_path):
    path = tmp_path / "model.spoco.pt"
    save_model(load_default_model(2), path)
    return path


def test_predict_segments_a_zarr_store_block_by_block_into_zarr(tmp_path, capsys):
    s = load_sample()
    images = tmp_path / "images"
    images.mkdir()
    write_ome_zarr(images / "big.zarr", s.test_image, scale=[0.3, 0.3])
    tifffile.imwrite(images / "small.tif", s.test_image)
    model = _model_file(tmp_path)
    args = ["predict", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "out"),
            "--block-shape", "128", "128"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "big: " in err and "4 blocks" in err and "block by block" in err
    labels = open_label_store(tmp_path / "out" / "big.zarr")
    assert labels.shape == s.test_image.shape and labels.chunks == (128, 128)
    assert open_lazy(tmp_path / "out" / "big.zarr").voxel_size == (0.3, 0.3)  # OME-Zarr in, OME-Zarr out
    # --block-shape sends TIFFs block by block too; small results come back as TIFF
    small = tifffile.imread(tmp_path / "out" / "small.tif")
    assert small.max() > 5 and not list((tmp_path / "out").glob(".*"))
    from napari_spoco import evaluate

    assert evaluate(small, np.asarray(labels[...]))["AP50"] == 1.0  # one engine, same image, same labels
    # existing outputs are not replaced unasked; --overwrite replaces the store
    assert main(args) == 2 and "exist already" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_predict_takes_an_array_inside_a_zarr_group_as_its_advice_says(tmp_path, capsys):
    s = load_sample()
    group = zarr.open_group(store=str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("raw", data=s.test_image, chunks=(128, 128))
    model = _model_file(tmp_path)
    base = ["predict", "--model", str(model), "--out", str(tmp_path / "out")]
    assert main(base + ["--images", str(tmp_path / "plain.zarr")]) == 1  # the group: skipped, with advice
    advice = capsys.readouterr().err
    assert "plain.zarr/raw" in advice and "Traceback" not in advice
    assert main(base + ["--images", str(tmp_path / "plain.zarr" / "raw")]) == 0  # the array the advice names
    labels = open_label_store(tmp_path / "out" / "raw.zarr")
    assert labels.shape == s.test_image.shape and int(np.asarray(labels[...]).max()) > 5


def test_a_tiff_cut_short_fails_alone_in_a_block_by_block_batch(tmp_path, capsys):
    s = load_sample()
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "good.tif", s.test_image)
    tifffile.imwrite(images / "cut.tif", s.test_image)
    whole = (images / "cut.tif").read_bytes()
    (images / "cut.tif").write_bytes(whole[: len(whole) // 2])  # header intact, half its pixels missing
    model = _model_file(tmp_path)
    code = main(["predict", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "out"),
                 "--block-shape", "128", "128"])
    err = capsys.readouterr().err
    assert code == 1 and "1 of 2 images failed" in err, err
    assert "cut.tif" in err.split("failed and were skipped")[-1] and "unexpected error" not in err
    assert tifffile.imread(tmp_path / "out" / "good.tif").max() > 5 and not (tmp_path / "out" / "cut.tif").exists()


def test_predict_spreads_a_batch_over_worker_processes(tmp_path, capsys):
    s = load_sample()
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        tifffile.imwrite(images / f"f{i}.tif", np.rot90(s.test_image, i).copy())
    tifffile.imwrite(images / "broken.tif", np.full((32, 32), np.nan, np.float32))
    model = _model_file(tmp_path)
    base = ["predict", "--model", str(model), "--images", str(images)]
    assert main(base + ["--out", str(tmp_path / "one")]) == 1
    assert main(base + ["--out", str(tmp_path / "two"), "--workers", "2"]) == 1  # the broken file, listed
    err = capsys.readouterr().err
    assert "broken.tif" in err.split("failed and were skipped")[-1]
    for i in range(3):
        assert np.array_equal(tifffile.imread(tmp_path / "one" / f"f{i}.tif"),
                              tifffile.imread(tmp_path / "two" / f"f{i}.tif"))


class _FailingChunks:
    """A label array whose second chunk cannot be read (a disk error mid-copy)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, 0
        self.chunks = (data.shape[0] // 2, data.shape[1])

    def __getitem__(self, index):
        self.reads += 1
        if self.reads == 2:
            raise OSError("chunk unreadable")
        return self.data[index]


def test_replacing_a_store_keeps_the_old_one_until_the_copy_is_complete(tmp_path):
    import zarr

    from napari_spoco.out_of_core import copy_labels

    target = tmp_path / "cells.zarr"
    old = np.arange(64, dtype=np.uint16).reshape(8, 8)
    copy_labels(old, target)
    new = np.full((8, 8), 7, np.uint16)
    with pytest.raises(OSError, match="unreadable"):
        copy_labels(_FailingChunks(new), target, replace=True)
    assert np.array_equal(zarr.open_array(str(target), mode="r")[...], old)  # the old store, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr"]  # no partial copy left beside it
    with pytest.raises(SpocoError, match="exists already"):  # without replace, never written over
        copy_labels(new, target)
    assert copy_labels(new, target, replace=True) == target
    assert np.array_equal(zarr.open_array(str(target), mode="r")[...], new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr"]


def _dead_pid() -> int:
    """The id of a process that has ended (a child run and waited for)."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_replace_interrupted_between_its_renames_is_undone_on_the_next_copy(tmp_path):
    """A crash after the old store was moved aside and before the copy took its place left the
    user's store hidden (`.cells.zarr.old-<pid>`) and nothing at its path: the next copy (or
    the Export panel, before asking) puts the old store back and removes the dead run's
    partial copy; files of a process that still runs are left alone."""
    import zarr

    from napari_spoco.out_of_core import copy_labels, recover_interrupted_copy

    target = tmp_path / "cells.zarr"
    old = np.arange(64, dtype=np.uint16).reshape(8, 8)
    copy_labels(old, target)
    dead = _dead_pid()
    target.rename(tmp_path / f".cells.zarr.old-{dead}")  # the crash: moved aside, copy not yet in place
    copy_labels(np.ones((8, 8), np.uint16), tmp_path / f".cells.zarr.partial-{dead}")
    running = tmp_path / f".cells.zarr.partial-{os.getppid()}"  # another live process's copy in progress
    running.mkdir()
    other = tmp_path / f".other.zarr.old-{dead}"  # another store's leftovers are not this one's
    other.mkdir()
    assert recover_interrupted_copy(target) == target
    assert np.array_equal(zarr.open_array(str(target), mode="r")[...], old)  # the user's store, back
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cells.zarr", running.name, other.name])
    assert recover_interrupted_copy(target) is None  # nothing left to undo
    # copy_labels undoes it by itself: without replace, the store back in place is not written over
    target.rename(tmp_path / f".cells.zarr.old-{dead}")
    with pytest.raises(SpocoError, match="exists already"):
        copy_labels(np.ones((8, 8), np.uint16), target)
    assert np.array_equal(zarr.open_array(str(target), mode="r")[...], old)
    new = np.full((8, 8), 7, np.uint16)
    assert copy_labels(new, target, replace=True) == target
    assert np.array_equal(zarr.open_array(str(target), mode="r")[...], new)


def test_recovery_leaves_other_machines_and_live_copies_alone_and_takes_back_this_process_leftovers(tmp_path):
    """Process ids are per machine (a shared disk may hold another machine's copy in progress);
    a restarted program may get the id of the one that crashed, so this process's own leftovers
    count as stale unless it is replacing that path now; ``clean=False`` only puts a store back."""
    import zarr

    from napari_spoco import out_of_core
    from napari_spoco.out_of_core import _HOST, _in_flight, copy_labels, recover_interrupted_copy

    target = tmp_path / "cells.zarr"
    old = np.arange(64, dtype=np.uint16).reshape(8, 8)
    copy_labels(old, target)
    mine = tmp_path / f".cells.zarr.old-{_HOST}-{os.getpid()}"
    target.rename(mine)
    elsewhere = tmp_path / f".cells.zarr.partial-{_HOST}x-{_dead_pid()}"  # another machine's copy
    elsewhere.mkdir()
    with _in_flight(target):  # this process replacing it now: its files are not leftovers
        assert recover_interrupted_copy(target) is None and mine.exists() and not target.exists()
    dead_partial = tmp_path / f".cells.zarr.partial-{_HOST}-{_dead_pid()}"
    dead_partial.mkdir()
    assert recover_interrupted_copy(target, clean=False) == target  # put back, nothing removed
    assert np.array_equal(zarr.open_array(str(target), mode="r")[...], old)
    assert dead_partial.exists() and elsewhere.exists()
    assert recover_interrupted_copy(target) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cells.zarr", elsewhere.name])
    assert not out_of_core._COPYING  # the replace's mark is gone once it is done
