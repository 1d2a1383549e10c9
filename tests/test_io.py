"""Model files and label TIFFs: round trips, atomic writes, and refusing foreign files."""

import numpy as np
import pytest
import tifffile
import torch

from napari_spoco.errors import SpocoError
from napari_spoco.io import load_model, read_image, save_model, write_labels
from napari_spoco.model import ModelConfig, SpocoModel


def test_model_round_trip_keeps_weights_config_and_outputs(tmp_path):
    model = SpocoModel.new(ModelConfig(base_features=4, depth=2, embedding_dim=8), seed=3)
    model.history["steps"] = 12
    path = save_model(model, tmp_path / "m.pt")
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.history["steps"] == 12
    x = torch.randn(1, 1, 16, 16)
    model.student.eval()
    with torch.no_grad():
        assert torch.allclose(model.student(x), loaded.student(x))
        assert torch.allclose(model.teacher.eval()(x), loaded.teacher(x))
    assert not any(f.name.endswith(".tmp") for f in tmp_path.iterdir())


def test_foreign_and_damaged_model_files_get_clear_errors(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(SpocoError, match="not a napari-spoco model"):
        load_model(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(SpocoError, match="not a napari-spoco model"):
        load_model(junk)
    with pytest.raises(SpocoError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_cut_short_unreadable_and_folder_model_files_say_so(tmp_path, monkeypatch):
    """A copy that did not finish is our model damaged, not a foreign file; a folder and a file
    without read permission are named as such."""
    import os

    path = save_model(SpocoModel.new(ModelConfig(base_features=4, depth=2)), tmp_path / "m.pt")
    data = path.read_bytes()
    for n, cut in enumerate((len(data) // 2, len(data) - 100)):
        short = tmp_path / f"short{n}.pt"
        short.write_bytes(data[:cut])
        with pytest.raises(SpocoError, match="damaged or incomplete.*did not finish"):
            load_model(short)
    with pytest.raises(SpocoError, match="is a folder"):
        load_model(tmp_path)
    import zipfile

    zipped = tmp_path / "zipped.pt"  # the model inside a zip archive, stored: whole, so not "cut short"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as z:
        z.write(path, "napari-spoco-model.spoco.pt")
    with pytest.raises(SpocoError, match="not a napari-spoco model file"):
        load_model(zipped)
    locked = tmp_path / "locked.pt"
    locked.write_bytes(data)
    locked.chmod(0)
    try:
        if not os.access(locked, os.R_OK):  # root reads anything: a denied read is simulated below
            with pytest.raises(SpocoError, match="cannot be read"):
                load_model(locked)
    finally:
        locked.chmod(0o600)
    import napari_spoco.io as spoco_io

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(spoco_io, "open", denied, raising=False)
    with pytest.raises(SpocoError, match="cannot be read .Permission denied.; check its permissions"):
        load_model(path)


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-spoco-model", "x": Evil()}, path)
    with pytest.raises(SpocoError, match="not a napari-spoco model file") as caught:  # whole: not "cut short"
        load_model(path)
    assert "did not finish" not in str(caught.value)


def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    model = SpocoModel.new(ModelConfig(base_features=4, depth=2))
    path = save_model(model, tmp_path / "m.pt")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_model(model, path)
    assert path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.pt"]


def test_label_tiffs_pick_dtype_by_id_range_and_keep_shape(tmp_path):
    small = np.zeros((3, 5, 7), np.int64)
    small[1, 2, 3] = 300
    write_labels(tmp_path / "a.tif", small)
    back = tifffile.imread(tmp_path / "a.tif")
    assert back.dtype == np.uint16 and back.shape == (3, 5, 7) and (back == small).all()
    big = np.zeros((4, 4), np.int64)
    big[0, 0] = 70000
    write_labels(tmp_path / "b.tif", big)
    assert tifffile.imread(tmp_path / "b.tif").dtype == np.uint32
    with pytest.raises(SpocoError, match="exists"):
        write_labels(tmp_path / "b.tif", big, overwrite=False)


def test_unreadable_images_get_clear_errors(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_text("hello")
    with pytest.raises(SpocoError, match="Could not read"):
        read_image(bad)


def test_saved_files_get_the_usual_permissions_not_mkstemps_private_mode(tmp_path):
    import os
    import stat

    from napari_spoco.io import _umask

    path = write_labels(tmp_path / "l.tif", np.ones((4, 4), np.uint16))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
