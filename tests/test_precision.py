"""bfloat16 training steps: chosen by the hardware, refused when misspelt, weights stay float32."""

import numpy as np
import pytest
import torch

from napari_spoco import TrainConfig, train
from napari_spoco.cli import main
from napari_spoco.errors import SpocoError
from napari_spoco.io import load_model
from napari_spoco.precision import autocast, native_bfloat16, resolve_precision


def _toy():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.1, (64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.int64)
    for i, (y, x) in enumerate([(12, 12), (12, 44), (44, 20), (44, 48)], start=1):
        yy, xx = np.ogrid[:64, :64]
        disk = (yy - y) ** 2 + (xx - x) ** 2 <= 36
        image[disk] += 1.0
        labels[disk] = i
    return image, labels


def test_auto_follows_the_hardware_and_explicit_choices_are_kept():
    assert TrainConfig().precision == "auto"  # bfloat16 where native (docs/method.md, "Number format")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bfloat16" if native_bfloat16(cpu) else "float32")
    assert resolve_precision("auto", cpu, 3) == resolve_precision("auto", cpu)  # 3D: as the hardware allows
    # segmenting with a 2D network too (four views: 0.53-0.63x the time, the same objects; docs/method.md)
    assert resolve_precision("auto", cpu, 2) == resolve_precision("auto", cpu)
    assert resolve_precision("auto", cpu, 2, training=True) == resolve_precision("auto", cpu)
    assert resolve_precision("float32", cpu, 2, training=True) == "float32"
    assert resolve_precision("bfloat16", cpu, 2) == "bfloat16"
    assert resolve_precision("float32", cpu) == "float32"
    assert resolve_precision("bfloat16", cpu) == "bfloat16"
    assert resolve_precision("bfloat16", torch.device("mps")) == "float32"  # no bfloat16 autocast there
    with pytest.raises(SpocoError, match="not one of auto, float32, bfloat16"):
        resolve_precision("half", cpu)
    with pytest.raises(SpocoError, match="TrainConfig.precision"):
        TrainConfig(precision="fp16")


def test_convolutions_run_in_bfloat16_only_when_asked():
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 8, 8)
    with autocast("bfloat16", torch.device("cpu")):
        assert conv(x).dtype == torch.bfloat16
    with autocast("float32", torch.device("cpu")):
        assert conv(x).dtype == torch.float32


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_training_in_either_format_learns_and_keeps_float32_weights(precision):
    image, labels = _toy()
    model = train([image], [labels], TrainConfig(steps=4, device="cpu", patch_shape=(32, 32), precision=precision))
    assert model.history["precision"] == precision
    losses = [r["total"] for r in model.history["losses"]]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in model.student.parameters())
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())


def test_the_cli_passes_the_choice_on_and_refuses_an_unknown_one(folders, capsys):
    out = folders / "m.pt"
    assert main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(out), "--steps", "2", "--device", "cpu", "--precision", "float32"]) == 0
    model = load_model(out)
    assert model.history["precision"] == "float32"
    assert model.history["train_config"]["precision"] == "float32"
    assert "bfloat16" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
              "--out", str(folders / "n.pt"), "--steps", "2", "--precision", "fp8"])
    assert "invalid choice" in capsys.readouterr().err
    assert main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(folders / "b.pt"), "--steps", "1", "--device", "cpu", "--precision", "bfloat16"]) == 0
    assert "The network trains in bfloat16 (as asked" in capsys.readouterr().err
    # auto: a 2D network trains in bfloat16 where the CPU has it natively, and says so
    assert main(["train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
                 "--out", str(folders / "a.pt"), "--steps", "1", "--device", "cpu"]) == 0
    native = native_bfloat16(torch.device("cpu"))
    assert ("The network trains in bfloat16 (the hardware has it natively" in capsys.readouterr().err) == native
    assert load_model(folders / "a.pt").history["precision"] == ("bfloat16" if native else "float32")


def test_the_cli_names_bfloat16_when_auto_picks_it_for_a_volume(tmp_path, capsys):
    import tifffile

    rng = np.random.default_rng(0)
    volume = rng.normal(0.1, 0.02, (8, 32, 32)).astype(np.float32)
    labels = np.zeros((8, 32, 32), np.uint16)
    for i, (y, x) in enumerate([(8, 8), (8, 24), (24, 16)], start=1):
        volume[2:6, y - 3:y + 3, x - 3:x + 3] += 1.0
        labels[2:6, y - 3:y + 3, x - 3:x + 3] = i
    for sub, data in (("images", volume), ("labels", labels)):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "v.tif", data)
    assert main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--out", str(tmp_path / "m.pt"), "--steps", "1", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    native = native_bfloat16(torch.device("cpu"))
    assert ("The network trains in bfloat16 (the hardware has it natively" in err) == native
    assert load_model(tmp_path / "m.pt").history["precision"] == ("bfloat16" if native else "float32")
    assert main(["pretrain", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "p.pt"),
                 "--steps", "1", "--device", "cpu"]) == 0
    assert ("The network trains in bfloat16 (the hardware has it natively" in capsys.readouterr().err) == native


def test_segmenting_in_bfloat16_stays_close_to_float32_and_reaches_predict(folders, tmp_path):
    """Inference may run the convolutions in bfloat16 (issue 13's faster 3D): the embedding moves
    by a few hundredths of the clustering bandwidth (0.5), and the choice reaches predict."""
    from napari_spoco import segment
    from napari_spoco.inference import embed
    from napari_spoco.pretrained import load_default_model
    from napari_spoco.sample import load_sample

    model = load_default_model(2)
    image = load_sample().test_image[:128, :128]
    full = embed(model, image, device="cpu", precision="float32")
    half = embed(model, image, device="cpu", precision="bfloat16")
    gap = np.linalg.norm(full.embeddings - half.embeddings, axis=0)
    assert 0 < gap.mean() < 0.05 and np.quantile(gap, 0.999) < 0.25
    assert np.abs(full.foreground - half.foreground).max() < 0.1
    a = segment(model, image, device="cpu", precision="float32")
    b = segment(model, image, device="cpu", precision="bfloat16")
    assert abs(int(a.max()) - int(b.max())) <= max(1, int(a.max()) // 10)
    with pytest.raises(SpocoError, match="not one of"):
        segment(model, image, device="cpu", precision="half")

    from napari_spoco.io import save_model

    save_model(model, tmp_path / "shipped.pt")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(tmp_path / "shipped.pt"), "--images", str(folders / "images"), "--out", str(out),
                 "--device", "cpu", "--precision", "bfloat16"]) == 0
    assert (out / "cells.tif").is_file()


def test_segmentation_defaults_to_auto_with_larger_tiles_in_bfloat16():
    """Segmenting (not training) uses bfloat16 where the hardware has it: half the 3D time with the
    same objects, and a forward pass in less than half the memory, so its tiles are twice as large."""
    import inspect

    from napari_spoco import segment
    from napari_spoco.batch import PredictOptions
    from napari_spoco.blockwise import segment_blockwise
    from napari_spoco.inference import embed
    from napari_spoco.model import ModelConfig, SpocoModel
    from napari_spoco.precision import INFERENCE_PRECISION, tile_voxels
    from napari_spoco.segmentation import segment_series

    assert INFERENCE_PRECISION == "auto"
    for f in (segment, embed, segment_blockwise, segment_series):
        assert inspect.signature(f).parameters["precision"].default == "auto", f.__name__
    assert PredictOptions(None).precision == "auto"
    assert tile_voxels(1000, "bfloat16") == 2000 and tile_voxels(1000, "float32") == 1000

    model = SpocoModel.new(ModelConfig(ndim=2, base_features=4, depth=3), seed=0)
    image = np.random.default_rng(0).normal(size=(700, 700)).astype(np.float32)
    tiles = {}
    for precision in ("float32", "bfloat16"):
        embed(model, image, device="cpu", precision=precision,
              progress=lambda i, n, p=precision: tiles.__setitem__(p, n))
    assert tiles["bfloat16"] < tiles["float32"], tiles
