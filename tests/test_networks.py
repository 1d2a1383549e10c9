"""Network presets: ``small`` (CPU default), ``medium`` (one level more: the shipped 2D start),
``large`` (the paper's six levels), ``auto`` by device."""

import numpy as np
import pytest
import torch

from napari_spoco.errors import SpocoError
from napari_spoco.io import load_model, save_model
from napari_spoco.model import NETWORK_CHOICES, NETWORKS, ModelConfig, network_config, network_name
from napari_spoco.training import TrainConfig, train


def test_presets_and_auto_by_device():
    assert NETWORK_CHOICES == ("auto", "small", "medium", "large")
    assert network_config("auto", "cpu") == NETWORKS["small"] == ModelConfig()
    medium = network_config("medium", "cpu")
    assert medium.depth == 4 and 2 * ModelConfig().receptive_radius < medium.receptive_radius < 100
    assert network_config("auto", torch.device("cuda")) == NETWORKS["large"]  # no GPU needed to decide
    large = network_config("large", "cpu")
    assert large.depth == 6 and large.receptive_radius > 8 * ModelConfig().receptive_radius
    with pytest.raises(SpocoError, match="not one of auto, small, medium, large"):
        network_config("huge")


def test_the_preset_is_known_again_from_a_saved_model(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.int32)
    labels[8:20, 8:20], labels[30:44, 30:44] = 1, 2
    config = TrainConfig(steps=1, patch_shape=(64, 64), batch_size=1, device="cpu")
    model = train([image], [labels], config, model_config=network_config("large", "cpu"))
    again = load_model(save_model(model, tmp_path / "large.spoco.pt"))
    assert network_name(again.config) == "large" and again.config.depth == 6
    assert network_name(ModelConfig(base_features=8)) == "custom"


@pytest.mark.parametrize("ndim,shape", [(2, (1, 2, 48, 40)), (3, (1, 2, 16, 24, 24))])
def test_batchnorm_folded_for_inference_computes_the_same_and_leaves_the_network_alone(ndim, shape):
    import torch

    from napari_spoco.model import ModelConfig, SpocoModel, folded_for_inference

    net = SpocoModel.new(ModelConfig(ndim=ndim, in_channels=2, base_features=4, depth=3), seed=0).student
    for mod in net.modules():  # statistics as after training
        if hasattr(mod, "running_var"):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.3, 3.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.3, 0.3)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = folded_for_inference(net)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert net.training and all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net.eval()(x)
        got = folded(x)
    assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()))
