"""bioimage.io export: the package passes bioimage.io's own test (format + reproduced outputs)."""

import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")

from napari_spoco.bioimageio_export import export_bioimageio, export_halo, validate_bioimageio  # noqa: E402
from napari_spoco.cli import main  # noqa: E402
from napari_spoco.errors import SpocoError  # noqa: E402
from napari_spoco.model import ModelConfig, SpocoModel  # noqa: E402


def test_exported_2d_package_passes_bioimageio_test_and_documents_its_output(tmp_path, capsys):
    out = tmp_path / "nuclei.zip"
    assert main(["export", "--model", "default", "--out", str(out), "--author", "A. Tester"]) == 0
    assert "validation passed" in capsys.readouterr().out
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        readme = z.read("README.md").decode()
        rdf = z.read("rdf.yaml").decode()
    assert {"rdf.yaml", "README.md", "weights.torchscript.pt", "test_input.npy", "test_output.npy"} <= names
    assert "not** a label image" in readme and "mean-shift" in readme
    # the shipped 2D start is the medium network: its 60-px reach, on its 8-px grid, is cropped
    assert "A. Tester" in rdf and "scale_range" in rdf and "halo: 64" in rdf and "crop 64 pixels" in readme
    # refuses to overwrite
    assert main(["export", "--model", "default", "--out", str(out)]) == 2


def test_halo_covers_the_reach_on_the_size_grid_and_tiles_cropped_by_it_match_the_whole_image():
    import torch

    from napari_spoco.model import NETWORKS

    assert [export_halo(NETWORKS[n]) for n in ("small", "medium", "large")] == [28, 64, 64]  # large: capped
    model = SpocoModel.new(ModelConfig(base_features=4, depth=3)).predictor.eval()
    halo, x = export_halo(ModelConfig(depth=3)), torch.randn(1, 1, 96, 128)
    with torch.no_grad():
        whole, left = model(x), model(x[..., :64])
    assert torch.allclose(left[..., : 64 - halo], whole[..., : 64 - halo], atol=1e-5)  # kept part: exact
    assert not torch.allclose(left[..., 60:], whole[..., 60:64], atol=1e-3)  # the seam itself differs


def test_exported_3d_package_passes_too(tmp_path):
    model = SpocoModel.new(ModelConfig(ndim=3, base_features=4, depth=2))
    passed, summary = validate_bioimageio(export_bioimageio(model, tmp_path / "vol.zip"))
    assert passed, summary


def test_export_refuses_a_test_image_of_the_wrong_kind(tmp_path):
    model = SpocoModel.new(ModelConfig(ndim=2, base_features=4, depth=2))
    with pytest.raises(SpocoError, match="3D but the model is 2D"):
        export_bioimageio(model, tmp_path / "m.zip", test_image=np.zeros((40, 40, 40), np.float32))
    with pytest.raises(SpocoError, match=r"\.zip"):
        export_bioimageio(model, tmp_path / "m.pt")
    with pytest.raises(SpocoError, match="at least"):
        export_bioimageio(model, tmp_path / "m.zip", test_image=np.ones((16, 16), np.float32))


def test_exported_colour_package_scales_each_channel_and_passes(tmp_path):
    model = SpocoModel.new(ModelConfig(ndim=2, base_features=4, depth=2, in_channels=3))
    out = export_bioimageio(model, tmp_path / "rgb.zip")
    passed, summary = validate_bioimageio(out)
    assert passed, summary
    with zipfile.ZipFile(out) as z:
        assert np.load(z.open("test_input.npy")).shape[:2] == (1, 3)
        assert "3 channels, each scaled on its own" in z.read("README.md").decode()


@pytest.mark.parametrize("flags, expected", [
    (["--name", "Nuclei v1.0"], "has '.'"),
    (["--name", "cell"], "has 4 characters"),
    (["--author", "Lab A/B"], "has a slash"),
    (["--license", "not-a-licence"], "SPDX licence identifier"),
])
def test_export_names_and_licences_bioimageio_refuses_get_a_clear_message(tmp_path, capsys, flags, expected):
    out = tmp_path / "m.zip"
    code = main(["export", "--model", "default", "--out", str(out), "--no-validate", *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err and "report" not in err
    assert not out.exists()


def test_export_takes_a_channel_stack_as_test_image(tmp_path, capsys):
    import tifffile

    from napari_spoco.io import save_model

    model = SpocoModel.new(ModelConfig(ndim=2, base_features=4, depth=2, in_channels=2))
    save_model(model, tmp_path / "two.spoco.pt")
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "cyx.tif", rng.random((2, 96, 96)).astype(np.float32), imagej=True,
                     metadata={"axes": "CYX"})
    base = ["export", "--model", str(tmp_path / "two.spoco.pt"), "--test-image", str(tmp_path / "cyx.tif")]
    assert main(base + ["--out", str(tmp_path / "no.zip")]) == 2
    assert "--channel-axis" in capsys.readouterr().err  # the advice the refusal gives ...
    assert main(base + ["--out", str(tmp_path / "two.zip"), "--channel-axis", "0"]) == 0  # ... now works
    with zipfile.ZipFile(tmp_path / "two.zip") as z:
        assert np.load(z.open("test_input.npy")).shape == (1, 2, 96, 96)
